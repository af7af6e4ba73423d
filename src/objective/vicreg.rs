//! VICReg (Bardes, Ponce & LeCun 2022, "VICReg: Variance-Invariance-Covariance
//! Regularization for Self-Supervised Learning"), as facebookresearch/vicreg
//! `main_vicreg.py` computes it.
//!
//! For the two views' embeddings `x` and `y` (`N × d`, used as they are: no
//! normalisation):
//! - invariance: the mean squared error `mean((x − y)²)` over all `N·d` values;
//! - variance: `std_j = sqrt(Var_j + ε)` of each feature over the batch (unbiased,
//!   `N − 1`), and `mean_j relu(1 − std_j)`, averaged over the two views;
//! - covariance: `cov = x̄ᵀx̄ / (N − 1)` of the mean-centred embeddings, and the sum of
//!   its squared off-diagonal entries divided by `d`, summed over the two views;
//!
//! `L = λ·invariance + μ·variance + ν·covariance` (25, 25 and 1 in the reference).
//!
//! Across ranks the reference gathers the embeddings of every rank (its
//! `FullGatherLayer`, whose backward sums the gradient over ranks) and computes the
//! variance and covariance on the global batch; every rank does the same here through
//! the shared gather ([`super::batch_loss`]).

use dfdx::prelude::*;

use super::{
    BuildArgs, CommFacts, Encoder, Loss, Method, MethodPlan, ModelFacts, Objective, ObjectiveError,
    StepBatch, barlow_twins::off_mask, check_rows, check_views, per_view,
};
use crate::nn::ops::{EngineDevice, T2};
use crate::nn::params::ParamStore;

/// VICReg's weights and ε, for [`loss`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct VicregConfig {
    /// λ, the weight of the invariance term (`--sim-coeff`, 25).
    pub invariance: f32,
    /// μ, the weight of the variance term (`--std-coeff`, 25).
    pub variance: f32,
    /// ν, the weight of the covariance term (`--cov-coeff`, 1).
    pub covariance: f32,
    /// ε inside the standard deviation (1e-4).
    pub epsilon: f32,
}

impl VicregConfig {
    fn check(&self) -> Result<(), ObjectiveError> {
        for (what, c) in [
            ("invariance", self.invariance),
            ("variance", self.variance),
            ("covariance", self.covariance),
        ] {
            if !(c.is_finite() && c >= 0.0) {
                return Err(ObjectiveError::Config(format!(
                    "the VICReg {what} coefficient must be ≥ 0, got {c}"
                )));
            }
        }
        if !(self.epsilon.is_finite() && self.epsilon > 0.0) {
            return Err(ObjectiveError::Config(format!(
                "the VICReg variance ε must be positive, got {}",
                self.epsilon
            )));
        }
        Ok(())
    }
}

/// VICReg's loss of `z`, `(2·N, d)` raw embeddings in view-major order (rows `0..N`
/// are `x`, view 0 of the images; rows `N..2N` are `y`, view 1), with `cfg`'s weights
/// (see the module doc). `N` must be at least 2 (the variances divide by `N − 1`).
pub fn loss<D: EngineDevice, T: Tape<f32, D>>(
    z: T2<D, T>,
    cfg: &VicregConfig,
) -> Result<Tensor<(), f32, D, T>, ObjectiveError> {
    cfg.check()?;
    let m = z.shape().0;
    let n = per_view(m, 2, "VICReg embeddings")?;
    if n < 2 {
        return Err(ObjectiveError::Shape(
            "VICReg's variance and covariance need at least 2 images in the batch".into(),
        ));
    }
    check_rows(&z, "VICReg embeddings", m)?;
    let x = z.retaped::<T>().slice((0..n, ..));
    let y = z.slice((n..m, ..));
    let invariance = (x.retaped::<T>() - y.retaped::<T>())
        .square()
        .mean::<(), _>();
    let (vx, cx) = spread(x, cfg.epsilon);
    let (vy, cy) = spread(y, cfg.epsilon);
    Ok(invariance * cfg.invariance + (vx + vy) * (cfg.variance * 0.5) + (cx + cy) * cfg.covariance)
}

