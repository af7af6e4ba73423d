//! Barlow Twins (Zbontar et al. 2021, "Barlow Twins: Self-Supervised Learning via
//! Redundancy Reduction"), as facebookresearch/barlowtwins `main.py` computes it.
//!
//! Each view's embeddings are batch-normalised per feature without affine parameters
//! (PyTorch's `BatchNorm1d(affine=False)` in training mode: batch mean, biased batch
//! variance, ε = 1e-5); the cross-correlation `C = aᵀb / N` of the two normalised
//! views is driven to the identity:
//! `L = scale · (Σ_i (1 − C_ii)² + λ · Σ_{i≠j} C_ij²)`.
//!
//! Across ranks the reference all-reduces `C` (each rank's `aᵀb` over its rows, divided
//! by the global batch) with synchronised batch norm; [`distributed_loss`] does the
//! same, with the exact backward: every rank has the global `∂L/∂C` once `C` is
//! all-reduced, and the batch norm's backward sums are all-reduced too.

use dfdx::prelude::*;

use super::{
    BuildArgs, CommFacts, Encoder, Loss, Method, MethodPlan, ModelFacts, Objective, ObjectiveError,
    StepBatch, check_rows, check_views, per_view, timed, timed_loss,
};
use crate::dist::Collective;
use crate::nn::ops::{EngineDevice, T2};
use crate::nn::params::ParamStore;

/// ε of the affine-free batch norm: `nn.BatchNorm1d`'s default, which the reference
/// keeps.
pub const BN_EPS: f32 = 1e-5;

/// Checks the hyper-parameters and returns `N`, the images of `z`.
fn check(z_rows: usize, lambda: f32, scale: f32) -> Result<usize, ObjectiveError> {
    if !(lambda.is_finite() && lambda >= 0.0) {
        return Err(ObjectiveError::Config(format!(
            "Barlow Twins λ must be ≥ 0, got {lambda}"
        )));
    }
    if !(scale.is_finite() && scale > 0.0) {
        return Err(ObjectiveError::Config(format!(
            "Barlow Twins scale must be positive, got {scale}"
        )));
    }
    per_view(z_rows, 2, "Barlow Twins embeddings")
}

/// Barlow Twins' loss of `z`, `(2·N, d)` raw embeddings in view-major order (rows
/// `0..N` are view 0 of the images, rows `N..2N` view 1), with off-diagonal weight
/// `lambda` and overall factor `scale` (see the module doc). `N` must be at least 2:
/// one row has no batch variance.
pub fn loss<D: EngineDevice, T: Tape<f32, D>>(
    z: T2<D, T>,
    lambda: f32,
    scale: f32,
) -> Result<Tensor<(), f32, D, T>, ObjectiveError> {
    let (m, d) = *z.shape();
    let n = check(m, lambda, scale)?;
    if n < 2 {
        return Err(ObjectiveError::Shape(
            "Barlow Twins normalises over the batch and needs at least 2 images".into(),
        ));
    }
    check_rows(&z, "Barlow Twins embeddings", m)?;
    let dev = z.device().clone();
    let a = batch_norm(z.retaped::<T>().slice((0..n, ..)));
    let b = batch_norm(z.slice((n..m, ..)));
    let c = a.permute::<_, Axes2<1, 0>>().matmul(b) * (1.0 / n as f32);
    let diag_idx = dev.tensor_from_vec((0..d).map(|i| i * d + i).collect(), (d,));
    let diag = c.retaped::<T>().reshape_like(&(d * d,)).gather(diag_idx);
    let on = (diag.negate() + 1.0).square().sum::<(), _>();
    let off = (c * dev.tensor_from_vec(off_mask(d), (d, d)))
        .square()
        .sum::<(), _>();
    Ok((on + off * lambda) * scale)
}

/// `1` off the diagonal of a `d×d` matrix, `0` on it.
pub(crate) fn off_mask(d: usize) -> Vec<f32> {
    let mut m = vec![1.0f32; d * d];
    for i in 0..d {
        m[i * d + i] = 0.0;
    }
    m
}

/// `BatchNorm1d(affine=False)` in training mode: each column minus its mean, divided by
/// `sqrt(biased variance + ε)`.
fn batch_norm<D: EngineDevice, T: Tape<f32, D>>(x: T2<D, T>) -> T2<D, T> {
    let shape = *x.shape();
    let mean = x.retaped::<T>().mean::<(usize,), Axis<0>>();
    let xc = x - mean.broadcast_like::<_, Axis<0>>(&shape);
    let var = xc.retaped::<T>().square().mean::<(usize,), Axis<0>>();
    let inv = (var + BN_EPS).sqrt().recip();
    xc * inv.broadcast_like::<_, Axis<0>>(&shape)
}

