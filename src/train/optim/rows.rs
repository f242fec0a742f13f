//! AdamW over an embedding table a row at a time, with the arithmetic of updating the whole
//! table at every step.
//!
//! A batch of short texts looks up a few hundred of a vocabulary's 30,000 rows, yet AdamW moves
//! every row at every step: a row without a gradient still has its moments decay, its value
//! move by them, and weight decay shrink it. Updated whole, MiniLM-L6's word embeddings (11.7M
//! values, half the model) cost a gradient of that size filled with zeros by the backward pass,
//! a pass over it for the gradients' norm, and AdamW's pass over the table and both moments
//! (328 MB) at every step.
//!
//! Here the table's lookups in a training step are gathered instead: the rows a batch reads are
//! brought up to date and copied into a small leaf tensor, whose gradient the backward pass
//! fills (the same kernel, adding the same values in the same order as into the whole table's
//! gradient). The step updates those rows. Every other row is left behind, and the steps it
//! missed are replayed, the same update with a zero gradient and each step's own coefficients,
//! when a batch next reads it or when the whole table is read (an evaluation, a checkpoint,
//! [`Table::sync`]). A row that never had a gradient has zero moments, so its missed steps come
//! to its decay factors, multiplied in one after the other as the update would. Values and
//! moments stay bit for bit those of the update of the whole table (a test holds them to it).

use super::fused::{Coefs, adamw as adamw_whole, loops};
use crate::models::layers::RowGatherer;
use rayon::prelude::*;
use std::sync::Mutex;
use tch::{Kind, Tensor};

/// Rows handed to one task of the thread pool.
const ROWS_PER_TASK: usize = 64;

/// One embedding table updated a row at a time; see the module's documentation.
pub struct Table {
    state: Mutex<State>,
}

/// A row's place in training.
#[derive(Clone, Copy)]
struct Row {
    /// Optimiser steps applied to it.
    applied: u64,
    /// Whether its moments may be non-zero (it has had a gradient, or came with moments).
    moved: bool,
}

/// This step's gradient of the table.
enum Grad {
    /// By row: the rows looked up (ascending) and their gradient, `[rows, width]`.
    Rows(Vec<i64>, Tensor),
    /// Of the whole table: it was also read other than by lookups, and the gathered rows'
    /// gradients were added into that one.
    Whole(Tensor),
}

struct State {
    weight: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    width: usize,
    rows: Vec<Row>,
    /// Optimiser steps before `history`'s first.
    base: u64,
    /// The coefficients of each step since `base`; `None` for a step in which the table had
    /// no gradient, which the update of the whole table skips too.
    history: Vec<Option<Coefs>>,
    /// The rows each lookup of this step gathered, and the leaf holding their values.
    gathered: Vec<(Tensor, Tensor)>,
    /// The gradient of this step, once asked for.
    grad: Option<Grad>,
    /// A zero gradient row, for replaying missed steps.
    zeros: Vec<f32>,
}

// SAFETY: `State`'s tensors are libtorch handles, which tch sends between threads; they are
// only reached under the table's lock.
unsafe impl Send for State {}

/// A raw pointer handed to the thread pool; each task writes rows no other task touches.
#[derive(Clone, Copy)]
struct Shared<T>(*mut T);
// SAFETY: see the type's documentation
unsafe impl<T> Send for Shared<T> {}
unsafe impl<T> Sync for Shared<T> {}

impl Shared<Row> {
    /// Row `r`'s state.
    ///
    /// # Safety
    /// The pointer holds at least `r + 1` rows, and no one else reaches row `r` meanwhile.
    #[allow(clippy::mut_from_ref)]
    unsafe fn at(&self, r: usize) -> &mut Row {
        unsafe { &mut *self.0.add(r) }
    }
}

impl Shared<f32> {
    /// Row `r` of a table of rows `width` long.
    ///
    /// # Safety
    /// The pointer holds at least `r + 1` rows, and no one else reaches row `r` meanwhile.
    #[allow(clippy::mut_from_ref)]
    unsafe fn row(&self, r: usize, width: usize) -> &mut [f32] {
        unsafe { std::slice::from_raw_parts_mut(self.0.add(r * width), width) }
    }
}

/// Whether the update with step coefficients `c` leaves a row of zero moments and a zero
/// gradient with zero moments and its value times `c.decay`: `m` and `v` stay `+0`, and the
/// step `step_size · 0 / (0 / √(1 − β₂ᵗ) + ε)` is `+0`, which subtracts exactly.
fn quiet(c: &Coefs) -> bool {
    c.grad.is_finite()
        && [c.beta1, c.beta2].iter().all(|b| b.is_finite())
        && c.step_size.is_finite()
        && c.step_size >= 0.0
        && c.bias2_sqrt > 0.0
        && c.eps > 0.0
}

/// Replays the steps `missed` on one row (value `p`, moments `m`, `v`) with a zero gradient.
fn replay(
    p: &mut [f32],
    m: &mut [f32],
    v: &mut [f32],
    zeros: &[f32],
    row: &mut Row,
    missed: &[Option<Coefs>],
) {
    for c in missed.iter().flatten() {
        if !row.moved && quiet(c) {
            if c.decay != 1.0 {
                for x in p.iter_mut() {
                    *x *= c.decay;
                }
            }
        } else {
            loops::adamw(p, zeros, m, v, *c);
            row.moved = true;
        }
    }
}

