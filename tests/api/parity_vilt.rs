//! ViLT against Hugging Face transformers: `modalbench forward` on small random checkpoints
//! saved by transformers must give transformers' outputs. The reference files are made by
//! `tests/reference/make_vilt_fixtures.py` at test time (cached by the script's contents).
//!
//! transformers picks image patches with `torch.multinomial`, even in eval mode; the script
//! computes its expected outputs with that call replaced by the deterministic choice the port
//! makes in eval mode, and checks against unmodified transformers that the choice only permutes
//! image tokens (same `pooler_output`, `logits` and text states). So every output, image
//! positions included, is compared whole here. See `src/models/vilt.rs`.

use crate::parity::{TOLERANCE, assert_matches, forward, read, reference_fixtures};
use modalbench::models::{self, Batch};
use std::collections::BTreeMap;
use std::path::Path;
use tch::{Device, Tensor};

fn fixtures() -> &'static Path {
    reference_fixtures("make_vilt_fixtures.py")
}

/// The six parameters of the `ViltForQuestionAnswering` head.
const HEAD: [&str; 6] = [
    "classifier.0.bias",
    "classifier.0.weight",
    "classifier.1.bias",
    "classifier.1.weight",
    "classifier.3.bias",
    "classifier.3.weight",
];

/// The batch of a fixture's inputs file.
fn batch(case: &str) -> Batch {
    let mut t = read(&fixtures().join(case).join("inputs.safetensors"));
    Batch {
        input_ids: t.remove("input_ids").unwrap(),
        attention_mask: t.remove("attention_mask").unwrap(),
        token_type_ids: t.remove("token_type_ids").unwrap(),
        pixel_values: t.remove("pixel_values"),
        pixel_mask: t.remove("pixel_mask"),
    }
}

#[test]
fn random_vilt_checkpoints_match_transformers_on_padded_images_of_different_sizes() {
    // base model; 2- and 5-label classifiers (the latter subsampling an image down to
    // max_image_length); a masked-LM checkpoint run as the base model without pixel_mask
    let cases = [
        (
            "vilt_base_h36_l1",
            &["last_hidden_state", "pooler_output"][..],
        ),
        (
            "vilt_cls2_h60_l3",
            &["last_hidden_state", "logits", "pooler_output"][..],
        ),
        (
            "vilt_cls5_h48_l2",
            &["last_hidden_state", "logits", "pooler_output"][..],
        ),
        (
            "vilt_mlm_h32_l2",
            &["last_hidden_state", "pooler_output"][..],
        ),
    ];
    for (case, names) in cases {
        let dir = fixtures().join(case);
        let got = forward(&dir.join("checkpoint"), &dir.join("inputs.safetensors"));
        let expected = read(&dir.join("expected.safetensors"));
        assert_eq!(
            expected.keys().map(String::as_str).collect::<Vec<_>>(),
            names,
            "{case}: outputs transformers gave"
        );
        assert_matches(case, &got, &expected);
        let diffs: BTreeMap<&str, f64> = expected
            .iter()
            .map(|(k, want)| {
                let diff = f64::try_from((&got[k] - want).abs().max()).unwrap();
                (k.as_str(), diff)
            })
            .collect();
        eprintln!("{case}: max abs diff {diffs:?} (tolerance {TOLERANCE:e})");
    }
}

#[test]
fn a_classifier_built_from_a_base_or_masked_lm_checkpoint_has_only_its_head_fresh() {
    for case in ["vilt_base_h36_l1", "vilt_mlm_h32_l2"] {
        let m = models::load(
            &fixtures().join(case).join("checkpoint"),
            Some(3),
            Device::Cpu,
        )
        .unwrap();
        assert_eq!(m.report.fresh, HEAD, "{case}");
        let unused_heads = m.report.unused.iter().all(|k| k.starts_with("mlm_score."));
        assert!(unused_heads, "{case}: unused {:?}", m.report.unused);
    }
}

#[test]
fn a_question_answering_checkpoint_keeps_its_head_unless_the_label_count_changes() {
    let dir = fixtures().join("vilt_cls2_h60_l3").join("checkpoint");
    let same = models::load(&dir, Some(2), Device::Cpu).unwrap();
    assert!(same.report.fresh.is_empty(), "{:?}", same.report.fresh);
    assert!(same.report.unused.is_empty(), "{:?}", same.report.unused);
    let other = models::load(&dir, Some(5), Device::Cpu).unwrap();
    assert_eq!(
        other.report.fresh,
        ["classifier.3.bias", "classifier.3.weight"]
    );
}

