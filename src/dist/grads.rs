//! Averaging gradients over ranks: the trainable entries' gradients are packed into
//! buckets of at most [`BUCKET_FLOATS`] values, each bucket all-reduced, and the sums
//! divided by the world size, so every rank's optimiser sees the same mean gradient.

use dfdx::prelude::*;

use super::Collective;
use crate::nn::EngineDevice;
use crate::nn::params::ParamStore;

/// Values per all-reduce: large enough that latency does not matter (4 Mi floats,
/// 16 MiB), small enough that packing the next bucket overlaps nothing big.
pub const BUCKET_FLOATS: usize = 4 << 20;

/// Replaces the gradient of every trainable entry of `store` by its mean over the
/// ranks of `dist`. Entries without a gradient get a zero one first (as the optimiser
/// would). Returns the payload bytes this rank contributed.
///
/// The bucketing and the collective are here; moving each gradient into a bucket and
/// the reduced sum back is the device's ([`EngineDevice::gradient_to_host`],
/// [`EngineDevice::gradient_from_host`]: slices of the gradient's own buffer on `Cpu`,
/// dfdx tensors elsewhere). With one rank it returns at once.
pub fn average<D: EngineDevice>(
    dist: &dyn Collective,
    store: &ParamStore<D>,
    grads: &mut Gradients<f32, D>,
) -> Result<usize, String> {
    let world = dist.world();
    if world == 1 {
        return Ok(0);
    }
    let entries: Vec<_> = store.entries().iter().filter(|e| e.trainable).collect();
    let scale = 1.0 / world as f32;
    let mut bucket: Vec<f32> = Vec::with_capacity(BUCKET_FLOATS);
    let mut members: Vec<usize> = Vec::new();
    let mut sent = 0;
    let mut flush = |bucket: &mut Vec<f32>,
                     members: &mut Vec<usize>,
                     grads: &mut Gradients<f32, D>|
     -> Result<(), String> {
        if members.is_empty() {
            return Ok(());
        }
        super::timed("comm.allreduce", || dist.all_reduce_sum(bucket));
        sent += bucket.len() * 4;
        let mut at = 0;
        for &i in members.iter() {
            let p = &entries[i].tensor;
            D::gradient_from_host(p, grads, &bucket[at..], scale)?;
            at += p.shape().0;
        }
        bucket.clear();
        members.clear();
        Ok(())
    };
    for (i, e) in entries.iter().enumerate() {
        if !bucket.is_empty() && bucket.len() + e.tensor.shape().0 > BUCKET_FLOATS {
            flush(&mut bucket, &mut members, grads)?;
        }
        D::gradient_to_host(&e.tensor, grads, &mut bucket)?;
        members.push(i);
    }
    flush(&mut bucket, &mut members, grads)?;
    Ok(sent)
}

/// Overwrites every entry (parameters and buffers) of `store` with rank `root`'s
/// values, so all ranks start from the same point.
pub fn broadcast_store<D: Device<f32>>(
    dist: &dyn Collective,
    store: &mut ParamStore<D>,
    root: usize,
) -> Result<(), String> {
    if dist.world() == 1 {
        return Ok(());
    }
    let dev = store.device().clone();
    for e in store.entries_mut() {
        let mut v = e.tensor.as_vec();
        dist.broadcast(&mut v, root);
        e.tensor = dev.tensor_from_vec(v, (e.numel(),));
    }
    Ok(())
}

/// A digest of every entry of `store`, equal on all ranks whose parameters agree
/// bit for bit.
pub fn store_digest<D: Device<f32>>(store: &ParamStore<D>) -> u64 {
    super::digest(store.entries().iter().flat_map(|e| e.tensor.as_vec()))
}

/// Errors unless every rank of `dist` holds the same `store` (compares digests).
pub fn check_same<D: Device<f32>>(
    dist: &dyn Collective,
    store: &ParamStore<D>,
    what: &str,
) -> Result<(), String> {
    if dist.world() == 1 {
        return Ok(());
    }
    let d = store_digest(store);
    // Split the 64-bit digest into exact f64 halves and compare the max with the min.
    let halves = [(d >> 32) as f64, (d & 0xffff_ffff) as f64];
    let mut hi = halves;
    let mut lo = [-halves[0], -halves[1]];
    dist.all_reduce_max_f64(&mut hi);
    dist.all_reduce_max_f64(&mut lo);
    if hi[0] == -lo[0] && hi[1] == -lo[1] {
        Ok(())
    } else {
        Err(format!(
            "{what} differ between ranks (digest on rank {}: {d:016x})",
            dist.rank()
        ))
    }
}
