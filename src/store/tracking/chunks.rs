//! An external run's metric points, packed: a row of `external_metric_chunks` holds up to
//! [`POINTS_PER_CHUNK`] points of one key of one run, as logged together, 24 bytes each
//! (step, timestamp in ms, value: little-endian i64, i64 and f64; a NaN is kept as its bits).
//! A 1,000-metric `log-batch` of 10 keys is 10 rows, not 1,000. With one row a point, the
//! INSERT was 1.4 ms of a 3.2 ms request; SQLite alone (Python's `sqlite3`, WAL) inserts the
//! 10 packed rows in 0.13 ms instead of 1.42, and commits them in 0.18 ms instead of 0.50.
//!
//! A series reads back in MLflow's order: by step, then timestamp, then as it was logged
//! (chunk id, then place in the chunk), where MLflow's third key is the row id.

use super::{LoggedPoint, MetricPoint, TrackingResult};
use crate::store::Engine;
use anyhow::{Context, Result, bail};
use sqlx::{Any, AnyPool, Transaction};
use std::collections::BTreeMap;

/// Bytes of one packed point.
const POINT_BYTES: usize = 24;
/// Points a chunk holds at most (96 KiB).
const POINTS_PER_CHUNK: usize = 4096;
/// Chunk rows per INSERT statement (3 parameters each).
const CHUNKS_PER_STATEMENT: usize = 1000;
/// Legacy rows converted per read (see [`convert_legacy`]).
const LEGACY_ROWS_PER_READ: i64 = 100_000;

/// Packs points, in the order given.
fn pack<'a>(points: impl IntoIterator<Item = &'a LoggedPoint<'a>>) -> Vec<u8> {
    let points = points.into_iter();
    let mut out = Vec::with_capacity(points.size_hint().0 * POINT_BYTES);
    for p in points {
        out.extend_from_slice(&p.step.to_le_bytes());
        out.extend_from_slice(&p.timestamp.to_le_bytes());
        out.extend_from_slice(&p.value.to_bits().to_le_bytes());
    }
    out
}

/// Appends the points of a stored chunk of `key` to `out`.
fn unpack(key: &str, chunk: &[u8], out: &mut Vec<MetricPoint>) -> Result<()> {
    if !chunk.len().is_multiple_of(POINT_BYTES) {
        bail!(
            "a stored chunk of metric '{key}' is {} bytes, not a whole number of points",
            chunk.len()
        );
    }
    let word = |b: &[u8]| u64::from_le_bytes(b.try_into().expect("8 bytes"));
    out.extend(chunk.chunks_exact(POINT_BYTES).map(|p| MetricPoint {
        key: key.to_string(),
        step: word(&p[0..8]) as i64,
        timestamp: word(&p[8..16]) as i64,
        value: f64::from_bits(word(&p[16..24])),
    }));
    Ok(())
}

/// Puts the points of one series, read chunk by chunk in id order, in MLflow's order (a
/// stable sort: points at one step and timestamp stay as they were logged; a series logged in
/// step order is only checked).
fn order(points: &mut [MetricPoint]) {
    points.sort_by_key(|p| (p.step, p.timestamp));
}

