//! The pretrained image encoder: torchvision's ImageNet MobileNetV2 (`mobilenet_v2-b0353104.pth`,
//! installed by the setup step), read by modalbench's own `torch.save` reader and run by its
//! own MobileNetV2, must give torchvision's ImageNet predictions on the same pictures
//! (references from `tests/reference/mobilenet_reference.py`); the fusion presets built on it
//! carry those weights, and freezing it keeps them.

use crate::helpers::{TestApp, minilm_dir};
use crate::parity::{read, reference_fixtures};
use modalbench::data::image::ImageProcessor;
use modalbench::models::checkpoint::{read_tensors, read_torch_bin};
use modalbench::models::mobilenet::MobileNetV2;
use modalbench::models::presets::{self, MOBILENET_DIR, MOBILENET_FILE};
use modalbench::store::runs::RunStatus;
use serde_json::json;
use std::path::PathBuf;
use tch::nn::VarStore;
use tch::{Device, Tensor};

fn weights() -> PathBuf {
    let file = minilm_dir()
        .parent()
        .unwrap()
        .join(MOBILENET_DIR)
        .join(MOBILENET_FILE);
    assert!(
        file.is_file(),
        "the MobileNetV2 weights are not at {}; run `make test`, whose set-up installs them",
        file.display()
    );
    file
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    f64::try_from((a - b).abs().max()).unwrap()
}

/// The five classes of highest logit of each row.
fn top5(logits: &Tensor) -> Vec<Vec<i64>> {
    let (_, idx) = logits.topk(5, 1, true, true);
    Vec::<Vec<i64>>::try_from(idx).unwrap()
}

#[test]
fn the_imagenet_mobilenet_v2_predicts_what_torchvision_predicts() {
    let fixtures = reference_fixtures("mobilenet_reference.py");
    let expected = read(&fixtures.join("expected.safetensors"));
    let vs = VarStore::new(Device::Cpu);
    let model = MobileNetV2::new(vs.root(), Some(1000));
    let file = read_torch_bin(&weights()).unwrap();
    let mut vars = vs.variables();
    let mut loaded = 0;
    for (name, t) in &file {
        if name.ends_with("num_batches_tracked") {
            continue;
        }
        let v = vars
            .get_mut(name)
            .unwrap_or_else(|| panic!("{name} of the checkpoint is not a parameter of the model"));
        assert_eq!(v.size(), t.size(), "{name}");
        tch::no_grad(|| v.copy_(t));
        loaded += 1;
    }
    assert_eq!(
        loaded,
        vars.len(),
        "every parameter and statistic comes from the file"
    );
    assert_eq!(
        loaded,
        52 + 52 * 4 + 2,
        "52 convolutions, 52 batch norms (weight, bias, running mean and variance), the classifier"
    );

    // the same pixels as torchvision
    let pixels = &expected["pixel_values"];
    let logits = tch::no_grad(|| model.logits(pixels, false)).unwrap();
    let want = &expected["logits"];
    let diff = max_diff(&logits, want);
    eprintln!("eval logits: max abs diff {diff:e}");
    assert!(diff < 2e-3, "logits differ from torchvision's by {diff}");
    assert_eq!(top5(&logits), top5(want), "the top-5 ImageNet classes");
    // the pictures through modalbench's own preprocessing: same classes
    let proc = ImageProcessor::from_config(&json!({
        "do_resize": true, "size": {"height": 224, "width": 224}, "resample": 2,
        "do_rescale": true, "rescale_factor": 1.0 / 255.0, "do_normalize": true,
        "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]
    }))
    .unwrap();
    let files: Vec<PathBuf> = (0..5)
        .map(|i| fixtures.join("images").join(format!("{i}.png")))
        .collect();
    let ours = proc.process(&files).unwrap().pixel_values;
    let diff = max_diff(&ours, pixels);
    assert!(diff < 1e-4, "pixel values differ from Pillow's by {diff}");
    let logits = tch::no_grad(|| model.logits(&ours, false)).unwrap();
    assert_eq!(top5(&logits), top5(want));
    // train mode: batch norm on the batch's statistics (and its running ones updated)
    let features = tch::no_grad(|| model.features(pixels, true));
    let diff = max_diff(&features, &expected["train_features"]);
    eprintln!("train-mode features: max abs diff {diff:e}");
    assert!(diff < 2e-3, "train-mode features differ by {diff}");
    // frozen, it keeps the running statistics while training, and its cached features are
    // the computed ones, in any order
    let eval = tch::no_grad(|| model.features(pixels, false));
    model.freeze();
    let frozen = tch::no_grad(|| model.features(pixels, true));
    assert_eq!(max_diff(&frozen, &eval), 0.0);
    let order = Tensor::from_slice(&[4i64, 0, 0, 2]);
    let again = tch::no_grad(|| model.features(&pixels.index_select(0, &order), true));
    assert_eq!(max_diff(&again, &eval.index_select(0, &order)), 0.0);
}

