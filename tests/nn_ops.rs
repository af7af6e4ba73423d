//! Each fast CPU kernel against the composed dfdx reference (forward and gradients),
//! and a central finite-difference check of the fast kernel's gradients.

use dfdx::prelude::*;
use recipe::nn::init::Init;
use recipe::nn::ops::{BnConfig, BnRunning, Window, composed, cpu};

type Flat = Tensor<(usize,), f32, Cpu, OwnedTape<f32, Cpu>>;
type Taped4 = recipe::nn::ops::T4<Cpu, OwnedTape<f32, Cpu>>;
type Op = dyn Fn(&Cpu, Vec<Flat>) -> Flat;

/// Run first by every test; `nn_ops_portable.rs` includes this file and defines
/// its own, which switches the kernels to their portable paths.
#[allow(dead_code)]
fn before_kernels() {}

/// Runs `f` on taped copies of `inputs`; returns the output and the gradient of
/// `sum(out * r)` for every input (r fixed by `seed`).
fn eval(dev: &Cpu, inputs: &[Vec<f32>], f: &Op, seed: u64) -> (Vec<f32>, Vec<Vec<f32>>) {
    let leaves: Vec<Tensor<(usize,), f32, Cpu>> = inputs
        .iter()
        .map(|v| dev.tensor_from_vec(v.clone(), (v.len(),)))
        .collect();
    let taped: Vec<Flat> = leaves.iter().map(|t| t.leaky_trace()).collect();
    let y = f(dev, taped);
    let out = y.as_vec();
    let r = dev.tensor_from_vec(Init::new(seed).uniform(out.len(), 1.0), (out.len(),));
    let loss = (y * r).sum::<(), _>();
    let g = loss.backward();
    let grads = leaves.iter().map(|t| g.get(t).as_vec()).collect();
    (out, grads)
}

fn assert_close(a: &[f32], b: &[f32], tol: f32, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        let scale = 1.0f32.max(x.abs()).max(y.abs());
        assert!(
            (x - y).abs() <= tol * scale,
            "{what}[{i}]: {x} vs {y} (tol {tol})"
        );
    }
}

/// Fast vs reference on forward and all gradients, then finite differences on the
/// fast kernel for up to 12 coordinates of every input.
fn check(name: &str, inputs: Vec<Vec<f32>>, fast: &Op, reference: &Op, fd_eps: f32) {
    let dev = Cpu::default();
    let (yf, gf) = eval(&dev, &inputs, fast, 9);
    let (yr, gr) = eval(&dev, &inputs, reference, 9);
    assert_close(&yf, &yr, 1e-4, &format!("{name} forward"));
    for (i, (a, b)) in gf.iter().zip(&gr).enumerate() {
        assert_close(a, b, 1e-4, &format!("{name} grad of input {i}"));
    }
    let loss = |inp: &[Vec<f32>]| -> f64 {
        let (y, _) = eval(&dev, inp, fast, 9);
        let r = Init::new(9).uniform(y.len(), 1.0);
        y.iter()
            .zip(&r)
            .map(|(a, b)| (*a as f64) * (*b as f64))
            .sum()
    };
    for (i, g) in gf.iter().enumerate() {
        let step = (g.len() / 12).max(1);
        for j in (0..g.len()).step_by(step).take(12) {
            let mut plus = inputs.clone();
            plus[i][j] += fd_eps;
            let mut minus = inputs.clone();
            minus[i][j] -= fd_eps;
            let fd = ((loss(&plus) - loss(&minus)) / (2.0 * fd_eps as f64)) as f32;
            let scale = 1.0f32.max(fd.abs()).max(g[j].abs());
            assert!(
                (fd - g[j]).abs() <= 2e-2 * scale,
                "{name}: finite difference of input {i}[{j}] = {fd}, analytic {}",
                g[j]
            );
        }
    }
}

fn rand(n: usize, seed: u64) -> Vec<f32> {
    Init::new(seed).uniform(n, 1.0)
}

fn four(t: Flat, s: (usize, usize, usize, usize)) -> Taped4 {
    t.reshape_like(&s)
}

fn flat4(t: Taped4) -> Flat {
    let n = t.shape().num_elements();
    t.contiguous().reshape_like(&(n,))
}

