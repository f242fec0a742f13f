//! The real pretrained MiniLM-L6 fine-tuned through the API, its metrics in the API and on
//! the leaderboard page.

use crate::helpers::{TestApp, minilm_dir};
use axum::http::StatusCode;
use modalbench::store::runs::RunStatus;
use serde_json::json;

#[tokio::test]
async fn minilm_fine_tunes_through_the_api_and_shows_on_the_leaderboard() {
    let app = TestApp::with_models(&[("minilm-l6", &minilm_dir())]).await;
    let pos = [
        "a wonderful, moving film",
        "great acting and a clever plot",
        "i loved every minute",
        "superb and delightful",
    ];
    let neg = [
        "a dull, boring mess",
        "terrible acting and no plot",
        "i hated every minute",
        "awful and tedious",
    ];
    let mut train = Vec::new();
    for i in 0..12 {
        train.push((pos[i % 4], 1));
        train.push((neg[i % 4], 0));
    }
    let dev: Vec<(&str, u32)> = pos
        .iter()
        .map(|t| (*t, 1))
        .chain(neg.iter().map(|t| (*t, 0)))
        .collect();
    app.add_dataset("reviews", [&train, &dev, &dev]).await;

    let (_, models) = app.get("/api/v1/models").await;
    let minilm = models["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "minilm-l6")
        .unwrap()
        .clone();
    assert_eq!(minilm["architecture"], "bert");
    assert_eq!(
        minilm["num_parameters"], 22_713_216,
        "MiniLM-L6-H384: 22.7M parameters"
    );

    let id = app
        .submit(
            json!({"model": "minilm-l6", "dataset": "reviews", "max_steps": 6, "batch_size": 8,
                       "learning_rate": 5e-5, "max_length": 32}),
        )
        .await;
    let run = app.run_to_end(id, 300).await;
    assert_eq!(run.status, RunStatus::Succeeded, "{:?}", run.error);

    let (status, body) = app.get(&format!("/api/v1/runs/{id}")).await;
    assert_eq!(status, StatusCode::OK);
    let summary = &body["summary"];
    let accuracy = summary["accuracy"].as_f64().unwrap();
    assert_eq!(summary["steps"], 6);
    // the pretrained encoder separates these reviews after six steps with a fresh head: with
    // seed 0 the test split is ranked perfectly and at least 6 of its 8 reviews are right
    // (chance: 0.5 accuracy, 0.5 AUROC, and ln 2 = 0.693 loss for a model that cannot tell)
    assert!(accuracy >= 0.75, "accuracy {accuracy} of {summary}");
    let auroc = summary["auroc"].as_f64().unwrap();
    assert!(auroc >= 0.95, "AUROC {auroc} of {summary}");
    let loss = summary["loss"].as_f64().unwrap();
    assert!(
        loss < 2f64.ln(),
        "test loss {loss} is no better than chance"
    );
    // the classifier head is new, the encoder pretrained: the run's own log says so
    let (_, logs) = app.get(&format!("/api/v1/runs/{id}/logs")).await;
    assert!(
        logs.to_string()
            .contains("newly initialised: classifier.bias, classifier.weight"),
        "{logs}"
    );
    let (_, metrics) = app.get(&format!("/api/v1/runs/{id}/metrics")).await;
    let train_loss = metrics["series"]["train/loss"].as_array().unwrap();
    assert!(!train_loss.is_empty());
    // 24 examples in batches of 8: 3 steps an epoch, so 6 steps are two epochs
    assert_eq!(
        metrics["series"]["eval/accuracy"].as_array().unwrap().len(),
        2
    );

    let (_, board) = app
        .get("/api/v1/leaderboard?dataset=reviews&metric=accuracy")
        .await;
    assert_eq!(board["boards"][0]["rows"][0]["model"], "minilm-l6");
    assert_eq!(board["boards"][0]["rows"][0]["run_id"], id);
    assert_eq!(
        board["boards"][0]["rows"][0]["accuracy"]["mean"].as_f64(),
        Some(accuracy)
    );

    let (status, html) = app.page("/leaderboard?metric=accuracy").await;
    assert_eq!(status, StatusCode::OK);
    let section = html
        .split(r#"data-dataset="reviews""#)
        .nth(1)
        .expect("a board for reviews");
    let section = section.split("</section>").next().unwrap();
    assert!(
        section.contains(r#"<td class="model">minilm-l6 <span class="modality">text</span></td>"#),
        "{section}"
    );
    assert!(
        section.contains(&format!("<b>{accuracy:.3}</b>")),
        "{section}"
    );
    assert!(section.contains(&format!(r#"<a href="/runs/{id}">"#)));
}

/// Fine-tunes a fixture checkpoint through the API on a small dataset with `labels` classes.
async fn fine_tune_fixture(case: &str, labels: u32) -> (TestApp, i64) {
    let ckpt = crate::parity::text_fixtures().join(case).join("checkpoint");
    let app = TestApp::with_models(&[("under-test", &ckpt)]).await;
    let words = [
        "the market fell",
        "a late goal",
        "the horse rides",
        "Él niño comió",
        "the striker scored",
    ];
    let rows: Vec<(&str, u32)> = (0..20)
        .map(|i| (words[i % words.len()], i as u32 % labels))
        .collect();
    app.add_dataset("small", [&rows, &rows[..8], &rows[..8]])
        .await;
    let id = app
        .submit(json!({"model": "under-test", "dataset": "small", "max_steps": 4, "batch_size": 4, "learning_rate": 1e-3}))
        .await;
    let run = app.run_to_end(id, 120).await;
    assert_eq!(run.status, RunStatus::Succeeded, "{:?}", run.error);
    (app, id)
}

#[tokio::test]
async fn a_roberta_checkpoint_with_vocabulary_files_fine_tunes_with_a_new_head_for_its_labels() {
    let (app, id) = fine_tune_fixture("roberta_cls2_h44_l3", 3).await;
    let (_, logs) = app.get(&format!("/api/v1/runs/{id}/logs")).await;
    // the saved head has 2 labels, the dataset 3: only the output projection is replaced
    assert!(
        logs.to_string()
            .contains("newly initialised: classifier.out_proj.bias, classifier.out_proj.weight"),
        "{logs}"
    );
    let saved = app.state.settings.run_dir(id).join("checkpoint/best");
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(saved.join("config.json")).unwrap()).unwrap();
    assert_eq!(
        config["architectures"][0],
        "RobertaForSequenceClassification"
    );
    assert!(
        saved.join("vocab.json").is_file() && saved.join("merges.txt").is_file(),
        "tokenizer files travel with it"
    );
}

#[tokio::test]
async fn a_cased_bert_checkpoint_without_tokenizer_json_keeps_its_saved_head() {
    let (app, id) = fine_tune_fixture("bert_cls5_h48_l3", 5).await;
    let (_, logs) = app.get(&format!("/api/v1/runs/{id}/logs")).await;
    assert!(
        !logs.to_string().contains("newly initialised"),
        "the 5-label head is reused: {logs}"
    );
}

#[tokio::test]
async fn the_fusion_presets_put_an_image_encoder_beside_the_real_minilm_and_train_on_images() {
    let app = TestApp::with_models(&[("minilm-l6", &minilm_dir())]).await;
    let (_, models) = app.get("/api/v1/models").await;
    for name in ["fusion-minilm", "fusion-late-minilm"] {
        let m = models["models"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == name)
            .unwrap()
            .clone();
        assert_eq!(m["usable"], true, "{m}");
        assert_eq!(m["modality"], "text+image");
        let id = app
            .submit(json!({"model": name, "dataset": "demo-news", "max_steps": 3, "batch_size": 8, "max_length": 32}))
            .await;
        let run = app.run_to_end(id, 300).await;
        assert_eq!(run.status, RunStatus::Succeeded, "{name}: {:?}", run.error);
        let (_, logs) = app.get(&format!("/api/v1/runs/{id}/logs")).await;
        let fresh = if name == "fusion-minilm" {
            "newly initialised: classifier.0.bias"
        } else {
            "newly initialised: image_classifier.bias"
        };
        assert!(
            logs.to_string().contains(fresh),
            "{name}: only the head is new: {logs}"
        );
        // the text encoder is MiniLM's: the preset's weights equal the real checkpoint's
        let preset = tch::Tensor::read_safetensors(
            app.dir
                .path()
                .join("models")
                .join(name)
                .join("model.safetensors"),
        )
        .unwrap();
        let minilm = tch::Tensor::read_safetensors(minilm_dir().join("model.safetensors")).unwrap();
        let get = |v: &[(String, tch::Tensor)], k: &str| {
            v.iter().find(|(n, _)| n == k).unwrap().1.shallow_clone()
        };
        assert!(
            get(&preset, "text_model.encoder.layer.5.output.dense.weight")
                .equal(&get(&minilm, "encoder.layer.5.output.dense.weight"))
        );
    }
}

#[tokio::test]
async fn a_text_and_image_run_on_a_dataset_without_images_fails_before_training() {
    let app = TestApp::with_models(&[("minilm-l6", &minilm_dir())]).await;
    app.add_dataset(
        "no-pictures",
        [&[("a", 0), ("b", 1)], &[("c", 0)], &[("d", 1)]],
    )
    .await;
    let id = app
        .submit(json!({"model": "fusion-minilm", "dataset": "no-pictures"}))
        .await;
    let run = app.run_to_end(id, 120).await;
    assert_eq!(run.status, RunStatus::Failed);
    let error = run.error.unwrap();
    assert!(
        error.contains("train split: example `1` has no image"),
        "{error}"
    );
}

#[tokio::test]
async fn the_tiny_text_and_image_presets_train_through_the_queue_and_reach_the_leaderboard() {
    let app = TestApp::new().await;
    let (_, models) = app.get("/api/v1/models").await;
    let mut ids = Vec::new();
    for (name, arch) in [
        ("clip-tiny", "clip"),
        ("vilt-tiny", "vilt"),
        ("flava-tiny", "flava"),
    ] {
        let m = models["models"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == name)
            .unwrap()
            .clone();
        assert_eq!(
            (
                m["usable"].as_bool(),
                m["modality"].as_str(),
                m["architecture"].as_str()
            ),
            (Some(true), Some("text+image"), Some(arch)),
            "{m}"
        );
        let id = app
            .submit(json!({"model": name, "dataset": "demo-news", "epochs": 1, "batch_size": 32, "learning_rate": 1e-3, "max_length": 32}))
            .await;
        let run = app.run_to_end(id, 300).await;
        assert_eq!(run.status, RunStatus::Succeeded, "{name}: {:?}", run.error);
        let (_, metrics) = app
            .get(&format!("/api/v1/runs/{id}/metrics?key=eval/accuracy"))
            .await;
        assert_eq!(
            metrics["series"]["eval/accuracy"].as_array().unwrap().len(),
            1,
            "{name}"
        );
        // the fine-tuned checkpoint carries the image preprocessing with it and loads back
        let saved = app.state.settings.run_dir(id).join("checkpoint/best");
        assert!(saved.join("preprocessor_config.json").is_file(), "{name}");
        let reloaded = modalbench::models::load(&saved, None, tch::Device::Cpu).unwrap();
        assert_eq!(
            reloaded.head,
            modalbench::models::Head::Classifier(4),
            "{name}"
        );
        // every text+image run is probed for how much it uses the image, shown on its page
        let probes: Vec<String> = run
            .summary
            .as_ref()
            .unwrap()
            .image_reliance
            .iter()
            .map(|r| r.probe.to_string())
            .collect();
        assert_eq!(
            probes,
            ["images shuffled", "images blank", "text empty"],
            "{name}"
        );
        let (_, page) = app.page(&format!("/runs/{id}")).await;
        assert!(page.contains("How much does it use the image?"), "{name}");
        assert!(page.contains("<td>images shuffled</td>"), "{name}");
        ids.push((name, id));
    }
    let (_, board) = app.get("/api/v1/leaderboard?dataset=demo-news").await;
    let rows = board["boards"][0]["rows"].as_array().unwrap();
    for (name, id) in ids {
        assert!(
            rows.iter().any(|r| r["model"] == name && r["run_id"] == id),
            "{name} on the board: {board}"
        );
    }
}

#[tokio::test]
async fn a_vqa_dataset_trains_with_soft_scores_and_reports_vqa_accuracy() {
    let app = TestApp::new().await;
    let root = app.dir.path().join("data/vqa");
    crate::formats::vqa::write_vqa(&root);
    let (status, body) = app
        .post(
            "/api/v1/datasets",
            json!({"name": "vqa", "path": root, "format": "vqa_v2", "options": {"top_k": 3}}),
        )
        .await;
    assert_eq!(status, axum::http::StatusCode::CREATED, "{body}");
    assert_eq!(body["info"]["task"], "soft_labels");
    for model in ["bert-tiny", "vilt-tiny"] {
        let id = app
            .submit(json!({"model": model, "dataset": "vqa", "max_steps": 2, "batch_size": 2, "learning_rate": 1e-3}))
            .await;
        let run = app.run_to_end(id, 120).await;
        assert_eq!(run.status, RunStatus::Succeeded, "{model}: {:?}", run.error);
        let s = run.summary.unwrap();
        assert_eq!(
            s.split,
            modalbench::data::Split::Dev,
            "{model}: test2015 has no annotations"
        );
        let vqa = s.vqa_accuracy.expect("VQA accuracy in the summary");
        assert!((0.0..=1.0).contains(&vqa));
        let (_, m) = app
            .get(&format!("/api/v1/runs/{id}/metrics?key=eval/vqa_accuracy"))
            .await;
        assert!(
            !m["series"]["eval/vqa_accuracy"]
                .as_array()
                .unwrap()
                .is_empty(),
            "{model}: {m}"
        );
        let (_, p) = app.get(&format!("/api/v1/runs/{id}/predictions")).await;
        assert_eq!(p["predictions"][0]["example_id"], "20");
        assert!(
            p["predictions"][0]["label"].is_null(),
            "prediction-only test question"
        );
    }
}
