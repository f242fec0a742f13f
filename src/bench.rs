//! Benchmarks: commands that print figures for BENCHMARKS.md (`modalbench bench ...`).

use crate::eval::MetricKey;
use crate::protocol::Summary;
use crate::runs::TrainConfig;
use crate::store::Store;
use crate::store::metrics::NewPoint;
use crate::store::runs::{BoardMetric, FinishedRun, RunStatus};
use anyhow::Result;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::time::Instant;

/// Fills a fresh database with `runs` finished runs (20 models x 5 datasets), each with
/// `points_per_run` metric points, then times leaderboard queries.
pub async fn leaderboard(runs: usize, points_per_run: usize, repeats: usize) -> Result<()> {
    let dir = std::env::temp_dir().join(format!("modalbench-bench-{}", std::process::id()));
    let store = Store::open(&dir.join("bench.db")).await?;
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let t = Instant::now();
    let finished: Vec<FinishedRun> = (0..runs)
        .map(|i| {
            let s = Summary {
                accuracy: rng.random_range(0.5..1.0),
                f1: rng.random_range(0.4..1.0),
                auroc: Some(rng.random_range(0.5..1.0)),
                loss: rng.random_range(0.1..1.0),
                train_seconds: rng.random_range(10.0..1000.0),
                samples_per_second: rng.random_range(10.0..500.0),
                ..Default::default()
            };
            let status = if i % 10 == 9 {
                RunStatus::Failed
            } else {
                RunStatus::Succeeded
            };
            // three learning rates, each over many seeds
            FinishedRun {
                model: format!("model-{}", i % 20),
                dataset: format!("dataset-{}", (i / 20) % 5),
                status,
                config: TrainConfig {
                    learning_rate: [2e-5, 5e-5, 1e-4][(i / 100) % 3],
                    seed: i as u64,
                    ..Default::default()
                },
                summary: s,
            }
        })
        .collect();
    let ids = store.insert_finished_runs(&finished).await?;
    let points: Vec<NewPoint> = (0..points_per_run)
        .map(|step| NewPoint {
            key: MetricKey::TRAIN_LOSS,
            step: step as i64,
            epoch: 0.0,
            value: 1.0,
        })
        .collect();
    for &id in &ids {
        store.insert_metric_points(id, 1, &points).await?;
    }
    println!(
        "filled {} runs and {} metric points in {:.1}s",
        ids.len(),
        ids.len() * points_per_run,
        t.elapsed().as_secs_f64()
    );
    for cached in [false, true] {
        for (label, dataset) in [("one dataset", Some("dataset-3")), ("all datasets", None)] {
            let mut times = Vec::new();
            let mut rows = 0;
            for _ in 0..repeats {
                let t = Instant::now();
                rows = if cached {
                    store.leaderboard(dataset, BoardMetric::Auroc).await?
                } else {
                    store.leaderboard_query(dataset, BoardMetric::Auroc).await?
                }
                .len();
                times.push(t.elapsed().as_secs_f64() * 1e3);
            }
            times.sort_by(f64::total_cmp);
            println!(
                "leaderboard{}, {label}: {rows} rows, median {:.1} ms, min {:.1} ms over {repeats} \
                 queries",
                if cached { " (kept board)" } else { "" },
                times[times.len() / 2],
                times[0]
            );
        }
    }
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// What [`fill`] wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct Filled {
    /// The runs' ids, in order.
    pub runs: Vec<i64>,
    /// The run with the long curve.
    pub long_run: i64,
    /// Metric points stored.
    pub points: usize,
}

