//! The run queue: runs are submitted here (resolved once, then stored as queued), the
//! scheduler claims queued runs for free device slots and supervises one worker process per
//! running run.

pub mod slots;
pub mod slurm;
mod supervisor;
mod warm;

pub use supervisor::SHUTDOWN_GRACE;

use crate::config::{Executor, Settings};
use crate::live::{Hub, LiveKind};
use crate::models::registry::Registry;
use crate::protocol::Device;
use crate::runs::options::OptionError;
use crate::runs::{self, DatasetLookup, DatasetRef, ResolvedRun, RunRequest, SubmitError};
use crate::store::runs::{Run, RunSource, RunStatus};
use crate::store::studies::Study;
use crate::store::{Engine, Store};
use crate::studies::{StudyError, StudyRequest, SubmitStudyError};
use crate::train::precision;
use anyhow::{Context, Result};
use slots::Slot;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

/// How often a run may be started before a restart stops retrying it.
pub const MAX_ATTEMPTS: i64 = 3;

/// How often a server on a shared database (PostgreSQL) records that it is alive and looks
/// for the runs of servers that stopped.
pub const HEARTBEAT: Duration = Duration::from_secs(5);

/// How long a server's heartbeat may be silent before the other servers on the database
/// take over its runs.
pub const SERVER_LEASE: Duration = Duration::from_secs(30);

/// Handle on the scheduler; cheap to clone.
#[derive(Clone)]
pub struct Scheduler {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    settings: Settings,
    registry: Registry,
    hub: Hub,
    slots: Vec<Slot>,
    /// The Slurm executor, when runs execute as Slurm jobs (else worker processes here).
    slurm: Option<Arc<slurm::Slurm>>,
    state: Mutex<State>,
    /// Serialises claiming, so two ticks never fill the same slot.
    claim: tokio::sync::Mutex<()>,
    wake: Notify,
    /// Set when the service shuts down: nothing more is claimed, running workers are asked
    /// to checkpoint and stop.
    draining: tokio::sync::watch::Sender<bool>,
    /// Workers started ahead for the free local slots.
    warm: warm::Warm,
}

#[derive(Default)]
struct State {
    /// Run occupying each slot.
    busy: Vec<Option<i64>>,
    active: HashMap<i64, Active>,
}

struct Active {
    cancel: Arc<Notify>,
    /// Signalled when a cluster worker's events carried its end.
    reported: Arc<Notify>,
    pid: Option<u32>,
}

/// What a cancel request did.
#[derive(Debug, Clone)]
pub enum CancelOutcome {
    /// The run is now cancelled.
    Cancelled(Box<Run>),
    /// The run had already ended with this status.
    AlreadyEnded(RunStatus),
    /// No such run.
    NotFound,
    /// Another process trains it (`modalbench train`, named by its device `cli:<pid>`).
    Elsewhere(String),
}

impl Scheduler {
    /// A scheduler over the given slots, resolving models in `registry`. With the Slurm
    /// executor (`settings.executor`) the slots are the runs it hands to Slurm at once
    /// (`max_jobs`) instead. Nothing starts until [`Scheduler::tick`] or [`Scheduler::spawn`].
    pub fn new(
        store: Store,
        settings: Settings,
        registry: Registry,
        hub: Hub,
        slots: Vec<Slot>,
    ) -> Self {
        let slurm = match &settings.executor {
            Executor::Local => None,
            Executor::Slurm(s) => Some(Arc::new(slurm::Slurm::new((**s).clone()))),
        };
        let slots = match &slurm {
            None => slots,
            Some(s) => (0..s.settings.max_jobs)
                .map(|i| Slot {
                    name: format!("slurm:{i}"),
                    device: Device::Cpu,
                    threads: 0,
                })
                .collect(),
        };
        let state = State {
            busy: vec![None; slots.len()],
            active: HashMap::new(),
        };
        Scheduler {
            inner: Arc::new(Inner {
                store,
                settings,
                registry,
                hub,
                slots,
                slurm,
                state: Mutex::new(state),
                claim: tokio::sync::Mutex::new(()),
                wake: Notify::new(),
                draining: tokio::sync::watch::Sender::new(false),
                warm: warm::Warm::default(),
            }),
        }
    }

