//! Start-up: open the store, install presets and the demo data, register datasets, recover
//! interrupted runs. `serve` and the tests build the application the same way.

use crate::config::Settings;
use crate::data::{self, demo};
use crate::http::AppState;
use crate::live::Hub;
use crate::models::presets;
use crate::models::registry::Registry;
use crate::queue::Scheduler;
use crate::queue::slots::Slot;
use crate::store::Store;
use crate::store::runs::RunFilter;
use crate::studies::StudyRequest;
use anyhow::{Context, Result};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Seed of the embedded demo data.
pub const DEMO_SEED: u64 = 2024;

/// Builds the application state over `settings` with the given worker slots. The scheduler
/// is created but not started (see [`Scheduler::spawn`]).
pub async fn build(settings: Settings, slots: Vec<Slot>) -> Result<AppState> {
    let (data_dir, models_dir, datasets_dir) = (
        settings.data_dir.clone(),
        settings.models_dir.clone(),
        settings.datasets_dir(),
    );
    let worker_exe = settings.worker_exe()?;
    tokio::task::spawn_blocking(move || -> Result<()> {
        for dir in [&data_dir, &datasets_dir, &models_dir] {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        write_presets(&models_dir, &worker_exe)?;
        for (name, write) in demo::DEMOS {
            if !datasets_dir.join(name).exists() {
                write_atomically(&datasets_dir, name, |tmp| write(tmp, DEMO_SEED))?;
                tracing::info!(dataset = name, "generated the demo dataset");
            }
        }
        Ok(())
    })
    .await??;
    let store = settings.open_store().await?;
    register_datasets(&store, &settings.datasets_dir()).await?;
    let hub = Hub::default();
    let registry = Registry::with_program(settings.models_dir.clone(), settings.worker_exe()?);
    let scheduler = Scheduler::new(
        store.clone(),
        settings.clone(),
        registry,
        hub.clone(),
        slots,
    );
    scheduler.recover().await?;
    Ok(AppState::new(settings, store, scheduler, hub))
}

/// Writes the built-in presets missing from `models_dir` (random initialisation needs libtorch,
/// which the service leaves to the worker program: `worker_exe presets`).
fn write_presets(models_dir: &Path, worker_exe: &Path) -> Result<()> {
    let missing = presets::missing(models_dir);
    if missing.is_empty() {
        return Ok(());
    }
    let out = std::process::Command::new(worker_exe)
        .arg("presets")
        .arg("--models-dir")
        .arg(models_dir)
        .output()
        .with_context(|| format!("starting {} to write the presets", worker_exe.display()))?;
    if !out.status.success() {
        anyhow::bail!(
            "writing the built-in presets ({}) with {}: {}; {}",
            missing.join(", "),
            worker_exe.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    for name in missing {
        tracing::info!(model = name, "wrote built-in preset");
    }
    Ok(())
}

/// Runs `write` into a temporary sibling folder (whose path it gets, named `name` inside its
/// parent) and renames the result to `dir/name`, so a crash never leaves a half-written folder.
fn write_atomically(dir: &Path, name: &str, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    write(&tmp)?;
    std::fs::rename(tmp.join(name), dir.join(name))
        .with_context(|| format!("installing {name}"))?;
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(())
}

/// Registers every folder under `root` whose format is recognised; others are skipped with a
/// logged reason. A folder registered before whose files (the split files and manifest at its
/// top level) are unchanged is not read again. Registered datasets whose folder under `root`
/// disappeared are forgotten.
pub async fn register_datasets(store: &Store, root: &Path) -> Result<Vec<String>> {
    let scan_root = root.to_path_buf();
    let known: HashMap<String, data::DatasetInfo> = store
        .list_datasets()
        .await?
        .into_iter()
        .map(|d| (d.name, d.info))
        .collect();
    let (found, broken) =
        tokio::task::spawn_blocking(move || scan_datasets(&scan_root, &known)).await?;
    for name in broken {
        // registered once, unreadable now: runs would fail on it
        store.delete_dataset(&name).await?;
    }
    let mut names = Vec::new();
    for (name, info) in found {
        store.upsert_dataset(&name, &info).await?;
        names.push(name);
    }
    let registered: Vec<(String, PathBuf)> = store
        .list_datasets()
        .await?
        .into_iter()
        .filter(|d| d.info.source.root.starts_with(root))
        .map(|d| (d.name, d.info.source.root))
        .collect();
    let gone: Vec<String> = tokio::task::spawn_blocking(move || {
        registered
            .into_iter()
            .filter(|(_, folder)| !folder.exists())
            .map(|(name, _)| name)
            .collect()
    })
    .await?;
    for name in gone {
        tracing::info!(dataset = name, "forgotten: its folder is gone");
        store.delete_dataset(&name).await?;
    }
    Ok(names)
}

/// The readable datasets under `root`, and the names of the folders that failed to read.
fn scan_datasets(
    root: &Path,
    known: &HashMap<String, data::DatasetInfo>,
) -> (Vec<(String, data::DatasetInfo)>, Vec<String>) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return (Vec::new(), Vec::new());
    };
    let mut dirs: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.is_dir()
                && !p
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .collect();
    dirs.sort();
    let (mut out, mut broken) = (Vec::new(), Vec::new());
    for dir in dirs {
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let source = match data::detect(&dir) {
            Ok(Some(s)) => s,
            Ok(None) => {
                tracing::warn!(
                    dataset = name,
                    formats = data::formats::names().join(", "),
                    "skipped: no known dataset layout and no modalbench.toml"
                );
                continue;
            }
            Err(e) => {
                tracing::warn!(
                    dataset = name,
                    error = format!("{e:#}"),
                    "skipped: unreadable modalbench.toml"
                );
                continue;
            }
        };
        let signature = data::folder_signature(&dir);
        if let Some(info) = known.get(&name)
            && info.source == source
            && info.signature == signature
        {
            out.push((name, info.clone()));
            continue;
        }
        match data::inspect(&name, &source, data::Check::Strict) {
            Ok(info) => out.push((name, data::DatasetInfo { signature, ..info })),
            Err(e) => {
                tracing::warn!(
                    dataset = name,
                    error = format!("{e:#}"),
                    "skipped: unreadable dataset"
                );
                broken.push(name);
            }
        }
    }
    (out, broken)
}

/// The demo study's models, in the order they are queued (the headline comparison first: the
/// same pretrained text model without and with a pretrained image encoder), with their
/// learning rates (pretrained encoders fine-tune at 1e-4, models trained from scratch at 1e-3)
/// and whether the image encoder stays frozen (the ImageNet MobileNetV2 does: its features are
/// then computed once per image).
pub const DEMO_STUDY: [(&str, f64, bool); 7] = [
    ("minilm-l6", 1e-4, false),
    (presets::FUSION_MOBILENET, 1e-4, true),
    (presets::FUSION_LATE_MOBILENET, 1e-4, true),
    ("clip-tiny", 1e-3, false),
    ("vilt-tiny", 1e-3, false),
    ("flava-tiny", 1e-3, false),
    (presets::BERT_TINY, 1e-3, false),
];

/// Queues the demo study when the database has no runs yet: every model of [`DEMO_STUDY`] that
/// is installed, on every demo dataset, 3 epochs each, with as many seeds as there are worker
/// slots (1 to 3), so that more slots give tighter comparisons in the same time. It is a study
/// like any other (`POST /api/v1/studies`), its models' learning rates and queue order given
/// per model. Returns the run ids.
pub async fn queue_demo_study(state: &AppState) -> Result<Vec<i64>> {
    if !state
        .store
        .list_runs(&RunFilter {
            limit: 1,
            ..Default::default()
        })
        .await?
        .is_empty()
    {
        return Ok(Vec::new());
    }
    let seeds = state.scheduler.slots().len().clamp(1, 3) as u64;
    let registry = state.registry.clone();
    let installed = tokio::task::spawn_blocking(move || {
        DEMO_STUDY
            .iter()
            .filter(|(model, _, _)| match registry.find(model) {
                Some(m) if m.problem.is_none() => true,
                found => {
                    let why = found
                        .and_then(|m| m.problem)
                        .unwrap_or_else(|| "not installed".into());
                    tracing::warn!(
                        model,
                        reason = %why,
                        "left out of the demo study (run the setup step to install it)"
                    );
                    false
                }
            })
            .copied()
            .collect::<Vec<_>>()
    })
    .await?;
    let per_model = installed
        .iter()
        .enumerate()
        .map(|(rank, (model, lr, frozen))| {
            // earlier rows of the table first
            let mut options = serde_json::json!({
                "learning_rate": lr,
                "priority": (installed.len() - rank) as i64,
            });
            if *frozen {
                options["freeze_image_encoder"] = true.into();
            }
            (
                model.to_string(),
                options.as_object().cloned().unwrap_or_default(),
            )
        })
        .collect();
    let req = StudyRequest {
        name: "demo".into(),
        models: installed.iter().map(|(m, _, _)| m.to_string()).collect(),
        datasets: demo::DEMOS.iter().map(|(d, _)| d.to_string()).collect(),
        seeds: (0..seeds).collect(),
        grid: Default::default(),
        base: serde_json::json!({"epochs": 3, "max_length": 48})
            .as_object()
            .cloned()
            .unwrap_or_default(),
        per_model,
    };
    let (_, runs) = state
        .scheduler
        .submit_study(req)
        .await
        .map_err(|e| anyhow::Error::new(e).context("queueing the demo study"))?;
    Ok(runs.into_iter().map(|r| r.id).collect())
}
