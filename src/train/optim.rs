//! AdamW as `torch.optim.AdamW` computes it, over a model's trainable parameters with two
//! weight-decay groups (biases and LayerNorm weights are not decayed), gradient-norm clipping
//! as `torch.nn.utils.clip_grad_norm_` does it, and the optimiser's state as named tensors so a
//! run can be saved and resumed.
//!
//! Written here rather than taken from tch's wrapper of the C++ optimiser because a training
//! step needs to reach the moments (to save and restore them), to unscale and check gradients
//! for dynamic loss scaling, and to skip a step.

use crate::models::layers::{self, LOOKUP, NO_DECAY};
use anyhow::{Context, Result, bail};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use tch::nn::VarStore;
use tch::{Kind, Tensor};

mod rows;

/// The CPU float32 path of the optimiser: the AdamW update of a parameter in one parallel pass
/// over its value, gradient and moments (libtorch's unfused update makes eight passes and
/// allocates three temporaries per parameter), and the gradients' squared norm in one pass.
mod fused {
    use rayon::prelude::*;
    use tch::{Device, Kind, Tensor};

    const CHUNK: usize = 1 << 14;
    /// Tensors up to this many values are handled without the thread pool.
    const SERIAL_BELOW: usize = 1 << 16;

    /// Whether `t` is a contiguous float32 CPU tensor.
    pub fn eligible(t: &Tensor) -> bool {
        t.device() == Device::Cpu && t.kind() == Kind::Float && t.is_contiguous()
    }

    /// The values of `t` (which must be [`eligible`]) as a raw slice.
    fn raw(t: &Tensor) -> (*mut f32, usize) {
        (t.data_ptr() as *mut f32, t.numel())
    }

    /// The sum of the squares of `g`'s values, in float64.
    pub fn sum_squares(g: &Tensor) -> f64 {
        let (ptr, n) = raw(g);
        // SAFETY: eligible (contiguous float32 on the CPU), read only, not written meanwhile
        let g = unsafe { std::slice::from_raw_parts(ptr, n) };
        if g.len() <= SERIAL_BELOW {
            return loops::sum_squares(g);
        }
        g.par_chunks(CHUNK).map(loops::sum_squares).sum()
    }

    /// The scalars of one update.
    #[derive(Clone, Copy)]
    pub struct Coefs {
        /// Applied to each gradient value as it is read (clipping).
        pub grad: f32,
        /// `1 − lr · wd`, or 1 where the parameter is not decayed.
        pub decay: f32,
        pub beta1: f32,
        pub beta2: f32,
        /// `lr / (1 − β₁ᵗ)`.
        pub step_size: f32,
        /// `√(1 − β₂ᵗ)`.
        pub bias2_sqrt: f32,
        pub eps: f32,
    }

    /// `p ← p·decay; m ← m + (1−β₁)(g − m); v ← β₂v + (1−β₂)g²; p ← p − step·m / (√v/√(1−β₂ᵗ) + ε)`,
    /// with `g` scaled by `c.grad`: `torch.optim.AdamW`'s update, element by element.
    pub fn adamw(p: &Tensor, g: &Tensor, m: &Tensor, v: &Tensor, c: Coefs) {
        assert!(
            [g, m, v]
                .iter()
                .all(|t| eligible(t) && t.numel() == p.numel()),
            "AdamW state matches its parameter"
        );
        // SAFETY: four distinct contiguous float32 CPU tensors of one length (the parameter,
        // its gradient and its two moments never share storage), none used elsewhere meanwhile
        let [p, g, m, v] = [p, g, m, v].map(raw);
        let (p, g, m, v) = unsafe {
            (
                std::slice::from_raw_parts_mut(p.0, p.1),
                std::slice::from_raw_parts(g.0, g.1),
                std::slice::from_raw_parts_mut(m.0, m.1),
                std::slice::from_raw_parts_mut(v.0, v.1),
            )
        };
        // a small parameter is updated on the calling thread: handing it to the pool costs more
        if p.len() <= SERIAL_BELOW {
            loops::adamw(p, g, m, v, c);
            return;
        }
        p.par_chunks_mut(CHUNK)
            .zip(g.par_chunks(CHUNK))
            .zip(m.par_chunks_mut(CHUNK))
            .zip(v.par_chunks_mut(CHUNK))
            .for_each(|(((p, g), m), v)| loops::adamw(p, g, m, v, c));
    }

    /// The loops of [`adamw`] and [`sum_squares`] over one chunk, compiled twice: for AVX-512,
    /// taken where the CPU has it (16 values an instruction, against the 4 of the x86-64
    /// baseline's SSE2), and for the baseline. Every operation rounds alike in both and none is
    /// fused into another, so the two give the same values bit for bit.
    pub(super) mod loops {
        use super::Coefs;

        /// Whether this CPU runs the AVX-512 forms (detected once, then cached by `std`).
        #[cfg(target_arch = "x86_64")]
        fn avx512() -> bool {
            std::arch::is_x86_feature_detected!("avx512f")
        }

