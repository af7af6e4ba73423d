//! The batch loader: seeded shuffling, batching, parallel view making on a dedicated
//! rayon pool, and an optional background thread that builds the next batches while the
//! current one trains.
//!
//! Determinism: the epoch order depends only on `(seed, epoch)` and image `i`'s views
//! only on `(seed, epoch, i)` (each image gets its own RNG), so batches are bit-identical
//! for any thread count and with or without prefetch.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

use rand::seq::SliceRandom;
use rayon::prelude::*;

use super::source::rng_for;
use super::{DataError, Dataset, Image, ViewMaker};

const STREAM_SHUFFLE: u64 = 10;
const STREAM_AUGMENT: u64 = 11;

/// How batches are made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoaderConfig {
    /// Images per batch (at least 1).
    pub batch_size: usize,
    /// Shuffle the order every epoch (seeded by `(seed, epoch)`); otherwise dataset order.
    pub shuffle: bool,
    /// Drop the last, smaller batch of an epoch.
    pub drop_last: bool,
    /// Seed of the shuffles and of every image's augmentation RNG.
    pub seed: u64,
    /// Worker threads of the loader's own rayon pool (at least 1).
    pub threads: usize,
    /// Batches built ahead on a background thread; 0 builds each batch on the calling
    /// thread when it is asked for.
    pub prefetch: usize,
}

impl LoaderConfig {
    /// Defaults for `batch_size`: shuffled, last batch kept, seed 0, one worker per
    /// available core, two batches prefetched.
    pub fn new(batch_size: usize) -> LoaderConfig {
        LoaderConfig {
            batch_size,
            shuffle: true,
            drop_last: false,
            seed: 0,
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            prefetch: 2,
        }
    }
}

/// One view of every image of a batch, stacked.
#[derive(Clone, Debug, PartialEq)]
pub struct ViewBatch {
    /// `B * C * H * W` samples: image-major, then the image's planar CHW samples.
    pub data: Vec<f32>,
    /// `[B, C, H, W]`.
    pub shape: [usize; 4],
}

/// A batch: each view stacked, plus the images' dataset indices and labels.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    /// One entry per view, in the order of [`ViewMaker::view_shapes`].
    pub views: Vec<ViewBatch>,
    /// Dataset index of each image (position `b` of every view is image `indices[b]`).
    pub indices: Vec<usize>,
    /// Label of each image, when the dataset is labelled.
    pub labels: Option<Vec<u32>>,
}

struct Inner {
    dataset: Arc<Dataset>,
    views: Arc<dyn ViewMaker>,
    shapes: Vec<(usize, usize, usize)>,
    cfg: LoaderConfig,
    pool: rayon::ThreadPool,
    /// `(rank, world)`: this process builds images `[r·B/K, (r+1)·B/K)` of every batch.
    shard: (usize, usize),
}

/// Makes the batches of a dataset, epoch after epoch.
#[derive(Clone)]
pub struct Loader {
    inner: Arc<Inner>,
}

fn panic_message(p: Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".into()
    }
}

impl Loader {
    /// A loader over `dataset` making views with `views`.
    pub fn new(
        dataset: Arc<Dataset>,
        views: Arc<dyn ViewMaker>,
        cfg: LoaderConfig,
    ) -> Result<Loader, DataError> {
        if cfg.batch_size == 0 {
            return Err(DataError::Config("batch size must be at least 1".into()));
        }
        if cfg.threads == 0 {
            return Err(DataError::Config(
                "the loader needs at least 1 worker thread".into(),
            ));
        }
        if dataset.is_empty() {
            return Err(DataError::Config(format!(
                "dataset `{}` has no images",
                dataset.origin()
            )));
        }
        if cfg.drop_last && dataset.len() < cfg.batch_size {
            return Err(DataError::Config(format!(
                "dataset `{}` has {} images, fewer than one batch of {} (drop_last would \
                 leave no batch)",
                dataset.origin(),
                dataset.len(),
                cfg.batch_size
            )));
        }
        let shapes = views.view_shapes();
        if shapes.is_empty() {
            return Err(DataError::Config("the augment chain makes no view".into()));
        }
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(cfg.threads)
            .thread_name(|i| format!("recipe-data-{i}"))
            .build()
            .map_err(|e| DataError::ThreadPool(e.to_string()))?;
        Ok(Loader {
            inner: Arc::new(Inner {
                dataset,
                views,
                shapes,
                cfg,
                pool,
                shard: (0, 1),
            }),
        })
    }

