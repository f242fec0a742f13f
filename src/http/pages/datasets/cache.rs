//! Datasets read for the pages, with their statistics, kept in memory for the next request.
//!
//! Reading a big dataset and probing its images takes seconds, so each is done once per
//! registration: the [`DatasetPageCache`] (held by the application state) is keyed by the
//! dataset's name and its stored info (a re-registration, which changes the info, reads it
//! again), holds a few datasets, forgets the least recently used, and reads on a blocking
//! thread. Concurrent requests for the same dataset wait for the one read instead of starting
//! their own.

use super::stats::{self, Balance, Histogram, ImageSummary};
use crate::data::{self, Check, Dataset};
use crate::store::datasets::DatasetRecord;
use anyhow::Context;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

/// At most this many images are probed for the size summary.
pub(super) const IMAGE_SAMPLE: usize = 2000;
/// Most bins of a text length histogram.
const MAX_BINS: usize = 24;
/// Datasets kept in memory.
const CAPACITY: usize = 4;

/// A dataset as read now, and what the page shows about it.
pub(in crate::http::pages) struct Loaded {
    pub ds: Dataset,
    /// Per split, in `train`, `dev`, `test` order.
    pub balances: [Balance; 3],
    /// Token counts per split, then over all splits.
    pub lengths: [Histogram; 4],
    /// `None` when no example has an image.
    pub images: Option<ImageSummary>,
}

impl Loaded {
    fn compute(ds: Dataset) -> Loaded {
        let splits = ds.splits();
        let tokens = splits.map(|(_, ex)| ex.iter().map(stats::token_count).collect::<Vec<_>>());
        let all: Vec<usize> = tokens.concat();
        let paths: Vec<_> = splits
            .iter()
            .flat_map(|(_, ex)| ex.iter().filter_map(|e| ds.image_path(e)))
            .collect();
        let images = (!paths.is_empty())
            .then(|| stats::image_summary(&paths, IMAGE_SAMPLE, &ds.source.root));
        Loaded {
            balances: splits.map(|(_, ex)| stats::balance(ex, ds.num_labels())),
            lengths: [
                stats::histogram(&tokens[0], MAX_BINS),
                stats::histogram(&tokens[1], MAX_BINS),
                stats::histogram(&tokens[2], MAX_BINS),
                stats::histogram(&all, MAX_BINS),
            ],
            images,
            ds,
        }
    }
}

type Slot = Arc<Mutex<Option<Arc<Loaded>>>>;

struct Entry {
    key: String,
    used: u64,
    slot: Slot,
}

#[derive(Default)]
struct Cache {
    entries: HashMap<String, Entry>,
    clock: u64,
}

/// The datasets the pages read last, with their statistics; clones share them.
#[derive(Clone, Default)]
pub struct DatasetPageCache {
    cache: Arc<Mutex<Cache>>,
}

impl Cache {
    /// The slot for `name` read with `key`: the cached one, or a fresh one replacing a stale
    /// entry or, when full, the least recently used.
    fn slot(&mut self, name: &str, key: String) -> Slot {
        self.clock += 1;
        let clock = self.clock;
        if let Some(e) = self.entries.get_mut(name)
            && e.key == key
        {
            e.used = clock;
            return e.slot.clone();
        }
        if !self.entries.contains_key(name)
            && self.entries.len() >= CAPACITY
            && let Some(oldest) = self
                .entries
                .iter()
                .min_by_key(|(_, e)| e.used)
                .map(|(n, _)| n.clone())
        {
            self.entries.remove(&oldest);
        }
        let slot = Slot::default();
        self.entries.insert(
            name.to_string(),
            Entry {
                key,
                used: clock,
                slot: slot.clone(),
            },
        );
        slot
    }
}

/// A poisoned lock only means a reader panicked; what it guards is still consistent (an entry
/// or an empty slot), so carry on.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl DatasetPageCache {
    /// The dataset of `record`, read in report mode (bad lines skipped) and summarised the
    /// first time it is asked for.
    pub(super) async fn loaded(&self, record: &DatasetRecord) -> anyhow::Result<Arc<Loaded>> {
        let key = serde_json::to_string(&record.info).context("keying the dataset cache")?;
        let slot = lock(&self.cache).slot(&record.name, key);
        let (name, source) = (record.name.clone(), record.info.source.clone());
        tokio::task::spawn_blocking(move || {
            let mut guard = lock(&slot);
            if let Some(l) = guard.as_ref() {
                return Ok(l.clone());
            }
            let _span = tracing::info_span!("dataset_stats", dataset = name).entered();
            let l = Arc::new(Loaded::compute(data::load(&name, &source, Check::Report)?));
            *guard = Some(l.clone());
            Ok(l)
        })
        .await
        .context("reading a dataset")?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_dataset_is_read_once_per_registration() {
        let dir = tempfile::tempdir().unwrap();
        data::demo::write_demo_news(dir.path(), 7).unwrap();
        let source = data::detect(&dir.path().join(data::demo::DEMO_NEWS))
            .unwrap()
            .unwrap();
        let info = data::inspect("n", &source, Check::Strict).unwrap();
        let cache = DatasetPageCache::default();
        let mut record = DatasetRecord {
            name: "news".into(),
            format: source.format.clone(),
            root: source.root.display().to_string(),
            num_labels: 4,
            info,
            registered_at: String::new(),
        };
        let first = cache.loaded(&record).await.unwrap();
        assert!(Arc::ptr_eq(&first, &cache.loaded(&record).await.unwrap()));
        assert_eq!(first.balances[0].counts, vec![96; 4]);
        assert_eq!(first.lengths[3].total, 384 + 96 + 160);
        record.info.problem_count += 1;
        let again = cache.loaded(&record).await.unwrap();
        assert!(!Arc::ptr_eq(&first, &again), "new info, new read");
    }
}
