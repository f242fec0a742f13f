//! All SQL lives here, one module per table family. The same store runs on SQLite (the
//! embedded default: one file in the data dir, WAL mode) or on PostgreSQL (a lab's shared
//! database, which several server processes may use at once), through sqlx's `Any` driver.
//! Statements are written once in the SQL both engines accept (`$1` placeholders, which SQLite
//! reads too); the few that differ take their engine's text from [`Engine`]. Each engine has
//! its own migrations: `migrations/sqlite/` and `migrations/postgres/`, one schema.

pub mod cluster;
pub mod datasets;
pub mod logs;
pub mod metrics;
pub mod predictions;
pub mod runs;
pub mod studies;
pub mod tracking;

use anyhow::{Context, Result, bail};
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, Executor};
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;
use time::OffsetDateTime;
use time::macros::format_description;

/// Whether `e` is the database refusing for now, so that the same request may succeed when
/// retried: SQLite's write lock held by another past the busy timeout (`SQLITE_BUSY`,
/// `SQLITE_LOCKED`), PostgreSQL's lock timeout, deadlock or serialization failure, or no pooled
/// connection free within the acquire timeout.
pub fn is_busy(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::PoolTimedOut => true,
        sqlx::Error::Database(db) => {
            let code = db.code();
            let code = code.as_deref().unwrap_or_default();
            // SQLite's extended result codes keep the primary one in the low byte
            match code.parse::<i64>() {
                Ok(n) => matches!(n & 0xff, 5 | 6),
                Err(_) => matches!(code, "55P03" | "40P01" | "40001"),
            }
        }
        _ => false,
    }
}

/// The busy database ([`is_busy`]) among the causes of `e`, if one is.
pub fn busy_cause(e: &anyhow::Error) -> Option<&sqlx::Error> {
    e.chain()
        .find_map(|c| c.downcast_ref::<sqlx::Error>().filter(|e| is_busy(e)))
}

/// The database engine a store runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// One file, one server process (the default).
    Sqlite,
    /// A PostgreSQL server, shared by any number of server processes.
    Postgres,
}

impl Engine {
    /// The engine a database URL names (`sqlite:` or `postgres:`/`postgresql:`).
    pub fn of_url(url: &str) -> Result<Engine> {
        let scheme = url.split(':').next().unwrap_or_default();
        match scheme {
            "sqlite" => Ok(Engine::Sqlite),
            "postgres" | "postgresql" => Ok(Engine::Postgres),
            _ => bail!(
                "unsupported database URL scheme `{scheme}:` (use `sqlite:` or `postgres:`, as in \
                 postgres://user@host:5432/modalbench)"
            ),
        }
    }

    /// An integer read from a JSON text column (`None` where absent).
    pub(crate) fn json_integer(self, column: &str, field: &str) -> String {
        match self {
            Engine::Sqlite => format!("json_extract({column}, '$.{field}')"),
            Engine::Postgres => format!("CAST(CAST({column} AS jsonb) ->> '{field}' AS BIGINT)"),
        }
    }

    /// The larger of two numbers (SQLite's two-argument `MAX`).
    pub(crate) fn greatest(self, a: &str, b: &str) -> String {
        match self {
            Engine::Sqlite => format!("MAX({a}, {b})"),
            Engine::Postgres => format!("GREATEST({a}, {b})"),
        }
    }

    /// What ends a `SELECT` that picks a row to change within a transaction: PostgreSQL
    /// locks it (skipping rows another transaction holds), SQLite's write transaction
    /// already holds the whole database.
    pub(crate) fn lock_row(self, skip_locked: bool) -> &'static str {
        match (self, skip_locked) {
            (Engine::Sqlite, _) => "",
            (Engine::Postgres, true) => " FOR UPDATE SKIP LOCKED",
            (Engine::Postgres, false) => " FOR UPDATE",
        }
    }

    /// `n` placeholders from the `first`: `$first, $first+1, ...` on PostgreSQL; `?, ?, ...`
    /// on SQLite, whose `sqlite3_bind_parameter_name` walks the statement's list of named
    /// parameters at every bind (so a statement of 700 `$N`s spent a quarter of the
    /// ingestion's time there; its anonymous `?`s are not in the list). Only for statements
    /// whose values are bound in placeholder order.
    pub(crate) fn placeholders(self, first: usize, n: usize) -> String {
        match self {
            Engine::Sqlite => vec!["?"; n].join(", "),
            Engine::Postgres => (first..first + n)
                .map(|i| format!("${i}"))
                .collect::<Vec<_>>()
                .join(", "),
        }
    }

    /// `VALUES (...), (...)` for `rows` rows of `columns` values, numbered from 1.
    pub(crate) fn values_rows(self, rows: usize, columns: usize) -> String {
        let mut s = String::from("VALUES ");
        for r in 0..rows {
            if r > 0 {
                s.push_str(", ");
            }
            s.push('(');
            s.push_str(&self.placeholders(1 + r * columns, columns));
            s.push(')');
        }
        s
    }
}