#[tokio::test]
async fn the_mobilenet_fusion_presets_carry_the_imagenet_weights_and_freezing_keeps_them() {
    let models = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(minilm_dir(), models.path().join("minilm-l6")).unwrap();
    std::fs::create_dir(models.path().join(MOBILENET_DIR)).unwrap();
    std::os::unix::fs::symlink(
        weights(),
        models.path().join(MOBILENET_DIR).join(MOBILENET_FILE),
    )
    .unwrap();
    let written = presets::ensure_presets(models.path()).unwrap();
    for p in [presets::FUSION_MOBILENET, presets::FUSION_LATE_MOBILENET] {
        assert!(written.contains(&p.to_string()), "{p} written: {written:?}");
    }
    let preset = models.path().join(presets::FUSION_MOBILENET);
    let saved = read_tensors(&preset).unwrap();
    let file = read_torch_bin(&weights()).unwrap();
    let text = read_tensors(&minilm_dir()).unwrap();
    let mut checked = 0;
    for (name, t) in file.iter().filter(|(k, _)| k.starts_with("features.")) {
        if name.ends_with("num_batches_tracked") {
            continue;
        }
        let s = &saved[&format!("vision_model.{name}")];
        assert_eq!(max_diff(s, t), 0.0, "{name}");
        checked += 1;
    }
    assert_eq!(checked, 52 + 52 * 4, "every convolution and batch norm");
    let word = "embeddings.word_embeddings.weight";
    assert_eq!(
        max_diff(&saved[&format!("text_model.{word}")], &text[word]),
        0.0
    );

    // a short run with the encoder frozen: the image weights in its best checkpoint are the
    // ImageNet ones, the text weights moved
    let app = TestApp::with_models(&[(presets::FUSION_MOBILENET, &preset)]).await;
    let id = app
        .submit(
            json!({"model": presets::FUSION_MOBILENET, "dataset": "demo-memes", "max_steps": 2,
                   "batch_size": 4, "freeze_image_encoder": true, "learning_rate": 1e-3}),
        )
        .await;
    let run = app.run_to_end(id, 300).await;
    assert_eq!(run.status, RunStatus::Succeeded, "{:?}", run.error);
    let best = app.state.settings.run_dir(id).join("checkpoint/best");
    let trained = read_tensors(&best).unwrap();
    for (name, t) in &trained {
        if let Some(rest) = name.strip_prefix("vision_model.") {
            assert_eq!(max_diff(t, &saved[name]), 0.0, "frozen {rest} moved");
        }
    }
    let q = "text_model.encoder.layer.0.attention.self.query.weight";
    assert!(
        max_diff(&trained[q], &saved[q]) > 0.0,
        "the text encoder trained"
    );
    let summary = run.summary.unwrap();
    let (trainable, total) = (summary.cost.trainable_parameters, summary.num_parameters);
    assert!(
        total - trainable > 2_000_000,
        "MobileNetV2's 2.2M weights are not trained: {trainable} of {total}"
    );
}

#[tokio::test]
async fn freezing_a_model_without_a_separate_image_encoder_is_refused() {
    let app = TestApp::new().await;
    for model in ["bert-tiny", "vilt-tiny"] {
        let (status, body) = app
            .post(
                "/api/v1/runs",
                json!({"model": model, "dataset": "demo-memes", "freeze_image_encoder": true}),
            )
            .await;
        assert_eq!(status, 422, "{body}");
        assert_eq!(body["error"]["field"], "freeze_image_encoder", "{body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("no separate image encoder"),
            "{body}"
        );
    }
    let (status, body) = app
        .post(
            "/api/v1/runs",
            json!({"model": "clip-tiny", "dataset": "demo-memes", "freeze_image_encoder": true}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
}
