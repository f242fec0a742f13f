//! All SQL lives here, one module per table family. SQLite in WAL mode through sqlx, schema in
//! `migrations/`.

pub mod cluster;
pub mod datasets;
pub mod logs;
pub mod metrics;
pub mod predictions;
pub mod runs;
pub mod studies;
pub mod tracking;

use anyhow::{Context, Result};
use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use std::path::Path;
use std::time::Duration;
use time::OffsetDateTime;
use time::macros::format_description;

/// Handle on the database; cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    pool: SqlitePool,
    /// Metric points stored since the store was opened: native runs', external runs'.
    written: std::sync::Arc<[std::sync::atomic::AtomicU64; 2]>,
    /// Computed leaderboards by (dataset, metric), with the generation they were computed at
    /// (see [`Store::leaderboard`]).
    boards: std::sync::Arc<std::sync::Mutex<runs::BoardCache>>,
    /// Metric writes per run since the store was opened (see [`Store::series_generation`]).
    series_writes: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<i64, u64>>>,
}

impl Store {
    /// Opens (creating if needed) the database file and applies pending migrations.
    pub async fn open(path: &Path) -> Result<Store> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("creating data dir {}", dir.display()))?;
        }
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(options)
            .await
            .with_context(|| format!("opening database {}", path.display()))?;
        sqlx::migrate!("./migrations")
            .run(&pool)
            .await
            .context("applying database migrations")?;
        Ok(Store {
            pool,
            written: Default::default(),
            boards: Default::default(),
            series_writes: Default::default(),
        })
    }

    /// Whether the database answers a query.
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1")
            .execute(self.pool())
            .await
            .context("the database does not answer")?;
        Ok(())
    }

    /// Metric points stored since the store was opened: (native runs', external runs').
    pub fn points_written(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (self.written[0].load(Relaxed), self.written[1].load(Relaxed))
    }

    /// Counts stored points (`external` for external runs').
    pub(crate) fn count_points(&self, external: bool, n: usize) {
        self.written[usize::from(external)]
            .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
    }

    /// How many times this store has written metric points of a run: a kept copy of the
    /// run's series read while the count stood at the same number is still whole. Every metric
    /// point reaches the database through this process (workers report to their supervisor,
    /// external runs log through the HTTP API), so the in-memory count sees every write.
    pub fn series_generation(&self, run_id: i64) -> u64 {
        let writes = self.series_writes.lock().expect("series writes");
        writes.get(&run_id).copied().unwrap_or(0)
    }

    /// Notes metric writes to runs (after they committed).
    pub(crate) fn count_series_writes(&self, runs: impl IntoIterator<Item = i64>) {
        let mut writes = self.series_writes.lock().expect("series writes");
        for id in runs {
            *writes.entry(id).or_default() += 1;
        }
    }

    /// A transaction that writes: `BEGIN IMMEDIATE` takes the write lock at once, waiting
    /// for it up to the busy timeout, so that it never has to upgrade a read lock later (an
    /// upgrade that fails at once with "database is locked" when another writer committed
    /// in between).
    pub(crate) async fn write_tx(&self) -> sqlx::Result<sqlx::Transaction<'static, sqlx::Sqlite>> {
        self.pool.begin_with("BEGIN IMMEDIATE").await
    }

    /// The connection pool, for the table modules.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }
}

/// Current UTC time as stored in every `*_at`/`time` column: fixed-width RFC 3339 with
/// milliseconds, so that text order is time order.
pub fn now() -> String {
    format_time(OffsetDateTime::now_utc())
}

/// Formats a time the way [`now`] does.
pub fn format_time(t: OffsetDateTime) -> String {
    let fmt =
        format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");
    t.to_offset(time::UtcOffset::UTC)
        .format(&fmt)
        .expect("a UTC time always formats")
}

/// Parses a stored time back; `None` for anything else.
pub fn parse_time(s: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()
}