        /// [`super::adamw`] over slices of one length.
        pub fn adamw(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], c: Coefs) {
            #[cfg(target_arch = "x86_64")]
            if avx512() {
                // SAFETY: the CPU has AVX-512F
                return unsafe { adamw_avx512(p, g, m, v, c) };
            }
            adamw_baseline(p, g, m, v, c)
        }

        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx512f")]
        fn adamw_avx512(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], c: Coefs) {
            adamw_baseline(p, g, m, v, c)
        }

        /// [`adamw`] for the x86-64 baseline. Written over zipped iterators, so that no value is
        /// bounds-checked and the compiler vectorises the loop.
        #[inline(always)]
        pub fn adamw_baseline(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], c: Coefs) {
            let (one_b1, one_b2) = (1.0 - c.beta1, 1.0 - c.beta2);
            for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
                let gi = g * c.grad;
                let mi = *m + one_b1 * (gi - *m);
                let vi = c.beta2 * *v + one_b2 * gi * gi;
                *m = mi;
                *v = vi;
                *p = *p * c.decay - c.step_size * mi / (vi.sqrt() / c.bias2_sqrt + c.eps);
            }
        }

        /// Partial sums kept by [`sum_squares`].
        const LANES: usize = 32;

        /// The sum of the squares of `g`'s values, in float64, over [`LANES`] partial sums.
        /// With one running sum each addition waits for the one before (floating-point
        /// additions are not reordered for the programmer), and MiniLM-L6's 22.7M gradient
        /// values took 43 ms on one core of a Xeon (Sapphire Rapids); with 32 the additions
        /// are vectorised and overlap: 10–12 ms, about the time to read the values.
        pub fn sum_squares(g: &[f32]) -> f64 {
            #[cfg(target_arch = "x86_64")]
            if avx512() {
                // SAFETY: the CPU has AVX-512F
                return unsafe { sum_squares_avx512(g) };
            }
            sum_squares_baseline(g)
        }

        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx512f")]
        fn sum_squares_avx512(g: &[f32]) -> f64 {
            sum_squares_baseline(g)
        }

        /// [`sum_squares`] for the x86-64 baseline.
        #[inline(always)]
        pub fn sum_squares_baseline(g: &[f32]) -> f64 {
            let mut acc = [0f64; LANES];
            let chunks = g.chunks_exact(LANES);
            let rest = chunks.remainder();
            for chunk in chunks {
                for (a, &x) in acc.iter_mut().zip(chunk) {
                    *a += f64::from(x) * f64::from(x);
                }
            }
            let tail: f64 = rest.iter().map(|&x| f64::from(x) * f64::from(x)).sum();
            acc.iter().sum::<f64>() + tail
        }
    }
}

/// The multi-tensor path, for parameters off the CPU (CUDA): PyTorch's own kernels over every
/// parameter at once through the C++ shim (`torch_extras.cpp`), as `torch.optim.AdamW(fused=True)`,
/// `clip_grad_norm_(foreach=True)` and `GradScaler.unscale_` take them. A handful of kernel
/// launches per step instead of eight per parameter, and no host synchronisation in between.
mod multi {
    use anyhow::{Result, bail};
    use std::ffi::{CStr, c_char, c_int, c_void};
    use tch::Tensor;

    unsafe extern "C" {
        fn mb_last_error() -> *const c_char;
        fn mb_fused_adamw(
            params: *const *mut c_void,
            grads: *const *mut c_void,
            exp_avgs: *const *mut c_void,
            exp_avg_sqs: *const *mut c_void,
            n: c_int,
            step: *mut c_void,
            lr: f64,
            beta1: f64,
            beta2: f64,
            weight_decay: f64,
            eps: f64,
            grad_scale: *mut c_void,
        ) -> c_int;
        fn mb_global_norm(ts: *const *mut c_void, n: c_int, out: *mut *mut c_void) -> c_int;
        fn mb_unscale(
            ts: *const *mut c_void,
            n: c_int,
            found_inf: *mut c_void,
            inv_scale: *mut c_void,
        ) -> c_int;
    }

    /// tch's handles (`at::Tensor*`) of `ts`, for a list argument.
    fn handles(ts: &[&Tensor]) -> Vec<*mut c_void> {
        ts.iter().map(|t| t.as_ptr() as *mut c_void).collect()
    }

    fn check(rc: c_int, what: &str) -> Result<()> {
        if rc == 0 {
            return Ok(());
        }
        // SAFETY: the shim keeps this thread's last message alive until its next failure
        let why = unsafe { CStr::from_ptr(mb_last_error()) }.to_string_lossy();
        bail!("{what}: {why}")
    }

    /// The AdamW state of one group of parameters (one device, one weight decay).
    pub struct Group<'a> {
        pub params: Vec<&'a Tensor>,
        pub grads: Vec<&'a Tensor>,
        pub exp_avgs: Vec<&'a Tensor>,
        pub exp_avg_sqs: Vec<&'a Tensor>,
    }

    /// `_fused_adamw_` over `g` at the step held in `step`, every gradient divided by
    /// `grad_scale` first when given.
    #[allow(clippy::too_many_arguments)]
    pub fn adamw(
        g: &Group,
        step: &Tensor,
        lr: f64,
        beta1: f64,
        beta2: f64,
        weight_decay: f64,
        eps: f64,
        grad_scale: Option<&Tensor>,
    ) -> Result<()> {
        let (p, gr, m, v) = (
            handles(&g.params),
            handles(&g.grads),
            handles(&g.exp_avgs),
            handles(&g.exp_avg_sqs),
        );
        // SAFETY: four lists of n live tensor handles, borrowed for the call; the shim copies
        // the handles (sharing storage) and updates parameters and moments in place.
        let rc = unsafe {
            mb_fused_adamw(
                p.as_ptr(),
                gr.as_ptr(),
                m.as_ptr(),
                v.as_ptr(),
                p.len() as c_int,
                step.as_ptr() as *mut c_void,
                lr,
                beta1,
                beta2,
                weight_decay,
                eps,
                grad_scale.map_or(std::ptr::null_mut(), |t| t.as_ptr() as *mut c_void),
            )
        };
        check(rc, "fused AdamW step")
    }

    /// The global L2 norm of `ts` (one device), a float scalar on that device.
    pub fn global_norm(ts: &[&Tensor]) -> Result<Tensor> {
        let h = handles(ts);
        let mut out: *mut c_void = std::ptr::null_mut();
        // SAFETY: n live handles; on success the shim writes a new `at::Tensor*` that this
        // side then owns.
        let rc = unsafe { mb_global_norm(h.as_ptr(), h.len() as c_int, &mut out) };
        check(rc, "gradient norm")?;
        // SAFETY: a fresh handle from the shim, owned by the returned tensor
        Ok(unsafe { Tensor::from_ptr(out.cast()) })
    }

    /// Multiplies `ts` by `inv_scale` in place; returns whether one of them held an inf or
    /// a NaN (one host synchronisation).
    pub fn unscale(ts: &[&Tensor], inv_scale: f64) -> Result<bool> {
        let Some(first) = ts.first() else {
            return Ok(false);
        };
        let opts = (tch::Kind::Float, first.device());
        let found = Tensor::zeros([1], opts);
        let inv = Tensor::full([1], inv_scale, opts);
        let h = handles(ts);
        // SAFETY: n live handles and two one-element float tensors on their device
        let rc = unsafe {
            mb_unscale(
                h.as_ptr(),
                h.len() as c_int,
                found.as_ptr() as *mut c_void,
                inv.as_ptr() as *mut c_void,
            )
        };
        check(rc, "unscaling the gradients")?;
        Ok(f64::try_from(&found)? != 0.0)
    }
}

