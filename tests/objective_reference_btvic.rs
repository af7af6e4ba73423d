//! Barlow Twins and VICReg against float64 PyTorch re-implementations of their
//! reference code (`tests/fixtures/make_btvic.py` → `btvic.json`: Barlow Twins with
//! PyTorch's own `BatchNorm1d(affine=False)`), against independent f64 loops with
//! central finite differences, and properties of the losses.
//!
//! Tolerances (f32 on dfdx's `Cpu` vs float64): loss relative 1e-5, gradients w.r.t. the
//! raw embeddings absolute 1e-5. Every fixture test prints the largest error it measured.

use std::sync::OnceLock;

use dfdx::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use recipe::nn::ops::T2;
use recipe::objective::{ObjectiveError, barlow_twins, vicreg};
use serde_json::Value;

const LOSS_REL: f64 = 1e-5;
const GRAD_ABS: f64 = 1e-5;

type Taped = T2<Cpu, OwnedTape<f32, Cpu>>;
type Leaf = T2<Cpu, NoneTape>;
type Scalar = Tensor<(), f32, Cpu, OwnedTape<f32, Cpu>>;

fn fixture() -> &'static Value {
    static FX: OnceLock<Value> = OnceLock::new();
    FX.get_or_init(|| {
        serde_json::from_str(include_str!("fixtures/btvic.json")).expect("btvic.json parses")
    })
}

fn cases(key: &str) -> &'static [Value] {
    fixture()[key]
        .as_array()
        .unwrap_or_else(|| panic!("fixture has no `{key}` list"))
}

fn f64s(v: &Value) -> Vec<f64> {
    v.as_array()
        .expect("a number list")
        .iter()
        .map(|x| x.as_f64().expect("a number"))
        .collect()
}

fn num(c: &Value, key: &str) -> f64 {
    c[key]
        .as_f64()
        .unwrap_or_else(|| panic!("case field `{key}`"))
}

fn int(c: &Value, key: &str) -> usize {
    c[key]
        .as_u64()
        .unwrap_or_else(|| panic!("case field `{key}`")) as usize
}

fn leaf(dev: &Cpu, data: Vec<f32>, rows: usize, cols: usize) -> Leaf {
    dev.tensor_from_vec(data, (rows, cols))
}

fn value_and_grad(z: &Leaf, f: impl FnOnce(Taped) -> Scalar) -> (f32, Vec<f32>) {
    let loss = f(z.leaky_trace());
    let value = loss.array();
    let grads = loss.backward();
    (value, grads.get(z).as_vec())
}

fn rel(got: f32, want: f64) -> f64 {
    (got as f64 - want).abs() / want.abs().max(1e-12)
}

fn max_abs(got: &[f32], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len(), "lengths");
    got.iter()
        .zip(want)
        .map(|(&g, &w)| {
            assert!(g.is_finite(), "non-finite gradient {g}");
            (g as f64 - w).abs()
        })
        .fold(0.0, f64::max)
}

fn vicreg_cfg(c: &Value) -> vicreg::VicregConfig {
    vicreg::VicregConfig {
        invariance: num(c, "invariance") as f32,
        variance: num(c, "variance") as f32,
        covariance: num(c, "covariance") as f32,
        epsilon: num(c, "epsilon") as f32,
    }
}

#[test]
fn barlow_twins_matches_reference() {
    let dev = Cpu::default();
    let (mut wl, mut wg) = (0.0f64, 0.0f64);
    for c in cases("barlow_twins") {
        let (n, d) = (int(c, "n"), int(c, "d"));
        let (lambda, scale) = (num(c, "lambd") as f32, num(c, "scale") as f32);
        let z = leaf(
            &dev,
            f64s(&c["z"]).iter().map(|&x| x as f32).collect(),
            2 * n,
            d,
        );
        let (loss, grad) = value_and_grad(&z, |x| {
            barlow_twins::loss(x, lambda, scale).expect("barlow twins")
        });
        let (el, eg) = (rel(loss, num(c, "loss")), max_abs(&grad, &f64s(&c["grad"])));
        assert!(
            el <= LOSS_REL,
            "barlow n={n} d={d}: loss {loss} vs {}",
            num(c, "loss")
        );
        assert!(eg <= GRAD_ABS, "barlow n={n} d={d}: grad error {eg:.3e}");
        (wl, wg) = (wl.max(el), wg.max(eg));
    }
    println!("barlow_twins: max loss rel {wl:.2e}, grad abs {wg:.2e}");
}

