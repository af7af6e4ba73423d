//! `Cuda` runs the composed forms: the project cannot read dfdx's GPU buffers.

use dfdx::prelude::*;

use super::{BnConfig, BnRunning, EngineDevice, T1, T2, T4, Window, composed};

impl EngineDevice for Cuda {
    fn conv2d<T: Tape<f32, Self>>(
        x: T4<Self, T>,
        w: T4<Self, T>,
        b: Option<T1<Self, T>>,
        win: Window,
    ) -> T4<Self, T> {
        composed::conv2d(x, w, b, win)
    }
    fn max_pool2d<T: Tape<f32, Self>>(x: T4<Self, T>, win: Window) -> T4<Self, T> {
        composed::max_pool2d(x, win)
    }
    fn global_avg_pool<T: Tape<f32, Self>>(x: T4<Self, T>) -> T2<Self, T> {
        composed::global_avg_pool(x)
    }
    fn batch_norm2d<T: Tape<f32, Self>>(
        x: T4<Self, T>,
        gamma: T1<Self, T>,
        beta: T1<Self, T>,
        running: &BnRunning<Self>,
        train: bool,
        cfg: BnConfig,
    ) -> (T4<Self, T>, Option<BnRunning<Self>>) {
        composed::batch_norm2d(x, gamma, beta, running, train, cfg)
    }
    fn relu4<T: Tape<f32, Self>>(x: T4<Self, T>) -> T4<Self, T> {
        composed::relu(x)
    }
    fn relu2<T: Tape<f32, Self>>(x: T2<Self, T>) -> T2<Self, T> {
        composed::relu(x)
    }
    fn linear<T: Tape<f32, Self>>(
        x: T2<Self, T>,
        w: T2<Self, T>,
        b: Option<T1<Self, T>>,
    ) -> T2<Self, T> {
        composed::linear(x, w, b)
    }
    fn l2_normalize<T: Tape<f32, Self>>(x: T2<Self, T>, eps: f32) -> T2<Self, T> {
        composed::l2_normalize(x, eps)
    }
}
