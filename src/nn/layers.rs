//! Runtime-shaped layers: each holds the ids of its entries in a [`ParamStore`] and
//! its sizes as `usize`; the values live in the store.
//!
//! A layer registers its entries under torchvision's names when built, and reads
//! them at forward time (flat tensors reshaped without copying, same tensor id, so
//! `grads.get(&entry.tensor)` is the parameter's gradient).

use dfdx::prelude::*;

use super::error::ModelError;
use super::init::Init;
use super::ops::{BnConfig, BnRunning, EngineDevice, T1, T2, T4, Window};
use super::params::{ParamId, ParamStore, Role};
use super::summary::LayerSummary;

/// Channels, height, width of one sample.
pub type Chw = (usize, usize, usize);

fn flat<D: Device<f32>, T: Tape<f32, D>>(store: &ParamStore<D>, id: ParamId) -> T1<D, T> {
    store.get(id).tensor.retaped::<T>()
}

/// Output size of a window on an `h×w` map. A map smaller than the window, or a
/// strided window on a map narrower than its stride (the input was too small for the
/// number of stride-2 stages), is an error.
pub fn window_out(
    layer: &str,
    win: Window,
    h: usize,
    w: usize,
) -> Result<(usize, usize), ModelError> {
    let too_small = || ModelError::InputTooSmall {
        layer: layer.to_string(),
        height: h,
        width: w,
        kernel: win.kernel,
        stride: win.stride,
    };
    if h < win.stride || w < win.stride {
        return Err(too_small());
    }
    match (win.out_size(h), win.out_size(w)) {
        (Some(ho), Some(wo)) if ho > 0 && wo > 0 => Ok((ho, wo)),
        _ => Err(too_small()),
    }
}

/// A 2-D convolution with a square kernel.
#[derive(Clone, Debug)]
pub struct Conv2d {
    /// Name prefix (`layer1.0.conv1`).
    pub name: String,
    weight: ParamId,
    bias: Option<ParamId>,
    /// Input channels.
    pub cin: usize,
    /// Output channels.
    pub cout: usize,
    /// Kernel, stride, padding.
    pub win: Window,
    /// Whether the input is data (the network's first layer on images): the
    /// backward then computes no input gradient ([`EngineDevice::conv2d_data`]).
    pub data_input: bool,
}

impl Conv2d {
    /// Registers `{name}.weight` (and `{name}.bias`) in `store`.
    #[allow(clippy::too_many_arguments)]
    pub fn new<D: Device<f32>>(
        store: &mut ParamStore<D>,
        init: &mut Init,
        name: &str,
        cin: usize,
        cout: usize,
        win: Window,
        bias: bool,
    ) -> Result<Self, ModelError> {
        let k = win.kernel;
        let weight = store.add(
            format!("{name}.weight"),
            &[cout, cin, k, k],
            init.conv_weight(cout, cin, k),
            Role::Weight,
        )?;
        let bias = if bias {
            Some(store.add(
                format!("{name}.bias"),
                &[cout],
                init.linear(cout, cin * k * k),
                Role::Bias,
            )?)
        } else {
            None
        };
        Ok(Conv2d {
            name: name.to_string(),
            weight,
            bias,
            cin,
            cout,
            win,
            data_input: false,
        })
    }

    /// Output shape for an input shape, or an error when the input does not fit.
    pub fn out_shape(&self, (c, h, w): Chw) -> Result<Chw, ModelError> {
        if c != self.cin {
            return Err(ModelError::Channels {
                layer: self.name.clone(),
                expected: self.cin,
                found: c,
            });
        }
        window_out(&self.name, self.win, h, w).map(|(ho, wo)| (self.cout, ho, wo))
    }

