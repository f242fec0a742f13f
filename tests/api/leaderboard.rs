//! The leaderboard query against a direct computation over the same runs.

use crate::helpers::TestApp;
use modalbench::protocol::Summary;
use modalbench::store::runs::{BoardMetric, RunStatus};

struct Finished {
    id: i64,
    dataset: String,
    model: String,
    status: RunStatus,
    summary: Summary,
}

#[tokio::test]
async fn the_leaderboard_keeps_the_best_succeeded_run_of_each_model() {
    let app = TestApp::new().await;
    let store = &app.state.store;
    let mut x: u64 = 7;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x % 1000) as f64 / 1000.0
    };
    let mut rows = Vec::new();
    for i in 0..60 {
        let dataset = format!("d{}", i % 2);
        let model = format!("m{}", i % 3);
        let status = if i % 7 == 0 {
            RunStatus::Failed
        } else {
            RunStatus::Succeeded
        };
        // model m2 on d1 never has an AUROC (a one-class test split)
        let auroc = if model == "m2" && dataset == "d1" {
            None
        } else {
            Some(next())
        };
        let summary = Summary {
            accuracy: next(),
            f1: next(),
            auroc,
            loss: next(),
            ..Default::default()
        };
        rows.push((model, dataset, status, summary));
    }
    let ids = store.insert_finished_runs(&rows).await.unwrap();
    let runs: Vec<Finished> = ids
        .into_iter()
        .zip(rows)
        .map(|(id, (model, dataset, status, summary))| Finished {
            id,
            dataset,
            model,
            status,
            summary,
        })
        .collect();

    for metric in [BoardMetric::Auroc, BoardMetric::Accuracy, BoardMetric::Loss] {
        let value = |s: &Summary| match metric {
            BoardMetric::Auroc => s.auroc,
            BoardMetric::Accuracy => Some(s.accuracy),
            BoardMetric::F1 => Some(s.f1),
            BoardMetric::Loss => Some(s.loss),
        };
        let better = |a: f64, b: f64| {
            if metric == BoardMetric::Loss {
                a < b
            } else {
                a > b
            }
        };
        let board = store.leaderboard(None, metric).await.unwrap();
        assert_eq!(board.len(), 6, "two datasets x three models");
        for row in &board {
            let group: Vec<&Finished> = runs
                .iter()
                .filter(|r| {
                    r.dataset == row.dataset
                        && r.model == row.model
                        && r.status == RunStatus::Succeeded
                })
                .collect();
            assert_eq!(row.runs as usize, group.len());
            let best = group.iter().filter(|r| value(&r.summary).is_some()).fold(
                None::<&&Finished>,
                |acc, r| match acc {
                    Some(a) if !better(value(&r.summary).unwrap(), value(&a.summary).unwrap()) => {
                        Some(a)
                    }
                    _ => Some(r),
                },
            );
            match best {
                Some(b) => assert_eq!(
                    value(&b.summary),
                    value(&group.iter().find(|r| r.id == row.run_id).unwrap().summary),
                    "{metric:?} {}/{}",
                    row.dataset,
                    row.model
                ),
                None => assert_eq!(
                    row.run_id,
                    group.iter().map(|r| r.id).max().unwrap(),
                    "newest run when none has the metric"
                ),
            }
        }
        // within a dataset, best first, runs without the metric last
        for d in ["d0", "d1"] {
            let vals: Vec<Option<f64>> = board
                .iter()
                .filter(|r| r.dataset == d)
                .map(|r| match metric {
                    BoardMetric::Auroc => r.auroc,
                    BoardMetric::Accuracy => r.accuracy,
                    BoardMetric::F1 => r.f1,
                    BoardMetric::Loss => r.loss,
                })
                .collect();
            for w in vals.windows(2) {
                match (w[0], w[1]) {
                    (Some(a), Some(b)) => {
                        assert!(a == b || better(a, b), "{metric:?} order {vals:?}")
                    }
                    (None, Some(_)) => {
                        panic!("a missing value sorted before a present one: {vals:?}")
                    }
                    _ => {}
                }
            }
        }
    }
    let one = store
        .leaderboard(Some("d1"), BoardMetric::F1)
        .await
        .unwrap();
    assert_eq!(one.len(), 3);
    assert!(one.iter().all(|r| r.dataset == "d1"));
}