/// One trainable parameter with its optimiser state.
pub struct Param {
    /// Its name in the checkpoint (`bert.encoder.layer.0.attention.self.query.weight`).
    pub name: String,
    pub tensor: Tensor,
    /// Whether weight decay applies.
    pub decay: bool,
    /// Whether it is an embedding table, read by lookups ([`LOOKUP`]).
    lookup: bool,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    /// An embedding table updated a row at a time ([`AdamW::update_tables_by_row`]).
    rows: Option<ByRow>,
}

/// A table updated a row at a time, and its lookups handed to it.
struct ByRow {
    table: Arc<rows::Table>,
    _lookups: layers::GatheredRows,
}

impl Drop for ByRow {
    /// The table is whole again before its lookups return to it.
    fn drop(&mut self) {
        self.table.sync();
    }
}

/// Embedding tables of at least this many rows (vocabularies, positions) are updated a row at
/// a time; a table of a few rows (token types) is read whole by most batches anyway.
const BY_ROW_FROM: i64 = 256;

/// AdamW (Loshchilov and Hutter's decoupled weight decay), step for step
/// `torch.optim.AdamW(..., foreach=False)` on the CPU and `torch.optim.AdamW(fused=True)` on
/// the multi-tensor path:
///
/// ```text
/// p  ← p · (1 − lr · wd)
/// m  ← β₁ m + (1 − β₁) g
/// v  ← β₂ v + (1 − β₂) g²
/// p  ← p − lr / (1 − β₁ᵗ) · m / (√v / √(1 − β₂ᵗ) + ε)
/// ```
pub struct AdamW {
    params: Vec<Param>,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// Optimisation steps taken.
    pub step: u64,
    /// The factor [`AdamW::clip_grad_norm`] found for the gradients, applied by the next
    /// [`AdamW::step`] as it reads them (one pass over the gradients fewer).
    grad_coef: f64,
    /// On the multi-tensor path, what the gradients are divided by as the next step reads
    /// them (`1 / grad_coef`, kept on their device so clipping needs no synchronisation).
    grad_divisor: Option<Tensor>,
    /// Whether steps take the multi-tensor path (parameters off the CPU).
    multi_tensor: bool,
    /// The step count as a float scalar on the parameters' device (the multi-tensor path).
    step_tensor: Option<Tensor>,
}

impl AdamW {
    /// The optimiser of every trainable variable of `vs` that requires a gradient (a frozen
    /// one does not), in name order; variables in the [`NO_DECAY`] group are not decayed.
    pub fn new(vs: &VarStore, weight_decay: f64) -> AdamW {
        let vars = vs.variables_.lock().unwrap_or_else(|p| p.into_inner());
        let in_group = |group: usize| -> Vec<usize> {
            vars.trainable_variables
                .iter()
                .filter(|v| v.group == group)
                .map(|v| v.tensor.data_ptr() as usize)
                .collect()
        };
        let (no_decay, lookup) = (in_group(NO_DECAY), in_group(LOOKUP));
        let trainable: Vec<usize> = vars
            .trainable_variables
            .iter()
            .map(|v| v.tensor.data_ptr() as usize)
            .collect();
        let named: BTreeMap<&String, &Tensor> = vars.named_variables.iter().collect();
        let params = named
            .into_iter()
            .filter(|(_, t)| t.requires_grad() && trainable.contains(&(t.data_ptr() as usize)))
            .map(|(name, t)| Param {
                name: name.clone(),
                tensor: t.shallow_clone(),
                decay: !no_decay.contains(&(t.data_ptr() as usize)),
                lookup: lookup.contains(&(t.data_ptr() as usize)),
                exp_avg: Tensor::zeros_like(t),
                exp_avg_sq: Tensor::zeros_like(t),
                rows: None,
            })
            .collect();
        let mut opt = AdamW {
            params,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay,
            step: 0,
            grad_coef: 1.0,
            grad_divisor: None,
            multi_tensor: false,
            step_tensor: None,
        };
        opt.use_multi_tensor(false);
        opt
    }

    /// Takes every step on the multi-tensor path (libtorch's fused AdamW, foreach norm and
    /// unscale kernels), which parameters off the CPU always take; on the CPU, float32
    /// parameters otherwise take this module's parallel pass.
    pub fn use_multi_tensor(&mut self, on: bool) {
        self.multi_tensor = on
            || self
                .params
                .iter()
                .any(|p| p.tensor.device() != tch::Device::Cpu);
        if self.multi_tensor {
            for p in &mut self.params {
                p.rows = None;
            }
        }
    }

    /// Updates each embedding table of at least [`BY_ROW_FROM`] rows a row at a time (see
    /// [`rows`]): a row no batch looks up waits, and the steps it missed are replayed when a
    /// batch next does or the table is read whole, so that values and moments are those of
    /// updating the whole table at every step. The CPU float32 path only (a no-op on the
    /// multi-tensor path); returns the number of tables.
    pub fn update_tables_by_row(&mut self) -> usize {
        if self.multi_tensor {
            return 0;
        }
        let mut n = 0;
        for p in &mut self.params {
            if p.lookup
                && p.rows.is_none()
                && p.tensor.dim() == 2
                && p.tensor.size()[0] >= BY_ROW_FROM
                && fused::eligible(&p.tensor)
            {
                let table = Arc::new(rows::Table::new(
                    &p.tensor,
                    &p.exp_avg,
                    &p.exp_avg_sq,
                    self.step,
                ));
                let lookups = layers::gather_rows(&p.tensor, table.clone());
                p.rows = Some(ByRow {
                    table,
                    _lookups: lookups,
                });
                n += 1;
            }
        }
        n
    }

