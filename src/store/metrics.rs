//! The `metrics` table: one row per (run, key, step) point of a metric series.

use super::{Engine, Store, now};
use crate::eval::MetricKey;
use anyhow::{Context, Result};
use serde::Serialize;
use std::collections::BTreeMap;

/// Rows a metric INSERT carries (7 parameters each; SQLite takes up to 32,766).
const POINTS_PER_STATEMENT: usize = 1000;

/// A point to store.
#[derive(Debug, Clone, PartialEq)]
pub struct NewPoint {
    pub key: MetricKey,
    pub step: i64,
    pub epoch: f64,
    pub value: f64,
}

/// A stored point as the API returns it.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Point {
    pub step: i64,
    pub epoch: Option<f64>,
    pub value: f64,
    /// When the service stored it (RFC 3339, UTC): the wall-clock axis of curves.
    pub time: String,
    /// The run's attempt that reported it (1 unless the run was resumed).
    pub attempt: i64,
}

impl Store {
    /// Stores points of a run's `attempt` in one transaction; a point the same attempt repeats
    /// at a step replaces the old one, another attempt's stays.
    pub async fn insert_metric_points(
        &self,
        run_id: i64,
        attempt: i64,
        points: &[NewPoint],
    ) -> Result<()> {
        self.insert_metric_points_of(&[(run_id, attempt, points)])
            .await
    }

    /// Stores the points of several runs' attempts in one transaction, as
    /// [`Store::insert_metric_points`] does for one (generated databases of many runs).
    pub async fn insert_metric_points_of(&self, series: &[(i64, i64, &[NewPoint])]) -> Result<()> {
        let total: usize = series.iter().map(|(_, _, p)| p.len()).sum();
        if total == 0 {
            return Ok(());
        }
        let mut tx = self.write_tx().await?;
        insert_points_in(&mut tx, self.engine(), series).await?;
        tx.commit().await?;
        self.count_points(false, total);
        self.count_series_writes(series.iter().map(|(id, _, _)| *id));
        Ok(())
    }

    /// A run's series by key, each in step order; only `key` if given. Each step's point is
    /// its latest attempt's, or with `all_attempts` every attempt's (by step, then attempt).
    pub async fn metric_series(
        &self,
        run_id: i64,
        key: Option<MetricKey>,
        all_attempts: bool,
    ) -> Result<BTreeMap<MetricKey, Vec<Point>>> {
        self.series_where(run_id, key.map(|k| k.to_string()), None, all_attempts)
            .await
    }

    /// A run's series under one scope (`eval` for `eval/loss`, `eval/f1`, ...), each step's
    /// latest attempt: the run page's evaluation table, without the training curve's points.
    pub async fn metric_series_in(
        &self,
        run_id: i64,
        scope: &str,
    ) -> Result<BTreeMap<MetricKey, Vec<Point>>> {
        self.series_where(run_id, None, Some(format!("{scope}/")), false)
            .await
    }

    async fn series_where(
        &self,
        run_id: i64,
        key: Option<String>,
        prefix: Option<String>,
        all_attempts: bool,
    ) -> Result<BTreeMap<MetricKey, Vec<Point>>> {
        // keys under a prefix as a range of the (run_id, key, ...) index: prefix <= key < prefix
        // with its last character moved on (`eval/` .. `eval0`)
        let upper = prefix.as_ref().map(|p| {
            let mut u = p.clone();
            let last = u.pop().expect("a non-empty prefix");
            u.push(char::from_u32(last as u32 + 1).expect("an ASCII prefix"));
            u
        });
        // a literal key condition (not `$2 IS NULL OR ...`) lets SQLite seek the index to the
        // keys asked for: with the OR, the run page of a 100k-point run read every point of
        // its training curve to find its few evaluation points (14 ms instead of 1)
        let (condition, from, to) = match (key, prefix, upper) {
            (Some(k), _, _) => ("key = $2", Some(k), None),
            (None, Some(p), Some(u)) => ("key >= $2 AND key < $3", Some(p), Some(u)),
            _ => ("1 = 1", None, None),
        };
        let sql = if all_attempts {
            format!(
                "SELECT key, step, epoch, value, time, attempt FROM metrics \
                 WHERE run_id = $1 AND {condition} ORDER BY key, step, attempt"
            )
        } else {
            match self.engine() {
                // SQLite takes the bare columns of a MAX() aggregate from the row with the
                // maximum
                Engine::Sqlite => format!(
                    "SELECT key, step, epoch, value, time, MAX(attempt) FROM metrics \
                     WHERE run_id = $1 AND {condition} GROUP BY key, step ORDER BY key, step"
                ),
                Engine::Postgres => format!(
                    "SELECT DISTINCT ON (key, step) key, step, epoch, value, time, attempt \
                     FROM metrics WHERE run_id = $1 AND {condition} \
                     ORDER BY key, step, attempt DESC"
                ),
            }
        };
        let mut query = sqlx::query_as(&sql).bind(run_id);
        for v in [from, to].into_iter().flatten() {
            query = query.bind(v);
        }
        let rows: Vec<(String, i64, Option<f64>, f64, String, i64)> = query
            .fetch_all(self.pool())
            .await
            .context("reading metric series")?;
        let mut out: BTreeMap<MetricKey, Vec<Point>> = BTreeMap::new();
        for (key, step, epoch, value, time, attempt) in rows {
            let key = key
                .parse()
                .with_context(|| format!("run {run_id}: stored metric key"))?;
            out.entry(key).or_default().push(Point {
                step,
                epoch,
                value,
                time,
                attempt,
            });
        }
        Ok(out)
    }
}