#[test]
fn eval_mode_outputs_are_identical_across_two_runs() {
    // the subsampled case too: transformers would draw another subset each call
    for case in ["vilt_base_h36_l1", "vilt_cls5_h48_l2"] {
        let m = models::load(&fixtures().join(case).join("checkpoint"), None, Device::Cpu).unwrap();
        let b = batch(case);
        let first = tch::no_grad(|| m.model.forward(&b, false));
        let second = tch::no_grad(|| m.model.forward(&b, false));
        assert_eq!(first.len(), second.len());
        for ((name, x), (_, y)) in first.iter().zip(&second) {
            assert!(x.equal(y), "{case}: {name} changed between runs");
        }
        let hidden: &Tensor = &first[0].1;
        // text tokens, the image class token, then as many image tokens as the largest image
        // has patches (5 x 6), or max_image_length (7)
        let image_tokens = if case == "vilt_base_h36_l1" { 30 } else { 7 };
        assert_eq!(
            hidden.size()[1],
            b.input_ids.size()[1] + 1 + image_tokens,
            "{case}"
        );
    }
}

#[test]
fn training_draws_random_patch_subsets_and_trains_the_position_grid_through_interpolation() {
    // max_image_length 7: the 4 x 5 patch image is subsampled; dropout is 0 in this config, so
    // only the patch choice can make two training passes differ (all three equal by chance:
    // about 1 in 6e9)
    let case = "vilt_cls5_h48_l2";
    let m = models::load(&fixtures().join(case).join("checkpoint"), None, Device::Cpu).unwrap();
    let b = batch(case);
    let logits: Vec<Tensor> = (0..3)
        .map(|_| models::logits(m.model.forward(&b, true)))
        .collect();
    assert!(
        !(logits[0].equal(&logits[1]) && logits[1].equal(&logits[2])),
        "training passes chose the same patches"
    );
    logits[0].sum(tch::Kind::Float).backward();
    let vars = m.vs.variables();
    for name in [
        "vilt.embeddings.position_embeddings",
        "vilt.embeddings.cls_token",
        "vilt.embeddings.patch_embeddings.projection.weight",
    ] {
        let grad = vars[name].grad();
        assert!(grad.defined(), "{name} got no gradient");
        let norm = f64::try_from(grad.abs().sum(tch::Kind::Float)).unwrap();
        assert!(norm > 0.0, "{name} got a zero gradient");
    }
}

#[test]
fn the_tiny_preset_config_builds_a_vilt_that_takes_its_preprocessor_images() {
    use modalbench::models::vilt;
    let config = vilt::tiny_config(120);
    let pre = vilt::tiny_preprocessor_config();
    let side = pre["size"]["shortest_edge"].as_i64().unwrap();
    assert_eq!(side, config["image_size"].as_i64().unwrap());
    assert_eq!(
        pre["size_divisor"].as_i64().unwrap() % config["patch_size"].as_i64().unwrap(),
        0,
        "resized sides are whole patches"
    );
    let arch = models::Arch::from_model_type(config["model_type"].as_str().unwrap()).unwrap();
    assert_eq!(
        (arch.name(), arch.base_prefix, arch.classifier_class),
        ("vilt", "vilt.", "ViltForQuestionAnswering")
    );
    let limits = (arch.text_limits)(&config).unwrap();
    assert_eq!(
        (limits.pad_token_id, limits.max_length, limits.vocab_size),
        (0, 64, 120)
    );
    let vs = tch::nn::VarStore::new(Device::Cpu);
    let model = arch
        .build(&config, models::Head::Classifier(4), vs.root())
        .unwrap();
    // a 64 x 64 image and a 64 x 32 one padded beside it
    let mask = Tensor::ones([2, 64, 64], tch::kind::INT64_CPU);
    let _ = mask.get(1).narrow(1, 32, 32).fill_(0);
    let b = Batch {
        input_ids: Tensor::from_slice(&[2i64, 50, 60, 3, 2, 70, 3, 0]).view([2, 4]),
        attention_mask: Tensor::from_slice(&[1i64, 1, 1, 1, 1, 1, 1, 0]).view([2, 4]),
        token_type_ids: Tensor::zeros([2, 4], tch::kind::INT64_CPU),
        pixel_values: Some(Tensor::randn([2, 3, 64, 64], tch::kind::FLOAT_CPU)),
        pixel_mask: Some(mask),
    };
    let out: BTreeMap<String, Tensor> = tch::no_grad(|| model.forward(&b, false))
        .into_iter()
        .collect();
    // 4 text tokens, the image class token, 16 patches of 16 x 16
    assert_eq!(out["last_hidden_state"].size(), [2, 4 + 1 + 16, 64]);
    assert_eq!(out["logits"].size(), [2, 4]);
}
