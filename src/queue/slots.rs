//! Device slots: one per CUDA device, or `--cpu-slots` CPU slots sharing the cores.

use crate::protocol::Device;
use anyhow::{Context, Result, bail};
use serde::Serialize;
use std::path::Path;

/// A place a run can execute.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Slot {
    /// `cuda:N` or `cpu:N`, stored as the run's device.
    pub name: String,
    /// The machine's device: GPU N, or the CPU.
    pub device: Device,
    /// Torch intra-op threads for a CPU worker.
    pub threads: usize,
}

impl Slot {
    /// `CUDA_VISIBLE_DEVICES` for the slot's worker: its GPU, or none for a CPU worker.
    pub fn visible_devices(&self) -> String {
        match self.device {
            Device::Cuda(i) => i.to_string(),
            Device::Cpu => String::new(),
        }
    }
}

/// The device the `i`-th of a run's slots is to its worker: the GPUs it is given are numbered
/// from `cuda:0` there.
pub fn job_device(slots: &[Slot], i: usize) -> Device {
    match slots[i].device {
        Device::Cuda(_) => Device::Cuda(i),
        Device::Cpu => Device::Cpu,
    }
}

/// `CUDA_VISIBLE_DEVICES` for the worker of a run holding `slots`: their GPUs, or none for a
/// CPU worker.
pub fn visible_devices(slots: &[Slot]) -> String {
    slots
        .iter()
        .map(Slot::visible_devices)
        .filter(|v| !v.is_empty())
        .collect::<Vec<_>>()
        .join(",")
}

/// One slot per CUDA device if there are any, else `cpu_slots` CPU slots that split the
/// machine's cores between them. The devices are those libtorch sees, which the service (that
/// does not load libtorch) asks the worker program (`worker_exe devices`); on a machine without
/// the NVIDIA driver there are none to ask about.
pub fn detect(cpu_slots: usize, worker_exe: &Path) -> Result<Vec<Slot>> {
    let gpus = if nvidia_driver_present() {
        cuda_devices(worker_exe)?
    } else {
        0
    };
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    Ok(plan(gpus, cpu_slots, cores))
}

/// Whether the NVIDIA driver is loaded: without it there is no CUDA device to look for.
pub fn nvidia_driver_present() -> bool {
    [
        "/proc/driver/nvidia/version",
        "/dev/nvidiactl",
        "/dev/nvidia0",
    ]
    .iter()
    .any(|p| Path::new(p).exists())
}

/// The CUDA devices libtorch sees, as `worker_exe devices` counts them.
fn cuda_devices(worker_exe: &Path) -> Result<usize> {
    let out = std::process::Command::new(worker_exe)
        .arg("devices")
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| {
            format!(
                "starting {} to count the CUDA devices",
                worker_exe.display()
            )
        })?;
    let text = String::from_utf8_lossy(&out.stdout);
    match text.trim().parse() {
        Ok(n) if out.status.success() => Ok(n),
        _ => bail!(
            "{} devices answered {:?} ({}), not a number of CUDA devices",
            worker_exe.display(),
            text.trim(),
            out.status
        ),
    }
}

/// The slots for `gpus` devices, or `cpu_slots` CPU slots over `cores` cores.
pub fn plan(gpus: usize, cpu_slots: usize, cores: usize) -> Vec<Slot> {
    if gpus > 0 {
        return (0..gpus)
            .map(|i| Slot {
                name: format!("cuda:{i}"),
                device: Device::Cuda(i),
                threads: (cores / gpus).max(1),
            })
            .collect();
    }
    let n = cpu_slots.max(1);
    (0..n)
        .map(|i| Slot {
            name: format!("cpu:{i}"),
            device: Device::Cpu,
            threads: (cores / n).max(1),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpus_get_one_slot_each_and_cpu_slots_split_the_cores() {
        let g = plan(2, 4, 16);
        assert_eq!(
            g.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
            ["cuda:0", "cuda:1"]
        );
        assert_eq!(g[1].device, Device::Cuda(1));
        assert_eq!(
            (job_device(&g[1..2], 0), g[1].visible_devices().as_str()),
            (Device::Cuda(0), "1"),
            "the worker sees its one GPU as cuda:0"
        );
        let c = plan(0, 3, 8);
        assert_eq!(c.len(), 3);
        assert!(c.iter().all(|s| s.threads == 2 && s.device == Device::Cpu));
        assert_eq!(c[0].visible_devices(), "", "a CPU worker sees no GPU");
        assert_eq!(plan(0, 0, 2).len(), 1, "at least one slot");
        // a data-parallel run on GPUs 1 and 3 sees them as cuda:0 and cuda:1
        let g = plan(4, 0, 16);
        let held = [g[1].clone(), g[3].clone()];
        assert_eq!(visible_devices(&held), "1,3");
        assert_eq!(
            (job_device(&held, 0), job_device(&held, 1)),
            (Device::Cuda(0), Device::Cuda(1))
        );
        assert_eq!(visible_devices(&c[..2]), "");
    }
}
