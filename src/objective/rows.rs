//! Row helpers shared by the methods that score embeddings against stored rows (MoCo's
//! queue, the memory bank): L2 normalisation of host rows, and the InfoNCE over rows of
//! a table through the fused [`EngineDevice::bank_log_softmax`].

use dfdx::prelude::*;

use super::{ObjectiveError, check_rows, check_temperature};
use crate::nn::ops::{EngineDevice, T2};

/// Rows of `v` (`rows × dim`) divided by their L2 norms (at least `1e-12`).
pub(crate) fn normalize_rows(v: &mut [f32], dim: usize) {
    for row in v.chunks_mut(dim) {
        let n = row.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
        row.iter_mut().for_each(|x| *x /= n);
    }
}

/// The InfoNCE of rows that share their negatives: `table` holds the `k` shared
/// negatives, then one positive per row of `f` (row `r`'s at `k + r`), `dim` values
/// each. Row `r`'s indices are `[k + r, 0, 1, …, k − 1]` for [`rows_loss`], whose
/// dense path makes the logits one product with the table (MoCo's queue and keys,
/// the memory bank's shared negatives).
pub(crate) fn shared_rows_loss<D: EngineDevice, T: Tape<f32, D>>(
    f: T2<D, T>,
    table: &[f32],
    k: usize,
    dim: usize,
    temperature: f32,
) -> Result<Tensor<(), f32, D, T>, ObjectiveError> {
    let n = f.shape().0;
    debug_assert_eq!(table.len(), (k + n) * dim);
    let mut idx = Vec::with_capacity(n * (k + 1));
    for r in 0..n {
        idx.push(k + r);
        idx.extend(0..k);
    }
    rows_loss(f, &idx, k + 1, table, dim, temperature)
}

/// The InfoNCE of rows against rows of `table` (`dim` values each): row `r`'s table
/// indices are one run of `m` in `idx` (`n × m`, every index already checked), the
/// positive, then the `m − 1` negatives; through the fused
/// [`EngineDevice::bank_log_softmax`], whose dense path serves
/// [`shared_rows_loss`]'s layout.
pub(crate) fn rows_loss<D: EngineDevice, T: Tape<f32, D>>(
    f: T2<D, T>,
    idx: &[usize],
    m: usize,
    table: &[f32],
    dim: usize,
    temperature: f32,
) -> Result<Tensor<(), f32, D, T>, ObjectiveError> {
    check_temperature(temperature, "memory-bank temperature")?;
    let (n, d) = *f.shape();
    if n == 0 {
        return Err(ObjectiveError::Shape(
            "memory bank: no embeddings in the batch".into(),
        ));
    }
    if d != dim {
        return Err(ObjectiveError::Shape(format!(
            "memory bank: embeddings have {d} features, the bank {dim}"
        )));
    }
    check_rows(&f, "memory-bank embeddings", n)?;
    debug_assert_eq!(idx.len(), n * m);
    let dev = f.device().clone();
    let fnorm = D::l2_normalize(f, 1e-12);
    let lsm = D::bank_log_softmax(fnorm, table, idx, 1.0 / temperature);
    let zeros = dev.tensor_from_vec(vec![0usize; n], (n,));
    let picked: Tensor<(usize,), f32, D, T> = lsm.select(zeros);
    Ok(picked.mean::<(), _>().negate())
}