#[test]
fn vicreg_matches_reference() {
    let dev = Cpu::default();
    let (mut wl, mut wg) = (0.0f64, 0.0f64);
    for c in cases("vicreg") {
        let (n, d) = (int(c, "n"), int(c, "d"));
        let cfg = vicreg_cfg(c);
        let z = leaf(
            &dev,
            f64s(&c["z"]).iter().map(|&x| x as f32).collect(),
            2 * n,
            d,
        );
        let (loss, grad) = value_and_grad(&z, |x| vicreg::loss(x, &cfg).expect("vicreg"));
        let (el, eg) = (rel(loss, num(c, "loss")), max_abs(&grad, &f64s(&c["grad"])));
        assert!(
            el <= LOSS_REL,
            "vicreg n={n} d={d}: loss {loss} vs {}",
            num(c, "loss")
        );
        assert!(eg <= GRAD_ABS, "vicreg n={n} d={d}: grad error {eg:.3e}");
        // Each term alone: one coefficient at 1, the others at 0.
        let terms = f64s(&c["terms"]);
        for (i, want) in terms.iter().enumerate() {
            let mut one = vicreg::VicregConfig {
                invariance: 0.0,
                variance: 0.0,
                covariance: 0.0,
                ..cfg
            };
            *[&mut one.invariance, &mut one.variance, &mut one.covariance][i] = 1.0;
            let got = vicreg::loss(z.clone(), &one).expect("term").array();
            assert!(
                rel(got, *want) <= LOSS_REL,
                "vicreg term {i}: {got} vs {want}"
            );
        }
        (wl, wg) = (wl.max(el), wg.max(eg));
    }
    println!("vicreg: max loss rel {wl:.2e}, grad abs {wg:.2e}");
}

// ------------------------------------------------------ f64 loops and finite differences

fn randn(seed: u64, len: usize) -> Vec<f32> {
    // Box-Muller.
    let mut r = ChaCha8Rng::seed_from_u64(seed);
    (0..len)
        .map(|_| {
            let u1: f64 = r.gen_range(f64::EPSILON..1.0);
            let u2: f64 = r.r#gen();
            ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
        })
        .collect()
}

/// Two correlated views with per-feature offsets and scales, view-major.
fn views(seed: u64, n: usize, d: usize) -> Vec<f32> {
    let base = randn(seed, n * d);
    let noise = randn(seed + 1, 2 * n * d);
    let feat = randn(seed + 2, 2 * d);
    let mut z = Vec::with_capacity(2 * n * d);
    for v in 0..2 {
        for i in 0..n {
            for j in 0..d {
                let x = base[i * d + j] + 0.5 * noise[(v * n + i) * d + j];
                z.push(x * (0.4 + feat[j].abs()) + feat[d + j]);
            }
        }
    }
    z
}

fn column_moments(x: &[f64], n: usize, d: usize, j: usize) -> (f64, f64) {
    let mean = (0..n).map(|i| x[i * d + j]).sum::<f64>() / n as f64;
    let ss = (0..n).map(|i| (x[i * d + j] - mean).powi(2)).sum::<f64>();
    (mean, ss)
}

/// Barlow Twins in plain f64 loops.
fn barlow_ref(z: &[f64], n: usize, d: usize, lambda: f64, scale: f64) -> f64 {
    let norm = |x: &[f64]| {
        let mut out = vec![0.0; n * d];
        for j in 0..d {
            let (mean, ss) = column_moments(x, n, d, j);
            let s = (ss / n as f64 + 1e-5).sqrt();
            for i in 0..n {
                out[i * d + j] = (x[i * d + j] - mean) / s;
            }
        }
        out
    };
    let (a, b) = (norm(&z[..n * d]), norm(&z[n * d..]));
    let mut l = 0.0;
    for p in 0..d {
        for q in 0..d {
            let c = (0..n).map(|i| a[i * d + p] * b[i * d + q]).sum::<f64>() / n as f64;
            l += if p == q {
                (1.0 - c).powi(2)
            } else {
                lambda * c * c
            };
        }
    }
    scale * l
}

/// VICReg in plain f64 loops: returns (invariance, variance, covariance).
fn vicreg_ref(z: &[f64], n: usize, d: usize, eps: f64) -> [f64; 3] {
    let inv = (0..n * d)
        .map(|k| (z[k] - z[n * d + k]).powi(2))
        .sum::<f64>()
        / (n * d) as f64;
    let (mut var, mut cov) = (0.0, 0.0);
    for x in [&z[..n * d], &z[n * d..]] {
        let means: Vec<f64> = (0..d).map(|j| column_moments(x, n, d, j).0).collect();
        for p in 0..d {
            let c = |q: usize| {
                (0..n)
                    .map(|i| (x[i * d + p] - means[p]) * (x[i * d + q] - means[q]))
                    .sum::<f64>()
                    / (n as f64 - 1.0)
            };
            var += (1.0 - (c(p) + eps).sqrt()).max(0.0) / d as f64 / 2.0;
            for q in (0..d).filter(|&q| q != p) {
                cov += c(q).powi(2) / d as f64;
            }
        }
    }
    [inv, var, cov]
}

