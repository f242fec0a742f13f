//! The text models against Hugging Face transformers: `modalbench forward` on small random
//! checkpoints saved by transformers (and the real MiniLM-L6) must give transformers' outputs,
//! and the Rust tokenizers transformers' token ids. The reference files are made by
//! `tests/reference/make_text_fixtures.py` at test time (cached by the script's contents).

use crate::helpers::{TestApp, minilm_dir, run_python};
use modalbench::models::tokenizer::TextEncoder;
use modalbench::models::{Arch, Checkpoint};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use tch::Tensor;

/// Largest absolute difference allowed between Rust and transformers outputs (float32).
pub const TOLERANCE: f64 = 1e-4;

/// The text fixtures folder.
pub fn text_fixtures() -> &'static Path {
    reference_fixtures("make_text_fixtures.py")
}

/// The folder `tests/reference/<script>` fills with reference files (run with the checkpoint
/// dir of the real MiniLM-L6 as second argument), made once per version of the script and
/// kept under `.cache/fixtures/` (or `$MODALBENCH_FIXTURES_DIR`).
pub fn reference_fixtures(script: &str) -> &'static Path {
    static DIRS: Mutex<BTreeMap<String, &'static Path>> = Mutex::new(BTreeMap::new());
    let mut dirs = DIRS.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(dir) = dirs.get(script) {
        return dir;
    }
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/reference")
        .join(script);
    let source = std::fs::read(&path).unwrap();
    // FNV-1a of the script: a changed script makes new fixtures
    let hash = source.iter().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ *b as u64).wrapping_mul(0x100000001b3)
    });
    let root = std::env::var_os("MODALBENCH_FIXTURES_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".cache/fixtures"));
    let stem = script.trim_end_matches(".py");
    let dir = root.join(format!("{stem}-{hash:016x}"));
    if !dir.join("versions.json").is_file() {
        let tmp = root.join(format!("{stem}-{hash:016x}.tmp-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).unwrap();
        run_python(
            script,
            [path.as_os_str(), tmp.as_os_str(), minilm_dir().as_os_str()],
        );
        assert!(
            tmp.join("versions.json").is_file(),
            "{script} must write versions.json last"
        );
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::rename(&tmp, &dir).unwrap();
    }
    let dir: &'static Path = Box::leak(dir.into_boxed_path());
    dirs.insert(script.to_string(), dir);
    dir
}

/// The tensors of a safetensors file.
pub fn read(path: &Path) -> BTreeMap<String, Tensor> {
    Tensor::read_safetensors(path)
        .unwrap()
        .into_iter()
        .collect()
}

/// Runs the real `modalbench forward` command, writing to `output`.
pub fn run_forward(checkpoint: &Path, inputs: &Path, output: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_modalbench"))
        .args(["forward", "--checkpoint"])
        .arg(checkpoint)
        .arg("--inputs")
        .arg(inputs)
        .arg("--output")
        .arg(output)
        .output()
        .unwrap()
}

/// Runs the real `modalbench forward` command; returns its outputs.
pub fn forward(checkpoint: &Path, inputs: &Path) -> BTreeMap<String, Tensor> {
    let out_dir = tempfile::tempdir().unwrap();
    let output = out_dir.path().join("out.safetensors");
    let run = run_forward(checkpoint, inputs, &output);
    assert!(
        run.status.success(),
        "forward failed: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    read(&output)
}

/// Asserts the same output names and shapes, and values within [`TOLERANCE`].
pub fn assert_matches(
    case: &str,
    got: &BTreeMap<String, Tensor>,
    expected: &BTreeMap<String, Tensor>,
) {
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>(),
        "{case}: output names"
    );
    for (name, want) in expected {
        let have = &got[name];
        assert_eq!(have.size(), want.size(), "{case}: {name} shape");
        let diff = f64::try_from((have - want).abs().max()).unwrap();
        assert!(
            diff <= TOLERANCE,
            "{case}: {name} differs from transformers by {diff:e}"
        );
    }
}

#[test]
fn random_bert_and_roberta_checkpoints_match_transformers() {
    let fx = text_fixtures();
    let cases = [
        "bert_base_h36_l1",
        "bert_cls2_h60_l3",
        "bert_cls5_h48_l3",
        "bert_pretraining_legacy",
        "bert_sharded",
        "bert_pytorch_bin",
        "roberta_base_h40_l2",
        "roberta_cls2_h44_l3",
        "roberta_cls5_h30_l1",
    ];
    for case in cases {
        let dir = fx.join(case);
        let got = forward(&dir.join("checkpoint"), &dir.join("inputs.safetensors"));
        assert_matches(case, &got, &read(&dir.join("expected.safetensors")));
    }
}

#[test]
fn the_real_minilm_matches_transformers_on_tokenized_text() {
    let dir = text_fixtures().join("minilm");
    let got = forward(&minilm_dir(), &dir.join("inputs.safetensors"));
    assert_matches("minilm", &got, &read(&dir.join("expected.safetensors")));
}

#[test]
fn tokenization_matches_transformers_for_tokenizer_json_and_vocabulary_files() {
    let spec: Value = serde_json::from_str(
        &std::fs::read_to_string(text_fixtures().join("tokenization.json")).unwrap(),
    )
    .unwrap();
    for entry in spec.as_array().unwrap() {
        let dir = text_fixtures().join(entry["dir"].as_str().unwrap());
        let arch = Arch::from_model_type(entry["model_type"].as_str().unwrap()).unwrap();
        let ckpt = Checkpoint {
            dir: dir.clone(),
            config: json!({}),
            arch,
        };
        let enc =
            TextEncoder::for_checkpoint(&ckpt, entry["max_length"].as_u64().unwrap() as usize)
                .unwrap();
        for case in entry["cases"].as_array().unwrap() {
            let got = &enc
                .encode([(case["text"].as_str().unwrap(), case["pair"].as_str())])
                .unwrap()[0];
            let ids: Vec<i64> = serde_json::from_value(case["ids"].clone()).unwrap();
            let types: Vec<i64> = serde_json::from_value(case["type_ids"].clone()).unwrap();
            assert_eq!(got.ids, ids, "{}: {:?}", dir.display(), case["text"]);
            assert_eq!(
                got.type_ids,
                types,
                "{}: {:?} token types",
                dir.display(),
                case["text"]
            );
        }
    }
}

#[test]
fn forward_rejects_unknown_and_misshapen_inputs_by_name() {
    let case = text_fixtures().join("bert_base_h36_l1");
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("bad.safetensors");
    let ids = Tensor::from_slice(&[5i64, 6, 7, 8]).view([2, 2]);
    for (inputs, message) in [
        (
            vec![
                ("input_ids", ids.shallow_clone()),
                ("pixel", ids.shallow_clone()),
            ],
            "unknown input `pixel`",
        ),
        (
            vec![("attention_mask", ids.shallow_clone())],
            "has no `input_ids`",
        ),
        (
            vec![
                ("input_ids", ids.shallow_clone()),
                ("attention_mask", Tensor::ones([2, 3], tch::kind::INT64_CPU)),
            ],
            "`attention_mask` has shape [2, 3]",
        ),
    ] {
        Tensor::write_safetensors(&inputs, &bad).unwrap();
        let run = run_forward(
            &case.join("checkpoint"),
            &bad,
            &tmp.path().join("out.safetensors"),
        );
        assert!(!run.status.success());
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(stderr.contains(message), "{stderr}");
        assert!(
            !tmp.path().join("out.safetensors").exists(),
            "nothing written"
        );
    }
}

/// Copies a fixture checkpoint so a test can damage it.
fn copy_checkpoint(case: &str, to: &Path) {
    let from = text_fixtures().join(case).join("checkpoint");
    std::fs::create_dir_all(to).unwrap();
    for f in std::fs::read_dir(&from).unwrap() {
        let f = f.unwrap();
        std::fs::copy(f.path(), to.join(f.file_name())).unwrap();
    }
}

#[tokio::test]
async fn the_model_list_shows_every_checkpoint_and_why_a_broken_one_cannot_be_used() {
    let fx = text_fixtures();
    let broken = tempfile::tempdir().unwrap();
    // a config that disagrees with the weights
    let misshapen = broken.path().join("misshapen");
    copy_checkpoint("bert_cls5_h48_l3", &misshapen);
    let mut config: Value =
        serde_json::from_str(&std::fs::read_to_string(misshapen.join("config.json")).unwrap())
            .unwrap();
    config["intermediate_size"] = json!(65);
    std::fs::write(misshapen.join("config.json"), config.to_string()).unwrap();
    // weights missing a tensor
    let holey = broken.path().join("holey");
    copy_checkpoint("roberta_cls2_h44_l3", &holey);
    let kept: Vec<(String, Tensor)> = Tensor::read_safetensors(holey.join("model.safetensors"))
        .unwrap()
        .into_iter()
        .filter(|(k, _)| k != "roberta.encoder.layer.2.output.dense.weight")
        .collect();
    Tensor::write_safetensors(&kept, holey.join("model.safetensors")).unwrap();
    // no tokenizer at all
    let mute = broken.path().join("mute");
    copy_checkpoint("roberta_cls5_h30_l1", &mute);

    let good: Vec<(String, PathBuf)> = ["bert_cls5_h48_l3", "roberta_cls2_h44_l3"]
        .iter()
        .map(|c| (c.replace('_', "-"), fx.join(c).join("checkpoint")))
        .collect();
    let mut links: Vec<(&str, &Path)> = good
        .iter()
        .map(|(n, p)| (n.as_str(), p.as_path()))
        .collect();
    links.extend([
        ("misshapen", misshapen.as_path()),
        ("holey", holey.as_path()),
        ("mute", mute.as_path()),
    ]);
    let app = TestApp::with_models(&links).await;
    let (_, body) = app.get("/api/v1/models").await;
    let models: BTreeMap<String, Value> = body["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["name"].as_str().unwrap().to_string(), m.clone()))
        .collect();
    let params: Value =
        serde_json::from_str(&std::fs::read_to_string(fx.join("num_parameters.json")).unwrap())
            .unwrap();
    for (name, case) in [
        ("bert-cls5-h48-l3", "bert_cls5_h48_l3"),
        ("roberta-cls2-h44-l3", "roberta_cls2_h44_l3"),
    ] {
        let m = &models[name];
        assert_eq!(m["usable"], true, "{m}");
        assert_eq!(m["modality"], "text");
        assert_eq!(
            m["num_parameters"], params[case],
            "{name}: transformers' num_parameters()"
        );
    }
    assert_eq!(models["roberta-cls2-h44-l3"]["architecture"], "roberta");
    assert_eq!(
        models["roberta-cls2-h44-l3"]["max_length"], 40,
        "514-style tables lose padding_idx + 1 positions"
    );
    let problem = |n: &str| models[n]["problem"].as_str().unwrap_or("").to_string();
    assert_eq!(models["misshapen"]["usable"], false);
    assert!(problem("misshapen").contains("tensor `bert.encoder.layer.0.intermediate.dense.bias` has shape [64], the config implies [65]"), "{}", problem("misshapen"));
    assert!(
        problem("holey").contains("has no tensor `roberta.encoder.layer.2.output.dense.weight`"),
        "{}",
        problem("holey")
    );
    assert!(
        problem("mute").contains("neither tokenizer.json nor vocab.json and merges.txt"),
        "{}",
        problem("mute")
    );
    let (status, err) = app
        .post(
            "/api/v1/runs",
            json!({"model": "holey", "dataset": "demo-news"}),
        )
        .await;
    assert_eq!(status, axum::http::StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(err["error"]["code"], "unusable_model");
}
