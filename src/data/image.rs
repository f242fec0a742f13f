//! Images to `pixel_values` as a checkpoint's `preprocessor_config.json` says, matching Hugging
//! Face's PIL-backed image processors (`CLIPImageProcessor`, `ViltImageProcessor`,
//! `FlavaImageProcessor`, ...): convert to RGB, resize in 8 bits with Pillow's resampling
//! ([`super::resize`]), centre-crop, rescale, normalise,
//! and for ViLT resize to a multiple of `size_divisor` under the 1333/800 cap and pad the batch
//! with a `pixel_mask`. A batch is decoded and resized in parallel.

use super::resize::{Filter, resize_rgb};
use anyhow::{Context, Result, bail};
use rayon::prelude::*;
use serde::Deserialize;
use serde_json::Value;
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

/// ImageNet statistics, the default of Hugging Face's processors.
const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// `size` / `crop_size` of a preprocessor config: an integer or a dict.
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize)]
#[serde(untagged)]
enum SizeSpec {
    Int(u32),
    Dict {
        #[serde(default)]
        shortest_edge: Option<u32>,
        #[serde(default)]
        longest_edge: Option<u32>,
        #[serde(default)]
        height: Option<u32>,
        #[serde(default)]
        width: Option<u32>,
    },
    #[default]
    Missing,
}

/// The fields of `preprocessor_config.json` this pipeline reads (names as in the file).
#[derive(Debug, Clone, Deserialize)]
struct PreprocessorConfig {
    #[serde(default)]
    image_processor_type: Option<String>,
    #[serde(default = "yes")]
    do_resize: bool,
    #[serde(default)]
    size: SizeSpec,
    #[serde(default)]
    resample: Option<u8>,
    #[serde(default)]
    do_center_crop: bool,
    #[serde(default)]
    crop_size: SizeSpec,
    #[serde(default = "yes")]
    do_rescale: bool,
    #[serde(default = "default_rescale")]
    rescale_factor: f32,
    #[serde(default = "yes")]
    do_normalize: bool,
    #[serde(default)]
    image_mean: Option<Stat>,
    #[serde(default)]
    image_std: Option<Stat>,
    #[serde(default)]
    size_divisor: Option<u32>,
    #[serde(default)]
    do_pad: Option<bool>,
}

/// A per-channel statistic, given as one number or three.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum Stat {
    One(f32),
    Three([f32; 3]),
}

impl Stat {
    fn channels(&self) -> [f32; 3] {
        match self {
            Stat::One(x) => [*x; 3],
            Stat::Three(v) => *v,
        }
    }
}

fn yes() -> bool {
    true
}
fn default_rescale() -> f32 {
    1.0 / 255.0
}

/// How the image is brought to its size.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Resize {
    None,
    /// Exactly `height` x `width`.
    Exact(u32, u32),
    /// The shorter side to `shortest_edge`, the other in proportion (Hugging Face's
    /// `get_resize_output_image_size` with `default_to_square=False`).
    ShortestEdge(u32),
    /// ViLT: shorter side to `shortest_edge`, longer side at most 1333/800 of it, both rounded
    /// down to a multiple of `size_divisor`.
    Vilt {
        shorter: u32,
        divisor: u32,
    },
}

/// A preprocessing pipeline built from a `preprocessor_config.json`.
#[derive(Debug, Clone)]
pub struct ImageProcessor {
    resize: Resize,
    filter: Filter,
    crop: Option<(u32, u32)>,
    scale: f32,
    mean: [f32; 3],
    std: [f32; 3],
    pad: bool,
}

/// A processed batch: `pixel_values` `[batch, 3, H, W]` and, when the processor pads,
/// `pixel_mask` `[batch, H, W]`.
pub struct Pixels {
    pub pixel_values: Tensor,
    pub pixel_mask: Option<Tensor>,
}

fn filter(resample: u8) -> Result<Filter> {
    Filter::from_pillow(resample)
        .with_context(|| format!("unknown `resample` {resample} (Pillow's 0 to 5)"))
}

impl ImageProcessor {
    /// The pipeline of a checkpoint folder's `preprocessor_config.json`.
    pub fn from_dir(dir: &Path) -> Result<ImageProcessor> {
        let path = dir.join("preprocessor_config.json");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {} (text+image models need one)", path.display()))?;
        let v: Value = serde_json::from_str(&text)
            .with_context(|| format!("{} is not JSON", path.display()))?;
        Self::from_config(&v).with_context(|| format!("{}", path.display()))
    }

