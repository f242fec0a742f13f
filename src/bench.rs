//! Benchmarks: commands that print figures for BENCHMARKS.md (`modalbench bench ...`).

use crate::protocol::{Summary, TrainConfig};
use crate::store::Store;
use crate::store::metrics::NewPoint;
use crate::store::runs::{BoardMetric, RunStatus};
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
    let config = TrainConfig::default();
    for chunk in 0..runs.div_ceil(1000) {
        let mut tx = store.pool().begin().await?;
        for i in chunk * 1000..((chunk + 1) * 1000).min(runs) {
            sqlx::query(
                "INSERT INTO runs (status, model, dataset, config, created_at) VALUES ('running', ?, ?, ?, ?)",
            )
            .bind(format!("model-{}", i % 20))
            .bind(format!("dataset-{}", (i / 20) % 5))
            .bind(serde_json::to_string(&config)?)
            .bind(crate::store::now())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
    }
    let ids: Vec<i64> = sqlx::query_scalar("SELECT id FROM runs")
        .fetch_all(store.pool())
        .await?;
    for &id in &ids {
        let s = Summary {
            accuracy: rng.random_range(0.5..1.0),
            f1: rng.random_range(0.4..1.0),
            auroc: Some(rng.random_range(0.5..1.0)),
            loss: rng.random_range(0.1..1.0),
            train_seconds: rng.random_range(10.0..1000.0),
            samples_per_second: rng.random_range(10.0..500.0),
            ..Default::default()
        };
        let status = if id % 10 == 0 {
            RunStatus::Failed
        } else {
            RunStatus::Succeeded
        };
        store.finish_run(id, status, None, Some(&s)).await?;
    }
    let points: Vec<NewPoint> = (0..points_per_run)
        .map(|step| NewPoint {
            key: "train/loss".into(),
            step: step as i64,
            epoch: 0.0,
            value: 1.0,
        })
        .collect();
    for &id in &ids {
        store.insert_metric_points(id, &points).await?;
    }
    println!(
        "filled {} runs and {} metric points in {:.1}s",
        ids.len(),
        ids.len() * points_per_run,
        t.elapsed().as_secs_f64()
    );
    for (label, dataset) in [("one dataset", Some("dataset-3")), ("all datasets", None)] {
        let mut times = Vec::new();
        let mut rows = 0;
        for _ in 0..repeats {
            let t = Instant::now();
            rows = store.leaderboard(dataset, BoardMetric::Auroc).await?.len();
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
        times.sort_by(f64::total_cmp);
        println!(
            "leaderboard, {label}: {rows} rows, median {:.1} ms, min {:.1} ms over {repeats} queries",
            times[times.len() / 2],
            times[0]
        );
    }
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