fn flat2(t: Tensor<(usize, usize), f32, Cpu, OwnedTape<f32, Cpu>>) -> Flat {
    let n = t.shape().num_elements();
    t.contiguous().reshape_like(&(n,))
}

fn conv_case(n: usize, c: usize, h: usize, o: usize, win: Window, bias: bool) {
    conv_case_hw(n, c, (h, h + 1), o, win, bias);
}

fn conv_case_hw(n: usize, c: usize, (h, w): (usize, usize), o: usize, win: Window, bias: bool) {
    let k = win.kernel;
    let xs = (n, c, h, w);
    let ws = (o, c, k, k);
    let mut inputs = vec![rand(n * c * h * w, 1), rand(o * c * k * k, 2)];
    if bias {
        inputs.push(rand(o, 3));
    }
    let make = |fast: bool| -> Box<Op> {
        Box::new(move |_dev: &Cpu, mut v: Vec<Flat>| {
            let b = if v.len() == 3 { v.pop() } else { None };
            let w = four(v.pop().unwrap(), ws);
            let x = four(v.pop().unwrap(), xs);
            let y = if fast {
                cpu::conv2d(x, w, b, win)
            } else {
                composed::conv2d(x, w, b, win)
            };
            flat4(y)
        })
    };
    check(
        &format!("conv2d {win:?} bias={bias}"),
        inputs,
        &*make(true),
        &*make(false),
        1e-2,
    );
}

#[test]
fn conv2d_matches_reference_and_finite_differences() {
    crate::before_kernels();
    conv_case(3, 2, 5, 3, Window::new(3, 1, 1), true);
    conv_case(3, 2, 6, 4, Window::new(3, 2, 1), false);
    conv_case(2, 3, 5, 2, Window::new(1, 1, 0), true);
    conv_case(2, 3, 5, 2, Window::new(1, 2, 0), false);
    conv_case(1, 1, 7, 2, Window::new(7, 2, 3), false);
    // Large enough planes for the stride-1 wide path (on AVX-512 machines): several
    // samples per product, more rows than one tile and an inner dimension over one
    // block (30·3·3 = 270), a 2×2 kernel without padding, padding 2 (no gy margin).
    conv_case(3, 3, 16, 5, Window::new(3, 1, 1), true);
    conv_case(2, 30, 16, 20, Window::new(3, 1, 1), false);
    conv_case(2, 2, 12, 3, Window::new(2, 1, 0), true);
    conv_case(1, 2, 20, 3, Window::new(3, 1, 2), false);
    // Over 32 channels the wide path runs one `gemm` per kernel tap.
    conv_case(2, 40, 16, 36, Window::new(3, 1, 1), true);
    conv_case(2, 33, 6, 34, Window::new(1, 1, 0), false);
    // Rows 4 and 12 wide: the AVX2 products' column table takes runs of four (a 4×4
    // plane sits in a 5×5 grid).
    conv_case_hw(3, 20, (4, 4), 17, Window::new(3, 1, 1), true);
    conv_case_hw(2, 17, (6, 12), 24, Window::new(3, 1, 1), false);
    // Winograd F(2×2, 3×3): even planes from 8×8, 32 channels and up, a
    // rectangular one.
    conv_case_hw(2, 33, (8, 10), 34, Window::new(3, 1, 1), true);
    // Strided convolutions: these small planes waste too much on the wide path and
    // run im2col, except a stride equal to the kernel (no discarded columns), which
    // runs the wide path's phase planes. The unit test `paths_agree` checks the wide
    // path against im2col on the strided shapes it no longer takes.
    conv_case(2, 3, 16, 5, Window::new(3, 2, 1), true);
    conv_case(2, 36, 16, 40, Window::new(3, 2, 1), false);
    conv_case(2, 2, 18, 3, Window::new(3, 3, 0), true);
}

