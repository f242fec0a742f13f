//! The dataset pages: the list, one dataset's statistics and examples, thumbnails, and the
//! thumbnails loading in a real browser.

use crate::helpers::TestApp;
use crate::pages::{rendered_dom, serve};
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use modalbench::data::demo::NEWS_TOPICS;
use tower::ServiceExt;

/// Status, content type, cache header and raw body of a GET.
pub async fn get_bytes(app: &TestApp, uri: &str) -> (StatusCode, String, Option<String>, Vec<u8>) {
    let res = app
        .router
        .clone()
        .oneshot(Request::get(uri).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let value = |name: header::HeaderName| {
        res.headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
    };
    let (status, content_type, cache) = (
        res.status(),
        value(header::CONTENT_TYPE).unwrap_or_default(),
        value(header::CACHE_CONTROL),
    );
    let body = res.into_body().collect().await.unwrap().to_bytes().to_vec();
    (status, content_type, cache, body)
}

/// The part of `html` from the first `start` to the next `end` after it.
fn section<'a>(html: &'a str, start: &str, end: &str) -> &'a str {
    let from = html
        .find(start)
        .unwrap_or_else(|| panic!("no {start} in:\n{html}"));
    let rest = &html[from..];
    &rest[..rest.find(end).unwrap_or(rest.len())]
}

