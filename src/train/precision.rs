//! Mixed precision: autocast regions on the CPU or CUDA in bfloat16 or float16 (through the C++
//! shim `torch_extras.cpp`, as tch only switches CUDA autocast on and off), which devices can
//! honour which precision, and dynamic loss scaling for float16 as PyTorch's `GradScaler`
//! does it.

use crate::protocol::Device;
use crate::runs::MixedPrecision;
use crate::train::optim::AdamW;
use anyhow::{Result, bail};
use std::os::raw::{c_int, c_longlong};
use tch::Tensor;

unsafe extern "C" {
    fn mb_autocast_enter(cuda: c_int, bf16: c_int) -> c_int;
    fn mb_autocast_exit(cuda: c_int, before: c_int) -> c_int;
    fn mb_autocast_hold() -> c_int;
    fn mb_autocast_release() -> c_int;
    fn mb_cuda_peak_allocated(index: c_int) -> c_longlong;
    fn mb_cuda_reset_peak(index: c_int) -> c_int;
    fn mb_set_grad_none(tensor: *mut std::ffi::c_void) -> c_int;
    fn mb_grad_enabled() -> c_int;
}

/// Whether this thread records gradients (`torch.is_grad_enabled()`): false inside
/// `tch::no_grad`.
pub fn grad_enabled() -> bool {
    // SAFETY: reads a thread-local flag of libtorch
    unsafe { mb_grad_enabled() != 0 }
}

/// Drops `t`'s gradient (`p.grad = None`); the next backward pass hands it a new one.
pub fn set_grad_none(t: &mut Tensor) {
    // SAFETY: tch's tensor handle points at an `at::Tensor`, which the shim takes as such;
    // `t` is borrowed mutably for the call.
    let rc = unsafe { mb_set_grad_none(t.as_mut_ptr().cast()) };
    if rc != 0 {
        // cannot happen for a defined tensor; zeroing is the equivalent that always works
        t.zero_grad();
    }
}

/// An autocast region: ops inside run in the lower precision where PyTorch's autocast lists
/// say so (matrix products, convolutions), the rest in float32. Left when dropped.
pub struct Autocast {
    cuda: bool,
    before: c_int,
}

impl Autocast {
    /// Enters autocast on `device` for `precision`; `None` for [`MixedPrecision::No`].
    pub fn enter(device: tch::Device, precision: MixedPrecision) -> Result<Option<Autocast>> {
        let bf16 = match precision {
            MixedPrecision::No => return Ok(None),
            MixedPrecision::Bf16 => 1,
            MixedPrecision::Fp16 => 0,
        };
        let cuda = device.is_cuda();
        // SAFETY: plain C function over libtorch's thread-local autocast state.
        let before = unsafe { mb_autocast_enter(cuda as c_int, bf16) };
        if before < 0 {
            bail!("libtorch refused to enter {precision} autocast on {device:?}");
        }
        Ok(Some(Autocast { cuda, before }))
    }

    /// What gradient checkpointing re-enters while it recomputes a layer: this autocast
    /// region, so the recomputation runs in the precision the forward pass ran in.
    pub fn context(
        device: tch::Device,
        precision: MixedPrecision,
    ) -> crate::models::checkpointing::ContextFn {
        Box::new(move || Box::new(Autocast::enter(device, precision).ok().flatten()))
    }
}

/// Keeps autocast's lower-precision copies of the weights from one autocast region to the next
/// while it lives (autocast drops them when its outermost region is left, as
/// `torch.autocast` does). Evaluation holds one over a split, whose batches each enter their own
/// region: the weights are cast once per evaluation instead of once per batch. Only while the
/// weights do not change: a copy is kept per weight tensor, not per value. Autocast's state is
/// the thread's, so the hold stays on the thread that took it (not `Send`).
pub struct WeightCasts(std::marker::PhantomData<*const ()>);