/// Fills the data folder `data_dir` with what `modalbench serve --data-dir` serves: the demo
/// datasets, `runs` finished runs over them (20 models, three learning rates, many seeds, one
/// in ten failed) and `points` training-loss points, `long_points` of them in the first run
/// and the rest spread evenly over the others. Everything goes through the store's bulk
/// paths, so a database of 100,000 runs and 10 million points takes about a minute.
pub async fn fill(
    data_dir: &std::path::Path,
    runs: usize,
    points: usize,
    long_points: usize,
) -> Result<Filled> {
    anyhow::ensure!(runs >= 1, "at least one run");
    anyhow::ensure!(
        long_points <= points,
        "the long run's points are part of all the points"
    );
    let datasets = data_dir.join("datasets");
    let names: Vec<&str> = crate::data::demo::DEMOS.iter().map(|(n, _)| *n).collect();
    for (name, write) in crate::data::demo::DEMOS {
        if !datasets.join(name).exists() {
            write(&datasets, crate::app::DEMO_SEED)?;
        }
    }
    let store = Store::open(&data_dir.join("modalbench.db")).await?;
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let finished: Vec<FinishedRun> = (0..runs)
        .map(|i| FinishedRun {
            model: format!("model-{}", i % 20),
            dataset: names[(i / 20) % names.len()].to_string(),
            status: if i % 10 == 9 {
                RunStatus::Failed
            } else {
                RunStatus::Succeeded
            },
            config: TrainConfig {
                learning_rate: [2e-5, 5e-5, 1e-4][(i / 100) % 3],
                seed: i as u64,
                ..Default::default()
            },
            summary: Summary {
                accuracy: rng.random_range(0.5..1.0),
                f1: rng.random_range(0.4..1.0),
                auroc: Some(rng.random_range(0.5..1.0)),
                loss: rng.random_range(0.1..1.0),
                train_seconds: rng.random_range(10.0..1000.0),
                samples_per_second: rng.random_range(10.0..500.0),
                ..Default::default()
            },
        })
        .collect();
    let ids = store.insert_finished_runs(&finished).await?;
    // a falling, noisy loss curve of n points
    let mut curve = |n: usize| -> Vec<NewPoint> {
        (0..n)
            .map(|step| NewPoint {
                key: MetricKey::TRAIN_LOSS,
                step: step as i64,
                epoch: step as f64 / n.max(1) as f64,
                value: 2.0 / (1.0 + step as f64 / 50.0) + rng.random_range(0.0..0.2),
            })
            .collect()
    };
    let long = curve(long_points);
    store.insert_metric_points_of(&[(ids[0], 1, &long)]).await?;
    let rest = points - long_points;
    let others = ids.len() - 1;
    let mut stored = long_points;
    // the others' points in transactions of about 100,000
    let mut batch: Vec<(i64, Vec<NewPoint>)> = Vec::new();
    for (i, &id) in ids.iter().enumerate().skip(1) {
        let n = rest / others + usize::from(i <= rest % others);
        batch.push((id, curve(n)));
        stored += n;
        if batch.iter().map(|(_, p)| p.len()).sum::<usize>() >= 100_000 || i == others {
            let series: Vec<(i64, i64, &[NewPoint])> =
                batch.iter().map(|(id, p)| (*id, 1, p.as_slice())).collect();
            store.insert_metric_points_of(&series).await?;
            batch.clear();
        }
    }
    Ok(Filled {
        long_run: ids[0],
        runs: ids,
        points: stored,
    })
}

/// What [`train_step`] measures.
#[derive(Debug, Clone)]
pub struct StepBench {
    pub batch_size: i64,
    /// Tokens per text (capped at the model's longest input).
    pub seq_len: i64,
    pub steps: usize,
    pub device: tch::Device,
    pub precision: crate::runs::MixedPrecision,
    pub gradient_checkpointing: bool,
    /// Time evaluation steps (no gradients, the model in eval mode) instead of training steps.
    pub eval: bool,
}

/// A batch of random inputs for the checkpoint in `dir`: token ids (every token attended to)
/// and, for a text+image model, one random 224 x 224 picture per example put through the
/// checkpoint's own preprocessing.
fn random_batch(
    loaded: &crate::models::Loaded,
    dir: &std::path::Path,
    batch_size: i64,
    seq_len: i64,
    device: tch::Device,
) -> Result<crate::models::Batch> {
    let limits = loaded.checkpoint.text_limits()?;
    let seq_len = seq_len.min(limits.max_length);
    let (pixel_values, pixel_mask) =
        if loaded.checkpoint.arch.modality == crate::models::registry::Modality::TextImage {
            let proc = crate::data::image::ImageProcessor::from_dir(dir)?;
            let mut rng = ChaCha8Rng::seed_from_u64(1);
            let rgb: Vec<u8> = (0..224 * 224 * 3).map(|_| rng.random()).collect();
            let image = proc.prepare_rgb(224, 224, rgb)?;
            let px = proc.assemble(&vec![&image; batch_size as usize])?;
            (
                Some(px.pixel_values.to_device(device)),
                px.pixel_mask.map(|m| m.to_device(device)),
            )
        } else {
            (None, None)
        };
    Ok(crate::models::Batch {
        input_ids: tch::Tensor::randint_low(
            5,
            limits.vocab_size,
            [batch_size, seq_len],
            (tch::Kind::Int64, device),
        ),
        attention_mask: tch::Tensor::ones([batch_size, seq_len], (tch::Kind::Int64, device)),
        token_type_ids: tch::Tensor::zeros([batch_size, seq_len], (tch::Kind::Int64, device)),
        pixel_values,
        pixel_mask,
    })
}