/// `conv2d_data` (a network's first layer on images) gives the output and the
/// weight and bias gradients of `conv2d`, bit for bit, on every path (im2col,
/// wide, strided, the whole-batch one), and leaves its input without a gradient.
#[test]
fn conv2d_data_skips_only_the_input_gradient() {
    crate::before_kernels();
    let dev = Cpu::default();
    for (n, c, h, o, win) in [
        (3, 3, 8, 4, Window::new(3, 1, 1)),
        (2, 1, 12, 32, Window::new(3, 1, 1)),
        (2, 3, 16, 20, Window::new(7, 2, 3)),
        (4, 40, 16, 36, Window::new(3, 1, 1)),
        (8, 64, 4, 64, Window::new(3, 1, 1)),
        (2, 24, 9, 16, Window::new(3, 2, 1)),
    ] {
        let k = win.kernel;
        let x: Tensor<(usize, usize, usize, usize), f32, Cpu> =
            dev.tensor_from_vec(rand(n * c * h * h, 1), (n, c, h, h));
        let w: Tensor<(usize, usize, usize, usize), f32, Cpu> =
            dev.tensor_from_vec(rand(o * c * k * k, 2), (o, c, k, k));
        let b: Tensor<(usize,), f32, Cpu> = dev.tensor_from_vec(rand(o, 3), (o,));
        let run = |data: bool| {
            let g = Gradients::leaky();
            let (xt, wt, bt) = (x.trace(g), w.clone().retaped(), b.clone().retaped());
            let y = if data {
                cpu::conv2d_data(xt, wt, Some(bt), win)
            } else {
                cpu::conv2d(xt, wt, Some(bt), win)
            };
            let r = dev.tensor_from_vec(rand(y.shape().num_elements(), 4), *y.shape());
            let out = y.as_vec();
            let grads = (y * r).sum::<(), _>().backward();
            (out, grads)
        };
        let (yd, gd) = run(true);
        let (yf, gf) = run(false);
        let what = format!("n{n} c{c} {h}² o{o} {win:?}");
        assert_eq!(yd, yf, "{what}: output");
        assert_eq!(
            gd.get(&w).as_vec(),
            gf.get(&w).as_vec(),
            "{what}: weight gradient"
        );
        assert_eq!(
            gd.get(&b).as_vec(),
            gf.get(&b).as_vec(),
            "{what}: bias gradient"
        );
        assert!(
            gf.get(&x).as_vec().iter().any(|v| *v != 0.0),
            "{what}: conv2d's input gradient"
        );
        // Gradients::get unwraps a missing entry.
        let missing = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| gd.get(&x)));
        assert!(
            missing.is_err(),
            "{what}: conv2d_data computed an input gradient"
        );
    }
}

/// Distinct values spaced 0.01 apart, shuffled, so that max and ReLU have no ties
/// or kinks within the finite-difference step.
fn distinct(n: usize, seed: u64) -> Vec<f32> {
    let r = Init::new(seed).uniform(n, 1.0);
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|a, b| r[*a].total_cmp(&r[*b]));
    let mut v = vec![0.0; n];
    for (rank, &i) in order.iter().enumerate() {
        v[i] = (rank as f32 - n as f32 / 2.0) * 0.01 + 0.005;
    }
    v
}

#[test]
fn max_pool_matches_reference_and_finite_differences() {
    crate::before_kernels();
    // Outputs whose window lies inside the plane take a fast interior: even and
    // odd planes, and one too small to have any interior.
    for (win, h) in [
        (Window::new(3, 2, 1), 6),
        (Window::new(3, 2, 1), 9),
        (Window::new(3, 2, 1), 2),
        (Window::new(2, 2, 0), 5),
    ] {
        let xs = (2, 3, h, h);
        let make = |fast: bool| -> Box<Op> {
            Box::new(move |_d: &Cpu, mut v: Vec<Flat>| {
                let x = four(v.pop().unwrap(), xs);
                flat4(if fast {
                    cpu::max_pool2d(x, win)
                } else {
                    composed::max_pool2d(x, win)
                })
            })
        };
        check(
            "max_pool",
            vec![distinct(2 * 3 * h * h, 4)],
            &*make(true),
            &*make(false),
            2e-3,
        );
    }
}

#[test]
fn global_avg_pool_matches_reference_and_finite_differences() {
    crate::before_kernels();
    let xs = (3, 2, 4, 5);
    let make = |fast: bool| -> Box<Op> {
        Box::new(move |_d: &Cpu, mut v: Vec<Flat>| {
            let x = four(v.pop().unwrap(), xs);
            flat2(if fast {
                cpu::global_avg_pool(x)
            } else {
                composed::global_avg_pool(x)
            })
        })
    };
    check(
        "avg_pool",
        vec![rand(120, 5)],
        &*make(true),
        &*make(false),
        1e-2,
    );
}