impl WeightCasts {
    /// Holds the casts for `precision` (nothing to hold without autocast).
    pub fn hold(precision: MixedPrecision) -> Result<Option<WeightCasts>> {
        if precision == MixedPrecision::No {
            return Ok(None);
        }
        // SAFETY: plain C function over libtorch's thread-local autocast state.
        if unsafe { mb_autocast_hold() } < 0 {
            bail!("libtorch refused to hold autocast's weight casts");
        }
        Ok(Some(WeightCasts(std::marker::PhantomData)))
    }
}

impl Drop for WeightCasts {
    fn drop(&mut self) {
        // SAFETY: releases the level `hold` took on this thread.
        unsafe {
            mb_autocast_release();
        }
    }
}

impl Drop for Autocast {
    fn drop(&mut self) {
        // SAFETY: leaves the region `enter` opened on this thread.
        unsafe {
            mb_autocast_exit(self.cuda as c_int, self.before);
        }
    }
}

/// Whether this machine's CPU has native bfloat16 dot products (`avx512_bf16` or `amx_bf16`):
/// without them PyTorch emulates bfloat16 on the CPU, slower than float32.
pub fn cpu_has_native_bf16() -> bool {
    std::fs::read_to_string("/proc/cpuinfo").is_ok_and(|info| {
        info.lines()
            .find(|l| l.starts_with("flags"))
            .is_some_and(|l| {
                l.split_whitespace()
                    .any(|f| f == "avx512_bf16" || f == "amx_bf16")
            })
    })
}

/// Why `device` cannot train in `precision`, if it cannot: float16 autocast with loss scaling
/// is CUDA's; bfloat16 needs CUDA or a CPU with native bfloat16.
pub fn unsupported(precision: MixedPrecision, device: Device) -> Option<String> {
    match (precision, device) {
        (MixedPrecision::No, _) | (_, Device::Cuda(_)) => None,
        (MixedPrecision::Fp16, Device::Cpu) => Some(
            "`fp16` mixed precision needs a CUDA device and this service runs on the CPU; use `bf16` or `no`"
                .into(),
        ),
        (MixedPrecision::Bf16, Device::Cpu) if cpu_has_native_bf16() => None,
        (MixedPrecision::Bf16, Device::Cpu) => Some(
            "`bf16` mixed precision needs a CUDA device or a CPU with native bfloat16 (avx512_bf16 or amx_bf16), and this machine's CPU has neither; use `no`"
                .into(),
        ),
    }
}

/// The CUDA devices libtorch sees (0 without the NVIDIA driver). libtorch's CUDA backend is a
/// library of its own (`libtorch_cuda.so`) that registers itself when loaded, and no symbol of
/// it is used directly, so the linker leaves it out of the binary's needs; it is loaded here, from
/// the libtorch folder the binary runs with, the first time CUDA is asked about on a machine
/// with the driver (a CPU machine never maps it).
pub fn cuda_device_count() -> usize {
    static LOADED: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    if !crate::queue::slots::nvidia_driver_present() {
        return 0;
    }
    LOADED.get_or_init(|| {
        // SAFETY: dlopen with a constant name; the handle is kept for the process's life.
        let handle = unsafe {
            libc::dlopen(
                c"libtorch_cuda.so".as_ptr(),
                libc::RTLD_NOW | libc::RTLD_GLOBAL,
            )
        };
        if handle.is_null() {
            // SAFETY: dlerror returns a C string (or null) owned by libc.
            let why = unsafe { libc::dlerror() };
            let why = if why.is_null() {
                "unknown error".into()
            } else {
                unsafe { std::ffi::CStr::from_ptr(why) }.to_string_lossy()
            };
            eprintln!("CUDA unavailable: loading libtorch_cuda.so failed: {why}");
        }
    });
    usize::try_from(tch::Cuda::device_count()).unwrap_or(0)
}

/// Peak bytes the CUDA caching allocator handed out on `index` since the last reset.
pub fn cuda_peak_allocated(index: usize) -> Option<i64> {
    // SAFETY: plain C function; returns -1 without CUDA.
    let v = unsafe { mb_cuda_peak_allocated(index as c_int) };
    (v >= 0).then_some(v)
}

