//! All SQL lives here, one module per table family. SQLite in WAL mode through sqlx, schema in
//! `migrations/`.

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
        Ok(Store { pool })
    }

    /// The connection pool, for the table modules.
    /// Whether the database answers a query.
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1")
            .execute(self.pool())
            .await
            .context("the database does not answer")?;
        Ok(())
    }

    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// A transaction that writes: `BEGIN IMMEDIATE` takes the write lock at its start (waiting
    /// out the busy timeout while another connection writes). A deferred transaction that
    /// reads first and writes later is refused at once ("database is locked", no waiting) when
    /// another writer committed in between, which concurrent requests make likely.
    pub async fn write(&self) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, sqlx::Error> {
        self.pool.begin_with("BEGIN IMMEDIATE").await
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