/// At most `max_points` (4 or more) of a series in step order, for a curve drawn on fewer
/// pixels than it has points: the first and the last point, and between them the lowest and
/// the highest point of each of `(max_points - 2) / 2` equal step ranges, so every spike a
/// full-resolution curve shows is still drawn. A series of `max_points` or fewer comes back
/// whole. NaN values lose to any number.
pub fn downsample(points: Vec<Point>, max_points: usize) -> Vec<Point> {
    let max_points = max_points.max(4);
    if points.len() <= max_points {
        return points;
    }
    let n = points.len();
    let buckets = (max_points - 2) / 2;
    let (lo, hi) = (points[0].step, points[n - 1].step);
    // steps are ascending, so bucket indices are too; i128 keeps the product exact
    let span = (hi as i128 - lo as i128 + 1).max(1);
    let bucket_of = |step: i64| ((step as i128 - lo as i128) * buckets as i128 / span) as usize;
    // whether `a` beats `b` by `better` (a NaN never beats, anything beats a NaN)
    let beats =
        |a: f64, b: f64, better: fn(f64, f64) -> bool| !a.is_nan() && (b.is_nan() || better(a, b));
    let mut keep = vec![0];
    let mut i = 1;
    while i < n - 1 {
        let b = bucket_of(points[i].step);
        let (mut min, mut max) = (i, i);
        let mut j = i + 1;
        while j < n - 1 && bucket_of(points[j].step) == b {
            if beats(points[j].value, points[min].value, |a, b| a < b) {
                min = j;
            }
            if beats(points[j].value, points[max].value, |a, b| a > b) {
                max = j;
            }
            j += 1;
        }
        keep.push(min.min(max));
        if min != max {
            keep.push(min.max(max));
        }
        i = j;
    }
    keep.push(n - 1);
    let mut points: Vec<Option<Point>> = points.into_iter().map(Some).collect();
    keep.into_iter()
        .map(|k| points[k].take().expect("each point kept once"))
        .collect()
}

/// Writes points of runs' attempts within a transaction (see
/// [`Store::insert_metric_points_of`]); the caller commits and counts them.
pub(super) async fn insert_points_in(
    conn: &mut sqlx::AnyConnection,
    engine: Engine,
    series: &[(i64, i64, &[NewPoint])],
) -> Result<()> {
    let time = now();
    let rows: Vec<(i64, i64, String, &NewPoint)> = series
        .iter()
        .flat_map(|&(run, attempt, points)| {
            points
                .iter()
                .map(move |p| (run, attempt, p.key.to_string(), p))
        })
        .collect();
    // many rows a statement: each statement is a round trip to sqlx's SQLite thread
    for chunk in rows.chunks(POINTS_PER_STATEMENT) {
        let sql = format!(
            "INSERT INTO metrics (run_id, key, step, attempt, epoch, value, time) {} \
             ON CONFLICT (run_id, key, step, attempt) DO UPDATE \
             SET epoch = excluded.epoch, value = excluded.value, time = excluded.time",
            engine.values_rows(chunk.len(), 7)
        );
        let mut q = sqlx::query(&sql);
        for (run, attempt, key, p) in chunk {
            q = q
                .bind(*run)
                .bind(key.as_str())
                .bind(p.step)
                .bind(*attempt)
                .bind(p.epoch)
                .bind(p.value)
                .bind(time.as_str());
        }
        q.execute(&mut *conn)
            .await
            .context("storing metric points")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(values: &[f64]) -> Vec<Point> {
        values
            .iter()
            .enumerate()
            .map(|(i, &value)| Point {
                step: 10 * i as i64,
                epoch: None,
                value,
                time: String::new(),
                attempt: 1,
            })
            .collect()
    }

    #[test]
    fn a_short_series_comes_back_whole() {
        let s = series(&[3.0, 1.0, 2.0]);
        assert_eq!(downsample(s.clone(), 4), s);
    }

    #[test]
    fn a_long_series_keeps_its_ends_and_each_buckets_lowest_and_highest_point() {
        // values from a fixed pseudo-random sequence with spikes, 1,000 points at steps 0, 10, ..
        let mut x: u64 = 12345;
        let values: Vec<f64> = (0..1000)
            .map(|i| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let v = (x >> 33) as f64 / (1u64 << 31) as f64;
                if i % 97 == 0 { v + 10.0 } else { v }
            })
            .collect();
        let got = downsample(series(&values), 52);
        // the expectation, computed another way: 25 buckets of steps 10..=9980 split by the
        // step range [0, 9990] into 25 equal spans (of 399.6 steps), searched by brute force
        let mut want = vec![0usize];
        for b in 0..25 {
            let (from, to) = (b as f64 * 9991.0 / 25.0, (b + 1) as f64 * 9991.0 / 25.0);
            let inside: Vec<usize> = (1..999)
                .filter(|&i| (10 * i) as f64 >= from && ((10 * i) as f64) < to)
                .collect();
            let min = *inside
                .iter()
                .min_by(|&&a, &&b| values[a].total_cmp(&values[b]).then(a.cmp(&b)))
                .unwrap();
            let max = *inside
                .iter()
                .max_by(|&&a, &&b| values[a].total_cmp(&values[b]).then(b.cmp(&a)))
                .unwrap();
            want.push(min.min(max));
            if min != max {
                want.push(min.max(max));
            }
        }
        want.push(999);
        let got_steps: Vec<i64> = got.iter().map(|p| p.step).collect();
        let want_steps: Vec<i64> = want.iter().map(|&i| 10 * i as i64).collect();
        assert_eq!(got_steps, want_steps);
        assert!(got.len() <= 52);
        // every spike of +10 survives: the first point (step 0 is one), else the highest point
        // of its bucket
        let spikes = got.iter().filter(|p| p.value >= 10.0).count();
        assert_eq!(spikes, (0..1000).filter(|i| i % 97 == 0).count());
    }
}
