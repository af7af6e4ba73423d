//! Frozen features of a dataset: what kNN, the linear probe and the pictures read.

use dfdx::prelude::*;
use rayon::prelude::*;

use super::EvalError;
use crate::data::{Dataset, Image};
use crate::nn::model::Model;
use crate::nn::ops::EngineDevice;
use crate::nn::params::ParamStore;

/// Per-channel standardisation `(x − mean[c]) / std[c]` of images in `[0, 1]`: the
/// augment chain's final op, so evaluation feeds the network what training fed it.
pub use crate::augment::Normalize;

/// Which representation to read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Which {
    /// The backbone's pooled features (the usual choice for downstream tasks).
    Backbone,
    /// The projection head's output; a model without a head gives its backbone
    /// features, as [`Model::project`] does.
    Head,
}

/// `n` feature vectors of `dim` values each (row-major), with the images' labels when
/// the dataset has them.
#[derive(Clone, Debug, PartialEq)]
pub struct FeatureMatrix {
    /// Number of rows (images).
    pub n: usize,
    /// Values per row.
    pub dim: usize,
    /// `n × dim` values, row-major.
    pub data: Vec<f32>,
    /// One label per row, if known.
    pub labels: Option<Vec<u32>>,
}

impl FeatureMatrix {
    /// Wraps row-major values; errors when `data` or `labels` do not have `n` rows.
    pub fn new(
        n: usize,
        dim: usize,
        data: Vec<f32>,
        labels: Option<Vec<u32>>,
    ) -> Result<Self, EvalError> {
        if data.len() != n * dim {
            return Err(EvalError::Data(format!(
                "{} values do not make {n} rows of {dim}",
                data.len()
            )));
        }
        if let Some(l) = &labels
            && l.len() != n
        {
            return Err(EvalError::Data(format!(
                "{} labels for {n} feature rows",
                l.len()
            )));
        }
        Ok(FeatureMatrix {
            n,
            dim,
            data,
            labels,
        })
    }

    /// Row `i`.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.dim..(i + 1) * self.dim]
    }

    /// The rows at `indices`, in that order (labels follow).
    pub fn select(&self, indices: &[usize]) -> FeatureMatrix {
        let mut data = Vec::with_capacity(indices.len() * self.dim);
        for &i in indices {
            data.extend_from_slice(self.row(i));
        }
        FeatureMatrix {
            n: indices.len(),
            dim: self.dim,
            data,
            labels: self
                .labels
                .as_ref()
                .map(|l| indices.iter().map(|&i| l[i]).collect()),
        }
    }
}

/// Checks that `norm` is valid and has one mean and std per channel of `data`.
pub(crate) fn check_normalize(norm: &Normalize, data: &Dataset) -> Result<(), EvalError> {
    norm.validate()?;
    let channels = data.shape().0;
    if norm.channels() != channels {
        return Err(EvalError::Data(format!(
            "the normalisation has {} channel(s) but the images have {channels}",
            norm.channels()
        )));
    }
    Ok(())
}

/// The images at `indices`, each passed through `transform` (given its dataset index)
/// and normalised, packed as an `(n, c, h, w)` batch. `norm` must have been checked
/// against `data` ([`check_normalize`]).
pub(crate) fn pack_batch(
    data: &Dataset,
    indices: &[usize],
    norm: &Normalize,
    transform: impl Fn(usize, Image) -> Image + Sync,
) -> Result<Vec<f32>, EvalError> {
    let (c, h, w) = data.shape();
    let len = c * h * w;
    let mut out = vec![0.0f32; indices.len() * len];
    out.par_chunks_mut(len)
        .zip(indices.par_iter())
        .try_for_each(|(dst, &i)| {
            let img = norm.apply(transform(i, data.image(i)))?;
            dst.copy_from_slice(&img.data);
            Ok::<(), EvalError>(())
        })?;
    Ok(out)
}

/// Features of every image of `data`, in dataset order, with its labels.
///
/// Images are normalised with `norm` and run in batches of `batch` through `model`
/// re-planned for the dataset's image size ([`Model::with_input`]: same parameters),
/// in evaluation mode (batch norm uses its running statistics and writes nothing back)
/// and without a gradient tape.
pub fn extract<D: EngineDevice>(
    model: &Model,
    store: &mut ParamStore<D>,
    data: &Dataset,
    norm: &Normalize,
    which: Which,
    batch: usize,
) -> Result<FeatureMatrix, EvalError> {
    if batch == 0 {
        return Err(EvalError::Config(
            "the feature batch size must be at least 1".into(),
        ));
    }
    if data.is_empty() {
        return Err(EvalError::Data(format!("{} has no images", data.origin())));
    }
    check_normalize(norm, data)?;
    let (c, h, w) = data.shape();
    let model = model.with_input((h, w))?;
    let dev = store.device().clone();
    let n = data.len();
    let mut out = Vec::new();
    let mut dim = 0;
    let indices: Vec<usize> = (0..n).collect();
    for chunk in indices.chunks(batch) {
        let px = pack_batch(data, chunk, norm, |_, img| img)?;
        let x = dev.tensor_from_vec(px, (chunk.len(), c, h, w));
        let f = match which {
            Which::Backbone => model.features(store, x, false)?,
            Which::Head => model.project(store, x, false)?,
        };
        dim = f.shape().1;
        out.extend(f.as_vec());
    }
    FeatureMatrix::new(n, dim, out, data.labels().map(<[u32]>::to_vec))
}

/// The raw-pixel baseline: every image normalised with `norm` and flattened (CHW order)
/// into one row.
pub fn raw_pixels(data: &Dataset, norm: &Normalize) -> Result<FeatureMatrix, EvalError> {
    check_normalize(norm, data)?;
    let (c, h, w) = data.shape();
    let indices: Vec<usize> = (0..data.len()).collect();
    let px = pack_batch(data, &indices, norm, |_, img| img)?;
    FeatureMatrix::new(
        data.len(),
        c * h * w,
        px,
        data.labels().map(<[u32]>::to_vec),
    )
}
