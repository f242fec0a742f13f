//! Image preprocessing against Hugging Face's PIL-backed image processors
//! (`tests/reference/make_image_fixtures.py`): the same files, the same preprocessor configs.

use crate::parity::{read, reference_fixtures};
use modalbench::data::image::ImageProcessor;
use serde_json::Value;
use std::path::PathBuf;

/// One 8-bit level after rescaling and normalising with the smallest std in use (CLIP's 0.2613).
const LEVEL: f64 = 1.0 / 255.0 / 0.2613;
/// PNG decodes identically on both sides and the resize is Pillow's own arithmetic, so PNG
/// pixels must agree exactly (up to float rounding of the normalisation).
const PNG_MAX: f64 = 1e-5;
/// JPEG decoders differ: Pillow's libjpeg-turbo and the `image` crate's decoder upsample chroma
/// and round their IDCT differently, which moves some pixels by a few levels.
const JPEG_MAX: f64 = 6.0 * LEVEL;
const JPEG_MEAN: f64 = 0.6 * LEVEL;

#[test]
fn pixel_values_match_hugging_face_image_processors() {
    let fx = reference_fixtures("make_image_fixtures.py");
    for case in [
        "clip_224",
        "clip_bilinear_crop_100",
        "flava_224",
        "vilt_384",
        "vilt_64_divisor_16",
    ] {
        let spec: Value = serde_json::from_str(
            &std::fs::read_to_string(fx.join(format!("{case}.json"))).unwrap(),
        )
        .unwrap();
        let proc = ImageProcessor::from_config(&spec["config"]).unwrap();
        let files: Vec<PathBuf> = spec["images"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| fx.join(f.as_str().unwrap()))
            .collect();
        let got = proc.process(&files).unwrap();
        let want = read(&fx.join(format!("{case}.safetensors")));
        let expected = &want["pixel_values"];
        assert_eq!(got.pixel_values.size(), expected.size(), "{case}: shape");
        let diff = (&got.pixel_values - expected).abs();
        for (i, f) in files.iter().enumerate() {
            let d = diff.get(i as i64);
            let (max, mean) = (
                f64::try_from(d.max()).unwrap(),
                f64::try_from(d.mean(tch::Kind::Double)).unwrap(),
            );
            let name = f.file_name().unwrap().to_string_lossy();
            if name.ends_with(".png") {
                assert!(max <= PNG_MAX, "{case} {name}: max difference {max}");
            } else {
                assert!(
                    max <= JPEG_MAX && mean <= JPEG_MEAN,
                    "{case} {name}: max {max}, mean {mean}"
                );
            }
        }
        match (&got.pixel_mask, want.get("pixel_mask")) {
            (Some(m), Some(w)) => assert!(m.equal(w), "{case}: pixel_mask"),
            (None, None) => {}
            (m, w) => panic!(
                "{case}: pixel_mask present here {} and in transformers {}",
                m.is_some(),
                w.is_some()
            ),
        }
    }
}
