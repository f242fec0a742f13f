//! News: CSV or JSON-lines, one file per split or one file with a split column.

use super::{ids, report, source, strict_error, write_image, write_lines};
use modalbench::data::{Check, Columns, OneOrMany, Options, Split, load};
use std::collections::BTreeMap;
use std::path::Path;

#[test]
fn news_reads_split_csv_files_joining_headline_abstract_and_caption() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let header = "id,headline,abstract,caption,image_path,category";
    write_lines(
        &root.join("train.csv"),
        &[
            header,
            "n1,Markets rally,\"Stocks rose, led by tech.\",Traders on the floor,img/n1.jpg,business",
            // a quoted field over two lines, and no caption
            "n2,Cup final,\"A late goal",
            "decides it\",,img/n2.jpg,sports",
            // no image: allowed
            "n3,New probe,Launch went well,A rocket,,science",
        ],
    );
    write_lines(
        &root.join("valid.csv"),
        &[
            header,
            "v1,Rates hold,Central bank waits,,img/v1.jpg,business",
        ],
    );
    // the test file comes without its labels
    write_lines(
        &root.join("test.csv"),
        &[
            "id,headline,abstract,caption,image_path",
            "t1,Match report,Two goals,,img/t1.jpg",
        ],
    );
    for id in ["n1", "n2", "v1", "t1"] {
        write_image(&root.join(format!("img/{id}.jpg")));
    }
    let src = modalbench::data::detect(root).unwrap().unwrap();
    assert_eq!(src.format, "news");
    let ds = load("news", &src, Check::Strict).unwrap();
    assert_eq!(ds.label_names, ["business", "science", "sports"]);
    assert_eq!(ids(&ds.train), ["n1", "n2", "n3"]);
    assert_eq!(
        ds.train.iter().map(|e| e.label).collect::<Vec<_>>(),
        [Some(0), Some(2), Some(1)]
    );
    assert_eq!(
        ds.train[0].text,
        "Markets rally Stocks rose, led by tech. Traders on the floor"
    );
    assert_eq!(ds.train[1].text, "Cup final A late goal\ndecides it");
    assert_eq!(ds.train[0].image.as_deref(), Some(Path::new("img/n1.jpg")));
    assert_eq!(ds.train[2].image, None);
    assert_eq!((ds.dev[0].id.as_str(), ds.dev[0].label), ("v1", Some(0)));
    assert_eq!((ds.test[0].id.as_str(), ds.test[0].label), ("t1", None));
    assert_eq!(
        ds.files,
        ["train.csv", "valid.csv", "test.csv"].map(String::from)
    );
}

#[test]
fn news_reads_one_jsonl_file_with_a_split_column_and_the_columns_the_options_name() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write_image(&root.join("p/1.png"));
    write_lines(
        &root.join("data.jsonl"),
        &[
            r#"{"title": "A", "body": "alpha", "photo": "p/1.png", "topic": "world", "part": "train"}"#,
            r#"{"title": "B", "body": "beta", "topic": "tech", "part": "train"}"#,
            r#"{"title": "C", "body": "gamma", "photo": null, "topic": "world", "part": "validation"}"#,
            r#"{"title": "D", "body": "delta", "photo": "p/1.png", "topic": "sport", "part": "test"}"#,
            r#"{"title": "E", "body": "eps", "topic": "tech", "part": "test"}"#,
            r#"{"title": "F", "body": "zeta", "topic": "world", "part": "holdout"}"#,
        ],
    );
    let options = Options {
        columns: Some(Columns {
            text: Some(OneOrMany::Many(vec!["title".into(), "body".into()])),
            image: Some("photo".into()),
            label: Some("topic".into()),
            split: Some("part".into()),
            id: None,
        }),
        label_names: Some(vec!["world".into(), "tech".into(), "science".into()]),
        ..Default::default()
    };
    let src = source("news", root, options);
    let e = strict_error(&src);
    for expected in [
        "data.jsonl line 4: field `topic`: label `sport` is not one of label_names (world, tech, science)",
        "data.jsonl line 6: field `part` must be train, dev (or valid, validation, val) or test, found `holdout`",
    ] {
        assert!(e.contains(expected), "expected `{expected}` in:\n{e}");
    }
    let ds = report(&src);
    assert_eq!(ds.problems.len(), 2, "{:?}", ds.problems);
    assert_eq!(ds.label_names, ["world", "tech", "science"]);
    // no id column: the row number is the id
    assert_eq!(
        (ids(&ds.train), ids(&ds.dev), ids(&ds.test)),
        (vec!["1", "2"], vec!["3"], vec!["5"])
    );
    assert_eq!(ds.train[0].text, "A alpha");
    assert_eq!(ds.train[0].image.as_deref(), Some(Path::new("p/1.png")));
    assert_eq!(
        (ds.train[1].image.as_ref(), ds.dev[0].image.as_ref()),
        (None, None)
    );
    assert_eq!(ds.test[0].label, Some(1));
    assert_eq!(ds.files, ["data.jsonl"; 3].map(String::from));
}

