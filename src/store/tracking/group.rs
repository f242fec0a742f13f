//! Group commit of logged metric batches on SQLite. SQLite lets one transaction write at a
//! time: concurrent `log-batch` requests each took the write lock in turn, and a request that
//! found it taken slept in SQLite's busy handler (1 ms, then 2, 5, 10, ...) rather than being
//! woken when it was free. One writer task now takes every batch waiting when it starts a
//! transaction and writes them all in it: one lock and one commit for the lot, and the
//! requests' JSON is parsed on the other threads while it writes.
//!
//! Each batch still gets its own answer. A batch refused (its run unknown or not external, a
//! parameter changed) writes nothing and the others go on: the run is checked before anything
//! is written (the batches of points alone of one run are written together, and refused
//! together), and a batch with parameters or tags (the only other refusal) is written under
//! a savepoint. A database error fails the group's transaction; every batch of it is then
//! written again alone, in a transaction of its own, so that each answer is its own. When the
//! transaction cannot even begin (another process held the write lock past the busy
//! timeout), every batch of the group is told so at once.

use super::{LoggedPoint, TrackingError, TrackingResult, log_checked};
use crate::store::Engine;
use sqlx::{Any, AnyPool, Transaction};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::{mpsc, oneshot};

/// Most points one group's transaction writes (a native request brings up to 10,000, a
/// `log-batch` one up to 1,000): the lock is not held for long while other writers wait.
const MAX_GROUP_POINTS: usize = 50_000;

/// Batches waiting for the writer; a request beyond them waits for room.
const QUEUE: usize = 256;

/// One request's metric points, parameters and tags for a run, owned so that the writer task
/// can keep them; points refer to their key by its index in `keys`.
struct Batch {
    run: i64,
    keys: Vec<String>,
    points: Vec<(u32, f64, i64, i64)>,
    params: BTreeMap<String, String>,
    tags: BTreeMap<String, String>,
    done: oneshot::Sender<TrackingResult<()>>,
}

impl Batch {
    fn points(&self) -> Vec<LoggedPoint<'_>> {
        self.points
            .iter()
            .map(|&(k, value, timestamp, step)| LoggedPoint {
                key: &self.keys[k as usize],
                value,
                timestamp,
                step,
            })
            .collect()
    }

    /// Writes the batch in `tx`, checking its run first.
    async fn write(&self, tx: &mut Transaction<'static, Any>) -> TrackingResult<()> {
        let points = self.points();
        log_checked(
            tx,
            Engine::Sqlite,
            self.run,
            &points,
            &self.params,
            &self.tags,
        )
        .await
    }

    fn guarded(&self) -> bool {
        !self.params.is_empty() || !self.tags.is_empty()
    }
}

/// The handle of the writer task; its task ends when the last handle is dropped.
#[derive(Debug, Clone)]
pub(crate) struct GroupWriter {
    queue: mpsc::Sender<Batch>,
    /// Batches taken (written or refused), and the transactions they were written in.
    counts: Arc<[AtomicU64; 2]>,
}

impl GroupWriter {
    /// Starts the writer task on the current Tokio runtime.
    pub(crate) fn spawn(pool: AnyPool) -> GroupWriter {
        let (queue, rx) = mpsc::channel(QUEUE);
        let counts = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
        tokio::spawn(run(pool, rx, counts.clone()));
        GroupWriter { queue, counts }
    }

    /// Batches taken so far (written or refused), and the transactions they were written in.
    pub(crate) fn counts(&self) -> (u64, u64) {
        (
            self.counts[0].load(Ordering::Relaxed),
            self.counts[1].load(Ordering::Relaxed),
        )
    }