    /// The pipeline a preprocessor config describes.
    pub fn from_config(v: &Value) -> Result<ImageProcessor> {
        let c: PreprocessorConfig = serde_json::from_value(v.clone()).context("malformed field")?;
        let kind = c.image_processor_type.as_deref().unwrap_or("");
        let vilt = kind.starts_with("Vilt") || c.size_divisor.is_some();
        // an integer `size` means the shortest edge for CLIP and ViLT, a square elsewhere
        let int_is_edge = vilt || kind.starts_with("CLIP");
        let resize = if !c.do_resize {
            Resize::None
        } else {
            match (c.size, vilt) {
                (
                    SizeSpec::Dict {
                        shortest_edge: Some(s),
                        ..
                    },
                    true,
                )
                | (SizeSpec::Int(s), true) => Resize::Vilt {
                    shorter: s,
                    divisor: c.size_divisor.unwrap_or(32),
                },
                (
                    SizeSpec::Dict {
                        height: Some(h),
                        width: Some(w),
                        ..
                    },
                    _,
                ) => Resize::Exact(h, w),
                (
                    SizeSpec::Dict {
                        shortest_edge: Some(s),
                        ..
                    },
                    false,
                ) => Resize::ShortestEdge(s),
                (SizeSpec::Int(s), false) if int_is_edge => Resize::ShortestEdge(s),
                (SizeSpec::Int(s), false) => Resize::Exact(s, s),
                (other, _) => {
                    bail!("`size` {other:?}: expected shortest_edge, or height and width")
                }
            }
        };
        let crop = if c.do_center_crop {
            Some(match c.crop_size {
                SizeSpec::Int(s) => (s, s),
                SizeSpec::Dict {
                    height: Some(h),
                    width: Some(w),
                    ..
                } => (h, w),
                other => bail!("`crop_size` {other:?}: expected an integer or height and width"),
            })
        } else {
            None
        };
        Ok(ImageProcessor {
            resize,
            // Hugging Face's processors default to bicubic (CLIP, ViLT, FLAVA) or bilinear
            filter: filter(
                c.resample
                    .unwrap_or(if vilt || int_is_edge { 3 } else { 2 }),
            )?,
            crop,
            scale: if c.do_rescale { c.rescale_factor } else { 1.0 },
            mean: if c.do_normalize {
                c.image_mean.map(|m| m.channels()).unwrap_or(IMAGENET_MEAN)
            } else {
                [0.0; 3]
            },
            std: if c.do_normalize {
                c.image_std.map(|s| s.channels()).unwrap_or(IMAGENET_STD)
            } else {
                [1.0; 3]
            },
            pad: c.do_pad.unwrap_or(vilt),
        })
    }

    /// Output (height, width) before cropping for an image of `h` x `w`.
    fn target_size(&self, h: u32, w: u32) -> (u32, u32) {
        match self.resize {
            Resize::None => (h, w),
            Resize::Exact(th, tw) => (th, tw),
            Resize::ShortestEdge(s) => {
                let (short, long) = if w <= h { (w, h) } else { (h, w) };
                let new_long = (s as f64 * long as f64 / short as f64) as u32;
                if w <= h { (new_long, s) } else { (s, new_long) }
            }
            Resize::Vilt { shorter, divisor } => {
                let longer = (1333.0 / 800.0 * shorter as f64) as u32 as f64;
                let (h, w) = (h as f64, w as f64);
                let scale = shorter as f64 / h.min(w);
                let (mut nh, mut nw) = if h < w {
                    (shorter as f64, scale * w)
                } else {
                    (scale * h, shorter as f64)
                };
                if nh.max(nw) > longer {
                    let s = longer / nh.max(nw);
                    nh *= s;
                    nw *= s;
                }
                let (nh, nw) = ((nh + 0.5) as u32, (nw + 0.5) as u32);
                (nh / divisor * divisor, nw / divisor * divisor)
            }
        }
    }

    /// What determines the 8-bit images this pipeline makes (resize, filter, crop), for caches.
    pub fn cache_key(&self) -> String {
        format!("{:?}|{:?}|{:?}", self.resize, self.filter, self.crop)
    }

    /// Decodes, resizes and crops one image to 8-bit RGB; returns (height, width, pixels).
    pub fn load_rgb(&self, path: &Path) -> Result<(u32, u32, Vec<u8>)> {
        if !path.is_file() {
            bail!("image not found: {}", path.display());
        }
        let img = image::open(path)
            .with_context(|| format!("cannot decode image {}", path.display()))?
            .to_rgb8();
        let (w, h) = img.dimensions();
        self.prepare_rgb(w, h, img.into_raw())
            .with_context(|| format!("image {}", path.display()))
    }