/// Resets the CUDA allocator's peak statistics of `index`.
pub fn cuda_reset_peak(index: usize) {
    // SAFETY: plain C function; a no-op without CUDA.
    unsafe {
        mb_cuda_reset_peak(index as c_int);
    }
}

/// Dynamic loss scaling for float16 (`torch.amp.GradScaler` with its defaults): the loss is
/// multiplied by the scale before the backward pass; gradients are unscaled before clipping; a
/// step whose gradients hold an inf or NaN is skipped and the scale halved; after
/// `growth_interval` clean steps in a row the scale doubles.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct GradScaler {
    pub scale: f64,
    pub growth_factor: f64,
    pub backoff_factor: f64,
    pub growth_interval: u32,
    /// Clean steps since the scale last changed.
    pub growth_tracker: u32,
}

impl Default for GradScaler {
    fn default() -> Self {
        GradScaler {
            scale: 65536.0,
            growth_factor: 2.0,
            backoff_factor: 0.5,
            growth_interval: 2000,
            growth_tracker: 0,
        }
    }
}

impl GradScaler {
    /// The loss to back-propagate.
    pub fn scale(&self, loss: &Tensor) -> Tensor {
        loss * self.scale
    }

    /// Divides the gradients by the scale in place; returns whether one of them holds an inf
    /// or a NaN.
    pub fn unscale(&self, opt: &AdamW) -> Result<bool> {
        opt.unscale_grads(1.0 / self.scale)
    }

    /// Moves the scale after a step: halves it if the gradients overflowed, doubles it after
    /// `growth_interval` clean steps.
    pub fn update(&mut self, found_inf: bool) {
        if found_inf {
            self.scale *= self.backoff_factor;
            self.growth_tracker = 0;
        } else {
            self.growth_tracker += 1;
            if self.growth_tracker == self.growth_interval {
                self.scale *= self.growth_factor;
                self.growth_tracker = 0;
            }
        }
    }
}

/// What applying a step's gradients did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Applied {
    /// The gradients' global norm before clipping (after unscaling); `None` when clipping is
    /// off.
    pub grad_norm: Option<f64>,
    /// The gradients overflowed: no step was taken.
    pub skipped: bool,
}

