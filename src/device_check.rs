//! `recipe device-check`: every op of the project's own, run in its composed form on a
//! device, against the CPU kernels on the same random inputs — forward values and the
//! gradient of every input.
//!
//! On a CUDA build with `train.device: cuda` this is the GPU parity check; on the CPU
//! it compares the fast kernels with the composed forms the GPU runs, so the same
//! command is meaningful (and tested) on a machine without a GPU.

use dfdx::prelude::*;

use crate::nn::EngineDevice;
use crate::nn::init::Init;
use crate::nn::ops::{BnConfig, BnRunning, Window, composed};

type Flat<E> = Tensor<(usize,), f32, E, OwnedTape<f32, E>>;
type Taped<S, E> = Tensor<S, f32, E, OwnedTape<f32, E>>;
/// Output and per-input gradients of one evaluation.
type Eval = (Vec<f32>, Vec<Vec<f32>>);

/// One op at one shape: the largest relative error of its forward output and of each
/// input's gradient, device against the CPU kernel.
#[derive(Clone, Debug)]
pub struct OpParity {
    /// The op and its shape.
    pub op: String,
    /// `max|a − b| / max|b|` over the output.
    pub forward: f64,
    /// The same over every input's gradient (the worst input).
    pub gradient: f64,
}

/// The ops and shapes checked: ResNet-like sizes, small enough for the composed CPU form.
#[derive(Clone, Copy, Debug)]
enum Case {
    Conv {
        x: (usize, usize, usize, usize),
        o: usize,
        win: Window,
        bias: bool,
    },
    MaxPool {
        x: (usize, usize, usize, usize),
        win: Window,
    },
    AvgPool {
        x: (usize, usize, usize, usize),
    },
    BatchNorm {
        x: (usize, usize, usize, usize),
        train: bool,
        relu: bool,
    },
    AddRelu {
        x: (usize, usize, usize, usize),
    },
    Linear {
        n: usize,
        i: usize,
        o: usize,
    },
    L2 {
        n: usize,
        d: usize,
    },
    Bank {
        n: usize,
        d: usize,
        rows: usize,
        m: usize,
    },
}

const CASES: [Case; 12] = [
    Case::Conv {
        x: (4, 3, 32, 32),
        o: 16,
        win: Window {
            kernel: 3,
            stride: 1,
            padding: 1,
        },
        bias: false,
    },
    Case::Conv {
        x: (4, 64, 8, 8),
        o: 64,
        win: Window {
            kernel: 3,
            stride: 1,
            padding: 1,
        },
        bias: false,
    },
    Case::Conv {
        x: (4, 32, 16, 16),
        o: 64,
        win: Window {
            kernel: 1,
            stride: 2,
            padding: 0,
        },
        bias: true,
    },
    Case::Conv {
        x: (2, 3, 32, 32),
        o: 8,
        win: Window {
            kernel: 7,
            stride: 2,
            padding: 3,
        },
        bias: false,
    },
    Case::MaxPool {
        x: (4, 8, 16, 16),
        win: Window {
            kernel: 3,
            stride: 2,
            padding: 1,
        },
    },
    Case::AvgPool { x: (4, 64, 4, 4) },
    Case::BatchNorm {
        x: (4, 16, 8, 8),
        train: true,
        relu: false,
    },
    Case::BatchNorm {
        x: (4, 16, 8, 8),
        train: true,
        relu: true,
    },
    Case::BatchNorm {
        x: (4, 16, 8, 8),
        train: false,
        relu: false,
    },
    Case::AddRelu { x: (4, 16, 8, 8) },
    Case::Linear {
        n: 16,
        i: 64,
        o: 32,
    },
    Case::L2 { n: 16, d: 32 },
];

const BANK: Case = Case::Bank {
    n: 16,
    d: 32,
    rows: 200,
    m: 9,
};

fn el(s: (usize, usize, usize, usize)) -> usize {
    s.0 * s.1 * s.2 * s.3
}

impl Case {
    fn name(&self) -> String {
        match *self {
            Case::Conv { x, o, win, bias } => format!(
                "conv2d {}x{}x{}x{} → {o}, k{} s{} p{}{}",
                x.0,
                x.1,
                x.2,
                x.3,
                win.kernel,
                win.stride,
                win.padding,
                if bias { " +bias" } else { "" }
            ),
            Case::MaxPool { x, win } => format!(
                "max_pool2d {}x{}x{}x{}, k{} s{} p{}",
                x.0, x.1, x.2, x.3, win.kernel, win.stride, win.padding
            ),
            Case::AvgPool { x } => format!("global_avg_pool {}x{}x{}x{}", x.0, x.1, x.2, x.3),
            Case::BatchNorm { x, train, relu } => format!(
                "batch_norm2d{} {}x{}x{}x{} ({})",
                if relu { "+relu" } else { "" },
                x.0,
                x.1,
                x.2,
                x.3,
                if train { "train" } else { "eval" }
            ),
            Case::AddRelu { x } => format!("add_relu {}x{}x{}x{}", x.0, x.1, x.2, x.3),
            Case::Linear { n, i, o } => format!("linear {n}x{i} → {o}"),
            Case::L2 { n, d } => format!("l2_normalize {n}x{d}"),
            Case::Bank { n, d, rows, m } => {
                format!("bank_log_softmax {n}x{d} against {rows} rows, {m} per anchor")
            }
        }
    }