    /// Appends this layer's summary row; returns its output shape.
    pub fn describe(&self, input: Chw, rows: &mut Vec<LayerSummary>) -> Result<Chw, ModelError> {
        let out = self.out_shape(input)?;
        let k = self.win.kernel;
        let params = self.cout * self.cin * k * k + self.bias.map_or(0, |_| self.cout);
        rows.push(LayerSummary {
            name: self.name.clone(),
            kind: "conv2d",
            out_shape: vec![out.0, out.1, out.2],
            params,
            flops: 2 * (self.cin * k * k) * out.0 * out.1 * out.2,
        });
        Ok(out)
    }

    /// Applies the convolution.
    pub fn forward<D: EngineDevice, T: Tape<f32, D>>(
        &self,
        store: &ParamStore<D>,
        x: T4<D, T>,
    ) -> T4<D, T> {
        let k = self.win.kernel;
        let w = store
            .get(self.weight)
            .tensor
            .clone()
            .reshape_like(&(self.cout, self.cin, k, k))
            .retaped::<T>();
        let b = self.bias.map(|id| flat::<D, T>(store, id));
        if self.data_input {
            D::conv2d_data(x, w, b, self.win)
        } else {
            D::conv2d(x, w, b, self.win)
        }
    }
}

/// Batch normalisation (2-D on NCHW, 1-D on `(n, f)`), torchvision names.
#[derive(Clone, Debug)]
pub struct BatchNorm {
    /// Name prefix (`bn1`).
    pub name: String,
    weight: ParamId,
    bias: ParamId,
    running_mean: ParamId,
    running_var: ParamId,
    num_batches_tracked: ParamId,
    /// Channels / features.
    pub channels: usize,
    /// Momentum and eps.
    pub cfg: BnConfig,
}

impl BatchNorm {
    /// Registers weight, bias, running_mean, running_var, num_batches_tracked.
    pub fn new<D: Device<f32>>(
        store: &mut ParamStore<D>,
        name: &str,
        channels: usize,
    ) -> Result<Self, ModelError> {
        let c = channels;
        Ok(BatchNorm {
            name: name.to_string(),
            weight: store.add(
                format!("{name}.weight"),
                &[c],
                vec![1.0; c],
                Role::NormWeight,
            )?,
            bias: store.add(format!("{name}.bias"), &[c], vec![0.0; c], Role::NormBias)?,
            running_mean: store.add(
                format!("{name}.running_mean"),
                &[c],
                vec![0.0; c],
                Role::Buffer,
            )?,
            running_var: store.add(
                format!("{name}.running_var"),
                &[c],
                vec![1.0; c],
                Role::Buffer,
            )?,
            num_batches_tracked: store.add(
                format!("{name}.num_batches_tracked"),
                &[],
                vec![0.0],
                Role::Buffer,
            )?,
            channels,
            cfg: BnConfig::default(),
        })
    }

    /// Appends this layer's summary row (shape unchanged).
    pub fn describe(&self, out_shape: Vec<usize>, rows: &mut Vec<LayerSummary>) {
        let numel: usize = out_shape.iter().product();
        rows.push(LayerSummary {
            name: self.name.clone(),
            kind: "batch_norm",
            out_shape,
            params: 2 * self.channels,
            flops: 4 * numel,
        });
    }

    fn running<D: Device<f32>>(&self, store: &ParamStore<D>) -> BnRunning<D> {
        BnRunning {
            mean: store.get(self.running_mean).tensor.clone(),
            var: store.get(self.running_var).tensor.clone(),
        }
    }

    fn store_running<D: Device<f32>>(&self, store: &mut ParamStore<D>, new: Option<BnRunning<D>>) {
        if let Some(r) = new {
            store.get_mut(self.running_mean).tensor = r.mean;
            store.get_mut(self.running_var).tensor = r.var;
            let count = store.get(self.num_batches_tracked).tensor.clone() + 1.0;
            store.get_mut(self.num_batches_tracked).tensor = count;
        }
    }