/// Process CPU time (user + system) so far, in seconds.
fn cpu_seconds() -> f64 {
    // SAFETY: getrusage fills the struct it is given
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    tv(u.ru_utime) + tv(u.ru_stime)
}

/// Times training steps of a checkpoint on random inputs, as the training loop takes them
/// (AdamW of `train::optim`, clipping, autocast for `precision` with loss scaling at float16,
/// gradient checkpointing when asked): forward+backward alone, then the whole step with
/// clipping and the optimiser. With `eval`, times evaluation steps as the evaluation loop takes
/// them (no gradients, autocast, the probabilities copied to the host at the end). Prints
/// examples/s, process CPU seconds per step and the peak memory of the timed steps (host RSS;
/// the CUDA allocator's peak on a GPU), then the figures as `name=value` lines for `make bench`.
pub fn train_step(dir: &std::path::Path, b: &StepBench) -> Result<()> {
    use crate::models::checkpointing::{self, Recorded};
    use crate::train::{cost, optim::AdamW, precision as amp};
    let (batch_size, steps, device, precision) = (b.batch_size, b.steps, b.device, b.precision);
    tch::manual_seed(0);
    let loaded = crate::models::load(dir, Some(2), device)?;
    let batch = random_batch(&loaded, dir, batch_size, b.seq_len, device)?;
    let labels = tch::Tensor::randint(2, [batch_size], (tch::Kind::Int64, device));
    let mut opt = AdamW::new(&loaded.vs, 0.01);
    // as the training loop takes its steps
    opt.update_tables_by_row();
    // float16 trains with dynamic loss scaling, as the training loop does
    let mut scaler =
        (precision == crate::runs::MixedPrecision::Fp16).then(amp::GradScaler::default);
    let threads = tch::get_num_threads();
    println!(
        "{}: batch {batch_size}, sequence {}, {device:?}, {threads} torch threads, \
         mixed precision {precision}, gradient checkpointing {}, {steps} timed steps after 2 warm-up steps",
        dir.display(),
        batch.input_ids.size()[1],
        if b.gradient_checkpointing {
            "on"
        } else {
            "off"
        }
    );
    let phases: &[(&str, &str)] = if b.eval {
        &[("evaluation (no gradients)", "eval")]
    } else {
        &[
            ("forward+backward", "fwd_bwd"),
            ("forward+backward+clip+AdamW", "step"),
        ]
    };
    for &(label, key) in phases {
        let mut run = |n: usize| -> Result<(f64, f64)> {
            let (t, cpu) = (Instant::now(), cpu_seconds());
            // the evaluation loop keeps the probabilities on the device and copies them at
            // the end
            let mut probs = Vec::new();
            let _casts = if key == "eval" {
                amp::WeightCasts::hold(precision)?
            } else {
                None
            };
            for _ in 0..n {
                if key == "eval" {
                    let _guard = tch::no_grad_guard();
                    let _autocast = amp::Autocast::enter(device, precision)?;
                    let logits = crate::models::logits(loaded.model.forward(&batch, false));
                    probs.push(
                        logits
                            .to_kind(tch::Kind::Float)
                            .softmax(-1, tch::Kind::Float),
                    );
                    continue;
                }
                let (outputs, recorded) = {
                    let _autocast = amp::Autocast::enter(device, precision)?;
                    if b.gradient_checkpointing {
                        checkpointing::record(
                            true,
                            Some(amp::Autocast::context(device, precision)),
                            || loaded.model.forward(&batch, true),
                        )
                    } else {
                        (loaded.model.forward(&batch, true), Recorded::none())
                    }
                };
                let logits = crate::models::logits(outputs).to_kind(tch::Kind::Float);
                let loss = logits.cross_entropy_for_logits(&labels);
                match &scaler {
                    Some(s) => recorded.backward(&s.scale(&loss)),
                    None => recorded.backward(&loss),
                }
                if key == "step" {
                    amp::apply_gradients(&mut opt, scaler.as_mut(), 1.0, 2e-5)?;
                } else {
                    opt.zero_grad();
                }
                let _ = f64::try_from(&loss)?;
            }
            if !probs.is_empty() {
                let _ = Vec::<Vec<f32>>::try_from(
                    tch::Tensor::cat(&probs, 0).to_device(tch::Device::Cpu),
                )?;
            }
            Ok((t.elapsed().as_secs_f64(), cpu_seconds() - cpu))
        };
        run(2)?;
        cost::reset_peak_rss();
        if let tch::Device::Cuda(i) = device {
            amp::cuda_reset_peak(i);
        }
        let (secs, cpu) = run(steps)?;
        let peak = match device {
            tch::Device::Cuda(i) => amp::cuda_peak_allocated(i)
                .map(|b| format!("{:.0} MiB GPU", b as f64 / (1 << 20) as f64)),
            _ => cost::peak_rss_bytes()
                .map(|b| format!("{:.0} MiB RSS", b as f64 / (1 << 20) as f64)),
        };
        let rate = (steps as i64 * batch_size) as f64 / secs;
        println!(
            "{label:<28} {rate:>8.1} samples/s  ({:.3} s/step, {:.3} CPU s/step)  peak {}",
            secs / steps as f64,
            cpu / steps as f64,
            peak.unwrap_or_else(|| "n/a".into())
        );
        println!("{key}_samples_per_s={rate:.3}");
        println!("{key}_cpu_s_per_step={:.4}", cpu / steps as f64);
    }
    Ok(())
}