    /// The random inputs (gradients are taken for each).
    fn inputs(&self) -> Vec<Vec<f32>> {
        let r = |n: usize, s: u64| Init::new(s).uniform(n, 1.0);
        match *self {
            Case::Conv { x, o, win, bias } => {
                let mut v = vec![r(el(x), 1), r(o * x.1 * win.kernel * win.kernel, 2)];
                if bias {
                    v.push(r(o, 3));
                }
                v
            }
            // Distinct values, so both sides pick the same maximum.
            Case::MaxPool { x, .. } => {
                let n = el(x);
                let mut v: Vec<f32> = (0..n).map(|i| i as f32 / n as f32).collect();
                let mut rng = Init::new(4);
                let keys = rng.uniform(n, 1.0);
                let mut idx: Vec<usize> = (0..n).collect();
                idx.sort_by(|&a, &b| keys[a].total_cmp(&keys[b]));
                let base = v.clone();
                for (dst, src) in idx.into_iter().enumerate() {
                    v[dst] = base[src];
                }
                vec![v]
            }
            Case::AvgPool { x } => vec![r(el(x), 5)],
            Case::BatchNorm { x, .. } => vec![
                r(el(x), 6).iter().map(|v| 2.0 * v + 0.3).collect(),
                r(x.1, 7).iter().map(|v| v + 1.2).collect(),
                r(x.1, 8),
            ],
            Case::AddRelu { x } => vec![r(el(x), 9), r(el(x), 10)],
            Case::Linear { n, i, o } => vec![r(n * i, 11), r(o * i, 12), r(o, 13)],
            Case::L2 { n, d } => vec![r(n * d, 14)],
            Case::Bank { n, d, .. } => vec![r(n * d, 15)],
        }
    }

    /// Runs the op on `dev`: its [`EngineDevice`] kernel, or the composed form.
    fn run<E: EngineDevice>(&self, dev: &E, composed_form: bool, mut v: Vec<Flat<E>>) -> Flat<E> {
        let flat4 = |t: Taped<(usize, usize, usize, usize), E>| {
            let n = t.shape().num_elements();
            t.contiguous().reshape_like(&(n,))
        };
        let flat2 = |t: Taped<(usize, usize), E>| {
            let n = t.shape().num_elements();
            t.contiguous().reshape_like(&(n,))
        };
        match *self {
            Case::Conv { x, o, win, .. } => {
                let b = if v.len() == 3 { v.pop() } else { None };
                let w = v
                    .pop()
                    .expect("weights")
                    .reshape_like(&(o, x.1, win.kernel, win.kernel));
                let xt = v.pop().expect("input").reshape_like(&x);
                flat4(if composed_form {
                    composed::conv2d(xt, w, b, win)
                } else {
                    E::conv2d(xt, w, b, win)
                })
            }
            Case::MaxPool { x, win } => {
                let xt = v.pop().expect("input").reshape_like(&x);
                flat4(if composed_form {
                    composed::max_pool2d(xt, win)
                } else {
                    E::max_pool2d(xt, win)
                })
            }
            Case::AvgPool { x } => {
                let xt = v.pop().expect("input").reshape_like(&x);
                flat2(if composed_form {
                    composed::global_avg_pool(xt)
                } else {
                    E::global_avg_pool(xt)
                })
            }
            Case::BatchNorm { x, train, relu } => {
                let beta = v.pop().expect("beta");
                let gamma = v.pop().expect("gamma");
                let xt = v.pop().expect("input").reshape_like(&x);
                let r = |s: u64| Init::new(s).uniform(x.1, 1.0);
                let running = BnRunning {
                    mean: dev.tensor_from_vec(r(16), (x.1,)),
                    var: dev.tensor_from_vec(r(17).iter().map(|v| v + 1.5).collect(), (x.1,)),
                };
                let cfg = BnConfig::default();
                let y = match (composed_form, relu) {
                    (true, false) => {
                        composed::batch_norm2d(xt, gamma, beta, &running, train, cfg).0
                    }
                    (true, true) => composed::relu(
                        composed::batch_norm2d(xt, gamma, beta, &running, train, cfg).0,
                    ),
                    (false, false) => E::batch_norm2d(xt, gamma, beta, &running, train, cfg).0,
                    (false, true) => E::batch_norm2d_relu(xt, gamma, beta, &running, train, cfg).0,
                };
                flat4(y)
            }
            Case::AddRelu { x } => {
                let b = v.pop().expect("b").reshape_like(&x);
                let a = v.pop().expect("a").reshape_like(&x);
                flat4(if composed_form {
                    composed::relu(a + b)
                } else {
                    E::add_relu(a, b)
                })
            }
            Case::Linear { n, i, o } => {
                let b = v.pop();
                let w = v.pop().expect("weights").reshape_like(&(o, i));
                let xt = v.pop().expect("input").reshape_like(&(n, i));
                flat2(if composed_form {
                    composed::linear(xt, w, b)
                } else {
                    E::linear(xt, w, b)
                })
            }
            Case::L2 { n, d } => {
                let xt = v.pop().expect("input").reshape_like(&(n, d));
                flat2(if composed_form {
                    composed::l2_normalize(xt, 1e-12)
                } else {
                    E::l2_normalize(xt, 1e-12)
                })
            }
            Case::Bank { n, d, rows, m } => {
                let f = v.pop().expect("features").reshape_like(&(n, d));
                let bank = Init::new(18).uniform(rows * d, 1.0);
                let idx: Vec<usize> = (0..n * m).map(|k| (k * 37 + 11) % rows).collect();
                flat2(if composed_form {
                    composed::bank_logits(f, &bank, &idx, 5.0).log_softmax::<Axis<1>>()
                } else {
                    E::bank_log_softmax(f, &bank, &idx, 5.0)
                })
            }
        }
    }
}