    /// Normalises NCHW `x`; in training mode updates the running statistics in `store`.
    pub fn forward2d<D: EngineDevice, T: Tape<f32, D>>(
        &self,
        store: &mut ParamStore<D>,
        x: T4<D, T>,
        train: bool,
    ) -> T4<D, T> {
        let running = self.running(store);
        let (y, new) = D::batch_norm2d(
            x,
            flat(store, self.weight),
            flat(store, self.bias),
            &running,
            train,
            self.cfg,
        );
        self.store_running(store, new);
        y
    }

    /// Batch norm then ReLU on NCHW `x` (one fused kernel on CPU).
    pub fn forward2d_relu<D: EngineDevice, T: Tape<f32, D>>(
        &self,
        store: &mut ParamStore<D>,
        x: T4<D, T>,
        train: bool,
    ) -> T4<D, T> {
        let running = self.running(store);
        let (y, new) = D::batch_norm2d_relu(
            x,
            flat(store, self.weight),
            flat(store, self.bias),
            &running,
            train,
            self.cfg,
        );
        self.store_running(store, new);
        y
    }

    /// Normalises `(n, f)` `x`; in training mode updates the running statistics.
    pub fn forward1d<D: EngineDevice, T: Tape<f32, D>>(
        &self,
        store: &mut ParamStore<D>,
        x: T2<D, T>,
        train: bool,
    ) -> T2<D, T> {
        let running = self.running(store);
        let (y, new) = D::batch_norm1d(
            x,
            flat(store, self.weight),
            flat(store, self.bias),
            &running,
            train,
            self.cfg,
        );
        self.store_running(store, new);
        y
    }
}

/// A fully connected layer `x · wᵀ + b`.
#[derive(Clone, Debug)]
pub struct Linear {
    /// Name prefix (`projector.0`).
    pub name: String,
    weight: ParamId,
    bias: Option<ParamId>,
    /// Input features.
    pub fin: usize,
    /// Output features.
    pub fout: usize,
}

impl Linear {
    /// Registers `{name}.weight` `(fout, fin)` and optionally `{name}.bias`.
    pub fn new<D: Device<f32>>(
        store: &mut ParamStore<D>,
        init: &mut Init,
        name: &str,
        fin: usize,
        fout: usize,
        bias: bool,
    ) -> Result<Self, ModelError> {
        let weight = store.add(
            format!("{name}.weight"),
            &[fout, fin],
            init.linear(fout * fin, fin),
            Role::Weight,
        )?;
        let bias = if bias {
            Some(store.add(
                format!("{name}.bias"),
                &[fout],
                init.linear(fout, fin),
                Role::Bias,
            )?)
        } else {
            None
        };
        Ok(Linear {
            name: name.to_string(),
            weight,
            bias,
            fin,
            fout,
        })
    }

    /// Id of the weight entry.
    pub fn weight_id(&self) -> ParamId {
        self.weight
    }

    /// Appends this layer's summary row.
    pub fn describe(&self, rows: &mut Vec<LayerSummary>) {
        rows.push(LayerSummary {
            name: self.name.clone(),
            kind: "linear",
            out_shape: vec![self.fout],
            params: self.fout * self.fin + self.bias.map_or(0, |_| self.fout),
            flops: 2 * self.fin * self.fout,
        });
    }

    /// The weight as a `(fout, fin)` tensor on tape `T`.
    pub fn weight<D: Device<f32>, T: Tape<f32, D>>(&self, store: &ParamStore<D>) -> T2<D, T> {
        store
            .get(self.weight)
            .tensor
            .clone()
            .reshape_like(&(self.fout, self.fin))
            .retaped::<T>()
    }

    /// Applies the layer.
    pub fn forward<D: EngineDevice, T: Tape<f32, D>>(
        &self,
        store: &ParamStore<D>,
        x: T2<D, T>,
    ) -> T2<D, T> {
        let b = self.bias.map(|id| flat::<D, T>(store, id));
        D::linear(x, self.weight(store), b)
    }
}
