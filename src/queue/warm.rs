//! Workers started ahead: for each free local slot, one worker process that has already paid
//! its start (loading libtorch, about 0.3 s) and waits for its job on stdin. A claimed run takes
//! the waiting worker of its slot, so it starts loading its model at once; a new one is started
//! for the slot when the run ends.

use super::slots::{self, Slot};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use tokio::process::Child;

/// The workers waiting for a job.
#[derive(Default)]
pub(super) struct Warm {
    waiting: Mutex<Vec<Waiting>>,
}

struct Waiting {
    exe: PathBuf,
    /// `CUDA_VISIBLE_DEVICES` it was started with.
    visible: String,
    /// Killed when dropped (its stdin closes too, which ends a waiting worker by itself).
    child: Child,
}

impl Warm {
    /// A live worker of `exe` waiting with the devices `visible`, if there is one.
    pub fn take(&self, exe: &Path, visible: &str) -> Option<Child> {
        let mut waiting = self.lock();
        while let Some(i) = waiting
            .iter()
            .position(|w| w.exe == exe && w.visible == visible)
        {
            let mut w = waiting.swap_remove(i);
            if matches!(w.child.try_wait(), Ok(None)) {
                return Some(w.child);
            }
            // it died waiting; a run started cold tells why
        }
        None
    }

    /// Starts a worker of `exe` for each of `slots` that has none waiting.
    pub fn fill(&self, exe: &Path, slots: &[Slot]) {
        let mut waiting = self.lock();
        waiting.retain_mut(|w| matches!(w.child.try_wait(), Ok(None)));
        for slot in slots {
            let visible = slots::visible_devices(std::slice::from_ref(slot));
            let wanted = slots
                .iter()
                .filter(|s| slots::visible_devices(std::slice::from_ref(s)) == visible)
                .count();
            let have = waiting
                .iter()
                .filter(|w| w.exe == exe && w.visible == visible)
                .count();
            if have >= wanted {
                continue;
            }
            match super::supervisor::worker_command(exe, &visible).spawn() {
                Ok(child) => waiting.push(Waiting {
                    exe: exe.to_path_buf(),
                    visible,
                    child,
                }),
                Err(e) => {
                    tracing::warn!(exe = %exe.display(), error = %e, "could not start a worker ahead");
                    return;
                }
            }
        }
    }

    /// Process ids of the waiting workers.
    pub fn pids(&self) -> Vec<u32> {
        self.lock().iter().filter_map(|w| w.child.id()).collect()
    }

    /// Stops the waiting workers.
    pub fn clear(&self) {
        self.lock().clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Waiting>> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }
}