    /// The device slots.
    pub fn slots(&self) -> &[Slot] {
        &self.inner.slots
    }

    /// Tells the executor the address the service listens on (cluster workers report there
    /// unless the configuration names another).
    pub fn set_listening(&self, addr: std::net::SocketAddr) {
        if let Some(s) = &self.inner.slurm {
            s.set_listening(addr);
        }
    }

    /// A cluster worker's events carried its end: its run's supervisor records it now rather
    /// than at the next look at the queue.
    pub fn worker_reported(&self, id: i64) {
        if let Some(a) = self.lock().active.get(&id) {
            a.reported.notify_one();
        }
    }

    /// The registry runs are resolved in.
    pub fn registry(&self) -> &Registry {
        &self.inner.registry
    }

    /// Submits a run: resolves the request once (its model in the registry, on the blocking
    /// pool; its dataset among the registered ones; every option checked), stores it as
    /// queued, tells live viewers and wakes the scheduling loop. Every way to ask for a run
    /// comes through here; nothing is stored when the request is refused.
    pub async fn submit(&self, req: RunRequest) -> Result<Run, SubmitError> {
        let resolved = self.resolve(req).await?;
        Ok(self.enqueue(&resolved).await?)
    }

    /// Resolves a request as [`Scheduler::submit`] does, storing nothing.
    async fn resolve(&self, req: RunRequest) -> Result<ResolvedRun, SubmitError> {
        let store = &self.inner.store;
        let dataset = match store.get_dataset(&req.dataset).await? {
            Some(d)
                if !tokio::fs::try_exists(&d.info.source.root)
                    .await
                    .unwrap_or(false) =>
            {
                return Err(SubmitError::MissingDataset { name: d.name });
            }
            Some(d) => DatasetLookup::Found(Box::new(DatasetRef {
                name: d.name,
                source: d.info.source,
            })),
            None => DatasetLookup::Unknown {
                known: store.dataset_names().await?,
            },
        };
        let registry = self.inner.registry.clone();
        let resolved = tokio::task::spawn_blocking(move || runs::resolve(req, &registry, dataset))
            .await
            .context("resolving a run request")??;
        if let Some(e) = self.refusal(&resolved) {
            return Err(e.into());
        }
        Ok(resolved)
    }

    /// Submits a study: expands it into its runs, resolves every one as [`Scheduler::submit`]
    /// does, and stores the study with all its runs queued, or nothing if any is refused.
    pub async fn submit_study(
        &self,
        req: StudyRequest,
    ) -> Result<(Study, Vec<Run>), SubmitStudyError> {
        let cells = req.expand()?;
        let mut resolved = Vec::with_capacity(cells.len());
        for (i, cell) in cells.into_iter().enumerate() {
            let what = format!(
                "run {} of the study ({} on {}, seed {})",
                i + 1,
                cell.request.model,
                cell.request.dataset,
                cell.request.train.seed.unwrap_or_default()
            );
            match self.resolve(cell.request).await {
                Ok(r) => resolved.push((r, cell.grid)),
                Err(SubmitError::Internal(e)) => return Err(e.into()),
                Err(e) => {
                    return Err(StudyError {
                        field: req.field_of(&e),
                        message: format!("{what}: {e}"),
                    }
                    .into());
                }
            }
        }
        let (study, runs) = self.inner.store.insert_study(&req, &resolved).await?;
        for run in &runs {
            self.inner.hub.send(
                run.id,
                LiveKind::Status {
                    status: RunStatus::Queued,
                    error: None,
                },
            );
        }
        tracing::info!(study_id = study.id, runs = runs.len(), name = %study.name, "study queued");
        self.wake();
        Ok((study, runs))
    }

    /// Cancels every run of a study that has not ended; returns the study as it is then, or
    /// `None` if there is no such study.
    pub async fn cancel_study(&self, id: i64) -> Result<Option<Study>> {
        if self.inner.store.get_study(id).await?.is_none() {
            return Ok(None);
        }
        self.inner.store.mark_study_cancelled(id).await?;
        for run in self.inner.store.study_runs(id).await? {
            if run.status.is_active() {
                self.cancel(run.id).await?;
            }
        }
        self.inner.store.get_study(id).await
    }

