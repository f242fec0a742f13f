//! VQA v2: the official question and annotation files, COCO images, and the answer
//! normalisation checked against a transcription of the official evaluation script.

use super::{ids, report, source, strict_error, write_image};
use crate::helpers::python;
use modalbench::data::formats::vqa::normalize_answer;
use modalbench::data::{Check, Options, Split, Task, load};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

#[test]
fn normalize_answer_matches_the_official_vqa_evaluation_on_tricky_answers() {
    let answers: Vec<String> = [
        "Yes",
        "yes.",
        "end.",
        "3.5",
        "3.5.",
        "No.",
        "1,000",
        "1,000 dollars!",
        "a, b",
        "a,b",
        "red,white",
        "two",
        "Two dogs",
        "the Two",
        "an apple",
        "A",
        "none",
        "zero",
        "ten.",
        "dont",
        "isnt",
        "Dont know",
        "I dont know",
        "its",
        "yall'll",
        "Im",
        "somebody'd",
        "let's go",
        "hes",
        "  padded \t answer\n",
        "black/white",
        "black / white",
        "left-hand",
        "T-shirt",
        "wii (nintendo)",
        "hot dog?",
        "ok!",
        "50%",
        "$5",
        "it's",
        "y'all",
        ".5",
        "5.",
        "..5",
        "a.b",
        "U.S.A.",
        "e.g. this",
        "mr. t",
        "#1",
        "A&W",
        "#",
        "",
        "   ",
        "The",
        "the the",
        "one-two",
        "one two three",
        "(a)",
        "[none]",
        "\"quoted\"",
        "back\\slash",
        "under_score",
        "x+y=z",
        "<tag>",
        "@home",
        "`tick`",
        "semi;colon",
        "braces{}",
        "3,",
        ",3",
        "1, 000",
        "1 ,000",
        "MiXeD CaSe",
        "ÉCOLE",
        "ΣΑΣ",
        "café.",
        "١,٢",
        "٣.",
        "x٣,٤y",
        "a\u{1c}b",
        "a\u{a0}b",
        "a\u{3000}b",
        "x\u{1f}",
        "1.5,2.5",
        format!("a{}", ".".repeat(40)).as_str(),
        format!("{}b", "x. ".repeat(40)).as_str(),
        "whats that?",
        "Whats",
        "wont",
        "cant.",
        "oclock",
        "o'clock",
        "twas",
        "ow's'at",
        "I'm",
        "Ive",
        "ive",
    ]
    .map(String::from)
    .to_vec();

    // the expected values are made at test time by tests/reference/vqa_normalize_reference.py,
    // a line-by-line transcription of vqaEval.py's processPunctuation and processDigitArticle
    let path = std::env::temp_dir().join(format!(
        "modalbench-vqa-answers-{}.json",
        std::process::id()
    ));
    std::fs::write(&path, serde_json::to_vec(&answers).unwrap()).unwrap();
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/reference/vqa_normalize_reference.py");
    let output = Command::new(python()).arg(&script).arg(&path).output();
    let _ = std::fs::remove_file(&path);
    let output = output.unwrap();
    assert!(
        output.status.success(),
        "{} failed: {}",
        script.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    let reference: Value = serde_json::from_slice(&output.stdout).unwrap();
    let expected = reference["normalized"].as_array().unwrap();
    assert_eq!(expected.len(), answers.len());
    let mut differ = Vec::new();
    for (a, want) in answers.iter().zip(expected) {
        if normalize_answer(a) != want.as_str().unwrap() {
            differ.push(format!(
                "{a:?}: rust {:?}, python {want}",
                normalize_answer(a)
            ));
        }
    }
    // every entry of the contraction table, as the script normalises it
    for pair in reference["contractions"].as_array().unwrap() {
        let (key, want) = (pair[0].as_str().unwrap(), pair[1].as_str().unwrap());
        if normalize_answer(key) != want {
            differ.push(format!(
                "{key:?}: rust {:?}, python {want:?}",
                normalize_answer(key)
            ));
        }
    }
    assert!(differ.is_empty(), "differences:\n{}", differ.join("\n"));
    assert_eq!(reference["contractions"].as_array().unwrap().len(), 120);
    // a few outputs by hand, so a broken reference cannot pass unnoticed
    assert_eq!(normalize_answer("Two dogs"), "2 dogs");
    assert_eq!(normalize_answer("I dont know"), "i don't know");
    assert_eq!(normalize_answer("1,000"), "1000");
    assert_eq!(normalize_answer("3.5"), "3.5");
    assert_eq!(normalize_answer("end."), "end");
}

fn question(qid: u64, image: u64, text: &str) -> Value {
    json!({"image_id": image, "question": text, "question_id": qid})
}

/// An annotation with one answer per annotator, as `(answer, how many annotators)`.
fn annotation(qid: u64, image: u64, answers: &[(&str, usize)]) -> Value {
    let answers: Vec<Value> = answers
        .iter()
        .flat_map(|&(a, n)| std::iter::repeat_n(a, n))
        .enumerate()
        .map(|(i, a)| json!({"answer": a, "answer_confidence": "yes", "answer_id": i + 1}))
        .collect();
    json!({"question_type": "what", "multiple_choice_answer": answers[0]["answer"],
           "answers": answers, "image_id": image, "answer_type": "other", "question_id": qid})
}

fn write_json(path: &Path, key: &str, subtype: &str, entries: Vec<Value>) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let doc = json!({"info": {"description": "test"}, "license": {"name": "CC BY 4.0"},
                     "data_subtype": subtype, "data_type": "mscoco", key: entries});
    std::fs::write(path, serde_json::to_vec(&doc).unwrap()).unwrap();
}

