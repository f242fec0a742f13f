//! Feeding images to training: decoded and resized images are cached (in memory within a run,
//! on disk across runs, keyed by the dataset and the preprocessing that made them), and the
//! batches of an epoch are prepared on a background thread, a few ahead of the training step.

use super::image::{ImageProcessor, Pixels};
use anyhow::{Context, Result};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, sync_channel};
use std::sync::{Arc, Mutex};

/// A resized image in 8-bit RGB: (height, width, pixels).
pub type Rgb = Arc<(u32, u32, Vec<u8>)>;

/// Caches resized images: in memory up to a byte budget, and as files under `dir` (one per
/// image; named by a hash of the preprocessing, the path, the file size and its modification
/// time, so a changed image or preprocessing never reads a stale entry).
pub struct ImageCache {
    dir: Option<PathBuf>,
    memory: Mutex<(HashMap<PathBuf, Rgb>, usize)>,
    budget: usize,
}

/// Bytes of resized images kept in memory by default.
pub const MEMORY_BUDGET: usize = 1 << 30;

fn fnv(bytes: &[u8], seed: u64) -> u64 {
    bytes.iter().fold(seed ^ 0xcbf29ce484222325, |h, b| {
        (h ^ *b as u64).wrapping_mul(0x100000001b3)
    })
}

impl ImageCache {
    /// A cache with files under `dir` (none if `None`) and `budget` bytes in memory.
    pub fn new(dir: Option<PathBuf>, budget: usize) -> ImageCache {
        ImageCache {
            dir,
            memory: Mutex::new((HashMap::new(), 0)),
            budget,
        }
    }

    fn file_for(&self, proc: &ImageProcessor, path: &Path) -> Option<PathBuf> {
        let dir = self.dir.as_ref()?;
        let meta = std::fs::metadata(path).ok()?;
        let mtime = meta
            .modified()
            .ok()?
            .duration_since(std::time::UNIX_EPOCH)
            .ok()?
            .as_nanos();
        let key = format!(
            "{}|{}|{}|{mtime}",
            proc.cache_key(),
            path.display(),
            meta.len()
        );
        Some(dir.join(format!("{:016x}.rgb", fnv(key.as_bytes(), 0))))
    }

    /// The resized image of `path`: from memory, from disk, or made and stored.
    pub fn get(&self, proc: &ImageProcessor, path: &Path) -> Result<Rgb> {
        if let Some(hit) = self
            .memory
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .0
            .get(path)
        {
            return Ok(hit.clone());
        }
        let file = self.file_for(proc, path);
        let rgb = match file.as_ref().and_then(|f| read_rgb(f)) {
            Some(rgb) => rgb,
            None => {
                let rgb = proc.load_rgb(path)?;
                if let Some(f) = &file {
                    // a cache that cannot be written is only slower
                    let _ = write_rgb(f, &rgb);
                }
                rgb
            }
        };
        let rgb: Rgb = Arc::new(rgb);
        let mut mem = self.memory.lock().unwrap_or_else(|p| p.into_inner());
        if mem.1 + rgb.2.len() <= self.budget {
            mem.1 += rgb.2.len();
            mem.0.insert(path.to_path_buf(), rgb.clone());
        }
        Ok(rgb)
    }

    /// Processes a batch: each image from the cache (in parallel), then normalised and padded.
    pub fn process(&self, proc: &ImageProcessor, paths: &[PathBuf]) -> Result<Pixels> {
        use rayon::prelude::*;
        let images: Vec<Rgb> = paths
            .par_iter()
            .map(|p| self.get(proc, p))
            .collect::<Result<_>>()?;
        proc.assemble(&images.iter().map(|i| i.as_ref()).collect::<Vec<_>>())
    }
}

fn read_rgb(file: &Path) -> Option<(u32, u32, Vec<u8>)> {
    let bytes = std::fs::read(file).ok()?;
    let (head, pixels) = bytes.split_at_checked(8)?;
    let h = u32::from_le_bytes(head[..4].try_into().ok()?);
    let w = u32::from_le_bytes(head[4..].try_into().ok()?);
    (pixels.len() == (h * w * 3) as usize).then(|| (h, w, pixels.to_vec()))
}

fn write_rgb(file: &Path, (h, w, pixels): &(u32, u32, Vec<u8>)) -> Result<()> {
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir)?;
    }
    // written under a temporary name and renamed: a reader never sees half a file
    let tmp = file.with_extension(format!("tmp{}", std::process::id()));
    let mut bytes = Vec::with_capacity(8 + pixels.len());
    bytes.extend_from_slice(&h.to_le_bytes());
    bytes.extend_from_slice(&w.to_le_bytes());
    bytes.extend_from_slice(pixels);
    std::fs::write(&tmp, bytes).context("writing the image cache")?;
    std::fs::rename(&tmp, file).context("writing the image cache")?;
    Ok(())
}

/// Prepares the image part of an epoch's batches on a background thread, `depth` batches ahead
/// of the consumer.
pub struct Prefetch {
    rx: Receiver<Result<Pixels>>,
}

impl Prefetch {
    /// Starts preparing `batches` (image paths per batch, in training order).
    pub fn start(
        cache: Arc<ImageCache>,
        proc: ImageProcessor,
        batches: Vec<Vec<PathBuf>>,
        depth: usize,
    ) -> Prefetch {
        let (tx, rx) = sync_channel(depth.max(1));
        std::thread::spawn(move || {
            for paths in batches {
                let pixels = cache.process(&proc, &paths);
                let failed = pixels.is_err();
                // the consumer stopped early (max_steps): nothing more to do
                if tx.send(pixels).is_err() || failed {
                    return;
                }
            }
        });
        Prefetch { rx }
    }

    /// The next batch's pixels, waiting if they are not ready yet.
    pub fn next(&self) -> Result<Pixels> {
        self.rx.recv().context("the image loader stopped")?
    }
}
