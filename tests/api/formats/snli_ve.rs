//! SNLI-VE: `snli_ve_{train,dev,test}.jsonl` beside `flickr30k_images/`.

use super::{ids, report, source, strict_error, write_image, write_lines};
use modalbench::data::{Check, Options, Split, load};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A line as SNLI-VE publishes it (the parses left out), with the image id under `key`.
fn line(key: &str, image: &str, pair: &str, hypothesis: &str, label: &str) -> String {
    let caption = image.trim_matches('"').trim_end_matches(".jpg");
    format!(
        r#"{{"annotator_labels": ["{label}"], "captionID": "{caption}.jpg#1", "gold_label": "{label}", "pairID": "{pair}", "sentence1": "A caption of the image.", "sentence2": "{hypothesis}", "{key}": {image}}}"#
    )
}

fn write_split(root: &Path, file: &str, lines: &[String]) {
    let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
    write_lines(&root.join(file), &lines);
}

#[test]
fn snli_ve_reads_hypotheses_gold_labels_and_flickr_images_under_either_id_key() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    for id in ["1000092795", "2677109430", "36979", "4564320256"] {
        write_image(&root.join(format!("flickr30k_images/{id}.jpg")));
    }
    write_split(
        root,
        "snli_ve_train.jsonl",
        &[
            line("Flickr30K_ID", "\"1000092795\"", "p1", "Two men are outside.", "entailment"),
            line("Flikr30kID", "\"2677109430.jpg\"", "p2", "A choir sings.", "neutral"),
            // a numeric id and no pairID: the line number is the id
            r#"{"gold_label": "contradiction", "sentence2": "Nobody is there.", "Flickr30K_ID": 36979}"#.into(),
        ],
    );
    write_split(
        root,
        "snli_ve_dev.jsonl",
        &[line(
            "Flickr30K_ID",
            "\"36979\"",
            "d1",
            "A dog runs.",
            "neutral",
        )],
    );
    write_split(
        root,
        "snli_ve_test.jsonl",
        &[line(
            "Flickr30K_ID",
            "\"4564320256\"",
            "t1",
            "It rains.",
            "contradiction",
        )],
    );

    let detected = modalbench::data::detect(root).unwrap().unwrap();
    assert_eq!(detected.format, "snli_ve");
    let ds = load("ve", &detected, Check::Strict).unwrap();
    assert_eq!(ds.label_names, ["entailment", "neutral", "contradiction"]);
    assert_eq!(ids(&ds.train), ["p1", "p2", "3"]);
    assert_eq!(
        ds.train.iter().map(|e| e.label).collect::<Vec<_>>(),
        [Some(0), Some(1), Some(2)]
    );
    assert_eq!(ds.train[1].text, "A choir sings.");
    assert_eq!(ds.train[1].text_pair, None, "the premise is the image");
    assert_eq!(
        ds.train[1].image.as_deref(),
        Some(Path::new("flickr30k_images/2677109430.jpg"))
    );
    assert_eq!(
        ds.train[2].image.as_deref(),
        Some(Path::new("flickr30k_images/36979.jpg"))
    );
    assert!(ds.image_path(&ds.train[0]).unwrap().is_file());
    assert_eq!((ds.dev[0].label, ds.test[0].label), (Some(1), Some(2)));
    assert_eq!(
        ds.files,
        [
            "snli_ve_train.jsonl",
            "snli_ve_dev.jsonl",
            "snli_ve_test.jsonl"
        ]
        .map(String::from)
    );
}

#[test]
fn snli_ve_bad_lines_and_missing_images_are_reported_with_file_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write_image(&root.join("flickr30k_images/1.jpg"));
    write_split(
        root,
        "snli_ve_train.jsonl",
        &[
            line("Flickr30K_ID", "\"1\"", "ok", "Fine.", "entailment"),
            r#"{"gold_label": "neutral", "pairID": "a", "Flickr30K_ID": "1"}"#.into(),
            line("Flickr30K_ID", "\"1\"", "b", "No consensus.", "-"),
            r#"{"gold_label": "neutral", "pairID": "c", "sentence2": "Where?"}"#.into(),
            "{not json".into(),
            line(
                "Flickr30K_ID",
                "\"2\"",
                "d",
                "The image is gone.",
                "neutral",
            ),
            r#"{"pairID": "e", "sentence2": "Unlabeled.", "Flickr30K_ID": "1"}"#.into(),
        ],
    );
    write_split(
        root,
        "snli_ve_dev.jsonl",
        &[line("Flickr30K_ID", "1", "v", "x", "neutral")],
    );
    write_split(
        root,
        "snli_ve_test.jsonl",
        &[line("Flickr30K_ID", "1", "t", "y", "neutral")],
    );
    let src = source("snli_ve", root, Options::default());
    let e = strict_error(&src);
    for expected in [
        "snli_ve_train.jsonl line 2: missing field `sentence2`",
        "snli_ve_train.jsonl line 3: field `gold_label` must be one of entailment, neutral, contradiction, found \"-\"",
        "snli_ve_train.jsonl line 4: missing field `Flickr30K_ID` (or `Flikr30kID`)",
        "snli_ve_train.jsonl line 5: not valid JSON",
        "snli_ve_train.jsonl line 7: missing field `gold_label`",
        "flickr30k_images/2.jpg: train example `d`: image not found",
    ] {
        assert!(e.contains(expected), "expected `{expected}` in:\n{e}");
    }
    let ds = report(&src);
    assert_eq!(ds.problems.len(), 6, "{:?}", ds.problems);
    assert_eq!(ids(&ds.train), ["ok"]);
}

#[test]
fn an_unlabeled_snli_ve_test_file_is_prediction_only_and_the_options_place_files_and_images() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write_image(&root.join("pictures/7.jpg"));
    write_split(
        root,
        "snli_ve_train.jsonl",
        &[line("Flickr30K_ID", "7", "a", "x", "entailment")],
    );
    write_split(
        root,
        "snli_ve_dev.jsonl",
        &[line("Flickr30K_ID", "7", "b", "y", "neutral")],
    );
    write_split(
        root,
        "hidden/test.jsonl",
        &[r#"{"pairID": "c", "sentence2": "z", "Flickr30K_ID": "7.jpg"}"#.into()],
    );
    let options = Options {
        images: Some(PathBuf::from("pictures")),
        splits: Some(BTreeMap::from([(Split::Test, "hidden/test.jsonl".into())])),
        ..Default::default()
    };
    let ds = load(
        "ve",
        &source("snli_ve", root, options.clone()),
        Check::Strict,
    )
    .unwrap();
    assert_eq!(ds.test[0].label, None);
    assert_eq!(ds.test[0].image.as_deref(), Some(Path::new("7.jpg")));
    assert!(ds.image_path(&ds.test[0]).unwrap().is_file());
    assert_eq!(ds.files[2], "hidden/test.jsonl");

    std::fs::remove_file(root.join("snli_ve_dev.jsonl")).unwrap();
    let e = strict_error(&source("snli_ve", root, options));
    assert!(e.contains("opening snli_ve_dev.jsonl"), "{e}");
}
