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
        let squares = |c: &[f32]| c.iter().map(|&x| f64::from(x) * f64::from(x)).sum::<f64>();
        if g.len() <= SERIAL_BELOW {
            return squares(g);
        }
        g.par_chunks(CHUNK).map(squares).sum()
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
        let (one_b1, one_b2) = (1.0 - c.beta1, 1.0 - c.beta2);
        let update = |p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]| {
            for i in 0..p.len() {
                let gi = g[i] * c.grad;
                let mi = m[i] + one_b1 * (gi - m[i]);
                let vi = c.beta2 * v[i] + one_b2 * gi * gi;
                m[i] = mi;
                v[i] = vi;
                p[i] = p[i] * c.decay - c.step_size * mi / (vi.sqrt() / c.bias2_sqrt + c.eps);
            }
        };
        // a small parameter is updated on the calling thread: handing it to the pool costs more
        if p.len() <= SERIAL_BELOW {
            update(p, g, m, v);
            return;
        }
        p.par_chunks_mut(CHUNK)
            .zip(g.par_chunks(CHUNK))
            .zip(m.par_chunks_mut(CHUNK))
            .zip(v.par_chunks_mut(CHUNK))
            .for_each(|(((p, g), m), v)| update(p, g, m, v));
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
/// `torch.optim.AdamW(..., foreach=False)`:
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
        AdamW {
            params,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay,
            step: 0,
            grad_coef: 1.0,
        }
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
    }

    /// Scales every gradient by `factor` in place.
    pub fn scale_grads(&self, factor: f64) {
        tch::no_grad(|| {
            for mut g in self.grads() {
                let _ = g.g_mul_scalar_(factor);
            }
        });
    }

    /// The global L2 norm of the gradients, as `clip_grad_norm_` computes it: the norm of the
    /// per-tensor norms (on the CPU, float32 gradients are summed in one parallel pass, in
    /// float64).
    pub fn grad_norm(&self) -> Tensor {
        let grads = self.grads();
        if !grads.is_empty() && grads.iter().all(fused::eligible) {
            let sq: f64 = grads.iter().map(fused::sum_squares).sum();
            return Tensor::from(sq.sqrt() as f32);
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
    pub fn step(&mut self, lr: f64) {
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
