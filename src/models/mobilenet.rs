//! MobileNetV2 ("MobileNetV2: Inverted Residuals and Linear Bottlenecks", Sandler et al., 2018)
//! as torchvision builds it (`torchvision/models/mobilenetv2.py`, width 1.0), under
//! torchvision's parameter names (`features.<i>...`, `classifier.1`), so that torchvision's
//! ImageNet checkpoint `mobilenet_v2-b0353104.pth` loads as it is. The fusion presets use its
//! 1280 pooled features as their pretrained image encoder.
//!
//! `features.0` is a 3x3 stride-2 convolution to 32 channels; `features.1` to `features.17` are
//! inverted residual blocks (a 1x1 expansion unless the ratio is 1, a 3x3 depthwise
//! convolution, a linear 1x1 projection; a skip connection where the shape allows);
//! `features.18` is a 1x1 convolution to 1280 channels. Each convolution is followed by batch
//! normalisation (and ReLU6 except after the projection). Batch normalisation keeps running
//! statistics (`running_mean`, `running_var`, not trained): they are updated while training
//! and used otherwise, and always used while the encoder is frozen.
//!
//! A frozen encoder is a pure function of each image's pixels, so on the CPU its features are
//! computed once per distinct image and kept (keyed by a 128-bit hash of the pixel values, up
//! to [`CACHE_BYTES`]): later epochs, evaluations and the image-reliance probes reuse them.

use crate::models::layers::{DECAY, Linear, NO_DECAY, dropout, param};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use tch::Tensor;
use tch::nn::{self, BatchNorm, Init, Module, ModuleT};

/// Width of the pooled features.
pub const FEATURES: i64 = 1280;

/// The most memory the frozen encoder's feature cache takes (about 50,000 images).
pub const CACHE_BYTES: usize = 256 << 20;

/// (expansion ratio, output channels, blocks, stride of the first block), as torchvision's
/// `inverted_residual_setting`.
const SETTINGS: [(i64, i64, usize, i64); 7] = [
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
];

/// A convolution without bias, its batch normalisation, and optionally ReLU6.
#[derive(Debug)]
struct ConvBn {
    weight: Tensor,
    stride: i64,
    groups: i64,
    padding: i64,
    bn: BatchNorm,
    relu6: bool,
}

impl ConvBn {
    /// `conv` and `bn` are the paths of the convolution and the normalisation.
    #[allow(clippy::too_many_arguments)] // torchvision's Conv2dNormActivation arguments
    fn new(
        conv: nn::Path,
        bn: nn::Path,
        c_in: i64,
        c_out: i64,
        kernel: i64,
        stride: i64,
        groups: i64,
        relu6: bool,
    ) -> ConvBn {
        // torchvision: kaiming_normal_(mode="fan_out")
        let std = (2.0 / (c_out * kernel * kernel / groups) as f64).sqrt();
        let weight = param(
            &conv.set_group(DECAY),
            "weight",
            &[c_out, c_in / groups, kernel, kernel],
            Init::Randn {
                mean: 0.0,
                stdev: std,
            },
        );
        ConvBn {
            weight,
            stride,
            groups,
            padding: (kernel - 1) / 2,
            bn: nn::batch_norm2d(bn.set_group(NO_DECAY), c_out, Default::default()),
            relu6,
        }
    }

    fn forward(&self, xs: &Tensor, train: bool) -> Tensor {
        let ys = xs.conv2d(
            &self.weight,
            None::<Tensor>,
            [self.stride, self.stride],
            [self.padding, self.padding],
            [1, 1],
            self.groups,
        );
        let ys = self.bn.forward_t(&ys, train);
        if self.relu6 { ys.clamp(0.0, 6.0) } else { ys }
    }
}

/// An inverted residual block: its layers in order, and whether the input is added back.
#[derive(Debug)]
struct Block {
    layers: Vec<ConvBn>,
    residual: bool,
}

/// MobileNetV2's feature extractor, with the ImageNet classifier when built with classes.
#[derive(Debug)]
pub struct MobileNetV2 {
    stem: ConvBn,
    blocks: Vec<Block>,
    head: ConvBn,
    classifier: Option<Linear>,
    /// While frozen, batch normalisation uses its running statistics even in training.
    frozen: Cell<bool>,
    /// Features of the images seen while frozen, by hash of their pixels.
    cache: RefCell<HashMap<u128, Tensor>>,
}

