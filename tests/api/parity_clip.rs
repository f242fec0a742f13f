//! CLIP against Hugging Face transformers: `modalbench forward` on small random `CLIPModel`
//! checkpoints saved by transformers must give transformers' outputs; our text+image
//! classifier loads those checkpoints with a fresh head that reads both modalities. The
//! reference files are made by `tests/reference/make_clip_fixtures.py` at test time (cached by
//! the script's contents).

use crate::parity::{TOLERANCE, assert_matches, forward, read, reference_fixtures};
use modalbench::models::checkpoint::read_tensors;
use modalbench::models::{Batch, Head, Loaded, load, logits, save_classifier};
use std::collections::BTreeMap;
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// Every fixture: text towers of widths 36/32/30 with 3/4/2 heads, vision towers of 40/48/28
/// with 5/4/7 heads, quick_gelu and gelu, both eos pooling rules, 3x3 and 4x4 patch grids.
const CASES: [&str; 3] = ["clip_eos2_quickgelu", "clip_eos5_gelu", "clip_pad_is_eos"];

fn clip_fixtures() -> &'static Path {
    reference_fixtures("make_clip_fixtures.py")
}

/// The fixture inputs of a case as a batch.
fn batch(case: &str) -> Batch {
    let mut inputs = read(&clip_fixtures().join(case).join("inputs.safetensors"));
    let input_ids = inputs.remove("input_ids").unwrap();
    Batch {
        token_type_ids: input_ids.zeros_like(),
        attention_mask: inputs.remove("attention_mask").unwrap(),
        pixel_values: inputs.remove("pixel_values"),
        pixel_mask: None,
        input_ids,
    }
}

/// The model's outputs in eval mode, by name.
fn outputs(m: &Loaded, b: &Batch) -> BTreeMap<String, Tensor> {
    tch::no_grad(|| m.model.forward(b, false))
        .into_iter()
        .collect()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    f64::try_from((a - b).abs().max()).unwrap()
}

#[test]
fn random_clip_checkpoints_match_transformers() {
    for case in CASES {
        let dir = clip_fixtures().join(case);
        let got = forward(&dir.join("checkpoint"), &dir.join("inputs.safetensors"));
        let expected = read(&dir.join("expected.safetensors"));
        for (name, want) in &expected {
            if let Some(have) = got.get(name).filter(|h| h.size() == want.size()) {
                eprintln!("{case}: {name} max abs diff {:e}", max_diff(have, want));
            }
        }
        assert_matches(case, &got, &expected);
    }
}

#[test]
fn a_classifier_built_from_a_clip_model_checkpoint_initialises_only_its_head() {
    let case = "clip_pad_is_eos";
    let m = load(
        &clip_fixtures().join(case).join("checkpoint"),
        Some(3),
        Device::Cpu,
    )
    .unwrap();
    assert_eq!(m.head, Head::Classifier(3));
    let mut fresh = m.report.fresh.clone();
    fresh.sort();
    assert_eq!(
        fresh,
        [
            "classifier.0.bias",
            "classifier.0.weight",
            "classifier.3.bias",
            "classifier.3.weight"
        ]
    );
    assert!(m.report.unused.is_empty(), "{:?}", m.report.unused);
    // the CLIP inside, loaded under `clip.`, still gives transformers' outputs
    let mut got = outputs(&m, &batch(case));
    let logits = got.remove("logits").unwrap();
    assert_eq!(logits.size(), [4, 3]);
    let expected = read(&clip_fixtures().join(case).join("expected.safetensors"));
    assert_matches(case, &got, &expected);
}

