//! Dataset pages: the registered datasets, one dataset's splits, label balance, text lengths,
//! image sizes and examples, and thumbnails of example images.

mod cache;
pub use cache::DatasetPageCache;
mod stats;
mod thumbnail;
mod view;

use super::{PageError, PageResult, render, when};
use crate::data::{Source, Split};
use crate::http::AppState;
use crate::http::error::ApiError;
use crate::store::datasets::DatasetRecord;
use askama::Template;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use serde::Deserialize;
use thumbnail::ThumbError;
pub(super) use view::shorten;
use view::{BalanceView, HistogramSvg, ImageView, segment, split_note, thousands};

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/datasets", get(list))
        .route("/datasets/{name}", get(detail))
        .route("/datasets/{name}/thumbnail/{split}/{index}", get(thumbnail))
}

/// Examples per page.
const PER_PAGE: usize = 24;
/// Characters of an example's text shown.
const TEXT_CHARS: usize = 280;

/// A registered dataset as a row of the list.
struct ListRow {
    name: String,
    href: String,
    format: String,
    task: &'static str,
    num_labels: usize,
    label_names: String,
    splits: String,
    problems: usize,
}

#[derive(Template)]
#[template(path = "datasets.html")]
struct ListPage {
    datasets: Vec<ListRow>,
}

async fn list(State(state): State<AppState>) -> PageResult {
    let datasets = state
        .store
        .list_datasets()
        .await?
        .into_iter()
        .map(|d| ListRow {
            href: format!("/datasets/{}", segment(&d.name)),
            task: view::task_name(d.info.task),
            num_labels: d.info.num_labels,
            label_names: shorten(&d.info.label_names.join(", "), 120),
            splits: view::split_summary(&d.info.splits),
            problems: d.info.problem_count,
            format: d.format,
            name: d.name,
        })
        .collect();
    render(&ListPage { datasets })
}

/// The page address of the thumbnail of example `index` of `split` of dataset `name`.
pub(super) fn thumbnail_url(name: &str, split: Split, index: usize) -> String {
    format!("/datasets/{}/thumbnail/{split}/{index}", segment(name))
}

pub(super) async fn find(state: &AppState, name: &str) -> Result<DatasetRecord, PageError> {
    Ok(state
        .store
        .get_dataset(name)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("dataset `{name}`")))?)
}

/// The dataset's files as read now, or a clear error saying why they cannot be.
pub(super) async fn loaded(
    state: &AppState,
    record: &DatasetRecord,
) -> Result<std::sync::Arc<cache::Loaded>, PageError> {
    let root = std::path::PathBuf::from(&record.root);
    if !tokio::fs::try_exists(&root).await.unwrap_or(false) {
        return Err(PageError(ApiError::new(
            StatusCode::GONE,
            "dataset_missing",
            format!(
                "the folder of dataset `{}` is gone; put it back, or register the dataset again \
                 from where it is now",
                record.name
            ),
        )));
    }
    state.dataset_pages.loaded(record).await.map_err(|e| {
        tracing::error!(
            dataset = record.name,
            error = format!("{e:#}"),
            "unreadable dataset"
        );
        PageError(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "dataset_unreadable",
            format!(
                "the files of dataset `{}` cannot be read: {e:#}",
                record.name
            ),
        ))
    })
}

#[derive(Deserialize)]
struct DetailQuery {
    /// Whose examples are listed.
    #[serde(default)]
    split: Option<Split>,
    /// 1-based page of examples.
    #[serde(default)]
    page: Option<usize>,
    /// Whose text lengths are drawn: a split or `all`.
    #[serde(default)]
    lengths: Option<String>,
}

/// One split's row.
struct SplitRow {
    name: Split,
    file: String,
    examples: String,
    labeled: String,
    images: String,
    note: String,
}

/// An example's card.
struct ExampleCard {
    index: usize,
    id: String,
    text: String,
    pair: Option<String>,
    label: String,
    thumb: Option<String>,
}