    /// This loader as rank `rank` of `world` data-parallel processes: every epoch has
    /// the same global batches (order from `(seed, epoch)`), and each rank builds only
    /// its slice, images `[rank·B/K, (rank+1)·B/K)` of each batch, with the same views
    /// one process would make (image `i`'s RNG is `(seed, epoch, i)`) and the images'
    /// global dataset indices. Needs `drop_last` and a batch size that `world` divides.
    pub fn sharded(self, rank: usize, world: usize) -> Result<Loader, DataError> {
        let b = self.inner.cfg.batch_size;
        if world == 0 || rank >= world {
            return Err(DataError::Config(format!("rank {rank} of {world}")));
        }
        if !b.is_multiple_of(world) {
            return Err(DataError::Config(format!(
                "the global batch of {b} images does not split evenly over {world} ranks"
            )));
        }
        if world > 1 && !self.inner.cfg.drop_last {
            return Err(DataError::Config(
                "a sharded loader needs drop_last (every rank a full slice)".into(),
            ));
        }
        let inner = Arc::try_unwrap(self.inner)
            .map_err(|_| DataError::Config("shard a loader before cloning it".into()))?;
        Ok(Loader {
            inner: Arc::new(Inner {
                shard: (rank, world),
                ..inner
            }),
        })
    }

    /// `(rank, world)` of [`sharded`](Self::sharded); `(0, 1)` when not sharded.
    pub fn shard(&self) -> (usize, usize) {
        self.inner.shard
    }

    /// The dataset.
    pub fn dataset(&self) -> &Arc<Dataset> {
        &self.inner.dataset
    }

    /// The configuration.
    pub fn config(&self) -> &LoaderConfig {
        &self.inner.cfg
    }

    /// Batches in one epoch.
    pub fn batches_per_epoch(&self) -> usize {
        let (n, b) = (self.inner.dataset.len(), self.inner.cfg.batch_size);
        if self.inner.cfg.drop_last {
            n / b
        } else {
            n.div_ceil(b)
        }
    }

    /// The dataset indices of `epoch` in visiting order (all of them, before batching).
    pub fn epoch_order(&self, epoch: u64) -> Vec<usize> {
        self.inner.epoch_order(epoch)
    }

    /// Builds the batch of the images at `indices` for `epoch`, on the loader's pool.
    pub fn make_batch(&self, epoch: u64, indices: &[usize]) -> Result<Batch, DataError> {
        self.inner.make_batch_caught(epoch, indices)
    }

    /// The batches of `epoch`, built on a background thread when `prefetch > 0`.
    /// Iteration stops after the first error; dropping the iterator stops and joins its
    /// thread.
    pub fn epoch(&self, epoch: u64) -> Epoch {
        let chunks = self.inner.epoch_chunks(epoch);
        if self.inner.cfg.prefetch == 0 {
            return Epoch {
                mode: Mode::Inline {
                    inner: self.inner.clone(),
                    epoch,
                    chunks: chunks.into_iter(),
                    failed: false,
                },
            };
        }
        let (tx, rx) = sync_channel(self.inner.cfg.prefetch);
        let stop = Arc::new(AtomicBool::new(false));
        let inner = self.inner.clone();
        let stop2 = stop.clone();
        let handle = std::thread::Builder::new()
            .name("recipe-prefetch".into())
            .spawn(move || produce(inner, epoch, chunks, tx, stop2));
        match handle {
            Ok(h) => Epoch {
                mode: Mode::Prefetch {
                    rx: Some(rx),
                    stop,
                    handle: Some(h),
                },
            },
            Err(e) => Epoch {
                mode: Mode::Failed(Some(DataError::ThreadPool(format!(
                    "cannot start the prefetch thread: {e}"
                )))),
            },
        }
    }
}

fn produce(
    inner: Arc<Inner>,
    epoch: u64,
    chunks: Vec<Vec<usize>>,
    tx: SyncSender<Result<Batch, DataError>>,
    stop: Arc<AtomicBool>,
) {
    for chunk in chunks {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let batch = inner.make_batch_caught(epoch, &chunk);
        let failed = batch.is_err();
        // A send error means the consumer is gone: stop quietly.
        if tx.send(batch).is_err() || failed {
            return;
        }
    }
}