impl MobileNetV2 {
    /// The network under `p`; `classes` adds `classifier.1` (1000 for ImageNet).
    pub fn new(p: nn::Path, classes: Option<i64>) -> MobileNetV2 {
        let features = &p / "features";
        let conv_bn = |at: nn::Path, c_in, c_out, k, s, g, relu6| {
            ConvBn::new(&at / 0, &at / 1, c_in, c_out, k, s, g, relu6)
        };
        let stem = conv_bn(&features / 0, 3, 32, 3, 2, 1, true);
        let (mut c_in, mut index) = (32, 1);
        let mut blocks = Vec::new();
        for (ratio, c_out, n, first_stride) in SETTINGS {
            for i in 0..n {
                let stride = if i == 0 { first_stride } else { 1 };
                let conv = &features / index / "conv";
                let hidden = c_in * ratio;
                let mut layers = Vec::new();
                let mut at = 0;
                if ratio != 1 {
                    layers.push(conv_bn(&conv / at, c_in, hidden, 1, 1, 1, true));
                    at += 1;
                }
                layers.push(conv_bn(&conv / at, hidden, hidden, 3, stride, hidden, true));
                // the projection: a plain convolution and a normalisation side by side
                layers.push(ConvBn::new(
                    &conv / (at + 1),
                    &conv / (at + 2),
                    hidden,
                    c_out,
                    1,
                    1,
                    1,
                    false,
                ));
                blocks.push(Block {
                    layers,
                    residual: stride == 1 && c_in == c_out,
                });
                c_in = c_out;
                index += 1;
            }
        }
        let head = conv_bn(&features / index, c_in, FEATURES, 1, 1, 1, true);
        let classifier = classes.map(|n| {
            // torchvision: normal(0, 0.01) weights, zero bias
            Linear::new(&p / "classifier" / 1, FEATURES, n, 0.01)
        });
        MobileNetV2 {
            stem,
            blocks,
            head,
            classifier,
            frozen: Cell::new(false),
            cache: RefCell::default(),
        }
    }

    /// From now on, batch normalisation uses its running statistics in training too.
    pub fn freeze(&self) {
        self.frozen.set(true);
    }

    /// `[batch, 3, H, W]` -> the globally averaged features, `[batch, 1280]`.
    pub fn features(&self, pixels: &Tensor, train: bool) -> Tensor {
        if self.frozen.get() && pixels.device() == tch::Device::Cpu {
            return self.cached_features(pixels);
        }
        self.compute(pixels, train && !self.frozen.get())
    }

    /// The frozen encoder's features, computed only for the images not seen before.
    fn cached_features(&self, pixels: &Tensor) -> Tensor {
        let n = pixels.size()[0];
        let flat = pixels.to_kind(tch::Kind::Float).reshape([n, -1]);
        let keys: Vec<u128> = (0..n).map(|i| pixel_hash(&flat.get(i))).collect();
        let missing: Vec<i64> = {
            let cache = self.cache.borrow();
            let mut seen = std::collections::HashSet::new();
            (0..n)
                .filter(|&i| {
                    !cache.contains_key(&keys[i as usize]) && seen.insert(keys[i as usize])
                })
                .collect()
        };
        let mut fresh = HashMap::new();
        if !missing.is_empty() {
            let index = Tensor::from_slice(&missing);
            let computed = tch::no_grad(|| self.compute(&pixels.index_select(0, &index), false));
            for (row, &i) in missing.iter().enumerate() {
                fresh.insert(
                    keys[i as usize],
                    computed.get(row as i64).to_kind(tch::Kind::Float),
                );
            }
        }
        let mut cache = self.cache.borrow_mut();
        let rows: Vec<Tensor> = keys
            .iter()
            .map(|k| {
                fresh
                    .get(k)
                    .or_else(|| cache.get(k))
                    .expect("computed above")
                    .shallow_clone()
            })
            .collect();
        let row_bytes = (FEATURES as usize) * 4;
        for (k, t) in fresh {
            if (cache.len() + 1) * row_bytes > CACHE_BYTES {
                break;
            }
            cache.insert(k, t);
        }
        Tensor::stack(&rows, 0)
    }

    /// The features, computed; `train` puts batch normalisation on the batch's statistics.
    fn compute(&self, pixels: &Tensor, train: bool) -> Tensor {
        let mut xs = self.stem.forward(pixels, train);
        for b in &self.blocks {
            let mut ys = xs.shallow_clone();
            for l in &b.layers {
                ys = l.forward(&ys, train);
            }
            xs = if b.residual { xs + ys } else { ys };
        }
        self.head
            .forward(&xs, train)
            .mean_dim([-2, -1].as_slice(), false, tch::Kind::Float)
    }

    /// The classifier's logits (dropout 0.2 before it while training); `None` without one.
    pub fn logits(&self, pixels: &Tensor, train: bool) -> Option<Tensor> {
        let c = self.classifier.as_ref()?;
        let f = self.features(pixels, train);
        Some(c.forward(&dropout(&f, 0.2, train)))
    }
}

/// A 128-bit hash of one image's pixel values (two SipHash passes with different keys).
fn pixel_hash(row: &Tensor) -> u128 {
    let values = Vec::<f32>::try_from(row).expect("float pixels");
    let bits: Vec<u32> = values.iter().map(|v| v.to_bits()).collect();
    let half = |salt: u64| {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        salt.hash(&mut h);
        bits.hash(&mut h);
        h.finish()
    };
    (u128::from(half(0x6d6f_6269)) << 64) | u128::from(half(0x6c65_6e65))
}