/// Handle on the database; cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    engine: Engine,
    /// This process's name among the servers sharing the database (`host:pid:random`): the
    /// owner of the runs it claims.
    server_id: std::sync::Arc<str>,
    /// The machine's host name, as the servers table records it.
    host: std::sync::Arc<str>,
    /// Metric points stored since the store was opened: native runs', external runs'.
    written: std::sync::Arc<[std::sync::atomic::AtomicU64; 2]>,
    /// Computed leaderboards by (dataset, metric), with the generation they were computed at
    /// (see [`Store::leaderboard`]).
    boards: std::sync::Arc<std::sync::Mutex<runs::BoardCache>>,
    /// Metric writes per run since the store was opened (see [`Store::series_generation`]).
    series_writes: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<i64, u64>>>,
    /// On SQLite, the task that writes external runs' logged batches in groups (see
    /// [`tracking::GroupWriter`]).
    group: Option<tracking::GroupWriter>,
}

/// The URL of the SQLite database file at `path` (created with its folder if missing).
pub fn sqlite_url(path: &Path) -> Result<String> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating data dir {}", dir.display()))?;
    }
    let absolute = std::path::absolute(path)
        .with_context(|| format!("resolving the database path {}", path.display()))?;
    let url = url::Url::from_file_path(&absolute)
        .map_err(|()| anyhow::anyhow!("{} is not a usable file path", absolute.display()))?;
    Ok(format!("sqlite://{}?mode=rwc", url.path()))
}

impl Store {
    /// Opens (creating if needed) the SQLite database file at `path` and applies pending
    /// migrations.
    pub async fn open(path: &Path) -> Result<Store> {
        Store::connect(&sqlite_url(path)?).await
    }

    /// Opens the database a URL names (`sqlite://...` or `postgres://...`) and applies
    /// pending migrations. The PostgreSQL database must exist; its schema is made here.
    pub async fn connect(url: &str) -> Result<Store> {
        sqlx::any::install_default_drivers();
        let engine = Engine::of_url(url)?;
        let options = AnyConnectOptions::from_str(url)
            .map_err(|e| anyhow::anyhow!("the database URL is malformed: {e}"))?;
        let shown = redact(url);
        let pool = match engine {
            Engine::Sqlite => AnyPoolOptions::new()
                .max_connections(8)
                .after_connect(|conn, _| {
                    Box::pin(async move {
                        // WAL lets pages read while a writer writes; a writer waits up to
                        // 10 s for another's lock instead of failing at once; reads come
                        // from the file mapped in memory, not copied in by a read(2) per
                        // page (a page of 100 runs at offset 5,000 spent a fifth of its
                        // time in the kernel's copies)
                        conn.execute(
                            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
                             PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 10000; \
                             PRAGMA mmap_size = 1073741824;",
                        )
                        .await?;
                        Ok(())
                    })
                })
                .connect_with(options)
                .await
                .with_context(|| format!("opening database {shown}"))?,
            Engine::Postgres => AnyPoolOptions::new()
                .max_connections(16)
                .acquire_timeout(Duration::from_secs(30))
                .connect_with(options)
                .await
                .with_context(|| format!("connecting to database {shown}"))?,
        };
        let migrations = match engine {
            Engine::Sqlite => sqlx::migrate!("./migrations/sqlite"),
            Engine::Postgres => sqlx::migrate!("./migrations/postgres"),
        };
        migrations
            .run(&pool)
            .await
            .context("applying database migrations")?;
        tracking::convert_legacy(&pool, engine)
            .await
            .context("packing the metric points of external runs")?;
        let host = hostname();
        let server_id = format!(
            "{host}:{}:{}",
            std::process::id(),
            crate::secret::random_hex(4)
        );
        let group = (engine == Engine::Sqlite).then(|| tracking::GroupWriter::spawn(pool.clone()));
        Ok(Store {
            group,
            pool,
            engine,
            server_id: server_id.into(),
            host: host.into(),
            written: Default::default(),
            boards: Default::default(),
            series_writes: Default::default(),
        })
    }

    /// The engine the store runs on.
    pub fn engine(&self) -> Engine {
        self.engine
    }

    /// This process's name among the servers sharing the database.
    pub fn server_id(&self) -> &str {
        &self.server_id
    }

    /// The machine's host name (read once, when the store was opened).
    pub(crate) fn host(&self) -> &str {
        &self.host
    }

    /// Records that this server is alive (its row in `servers`, made on the first call):
    /// another server takes over its runs only once its heartbeat is older than the lease.
    pub async fn heartbeat(&self) -> Result<()> {
        let t = now();
        sqlx::query(
            "INSERT INTO servers (id, host, pid, started_at, heartbeat_at) \
             VALUES ($1, $2, $3, $4, $4) \
             ON CONFLICT (id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at",
        )
        .bind(self.server_id())
        .bind(&*self.host)
        .bind(i64::from(std::process::id()))
        .bind(&t)
        .execute(self.pool())
        .await
        .context("recording the server's heartbeat")?;
        Ok(())
    }

