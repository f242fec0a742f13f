//! The commands that run a model: `modalbench-worker`'s (see [`super`]).

use super::{BenchCommand, Command, TrainArgs};
use crate::models::registry::Registry;
use crate::protocol::{Device, JobSpec};
use crate::runs::{self, DatasetLookup, DatasetRef, RunRequest};
use crate::{data, models, train, worker};
use anyhow::{Context, Result};
use std::path::PathBuf;

/// Runs `command`: those that run a model here, the others as `modalbench` does.
pub fn run(command: Command) -> Result<()> {
    match command {
        Command::Worker { ticket } => std::process::exit(worker::main(ticket.as_deref())),
        Command::Train(args) => train_here(args),
        Command::Presets { models_dir } => {
            for name in models::presets::ensure_presets(&models_dir)? {
                println!("wrote {}", models_dir.join(name).display());
            }
            Ok(())
        }
        Command::InspectModels { dirs } => {
            for info in models::registry::inspect_here(&dirs) {
                println!("{}", serde_json::to_string(&info)?);
            }
            Ok(())
        }
        Command::Devices => {
            println!("{}", train::precision::cuda_device_count());
            Ok(())
        }
        Command::Bench {
            command:
                BenchCommand::TrainStep {
                    model,
                    batch_size,
                    seq_len,
                    steps,
                    device,
                    mixed_precision,
                    gradient_checkpointing,
                    eval,
                    threads,
                    settings,
                },
        } => device
            .to_tch()
            .map_err(anyhow::Error::from)
            .and_then(|device| {
                if let Some(n) = threads {
                    train::set_cpu_threads(n);
                }
                crate::bench::train_step(
                    &settings.models_dir.join(&model),
                    &crate::bench::StepBench {
                        batch_size,
                        seq_len,
                        steps,
                        device,
                        precision: mixed_precision,
                        gradient_checkpointing,
                        eval,
                    },
                )
            }),
        Command::Bench {
            command:
                BenchCommand::Loader {
                    dataset,
                    model,
                    batch_size,
                    settings,
                },
        } => crate::bench::loader(&dataset, &settings.models_dir.join(&model), batch_size),
        Command::Forward {
            checkpoint,
            inputs,
            output,
            device,
        } => device
            .to_tch()
            .map_err(anyhow::Error::from)
            .and_then(|d| models::forward_file(&checkpoint, &inputs, &output, d))
            .map(|names| println!("wrote {} to {}", names.join(", "), output.display())),
        other => super::run(other),
    }
}

/// `modalbench train`: the run is resolved as the service resolves a submission (the same
/// options, checks and defaults), then trained in this process.
fn train_here(a: TrainArgs) -> Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    let store = rt.block_on(a.settings.open_store())?;
    // a folder, else a name the service registered, else a folder under its datasets dir
    let path = PathBuf::from(&a.dataset);
    let dataset = if path.is_dir() {
        let source = data::detect(&path)?.with_context(|| {
            format!(
                "{}: no known dataset layout (formats: {}; or name one in modalbench.toml)",
                path.display(),
                data::formats::names().join(", ")
            )
        })?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        DatasetLookup::Found(Box::new(DatasetRef { name, source }))
    } else if let Some(d) = rt.block_on(store.get_dataset(&a.dataset))? {
        DatasetLookup::Found(Box::new(DatasetRef {
            name: d.name,
            source: d.info.source,
        }))
    } else {
        let root = a.settings.datasets_dir().join(&a.dataset);
        match data::detect(&root).ok().flatten() {
            Some(source) if !a.dataset.contains(['/', '\\']) => {
                DatasetLookup::Found(Box::new(DatasetRef {
                    name: a.dataset.clone(),
                    source,
                }))
            }
            _ => DatasetLookup::Unknown {
                known: rt.block_on(store.dataset_names())?,
            },
        }
    };
    let req = RunRequest {
        train: a.options,
        ..RunRequest::new(a.model, a.dataset.clone())
    };
    // the built-in presets, as the service writes them at start-up
    if a.settings.models_dir.is_dir() {
        crate::models::presets::ensure_presets(&a.settings.models_dir)?;
    }
    let registry = Registry::new(a.settings.models_dir.clone());
    let resolved = runs::resolve(req, &registry, dataset)?;
    if let Some(field) = resolved.queue.cluster_options_set().first() {
        anyhow::bail!("{field}: an option of a Slurm job; `modalbench train` trains here");
    }
    if let Some(why) = train::precision::unsupported(resolved.config.mixed_precision, a.device) {
        anyhow::bail!("mixed_precision: {why}");
    }
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let run = if a.no_record {
        None
    } else {
        let device = worker::record::cli_device(std::process::id());
        Some(rt.block_on(store.insert_foreground_run(&resolved, &device))?)
    };
    let output = match (a.output, &run) {
        (Some(o), _) => o,
        (None, Some(r)) => a.settings.run_dir(r.id).join("checkpoint"),
        (None, None) => PathBuf::from("./checkpoint"),
    };
    let mut spec = JobSpec::new(
        run.as_ref().map_or(0, |r| r.id),
        &resolved,
        a.device,
        threads,
        output,
        Some(a.settings.data_dir.join("cache")),
    );
    // `--gpus N`: the devices after `--device`, or N replicas on the CPU
    spec.replicas = (1..resolved.config.gpus as usize)
        .map(|i| match a.device {
            Device::Cuda(d) => Device::Cuda(d + i),
            Device::Cpu => Device::Cpu,
        })
        .collect();
    let progress = Box::new(worker::progress::ProgressSink::default());
    let result = match &run {
        Some(r) => {
            eprintln!(
                "run {} recorded in {}",
                r.id,
                crate::store::redact(&a.settings.database_url()?)
            );
            let mut recorder = worker::record::Recorder::new(store.clone(), &rt, r.id, progress);
            let result = train::run(&spec, &mut recorder);
            recorder.finish(&result);
            result
        }
        None => {
            let mut progress = progress;
            train::run(&spec, progress.as_mut())
        }
    };
    let s = result?;
    println!(
        "{} accuracy {:.4}  F1 {:.4}  AUROC {}  loss {:.4}  |  {:.1}s training, {:.1} samples/s",
        s.split,
        s.accuracy,
        s.f1,
        s.auroc
            .map(|a| format!("{a:.4}"))
            .unwrap_or_else(|| "n/a".into()),
        s.loss,
        s.train_seconds,
        s.samples_per_second
    );
    println!("checkpoints in {}", spec.output_dir.display());
    Ok(())
}
