//! Building blocks shared by the architectures: layers created under Hugging Face's parameter
//! names, initialised as Hugging Face's `_init_weights` does, with biases and LayerNorm weights
//! in the optimizer group that gets no weight decay.

use std::cell::RefCell;
use tch::nn::{self, Init, Module, VarStore};
use tch::{Kind, Tensor};

/// What a config.json asks for that the ports cannot build; the message names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "unsupported hidden_act `{0}` (supported: gelu, gelu_new, gelu_pytorch_tanh, gelu_fast, quick_gelu, relu, silu, swish)"
    )]
    UnsupportedActivation(String),
    #[error("hidden_size {hidden_size} is not a multiple of num_attention_heads {heads}")]
    HeadsDoNotDivide { hidden_size: i64, heads: i64 },
    #[error("image_size {image} holds no patch of patch_size {patch}")]
    NoPatch { image: String, patch: String },
    /// Any other value the port does not support.
    #[error("{0}")]
    Unsupported(String),
    /// A problem inside one section of a composite config (`text_config`, ...).
    #[error("{section}: {error}")]
    In {
        section: &'static str,
        error: Box<ConfigError>,
    },
}

impl ConfigError {
    /// The same problem, inside `section` of the config.
    pub fn within(self, section: &'static str) -> ConfigError {
        ConfigError::In {
            section,
            error: Box::new(self),
        }
    }

    /// Checks that `heads` divides `hidden_size`.
    pub fn check_heads(hidden_size: i64, heads: i64) -> Result<(), ConfigError> {
        if heads <= 0 || hidden_size % heads != 0 {
            return Err(ConfigError::HeadsDoNotDivide { hidden_size, heads });
        }
        Ok(())
    }
}

/// Optimizer group of weights that get weight decay.
pub const DECAY: usize = 0;
/// Optimizer group of biases and normalisation weights (no weight decay, as in Hugging Face's
/// `Trainer`).
pub const NO_DECAY: usize = 1;
/// Optimizer group of [`Embedding`] tables: decayed like [`DECAY`], and read by row lookups, so
/// that an optimiser may gather the rows a batch looks up itself ([`gather_rows`]).
pub const LOOKUP: usize = 2;

thread_local! {
    /// While [`uninitialised`] builds a model: each parameter's initialisation, in creation
    /// order, the parameters themselves left uninitialised.
    static DEFERRED: RefCell<Option<Vec<(String, Initialisation)>>> = const { RefCell::new(None) };
}

/// How a parameter is initialised when no checkpoint provides it: a `tch` initialiser, and for
/// an embedding table with a padding index, that row zeroed afterwards.
#[derive(Debug, Clone, Copy)]
pub struct Initialisation {
    init: Init,
    zero_row: Option<i64>,
}

impl Initialisation {
    /// Initialises `t` in place (recording no gradient).
    pub fn apply(&self, t: &mut Tensor) {
        tch::no_grad(|| self.init.set(t));
        self.zero_padding_row(t);
    }

    fn zero_padding_row(&self, t: &Tensor) {
        if let Some(i) = self.zero_row {
            tch::no_grad(|| {
                let _ = t.get(i).zero_();
            });
        }
    }
}

/// Creates a trainable parameter `name` under `p`. Every architecture creates its parameters
/// through here, so that [`uninitialised`] can build a model without initialising it.
pub fn param(p: &nn::Path, name: &str, dims: &[i64], init: Init) -> Tensor {
    create(
        p,
        name,
        dims,
        Initialisation {
            init,
            zero_row: None,
        },
    )
}

fn create(p: &nn::Path, name: &str, dims: &[i64], how: Initialisation) -> Tensor {
    let deferred = DEFERRED.with_borrow_mut(|d| {
        d.as_mut()
            .map(|inits| inits.push((p.path(name), how)))
            .is_some()
    });
    if deferred {
        // uninitialised memory is not touched, so even a large model costs next to nothing
        return p.add(name, Tensor::empty(dims, (Kind::Float, p.device())), true);
    }
    let t = p.var(name, dims, how.init);
    how.zero_padding_row(&t);
    t
}

/// Builds a model (`build` creates its parameters) with every parameter left uninitialised,
/// and returns it with each parameter's initialisation, by full name in creation order: a
/// caller that fills some parameters from a checkpoint initialises the others itself, without
/// drawing random values for weights the checkpoint replaces.
pub fn uninitialised<T>(build: impl FnOnce() -> T) -> (T, Vec<(String, Initialisation)>) {
    /// Leaves the thread building models normally again, even when `build` panics.
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            DEFERRED.set(None);
        }
    }
    DEFERRED.set(Some(Vec::new()));
    let _reset = Reset;
    let model = build();
    let inits = DEFERRED.take().unwrap_or_default();
    (model, inits)
}

/// The name and shape of every parameter of the model `build` creates, without initialising
/// any (used to check a checkpoint against a config without loading it).
pub fn parameter_shapes<T>(build: impl FnOnce(nn::Path) -> T) -> Vec<(String, Vec<i64>)> {
    let vs = VarStore::new(tch::Device::Cpu);
    let (model, _) = uninitialised(|| build(vs.root()));
    drop(model);
    let mut out: Vec<(String, Vec<i64>)> = vs
        .variables()
        .into_iter()
        .map(|(k, t)| (k, t.size()))
        .collect();
    out.sort();
    out
}