    /// Removes this server from `servers` (at shutdown): its runs are then free to take over
    /// at once.
    pub async fn leave(&self) -> Result<()> {
        sqlx::query("DELETE FROM servers WHERE id = $1")
            .bind(self.server_id())
            .execute(self.pool())
            .await
            .context("removing the server's heartbeat")?;
        Ok(())
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
    /// run's series read while the count stood at the same number is still whole. On SQLite
    /// every metric point reaches the database through this process (workers report to their
    /// supervisor, external runs log through the HTTP API), so the in-memory count sees every
    /// write. On PostgreSQL another server may write the run's points, so there is no
    /// generation to trust: `None`, and the caller reads the series again.
    pub fn series_generation(&self, run_id: i64) -> Option<u64> {
        if self.engine != Engine::Sqlite {
            return None;
        }
        let writes = self.series_writes.lock().expect("series writes");
        Some(writes.get(&run_id).copied().unwrap_or(0))
    }

    /// Notes metric writes to runs (after they committed).
    pub(crate) fn count_series_writes(&self, runs: impl IntoIterator<Item = i64>) {
        let mut writes = self.series_writes.lock().expect("series writes");
        for id in runs {
            *writes.entry(id).or_default() += 1;
        }
    }

    /// A transaction that writes. On SQLite `BEGIN IMMEDIATE` takes the write lock at once,
    /// waiting for it up to the busy timeout, so that it never has to upgrade a read lock
    /// later (an upgrade that fails at once with "database is locked" when another writer
    /// committed in between). On PostgreSQL rows are locked as statements reach them.
    pub(crate) async fn write_tx(&self) -> sqlx::Result<sqlx::Transaction<'static, sqlx::Any>> {
        match self.engine {
            Engine::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await,
            Engine::Postgres => self.pool.begin().await,
        }
    }

    /// The connection pool, for the table modules.
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }
}

/// The machine's host name, `localhost` when unreadable.
pub(crate) fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// A database URL with its password hidden, for messages.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_string(),
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

/// An optional float to bind. sqlx's `Any` driver sends a NULL `f64` to PostgreSQL as a NULL
/// `float4` (sqlx 0.8.6 swaps the two float kinds for NULLs), and a statement PostgreSQL
/// prepared with that parameter type then refuses the eight bytes of a later non-NULL value
/// ("incorrect binary data format"). This sends NULL as the kind that reaches PostgreSQL as a
/// `float8`, so a statement's parameter is a `float8` whichever value came first.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Real(pub Option<f64>);

impl sqlx::Type<sqlx::Any> for Real {
    fn type_info() -> sqlx::any::AnyTypeInfo {
        <f64 as sqlx::Type<sqlx::Any>>::type_info()
    }
}

impl<'q> sqlx::Encode<'q, sqlx::Any> for Real {
    fn encode_by_ref(
        &self,
        buf: &mut <sqlx::Any as sqlx::Database>::ArgumentBuffer<'q>,
    ) -> std::result::Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
        match self.0 {
            Some(v) => <f64 as sqlx::Encode<'q, sqlx::Any>>::encode_by_ref(&v, buf),
            // the NULL kind sqlx maps to PostgreSQL's `float8`
            None => <Option<f32> as sqlx::Encode<'q, sqlx::Any>>::encode_by_ref(&None, buf),
        }
    }
}

/// A flag stored as an integer (0 or 1) in both engines, read into a `bool`
/// (`#[sqlx(try_from = "IntFlag")]`): sqlx's `Any` driver reads a `bool` only from a boolean
/// column, which SQLite does not have.
#[derive(Debug, Clone, Copy)]
pub struct IntFlag(i64);

impl From<IntFlag> for bool {
    fn from(f: IntFlag) -> bool {
        f.0 != 0
    }
}

impl sqlx::Type<sqlx::Any> for IntFlag {
    fn type_info() -> sqlx::any::AnyTypeInfo {
        <i64 as sqlx::Type<sqlx::Any>>::type_info()
    }
    fn compatible(ty: &sqlx::any::AnyTypeInfo) -> bool {
        <i64 as sqlx::Type<sqlx::Any>>::compatible(ty)
    }
}

impl<'r> sqlx::Decode<'r, sqlx::Any> for IntFlag {
    fn decode(
        value: <sqlx::Any as sqlx::Database>::ValueRef<'r>,
    ) -> std::result::Result<Self, sqlx::error::BoxDynError> {
        Ok(IntFlag(<i64 as sqlx::Decode<'r, sqlx::Any>>::decode(
            value,
        )?))
    }
}