/// The loss `scale · (Σ (1 − C_ii)² + λ Σ_{i≠j} C_ij²)` of a cross-correlation `c`
/// (`d×d`, row-major) and its gradient `∂L/∂C`.
fn objective_and_grad(c: &[f32], d: usize, lambda: f32, scale: f32) -> (f32, Vec<f32>) {
    let (lambda, scale) = (lambda as f64, scale as f64);
    let (mut on, mut off) = (0.0f64, 0.0f64);
    let mut g = vec![0.0f32; d * d];
    for i in 0..d {
        for j in 0..d {
            let v = c[i * d + j] as f64;
            if i == j {
                on += (1.0 - v) * (1.0 - v);
                g[i * d + j] = (scale * 2.0 * (v - 1.0)) as f32;
            } else {
                off += v * v;
                g[i * d + j] = (scale * 2.0 * lambda * v) as f32;
            }
        }
    }
    ((scale * (on + lambda * off)) as f32, g)
}

/// This rank's share of [`loss`] over the global batch of a data-parallel job, as the
/// reference computes it: `z` holds this rank's `(2·n, d)` embeddings (view-major), the
/// batch norm uses the moments of all ranks' rows (two all-reduces: the sums, then the
/// centred squares, in `f64`), each rank forms `aᵀb / N` over its rows (`N` the global
/// batch) and the sum over ranks is `C` (one all-reduce of `d²` values).
///
/// The backward is exact and computed here: `G = ∂L/∂C` is the same on every rank,
/// `∂L/∂a = b·Gᵀ/N` and `∂L/∂b = a·G/N` for this rank's rows, and the batch norm's
/// backward needs `Σ ∂L/∂a` and `Σ ∂L/∂a·a` over all ranks (a fourth all-reduce). The
/// gradient is multiplied by the world size, since the step averages the ranks'
/// gradients; the returned scalar carries the loss's value and, on the tape, `Σ z·∂L/∂z`.
pub(crate) fn distributed_loss<D: EngineDevice>(
    z: T2<D, OwnedTape<f32, D>>,
    dist: &dyn Collective,
    lambda: f32,
    scale: f32,
) -> Result<Loss<D>, ObjectiveError> {
    let (m, d) = *z.shape();
    let n = check(m, lambda, scale)?;
    let world = dist.world();
    let total = n * world;
    if total < 2 {
        return Err(ObjectiveError::Shape(
            "Barlow Twins normalises over the batch and needs at least 2 images".into(),
        ));
    }
    check_rows(&z, "Barlow Twins embeddings", m)?;
    let dev = z.device().clone();
    let host = z.as_vec();
    let nf = total as f64;
    // Per-feature sums of both views (2·d), then the centred squares: the moments of
    // the global batch in two passes, as one process computes them.
    let mut mean = vec![0.0f64; 2 * d];
    for (r, row) in host.chunks(d).enumerate() {
        let v = r / n;
        for (j, x) in row.iter().enumerate() {
            mean[v * d + j] += *x as f64;
        }
    }
    crate::dist::timed("comm.allreduce", || dist.all_reduce_sum_f64(&mut mean));
    mean.iter_mut().for_each(|s| *s /= nf);
    let mut inv = vec![0.0f64; 2 * d];
    for (r, row) in host.chunks(d).enumerate() {
        let v = r / n;
        for (j, x) in row.iter().enumerate() {
            let c = *x as f64 - mean[v * d + j];
            inv[v * d + j] += c * c;
        }
    }
    crate::dist::timed("comm.allreduce", || dist.all_reduce_sum_f64(&mut inv));
    inv.iter_mut()
        .for_each(|q| *q = 1.0 / (*q / nf + BN_EPS as f64).sqrt());
    let normed: Vec<f32> = host
        .chunks(d)
        .enumerate()
        .flat_map(|(r, row)| {
            let v = r / n;
            let (mean, inv) = (&mean[v * d..(v + 1) * d], &inv[v * d..(v + 1) * d]);
            row.iter()
                .enumerate()
                .map(move |(j, x)| ((*x as f64 - mean[j]) * inv[j]) as f32)
        })
        .collect();
    let a = dev.tensor_from_vec(normed[..n * d].to_vec(), (n, d));
    let b = dev.tensor_from_vec(normed[n * d..].to_vec(), (n, d));
    let c_local = a.clone().permute::<_, Axes2<1, 0>>().matmul(b.clone()) * (1.0 / nf as f32);
    let mut c = c_local.as_vec();
    crate::dist::timed("comm.allreduce", || dist.all_reduce_sum(&mut c));
    let (value, g) = objective_and_grad(&c, d, lambda, scale);
    let g = dev.tensor_from_vec(g, (d, d));
    let ga = (b.matmul(g.clone().permute::<_, Axes2<1, 0>>()) * (1.0 / nf as f32)).as_vec();
    let gb = (a.matmul(g) * (1.0 / nf as f32)).as_vec();
    let gn: Vec<f32> = [ga, gb].concat();
    // The batch norm's backward: per-feature Σ g and Σ g·x̂ over the global batch.
    let mut sums = vec![0.0f64; 4 * d];
    for (r, (grow, xrow)) in gn.chunks(d).zip(normed.chunks(d)).enumerate() {
        let v = r / n;
        for j in 0..d {
            sums[v * 2 * d + j] += grow[j] as f64;
            sums[v * 2 * d + d + j] += grow[j] as f64 * xrow[j] as f64;
        }
    }
    crate::dist::timed("comm.allreduce", || dist.all_reduce_sum_f64(&mut sums));
    let k = world as f64;
    let gz: Vec<f32> = gn
        .chunks(d)
        .zip(normed.chunks(d))
        .enumerate()
        .flat_map(|(r, (grow, xrow))| {
            let v = r / n;
            let (sg, sgx) = (
                &sums[v * 2 * d..v * 2 * d + d],
                &sums[v * 2 * d + d..(v + 1) * 2 * d],
            );
            let inv = &inv[v * d..(v + 1) * d];
            (0..d).map(move |j| {
                (k * inv[j] * (grow[j] as f64 - sg[j] / nf - xrow[j] as f64 * sgx[j] / nf)) as f32
            })
        })
        .collect();
    let surrogate = (z * dev.tensor_from_vec(gz, (m, d))).sum::<(), _>();
    let s = surrogate.as_vec()[0];
    Ok(surrogate + (value - s))
}