/// `torch.nn.Linear`: `weight` `[out, in]` ~ N(0, std), `bias` zeros.
#[derive(Debug)]
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

impl Linear {
    /// A linear layer with a bias, or without one (`bias=False`, `qkv_bias: false`).
    pub fn with_bias(p: nn::Path, input: i64, output: i64, std: f64, bias: bool) -> Linear {
        if bias {
            return Linear::new(p, input, output, std);
        }
        let normal = Init::Randn {
            mean: 0.0,
            stdev: std,
        };
        Linear {
            weight: param(&p.set_group(DECAY), "weight", &[output, input], normal),
            bias: None,
        }
    }

    /// A linear layer with a bias.
    pub fn new(p: nn::Path, input: i64, output: i64, std: f64) -> Linear {
        let normal = Init::Randn {
            mean: 0.0,
            stdev: std,
        };
        let weight = param(&p.set_group(DECAY), "weight", &[output, input], normal);
        let bias = Some(param(
            &p.set_group(NO_DECAY),
            "bias",
            &[output],
            Init::Const(0.0),
        ));
        Linear { weight, bias }
    }
}

impl Module for Linear {
    fn forward(&self, xs: &Tensor) -> Tensor {
        xs.linear(&self.weight, self.bias.as_ref())
    }
}

/// BERT-style self-attention (`query`, `key`, `value` under `p`), computed with scaled
/// dot-product attention; shared by BERT, RoBERTa, ViLT and FLAVA, whose modules differ only
/// in where they sit and whether the projections have biases.
#[derive(Debug)]
pub struct SelfAttention {
    query: Linear,
    key: Linear,
    value: Linear,
    heads: i64,
    dropout: f64,
}

impl SelfAttention {
    /// Attention over `hidden` features in `heads` heads; `bias`: whether q/k/v have biases.
    pub fn new(p: nn::Path, hidden: i64, heads: i64, dropout: f64, std: f64, bias: bool) -> Self {
        SelfAttention {
            query: Linear::with_bias(&p / "query", hidden, hidden, std, bias),
            key: Linear::with_bias(&p / "key", hidden, hidden, std, bias),
            value: Linear::with_bias(&p / "value", hidden, hidden, std, bias),
            heads,
            dropout,
        }
    }

    /// `mask`: boolean `[batch, 1, 1, seq]`, true where a token may be attended to; `None`:
    /// every token may.
    pub fn forward_t(&self, xs: &Tensor, mask: Option<&Tensor>, train: bool) -> Tensor {
        let (b, s, h) = xs.size3().expect("hidden states are [batch, seq, hidden]");
        let split = |t: Tensor| t.view([b, s, self.heads, h / self.heads]).transpose(1, 2);
        let q = split(self.query.forward(xs));
        let k = split(self.key.forward(xs));
        let v = split(self.value.forward(xs));
        let p = if train { self.dropout } else { 0.0 };
        let attended = if p > 0.0 && xs.device() == tch::Device::Cpu {
            attention_with_dropout(&q, &k, &v, mask, p)
        } else {
            Tensor::scaled_dot_product_attention(&q, &k, &v, mask, p, false, None, false)
        };
        attended.transpose(1, 2).contiguous().view([b, s, h])
    }
}

/// Scaled dot-product attention with dropout on the attention probabilities, as libtorch's
/// math kernel computes it (the one `scaled_dot_product_attention` takes on the CPU when dropout
/// is on: both factors scaled by the fourth root of the head size, masked positions filled with
/// −∞, softmax, dropout), with the mask drawn by [`super::dropout`] instead of `bernoulli_`.
fn attention_with_dropout(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    p: f64,
) -> Tensor {
    let head = *q.size().last().expect("q is [batch, heads, seq, head]") as f64;
    let factor = head.powf(-0.25);
    let scores = (q * factor).matmul(&(k.transpose(-2, -1) * factor));
    let scores = match mask {
        Some(m) => scores.masked_fill(&m.logical_not(), f64::NEG_INFINITY),
        None => scores,
    };
    let probs = scores.softmax(-1, scores.kind());
    super::dropout::dropout(&probs, p).matmul(v)
}

/// `torch.nn.LayerNorm` over the last dimension: `weight` ones, `bias` zeros.
#[derive(Debug)]
pub struct LayerNorm {
    pub weight: Tensor,
    pub bias: Tensor,
    dim: i64,
    eps: f64,
}

impl LayerNorm {
    /// A layer norm of width `dim`.
    pub fn new(p: nn::Path, dim: i64, eps: f64) -> LayerNorm {
        let p = p.set_group(NO_DECAY);
        LayerNorm {
            weight: param(&p, "weight", &[dim], Init::Const(1.0)),
            bias: param(&p, "bias", &[dim], Init::Const(0.0)),
            dim,
            eps,
        }
    }
}