/// Rust loss vs the f64 loops (relative 1e-5) and the Rust gradient vs central
/// differences of the loops (h = 1e-6; absolute 2e-5 scaled by max(1, |g|)).
fn check_fd(what: &str, x: &[f32], loss: f32, grad: &[f32], f: impl Fn(&[f64]) -> f64) {
    let x64: Vec<f64> = x.iter().map(|&v| v as f64).collect();
    let want = f(&x64);
    assert!(rel(loss, want) <= 1e-5, "{what}: loss {loss} vs f64 {want}");
    let h = 1e-6;
    for j in 0..x.len() {
        let (mut p, mut m) = (x64.clone(), x64.clone());
        p[j] += h;
        m[j] -= h;
        let fd = (f(&p) - f(&m)) / (2.0 * h);
        let err = (grad[j] as f64 - fd).abs() / fd.abs().max(1.0);
        assert!(
            err <= 2e-5,
            "{what}: d/dz[{j}] {} vs finite difference {fd}",
            grad[j]
        );
    }
}

#[test]
fn barlow_twins_matches_f64_loops_and_finite_differences() {
    let dev = Cpu::default();
    for (seed, n, d, lambda, scale) in [(1, 5, 3, 0.0051, 1.0), (2, 7, 6, 0.3, 0.5)] {
        let x = views(seed, n, d);
        let z = leaf(&dev, x.clone(), 2 * n, d);
        let (loss, grad) = value_and_grad(&z, |t| {
            barlow_twins::loss(t, lambda as f32, scale as f32).unwrap()
        });
        check_fd(&format!("barlow {seed}"), &x, loss, &grad, |z| {
            barlow_ref(z, n, d, lambda, scale)
        });
    }
}

#[test]
fn vicreg_matches_f64_loops_and_finite_differences() {
    let dev = Cpu::default();
    for (seed, n, d, w, eps) in [
        (3, 5, 3, [25.0, 25.0, 1.0], 1e-4),
        (4, 7, 6, [1.0, 3.0, 2.0], 1e-2),
    ] {
        // Shrink some features so the variance hinge is active for them only.
        let x: Vec<f32> = views(seed, n, d)
            .iter()
            .enumerate()
            .map(|(k, v)| if k % d % 2 == 0 { v * 0.3 } else { *v })
            .collect();
        let cfg = vicreg::VicregConfig {
            invariance: w[0] as f32,
            variance: w[1] as f32,
            covariance: w[2] as f32,
            epsilon: eps as f32,
        };
        let z = leaf(&dev, x.clone(), 2 * n, d);
        let (loss, grad) = value_and_grad(&z, |t| vicreg::loss(t, &cfg).unwrap());
        check_fd(&format!("vicreg {seed}"), &x, loss, &grad, |z| {
            let t = vicreg_ref(z, n, d, eps);
            w[0] * t[0] + w[1] * t[1] + w[2] * t[2]
        });
    }
}

// ------------------------------------------------------------------------ properties

#[test]
fn identical_views_have_no_vicreg_invariance_term() {
    let dev = Cpu::default();
    let (n, d) = (6, 4);
    let one = randn(9, n * d);
    let z = leaf(&dev, [one.clone(), one].concat(), 2 * n, d);
    let inv_only = vicreg::VicregConfig {
        invariance: 1.0,
        variance: 0.0,
        covariance: 0.0,
        epsilon: 1e-4,
    };
    let (loss, grad) = value_and_grad(&z, |t| vicreg::loss(t, &inv_only).unwrap());
    assert_eq!(loss, 0.0);
    assert!(grad.iter().all(|g| *g == 0.0));
}

/// Rows `±1` patterns of a Hadamard matrix: the columns are standardised (mean 0,
/// biased variance 1) and exactly uncorrelated.
fn hadamard_columns(n: usize, d: usize) -> Vec<f32> {
    let mut z = Vec::with_capacity(n * d);
    for i in 0..n {
        for j in 0..d {
            // Walsh function j + 1 at i: (−1)^popcount(i & (j + 1)).
            z.push(if (i & (j + 1)).count_ones() % 2 == 0 {
                1.0
            } else {
                -1.0
            });
        }
    }
    z
}