/// The output and the gradient of `sum(out · r)` for every input, `r` fixed.
fn evaluate<E: EngineDevice>(
    dev: &E,
    case: &Case,
    composed_form: bool,
    inputs: &[Vec<f32>],
) -> Eval {
    let leaves: Vec<Tensor<(usize,), f32, E>> = inputs
        .iter()
        .map(|v| dev.tensor_from_vec(v.clone(), (v.len(),)))
        .collect();
    let y = case.run(
        dev,
        composed_form,
        leaves.iter().map(|t| t.leaky_trace()).collect(),
    );
    let out = y.as_vec();
    let r = dev.tensor_from_vec(Init::new(99).uniform(out.len(), 1.0), (out.len(),));
    let g = (y * r).sum::<(), _>().backward();
    (out, leaves.iter().map(|t| g.get(t).as_vec()).collect())
}

/// `max|a − b| / max|b|`: the error relative to the reference's scale.
pub fn relative_error(a: &[f32], b: &[f32]) -> f64 {
    if a.len() != b.len() {
        return f64::INFINITY;
    }
    let scale = b.iter().fold(0f64, |m, v| m.max(v.abs() as f64)).max(1e-12);
    let diff = a
        .iter()
        .zip(b)
        .fold(0f64, |m, (x, y)| m.max((*x as f64 - *y as f64).abs()));
    diff / scale
}

/// Every op in its composed form on `dev` (what CUDA runs) against dfdx's CPU device
/// running the project's fast kernels, plus the memory bank's op as `dev` implements it.
pub fn op_parity<E: EngineDevice>(dev: &E) -> Vec<OpParity> {
    let cpu = Cpu::default();
    let mut out = Vec::new();
    let mut push =
        |case: &Case, (ya, ga): (Vec<f32>, Vec<Vec<f32>>), (yb, gb): (Vec<f32>, Vec<Vec<f32>>)| {
            out.push(OpParity {
                op: case.name(),
                forward: relative_error(&ya, &yb),
                gradient: ga
                    .iter()
                    .zip(&gb)
                    .map(|(a, b)| relative_error(a, b))
                    .fold(0.0, f64::max),
            });
        };
    for case in CASES.iter().chain(std::iter::once(&BANK)) {
        let inputs = case.inputs();
        let reference = evaluate(&cpu, case, false, &inputs);
        let on_device = evaluate(dev, case, true, &inputs);
        push(case, on_device, reference);
    }
    // The bank op through the device's own entry point (fused on the CPU) against the
    // composed form on the CPU.
    let inputs = BANK.inputs();
    push(
        &BANK,
        evaluate(dev, &BANK, false, &inputs),
        evaluate(&cpu, &BANK, true, &inputs),
    );
    if let Some(last) = out.last_mut() {
        last.op.push_str(" (device entry point)");
    }
    out
}