#[test]
fn news_bad_rows_are_reported_with_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write_image(&root.join("img/1.png"));
    write_lines(
        &root.join("train.csv"),
        &[
            "id,text,image,label",
            "1,fine,img/1.png,a",
            "2,no label,img/1.png,",
            "3,,img/1.png,b",
            "4,short row",
            "5,gone,img/missing.png,b",
            "6,ok,,b",
        ],
    );
    write_lines(
        &root.join("dev.csv"),
        &["id,text,image,label", "d1,x,,a", "d2,y,,zzz"],
    );
    write_lines(
        &root.join("test.csv"),
        &["id,text,label", "t1,z,a", "t2,w,"],
    );
    let src = source("news", root, Options::default());
    let e = strict_error(&src);
    for expected in [
        "train.csv line 3: missing field `label`",
        "train.csv line 4: empty text (field `text`)",
        "train.csv line 5: missing field `label`",
        "img/missing.png: train example `5`: image not found",
        "dev.csv line 3: field `label`: label `zzz` does not occur in the train split",
        "test.csv line 3: missing field `label`",
    ] {
        assert!(e.contains(expected), "expected `{expected}` in:\n{e}");
    }
    let ds = report(&src);
    assert_eq!(ds.problems.len(), 6, "{:?}", ds.problems);
    assert_eq!(ds.label_names, ["a", "b"]);
    assert_eq!(
        (ids(&ds.train), ids(&ds.dev), ids(&ds.test)),
        (vec!["1", "6"], vec!["d1"], vec!["t1"])
    );

    let body = Options {
        columns: Some(Columns {
            text: Some(OneOrMany::One("body".into())),
            ..Default::default()
        }),
        ..Default::default()
    };
    let e = strict_error(&source("news", root, body));
    assert!(
        e.contains("train.csv: no text column `body` (columns: id, text, image, label)"),
        "{e}"
    );

    let elsewhere = Options {
        splits: Some(BTreeMap::from([(Split::Dev, "nope.csv".into())])),
        ..Default::default()
    };
    let e = strict_error(&source("news", root, elsewhere));
    assert!(e.contains("opening nope.csv"), "{e}");

    write_lines(&root.join("train.csv"), &["id,headline", "1,x"]);
    let e = strict_error(&source("news", root, Options::default()));
    assert!(
        e.contains("train.csv: no label column `label` (nor `category`) (columns: id, headline)"),
        "{e}"
    );
}

#[test]
fn news_is_recognised_by_a_train_file_with_a_text_and_a_label_column() {
    let detect = |name: &str, lines: &[&str]| {
        let dir = tempfile::tempdir().unwrap();
        write_lines(&dir.path().join(name), lines);
        modalbench::data::formats::detect(dir.path())
    };
    assert_eq!(
        detect("train.csv", &["headline,category", "x,y"]),
        Some("news")
    );
    assert_eq!(
        detect("train.jsonl", &["", r#"{"text": "x", "label": "y"}"#]),
        Some("news")
    );
    assert_eq!(detect("train.csv", &["title,category", "x,y"]), None);
    assert_eq!(detect("train.csv", &["text,score", "x,1"]), None);
    assert_eq!(detect("data.csv", &["text,label,split", "x,y,train"]), None);
}