    /// Why this service's devices cannot run `run`, if they cannot: more devices than it has
    /// slots, or a precision its devices lack.
    fn refusal(&self, run: &ResolvedRun) -> Option<OptionError> {
        let gpus = run.config.gpus as usize;
        if let Some(slurm) = &self.inner.slurm {
            let s = &slurm.settings;
            if gpus > s.max_gpus as usize {
                return Some(OptionError {
                    field: "gpus",
                    message: format!(
                        "`gpus` is {gpus} but runs on this cluster may ask for at most {} \
                         (`max_gpus` of [executor.slurm])",
                        s.max_gpus
                    ),
                });
            }
            // GPUs asked for by gres are CUDA devices; without them the nodes are CPUs like
            // this one
            let device = if s.gres { Device::Cuda(0) } else { Device::Cpu };
            return precision::unsupported(run.config.mixed_precision, device).map(|message| {
                OptionError {
                    field: "mixed_precision",
                    message,
                }
            });
        }
        if let Some(&field) = run.queue.cluster_options_set().first() {
            return Some(OptionError {
                field,
                message: format!(
                    "`{field}` sets an option of the run's Slurm job, but this service runs \
                     runs on its own devices (`serve --executor slurm` hands them to Slurm)"
                ),
            });
        }
        let slots = &self.inner.slots;
        if gpus > slots.len() {
            let names: Vec<&str> = slots.iter().map(|s| s.name.as_str()).collect();
            return Some(OptionError {
                field: "gpus",
                message: format!(
                    "`gpus` is {gpus} but this service has {} device slot(s) ({})",
                    slots.len(),
                    names.join(", ")
                ),
            });
        }
        let device = slots.first().map_or(Device::Cpu, |s| s.device);
        precision::unsupported(run.config.mixed_precision, device).map(|message| OptionError {
            field: "mixed_precision",
            message,
        })
    }

    async fn enqueue(&self, resolved: &ResolvedRun) -> Result<Run> {
        let run = self.inner.store.insert_run(resolved).await?;
        tracing::info!(run_id = run.id, model = %run.model, dataset = %run.dataset, "run queued");
        self.inner.hub.send(
            run.id,
            LiveKind::Status {
                status: RunStatus::Queued,
                error: None,
            },
        );
        self.wake();
        Ok(run)
    }

    /// Start-up recovery, and on a shared database a look every few seconds: runs whose
    /// server is gone (an earlier process of this service, or on PostgreSQL a server whose
    /// heartbeat stopped for [`SERVER_LEASE`]) are taken over. A run whose Slurm job was
    /// submitted runs on without the server: this one follows the job from now on; any other
    /// becomes `interrupted` and will be started again. Runs `modalbench train` left behind
    /// are failed. Returns the runs interrupted.
    pub async fn recover(&self) -> Result<Vec<i64>> {
        let store = &self.inner.store;
        store.heartbeat().await?;
        store.fail_abandoned_foreground_runs().await?;
        let mut interrupted = Vec::new();
        for (id, owner) in store.orphaned_runs(SERVER_LEASE).await? {
            let follow = match &self.inner.slurm {
                Some(_) => {
                    let attempts = store.get_run(id).await?.map(|r| r.attempts);
                    store
                        .cluster_job(id)
                        .await?
                        .is_some_and(|j| Some(j.attempt) == attempts)
                }
                None => false,
            };
            if !store.take_over_run(id, owner.as_deref(), !follow).await? {
                continue;
            }
            if follow {
                tracing::info!(run_id = id, from = ?owner, "following the run's Slurm job");
                continue;
            }
            store
                .append_logs(
                    id,
                    &[(
                        "system",
                        "interrupted: the server stopped while this run was running".into(),
                    )],
                )
                .await?;
            self.inner.hub.send(
                id,
                LiveKind::Status {
                    status: RunStatus::Interrupted,
                    error: None,
                },
            );
            tracing::warn!(
                run_id = id,
                "run was interrupted by a server stop; it will restart"
            );
            interrupted.push(id);
        }
        Ok(interrupted)
    }