fn write_split(root: &Path, split: &str, questions: Vec<Value>, annotations: Option<Vec<Value>>) {
    let q = root.join(format!("v2_OpenEnded_mscoco_{split}_questions.json"));
    write_json(&q, "questions", split, questions);
    if let Some(entries) = annotations {
        let a = root.join(format!("v2_mscoco_{split}_annotations.json"));
        write_json(&a, "annotations", split, entries);
    }
}

/// train2014: answers given yes 12, green 4, no 4, red 4, 2 3 ("two" normalises to "2"),
/// blue 3 ("the blue") times: with top_k 3 the classes are yes, then green and no (the
/// alphabetically first of the answers given four times).
pub fn write_vqa(root: &Path) {
    write_split(
        root,
        "train2014",
        vec![
            question(1, 9, "Is it sunny?"),
            question(2, 9, "How many?"),
            question(3, 25, "What color?"),
        ],
        Some(vec![
            annotation(1, 9, &[("yes", 10)]),
            annotation(
                2,
                9,
                &[("two", 2), ("2", 1), ("No", 4), ("yes", 2), ("red.", 1)],
            ),
            annotation(3, 25, &[("the blue", 3), ("red", 3), ("green", 4)]),
        ]),
    );
    write_split(
        root,
        "val2014",
        vec![
            question(10, 42, "What is it?"),
            question(11, 42, "Which?"),
            question(12, 42, "Tie?"),
        ],
        Some(vec![
            annotation(10, 42, &[("red", 10)]),
            annotation(11, 42, &[("yes", 1), ("no", 1), ("green", 3), ("maybe", 5)]),
            annotation(12, 42, &[("no", 3), ("green", 3), ("x", 4)]),
        ]),
    );
    write_split(root, "test2015", vec![question(20, 7, "Why?")], None);
    write_image(&root.join("train2014/COCO_train2014_000000000009.jpg"));
    write_image(&root.join("train2014/COCO_train2014_000000000025.jpg"));
    write_image(&root.join("COCO_val2014_000000000042.jpg"));
    write_image(&root.join("test2015/COCO_test2015_000000000007.jpg"));
}

#[test]
fn vqa_v2_scores_answers_by_annotator_count_over_the_top_k_train_answers() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write_vqa(root);
    let mut src = modalbench::data::detect(root).unwrap().unwrap();
    assert_eq!(src.format, "vqa_v2");
    src.options.top_k = Some(3);
    let ds = load("vqa", &src, Check::Strict).unwrap();
    assert_eq!(ds.task, Task::SoftLabels);
    assert_eq!(ds.label_names, ["yes", "green", "no"]);

    assert_eq!(ids(&ds.train), ["1", "2", "3"]);
    assert_eq!(ds.train[0].text, "Is it sunny?");
    assert_eq!(ds.train[0].soft_labels, [(0, 1.0)]);
    assert_eq!(ds.train[0].label, Some(0));
    // yes by 2 annotators, no by 4; "2" and "red" are not classes
    assert_eq!(ds.train[1].soft_labels, [(0, 0.6), (2, 1.0)]);
    assert_eq!(ds.train[1].label, Some(2));
    assert_eq!(
        ds.train[1].answers,
        ["2", "2", "2", "no", "no", "no", "no", "yes", "yes", "red"]
    );
    assert_eq!(ds.train[2].soft_labels, [(1, 1.0)]);
    assert_eq!(
        ds.train[0].image.as_deref(),
        Some(Path::new("train2014/COCO_train2014_000000000009.jpg"))
    );

    // no answer among the classes: kept without a label, for VQA accuracy
    assert_eq!(ds.dev[0].label, None);
    assert!(ds.dev[0].soft_labels.is_empty());
    assert_eq!(ds.dev[0].answers, vec!["red"; 10]);
    assert_eq!(ds.dev[1].soft_labels, [(0, 0.3), (1, 0.9), (2, 0.3)]);
    assert_eq!(ds.dev[1].label, Some(1));
    // green and no tie at 0.9: the more frequent class (the lower index) wins
    assert_eq!(ds.dev[2].soft_labels, [(1, 0.9), (2, 0.9)]);
    assert_eq!(ds.dev[2].label, Some(1));
    assert_eq!(
        ds.dev[0].image.as_deref(),
        Some(Path::new("COCO_val2014_000000000042.jpg"))
    );

    // test2015 has no annotations: prediction-only
    assert_eq!(ids(&ds.test), ["20"]);
    assert_eq!((ds.test[0].label, ds.test[0].answers.len()), (None, 0));
    assert!(ds.image_path(&ds.test[0]).unwrap().is_file());
    assert_eq!(
        ds.files,
        [
            "v2_OpenEnded_mscoco_train2014_questions.json",
            "v2_OpenEnded_mscoco_val2014_questions.json",
            "v2_OpenEnded_mscoco_test2015_questions.json"
        ]
        .map(String::from)
    );

    // the default keeps every answer given (six here), most frequent first
    src.options.top_k = None;
    let ds = load("vqa", &src, Check::Strict).unwrap();
    assert_eq!(ds.label_names, ["yes", "green", "no", "red", "2", "blue"]);
    assert_eq!(ds.dev[0].soft_labels, [(3, 1.0)]);
}