/// A scalar on the tape `T`.
type Scalar<D, T> = Tensor<(), f32, D, T>;

/// The variance term `mean_j relu(1 − sqrt(Var_j + ε))` and the covariance term
/// `Σ_{i≠j} cov_ij² / d` of one view's `(N, d)` embeddings.
fn spread<D: EngineDevice, T: Tape<f32, D>>(x: T2<D, T>, eps: f32) -> (Scalar<D, T>, Scalar<D, T>) {
    let shape = *x.shape();
    let (n, d) = shape;
    let dev = x.device().clone();
    let mean = x.retaped::<T>().mean::<(usize,), Axis<0>>();
    let xc = x - mean.broadcast_like::<_, Axis<0>>(&shape);
    let var = xc.retaped::<T>().square().sum::<(usize,), Axis<0>>() * (1.0 / (n as f32 - 1.0));
    let std = (var + eps).sqrt();
    let variance = (std.negate() + 1.0).relu().mean::<(), _>();
    // Scaling one side gives it a new id: a matmul of a tensor with itself panics.
    let xs = xc.retaped::<T>() * (1.0 / (n as f32 - 1.0));
    let cov = xs.permute::<_, Axes2<1, 0>>().matmul(xc);
    let covariance = (cov * dev.tensor_from_vec(off_mask(d), (d, d)))
        .square()
        .sum::<(), _>()
        * (1.0 / d as f32);
    (variance, covariance)
}

/// VICReg as an [`Objective`]: each view through the encoder on its own (the reference
/// runs `backbone(x)` and `backbone(y)` separately), then [`loss`]; over several ranks
/// every rank computes [`loss`] on the gathered global batch, as the reference does.
#[derive(Clone, Debug)]
pub struct Vicreg {
    /// The weights and ε.
    pub cfg: VicregConfig,
}

impl<D: EngineDevice> Objective<D> for Vicreg {
    fn loss(
        &mut self,
        encoder: &mut Encoder,
        store: &mut ParamStore<D>,
        batch: &StepBatch<'_>,
    ) -> Result<Loss<D>, ObjectiveError> {
        check_views("VICReg", 2, batch)?;
        let z = super::barlow_twins::embed_each_view(encoder, store, batch)?;
        let cfg = self.cfg;
        // Over ranks each computes the whole loss on the gathered rows; the gather's
        // backward sums the K identical gradients, and the step's average over ranks
        // divides them again (the reference's FullGatherLayer and DDP do the same).
        super::batch_loss(z, batch.dist, 2, |z| loss(z, &cfg), |zg, _| loss(zg, &cfg))
    }
}

impl Method for VicregConfig {
    fn name(&self) -> &'static str {
        "vicreg"
    }

    fn plan(&self, model: &ModelFacts) -> MethodPlan {
        let (n, d) = (model.batch as f64, model.dim as f64);
        MethodPlan {
            // Per view: x̄ᵀx̄ forward and its backward x̄·(G + Gᵀ), 2·N·d² each.
            extra_step_flops: 8.0 * n * d * d,
            // Per view: the covariance, its masked square and their gradients (d² each).
            step_bytes: 4 * (2 * 4 * model.dim * model.dim),
            step_parts: vec![format!(
                "2 covariances {}×{} and their gradients",
                model.dim, model.dim
            )],
            ..MethodPlan::default()
        }
    }

    fn comm(&self, step: &CommFacts) -> (f64, usize) {
        // Both views' embeddings are gathered; their gradient is reduce-scattered.
        (step.views as f64 * step.embedding_bytes * 2.0, 2)
    }

    fn build<D: EngineDevice>(
        &self,
        on: &BuildArgs<'_, D>,
    ) -> Result<Box<dyn Objective<D>>, ObjectiveError> {
        self.check()?;
        if on.views != 2 {
            return Err(ObjectiveError::Config(format!(
                "VICReg needs exactly 2 views per image, found {}",
                on.views
            )));
        }
        Ok(Box::new(Vicreg { cfg: *self }))
    }
}
