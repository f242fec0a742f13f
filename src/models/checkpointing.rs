//! Gradient checkpointing without autograd hooks (tch has no `torch.utils.checkpoint`): inside a
//! [`record`]ed forward pass, each stack of encoder layers that runs through [`run_layers`]
//! keeps only its layers' inputs, computing the layers without a graph; [`Recorded::backward`]
//! then back-propagates the loss to the stack's output, and walks the layers backwards,
//! recomputing each from its input with a graph and pushing the next layer's input gradient
//! through it. Each layer's dropout is drawn from a generator reseeded with the layer's own
//! seed, in the forward pass and again in the recomputation, so the masks are the same.
//!
//! Outside a recording, `run_layers` is a plain fold over the layers.

use std::any::Any;
use std::cell::RefCell;
use std::rc::Rc;
use tch::{Kind, Tensor};

/// A layer of a stack, as `run_layers` calls it: the hidden states in, the hidden states out
/// (training mode). Owns what it needs (the layer behind an `Arc`, the mask).
pub type LayerFn = Box<dyn Fn(&Tensor) -> Tensor>;

/// How a stack runs one of its layers: `forward(layer, hidden)`, training mode, with whatever
/// else it needs (the mask) captured.
pub type LayerForward<L> = Rc<dyn Fn(&L, &Tensor) -> Tensor>;

/// Makes a guard that re-establishes the forward pass's context (autocast) while a layer is
/// recomputed; dropped after it.
pub type ContextFn = Box<dyn Fn() -> Box<dyn Any>>;

struct Segment {
    /// The layer's input, without a graph.
    input: Tensor,
    seed: i64,
    run: LayerFn,
}

struct Stack {
    /// The stack's input as the forward pass made it (with its graph to the embeddings).
    attached: Tensor,
    segments: Vec<Segment>,
    /// The stack's output: a leaf the rest of the graph hangs from.
    output: Tensor,
}

struct Tape {
    /// Recompute in the backward pass (`false`: the layers keep their graphs, as without
    /// checkpointing, but draw dropout from the same reseeded generators).
    recompute: bool,
    base_seed: i64,
    stacks: Vec<Stack>,
    layers_run: i64,
}

thread_local! {
    static TAPE: RefCell<Option<Tape>> = const { RefCell::new(None) };
}

/// Whether a recording is under way on this thread.
pub fn active() -> bool {
    TAPE.with(|t| t.borrow().is_some())
}