#[test]
fn the_classifier_logits_depend_on_both_the_text_and_the_image() {
    let case = "clip_pad_is_eos";
    let m = load(
        &clip_fixtures().join(case).join("checkpoint"),
        Some(3),
        Device::Cpu,
    )
    .unwrap();
    let b = batch(case);
    let base = tch::no_grad(|| logits(m.model.forward(&b, false)));

    let mut other_image = batch(case);
    let pixels = other_image.pixel_values.as_ref().unwrap();
    other_image.pixel_values = Some(pixels.flip([2, 3]));
    let image_changed = tch::no_grad(|| logits(m.model.forward(&other_image, false)));

    // the first token of each row is an ordinary one (ids 61..99, eos and padding are 60):
    // swap it for another ordinary id, the eos position stays
    let mut other_text = batch(case);
    let first = other_text.input_ids.narrow(1, 0, 1);
    let swapped = (&first - 61 + 1).remainder(38) + 61;
    other_text.input_ids = Tensor::cat(&[swapped, other_text.input_ids.narrow(1, 1, 11)], 1);
    assert_ne!(
        Vec::<i64>::try_from(other_text.input_ids.flatten(0, -1)).unwrap(),
        Vec::<i64>::try_from(b.input_ids.flatten(0, -1)).unwrap()
    );
    let text_changed = tch::no_grad(|| logits(m.model.forward(&other_text, false)));

    for (what, changed) in [("image", &image_changed), ("text", &text_changed)] {
        let per_row = (changed - &base).abs().amax([1], false);
        for (row, d) in Vec::<f64>::try_from(per_row.to_kind(Kind::Double))
            .unwrap()
            .into_iter()
            .enumerate()
        {
            assert!(
                d > 1e-6,
                "changing the {what} of row {row} left its logits as they were"
            );
        }
    }
}

#[test]
fn a_saved_classifier_reloads_with_its_own_head_and_the_same_logits() {
    let case = "clip_eos2_quickgelu";
    let m = load(
        &clip_fixtures().join(case).join("checkpoint"),
        Some(3),
        Device::Cpu,
    )
    .unwrap();
    let b = batch(case);
    let before = tch::no_grad(|| logits(m.model.forward(&b, false)));
    let out = tempfile::tempdir().unwrap();
    let labels: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
    save_classifier(&m, out.path(), &labels).unwrap();

    let keys: Vec<String> = read_tensors(out.path()).unwrap().into_keys().collect();
    assert!(keys.contains(&"clip.vision_model.pre_layrnorm.weight".to_string()));
    assert!(keys.contains(&"clip.logit_scale".to_string()));
    assert!(keys.contains(&"classifier.3.weight".to_string()));
    assert!(
        keys.iter()
            .all(|k| k.starts_with("clip.") || k.starts_with("classifier.")),
        "{keys:?}"
    );

    let again = load(out.path(), None, Device::Cpu).unwrap();
    assert_eq!(again.head, Head::Classifier(3));
    assert!(again.report.fresh.is_empty(), "{:?}", again.report.fresh);
    assert!(again.report.unused.is_empty(), "{:?}", again.report.unused);
    assert_eq!(
        again.checkpoint.class_name(),
        Some("CLIPForMultimodalClassification")
    );
    let after = tch::no_grad(|| logits(again.model.forward(&b, false)));
    assert!(max_diff(&before, &after) <= TOLERANCE / 100.0);
}

#[test]
fn the_tiny_preset_builds_a_clip_classifier_for_64_pixel_images() {
    // ids as the preset's BERT tokenizer gives them: [CLS]=2 ... [SEP]=3, [PAD]=0
    let config = modalbench::models::clip::tiny_config(500, 3, 0);
    let limits = (modalbench::models::clip::SPEC.text_limits)(&config).unwrap();
    assert_eq!(
        (limits.pad_token_id, limits.max_length, limits.vocab_size),
        (0, 64, 500)
    );
    let vs = tch::nn::VarStore::new(Device::Cpu);
    let model = modalbench::models::clip::SPEC
        .build(&config, Head::Classifier(2), vs.root())
        .unwrap();
    let input_ids = Tensor::from_slice(&[2i64, 40, 41, 3, 0, 2, 42, 43, 44, 3]).view([2, 5]);
    let b = Batch {
        attention_mask: input_ids.ne(0).to_kind(Kind::Int64),
        token_type_ids: input_ids.zeros_like(),
        pixel_values: Some(Tensor::randn([2, 3, 64, 64], tch::kind::FLOAT_CPU)),
        pixel_mask: None,
        input_ids,
    };
    let out: BTreeMap<String, Tensor> = model.forward(&b, true).into_iter().collect();
    assert_eq!(out["logits"].size(), [2, 2]);
    assert_eq!(out["text_embeds"].size(), [2, 64]);
    let pre = modalbench::models::clip::tiny_preprocessor_config();
    assert_eq!(
        pre["crop_size"]["height"],
        config["vision_config"]["image_size"]
    );
}