    /// Writes the points, parameters and tags of run `id` in the next group; `Err(())` when
    /// the writer task is gone (its runtime ended), and nothing was written.
    pub(crate) async fn log(
        &self,
        id: i64,
        metrics: &[LoggedPoint<'_>],
        params: &BTreeMap<String, String>,
        tags: &BTreeMap<String, String>,
    ) -> Result<TrackingResult<()>, ()> {
        let mut index: HashMap<&str, u32> = HashMap::new();
        let mut keys = Vec::new();
        let points = metrics
            .iter()
            .map(|p| {
                let k = *index.entry(p.key).or_insert_with(|| {
                    keys.push(p.key.to_string());
                    (keys.len() - 1) as u32
                });
                (k, p.value, p.timestamp, p.step)
            })
            .collect();
        let (done, answer) = oneshot::channel();
        let batch = Batch {
            run: id,
            keys,
            points,
            params: params.clone(),
            tags: tags.clone(),
            done,
        };
        self.queue.send(batch).await.map_err(|_| ())?;
        Ok(answer.await.unwrap_or_else(|_| {
            Err(TrackingError::Other(anyhow::anyhow!(
                "the metric writer stopped before the batch was written"
            )))
        }))
    }
}

async fn run(pool: AnyPool, mut queue: mpsc::Receiver<Batch>, counts: Arc<[AtomicU64; 2]>) {
    while let Some(first) = queue.recv().await {
        let mut n = first.points.len();
        let mut group = vec![first];
        while n < MAX_GROUP_POINTS {
            match queue.try_recv() {
                Ok(b) => {
                    n += b.points.len();
                    group.push(b);
                }
                Err(_) => break,
            }
        }
        let (answers, transactions) = match write_group(&pool, &group).await {
            Ok(answers) => (answers, 1),
            // the write lock was not had within the busy timeout: trying each batch again
            // would wait that long once per batch, so each is told now
            Err(Failed::Begin(e)) => {
                let e = TrackingError::from(e);
                let answers = group.iter().map(|_| Err(e.again())).collect();
                (answers, 0)
            }
            Err(Failed::Later(e)) if group.len() == 1 => (vec![Err(e)], 1),
            Err(Failed::Later(_)) => {
                let mut answers = Vec::with_capacity(group.len());
                for b in &group {
                    answers.push(write_alone(&pool, b).await);
                }
                (answers, group.len())
            }
        };
        counts[0].fetch_add(group.len() as u64, Ordering::Relaxed);
        counts[1].fetch_add(transactions as u64, Ordering::Relaxed);
        for (b, answer) in group.into_iter().zip(answers) {
            // a request that gave up waiting has nobody to tell
            let _ = b.done.send(answer);
        }
    }
}

/// Why a group's transaction failed.
enum Failed {
    /// It could not begin (the write lock was not had within the busy timeout).
    Begin(sqlx::Error),
    /// A statement or the commit failed.
    Later(TrackingError),
}

impl From<sqlx::Error> for Failed {
    fn from(e: sqlx::Error) -> Failed {
        Failed::Later(e.into())
    }
}

/// Writes the group in one transaction: each batch's answer, or why the transaction failed.
async fn write_group(pool: &AnyPool, group: &[Batch]) -> Result<Vec<TrackingResult<()>>, Failed> {
    let mut tx = pool
        .begin_with("BEGIN IMMEDIATE")
        .await
        .map_err(Failed::Begin)?;
    let mut answers: Vec<Option<TrackingResult<()>>> = group.iter().map(|_| None).collect();
    // the batches of points alone of one run go in together: one statement for each 1,000
    // of their points and one for the latest values, not one of each per batch. Refused only
    // by the run's check, before anything is written.
    let mut plain: Vec<(i64, Vec<usize>)> = Vec::new();
    for (i, b) in group.iter().enumerate().filter(|(_, b)| !b.guarded()) {
        match plain.iter_mut().find(|(run, _)| *run == b.run) {
            Some((_, batches)) => batches.push(i),
            None => plain.push((b.run, vec![i])),
        }
    }
    let none = BTreeMap::new();
    for (run, batches) in &plain {
        let points: Vec<LoggedPoint> = batches.iter().flat_map(|&i| group[i].points()).collect();
        match log_checked(&mut tx, Engine::Sqlite, *run, &points, &none, &none).await {
            Ok(()) => {
                for &i in batches {
                    answers[i] = Some(Ok(()));
                }
            }
            Err(
                e @ (TrackingError::Database(_) | TrackingError::Busy(_) | TrackingError::Other(_)),
            ) => {
                return Err(Failed::Later(e));
            }
            Err(refused) => {
                for &i in batches {
                    answers[i] = Some(Err(refused.again()));
                }
            }
        }
    }
    // batches with parameters or tags, each under a savepoint: a changed parameter refuses
    // its batch alone
    for (i, b) in group.iter().enumerate().filter(|(_, b)| b.guarded()) {
        savepoint(&mut tx, "SAVEPOINT batch").await?;
        let answer = b.write(&mut tx).await;
        if answer.is_err() {
            savepoint(&mut tx, "ROLLBACK TO batch").await?;
        }
        savepoint(&mut tx, "RELEASE batch").await?;
        match answer {
            Ok(()) => answers[i] = Some(Ok(())),
            Err(
                e @ (TrackingError::Database(_) | TrackingError::Busy(_) | TrackingError::Other(_)),
            ) => {
                return Err(Failed::Later(e));
            }
            Err(refused) => answers[i] = Some(Err(refused)),
        }
    }
    tx.commit().await?;
    Ok(answers
        .into_iter()
        .map(|a| a.expect("every batch of the group answered"))
        .collect())
}

async fn savepoint(tx: &mut Transaction<'static, Any>, sql: &str) -> sqlx::Result<()> {
    sqlx::query(sql).execute(&mut **tx).await.map(drop)
}

/// Writes one batch in a transaction of its own.
async fn write_alone(pool: &AnyPool, b: &Batch) -> TrackingResult<()> {
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    b.write(&mut tx).await?;
    tx.commit().await?;
    Ok(())
}