#[test]
fn vqa_v2_bad_entries_are_reported_naming_file_entry_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write_vqa(root);
    write_split(
        root,
        "val2014",
        vec![
            question(10, 42, "Fine?"),
            json!({"image_id": 42, "question_id": 11}),
            question(12, 43, "No image?"),
            question(13, 42, "No annotation?"),
            json!({"image_id": "42", "question": "Id as text?", "question_id": 14}),
        ],
        Some(vec![
            annotation(10, 42, &[("yes", 10)]),
            annotation(12, 43, &[("yes", 10)]),
            json!({"question_id": 14, "image_id": 42}),
            json!({"question_id": 15, "answers": [{"answer_id": 1}]}),
        ]),
    );
    let src = source("vqa_v2", root, Options::default());
    let e = strict_error(&src);
    for expected in [
        "v2_OpenEnded_mscoco_val2014_questions.json: questions[1]: missing field `question`",
        "v2_OpenEnded_mscoco_val2014_questions.json: questions[4]: field `image_id` must be a non-negative integer, found \"42\"",
        "v2_OpenEnded_mscoco_val2014_questions.json: question_id 13: no annotation in v2_mscoco_val2014_annotations.json",
        "v2_mscoco_val2014_annotations.json: annotations[2]: missing field `answers`",
        "v2_mscoco_val2014_annotations.json: annotations[3]: missing field `answers[0].answer`",
        "COCO_val2014_000000000043.jpg: dev example `12`: image not found",
    ] {
        assert!(e.contains(expected), "expected `{expected}` in:\n{e}");
    }
    let ds = report(&src);
    assert_eq!(ds.problems.len(), 6, "{:?}", ds.problems);
    assert_eq!(ids(&ds.dev), ["10"]);

    std::fs::write(
        root.join("v2_mscoco_val2014_annotations.json"),
        "{\"annotations\": [",
    )
    .unwrap();
    let e = strict_error(&src);
    assert!(
        e.contains("v2_mscoco_val2014_annotations.json: not a VQA annotations file"),
        "{e}"
    );
    assert!(e.contains("EOF while parsing"), "{e}");
}

#[test]
fn vqa_v2_question_files_from_the_options_find_annotations_by_name_or_are_prediction_only() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let (train_q, train_a) = (
        root.join("q/train_questions.json"),
        root.join("q/train_annotations.json"),
    );
    write_json(
        &train_q,
        "questions",
        "train2014",
        vec![question(1, 9, "Q?")],
    );
    write_json(
        &train_a,
        "annotations",
        "train2014",
        vec![annotation(1, 9, &[("yes", 3), ("no", 1)])],
    );
    let dev_q = root.join("q/dev_questions.json");
    write_json(&dev_q, "questions", "val2014", vec![question(2, 9, "R?")]);
    write_image(&root.join("coco/train2014/COCO_train2014_000000000009.jpg"));
    write_image(&root.join("coco/val2014/COCO_val2014_000000000009.jpg"));
    let options = Options {
        images: Some("coco".into()),
        splits: Some(BTreeMap::from([
            (Split::Train, "q/train_questions.json".into()),
            (Split::Dev, "q/dev_questions.json".into()),
        ])),
        ..Default::default()
    };
    let ds = load("vqa", &source("vqa_v2", root, options), Check::Strict).unwrap();
    assert_eq!(ds.label_names, ["yes", "no"]);
    assert_eq!(ds.train[0].soft_labels, [(0, 0.9), (1, 0.3)]);
    assert_eq!((ds.dev[0].label, ds.dev[0].answers.len()), (None, 0));
    assert!(ds.image_path(&ds.dev[0]).unwrap().is_file());
    assert!(ds.test.is_empty(), "no test2015 questions: no test split");
}