    /// Starts queued runs on free slots, highest priority then oldest first. Returns the ids
    /// started.
    pub async fn tick(&self) -> Result<Vec<i64>> {
        let _claiming = self.inner.claim.lock().await;
        if *self.inner.draining.borrow() {
            return Ok(Vec::new());
        }
        for id in self.inner.store.fail_exhausted_runs(MAX_ATTEMPTS).await? {
            self.inner.hub.send(
                id,
                LiveKind::Status {
                    status: RunStatus::Failed,
                    error: None,
                },
            );
        }
        let mut started = Vec::new();
        loop {
            let free: Vec<usize> = self
                .lock()
                .busy
                .iter()
                .enumerate()
                .filter(|(_, b)| b.is_none())
                .map(|(i, _)| i)
                .collect();
            if free.is_empty() {
                break;
            }
            let slots = &self.inner.slots;
            // a Slurm job takes one of the service's job slots whatever its `gpus` (the
            // cluster finds the devices); a local run takes a slot per device
            let claimed = match &self.inner.slurm {
                Some(_) => {
                    self.inner
                        .store
                        .claim_next_run_within(usize::MAX, |_| "slurm".into())
                        .await?
                }
                None => {
                    self.inner
                        .store
                        .claim_next_run_within(free.len(), |n| {
                            let names: Vec<&str> =
                                free[..n].iter().map(|&i| slots[i].name.as_str()).collect();
                            names.join("+")
                        })
                        .await?
                }
            };
            let Some(run) = claimed else {
                break;
            };
            let held = match &self.inner.slurm {
                Some(_) => &free[..1],
                None => &free[..run.train_config().map_or(1, |c| c.gpus).max(1) as usize],
            };
            started.push(run.id);
            self.start(run, held);
        }
        Ok(started)
    }

    /// Supervises a claimed run on the slots `held` (indices into the slots) until it ends.
    fn start(&self, run: Run, held: &[usize]) {
        let slot: Vec<Slot> = held.iter().map(|&i| self.inner.slots[i].clone()).collect();
        let cancel = Arc::new(Notify::new());
        let reported = Arc::new(Notify::new());
        {
            let mut st = self.lock();
            for &i in held {
                st.busy[i] = Some(run.id);
            }
            st.active.insert(
                run.id,
                Active {
                    cancel: cancel.clone(),
                    reported: reported.clone(),
                    pid: None,
                },
            );
        }
        self.inner.hub.send(
            run.id,
            LiveKind::Status {
                status: RunStatus::Running,
                error: None,
            },
        );
        tracing::info!(run_id = run.id, model = %run.model, dataset = %run.dataset, slots = %run.device.as_deref().unwrap_or_default(), "starting run");
        let this = self.clone();
        tokio::spawn(async move {
            let id = run.id;
            supervisor::supervise(&this, run, slot, cancel, reported).await;
            // supervise releases the slots before announcing the end; this covers its early
            // returns (a no-op after a release)
            this.release(id);
        });
    }

    /// Frees the slots of run `id` (no longer active), wakes the claim loop and starts the
    /// freed slots' waiting workers. Called once the run's end is in the store and before the
    /// end's event goes out, so a client woken by that event finds the slots free.
    pub(super) fn release(&self, id: i64) {
        let freed = {
            let mut st = self.lock();
            let was_active = st.active.remove(&id).is_some();
            let mut freed = false;
            for b in st.busy.iter_mut().filter(|b| **b == Some(id)) {
                *b = None;
                freed = true;
            }
            was_active || freed
        };
        if freed {
            self.inner.wake.notify_one();
            self.warm_up();
        }
    }

    /// Follows again the Slurm jobs of runs an earlier start of the service left running.
    async fn reattach(&self) -> Result<()> {
        let _claiming = self.inner.claim.lock().await;
        for job in self.inner.store.running_cluster_jobs().await? {
            if self.lock().active.contains_key(&job.run_id) {
                continue;
            }
            let Some(run) = self.inner.store.get_run(job.run_id).await? else {
                continue;
            };
            let free = self.lock().busy.iter().position(|b| b.is_none());
            let Some(i) = free else { break };
            tracing::info!(
                run_id = run.id,
                job_id = job.job_id,
                "following its Slurm job again"
            );
            self.start(run, &[i]);
        }
        Ok(())
    }