/// Times the image loader alone on a dataset's train split with a checkpoint's preprocessing:
/// decoding and resizing every image (no cache), reading them back from the disk cache, and
/// from the memory cache. Prints examples/s for each.
pub fn loader(
    dataset: &std::path::Path,
    model_dir: &std::path::Path,
    batch_size: usize,
) -> Result<()> {
    use crate::data::image::ImageProcessor;
    use crate::data::loader::ImageCache;
    let source = crate::data::detect(dataset)?
        .ok_or_else(|| anyhow::anyhow!("{}: no known dataset layout", dataset.display()))?;
    let ds = crate::data::load("bench", &source, crate::data::Check::Strict)?;
    let proc = ImageProcessor::from_dir(model_dir)?;
    let paths: Vec<std::path::PathBuf> = ds.train.iter().filter_map(|e| ds.image_path(e)).collect();
    if paths.is_empty() {
        anyhow::bail!("the train split has no images");
    }
    let cache_dir =
        std::env::temp_dir().join(format!("modalbench-loader-bench-{}", std::process::id()));
    let pass = |cache: &ImageCache| -> Result<f64> {
        let t = Instant::now();
        for chunk in paths.chunks(batch_size) {
            let pixels = cache.process(&proc, chunk)?;
            debug_assert_eq!(pixels.pixel_values.size()[0], chunk.len() as i64);
        }
        Ok(paths.len() as f64 / t.elapsed().as_secs_f64())
    };
    println!(
        "{}: {} train images, batch {batch_size}, {} rayon threads, preprocessing of {}",
        dataset.display(),
        paths.len(),
        rayon::current_num_threads(),
        model_dir.display()
    );
    let decode = pass(&ImageCache::new(None, 0))?;
    let disk = ImageCache::new(Some(cache_dir.clone()), 0);
    let fill = pass(&disk)?;
    let from_disk = pass(&disk)?;
    let memory = ImageCache::new(None, usize::MAX);
    pass(&memory)?;
    let from_memory = pass(&memory)?;
    let _ = std::fs::remove_dir_all(&cache_dir);
    println!("decode + resize + normalise, no cache:   {decode:>9.1} examples/s");
    println!("same, writing the disk cache:            {fill:>9.1} examples/s");
    println!("from the disk cache (normalise only):    {from_disk:>9.1} examples/s");
    println!("from the memory cache (normalise only):  {from_memory:>9.1} examples/s");
    println!("decode_per_s={decode:.1}");
    println!("disk_cache_per_s={from_disk:.1}");
    println!("memory_cache_per_s={from_memory:.1}");
    Ok(())
}

