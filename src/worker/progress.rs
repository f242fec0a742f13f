//! A terminal progress bar for jobs run from the command line (`modalbench train`).

use crate::eval::Scope;
use crate::protocol::Event;
use crate::train::EventSink;
use indicatif::{ProgressBar, ProgressStyle};

/// Draws training progress and prints evaluation results as they arrive.
pub struct ProgressSink {
    bar: ProgressBar,
    /// The last training loss reported.
    loss: Option<f64>,
}

impl Default for ProgressSink {
    fn default() -> Self {
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} epoch {msg} [{bar:30}] {pos}/{len} steps  {elapsed_precise} (eta {eta})",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        ProgressSink { bar, loss: None }
    }
}

impl EventSink for ProgressSink {
    fn emit(&mut self, event: Event) {
        match event {
            Event::Started {
                total_steps,
                num_parameters,
                device,
                train_examples,
                ..
            } => {
                self.bar.set_length(total_steps);
                self.bar.println(format!(
                    "training {:.1}M parameters on {device}, {train_examples} examples, {total_steps} steps",
                    num_parameters as f64 / 1e6
                ));
            }
            Event::Progress {
                epoch,
                step,
                samples_per_second,
                ..
            } => {
                self.bar.set_position(step);
                let loss = self
                    .loss
                    .map_or(String::new(), |l| format!("loss {l:.4}, "));
                self.bar.set_message(format!(
                    "{epoch:.2} ({loss}{samples_per_second:.1} samples/s)"
                ));
            }
            Event::Metric { key, value, .. } if key == crate::eval::MetricKey::TRAIN_LOSS => {
                self.loss = Some(value);
            }
            Event::Metric {
                key, step, value, ..
            } if key.scope != Scope::Train => {
                self.bar
                    .println(format!("step {step:>6}  {key:<16} {value:.4}"));
            }
            Event::Log { message } => self.bar.println(message),
            Event::Checkpoint { path } => self
                .bar
                .println(format!("checkpoint written to {}", path.display())),
            Event::Finished { .. } | Event::Failed { .. } => self.bar.finish_and_clear(),
            _ => {}
        }
    }
}