    /// Starts a worker ahead for each local slot that has none waiting (`--warm-workers`), so
    /// that the next run there skips the worker's start.
    pub fn warm_up(&self) {
        let settings = &self.inner.settings;
        if !settings.warm_workers || self.inner.slurm.is_some() || *self.inner.draining.borrow() {
            return;
        }
        match settings.worker_exe() {
            Ok(exe) => self.inner.warm.fill(&exe, &self.inner.slots),
            Err(e) => tracing::warn!(error = format!("{e:#}"), "no worker to start ahead"),
        }
    }

    /// Runs the scheduling loop in the background: a tick whenever a run is queued or ends,
    /// and every two seconds.
    pub fn spawn(&self) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        self.warm_up();
        if let Some(slurm) = &self.inner.slurm {
            slurm.spawn_monitor();
        }
        tokio::spawn(async move {
            if this.inner.slurm.is_some()
                && let Err(e) = this.reattach().await
            {
                tracing::error!(
                    error = format!("{e:#}"),
                    "following Slurm jobs again failed"
                );
            }
            let shared = this.inner.store.engine() != Engine::Sqlite;
            let mut last_beat = tokio::time::Instant::now();
            loop {
                if shared && last_beat.elapsed() >= HEARTBEAT {
                    last_beat = tokio::time::Instant::now();
                    if let Err(e) = this.look_after_servers().await {
                        tracing::error!(error = format!("{e:#}"), "taking over runs failed");
                    }
                }
                if let Err(e) = this.tick().await {
                    tracing::error!(error = format!("{e:#}"), "scheduler tick failed");
                }
                tokio::select! {
                    _ = this.inner.wake.notified() => {}
                    _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                }
            }
        })
    }

    /// On a database several servers share: this server's heartbeat, the runs of servers
    /// that stopped (see [`Scheduler::recover`]), the Slurm jobs taken over, and the cancels other
    /// servers asked of this one's runs.
    async fn look_after_servers(&self) -> Result<()> {
        if !*self.inner.draining.borrow() {
            let interrupted = self.recover().await?;
            if !interrupted.is_empty() {
                self.wake();
            }
            if self.inner.slurm.is_some() {
                self.reattach().await?;
            }
        }
        for id in self.inner.store.cancel_requests().await? {
            if let Some(n) = self.lock().active.get(&id).map(|a| a.cancel.clone()) {
                tracing::info!(run_id = id, "cancelled through another server");
                n.notify_one();
            }
        }
        Ok(())
    }

    /// Shuts the pool down: claims nothing more, asks every running worker to write its
    /// checkpoint and stop (SIGTERM; killed after [`SHUTDOWN_GRACE`]), and waits for them.
    /// Their runs end `interrupted` and resume from that checkpoint when the service starts
    /// again. Returns the runs that were stopped.
    pub async fn shutdown(&self) -> Vec<i64> {
        let stopped = {
            let _claiming = self.inner.claim.lock().await;
            self.inner.draining.send_replace(true);
            self.running()
        };
        self.inner.warm.clear();
        let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE + Duration::from_secs(5);
        while !self.running().is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // what still runs (Slurm jobs) is free for another server to follow at once
        if let Err(e) = self.inner.store.leave().await {
            tracing::warn!(
                error = format!("{e:#}"),
                "could not leave the servers table"
            );
        }
        stopped
    }

    /// A receiver that sees `true` once the service shuts down.
    pub(crate) fn draining(&self) -> tokio::sync::watch::Receiver<bool> {
        self.inner.draining.subscribe()
    }

    /// Asks the loop to look at the queue now.
    pub fn wake(&self) {
        self.inner.wake.notify_one();
    }

    /// Cancels a run: a waiting run is cancelled in the database, a running one has its worker
    /// killed. Returns once the run is cancelled.
    pub async fn cancel(&self, id: i64) -> Result<CancelOutcome> {
        // without the claim lock (a tick holding it while it starts workers made cancels wait):
        // the store's conditional updates settle a race with a claim, and a run claimed but
        // not yet registered as running here is looked at again a moment later
        let mut tries = 0;
        let notify = loop {
            match self.inner.store.get_run(id).await? {
                None => return Ok(CancelOutcome::NotFound),
                Some(r) if !r.status.is_active() => {
                    return Ok(CancelOutcome::AlreadyEnded(r.status));
                }
                // an external run has no worker here: it is marked killed, as MLflow would
                Some(r) if r.source == RunSource::External => {
                    self.inner
                        .store
                        .update_external_run(id, Some(RunStatus::Cancelled), None, None)
                        .await
                        .map_err(anyhow::Error::from)?;
                    self.inner.hub.send(
                        id,
                        LiveKind::Status {
                            status: RunStatus::Cancelled,
                            error: None,
                        },
                    );
                    let run = self.inner.store.get_run(id).await?;
                    return Ok(match run {
                        Some(run) => CancelOutcome::Cancelled(Box::new(run)),
                        None => CancelOutcome::NotFound,
                    });
                }
                Some(r) if r.device.as_deref().is_some_and(|d| d.starts_with("cli:")) => {
                    return Ok(CancelOutcome::Elsewhere(r.device.unwrap_or_default()));
                }
                Some(_) => {}
            }
            if self.inner.store.cancel_waiting_run(id).await? {
                self.inner.hub.send(
                    id,
                    LiveKind::Status {
                        status: RunStatus::Cancelled,
                        error: None,
                    },
                );
                break None;
            }
            if let Some(n) = self.lock().active.get(&id).map(|a| a.cancel.clone()) {
                break Some(n);
            }
            // a run another live server holds (a shared database): that server stops it
            if self.inner.store.engine() != Engine::Sqlite
                && let Some(r) = self.inner.store.get_run(id).await?
                && r.status == RunStatus::Running
                && r.owner
                    .as_deref()
                    .is_some_and(|o| o != self.inner.store.server_id())
            {
                self.inner.store.request_cancel(id).await?;
                self.wait_finished(id, Duration::from_secs(60)).await?;
                break None;
            }
            tries += 1;
            if tries > 500 {
                anyhow::bail!("run {id} is running but no worker of this service holds it");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        if let Some(n) = notify {
            let waiting = self.wait_finished(id, Duration::from_secs(30));
            n.notify_one();
            waiting.await?;
        }
        Ok(match self.inner.store.get_run(id).await? {
            None => CancelOutcome::NotFound,
            Some(r) if r.status == RunStatus::Cancelled => CancelOutcome::Cancelled(Box::new(r)),
            Some(r) => CancelOutcome::AlreadyEnded(r.status),
        })
    }

    /// Waits until the run is no longer queued, running or interrupted, or `timeout` passes;
    /// returns its status then.
    pub async fn wait_finished(&self, id: i64, timeout: Duration) -> Result<Option<RunStatus>> {
        let mut rx = self.inner.hub.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let status = self.inner.store.get_run(id).await?.map(|r| r.status);
            match status {
                Some(s) if s.is_active() => {}
                other => return Ok(other),
            }
            // wake on this run's next status change; after a lagged receiver, re-read the store
            // so nothing is missed
            loop {
                // another server's changes reach this hub only through the relay, which misses
                // what happens while its connection is down: the store is read again at least
                // every second
                let until = deadline.min(tokio::time::Instant::now() + Duration::from_secs(1));
                match tokio::time::timeout_at(until, rx.recv()).await {
                    Err(_) if until == deadline => return Ok(status),
                    Err(_) => break,
                    Ok(Ok(ev)) if ev.run_id == id && matches!(ev.kind, LiveKind::Status { .. }) => {
                        break;
                    }
                    Ok(Ok(_)) => continue,
                    Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => break,
                    Ok(Err(tokio::sync::broadcast::error::RecvError::Closed)) => return Ok(status),
                }
            }
        }
    }

    /// Process ids of the workers started ahead, waiting for a run.
    pub fn waiting_workers(&self) -> Vec<u32> {
        self.inner.warm.pids()
    }

    /// Process id of the worker running `id`, while it runs.
    pub fn worker_pid(&self, id: i64) -> Option<u32> {
        self.lock().active.get(&id).and_then(|a| a.pid)
    }

    /// Runs currently executing.
    pub fn running(&self) -> Vec<i64> {
        let mut ids: Vec<i64> = self.lock().busy.iter().flatten().copied().collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// Slots in use (a data-parallel run holds several).
    pub fn busy_slots(&self) -> usize {
        self.lock().busy.iter().flatten().count()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set_pid(&self, id: i64, pid: Option<u32>) {
        if let Some(a) = self.lock().active.get_mut(&id) {
            a.pid = pid;
        }
    }
}