    /// Resizes and crops one decoded 8-bit RGB image of `w` × `h` as [`Self::load_rgb`] does;
    /// returns (height, width, pixels).
    pub fn prepare_rgb(&self, w: u32, h: u32, rgb: Vec<u8>) -> Result<(u32, u32, Vec<u8>)> {
        if w == 0 || h == 0 {
            bail!("the image is empty");
        }
        let (th, tw) = self.target_size(h, w);
        if th == 0 || tw == 0 {
            bail!("the image ({w}x{h}) resizes to nothing");
        }
        let mut rgb = rgb;
        if (th, tw) != (h, w) {
            rgb = resize_rgb(
                &rgb,
                w as usize,
                h as usize,
                tw as usize,
                th as usize,
                self.filter,
            );
        }
        let (mut h, mut w) = (th, tw);
        if let Some((ch, cw)) = self.crop {
            // Hugging Face's center_crop: offsets rounded down, zero padding where the image
            // is smaller than the crop
            let (top, left) = ((h as i64 - ch as i64) / 2, (w as i64 - cw as i64) / 2);
            let mut out = vec![0u8; (ch * cw * 3) as usize];
            for y in 0..ch as i64 {
                let sy = y + top;
                if sy < 0 || sy >= h as i64 {
                    continue;
                }
                for x in 0..cw as i64 {
                    let sx = x + left;
                    if sx < 0 || sx >= w as i64 {
                        continue;
                    }
                    let (s, d) = (
                        ((sy * w as i64 + sx) * 3) as usize,
                        ((y * cw as i64 + x) * 3) as usize,
                    );
                    out[d..d + 3].copy_from_slice(&rgb[s..s + 3]);
                }
            }
            (rgb, h, w) = (out, ch, cw);
        }
        Ok((h, w, rgb))
    }

    /// Processes a batch of image files in parallel.
    pub fn process(&self, paths: &[PathBuf]) -> Result<Pixels> {
        let images: Vec<(u32, u32, Vec<u8>)> = paths
            .par_iter()
            .map(|p| self.load_rgb(p))
            .collect::<Result<_>>()?;
        self.assemble(&images.iter().collect::<Vec<_>>())
    }

    /// Rescales, normalises and (where the processor pads) pads resized 8-bit images into a
    /// batch.
    pub fn assemble(&self, images: &[&(u32, u32, Vec<u8>)]) -> Result<Pixels> {
        let max_h = images.iter().map(|i| i.0).max().unwrap_or(1);
        let max_w = images.iter().map(|i| i.1).max().unwrap_or(1);
        let same = images.iter().all(|i| (i.0, i.1) == (max_h, max_w));
        if !same && !self.pad {
            bail!("images of different sizes in one batch and the preprocessor does not pad");
        }
        let (n, hw) = (images.len(), (max_h * max_w) as usize);
        let mut values = vec![0f32; n * 3 * hw];
        let mut mask = vec![0i64; n * hw];
        for (b, img) in images.iter().enumerate() {
            let (h, w, rgb) = (img.0 as usize, img.1 as usize, &img.2);
            for y in 0..h {
                for x in 0..w {
                    let src = (y * w + x) * 3;
                    let pix = y * max_w as usize + x;
                    mask[b * hw + pix] = 1;
                    for c in 0..3 {
                        let v = rgb[src + c] as f32 * self.scale;
                        values[(b * 3 + c) * hw + pix] = (v - self.mean[c]) / self.std[c];
                    }
                }
            }
        }
        let shape = [n as i64, 3, max_h as i64, max_w as i64];
        Ok(Pixels {
            pixel_values: Tensor::from_slice(&values).view(shape).to_kind(Kind::Float),
            pixel_mask: self
                .pad
                .then(|| Tensor::from_slice(&mask).view([n as i64, max_h as i64, max_w as i64])),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn output_sizes_follow_hugging_faces_rules() {
        let clip = ImageProcessor::from_config(
            &json!({"image_processor_type": "CLIPImageProcessor", "size": {"shortest_edge": 224}}),
        )
        .unwrap();
        // int(224 * 640 / 480) = 298, the shorter side first
        assert_eq!(clip.target_size(480, 640), (224, 298));
        assert_eq!(clip.target_size(640, 480), (298, 224));
        let vilt = ImageProcessor::from_config(&json!({"image_processor_type": "ViltImageProcessor", "size": {"shortest_edge": 384}, "size_divisor": 32})).unwrap();
        // 384 x 512 rounded to 32s; a panorama is capped at int(1333/800*384) = 639 -> 608
        assert_eq!(vilt.target_size(480, 640), (384, 512));
        assert_eq!(vilt.target_size(100, 1000), (64, 608));
        let flava =
            ImageProcessor::from_config(&json!({"size": {"height": 224, "width": 224}})).unwrap();
        assert_eq!(flava.target_size(480, 640), (224, 224));
    }

    #[test]
    fn a_missing_or_corrupt_image_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = ImageProcessor::from_config(&json!({"size": {"height": 8, "width": 8}})).unwrap();
        let missing = dir.path().join("nope.png");
        let e = format!("{:#}", p.process(&[missing]).err().unwrap());
        assert!(
            e.contains("image not found") && e.contains("nope.png"),
            "{e}"
        );
        let broken = dir.path().join("broken.png");
        std::fs::write(&broken, b"\x89PNG\r\n\x1a\nnot really").unwrap();
        let e = format!("{:#}", p.process(&[broken]).err().unwrap());
        assert!(
            e.contains("cannot decode image") && e.contains("broken.png"),
            "{e}"
        );
    }
}