    /// Brings the tables updated by row up to date: their values and moments are then those
    /// of every step taken (before weights are written or read whole).
    pub fn sync(&self) {
        for p in &self.params {
            if let Some(r) = &p.rows {
                r.table.sync();
            }
        }
    }

    /// Whether steps take the multi-tensor path.
    pub fn multi_tensor(&self) -> bool {
        self.multi_tensor
    }

    /// The parameters, in name order.
    pub fn params(&self) -> &[Param] {
        &self.params
    }

    /// Number of trainable values.
    pub fn numel(&self) -> usize {
        self.params.iter().map(|p| p.tensor.numel()).sum()
    }

    /// The gradients that exist (a parameter the loss does not reach has none).
    pub fn grads(&self) -> Vec<Tensor> {
        self.params
            .iter()
            .filter_map(|p| match &p.rows {
                Some(r) => r.table.grad(),
                None => Some(p.tensor.grad()).filter(Tensor::defined),
            })
            .collect()
    }

    /// Drops every gradient, as `optimizer.zero_grad()` does by default (`set_to_none`): the
    /// next backward pass hands its gradient buffers over instead of adding them into zeroed
    /// ones.
    pub fn zero_grad(&mut self) {
        for p in &mut self.params {
            crate::train::precision::set_grad_none(&mut p.tensor);
            if let Some(r) = &p.rows {
                r.table.clear();
            }
        }
        self.grad_coef = 1.0;
        self.grad_divisor = None;
    }

    /// Multiplies every gradient by `inv_scale` in place (one kernel over all of them, as
    /// `GradScaler.unscale_` does); returns whether one of them holds an inf or a NaN.
    pub fn unscale_grads(&self, inv_scale: f64) -> Result<bool> {
        let grads = self.grads();
        tch::no_grad(|| multi::unscale(&grads.iter().collect::<Vec<_>>(), inv_scale))
    }

    /// The global L2 norm of the gradients, as `clip_grad_norm_` computes it: the norm of the
    /// per-tensor norms (on the CPU, float32 gradients are summed in one parallel pass, in
    /// float64).
    pub fn grad_norm(&self) -> Tensor {
        let grads = self.grads();
        if !self.multi_tensor && !grads.is_empty() && grads.iter().all(fused::eligible) {
            let sq: f64 = grads.iter().map(fused::sum_squares).sum();
            return Tensor::from(sq.sqrt() as f32);
        }
        if self.multi_tensor && !grads.is_empty() {
            let all: Vec<&Tensor> = grads.iter().collect();
            // gradients the foreach kernel refuses (mixed kinds) get the per-tensor norms below
            if let Ok(norm) = tch::no_grad(|| multi::global_norm(&all)) {
                return norm;
            }
        }
        tch::no_grad(|| {
            let norms: Vec<Tensor> = self
                .grads()
                .iter()
                .map(|g| g.norm().to_kind(Kind::Float))
                .collect();
            if norms.is_empty() {
                Tensor::zeros([], (Kind::Float, tch::Device::Cpu))
            } else {
                Tensor::stack(&norms, 0).norm()
            }
        })
    }

    /// Scales the gradients so that their global norm is at most `max_norm`
    /// (`clip_grad_norm_`: every gradient times `min(1, max_norm / (norm + 1e-6))`); returns the
    /// norm before clipping.
    pub fn clip_grad_norm(&mut self, max_norm: f64) -> Tensor {
        let total = self.grad_norm();
        if self.multi_tensor {
            // the next step divides each gradient by max(1, (norm + 1e-6) / max_norm) as it
            // reads it
            self.grad_divisor = Some(tch::no_grad(|| ((&total + 1e-6) / max_norm).clamp_min(1.0)));
            return total;
        }
        if total.device() == tch::Device::Cpu
            && self.params.iter().all(|p| fused::eligible(&p.tensor))
        {
            // the step applies it as it reads each gradient
            let norm = f64::try_from(&total).unwrap_or(f64::NAN);
            self.grad_coef = (max_norm / (norm + 1e-6)).min(1.0);
            return total;
        }
        tch::no_grad(|| {
            let coef = (max_norm / (&total + 1e-6)).clamp_max(1.0);
            for mut g in self.grads() {
                let _ = g.g_mul_(&coef.to_device(g.device()).to_kind(g.kind()));
            }
        });
        total
    }

    /// One AdamW step at learning rate `lr` over the parameters that have gradients.
    pub fn step(&mut self, lr: f64) -> Result<()> {
        if self.multi_tensor {
            return self.step_multi_tensor(lr);
        }
        self.step += 1;
        let t = self.step as i32;
        let (b1, b2) = (self.beta1, self.beta2);
        let bias1 = 1.0 - b1.powi(t);
        let bias2_sqrt = (1.0 - b2.powi(t)).sqrt();
        let step_size = lr / bias1;
        let coef = std::mem::replace(&mut self.grad_coef, 1.0);
        tch::no_grad(|| {
            for p in &mut self.params {
                let decay = if p.decay {
                    1.0 - lr * self.weight_decay
                } else {
                    1.0
                };
                let coefs = fused::Coefs {
                    grad: coef as f32,
                    decay: decay as f32,
                    beta1: b1 as f32,
                    beta2: b2 as f32,
                    step_size: step_size as f32,
                    bias2_sqrt: bias2_sqrt as f32,
                    eps: self.eps as f32,
                };
                if let Some(r) = &p.rows {
                    r.table.step(self.step, coefs);
                    continue;
                }
                let mut g = p.tensor.grad();
                if !g.defined() {
                    continue;
                }
                if fused::eligible(&p.tensor) && fused::eligible(&g) {
                    fused::adamw(&p.tensor, &g, &p.exp_avg, &p.exp_avg_sq, coefs);
                    continue;
                }
                if coef != 1.0 {
                    let _ = g.g_mul_scalar_(coef);
                }
                if p.decay && self.weight_decay != 0.0 {
                    let _ = p.tensor.g_mul_scalar_(1.0 - lr * self.weight_decay);
                }
                let _ = p.exp_avg.lerp_(&g, 1.0 - b1);
                let _ = p.exp_avg_sq.g_mul_scalar_(b2);
                let _ = p.exp_avg_sq.addcmul_(&(&g * (1.0 - b2)), &g);
                let denom = (p.exp_avg_sq.sqrt() / bias2_sqrt) + self.eps;
                let _ = p.tensor.addcdiv_(&(&p.exp_avg * -step_size), &denom);
            }
        });
        Ok(())
    }