#[test]
fn relu_matches_reference_and_finite_differences() {
    crate::before_kernels();
    let make = |fast: bool| -> Box<Op> {
        Box::new(move |_d: &Cpu, mut v: Vec<Flat>| {
            let x = four(v.pop().unwrap(), (2, 3, 2, 2));
            flat4(if fast {
                cpu::relu(x)
            } else {
                composed::relu(x)
            })
        })
    };
    check(
        "relu",
        vec![distinct(24, 6)],
        &*make(true),
        &*make(false),
        2e-3,
    );
}

fn bn_case(train: bool, xs: (usize, usize, usize, usize), one_d: bool) {
    let c = xs.1;
    let running = move |dev: &Cpu| BnRunning {
        mean: dev.tensor_from_vec(rand(c, 11), (c,)),
        var: dev.tensor_from_vec(rand(c, 12).iter().map(|v| v + 1.5).collect(), (c,)),
    };
    let make = |fast: bool| -> Box<Op> {
        Box::new(move |dev: &Cpu, mut v: Vec<Flat>| {
            let beta = v.pop().unwrap();
            let gamma = v.pop().unwrap();
            let x = v.pop().unwrap();
            let r = running(dev);
            let cfg = BnConfig::default();
            if one_d {
                let x = x.reshape_like(&(xs.0, c));
                let (y, _) = if fast {
                    <Cpu as recipe::nn::EngineDevice>::batch_norm1d(x, gamma, beta, &r, train, cfg)
                } else {
                    let x4 = x.reshape_like(&(xs.0, c, 1usize, 1usize));
                    let (y, s) = composed::batch_norm2d(x4, gamma, beta, &r, train, cfg);
                    (y.reshape_like(&(xs.0, c)), s)
                };
                flat2(y)
            } else {
                let x = four(x, xs);
                let (y, _) = if fast {
                    cpu::batch_norm2d(x, gamma, beta, &r, train, cfg)
                } else {
                    composed::batch_norm2d(x, gamma, beta, &r, train, cfg)
                };
                flat4(y)
            }
        })
    };
    let n = xs.0 * xs.1 * xs.2 * xs.3;
    let gamma: Vec<f32> = rand(c, 8).iter().map(|v| v + 1.2).collect();
    check(
        &format!("batch_norm train={train} 1d={one_d}"),
        vec![
            rand(n, 7).iter().map(|v| 2.0 * v + 0.3).collect(),
            gamma,
            rand(c, 9),
        ],
        &*make(true),
        &*make(false),
        1e-2,
    );
}

#[test]
fn batch_norm_matches_reference_and_finite_differences() {
    crate::before_kernels();
    bn_case(true, (3, 2, 3, 2), false);
    bn_case(false, (3, 2, 3, 2), false);
    bn_case(true, (6, 4, 1, 1), true);
    bn_case(false, (6, 4, 1, 1), true);
}

#[test]
fn batch_norm_running_stats_follow_pytorch() {
    crate::before_kernels();
    let dev = Cpu::default();
    let (n, c, h, w) = (4, 2, 3, 3);
    let x = rand(n * c * h * w, 21);
    let r = BnRunning {
        mean: dev.tensor_from_vec(vec![0.5, -0.5], (c,)),
        var: dev.tensor_from_vec(vec![2.0, 0.5], (c,)),
    };
    // PyTorch: running = 0.9 * running + 0.1 * batch statistic (unbiased variance).
    let m = n * h * w;
    let mut expect_mean = Vec::new();
    let mut expect_var = Vec::new();
    for ci in 0..c {
        let vals: Vec<f64> = (0..n)
            .flat_map(|ni| {
                let base = (ni * c + ci) * h * w;
                x[base..base + h * w]
                    .iter()
                    .map(|v| *v as f64)
                    .collect::<Vec<_>>()
            })
            .collect();
        let mean = vals.iter().sum::<f64>() / m as f64;
        let var = vals.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (m - 1) as f64;
        expect_mean.push((0.9 * [0.5, -0.5][ci] + 0.1 * mean) as f32);
        expect_var.push((0.9 * [2.0, 0.5][ci] + 0.1 * var) as f32);
    }
    let g = dev.tensor_from_vec(vec![1.0; c], (c,));
    let b = dev.tensor_from_vec(vec![0.0; c], (c,));
    for fast in [true, false] {
        let xt = dev.tensor_from_vec(x.clone(), (n, c, h, w));
        let (_, new) = if fast {
            cpu::batch_norm2d(xt, g.clone(), b.clone(), &r, true, BnConfig::default())
        } else {
            composed::batch_norm2d(xt, g.clone(), b.clone(), &r, true, BnConfig::default())
        };
        let new = new.expect("training mode returns new statistics");
        assert_close(&new.mean.as_vec(), &expect_mean, 1e-5, "running mean");
        assert_close(&new.var.as_vec(), &expect_var, 1e-5, "running var");
    }
}