#[test]
fn decorrelated_standardised_views_have_no_off_diagonal_terms() {
    let dev = Cpu::default();
    let (n, d) = (8, 7);
    let h = hadamard_columns(n, d);
    // Both views equal: C = aᵀa/N is the identity up to BN's ε, so with λ the only
    // weight (its diagonal is 1/(1 + ε), which costs (1 − 1/(1 + ε))² per feature).
    let z = leaf(&dev, [h.clone(), h.clone()].concat(), 2 * n, d);
    let at = |lambda: f32| barlow_twins::loss(z.clone(), lambda, 1.0).unwrap().array();
    let diag = d as f64 * (1.0 - 1.0 / (1.0f64 + 1e-5)).powi(2);
    assert!((at(0.0) as f64 - diag).abs() < 1e-9, "{}", at(0.0));
    assert!(
        (at(0.0) - at(1.0)).abs() < 1e-9,
        "off-diagonal {}",
        at(1.0) - at(0.0)
    );
    // Same for VICReg's covariance term (scaled columns: unbiased variance above 1, so
    // the variance hinge is 0 as well), and the invariance term is 0.
    let scaled: Vec<f32> = h.iter().map(|v| v * 2.0).collect();
    let z = leaf(&dev, [scaled.clone(), scaled].concat(), 2 * n, d);
    let cfg = vicreg::VicregConfig {
        invariance: 25.0,
        variance: 25.0,
        covariance: 1.0,
        epsilon: 1e-4,
    };
    let l = vicreg::loss(z, &cfg).unwrap().array();
    assert!(l.abs() < 1e-9, "{l}");
}

#[test]
fn barlow_twins_is_invariant_to_image_order_and_feature_affine_maps() {
    let dev = Cpu::default();
    let (n, d) = (6, 5);
    let x = views(5, n, d);
    let base = barlow_twins::loss(leaf(&dev, x.clone(), 2 * n, d), 0.05, 1.0)
        .unwrap()
        .array();
    // Shuffle the images (the same permutation in both views) and map each feature of
    // each view by its own positive affine map: the batch norm removes both.
    let perm = [3usize, 0, 5, 1, 4, 2];
    let mut y = vec![0.0f32; x.len()];
    for v in 0..2 {
        for (i, &p) in perm.iter().enumerate() {
            for j in 0..d {
                let s = 1.0 + 0.5 * (j + v) as f32;
                y[(v * n + i) * d + j] = x[(v * n + p) * d + j] * s + 3.0 - j as f32;
            }
        }
    }
    let moved = barlow_twins::loss(leaf(&dev, y, 2 * n, d), 0.05, 1.0)
        .unwrap()
        .array();
    assert!(
        (base - moved).abs() <= 1e-4 * base.abs(),
        "{base} vs {moved}"
    );
}

#[test]
fn impossible_inputs_are_errors_not_panics() {
    let dev = Cpu::default();
    let cfg = vicreg::VicregConfig {
        invariance: 25.0,
        variance: 25.0,
        covariance: 1.0,
        epsilon: 1e-4,
    };
    // One image per view: no batch statistics.
    let one = leaf(&dev, vec![1.0, 2.0, 3.0, 4.0], 2, 2);
    assert!(matches!(
        barlow_twins::loss(one.clone(), 0.005, 1.0),
        Err(ObjectiveError::Shape(_))
    ));
    assert!(matches!(
        vicreg::loss(one, &cfg),
        Err(ObjectiveError::Shape(_))
    ));
    // An odd row count is not two views.
    let odd = leaf(&dev, vec![0.5; 6], 3, 2);
    assert!(barlow_twins::loss(odd.clone(), 0.005, 1.0).is_err());
    assert!(vicreg::loss(odd, &cfg).is_err());
    // Bad hyper-parameters and non-finite embeddings.
    let z = leaf(&dev, views(1, 4, 3), 8, 3);
    assert!(matches!(
        barlow_twins::loss(z.clone(), -1.0, 1.0),
        Err(ObjectiveError::Config(_))
    ));
    assert!(matches!(
        barlow_twins::loss(z.clone(), 0.1, 0.0),
        Err(ObjectiveError::Config(_))
    ));
    let neg = vicreg::VicregConfig {
        covariance: -1.0,
        ..cfg
    };
    assert!(matches!(
        vicreg::loss(z.clone(), &neg),
        Err(ObjectiveError::Config(_))
    ));
    let no_eps = vicreg::VicregConfig {
        epsilon: 0.0,
        ..cfg
    };
    assert!(matches!(
        vicreg::loss(z, &no_eps),
        Err(ObjectiveError::Config(_))
    ));
    let mut bad = views(1, 4, 3);
    bad[5] = f32::NAN;
    let bad = leaf(&dev, bad, 8, 3);
    assert!(matches!(
        barlow_twins::loss(bad.clone(), 0.1, 1.0),
        Err(ObjectiveError::NonFinite(_))
    ));
    assert!(matches!(
        vicreg::loss(bad, &cfg),
        Err(ObjectiveError::NonFinite(_))
    ));
}
