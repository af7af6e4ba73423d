//! RotNet's rotation prediction and SupCon's `contrast_mode: one` against float64
//! PyTorch references (`tests/fixtures/make_rotation.py`, output `rotation.json`; the
//! script cites the repository, file and function each case follows), plus the
//! rotation's group properties, the random-draw mode and bad input.
//!
//! Tolerances (f32 on dfdx's `Cpu` vs float64): loss relative 1e-5, gradients absolute
//! 1e-5; rotated pixels exactly.

use std::sync::OnceLock;

use dfdx::prelude::*;
use recipe::data::ViewBatch;
use recipe::nn::ops::T2;
use recipe::objective::{ObjectiveError, rotation, supcon};
use serde_json::Value;

const LOSS_REL: f64 = 1e-5;
const GRAD_ABS: f64 = 1e-5;

type Taped = T2<Cpu, OwnedTape<f32, Cpu>>;
type Leaf = T2<Cpu, NoneTape>;

fn fixture() -> &'static Value {
    static FX: OnceLock<Value> = OnceLock::new();
    FX.get_or_init(|| {
        serde_json::from_str(include_str!("fixtures/rotation.json")).expect("rotation.json parses")
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

fn f32s(v: &Value) -> Vec<f32> {
    f64s(v).into_iter().map(|x| x as f32).collect()
}

fn ints(v: &Value) -> Vec<u64> {
    v.as_array()
        .expect("an integer list")
        .iter()
        .map(|x| x.as_u64().expect("an integer"))
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

fn name(c: &Value) -> &str {
    c["name"].as_str().unwrap_or("?")
}

fn check_abs(got: &[f32], want: &[f64], what: &str) -> f64 {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let e = got
        .iter()
        .zip(want)
        .map(|(&g, &w)| {
            assert!(g.is_finite(), "{what}: non-finite {g}");
            (g as f64 - w).abs()
        })
        .fold(0.0, f64::max);
    assert!(e <= GRAD_ABS, "{what}: max abs error {e:.3e}");
    e
}

fn check_loss(got: f32, want: f64, what: &str) -> f64 {
    assert!(got.is_finite(), "{what}: loss {got}");
    let e = (got as f64 - want).abs() / want.abs().max(1e-12);
    assert!(
        e <= LOSS_REL,
        "{what}: loss {got} vs {want} (rel error {e:.3e})"
    );
    e
}

/// `f` on a traced copy of `z`: the loss and d loss / d z.
fn value_and_grad<S: Shape>(
    z: &Tensor<S, f32, Cpu>,
    f: impl FnOnce(
        Tensor<S, f32, Cpu, OwnedTape<f32, Cpu>>,
    ) -> Tensor<(), f32, Cpu, OwnedTape<f32, Cpu>>,
) -> (f32, Vec<f32>) {
    let loss = f(z.leaky_trace());
    let value = loss.array();
    let grads = loss.backward();
    (value, grads.get(z).as_vec())
}

fn view(data: Vec<f32>, n: usize, c: usize, s: usize) -> ViewBatch {
    ViewBatch {
        data,
        shape: [n, c, s, s],
    }
}

#[test]
fn rotation_direction_is_torch_rot90() {
    let fx = &fixture()["rotation_direction"];
    let (c, s) = (int(fx, "channels"), int(fx, "size"));
    let x = f32s(&fx["x"]);
    assert_eq!(x.len(), c * s * s);
    for (k, want) in fx["rotated"].as_array().unwrap().iter().enumerate() {
        let got = rotation::rotate_square(&x, s, k as u8);
        assert_eq!(got, f32s(want), "{} quarter turns", k);
        // The same through a view of two copies of the image.
        let v = view([x.clone(), x.clone()].concat(), 2, c, s);
        let r = rotation::rotate_view(&v, |_| k as u8).unwrap();
        assert_eq!(r.shape, v.shape);
        assert_eq!(r.data, [f32s(want), f32s(want)].concat());
    }
}

#[test]
fn rotations_form_the_group_of_quarter_turns() {
    let s = 5;
    let x: Vec<f32> = (0..2 * s * s).map(|i| (i as f32 * 0.37).sin()).collect();
    for k in 0..4u8 {
        let once = rotation::rotate_square(&x, s, k);
        // The backward of a rotation is the inverse rotation: k then 4 − k is the identity.
        assert_eq!(rotation::rotate_square(&once, s, (4 - k) % 4), x);
        for j in 0..4u8 {
            let two = rotation::rotate_square(&once, s, j);
            assert_eq!(two, rotation::rotate_square(&x, s, (k + j) % 4), "{k}+{j}");
        }
    }
    // A rotation by 90° moves the top row to the left column, read bottom up (counter-
    // clockwise): out[i][0] = in[0][S−1−i].
    let r = rotation::rotate_square(&x, s, 1);
    for i in 0..s {
        assert_eq!(r[i * s], x[s - 1 - i]);
    }
}

#[test]
fn cross_entropy_matches_reference() {
    let dev = Cpu::default();
    let (mut wl, mut wg) = (0.0f64, 0.0f64);
    for c in cases("cross_entropy") {
        let (m, k) = (int(c, "rows"), int(c, "classes"));
        let targets: Vec<usize> = ints(&c["targets"])
            .into_iter()
            .map(|t| t as usize)
            .collect();
        let z: Leaf = dev.tensor_from_vec(f32s(&c["logits"]), (m, k));
        let (loss, grad) = value_and_grad(&z, |x| rotation::loss(x, &targets).expect("loss"));
        let what = format!("cross_entropy {}", name(c));
        wl = wl.max(check_loss(loss, num(c, "loss"), &what));
        wg = wg.max(check_abs(&grad, &f64s(&c["grad"]), &what));
    }
    println!("cross_entropy: max loss rel {wl:.2e}, grad abs {wg:.2e}");
}

/// Logits `W·vec(x) + b` of the rotated batch, for each row of `rows` (`(M, F)`).
fn linear_logits(
    dev: &Cpu,
    rows: &[f32],
    m: usize,
    f: usize,
    w: Taped,
    b: Tensor<(usize,), f32, Cpu, OwnedTape<f32, Cpu>>,
) -> Taped {
    let k = b.shape().0;
    let xt: Leaf = dev.tensor_from_vec(rows.to_vec(), (m, f));
    // (k, F)·(F, M) keeps the tape on the left operand; then (M, k).
    let logits_t = w.matmul(xt.permute::<_, Axes2<1, 0>>());
    let logits = logits_t.permute::<_, Axes2<1, 0>>();
    logits + b.broadcast_like::<_, Axis<0>>(&(m, k))
}

#[test]
fn whole_objective_on_a_linear_classifier_matches_reference() {
    let dev = Cpu::default();
    let (mut wl, mut wg) = (0.0f64, 0.0f64);
    for c in cases("linear") {
        let (n, ch, s, views) = (
            int(c, "n"),
            int(c, "channels"),
            int(c, "size"),
            int(c, "views"),
        );
        let angles: Vec<u32> = ints(&c["rotations"])
            .into_iter()
            .map(|a| a as u32)
            .collect();
        let cfg = rotation::RotationConfig {
            rotations: angles.clone(),
            all: true,
        };
        let turns = cfg.quarter_turns().unwrap();
        let k = turns.len();
        let f = ch * s * s;
        let x = f32s(&c["x"]);
        let vbs: Vec<ViewBatch> = x
            .chunks(n * f)
            .map(|d| view(d.to_vec(), n, ch, s))
            .collect();
        assert_eq!(vbs.len(), views);
        let indices: Vec<usize> = (0..n).collect();
        let (rotated, targets) =
            rotation::rotated_batch(&vbs, &indices, &turns, true, 0, 0).unwrap();
        assert_eq!(rotated.len(), views * k);
        let rows: Vec<f32> = rotated.iter().flat_map(|v| v.data.clone()).collect();
        let m = views * k * n;
        let w: Leaf = dev.tensor_from_vec(f32s(&c["weight"]), (k, f));
        let b: Tensor<(usize,), f32, Cpu> = dev.tensor_from_vec(f32s(&c["bias"]), (k,));
        let what = format!("linear {}", name(c));
        // d/dW with the bias a constant, then d/db with W a constant.
        let (loss, gw) = value_and_grad(&w, |wt| {
            let logits = linear_logits(&dev, &rows, m, f, wt, b.clone().retaped());
            rotation::loss(logits, &targets).unwrap()
        });
        let (loss_b, gb) = value_and_grad(&b, |bt| {
            let wt = w.clone().retaped::<OwnedTape<f32, Cpu>>();
            let logits = linear_logits(&dev, &rows, m, f, wt, bt);
            rotation::loss(logits, &targets).unwrap()
        });
        assert_eq!(loss.to_bits(), loss_b.to_bits());
        wl = wl.max(check_loss(loss, num(c, "loss"), &what));
        wg = wg.max(check_abs(&gw, &f64s(&c["grad_weight"]), &what));
        wg = wg.max(check_abs(&gb, &f64s(&c["grad_bias"]), &what));
    }
    println!("linear: max loss rel {wl:.2e}, grad abs {wg:.2e}");
}

#[test]
fn drawn_rotations_are_keyed_by_image_and_match_their_targets() {
    let (n, s) = (64, 4);
    let x: Vec<f32> = (0..n * s * s).map(|i| (i as f32 * 0.731).cos()).collect();
    let v = view(x.clone(), n, 1, s);
    let indices: Vec<usize> = (100..100 + n).collect();
    let turns = [0u8, 1, 2, 3];
    let (rot, targets) =
        rotation::rotated_batch(std::slice::from_ref(&v), &indices, &turns, false, 9, 5).unwrap();
    assert_eq!((rot.len(), targets.len()), (1, n));
    // Each image is its own rotation by its target's turns.
    for i in 0..n {
        let img = &x[i * s * s..(i + 1) * s * s];
        let want = rotation::rotate_square(img, s, turns[targets[i]]);
        assert_eq!(&rot[0].data[i * s * s..(i + 1) * s * s], &want[..], "{i}");
    }
    let mut counts = [0usize; 4];
    targets.iter().for_each(|&t| counts[t] += 1);
    assert!(counts.iter().all(|&c| c >= 5), "uniform draws: {counts:?}");
    // The same image gets the same draw when it sits elsewhere in a batch (another
    // rank's slice), and another step draws anew.
    let half = n / 2;
    let tail = view(x[half * s * s..].to_vec(), n - half, 1, s);
    let (_, t2) = rotation::rotated_batch(&[tail], &indices[half..], &turns, false, 9, 5).unwrap();
    assert_eq!(&t2[..], &targets[half..]);
    let (_, t3) = rotation::rotated_batch(&[v], &indices, &turns, false, 9, 6).unwrap();
    assert_ne!(t3, targets);
}

#[test]
fn bad_input_is_an_error() {
    let dev = Cpu::default();
    let z: Leaf = dev.tensor_from_vec(vec![0.5; 8], (2, 4));
    assert!(matches!(
        rotation::loss(z.leaky_trace(), &[0]),
        Err(ObjectiveError::Shape(_))
    ));
    assert!(matches!(
        rotation::loss(z.leaky_trace(), &[0, 4]),
        Err(ObjectiveError::Shape(_))
    ));
    let nan: Leaf = dev.tensor_from_vec(vec![f32::NAN; 8], (2, 4));
    assert!(matches!(
        rotation::loss(nan.leaky_trace(), &[0, 1]),
        Err(ObjectiveError::NonFinite(_))
    ));
    let wide = ViewBatch {
        data: vec![0.0; 2 * 3 * 4],
        shape: [2, 1, 3, 4],
    };
    let e = rotation::rotate_view(&wide, |_| 1).unwrap_err();
    assert!(e.to_string().contains("square"), "{e}");
    for (angles, bad) in [
        (vec![0, 45], "45"),
        (vec![0, 90, 90], "twice"),
        (vec![180], "at least 2"),
        (vec![0, 360], "360"),
    ] {
        let e = rotation::RotationConfig {
            rotations: angles,
            all: true,
        }
        .quarter_turns()
        .unwrap_err();
        assert!(e.to_string().contains(bad), "{e}");
    }
}

#[test]
fn supcon_contrast_modes_match_reference() {
    let dev = Cpu::default();
    let (mut wl, mut wg) = (0.0f64, 0.0f64);
    for c in cases("supcon") {
        let (v, n, d) = (int(c, "views"), int(c, "n"), int(c, "d"));
        let t = num(c, "temperature") as f32;
        let bt = num(c, "base_temperature") as f32;
        let mode = match c["contrast_mode"].as_str().unwrap() {
            "one" => supcon::ContrastMode::One,
            _ => supcon::ContrastMode::All,
        };
        let labels: Option<Vec<u32>> = c["labels"]
            .as_array()
            .map(|a| a.iter().map(|x| x.as_u64().unwrap() as u32).collect());
        let z: Leaf = dev.tensor_from_vec(f32s(&c["z"]), (v * n, d));
        let (loss, grad) = value_and_grad(&z, |x| {
            supcon::loss_with_mode(x, v, labels.as_deref(), t, bt, mode).expect("supcon")
        });
        let what = format!("supcon {}", name(c));
        wl = wl.max(check_loss(loss, num(c, "loss"), &what));
        wg = wg.max(check_abs(&grad, &f64s(&c["grad"]), &what));
        if mode == supcon::ContrastMode::All {
            // `loss` is the `all` mode.
            let (l2, _) = value_and_grad(&z, |x| {
                supcon::loss(x, v, labels.as_deref(), t, bt).expect("supcon")
            });
            assert_eq!(l2.to_bits(), loss.to_bits(), "{what}");
        }
    }
    println!("supcon modes: max loss rel {wl:.2e}, grad abs {wg:.2e}");
}

/// Central differences of the f32 loss (in f64 arithmetic on the inputs' f32 values)
/// against the tape's gradient: the `one` mode's anchor subset through
/// `weighted_info_nce_rows`, and the rotation cross-entropy.
#[test]
fn gradients_match_finite_differences() {
    let dev = Cpu::default();
    let (v, n, d) = (2, 5, 3);
    let labels = [0u32, 1, 0, 2, 1];
    let z0: Vec<f32> = (0..v * n * d)
        .map(|i| ((i * 7 % 11) as f32 - 5.0) * 0.3 + 0.05)
        .collect();
    let supcon_at = |z: &[f32]| -> f32 {
        let t: Leaf = dev.tensor_from_vec(z.to_vec(), (v * n, d));
        supcon::loss_with_mode(t, v, Some(&labels), 0.5, 0.5, supcon::ContrastMode::One)
            .unwrap()
            .array()
    };
    let logits0: Vec<f32> = (0..6 * 4)
        .map(|i| ((i * 5 % 9) as f32 - 4.0) * 0.4)
        .collect();
    let targets = [0usize, 1, 2, 3, 0, 2];
    let ce_at = |z: &[f32]| -> f32 {
        let t: Leaf = dev.tensor_from_vec(z.to_vec(), (6, 4));
        rotation::loss(t, &targets).unwrap().array()
    };
    let z: Leaf = dev.tensor_from_vec(z0.clone(), (v * n, d));
    let (_, g_sc) = value_and_grad(&z, |x| {
        supcon::loss_with_mode(x, v, Some(&labels), 0.5, 0.5, supcon::ContrastMode::One).unwrap()
    });
    let l: Leaf = dev.tensor_from_vec(logits0.clone(), (6, 4));
    let (_, g_ce) = value_and_grad(&l, |x| rotation::loss(x, &targets).unwrap());
    for (what, x0, g, f) in [
        (
            "supcon one",
            &z0,
            &g_sc,
            &supcon_at as &dyn Fn(&[f32]) -> f32,
        ),
        ("rotation cross-entropy", &logits0, &g_ce, &ce_at),
    ] {
        let h = 1e-2f32;
        for i in 0..x0.len() {
            let (mut up, mut down) = (x0.clone(), x0.clone());
            up[i] += h;
            down[i] -= h;
            let fd = (f(&up) as f64 - f(&down) as f64) / (2.0 * h as f64);
            let e = (fd - g[i] as f64).abs();
            assert!(e < 2e-3, "{what}[{i}]: tape {} vs differences {fd}", g[i]);
        }
    }
}