    /// [`AdamW::step`] on the multi-tensor path: `_fused_adamw_` once per weight-decay group,
    /// with the clipping factor folded into its gradient divisor.
    fn step_multi_tensor(&mut self, lr: f64) -> Result<()> {
        let Some(device) = self
            .params
            .iter()
            .find(|p| p.tensor.grad().defined())
            .map(|p| p.tensor.device())
        else {
            return Ok(());
        };
        self.step += 1;
        // on this path clipping leaves its factor in `grad_divisor`, not `grad_coef`
        let divisor = self.grad_divisor.take();
        let step_tensor = match self.step_tensor.take() {
            Some(t) if t.device() == device => t,
            _ => Tensor::zeros([], (Kind::Float, device)),
        };
        let grads: Vec<Tensor> = self.params.iter().map(|p| p.tensor.grad()).collect();
        let result = tch::no_grad(|| -> Result<()> {
            let _ = step_tensor.shallow_clone().fill_(self.step as f64);
            for (decayed, wd) in [(true, self.weight_decay), (false, 0.0)] {
                let mut g = multi::Group {
                    params: vec![],
                    grads: vec![],
                    exp_avgs: vec![],
                    exp_avg_sqs: vec![],
                };
                for (p, grad) in self.params.iter().zip(&grads) {
                    if p.decay == decayed && grad.defined() {
                        g.params.push(&p.tensor);
                        g.grads.push(grad);
                        g.exp_avgs.push(&p.exp_avg);
                        g.exp_avg_sqs.push(&p.exp_avg_sq);
                    }
                }
                if g.params.is_empty() {
                    continue;
                }
                multi::adamw(
                    &g,
                    &step_tensor,
                    lr,
                    self.beta1,
                    self.beta2,
                    wd,
                    self.eps,
                    divisor.as_ref(),
                )?;
            }
            Ok(())
        });
        self.step_tensor = Some(step_tensor);
        result
    }

    /// The state as named tensors (`exp_avg.<param>`, `exp_avg_sq.<param>`) and the step.
    /// An embedding table's moments keep only the rows that are not all zero, listed in
    /// `rows.<param>` (int64): the rows no batch has looked up yet, most of a vocabulary when
    /// the texts are short (MiniLM-L6's word embeddings are 90 of the 181 MB of moments).
    pub fn state(&self) -> (Vec<(String, Tensor)>, u64) {
        self.sync();
        let mut out = Vec::with_capacity(2 * self.params.len());
        for p in &self.params {
            if p.lookup
                && let Some(rows) = moved_rows(&p.exp_avg, &p.exp_avg_sq)
            {
                let at = Tensor::from_slice(&rows);
                out.push((
                    format!("exp_avg.{}", p.name),
                    p.exp_avg.index_select(0, &at),
                ));
                out.push((
                    format!("exp_avg_sq.{}", p.name),
                    p.exp_avg_sq.index_select(0, &at),
                ));
                out.push((format!("rows.{}", p.name), at));
                continue;
            }
            out.push((format!("exp_avg.{}", p.name), p.exp_avg.shallow_clone()));
            out.push((
                format!("exp_avg_sq.{}", p.name),
                p.exp_avg_sq.shallow_clone(),
            ));
        }
        (out, self.step)
    }

    /// Restores a state written by [`AdamW::state`]; every parameter must have its moments,
    /// in its shape, or for the rows `rows.<param>` lists (the others zero).
    pub fn load_state(&mut self, tensors: Vec<(String, Tensor)>, step: u64) -> Result<()> {
        let mut by_name: HashMap<String, Tensor> = tensors.into_iter().collect();
        tch::no_grad(|| -> Result<()> {
            for p in &mut self.params {
                let rows_key = format!("rows.{}", p.name);
                let rows = by_name
                    .remove(&rows_key)
                    .map(|r| listed_rows(&rows_key, r, p.tensor.size()[0]))
                    .transpose()?;
                for (prefix, slot) in [
                    ("exp_avg", &mut p.exp_avg),
                    ("exp_avg_sq", &mut p.exp_avg_sq),
                ] {
                    let key = format!("{prefix}.{}", p.name);
                    let t = by_name
                        .remove(&key)
                        .with_context(|| format!("optimiser state has no `{key}`"))?;
                    if let Some(rows) = &rows {
                        let mut want = slot.size();
                        want[0] = rows.size()[0];
                        if t.size() != want {
                            bail!(
                                "optimiser state `{key}` has shape {:?}, the {} rows of `{rows_key}` {want:?}",
                                t.size(),
                                want[0]
                            );
                        }
                        let _ = slot.zero_();
                        let _ = slot.index_copy_(0, rows, &t.to_kind(slot.kind()));
                        continue;
                    }
                    if t.size() != slot.size() {
                        bail!(
                            "optimiser state `{key}` has shape {:?}, the parameter {:?}",
                            t.size(),
                            slot.size()
                        );
                    }
                    slot.copy_(&t);
                }
            }
            Ok(())
        })?;
        if let Some(extra) = by_name.keys().next() {
            bail!("optimiser state has `{extra}`, which is not a parameter of the model");
        }
        self.step = step;
        for p in &self.params {
            if let Some(r) = &p.rows {
                r.table.reset(step);
            }
        }
        Ok(())
    }
}