/// A link to pick: its text, its address, whether it is the current one.
struct Choice {
    text: String,
    href: String,
    current: bool,
}

#[derive(Template)]
#[template(path = "dataset.html")]
struct DetailPage {
    name: String,
    /// The name as a URL path segment.
    seg: String,
    format: String,
    task: &'static str,
    registered: String,
    source: Vec<(&'static str, String)>,
    splits: Vec<SplitRow>,
    balances: Vec<BalanceView>,
    length_choices: Vec<Choice>,
    histogram: Option<HistogramSvg>,
    images: Option<ImageView>,
    problems: Vec<String>,
    problem_count: usize,
    split_choices: Vec<Choice>,
    split: Split,
    page: usize,
    pages: usize,
    first: usize,
    last: usize,
    split_size: usize,
    examples: Vec<ExampleCard>,
    prev: Option<String>,
    next: Option<String>,
}

fn href(name: &str, split: Split, page: usize, lengths: &str) -> String {
    format!(
        "/datasets/{}?split={split}&page={page}&lengths={lengths}",
        segment(name)
    )
}

/// The source's options as `key: JSON value` rows, long values cut.
fn source_rows(s: &Source, image_dir: String) -> Vec<(&'static str, String)> {
    let mut rows = vec![
        ("root", s.root.display().to_string()),
        ("images relative to", image_dir),
    ];
    let options = serde_json::to_value(&s.options).unwrap_or_default();
    for (key, label) in [
        ("columns", "option columns"),
        ("label_names", "option label_names"),
        ("top_k", "option top_k"),
        ("splits", "option splits"),
    ] {
        if let Some(v) = options.get(key).filter(|v| !v.is_null()) {
            rows.push((label, shorten(&v.to_string(), 300)));
        }
    }
    rows
}

async fn detail(
    State(state): State<AppState>,
    Path(name): Path<String>,
    super::PageQuery(q): super::PageQuery<DetailQuery>,
) -> PageResult {
    let record = find(&state, &name).await?;
    let split = q.split.unwrap_or(Split::Train);
    let lengths = q.lengths.unwrap_or_else(|| "all".into());
    // a split's lengths, or all splits' (`all`, the last histogram)
    let lengths_at = match lengths.as_str() {
        "all" => Split::ALL.len(),
        other => other.parse::<Split>().map(Split::index).map_err(|_| {
            ApiError::invalid(
                "lengths",
                "invalid_value",
                format!(
                    "query parameter `lengths`: `{lengths}` is not a split; use all, train, dev or test"
                ),
            )
        })?,
    };
    let l = loaded(&state, &record).await?;
    let ds = &l.ds;
    let examples = ds.split(split);
    let pages = examples.len().div_ceil(PER_PAGE).max(1);
    let page = q.page.unwrap_or(1);
    if page == 0 || page > pages {
        return Err(ApiError::invalid(
            "page",
            "invalid_value",
            format!(
                "query parameter `page`: {page} is not a page of split {split}, which has pages 1 to {pages}"
            ),
        )
        .into());
    }
    let first = (page - 1) * PER_PAGE;
    let cards = examples
        .iter()
        .enumerate()
        .skip(first)
        .take(PER_PAGE)
        .map(|(index, e)| ExampleCard {
            index,
            id: e.id.clone(),
            text: shorten(&e.text, TEXT_CHARS),
            pair: e.text_pair.as_deref().map(|t| shorten(t, TEXT_CHARS)),
            label: match e.label {
                Some(i) => ds
                    .label_names
                    .get(i)
                    .cloned()
                    .unwrap_or_else(|| format!("#{i}")),
                None => "unlabeled".into(),
            },
            thumb: e
                .image
                .as_ref()
                .map(|_| thumbnail_url(&record.name, split, index)),
        })
        .collect::<Vec<_>>();
    let splits = ds
        .splits()
        .into_iter()
        .zip(&ds.files)
        .zip(&l.balances)
        .map(|(((n, ex), file), b)| SplitRow {
            name: n,
            file: file.clone(),
            examples: thousands(ex.len()),
            labeled: thousands(b.labeled()),
            images: thousands(ex.iter().filter(|e| e.image.is_some()).count()),
            note: split_note(ex.len(), b.labeled()),
        })
        .collect();
    let balances = Split::ALL
        .iter()
        .zip(&l.balances)
        .filter(|(_, b)| b.labeled() > 0)
        .map(|(s, b)| view::balance_view(s.as_str(), b, &ds.label_names))
        .collect();
    let choice = |text: &str, href: String, current: bool| Choice {
        text: text.to_string(),
        href,
        current,
    };
    render(&DetailPage {
        format: record.format.clone(),
        task: view::task_name(ds.task),
        registered: when(Some(&record.registered_at)),
        source: source_rows(&ds.source, ds.source.image_dir().display().to_string()),
        splits,
        balances,
        length_choices: Split::ALL
            .map(Split::as_str)
            .iter()
            .chain(&["all"])
            .map(|s| choice(s, href(&name, split, page, s), *s == lengths))
            .collect(),
        histogram: view::histogram_svg(&l.lengths[lengths_at]),
        images: l
            .images
            .as_ref()
            .map(|s| view::image_view(s, cache::IMAGE_SAMPLE)),
        problems: record.info.problems.iter().map(|p| p.to_string()).collect(),
        problem_count: record.info.problem_count,
        split_choices: ds
            .splits()
            .iter()
            .map(|(s, ex)| {
                choice(
                    &format!("{s} ({})", thousands(ex.len())),
                    href(&name, *s, 1, &lengths),
                    *s == split,
                )
            })
            .collect(),
        prev: (page > 1).then(|| href(&name, split, page - 1, &lengths)),
        next: (page < pages).then(|| href(&name, split, page + 1, &lengths)),
        first: first + 1,
        last: first + cards.len(),
        split_size: examples.len(),
        examples: cards,
        split,
        page,
        pages,
        seg: segment(&record.name),
        name: record.name,
    })
}

async fn thumbnail(
    State(state): State<AppState>,
    Path((name, split, index)): Path<(String, String, String)>,
) -> PageResult {
    let record = find(&state, &name).await?;
    let l = loaded(&state, &record).await?;
    let missing = || ApiError::not_found(format!("example {index} of split `{split}` of `{name}`"));
    let examples = match split.parse::<Split>() {
        Ok(s) => l.ds.split(s),
        Err(_) => return Err(missing().into()),
    };
    let e = index
        .parse::<usize>()
        .ok()
        .and_then(|i| examples.get(i))
        .ok_or_else(missing)?;
    let path = l.ds.image_path(e).ok_or_else(|| {
        ApiError::not_found(format!(
            "an image for example `{}` of split `{split}` (it has none)",
            e.id
        ))
    })?;
    let shown = path
        .strip_prefix(&l.ds.source.root)
        .unwrap_or(&path)
        .display()
        .to_string();
    let made =
        tokio::task::spawn_blocking(move || thumbnail::thumbnail(&path, thumbnail::MAX_SIDE))
            .await
            .map_err(anyhow::Error::from)?;
    match made {
        Ok(t) => Ok((
            [
                (
                    header::CONTENT_TYPE,
                    HeaderValue::from_static(t.content_type),
                ),
                (
                    header::CACHE_CONTROL,
                    HeaderValue::from_static("public, max-age=3600"),
                ),
            ],
            t.bytes,
        )
            .into_response()),
        Err(ThumbError::Missing) => {
            Err(ApiError::not_found(format!("image file `{shown}`")).into())
        }
        Err(ThumbError::Unreadable(why)) => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "unreadable_image",
            format!("image file `{shown}` cannot be decoded: {why}"),
        )
        .into()),
        Err(ThumbError::Encode(why)) => {
            Err(anyhow::anyhow!("encoding a thumbnail of {shown}: {why}").into())
        }
    }
}