/// What the Slurm executor's event endpoint absorbs: `runs` running runs with cluster jobs, and
/// `clients` threads playing their workers, each sending its runs' batches of `batch_events`
/// metric events (numbered as a worker numbers them) until every run has sent `batches`
/// batches; over loopback to this process's HTTP service, stored in SQLite (or the database
/// `database` names). Prints events/s, requests/s and the latency of a batch.
pub async fn worker_events(
    runs: usize,
    clients: usize,
    batch_events: usize,
    batches: usize,
    database: Option<String>,
) -> Result<()> {
    use crate::config::Settings;
    use crate::http::{AppState, router};
    use crate::live::Hub;
    use crate::models::registry::Registry;
    use crate::queue::{Scheduler, slots};
    let dir = std::env::temp_dir().join(format!("modalbench-bench-{}", std::process::id()));
    let mut settings = Settings::new(dir.join("data"), dir.join("models"));
    settings.database = database;
    let store = settings.open_store().await?;
    // running runs whose jobs were submitted, each with its worker's token
    let running: Vec<FinishedRun> = (0..runs)
        .map(|i| FinishedRun {
            model: "bert-base".into(),
            dataset: format!("dataset-{}", i % 5),
            status: RunStatus::Running,
            config: TrainConfig {
                seed: i as u64,
                ..Default::default()
            },
            summary: Summary::default(),
        })
        .collect();
    let ids = store.insert_finished_runs(&running).await?;
    let mut tickets = Vec::with_capacity(runs);
    for &id in &ids {
        let token = crate::secret::random_hex(32);
        // the runs were stored without a claim (attempt 0): their jobs are of that attempt
        let attempt = store.get_run(id).await?.map_or(0, |r| r.attempts);
        store
            .insert_cluster_job(
                id,
                attempt,
                &format!("{id}"),
                &crate::secret::token_hash(&token),
            )
            .await?;
        tickets.push((id, attempt, token));
    }
    let hub = Hub::default();
    let scheduler = Scheduler::new(
        store.clone(),
        settings.clone(),
        Registry::with_program(settings.models_dir.clone(), settings.worker_exe()?),
        hub.clone(),
        slots::plan(0, 1, 1),
    );
    let state = AppState::new(settings, store.clone(), scheduler, hub);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(crate::http::serve::serve(
        listener,
        router(state),
        std::future::pending(),
    ));

    let t = Instant::now();
    let cpu0 = cpu_seconds();
    let latencies = tokio::task::spawn_blocking(move || {
        let per_client: Vec<Vec<(i64, i64, String)>> = (0..clients)
            .map(|c| tickets.iter().skip(c).step_by(clients).cloned().collect())
            .collect();
        std::thread::scope(|scope| {
            let handles: Vec<_> = per_client
                .into_iter()
                .map(|mine| {
                    scope.spawn(move || -> Result<Vec<f64>> {
                        let agent: ureq::Agent = ureq::Agent::config_builder()
                            .http_status_as_error(false)
                            .build()
                            .into();
                        let mut lat = Vec::new();
                        // round-robin over this client's runs, one batch each in turn, as
                        // concurrent workers interleave
                        for b in 0..batches {
                            for (id, attempt, token) in &mine {
                                let first = (b * batch_events) as u64 + 1;
                                let events: Vec<serde_json::Value> = (0..batch_events as u64)
                                    .map(|k| {
                                        serde_json::json!({"event": "metric", "key": "train/loss",
                                            "step": first + k, "epoch": 0.5, "value": 1.0 / (first + k) as f64})
                                    })
                                    .collect();
                                let body = serde_json::json!({"attempt": attempt,
                                    "first_seq": first, "events": events})
                                .to_string();
                                let sent = Instant::now();
                                let resp = agent
                                    .post(&format!("http://{addr}/api/v1/worker/runs/{id}/events"))
                                    .header("Authorization", &format!("Bearer {token}"))
                                    .header("Content-Type", "application/json")
                                    .send(body.as_bytes())?;
                                anyhow::ensure!(
                                    resp.status().as_u16() == 200,
                                    "run {id}: HTTP {}",
                                    resp.status()
                                );
                                lat.push(sent.elapsed().as_secs_f64() * 1e3);
                            }
                        }
                        Ok(lat)
                    })
                })
                .collect();
            let mut all = Vec::new();
            for h in handles {
                all.extend(h.join().expect("client thread")?);
            }
            Ok::<_, anyhow::Error>(all)
        })
    })
    .await??;
    let secs = t.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu0;
    let requests = latencies.len();
    let events = requests * batch_events;
    // count them back: every point stored once
    let (stored, _) = store.points_written();
    anyhow::ensure!(
        stored as usize == events,
        "{events} events sent, {stored} points stored"
    );
    let mut sorted = latencies;
    sorted.sort_by(f64::total_cmp);
    let pct = |p: f64| sorted[((sorted.len() - 1) as f64 * p).round() as usize];
    println!(
        "{runs} running runs, {clients} client threads, {batch_events} events a batch, {batches} \
         batches a run"
    );
    println!(
        "{events} events in {requests} batches in {secs:.2} s: {:.0} events/s, {:.0} batches/s; \
         batch latency p50 {:.1} ms, p99 {:.1} ms; process CPU {:.1} s ({:.0}% of one core, \
         client threads included); all {stored} points stored once",
        events as f64 / secs,
        requests as f64 / secs,
        pct(0.5),
        pct(0.99),
        cpu,
        cpu / secs * 100.0
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