/// The `data-count` of every histogram bar, in order.
fn bar_counts(html: &str) -> Vec<usize> {
    html.split(r#"<rect class="bin""#)
        .skip(1)
        .map(|r| {
            let v = r.split(r#"data-count=""#).nth(1).unwrap();
            v[..v.find('"').unwrap()].parse().unwrap()
        })
        .collect()
}

/// The `src` of every thumbnail.
fn thumb_srcs(html: &str) -> Vec<String> {
    html.split(r#"<img class="thumb" src=""#)
        .skip(1)
        .map(|r| r[..r.find('"').unwrap()].to_string())
        .collect()
}

/// Registers `pictures`: a wide 400x100 picture and a corrupt one in train, a dev example
/// without an image, and a test split published without labels.
async fn pictures_dataset(app: &TestApp) {
    let root = app.dir.path().join("data/datasets/pictures");
    std::fs::create_dir_all(root.join("img")).unwrap();
    image::RgbImage::from_pixel(400, 100, image::Rgb([200, 40, 40]))
        .save(root.join("img/wide.png"))
        .unwrap();
    std::fs::write(root.join("img/broken.jpg"), b"\xff\xd8\xff\xe0 not a jpeg").unwrap();
    let lines = |rows: &[serde_json::Value]| {
        rows.iter()
            .map(|r| r.to_string() + "\n")
            .collect::<String>()
    };
    use serde_json::json;
    std::fs::write(
        root.join("train.jsonl"),
        lines(&[
            json!({"id": 1, "img": "img/wide.png", "text": "a wide red picture", "label": 0}),
            json!({"id": 2, "img": "img/broken.jpg", "text": "a broken one", "label": 1}),
        ]),
    )
    .unwrap();
    std::fs::write(
        root.join("dev.jsonl"),
        lines(&[json!({"id": 3, "text": "words only", "label": 1})]),
    )
    .unwrap();
    std::fs::write(
        root.join("test.jsonl"),
        lines(&[
            json!({"id": 4, "img": "img/wide.png", "text": "no label here"}),
            json!({"id": 5, "img": "img/wide.png", "text": "nor here"}),
        ]),
    )
    .unwrap();
    modalbench::app::register_datasets(&app.state.store, &app.state.settings.datasets_dir())
        .await
        .unwrap();
}

#[tokio::test]
async fn the_dataset_list_shows_every_registered_dataset_with_its_splits() {
    let app = TestApp::new().await;
    let (status, html) = app.page("/datasets").await;
    assert_eq!(status, StatusCode::OK);
    let news = section(&html, r#"<tr data-dataset="demo-news">"#, "</tr>");
    assert!(
        news.contains(r#"<a href="/datasets/demo-news">demo-news</a>"#),
        "{news}"
    );
    assert!(news.contains("<td>hateful_memes</td>"), "{news}");
    assert!(news.contains("<td>classification</td>"), "{news}");
    assert!(news.contains("world, sports, business, science"), "{news}");
    assert!(news.contains("train 384 · dev 96 · test 160"), "{news}");
    let memes = section(&html, r#"<tr data-dataset="demo-memes">"#, "</tr>");
    assert!(
        memes.contains("train 1,600 · dev 400 · test 400"),
        "{memes}"
    );
    assert!(
        memes.contains(r#"<td class="num">0</td>"#),
        "no problems: {memes}"
    );
}

#[tokio::test]
async fn the_detail_page_shows_split_sizes_label_balance_and_a_length_histogram() {
    let app = TestApp::new().await;
    let (status, html) = app.page("/datasets/demo-news").await;
    assert_eq!(status, StatusCode::OK);
    for (split, n) in [("train", 384), ("dev", 96), ("test", 160)] {
        let row = section(&html, &format!(r#"<tr data-split="{split}">"#), "</tr>");
        assert!(
            row.contains(&format!(r#"<td class="num examples">{n}</td>"#)),
            "{row}"
        );
        assert!(row.contains("<td class=\"note\">labeled</td>"), "{row}");
    }
    // demo-news is balanced by construction: 96 of each of the 4 topics in train
    let train = section(
        &html,
        r#"<section class="balance" data-split="train">"#,
        "</section>",
    );
    for topic in NEWS_TOPICS {
        let row = section(train, &format!(r#"<tr data-label="{topic}">"#), "</tr>");
        assert!(row.contains(&format!("<th>{topic}</th>")), "{row}");
        assert!(row.contains(r#"<td class="num count">96</td>"#), "{row}");
        assert!(row.contains(r#"<span style="width: 25.00%">"#), "{row}");
    }
    // the histogram over all splits holds every example once; per split, that split's
    assert!(html.contains(r#"<svg class="histogram""#));
    assert!(html.contains(">tokens per example</text>") && html.contains(">examples</text>"));
    assert_eq!(bar_counts(&html).iter().sum::<usize>(), 384 + 96 + 160);
    let (_, dev) = app.page("/datasets/demo-news?lengths=dev").await;
    assert_eq!(bar_counts(&dev).iter().sum::<usize>(), 96);
}

#[tokio::test]
async fn the_image_summary_gives_the_demo_picture_sizes() {
    let app = TestApp::new().await;
    let (_, news) = app.page("/datasets/demo-news").await;
    let table = section(&news, r#"<table class="kv images">"#, "</table>");
    assert!(
        table.contains("<th>width min / median / max</th><td>48 / 48 / 48</td>"),
        "{table}"
    );
    assert!(
        table.contains("<th>height min / median / max</th><td>48 / 48 / 48</td>"),
        "{table}"
    );
    assert!(table.contains("<td>png 640</td>"), "{table}");
    assert!(
        table.contains("<th>missing / unreadable</th><td>0 / 0</td>"),
        "{table}"
    );
    assert!(news.contains("All 640 distinct images."));
    // demo-memes has 2,400 pictures: more than the 2,000 read, and the page says so
    let (_, memes) = app.page("/datasets/demo-memes").await;
    let table = section(&memes, r#"<table class="kv images">"#, "</table>");
    assert!(table.contains("<td>64 / 64 / 64</td>"), "{table}");
    assert!(
        table.contains("<th>images read</th><td>2,000</td>"),
        "{table}"
    );
    assert!(memes.contains("A sample of 2,000 of the 2,400 distinct images"));
}

#[tokio::test]
async fn the_first_page_lists_24_examples_with_thumbnails_that_decode() {
    let app = TestApp::new().await;
    let (_, html) = app.page("/datasets/demo-news").await;
    let srcs = thumb_srcs(&html);
    let expected: Vec<String> = (0..24)
        .map(|i| format!("/datasets/demo-news/thumbnail/train/{i}"))
        .collect();
    assert_eq!(srcs, expected);
    assert_eq!(html.matches(r#"<figure class="example""#).count(), 24);
    assert!(html.contains("train: examples 1–24 of 384 · page 1 of 16"));
    let pager = section(&html, r#"<p class="pager">"#, "</p>");
    assert!(
        pager.contains(r#"<a rel="next" href="/datasets/demo-news?split=train&#38;page=2&#38;lengths=all#examples">"#),
        "{pager}"
    );
    assert!(!html.contains(r#"rel="prev""#));
    let (status, content_type, cache, body) = get_bytes(&app, &srcs[5]).await;
    assert_eq!(status, StatusCode::OK);
    assert!(content_type.starts_with("image/"), "{content_type}");
    assert!(cache.is_some_and(|c| c.contains("max-age")));
    let img = image::load_from_memory(&body).unwrap();
    assert_eq!(
        (img.width(), img.height()),
        (48, 48),
        "small images keep their size"
    );
    // the last page of dev: 96 = 4 pages of 24, a previous link and no next one
    let (_, last) = app.page("/datasets/demo-news?split=dev&page=4").await;
    assert_eq!(thumb_srcs(&last).len(), 24);
    assert!(last.contains("/datasets/demo-news/thumbnail/dev/95\""));
    assert!(last.contains(r#"rel="prev""#) && !last.contains(r#"rel="next""#));
}

#[tokio::test]
async fn a_large_image_is_shrunk_to_160_pixels_and_a_broken_one_is_named() {
    let app = TestApp::new().await;
    pictures_dataset(&app).await;
    let (status, content_type, _, body) =
        get_bytes(&app, "/datasets/pictures/thumbnail/train/0").await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    assert_eq!(content_type, "image/jpeg");
    let img = image::load_from_memory(&body).unwrap();
    // 400 x 100 scaled by 160 / 400
    assert_eq!((img.width(), img.height()), (160, 40));
    let (status, body) = app.page("/datasets/pictures/thumbnail/train/1").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        body.contains("image file `img/broken.jpg` cannot be decoded"),
        "{body}"
    );
    // the page itself still renders, the bad file named in the image summary
    let (status, html) = app.page("/datasets/pictures").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        html.contains("<th>missing / unreadable</th><td>0 / 1</td>"),
        "{html}"
    );
    assert!(html.contains("img/broken.jpg: "));
    let test = section(&html, r#"<tr data-split="test">"#, "</tr>");
    assert!(test.contains("prediction-only"), "{test}");
    assert!(
        !html.contains(r#"<section class="balance" data-split="test">"#),
        "no balance for a split without labels"
    );
}

#[tokio::test]
async fn unknown_datasets_splits_indices_and_imageless_examples_have_no_thumbnail() {
    let app = TestApp::new().await;
    pictures_dataset(&app).await;
    let (status, html) = app.page("/datasets/no-such-data").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(
        html.contains("dataset `no-such-data` does not exist"),
        "{html}"
    );
    for uri in [
        "/datasets/no-such-data/thumbnail/train/0",
        "/datasets/demo-news/thumbnail/validation/0",
        "/datasets/demo-news/thumbnail/train/384",
        "/datasets/demo-news/thumbnail/train/x",
        "/datasets/pictures/thumbnail/dev/0",
    ] {
        let (status, body) = app.page(uri).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{uri}: {body}");
    }
    let (_, body) = app.page("/datasets/pictures/thumbnail/dev/0").await;
    assert!(body.contains("(it has none)"), "{body}");
}

#[tokio::test]
async fn a_bad_page_split_or_length_choice_is_rejected_with_422_naming_it() {
    let app = TestApp::new().await;
    for (query, says) in [
        (
            "page=0",
            "0 is not a page of split train, which has pages 1 to 16",
        ),
        (
            "page=17",
            "17 is not a page of split train, which has pages 1 to 16",
        ),
        ("split=test&page=8", "which has pages 1 to 7"),
        ("page=two", "query parameter `page`"),
        (
            "split=validation",
            "`validation` is not a split; use train, dev or test",
        ),
        (
            "lengths=some",
            "`some` is not a split; use all, train, dev or test",
        ),
    ] {
        let (status, html) = app.page(&format!("/datasets/demo-news?{query}")).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{query}");
        assert!(html.contains(says), "{query}: {html}");
        assert!(html.contains("</html>"), "a page's error is a page: {html}");
    }
    let (status, _) = app.page("/datasets/demo-news?split=test&page=7").await;
    assert_eq!(status, StatusCode::OK, "160 test examples make 7 pages");
}

#[tokio::test]
async fn the_thumbnails_of_the_detail_page_load_in_a_real_browser() {
    let app = TestApp::new().await;
    let addr = serve(&app).await;
    let dom = tokio::task::spawn_blocking(move || {
        rendered_dom(&format!(
            "http://{addr}/datasets/demo-memes?split=dev&page=2"
        ))
    })
    .await
    .unwrap();
    // the page's script marks each thumbnail after the load event: naturalWidth > 0 or not
    let imgs: Vec<&str> = dom.split("<img ").skip(1).collect();
    // `class="thumb"`, or `class="thumb broken"` for one that failed
    let thumbs: Vec<&&str> = imgs
        .iter()
        .filter(|i| i.contains("class=\"thumb"))
        .collect();
    assert_eq!(thumbs.len(), 24, "{dom}");
    for t in thumbs {
        assert!(t.contains(r#"data-loaded="true""#), "not loaded: <img {t}");
    }
}

#[tokio::test]
async fn problems_skipped_at_registration_are_listed_with_their_count() {
    let app = TestApp::new().await;
    let root = app.dir.path().join("messy");
    std::fs::create_dir_all(&root).unwrap();
    let good = |id: u32| {
        format!(
            "{{\"id\": {id}, \"text\": \"fine words\", \"label\": {}}}\n",
            id % 2
        )
    };
    std::fs::write(
        root.join("train.jsonl"),
        good(1) + &good(2) + "{not json\n" + "{\"id\": 9, \"label\": 0}\n",
    )
    .unwrap();
    std::fs::write(root.join("dev.jsonl"), good(3)).unwrap();
    std::fs::write(root.join("test.jsonl"), good(4)).unwrap();
    let source = modalbench::data::detect(&root).unwrap().unwrap();
    let info =
        modalbench::data::inspect("messy", &source, modalbench::data::Check::Report).unwrap();
    app.state
        .store
        .upsert_dataset("messy", &info)
        .await
        .unwrap();
    let (_, list) = app.page("/datasets").await;
    let row = section(&list, r#"<tr data-dataset="messy">"#, "</tr>");
    assert!(row.contains(r#"<td class="num warn">2</td>"#), "{row}");
    let (status, html) = app.page("/datasets/messy").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        html.contains("<h2>Registration problems (2)</h2>"),
        "{html}"
    );
    let problems = section(&html, r#"<pre class="error" id="problems">"#, "</pre>");
    assert!(
        problems.contains("train.jsonl line 3: not valid JSON"),
        "{problems}"
    );
    assert!(
        problems.contains("train.jsonl line 4: missing field `text`"),
        "{problems}"
    );
    let train = section(&html, r#"<tr data-split="train">"#, "</tr>");
    assert!(
        train.contains(r#"<td class="num examples">2</td>"#),
        "bad lines skipped: {train}"
    );
}
