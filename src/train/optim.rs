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

    /// Zeroes every gradient.
    pub fn zero_grad(&mut self) {
        for p in &mut self.params {
            p.tensor.zero_grad();
        }
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
    /// per-tensor norms.
    pub fn grad_norm(&self) -> Tensor {
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
    pub fn clip_grad_norm(&self, max_norm: f64) -> Tensor {
        let total = self.grad_norm();
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
        tch::no_grad(|| {
            for p in &mut self.params {
                let g = p.tensor.grad();
                if !g.defined() {
                    continue;
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