/// The seed of the `n`-th layer run in a recording based on `base`.
fn layer_seed(base: i64, n: i64) -> i64 {
    let mut z = (base as u64).wrapping_add((n as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (z ^ (z >> 31)) as i64 & i64::MAX
}

/// Runs `layers` over `xs` in order. Inside a recording with recomputation only the layers'
/// inputs are kept; the output returned is a leaf whose gradient [`Recorded::backward`] takes
/// back through the layers.
pub fn run_layers(xs: Tensor, layers: Vec<LayerFn>) -> Tensor {
    let taped = TAPE.with(|t| {
        t.borrow()
            .as_ref()
            .map(|tape| (tape.recompute, tape.base_seed, tape.layers_run))
    });
    let Some((recompute, base, first)) = taped else {
        return layers.iter().fold(xs, |x, f| f(&x));
    };
    let n = layers.len() as i64;
    let out = if recompute {
        let attached = xs.shallow_clone();
        let mut cur = xs.detach();
        let mut segments = Vec::with_capacity(layers.len());
        for (i, run) in layers.into_iter().enumerate() {
            let seed = layer_seed(base, first + i as i64);
            tch::manual_seed(seed);
            let next = tch::no_grad(|| run(&cur));
            segments.push(Segment {
                input: cur,
                seed,
                run,
            });
            cur = next;
        }
        let output = cur.set_requires_grad(true);
        let leaf = output.shallow_clone();
        TAPE.with(|t| {
            if let Some(tape) = t.borrow_mut().as_mut() {
                tape.stacks.push(Stack {
                    attached,
                    segments,
                    output,
                });
            }
        });
        leaf
    } else {
        let mut cur = xs;
        for (i, run) in layers.iter().enumerate() {
            tch::manual_seed(layer_seed(base, first + i as i64));
            cur = run(&cur);
        }
        cur
    };
    TAPE.with(|t| {
        if let Some(tape) = t.borrow_mut().as_mut() {
            tape.layers_run += n;
        }
    });
    out
}

/// Runs an encoder's stack of `layers` over `xs` with `forward(layer, hidden)`: through
/// [`run_layers`] in training inside a recording, else as a plain fold. Every encoder stack
/// goes through here, so gradient checkpointing covers each architecture.
pub fn stack<L: 'static>(
    layers: &[Rc<L>],
    xs: Tensor,
    train: bool,
    forward: LayerForward<L>,
) -> Tensor {
    if train && active() {
        let runs = layers
            .iter()
            .map(|layer| {
                let (layer, forward) = (layer.clone(), forward.clone());
                Box::new(move |xs: &Tensor| forward(&layer, xs)) as LayerFn
            })
            .collect();
        return run_layers(xs, runs);
    }
    layers.iter().fold(xs, |xs, layer| forward(layer, &xs))
}

/// What a recorded forward pass left for its backward pass.
pub struct Recorded {
    stacks: Vec<Stack>,
    /// Layers that ran through [`run_layers`] in the recording.
    pub layers: i64,
    context: Option<ContextFn>,
}

impl Recorded {
    /// Nothing recorded: `backward` is the loss's.
    pub fn none() -> Recorded {
        Recorded {
            stacks: Vec::new(),
            layers: 0,
            context: None,
        }
    }

    /// Back-propagates `loss` into the parameters' gradients, recomputing the recorded stacks.
    pub fn backward(self, loss: &Tensor) {
        loss.backward();
        for stack in self.stacks.into_iter().rev() {
            let mut grad = stack.output.grad();
            if !grad.defined() {
                continue;
            }
            for seg in stack.segments.into_iter().rev() {
                let input = seg.input.detach().set_requires_grad(true);
                tch::manual_seed(seg.seed);
                let _context = self.context.as_ref().map(|c| c());
                let out = (seg.run)(&input);
                // d/d(out) of sum(out * grad) is grad, exactly
                (out * &grad).sum(Kind::Float).backward();
                grad = input.grad();
            }
            if stack.attached.requires_grad() {
                (stack.attached * grad).sum(Kind::Float).backward();
            }
        }
    }
}

/// Runs the forward pass `f` recording its layer stacks: with `recompute`, they keep only
/// their inputs and are recomputed by [`Recorded::backward`] (inside the guard `context`
/// makes, as the forward pass ran); without, they keep their graphs but draw dropout the same
/// way, so both give the same gradients. The seeds come from the global generator's next draw.
pub fn record<T>(
    recompute: bool,
    context: Option<ContextFn>,
    f: impl FnOnce() -> T,
) -> (T, Recorded) {
    let base_seed =
        Tensor::randint(i64::MAX, [1], (Kind::Int64, tch::Device::Cpu)).int64_value(&[0]);
    TAPE.with(|t| {
        *t.borrow_mut() = Some(Tape {
            recompute,
            base_seed,
            stacks: Vec::new(),
            layers_run: 0,
        })
    });
    // the tape is taken back even if `f` panics
    struct Clear;
    impl Drop for Clear {
        fn drop(&mut self) {
            TAPE.with(|t| t.borrow_mut().take());
        }
    }
    let clear = Clear;
    let out = f();
    let tape = TAPE
        .with(|t| t.borrow_mut().take())
        .expect("recording under way");
    drop(clear);
    (
        out,
        Recorded {
            stacks: tape.stacks,
            layers: tape.layers_run,
            context,
        },
    )
}
