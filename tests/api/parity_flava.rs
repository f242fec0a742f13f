//! FLAVA against Hugging Face transformers: `modalbench forward` on small random checkpoints
//! saved by transformers must give `FlavaModel`'s outputs. The reference files are made by
//! `tests/reference/make_flava_fixtures.py` at test time (cached by the script's contents).

use crate::helpers::run_python;
use crate::parity::{TOLERANCE, assert_matches, forward, read, reference_fixtures};
use modalbench::models::{Head, flava, layers};
use serde_json::Value;
use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::Path;
use tch::{Device, Tensor};

fn fixtures() -> &'static Path {
    reference_fixtures("make_flava_fixtures.py")
}

/// The parameters a classifier adds to FLAVA.
const HEAD: [&str; 6] = [
    "classifier.0.bias",
    "classifier.0.weight",
    "classifier.1.bias",
    "classifier.1.weight",
    "classifier.3.bias",
    "classifier.3.weight",
];

#[test]
fn random_flava_checkpoints_match_transformers_on_every_encoder_output() {
    let fx = fixtures();
    let cases = [
        "flava_h36_l1",
        "flava_mixed_h60_h48_h44",
        "flava_no_mm_cls_nonsquare",
        "flava_pretraining",
        "flava_cls3",
    ];
    for case in cases {
        let dir = fx.join(case);
        let got = forward(&dir.join("checkpoint"), &dir.join("inputs.safetensors"));
        let expected = read(&dir.join("expected.safetensors"));
        for (name, want) in &expected {
            if let Some(have) = got.get(name).filter(|h| h.size() == want.size()) {
                let diff = f64::try_from((have - want).abs().max()).unwrap();
                eprintln!("{case}: {name} max abs diff {diff:e} (tolerance {TOLERANCE:e})");
            }
        }
        assert_matches(case, &got, &expected);
    }
}

#[test]
fn a_classifier_built_from_a_base_or_pretraining_checkpoint_reports_only_its_head_as_fresh() {
    let fx = fixtures();
    let base = modalbench::models::load(&fx.join("flava_h36_l1/checkpoint"), Some(3), Device::Cpu)
        .unwrap();
    assert_eq!(base.head, Head::Classifier(3));
    assert_eq!(base.report.fresh, HEAD);
    assert!(base.report.unused.is_empty(), "{:?}", base.report.unused);

    let pre = modalbench::models::load(
        &fx.join("flava_pretraining/checkpoint"),
        Some(3),
        Device::Cpu,
    )
    .unwrap();
    assert_eq!(pre.report.fresh, HEAD);
    // everything of FlavaModel is used; the pre-training heads and the codebook are not
    let unused = &pre.report.unused;
    assert!(
        unused.iter().all(|k| !k.starts_with("flava.")),
        "{unused:?}"
    );
    for part in ["image_codebook.", "mim_head.", "mlm_head.", "itm_head."] {
        assert!(
            unused.iter().any(|k| k.starts_with(part)),
            "{part} in {unused:?}"
        );
    }
}

#[test]
fn a_saved_flava_classifier_keeps_its_head_when_loaded_for_as_many_labels() {
    let dir = fixtures().join("flava_cls3/checkpoint");
    let m = modalbench::models::load(&dir, Some(3), Device::Cpu).unwrap();
    assert!(m.report.fresh.is_empty(), "{:?}", m.report.fresh);
    assert!(m.report.unused.is_empty(), "{:?}", m.report.unused);
    let other = modalbench::models::load(&dir, Some(4), Device::Cpu).unwrap();
    assert_eq!(
        other.report.fresh,
        ["classifier.3.bias", "classifier.3.weight"],
        "only the layer whose shape depends on the labels starts fresh"
    );
}

#[test]
fn forward_refuses_an_image_of_another_size_than_the_config_says() {
    let case = fixtures().join("flava_h36_l1");
    let tmp = tempfile::tempdir().unwrap();
    let mut inputs = read(&case.join("inputs.safetensors"));
    // 48x48 where the config says 40x40: transformers' FlavaModel raises too
    inputs.insert(
        "pixel_values".into(),
        Tensor::zeros([3, 3, 48, 48], tch::kind::FLOAT_CPU),
    );
    let named: Vec<(String, Tensor)> = inputs.into_iter().collect();
    let path = tmp.path().join("inputs.safetensors");
    Tensor::write_safetensors(&named, &path).unwrap();
    let run = crate::parity::run_forward(
        &case.join("checkpoint"),
        &path,
        &tmp.path().join("out.safetensors"),
    );
    assert!(!run.status.success());
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        stderr.contains("Input image size (48*48) doesn't match model (40*40)"),
        "{stderr}"
    );
}

#[test]
fn the_tiny_preset_config_gives_the_parameters_transformers_gives_it() {
    let config = flava::tiny_config(321);
    let ours: BTreeMap<String, Vec<i64>> = layers::parameter_shapes(|p| {
        flava::SPEC
            .build(&config, Head::Base { pooler: true }, p)
            .unwrap();
    })
    .into_iter()
    .collect();
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("config.json"), config.to_string()).unwrap();
    // FlavaModel as transformers builds it from the same config.json
    let script = "import json, sys\n\
        from transformers import FlavaConfig, FlavaModel\n\
        m = FlavaModel(FlavaConfig.from_pretrained(sys.argv[1]))\n\
        print(json.dumps({k: list(v.shape) for k, v in m.state_dict().items()}))";
    let out = run_python(
        "reading FLAVA's parameter shapes",
        [OsStr::new("-c"), OsStr::new(script), tmp.path().as_os_str()],
    );
    let theirs: BTreeMap<String, Vec<i64>> = serde_json::from_slice(&out).unwrap();
    assert_eq!(ours, theirs);
    let image = &config["image_config"];
    assert_eq!(image["image_size"], 64);
    let pre: Value = flava::tiny_preprocessor_config();
    assert_eq!(pre["crop_size"]["height"], image["image_size"]);
    assert_eq!(pre["size"]["width"], image["image_size"]);
}