impl Module for LayerNorm {
    fn forward(&self, xs: &Tensor) -> Tensor {
        xs.layer_norm(
            [self.dim],
            Some(&self.weight),
            Some(&self.bias),
            self.eps,
            true,
        )
    }
}

/// `torch.nn.Embedding`: `weight` `[n, dim]` ~ N(0, std), the padding row zeroed.
#[derive(Debug)]
pub struct Embedding {
    pub weight: Tensor,
}

impl Embedding {
    /// An embedding table; `padding_idx`'s row starts at zero, as in Hugging Face.
    pub fn new(p: nn::Path, n: i64, dim: i64, std: f64, padding_idx: Option<i64>) -> Embedding {
        let normal = Init::Randn {
            mean: 0.0,
            stdev: std,
        };
        let how = Initialisation {
            init: normal,
            zero_row: padding_idx.filter(|&i| (0..n).contains(&i)),
        };
        Embedding {
            weight: create(&p.set_group(LOOKUP), "weight", &[n, dim], how),
        }
    }
}

impl Module for Embedding {
    fn forward(&self, ids: &Tensor) -> Tensor {
        if let Some(rows) = gatherer(&self.weight) {
            return rows.lookup(ids);
        }
        Tensor::embedding(&self.weight, ids, -1, false, false)
    }
}

/// What looks up an [`Embedding`] table's rows in its place, given by [`gather_rows`]: an
/// optimiser that updates the table a row at a time, and so must bring the rows a batch reads
/// up to date first and see that batch's gradient by row.
pub trait RowGatherer: Send + Sync {
    /// The rows of `ids`, as `Tensor::embedding` of the table gives them.
    fn lookup(&self, ids: &Tensor) -> Tensor;
}

/// Tables whose lookups a [`RowGatherer`] does, by the address of their values.
static GATHERERS: std::sync::Mutex<Vec<(usize, std::sync::Arc<dyn RowGatherer>)>> =
    std::sync::Mutex::new(Vec::new());
/// Whether [`GATHERERS`] holds any, so that lookups need not take its lock otherwise.
static ANY_GATHERER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Hands the lookups of the table `weight` to `g` until the returned guard is dropped.
pub fn gather_rows(weight: &Tensor, g: std::sync::Arc<dyn RowGatherer>) -> GatheredRows {
    let at = weight.data_ptr() as usize;
    let mut all = GATHERERS.lock().unwrap_or_else(|p| p.into_inner());
    all.retain(|(a, _)| *a != at);
    all.push((at, g));
    ANY_GATHERER.store(all.len(), std::sync::atomic::Ordering::SeqCst);
    GatheredRows { at }
}

/// The lookups of one table handed to a [`RowGatherer`]; they return to the table when dropped.
pub struct GatheredRows {
    at: usize,
}

impl Drop for GatheredRows {
    fn drop(&mut self) {
        let mut all = GATHERERS.lock().unwrap_or_else(|p| p.into_inner());
        all.retain(|(a, _)| *a != self.at);
        ANY_GATHERER.store(all.len(), std::sync::atomic::Ordering::SeqCst);
    }
}

fn gatherer(weight: &Tensor) -> Option<std::sync::Arc<dyn RowGatherer>> {
    if ANY_GATHERER.load(std::sync::atomic::Ordering::Relaxed) == 0 {
        return None;
    }
    let at = weight.data_ptr() as usize;
    let all = GATHERERS.lock().unwrap_or_else(|p| p.into_inner());
    all.iter().find(|(a, _)| *a == at).map(|(_, g)| g.clone())
}

/// The activation named by a config's `hidden_act`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Activation {
    /// Exact (erf) GELU, Hugging Face `gelu`.
    Gelu,
    /// tanh-approximated GELU: `gelu_new`, `gelu_pytorch_tanh`, `gelu_fast`.
    GeluTanh,
    /// `x * sigmoid(1.702 x)`, CLIP's `quick_gelu`.
    QuickGelu,
    Relu,
    /// `silu` / `swish`.
    Silu,
}

impl Activation {
    /// Parses a `hidden_act` value; the error lists the supported names.
    pub fn from_name(name: &str) -> Result<Activation, ConfigError> {
        Ok(match name {
            "gelu" => Activation::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Activation::GeluTanh,
            "quick_gelu" => Activation::QuickGelu,
            "relu" => Activation::Relu,
            "silu" | "swish" => Activation::Silu,
            other => return Err(ConfigError::UnsupportedActivation(other.to_string())),
        })
    }

    /// Applies the activation.
    pub fn apply(self, xs: &Tensor) -> Tensor {
        match self {
            Activation::Gelu => xs.gelu("none"),
            Activation::GeluTanh => xs.gelu("tanh"),
            Activation::QuickGelu => xs * (xs * 1.702).sigmoid(),
            Activation::Relu => xs.relu(),
            Activation::Silu => xs.silu(),
        }
    }
}

/// Dropout that is a no-op outside training ([`super::dropout`] draws the masks).
pub fn dropout(xs: &Tensor, p: f64, train: bool) -> Tensor {
    if train && p > 0.0 {
        super::dropout::dropout(xs, p)
    } else {
        xs.shallow_clone()
    }
}