impl Inner {
    fn epoch_order(&self, epoch: u64) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.dataset.len()).collect();
        if self.cfg.shuffle {
            order.shuffle(&mut rng_for(self.cfg.seed, STREAM_SHUFFLE, epoch, 0));
        }
        order
    }

    fn epoch_chunks(&self, epoch: u64) -> Vec<Vec<usize>> {
        let b = self.cfg.batch_size;
        let (rank, world) = self.shard;
        self.epoch_order(epoch)
            .chunks(b)
            .filter(|c| !self.cfg.drop_last || c.len() == b)
            .map(|c| {
                if world == 1 {
                    c.to_vec()
                } else {
                    let per = b / world;
                    c[rank * per..(rank + 1) * per].to_vec()
                }
            })
            .collect()
    }

    fn make_batch_caught(&self, epoch: u64, indices: &[usize]) -> Result<Batch, DataError> {
        catch_unwind(AssertUnwindSafe(|| self.make_batch(epoch, indices)))
            .unwrap_or_else(|p| Err(DataError::WorkerPanic(panic_message(p))))
    }

    fn make_batch(&self, epoch: u64, indices: &[usize]) -> Result<Batch, DataError> {
        let n = self.dataset.len();
        if let Some(&bad) = indices.iter().find(|&&i| i >= n) {
            return Err(DataError::Config(format!(
                "dataset index {bad} is out of range ({n} images)"
            )));
        }
        let seed = self.cfg.seed;
        let per_image: Vec<Vec<Image>> = self.pool.install(|| {
            indices
                .par_iter()
                .map(|&i| {
                    let image = self.dataset.image(i);
                    let mut rng = rng_for(seed, STREAM_AUGMENT, epoch, i as u64);
                    self.views.make_views(&image, &mut rng)
                })
                .collect()
        });
        for views in &per_image {
            if views.len() != self.shapes.len() {
                return Err(DataError::Config(format!(
                    "the augment chain made {} views, but declared {}",
                    views.len(),
                    self.shapes.len()
                )));
            }
            for (v, (img, &declared)) in views.iter().zip(&self.shapes).enumerate() {
                let got = (img.channels, img.height, img.width);
                if got != declared || img.data.len() != got.0 * got.1 * got.2 {
                    return Err(DataError::ViewShape {
                        view: v,
                        declared,
                        got,
                    });
                }
            }
        }
        let b = indices.len();
        let views = self.pool.install(|| {
            self.shapes
                .par_iter()
                .enumerate()
                .map(|(v, &(c, h, w))| {
                    let mut data = Vec::with_capacity(b * c * h * w);
                    for views in &per_image {
                        data.extend_from_slice(&views[v].data);
                    }
                    ViewBatch {
                        data,
                        shape: [b, c, h, w],
                    }
                })
                .collect()
        });
        let labels = self
            .dataset
            .labels()
            .map(|l| indices.iter().map(|&i| l[i]).collect());
        Ok(Batch {
            views,
            indices: indices.to_vec(),
            labels,
        })
    }
}

enum Mode {
    Inline {
        inner: Arc<Inner>,
        epoch: u64,
        chunks: std::vec::IntoIter<Vec<usize>>,
        failed: bool,
    },
    Prefetch {
        rx: Option<Receiver<Result<Batch, DataError>>>,
        stop: Arc<AtomicBool>,
        handle: Option<JoinHandle<()>>,
    },
    Failed(Option<DataError>),
}

/// The batches of one epoch; see [`Loader::epoch`].
pub struct Epoch {
    mode: Mode,
}

impl Iterator for Epoch {
    type Item = Result<Batch, DataError>;

    fn next(&mut self) -> Option<Self::Item> {
        match &mut self.mode {
            Mode::Inline {
                inner,
                epoch,
                chunks,
                failed,
            } => {
                if *failed {
                    return None;
                }
                let chunk = chunks.next()?;
                let batch = inner.make_batch_caught(*epoch, &chunk);
                *failed = batch.is_err();
                Some(batch)
            }
            Mode::Prefetch { rx, handle, .. } => {
                let received = rx.as_ref()?.recv();
                match received {
                    Ok(batch) => Some(batch),
                    Err(_) => {
                        // The producer finished (or died): reap it and surface a death.
                        *rx = None;
                        match handle.take().map(JoinHandle::join) {
                            Some(Err(p)) => Some(Err(DataError::WorkerPanic(panic_message(p)))),
                            _ => None,
                        }
                    }
                }
            }
            Mode::Failed(e) => e.take().map(Err),
        }
    }
}

impl Drop for Epoch {
    fn drop(&mut self) {
        if let Mode::Prefetch { rx, stop, handle } = &mut self.mode {
            stop.store(true, Ordering::Relaxed);
            // Dropping the receiver unblocks a producer waiting on a full channel.
            rx.take();
            if let Some(h) = handle.take() {
                let _ = h.join();
            }
        }
    }
}
