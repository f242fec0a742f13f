//! 8-bit image resampling as Pillow does it (`libImaging/Resample.c`), so that pixel values
//! match Hugging Face's PIL-backed image processors: separable convolution with the filter's
//! support widened by the downscaling factor, coefficients normalised per output pixel and
//! turned into 22-bit fixed point, a horizontal pass into an 8-bit intermediate image (only
//! over the rows the vertical pass reads), then a vertical pass; results rounded and clipped.

/// Pillow's resampling filters (`PIL.Image.Resampling`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    Nearest,
    Box,
    Bilinear,
    Hamming,
    Bicubic,
    Lanczos,
}

impl Filter {
    /// The filter of a Pillow `resample` number (0 to 5).
    pub fn from_pillow(n: u8) -> Option<Filter> {
        Some(match n {
            0 => Filter::Nearest,
            1 => Filter::Lanczos,
            2 => Filter::Bilinear,
            3 => Filter::Bicubic,
            4 => Filter::Box,
            5 => Filter::Hamming,
            _ => return None,
        })
    }

    fn support(self) -> f64 {
        match self {
            Filter::Nearest | Filter::Box => 0.5,
            Filter::Bilinear | Filter::Hamming => 1.0,
            Filter::Bicubic => 2.0,
            Filter::Lanczos => 3.0,
        }
    }

    fn weight(self, x: f64) -> f64 {
        let sinc = |x: f64| {
            if x == 0.0 {
                1.0
            } else {
                let x = x * std::f64::consts::PI;
                x.sin() / x
            }
        };
        match self {
            Filter::Nearest | Filter::Box => {
                if x > -0.5 && x <= 0.5 {
                    1.0
                } else {
                    0.0
                }
            }
            Filter::Bilinear => (1.0 - x.abs()).max(0.0),
            Filter::Hamming => {
                let x = x.abs();
                if x == 0.0 {
                    1.0
                } else if x >= 1.0 {
                    0.0
                } else {
                    let px = x * std::f64::consts::PI;
                    px.sin() / px * (0.54 + 0.46 * px.cos())
                }
            }
            Filter::Bicubic => {
                const A: f64 = -0.5;
                let x = x.abs();
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
            Filter::Lanczos => {
                if x > -3.0 && x < 3.0 {
                    sinc(x) * sinc(x / 3.0)
                } else {
                    0.0
                }
            }
        }
    }
}

const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Per output pixel: first input index, number of taps, and fixed-point weights.
struct Coeffs {
    ksize: usize,
    bounds: Vec<(usize, usize)>,
    weights: Vec<i32>,
}

/// Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc` for resizing `in_size` to `out_size`.
fn coeffs(in_size: usize, out_size: usize, filter: Filter) -> Coeffs {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filter.support() * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let mut bounds = Vec::with_capacity(out_size);
    let mut weights = vec![0i32; out_size * ksize];
    let mut k = vec![0f64; ksize];
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize - xmin;
        let mut ww = 0.0;
        for (x, kx) in k.iter_mut().enumerate().take(xmax) {
            *kx = filter.weight((x as f64 + xmin as f64 - center + 0.5) * ss);
            ww += *kx;
        }
        for (x, kx) in k.iter().enumerate().take(xmax) {
            let w = if ww != 0.0 { kx / ww } else { *kx };
            let f = w * (1u64 << PRECISION_BITS) as f64;
            weights[xx * ksize + x] = if w < 0.0 {
                (-0.5 + f) as i32
            } else {
                (0.5 + f) as i32
            };
        }
        bounds.push((xmin, xmax));
    }
    Coeffs {
        ksize,
        bounds,
        weights,
    }
}

fn clip8(v: i64) -> u8 {
    if v >= (1i64 << PRECISION_BITS << 8) {
        255
    } else if v <= 0 {
        0
    } else {
        (v >> PRECISION_BITS) as u8
    }
}