/// Which rows of a table's moments `m`, `v` (contiguous float32 CPU tensors `[rows, width]`)
/// hold any value but `+0`: the rows that have had a gradient.
pub fn with_moments(m: &Tensor, v: &Tensor) -> Vec<bool> {
    let (n, width) = (m.size()[0] as usize, m.size()[1] as usize);
    // SAFETY: contiguous float32 CPU tensors of `n × width` values, read as their bits
    let bits =
        |t: &Tensor| unsafe { std::slice::from_raw_parts(t.data_ptr() as *const u32, n * width) };
    let (mb, vb) = (bits(m), bits(v));
    (0..n)
        .map(|r| {
            let at = r * width..(r + 1) * width;
            mb[at.clone()].iter().chain(&vb[at]).any(|&b| b != 0)
        })
        .collect()
}

impl Table {
    /// The table `weight` with its moments, at optimiser step `step`; every row is up to date.
    pub fn new(weight: &Tensor, exp_avg: &Tensor, exp_avg_sq: &Tensor, step: u64) -> Table {
        let size = weight.size();
        let (n, width) = (size[0] as usize, size[1] as usize);
        let mut state = State {
            weight: weight.shallow_clone(),
            exp_avg: exp_avg.shallow_clone(),
            exp_avg_sq: exp_avg_sq.shallow_clone(),
            width,
            rows: vec![
                Row {
                    applied: step,
                    moved: false
                };
                n
            ],
            base: step,
            history: Vec::new(),
            gathered: Vec::new(),
            grad: None,
            zeros: vec![0.0; width],
        };
        state.reset(step);
        Table {
            state: Mutex::new(state),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Brings every row up to date.
    pub fn sync(&self) {
        self.lock().sync();
    }

    /// Every row up to date at optimiser step `step`, the moments as they are now (after
    /// they were loaded from a checkpoint).
    pub fn reset(&self, step: u64) {
        self.lock().reset(step);
    }

    /// This step's gradient: the gathered rows' (merged over the step's lookups), or the whole
    /// table's where it was also read otherwise; `None` where it was not read.
    pub fn grad(&self) -> Option<Tensor> {
        self.lock().grad().map(|g| match g {
            Grad::Rows(_, g) | Grad::Whole(g) => g.shallow_clone(),
        })
    }

    /// Optimiser step `t` with coefficients `c`: the gathered rows get their update, the rest
    /// wait; the whole table is updated where its gradient is the whole table's.
    pub fn step(&self, t: u64, c: Coefs) {
        self.lock().step(t, c);
    }

    /// Forgets this step's lookups and gradient (`zero_grad`).
    pub fn clear(&self) {
        let mut s = self.lock();
        s.gathered.clear();
        s.grad = None;
    }
}

impl RowGatherer for Table {
    fn lookup(&self, ids: &Tensor) -> Tensor {
        let mut s = self.lock();
        if !crate::train::precision::grad_enabled() {
            // an evaluation reads the whole table
            s.sync();
            return Tensor::embedding(&s.weight, ids, -1, false, false);
        }
        let (u, inverse, _) = ids.internal_unique2(true, true, false);
        let rows = Vec::<i64>::try_from(&u.to_kind(Kind::Int64)).unwrap_or_default();
        let n = s.rows.len() as i64;
        if rows.first().is_none_or(|&r| r < 0) || rows.last().is_none_or(|&r| r >= n) {
            // libtorch's lookup names the id out of range, as it would without gathering
            return Tensor::embedding(&s.weight, ids, -1, false, false);
        }
        s.catch_up(&rows);
        let leaf = tch::no_grad(|| s.weight.index_select(0, &u)).set_requires_grad(true);
        let out = Tensor::embedding(&leaf, &inverse, -1, false, false);
        s.gathered.push((u, leaf));
        s.grad = None;
        out
    }
}

impl State {
    fn now(&self) -> u64 {
        self.base + self.history.len() as u64
    }

    /// The pointers to the values and both moments.
    fn raw(&self) -> (Shared<f32>, Shared<f32>, Shared<f32>) {
        let p = |t: &Tensor| Shared(t.data_ptr() as *mut f32);
        (p(&self.weight), p(&self.exp_avg), p(&self.exp_avg_sq))
    }

    fn reset(&mut self, step: u64) {
        let moved = with_moments(&self.exp_avg, &self.exp_avg_sq);
        for (row, moved) in self.rows.iter_mut().zip(moved) {
            *row = Row {
                applied: step,
                moved,
            };
        }
        self.base = step;
        self.history.clear();
        self.gathered.clear();
        self.grad = None;
    }

    /// Brings `rows` (distinct) up to date.
    fn catch_up(&mut self, rows: &[i64]) {
        let now = self.now();
        let (p, m, v) = self.raw();
        let (width, base) = (self.width, self.base);
        let (history, zeros) = (&self.history, &self.zeros);
        let states = Shared(self.rows.as_mut_ptr());
        let one = |&r: &i64| {
            let r = r as usize;
            // SAFETY: `rows` are distinct rows of the table, each reached by one task only
            let row = unsafe { states.at(r) };
            if row.applied == now {
                return;
            }
            let missed = &history[(row.applied - base) as usize..];
            // SAFETY: as above, for the row's value and moments
            let (pr, mr, vr) = unsafe { (p.row(r, width), m.row(r, width), v.row(r, width)) };
            replay(pr, mr, vr, zeros, row, missed);
            row.applied = now;
        };
        if rows.len() >= ROWS_PER_TASK {
            rows.par_iter().with_min_len(ROWS_PER_TASK).for_each(one);
        } else {
            rows.iter().for_each(one);
        }
    }

    fn sync(&mut self) {
        if self.history.is_empty() {
            return;
        }
        let all: Vec<i64> = (0..self.rows.len() as i64).collect();
        self.catch_up(&all);
        self.base = self.now();
        self.history.clear();
    }

    /// This step's gradient, merged once: a row looked up by several lookups of the step
    /// (gradient accumulation) gets their gradients summed in lookup order, as accumulating
    /// the whole table's gradients sums them.
    fn grad(&mut self) -> Option<&Grad> {
        if self.grad.is_none() {
            let parts: Vec<(&Tensor, Tensor)> = self
                .gathered
                .iter()
                .map(|(u, leaf)| (u, leaf.grad()))
                .filter(|(_, g)| g.defined())
                .collect();
            let mut whole = self.weight.grad();
            self.grad = if whole.defined() {
                tch::no_grad(|| {
                    for (u, g) in &parts {
                        let _ = whole.index_add_(0, u, g);
                    }
                });
                Some(Grad::Whole(whole))
            } else if parts.len() == 1 {
                let (u, g) = &parts[0];
                let rows = Vec::<i64>::try_from(&u.to_kind(Kind::Int64)).ok()?;
                Some(Grad::Rows(rows, g.contiguous()))
            } else if parts.is_empty() {
                None
            } else {
                let mut rows: Vec<i64> = Vec::new();
                for (u, _) in &parts {
                    rows.extend(Vec::<i64>::try_from(&u.to_kind(Kind::Int64)).ok()?);
                }
                rows.sort_unstable();
                rows.dedup();
                let all = Tensor::from_slice(&rows);
                let g = Tensor::zeros(
                    [rows.len() as i64, self.width as i64],
                    (Kind::Float, tch::Device::Cpu),
                );
                tch::no_grad(|| {
                    for (u, part) in &parts {
                        let at = u.to_kind(Kind::Int64).searchsorted(
                            &all,
                            false,
                            false,
                            "left",
                            None::<Tensor>,
                        );
                        let _ = g.shallow_clone().index_add_(0, &at, part);
                    }
                });
                Some(Grad::Rows(rows, g))
            };
        }
        self.grad.as_ref()
    }

    fn step(&mut self, t: u64, c: Coefs) {
        debug_assert_eq!(
            t,
            self.now() + 1,
            "the table's steps follow the optimiser's"
        );
        let grad = match self.grad() {
            None => {
                // the whole table's update skips a parameter without a gradient
                self.history.push(None);
                return;
            }
            Some(Grad::Whole(g)) => Some(g.shallow_clone()),
            Some(Grad::Rows(..)) => None,
        };
        if let Some(g) = grad {
            self.sync();
            adamw_whole(&self.weight, &g, &self.exp_avg, &self.exp_avg_sq, c);
            for row in &mut self.rows {
                *row = Row {
                    applied: t,
                    moved: true,
                };
            }
            self.base = t;
            return;
        }
        let Some(Grad::Rows(rows, g)) = self.grad.take() else {
            unreachable!("matched above")
        };
        // a no-op but where a row was gathered before an earlier step (it never is)
        self.catch_up(&rows);
        self.history.push(Some(c));
        let (p, m, v) = self.raw();
        let width = self.width;
        let gp = g.data_ptr() as *const f32;
        // SAFETY: `g` is a contiguous float32 CPU tensor of `rows.len() × width` values
        let gs = unsafe { std::slice::from_raw_parts(gp, rows.len() * width) };
        let states = Shared(self.rows.as_mut_ptr());
        let one = |(k, &r): (usize, &i64)| {
            let r = r as usize;
            // SAFETY: `rows` are distinct rows of the table, each reached by one task only
            let (pr, mr, vr) = unsafe { (p.row(r, width), m.row(r, width), v.row(r, width)) };
            loops::adamw(pr, &gs[k * width..(k + 1) * width], mr, vr, c);
            // SAFETY: as above, for the row's state
            let row = unsafe { states.at(r) };
            *row = Row {
                applied: t,
                moved: true,
            };
        };
        if rows.len() >= ROWS_PER_TASK {
            rows.par_iter()
                .enumerate()
                .with_min_len(ROWS_PER_TASK)
                .for_each(one);
        } else {
            rows.iter().enumerate().for_each(one);
        }
        self.grad = Some(Grad::Rows(rows, g));
    }
}