/// The rows of table moments `m`, `v` that are not all zero bits; `None` where every row is, or
/// none, or the moments are not a float32 table on the CPU.
fn moved_rows(m: &Tensor, v: &Tensor) -> Option<Vec<i64>> {
    if m.dim() != 2 || !fused::eligible(m) || !fused::eligible(v) || m.size() != v.size() {
        return None;
    }
    let moved = rows::with_moments(m, v);
    let rows: Vec<i64> = (0..moved.len() as i64)
        .filter(|&r| moved[r as usize])
        .collect();
    (!rows.is_empty() && rows.len() < moved.len()).then_some(rows)
}

/// The row list `key` of a state, checked: distinct rows of a table of `n` rows, ascending.
fn listed_rows(key: &str, rows: Tensor, n: i64) -> Result<Tensor> {
    if rows.dim() != 1 || rows.kind() != Kind::Int64 {
        bail!(
            "optimiser state `{key}` is {:?} {:?}, not a list of int64 rows",
            rows.kind(),
            rows.size()
        );
    }
    let list = Vec::<i64>::try_from(&rows)?;
    if let Some(w) = list.windows(2).find(|w| w[0] >= w[1]) {
        bail!(
            "optimiser state `{key}` lists rows out of order ({} then {})",
            w[0],
            w[1]
        );
    }
    if let Some(r) = list.iter().find(|&&r| !(0..n).contains(&r)) {
        bail!("optimiser state `{key}` lists row {r} of a table of {n}");
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::layers::{LayerNorm, Linear};
    use tch::Device;
    use tch::nn::Module;

    /// Fixed values of shape `size` (tests run in parallel, so none relies on the global seed).
    fn values(size: &[i64], phase: f64) -> Tensor {
        let n: i64 = size.iter().product();
        (Tensor::arange(n, (Kind::Float, Device::Cpu)) * 0.37 + phase)
            .sin()
            .view(size)
    }

    /// A linear layer (decayed weight, undecayed bias) into a layer norm (undecayed), with the
    /// same weights every time.
    fn model() -> (VarStore, Linear, LayerNorm) {
        let vs = VarStore::new(Device::Cpu);
        let lin = Linear::new(vs.root() / "dense", 6, 5, 0.5);
        let norm = LayerNorm::new(vs.root() / "norm", 5, 1e-5);
        tch::no_grad(|| {
            let named: BTreeMap<String, Tensor> = vs.variables().into_iter().collect();
            for (i, (_, mut t)) in named.into_iter().enumerate() {
                t.copy_(&(values(&t.size(), i as f64) * 0.5 + 1.0));
            }
        });
        (vs, lin, norm)
    }

    /// Trains `steps` steps on fixed batches, clipping at `max_norm`, and returns the
    /// parameters and the norms seen.
    fn train(multi_tensor: bool, steps: usize, max_norm: f64) -> (Vec<Tensor>, Vec<f64>) {
        let (vs, lin, norm) = model();
        let mut opt = AdamW::new(&vs, 0.05);
        // an ε near the gradients' size, so that the update depends on their scale (clipping)
        opt.eps = 0.01;
        opt.use_multi_tensor(multi_tensor);
        assert_eq!(opt.multi_tensor(), multi_tensor);
        let x = values(&[8, 6], 0.3);
        let target = values(&[8, 5], 1.7);
        let mut norms = vec![];
        for i in 0..steps {
            let y = norm.forward(&lin.forward(&(&x * (i as f64 + 1.0))));
            let loss = (y - &target).square().mean(Kind::Float) * 10.0;
            loss.backward();
            norms.push(f64::try_from(opt.clip_grad_norm(max_norm)).unwrap());
            opt.step(1e-2).unwrap();
            opt.zero_grad();
        }
        (
            opt.params().iter().map(|p| p.tensor.copy()).collect(),
            norms,
        )
    }

    /// The AdamW update written out one value at a time, as [`fused::adamw`] documents it.
    fn adamw_reference(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], c: fused::Coefs) {
        for i in 0..p.len() {
            let gi = g[i] * c.grad;
            m[i] = m[i] + (1.0 - c.beta1) * (gi - m[i]);
            v[i] = c.beta2 * v[i] + (1.0 - c.beta2) * gi * gi;
            p[i] = p[i] * c.decay - c.step_size * m[i] / (v[i].sqrt() / c.bias2_sqrt + c.eps);
        }
    }

    #[test]
    fn the_chunk_loops_compute_the_update_and_the_norm_as_written_out() {
        // a length no vector width divides; values spanning magnitudes, zeros among them
        let n = 4099;
        let wave = |phase: f64, scale: f64| -> Vec<f32> {
            (0..n)
                .map(|i| {
                    let x = ((i as f64) * 0.731 + phase).sin();
                    if i % 17 == 0 {
                        0.0
                    } else {
                        (x * scale * 10f64.powi(i as i32 % 7 - 3)) as f32
                    }
                })
                .collect()
        };
        let c = fused::Coefs {
            grad: 0.37,
            decay: 1.0 - 1e-3 * 0.01,
            beta1: 0.9,
            beta2: 0.999,
            step_size: 1e-3 / (1.0 - 0.9f32.powi(3)),
            bias2_sqrt: (1.0 - 0.999f32.powi(3)).sqrt(),
            eps: 1e-8,
        };
        let (p0, mut g) = (wave(0.1, 1.0), wave(1.3, 0.01));
        g[n - 3..].copy_from_slice(&[0.02, -0.03, 0.015]);
        let m0 = wave(2.2, 1e-3);
        let v0: Vec<f32> = wave(0.7, 1e-6).iter().map(|x| x.abs()).collect();
        let (mut p_ref, mut m_ref, mut v_ref) = (p0.clone(), m0.clone(), v0.clone());
        adamw_reference(&mut p_ref, &g, &mut m_ref, &mut v_ref, c);
        let bits = |xs: &[f32]| xs.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_ne!(bits(&p_ref), bits(&p0), "the update moved the parameter");
        // the form this CPU takes (AVX-512 where it has it) and the baseline's
        type Update = fn(&mut [f32], &[f32], &mut [f32], &mut [f32], fused::Coefs);
        let forms: [(&str, Update); 2] = [
            ("dispatched", fused::loops::adamw),
            ("baseline", fused::loops::adamw_baseline),
        ];
        for (form, update) in forms {
            let (mut p, mut m, mut v) = (p0.clone(), m0.clone(), v0.clone());
            update(&mut p, &g, &mut m, &mut v, c);
            assert_eq!(bits(&p), bits(&p_ref), "{form}: parameter");
            assert_eq!(bits(&m), bits(&m_ref), "{form}: first moment");
            assert_eq!(bits(&v), bits(&v_ref), "{form}: second moment");
        }
        // every value counts, the last few (past the partial sums' lanes) included
        let exact: f64 = g.iter().map(|&x| f64::from(x) * f64::from(x)).sum();
        let sum = fused::loops::sum_squares(&g);
        assert_eq!(
            sum.to_bits(),
            fused::loops::sum_squares_baseline(&g).to_bits(),
            "both forms add in the same order"
        );
        assert!(
            (sum - exact).abs() <= 1e-12 * exact,
            "sum of squares {sum} against {exact}"
        );
        let last = f64::from(g[n - 1]);
        assert!(
            last * last > 1e-9 * exact,
            "the last value weighs in the sum"
        );
    }

    /// A 4096 × 256 embedding table (updated by row when asked) under a linear head, with the
    /// same weights every time.
    fn lookup_model() -> (VarStore, layers::Embedding, Linear) {
        let vs = VarStore::new(Device::Cpu);
        let table = layers::Embedding::new(vs.root() / "embeddings", 4096, 256, 0.02, Some(0));
        let head = Linear::new(vs.root() / "head", 256, 3, 0.5);
        tch::no_grad(|| {
            let named: BTreeMap<String, Tensor> = vs.variables().into_iter().collect();
            for (i, (_, mut t)) in named.into_iter().enumerate() {
                t.copy_(&(values(&t.size(), i as f64) * 0.1));
            }
        });
        (vs, table, head)
    }

    /// The ids of lookup `k` of step `s`: a few rows in most steps, some rows in a few steps
    /// only (row 4000 in the first), the padding row now and then, repeats within a batch.
    fn ids_of(s: usize, k: usize) -> Tensor {
        let ids: Vec<i64> = (0..24)
            .map(|j| {
                let (s, k, j) = (s as i64, k as i64, j as i64);
                match j {
                    0 if s == 0 => 4000,
                    1 => (s * 131 + k * 17) % 4096,
                    2 => 0,
                    _ => ((j * 7 + s * 3 + k) % 11) * 37 + 5,
                }
            })
            .collect();
        Tensor::from_slice(&ids).view([4, 6])
    }

    /// Trains `steps` steps on lookups: weight decay, clipping on some steps, two lookups a
    /// step (gradient accumulation) every third step, a step in which the table is not read,
    /// an evaluation read of the whole table midway; with `resume_at`, a new optimiser taking
    /// over from the first's state there. Returns every parameter, both moments of each, and
    /// the evaluation's output.
    fn train_lookups(by_row: bool, steps: usize, resume_at: Option<usize>) -> Vec<Tensor> {
        let (vs, table, head) = lookup_model();
        let new_opt = || {
            let mut opt = AdamW::new(&vs, 0.05);
            if by_row {
                assert_eq!(opt.update_tables_by_row(), 1, "the table is updated by row");
            }
            opt
        };
        let mut opt = new_opt();
        let mut out = vec![];
        for s in 0..steps {
            if resume_at == Some(s) {
                let (moments, step) = opt.state();
                let moments: HashMap<String, Tensor> =
                    moments.into_iter().map(|(k, t)| (k, t.copy())).collect();
                // the table's moments keep the rows looked up so far, and only those
                let rows = Vec::<i64>::try_from(&moments["rows.embeddings.weight"]).unwrap();
                let mut seen: Vec<i64> = (0..s)
                    .filter(|&s| s != 4)
                    .flat_map(|s| (0..2).map(move |k| (s, k)))
                    .filter(|&(s, k)| k == 0 || s % 3 == 2)
                    .flat_map(|(s, k)| Vec::<i64>::try_from(ids_of(s, k).flatten(0, -1)).unwrap())
                    .collect();
                seen.sort_unstable();
                seen.dedup();
                assert_eq!(rows, seen);
                assert_eq!(
                    moments["exp_avg.embeddings.weight"].size(),
                    [rows.len() as i64, 256]
                );
                let moments = moments.into_iter().collect();
                drop(opt);
                opt = new_opt();
                opt.load_state(moments, step).unwrap();
            }
            if s == 4 {
                // the head alone: the table gets no gradient, and AdamW leaves it be
                head.forward(&Tensor::ones([2, 256], (Kind::Float, Device::Cpu)))
                    .sum(Kind::Float)
                    .backward();
            } else {
                for k in 0..(if s % 3 == 2 { 2 } else { 1 }) {
                    let x = table.forward(&ids_of(s, k)).mean_dim(1, false, Kind::Float);
                    let y = head.forward(&(x * 50.0)).log_softmax(-1, Kind::Float);
                    (-y.select(1, (s % 3) as i64).mean(Kind::Float)).backward();
                }
            }
            let max_norm = if s % 2 == 0 { 0.05 } else { 1e9 };
            let norm = f64::try_from(opt.clip_grad_norm(max_norm)).unwrap();
            assert!(
                s == 4 || norm > 0.05,
                "step {s} clips where asked: norm {norm}"
            );
            opt.step(1e-2 * (1.0 - s as f64 / 20.0)).unwrap();
            opt.zero_grad();
            if s == 6 {
                let every = Tensor::arange(4096, (Kind::Int64, Device::Cpu));
                out.push(tch::no_grad(|| table.forward(&every)));
            }
        }
        opt.sync();
        for p in opt.params() {
            out.extend([&p.exp_avg, &p.exp_avg_sq, &p.tensor].map(Tensor::copy));
        }
        out
    }

    #[test]
    fn a_table_updated_by_row_ends_bit_for_bit_where_updated_whole() {
        let bits = |t: &Tensor| {
            Vec::<f32>::try_from(t.flatten(0, -1))
                .unwrap()
                .iter()
                .map(|x| x.to_bits())
                .collect::<Vec<u32>>()
        };
        let whole = train_lookups(false, 10, None);
        let (start, _, _) = lookup_model();
        let table0 = start.variables()["embeddings.weight"].copy();
        // the table, and each head parameter with its moments, come last
        let table = &whole[whole.len() - 7];
        assert_eq!(
            whole.iter().filter(|t| t.size() == [4096, 256]).count(),
            4,
            "the evaluation's read, two moments and the table"
        );
        // every row moved: a row no batch read (weight decay), and row 4000 (read once)
        for row in [3000, 4000, 5] {
            assert_ne!(
                bits(&table.get(row)),
                bits(&table0.get(row)),
                "row {row} moved"
            );
        }
        for (by_row, resume_at) in [(true, None), (true, Some(3)), (false, Some(3))] {
            let other = train_lookups(by_row, 10, resume_at);
            assert_eq!(other.len(), whole.len());
            for (i, (a, b)) in whole.iter().zip(&other).enumerate() {
                assert!(
                    bits(a) == bits(b),
                    "tensor {i} of {:?} differs (by row {by_row}, resumed at {resume_at:?})",
                    a.size()
                );
            }
        }
    }

    #[test]
    fn a_state_listing_rows_out_of_order_or_range_or_shape_is_refused_naming_it() {
        let (vs, _table, _head) = lookup_model();
        let full = |name: &str, rows: i64| {
            let width = if name.starts_with("embeddings") {
                256
            } else {
                0
            };
            let size: Vec<i64> = match name {
                "embeddings.weight" => vec![rows, width],
                "head.bias" => vec![3],
                _ => vec![3, 256],
            };
            ["exp_avg", "exp_avg_sq"].map(|m| {
                (
                    format!("{m}.{name}"),
                    Tensor::ones(size.as_slice(), (Kind::Float, Device::Cpu)),
                )
            })
        };
        let state = |rows: &[i64], kept: i64| {
            let mut s: Vec<(String, Tensor)> = ["head.bias", "head.weight"]
                .into_iter()
                .flat_map(|n| full(n, 0))
                .collect();
            s.extend(full("embeddings.weight", kept));
            s.push(("rows.embeddings.weight".into(), Tensor::from_slice(rows)));
            s
        };
        let mut opt = AdamW::new(&vs, 0.0);
        for (rows, kept, says) in [
            (&[3i64, 2][..], 2, "out of order (3 then 2)"),
            (&[2, 2], 2, "out of order (2 then 2)"),
            (&[5, 4096], 2, "row 4096 of a table of 4096"),
            (&[1, 2, 3], 2, "has shape [2, 256], the 3 rows"),
        ] {
            let err = opt
                .load_state(state(rows, kept), 7)
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("rows.embeddings.weight") && err.contains(says),
                "{err}"
            );
        }
        opt.load_state(state(&[1, 4095], 2), 7).unwrap();
        let m = &opt.params()[0].exp_avg;
        assert_eq!(
            f64::try_from(m.sum(Kind::Float)).unwrap(),
            512.0,
            "two rows of ones"
        );
        assert_eq!(f64::try_from(m.get(4095).sum(Kind::Float)).unwrap(), 256.0);
    }

    #[test]
    fn the_multi_tensor_path_takes_the_steps_the_per_parameter_path_takes() {
        // clipping on every step (max norm 0.1), then never (1e9)
        for max_norm in [0.1, 1e9] {
            let (a, norms_a) = train(false, 6, max_norm);
            let (b, norms_b) = train(true, 6, max_norm);
            for (x, y) in norms_a.iter().zip(&norms_b) {
                assert!((x - y).abs() <= 1e-4 * x.abs(), "norm {x} against {y}");
            }
            if max_norm < 1.0 {
                assert!(norms_a.iter().all(|&n| n > max_norm), "every step clips");
            }
            let (start, _) = train(false, 0, max_norm);
            for ((x, y), s) in a.iter().zip(&b).zip(&start) {
                let moved = f64::try_from((x - s).abs().max()).unwrap();
                let apart = f64::try_from((x - y).abs().max()).unwrap();
                assert!(moved > 1e-3, "training moved every parameter");
                // float32 sums in another order: about 1e-5 of the distance moved
                assert!(apart <= 1e-4 * moved, "{apart} apart after moving {moved}");
            }
        }
    }

    #[test]
    fn unscaling_finds_an_inf_among_the_gradients_and_divides_the_rest() {
        let (vs, lin, _) = model();
        let opt = AdamW::new(&vs, 0.0);
        let x = Tensor::ones([2, 6], (Kind::Float, Device::Cpu));
        (lin.forward(&x).sum(Kind::Float) * 4.0).backward();
        let before: Vec<Tensor> = opt.grads().iter().map(Tensor::copy).collect();
        assert!(!opt.unscale_grads(0.25).unwrap());
        for (g, b) in opt.grads().iter().zip(&before) {
            assert!(g.allclose(&(b * 0.25), 0.0, 0.0, false));
        }
        let _ = opt.grads()[0].view([-1]).get(0).fill_(f64::NAN);
        assert!(opt.unscale_grads(1.0).unwrap());
    }
}