/// Applies the gradients in the parameters' `.grad`: unscales them (float16), clips their
/// global norm to `max_grad_norm` (0: no clipping), takes the AdamW step at `lr` unless they
/// overflowed, moves the loss scale, and zeroes them.
pub fn apply_gradients(
    opt: &mut AdamW,
    scaler: Option<&mut GradScaler>,
    max_grad_norm: f64,
    lr: f64,
) -> Result<Applied> {
    let found_inf = match &scaler {
        Some(s) => s.unscale(opt)?,
        None => false,
    };
    let grad_norm = if max_grad_norm > 0.0 && !found_inf {
        Some(f64::try_from(opt.clip_grad_norm(max_grad_norm))?)
    } else {
        None
    };
    if !found_inf {
        opt.step(lr)?;
    }
    if let Some(s) = scaler {
        s.update(found_inf);
    }
    opt.zero_grad();
    Ok(Applied {
        grad_norm,
        skipped: found_inf,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::nn::{self, Module, VarStore};
    use tch::{Device, Kind};

    #[test]
    fn an_overflowing_step_is_skipped_and_the_scale_halves() {
        for multi_tensor in [false, true] {
            overflowing_step(multi_tensor);
        }
    }

    fn overflowing_step(multi_tensor: bool) {
        let vs = VarStore::new(Device::Cpu);
        let lin = nn::linear(vs.root(), 3, 2, Default::default());
        let mut opt = AdamW::new(&vs, 0.01);
        opt.use_multi_tensor(multi_tensor);
        let mut scaler = GradScaler::default();
        let x = Tensor::ones([4, 3], (Kind::Float, Device::Cpu));
        let before: Vec<Tensor> = opt.params().iter().map(|p| p.tensor.copy()).collect();

        // a loss whose scaled gradient overflows: inf reaches every weight
        let loss = lin.forward(&x).sum(Kind::Float) * f64::INFINITY;
        scaler.scale(&loss).backward();
        let applied = apply_gradients(&mut opt, Some(&mut scaler), 1.0, 1e-3).unwrap();
        assert!(applied.skipped);
        assert_eq!(scaler.scale, 32768.0, "the scale halves");
        assert_eq!(opt.step, 0, "no optimiser step counted");
        for (p, b) in opt.params().iter().zip(&before) {
            assert!(p.tensor.equal(b), "{} changed on a skipped step", p.name);
        }

        // a clean step moves the weights and counts towards growth
        let loss = lin.forward(&x).sum(Kind::Float);
        scaler.scale(&loss).backward();
        let applied = apply_gradients(&mut opt, Some(&mut scaler), 1.0, 1e-3).unwrap();
        assert!(!applied.skipped);
        assert_eq!(
            (scaler.scale, scaler.growth_tracker, opt.step),
            (32768.0, 1, 1)
        );
        assert!(
            opt.params()
                .iter()
                .zip(&before)
                .all(|(p, b)| !p.tensor.equal(b))
        );
        // the unscaled norm is the true gradient's: d(sum(xW+b))/dW = 4 per weight, 4 per bias
        let expected = (6.0f64 * 16.0 + 2.0 * 16.0).sqrt();
        assert!((applied.grad_norm.unwrap() - expected).abs() < 1e-4);
    }

    #[test]
    fn held_weight_casts_last_from_one_autocast_region_to_the_next() {
        let vs = VarStore::new(Device::Cpu);
        let lin = crate::models::layers::Linear::new(vs.root() / "l", 4, 3, 0.5);
        let x = Tensor::ones([2, 4], (Kind::Float, Device::Cpu));
        let forward = || {
            let _a = Autocast::enter(Device::Cpu, MixedPrecision::Bf16).unwrap();
            tch::no_grad(|| lin.forward(&x)).to_kind(Kind::Float)
        };
        let bump = || {
            let _ = tch::no_grad(|| lin.weight.shallow_clone().g_add_scalar_(1.0));
        };
        let before = forward();
        {
            let _held = WeightCasts::hold(MixedPrecision::Bf16).unwrap();
            let first = forward();
            assert!(first.equal(&before));
            bump();
            // the weight's bfloat16 copy made in the first region is used again
            assert!(forward().equal(&first), "the cast was held");
        }
        // released, the next region casts the changed weight
        let after = forward();
        assert!(!after.equal(&before), "the cast was dropped");
        bump();
        assert!(
            !forward().equal(&after),
            "without a hold each region casts afresh"
        );
        assert!(WeightCasts::hold(MixedPrecision::No).unwrap().is_none());
    }

    #[test]
    fn the_scale_doubles_after_the_growth_interval() {
        let mut s = GradScaler {
            growth_interval: 3,
            ..Default::default()
        };
        for _ in 0..3 {
            s.update(false);
        }
        assert_eq!((s.scale, s.growth_tracker), (131072.0, 0));
        s.update(false);
        s.update(true);
        assert_eq!((s.scale, s.growth_tracker), (65536.0, 0));
    }

    #[test]
    fn devices_refuse_precisions_they_cannot_run() {
        assert!(unsupported(MixedPrecision::Fp16, crate::protocol::Device::Cpu).is_some());
        assert!(unsupported(MixedPrecision::Fp16, crate::protocol::Device::Cuda(0)).is_none());
        assert!(unsupported(MixedPrecision::No, crate::protocol::Device::Cpu).is_none());
        assert_eq!(
            unsupported(MixedPrecision::Bf16, crate::protocol::Device::Cpu).is_none(),
            cpu_has_native_bf16()
        );
    }
}
