//! AdamW as `torch.optim.AdamW` computes it, over a model's trainable parameters with two
//! weight-decay groups (biases and LayerNorm weights are not decayed), gradient-norm clipping
//! as `torch.nn.utils.clip_grad_norm_` does it, and the optimiser's state as named tensors so a
//! run can be saved and resumed.
//!
//! Written here rather than taken from tch's wrapper of the C++ optimiser because a training
//! step needs to reach the moments (to save and restore them), to unscale and check gradients
//! for dynamic loss scaling, and to skip a step.

use crate::models::layers::NO_DECAY;
use anyhow::{Context, Result, bail};
use std::collections::{BTreeMap, HashMap};
use tch::nn::VarStore;
use tch::{Kind, Tensor};

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

    /// The loops of [`adamw`] and [`sum_squares`] over one chunk.
    pub(super) mod loops {
        use super::Coefs;

        /// [`super::adamw`] over slices of one length. Written over zipped iterators, so that
        /// no value is bounds-checked and the compiler vectorises the loop.
        pub fn adamw(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], c: Coefs) {
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
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
}

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
        let no_decay: Vec<usize> = vars
            .trainable_variables
            .iter()
            .filter(|v| v.group == NO_DECAY)
            .map(|v| v.tensor.data_ptr() as usize)
            .collect();
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
                exp_avg: Tensor::zeros_like(t),
                exp_avg_sq: Tensor::zeros_like(t),
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
            .map(|p| p.tensor.grad())
            .filter(Tensor::defined)
            .collect()
    }

    /// Drops every gradient, as `optimizer.zero_grad()` does by default (`set_to_none`): the
    /// next backward pass hands its gradient buffers over instead of adding them into zeroed
    /// ones.
    pub fn zero_grad(&mut self) {
        for p in &mut self.params {
            crate::train::precision::set_grad_none(&mut p.tensor);
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
                let mut g = p.tensor.grad();
                if !g.defined() {
                    continue;
                }
                let decay = if p.decay {
                    1.0 - lr * self.weight_decay
                } else {
                    1.0
                };
                if fused::eligible(&p.tensor) && fused::eligible(&g) {
                    fused::adamw(
                        &p.tensor,
                        &g,
                        &p.exp_avg,
                        &p.exp_avg_sq,
                        fused::Coefs {
                            grad: coef as f32,
                            decay: decay as f32,
                            beta1: b1 as f32,
                            beta2: b2 as f32,
                            step_size: step_size as f32,
                            bias2_sqrt: bias2_sqrt as f32,
                            eps: self.eps as f32,
                        },
                    );
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
    pub fn state(&self) -> (Vec<(String, Tensor)>, u64) {
        let mut out = Vec::with_capacity(2 * self.params.len());
        for p in &self.params {
            out.push((format!("exp_avg.{}", p.name), p.exp_avg.shallow_clone()));
            out.push((
                format!("exp_avg_sq.{}", p.name),
                p.exp_avg_sq.shallow_clone(),
            ));
        }
        (out, self.step)
    }

    /// Restores a state written by [`AdamW::state`]; every parameter must have its moments,
    /// in its shape.
    pub fn load_state(&mut self, tensors: Vec<(String, Tensor)>, step: u64) -> Result<()> {
        let mut by_name: HashMap<String, Tensor> = tensors.into_iter().collect();
        tch::no_grad(|| -> Result<()> {
            for p in &mut self.params {
                for (prefix, slot) in [
                    ("exp_avg", &mut p.exp_avg),
                    ("exp_avg_sq", &mut p.exp_avg_sq),
                ] {
                    let key = format!("{prefix}.{}", p.name);
                    let t = by_name
                        .remove(&key)
                        .with_context(|| format!("optimiser state has no `{key}`"))?;
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
        Ok(())
    }
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
        let (mut p, mut m, mut v) = (p0.clone(), m0.clone(), v0.clone());
        fused::loops::adamw(&mut p, &g, &mut m, &mut v, c);
        assert_eq!(bits(&p), bits(&p_ref), "parameter");
        assert_eq!(bits(&m), bits(&m_ref), "first moment");
        assert_eq!(bits(&v), bits(&v_ref), "second moment");
        // every value counts, the last few (past the partial sums' lanes) included
        let exact: f64 = g.iter().map(|&x| f64::from(x) * f64::from(x)).sum();
        let sum = fused::loops::sum_squares(&g);
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