/// Barlow Twins as an [`Objective`]: each view through the encoder on its own (the
/// reference runs `backbone(y1)` and `backbone(y2)` separately, so every batch norm of
/// the encoder normalises one view at a time), then [`loss`], or
/// [`distributed_loss`] over several ranks.
#[derive(Clone, Debug)]
pub struct BarlowTwins {
    /// λ, the off-diagonal weight.
    pub lambda: f32,
    /// The factor multiplying the loss.
    pub scale: f32,
}

/// The embeddings of two views, each view through the encoder as its own batch,
/// stacked view-major (shared with VICReg, whose reference does the same).
pub(crate) fn embed_each_view<D: EngineDevice>(
    encoder: &mut Encoder,
    store: &mut ParamStore<D>,
    batch: &StepBatch<'_>,
) -> Result<T2<D, OwnedTape<f32, D>>, ObjectiveError> {
    let z1 = encoder.embed(store, &batch.views[..1], true)?;
    let z2 = encoder.embed(store, &batch.views[1..2], true)?;
    Ok((z1, z2).concat_along(Axis::<0>))
}

impl<D: EngineDevice> Objective<D> for BarlowTwins {
    fn loss(
        &mut self,
        encoder: &mut Encoder,
        store: &mut ParamStore<D>,
        batch: &StepBatch<'_>,
    ) -> Result<Loss<D>, ObjectiveError> {
        check_views("Barlow Twins", 2, batch)?;
        let z = embed_each_view(encoder, store, batch)?;
        let (lambda, scale) = (self.lambda, self.scale);
        if batch.dist.world() > 1 {
            return timed("objective.loss.fwd", || {
                distributed_loss(z, batch.dist, lambda, scale)
            });
        }
        timed_loss(z, |z| {
            timed("objective.loss.fwd", || loss(z, lambda, scale))
        })
    }
}

/// Barlow Twins' hyper-parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BarlowTwinsConfig {
    /// λ, the weight of the off-diagonal terms.
    pub lambda: f32,
    /// The factor multiplying the loss (1 in the current reference).
    pub scale: f32,
}