/// Resizes a packed RGB image (`w` x `h`, 3 bytes a pixel) to `out_w` x `out_h`.
pub fn resize_rgb(
    src: &[u8],
    w: usize,
    h: usize,
    out_w: usize,
    out_h: usize,
    filter: Filter,
) -> Vec<u8> {
    if filter == Filter::Nearest {
        return nearest(src, w, h, out_w, out_h);
    }
    let (need_h, need_v) = (out_w != w, out_h != h);
    let vert = coeffs(h, out_h, filter);
    // rows the vertical pass reads
    let (first, last) = if need_v {
        let (f, _) = vert.bounds[0];
        let (l, n) = vert.bounds[out_h - 1];
        (f, l + n)
    } else {
        (0, h)
    };
    let (mut img, mut iw, mut row0) = (src.to_vec(), w, 0);
    if need_h {
        let horiz = coeffs(w, out_w, filter);
        let rows = last - first;
        let mut tmp = vec![0u8; out_w * rows * 3];
        for y in 0..rows {
            let line = &src[(y + first) * w * 3..(y + first + 1) * w * 3];
            for xx in 0..out_w {
                let (xmin, n) = horiz.bounds[xx];
                let k = &horiz.weights[xx * horiz.ksize..xx * horiz.ksize + n];
                let mut ss = [1i64 << (PRECISION_BITS - 1); 3];
                for (x, &kx) in k.iter().enumerate() {
                    let p = (x + xmin) * 3;
                    for c in 0..3 {
                        ss[c] += line[p + c] as i64 * kx as i64;
                    }
                }
                let o = (y * out_w + xx) * 3;
                for c in 0..3 {
                    tmp[o + c] = clip8(ss[c]);
                }
            }
        }
        (img, iw, row0) = (tmp, out_w, first);
    }
    if !need_v {
        return img;
    }
    let mut out = vec![0u8; out_w * out_h * 3];
    for yy in 0..out_h {
        let (ymin, n) = vert.bounds[yy];
        let k = &vert.weights[yy * vert.ksize..yy * vert.ksize + n];
        for x in 0..iw {
            let mut ss = [1i64 << (PRECISION_BITS - 1); 3];
            for (y, &ky) in k.iter().enumerate() {
                let p = ((y + ymin - row0) * iw + x) * 3;
                for c in 0..3 {
                    ss[c] += img[p + c] as i64 * ky as i64;
                }
            }
            let o = (yy * out_w + x) * 3;
            for c in 0..3 {
                out[o + c] = clip8(ss[c]);
            }
        }
    }
    out
}

/// Pillow's nearest-neighbour resize: the source pixel under each output pixel's centre.
fn nearest(src: &[u8], w: usize, h: usize, out_w: usize, out_h: usize) -> Vec<u8> {
    let (sx, sy) = (w as f64 / out_w as f64, h as f64 / out_h as f64);
    let mut out = vec![0u8; out_w * out_h * 3];
    for y in 0..out_h {
        let yi = (((y as f64 + 0.5) * sy) as usize).min(h - 1);
        for x in 0..out_w {
            let xi = (((x as f64 + 0.5) * sx) as usize).min(w - 1);
            let (o, i) = ((y * out_w + x) * 3, (yi * w + xi) * 3);
            out[o..o + 3].copy_from_slice(&src[i..i + 3]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_uniform_image_stays_uniform_and_weights_sum_to_one() {
        let src = vec![77u8; 10 * 7 * 3];
        for f in [
            Filter::Bicubic,
            Filter::Bilinear,
            Filter::Lanczos,
            Filter::Box,
            Filter::Hamming,
        ] {
            let out = resize_rgb(&src, 10, 7, 23, 4, f);
            assert!(out.iter().all(|&v| v == 77), "{f:?}");
            let c = coeffs(10, 23, f);
            for xx in 0..23 {
                let sum: i64 = c.weights[xx * c.ksize..(xx + 1) * c.ksize]
                    .iter()
                    .map(|&w| w as i64)
                    .sum();
                assert!(
                    (sum - (1 << PRECISION_BITS)).abs() <= c.ksize as i64,
                    "{f:?}: {sum}"
                );
            }
        }
    }
}