/// Stores points of run `id` as chunks, one or more per key, each key's points in the order
/// given.
pub(super) async fn insert(
    tx: &mut Transaction<'_, Any>,
    engine: Engine,
    id: i64,
    points: &[LoggedPoint<'_>],
) -> TrackingResult<()> {
    // by key, a stable sort keeping each key's order
    let mut by_key: Vec<&LoggedPoint> = points.iter().collect();
    by_key.sort_by_key(|p| p.key);
    let mut rows: Vec<(&str, Vec<u8>)> = Vec::new();
    for series in by_key.chunk_by(|a, b| a.key == b.key) {
        for chunk in series.chunks(POINTS_PER_CHUNK) {
            rows.push((chunk[0].key, pack(chunk.iter().copied())));
        }
    }
    for rows in rows.chunks(CHUNKS_PER_STATEMENT) {
        let sql = format!(
            "INSERT INTO external_metric_chunks (run_id, key, points) {}",
            engine.values_rows(rows.len(), 3)
        );
        let mut q = sqlx::query(&sql);
        for (key, points) in rows {
            q = q.bind(id).bind(*key).bind(points.as_slice());
        }
        q.execute(&mut **tx).await?;
    }
    Ok(())
}

/// Every point of run `id` by key (`key` only if given), each key's in MLflow's order.
pub(super) async fn read<'c, E: sqlx::Executor<'c, Database = Any>>(
    executor: E,
    id: i64,
    key: Option<&str>,
) -> Result<BTreeMap<String, Vec<MetricPoint>>> {
    // a literal key condition lets the index seek to the key
    let sql = if key.is_some() {
        "SELECT key, points FROM external_metric_chunks WHERE run_id = $1 AND key = $2 \
         ORDER BY key, id"
    } else {
        "SELECT key, points FROM external_metric_chunks WHERE run_id = $1 ORDER BY key, id"
    };
    let mut query = sqlx::query_as(sql).bind(id);
    if let Some(k) = key {
        query = query.bind(k);
    }
    let rows: Vec<(String, Vec<u8>)> = query
        .fetch_all(executor)
        .await
        .with_context(|| format!("reading the metric points of run {id}"))?;
    let mut out: BTreeMap<String, Vec<MetricPoint>> = BTreeMap::new();
    for (key, chunk) in rows {
        let points = out.entry(key.clone()).or_default();
        unpack(&key, &chunk, points)?;
    }
    for points in out.values_mut() {
        order(points);
    }
    Ok(out)
}

/// Moves the points of a database made before packing (one row of `external_metrics` per
/// point) into chunks and drops that table, in one transaction that holds the write lock, so
/// that of two servers opening the database at once one converts and the other finds it done.
/// A series keeps its order: the old rows are read in id order.
pub(crate) async fn convert_legacy(pool: &AnyPool, engine: Engine) -> Result<()> {
    let exists = match engine {
        Engine::Sqlite => {
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'external_metrics'"
        }
        Engine::Postgres => {
            "SELECT COUNT(*) FROM information_schema.tables \
             WHERE table_schema = current_schema() AND table_name = 'external_metrics'"
        }
    };
    let (n,): (i64,) = sqlx::query_as(exists).fetch_one(pool).await?;
    if n == 0 {
        return Ok(());
    }
    let mut tx = match engine {
        Engine::Sqlite => pool.begin_with("BEGIN IMMEDIATE").await?,
        Engine::Postgres => {
            let mut tx = pool.begin().await?;
            // one key for this conversion among the advisory locks
            sqlx::query("SELECT pg_advisory_xact_lock(7212468915634200721)")
                .execute(&mut *tx)
                .await?;
            tx
        }
    };
    let (n,): (i64,) = sqlx::query_as(exists).fetch_one(&mut *tx).await?;
    if n == 0 {
        return Ok(());
    }
    let mut after = i64::MIN;
    loop {
        let rows: Vec<(i64, i64, String, Option<f64>, i64, i64)> = sqlx::query_as(
            "SELECT id, run_id, key, value, timestamp, step FROM external_metrics \
             WHERE id > $1 ORDER BY id LIMIT $2",
        )
        .bind(after)
        .bind(LEGACY_ROWS_PER_READ)
        .fetch_all(&mut *tx)
        .await
        .context("reading metric points stored one a row")?;
        let Some(last) = rows.last() else { break };
        after = last.0;
        // by run, each run's points in id order (a stable sort)
        let mut points: Vec<(i64, LoggedPoint)> = rows
            .iter()
            .map(|(_, run, key, value, timestamp, step)| {
                let point = LoggedPoint {
                    key,
                    value: value.unwrap_or(f64::NAN),
                    timestamp: *timestamp,
                    step: *step,
                };
                (*run, point)
            })
            .collect();
        points.sort_by_key(|(run, _)| *run);
        for run in points.chunk_by(|a, b| a.0 == b.0) {
            let of_run: Vec<LoggedPoint> = run.iter().map(|(_, p)| *p).collect();
            insert(&mut tx, engine, run[0].0, &of_run)
                .await
                .context("packing metric points")?;
        }
    }
    sqlx::query("DROP TABLE external_metrics")
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_unpack_as_packed_with_nan_and_extremes_bit_for_bit() {
        let values = [
            0.393_458_870_168_483_63,
            -0.0,
            f64::NAN,
            f64::INFINITY,
            1e-310,
        ];
        let steps = [i64::MIN, -1, 0, 7, i64::MAX];
        let logged: Vec<LoggedPoint> = (0..5)
            .map(|i| LoggedPoint {
                key: "loss",
                value: values[i],
                timestamp: 1_700_000_000_000 + i as i64,
                step: steps[i],
            })
            .collect();
        let packed = pack(&logged);
        assert_eq!(packed.len(), 5 * POINT_BYTES);
        let mut back = Vec::new();
        unpack("loss", &packed, &mut back).unwrap();
        for (p, q) in logged.iter().zip(&back) {
            assert_eq!((p.step, p.timestamp), (q.step, q.timestamp));
            assert_eq!(p.value.to_bits(), q.value.to_bits());
            assert_eq!(q.key, "loss");
        }
    }

    #[test]
    fn a_chunk_cut_short_is_refused_by_name() {
        let p = LoggedPoint {
            key: "acc",
            value: 1.0,
            timestamp: 0,
            step: 0,
        };
        let packed = pack([&p, &p]);
        let err = unpack("acc", &packed[..40], &mut Vec::new()).unwrap_err();
        assert!(
            err.to_string().contains("metric 'acc' is 40 bytes"),
            "{err}"
        );
    }

    #[test]
    fn a_series_orders_by_step_then_timestamp_then_as_logged() {
        // (step, timestamp, value) as logged; the value tells the logging order
        let logged = [
            (2, 5, 0.0),
            (1, 9, 1.0),
            (1, 3, 2.0),
            (2, 5, 3.0),
            (1, 3, 4.0),
        ];
        let mut points: Vec<MetricPoint> = logged
            .iter()
            .map(|&(step, timestamp, value)| MetricPoint {
                key: "k".into(),
                value,
                timestamp,
                step,
            })
            .collect();
        order(&mut points);
        let got: Vec<f64> = points.iter().map(|p| p.value).collect();
        assert_eq!(got, [2.0, 4.0, 1.0, 0.0, 3.0]);
    }
}