impl Method for BarlowTwinsConfig {
    fn name(&self) -> &'static str {
        "barlow_twins"
    }

    fn plan(&self, model: &ModelFacts) -> MethodPlan {
        let (n, d) = (model.batch as f64, model.dim as f64);
        MethodPlan {
            // C = aᵀb forward; ∂L/∂a = b·Gᵀ and ∂L/∂b = a·G backward: 2·N·d² each.
            extra_step_flops: 6.0 * n * d * d,
            // C and ∂L/∂C (d² each), the normalised views and their gradients (N·d each).
            step_bytes: 4 * (2 * model.dim * model.dim + 4 * model.batch * model.dim),
            step_parts: vec![format!(
                "cross-correlation {}×{} and its gradient",
                model.dim, model.dim
            )],
            ..MethodPlan::default()
        }
    }

    fn comm(&self, step: &CommFacts) -> (f64, usize) {
        let d = step.embedding_bytes / (4.0 * step.images.max(1) as f64);
        // All-reduces of the batch norm's sums and centred squares (2·d f64 each), of
        // C (d² f32) and of the batch norm's backward sums (4·d f64).
        (step.ring * (4.0 * d * d + 8.0 * 8.0 * d), 4)
    }

    fn build<D: EngineDevice>(
        &self,
        on: &BuildArgs<'_, D>,
    ) -> Result<Box<dyn Objective<D>>, ObjectiveError> {
        check(2, self.lambda, self.scale)?;
        if on.views != 2 {
            return Err(ObjectiveError::Config(format!(
                "Barlow Twins needs exactly 2 views per image, found {}",
                on.views
            )));
        }
        Ok(Box::new(BarlowTwins {
            lambda: self.lambda,
            scale: self.scale,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dist::{Solo, threads};

    fn views(n: usize, d: usize) -> Vec<f32> {
        (0..2 * n * d)
            .map(|k| {
                let (i, j) = ((k / d) % n, k % d);
                ((i * 7 + j * 3 + k / (n * d)) % 11) as f32 * 0.3 - 1.0 + (j as f32) * 0.5
            })
            .collect()
    }

    /// The loss and the gradient of `z` that one rank's part of the step hands back.
    fn dist_value_and_grad(
        z: Vec<f32>,
        rows: usize,
        d: usize,
        dist: &dyn Collective,
    ) -> (f32, Vec<f32>) {
        let dev = Cpu::default();
        let z: T2<Cpu, NoneTape> = dev.tensor_from_vec(z, (rows, d));
        let l = distributed_loss(z.leaky_trace(), dist, 0.05, 0.5).unwrap();
        let v = l.array();
        (v, l.backward().get(&z).as_vec())
    }

    #[test]
    fn the_all_reduced_loss_and_its_backward_are_the_single_process_ones() {
        let (n, d, world) = (8, 5, 4);
        let x = views(n, d);
        let dev = Cpu::default();
        let z: T2<Cpu, NoneTape> = dev.tensor_from_vec(x.clone(), (2 * n, d));
        let l = loss(z.leaky_trace(), 0.05, 0.5).unwrap();
        let want = l.array();
        let want_grad = l.backward().get(&z).as_vec();
        // One process through the distributed path.
        let (v, g) = dist_value_and_grad(x.clone(), 2 * n, d, &Solo);
        assert!((v - want).abs() <= 1e-5 * want.abs(), "{v} vs {want}");
        for (a, b) in g.iter().zip(&want_grad) {
            assert!((a - b).abs() <= 1e-6, "{a} vs {b}");
        }
        // Four ranks, each with its quarter of both views: the same loss on every rank,
        // and world × the single-process gradient of its rows (the step averages).
        let per = n / world;
        let handles: Vec<_> = threads::group(world)
            .into_iter()
            .enumerate()
            .map(|(r, rank)| {
                let mine: Vec<f32> = (0..2)
                    .flat_map(|v| x[(v * n + r * per) * d..(v * n + (r + 1) * per) * d].to_vec())
                    .collect();
                std::thread::spawn(move || dist_value_and_grad(mine, 2 * per, d, &rank))
            })
            .collect();
        for (r, h) in handles.into_iter().enumerate() {
            let (v, g) = h.join().unwrap();
            assert!(
                (v - want).abs() <= 1e-5 * want.abs(),
                "rank {r}: {v} vs {want}"
            );
            for v_ in 0..2 {
                for i in 0..per {
                    for j in 0..d {
                        let got = g[(v_ * per + i) * d + j] / world as f32;
                        let exp = want_grad[(v_ * n + r * per + i) * d + j];
                        assert!((got - exp).abs() <= 1e-6, "rank {r}: {got} vs {exp}");
                    }
                }
            }
        }
    }
}