#[test]
fn linear_matches_reference_and_finite_differences() {
    crate::before_kernels();
    for bias in [true, false] {
        let (n, fin, fout) = (3, 5, 4);
        let make = |fast: bool| -> Box<Op> {
            Box::new(move |_d: &Cpu, mut v: Vec<Flat>| {
                let b = if v.len() == 3 { v.pop() } else { None };
                let w = v.pop().unwrap().reshape_like(&(fout, fin));
                let x = v.pop().unwrap().reshape_like(&(n, fin));
                flat2(if fast {
                    cpu::linear(x, w, b)
                } else {
                    composed::linear(x, w, b)
                })
            })
        };
        let mut inputs = vec![rand(n * fin, 31), rand(fout * fin, 32)];
        if bias {
            inputs.push(rand(fout, 33));
        }
        check("linear", inputs, &*make(true), &*make(false), 1e-2);
    }
}

#[test]
fn l2_normalize_matches_reference_and_finite_differences() {
    crate::before_kernels();
    let (n, f) = (4, 6);
    let make = |fast: bool| -> Box<Op> {
        Box::new(move |_d: &Cpu, mut v: Vec<Flat>| {
            let x = v.pop().unwrap().reshape_like(&(n, f));
            flat2(if fast {
                cpu::l2_normalize(x, 1e-12)
            } else {
                composed::l2_normalize(x, 1e-12)
            })
        })
    };
    check(
        "l2_normalize",
        vec![rand(n * f, 41)],
        &*make(true),
        &*make(false),
        1e-2,
    );
    // Rows come out with unit norm.
    let dev = Cpu::default();
    let y = cpu::l2_normalize(dev.tensor_from_vec(rand(n * f, 42), (n, f)), 1e-12).as_vec();
    for r in y.chunks(f) {
        let norm: f32 = r.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5);
    }
}

#[test]
fn fused_batch_norm_relu_and_add_relu_match_reference() {
    crate::before_kernels();
    let xs = (3, 2, 3, 2);
    let n = 36;
    let c = 2;
    for train in [true, false] {
        let make = move |fast: bool| -> Box<Op> {
            Box::new(move |dev: &Cpu, mut v: Vec<Flat>| {
                let beta = v.pop().unwrap();
                let gamma = v.pop().unwrap();
                let x = four(v.pop().unwrap(), xs);
                let r = BnRunning {
                    mean: dev.tensor_from_vec(vec![0.1, -0.2], (c,)),
                    var: dev.tensor_from_vec(vec![1.5, 0.7], (c,)),
                };
                let cfg = BnConfig::default();
                flat4(if fast {
                    cpu::batch_norm2d_relu(x, gamma, beta, &r, train, cfg).0
                } else {
                    composed::relu(composed::batch_norm2d(x, gamma, beta, &r, train, cfg).0)
                })
            })
        };
        check(
            &format!("batch_norm_relu train={train}"),
            vec![distinct(n, 51), vec![1.1, 0.8], vec![0.05, -0.1]],
            &*make(true),
            &*make(false),
            5e-4,
        );
    }
    let make = |fast: bool| -> Box<Op> {
        Box::new(move |_d: &Cpu, mut v: Vec<Flat>| {
            let b = four(v.pop().unwrap(), xs);
            let a = four(v.pop().unwrap(), xs);
            flat4(if fast {
                cpu::add_relu(a, b)
            } else {
                composed::relu(a + b)
            })
        })
    };
    let a = distinct(n, 52);
    let b: Vec<f32> = a.iter().map(|v| v * 0.5).collect();
    check("add_relu", vec![a, b], &*make(true), &*make(false), 2e-3);
}
