//! DINO against float64 PyTorch re-implementations of facebookresearch/dino
//! (`tests/fixtures/make_dino.py`, output `dino.json`): `DINOLoss` and its centre
//! update, the teacher temperature and momentum schedules at several steps, the EMA,
//! and DINOHead's weight-normalised last layer (forward and backward), alone and in
//! front of the loss. Plus finite differences of the loss.
//!
//! Tolerances (f32 on dfdx's `Cpu` vs float64): loss relative 1e-5, gradients absolute
//! 1e-5, layer outputs, centre and EMA absolute 1e-6, schedules 1e-12 (both in f64).

use std::sync::OnceLock;

use dfdx::prelude::*;
use recipe::nn::init::Init;
use recipe::nn::model::{DinoLastLayer, DinoLastLayerConfig};
use recipe::nn::params::{ParamStore, Role};
use recipe::objective::{dino, moco};
use serde_json::Value;

const LOSS_REL: f64 = 1e-5;
const GRAD_ABS: f64 = 1e-5;
const STATE_ABS: f64 = 1e-6;

fn fixture() -> &'static Value {
    static FX: OnceLock<Value> = OnceLock::new();
    FX.get_or_init(|| {
        serde_json::from_str(include_str!("fixtures/dino.json")).expect("dino.json parses")
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

fn check_abs(got: &[f32], want: &[f64], tol: f64, what: &str) -> f64 {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let e = got
        .iter()
        .zip(want)
        .map(|(&g, &w)| {
            assert!(g.is_finite(), "{what}: {g}");
            (g as f64 - w).abs()
        })
        .fold(0.0, f64::max);
    assert!(e <= tol, "{what}: max abs error {e:.3e} > {tol:.0e}");
    e
}

fn check_loss(got: f32, want: f64, what: &str) -> f64 {
    let e = (got as f64 - want).abs() / want.abs().max(1e-12);
    assert!(e <= LOSS_REL, "{what}: loss {got} vs {want} (rel {e:.3e})");
    e
}

#[test]
fn dino_loss_and_center_match_reference() {
    let dev = Cpu::default();
    let (mut wl, mut wg, mut wc) = (0.0f64, 0.0f64, 0.0f64);
    for c in cases("loss") {
        let what = c["name"].as_str().unwrap();
        let (n, crops, k) = (int(c, "n"), int(c, "crops"), int(c, "k"));
        let s = dev.tensor_from_vec(f32s(&c["student"]), (crops * n, k));
        let teacher = f32s(&c["teacher"]);
        assert_eq!(teacher.len(), int(c, "global") * n * k);
        let mut center = f32s(&c["center"]);
        let l = dino::loss(
            s.leaky_trace(),
            &teacher,
            &center,
            n,
            num(c, "student_temp") as f32,
            num(c, "teacher_temp"),
        )
        .expect("loss");
        wl = wl.max(check_loss(l.array(), num(c, "loss"), what));
        let g = l.backward();
        wg = wg.max(check_abs(
            &g.get(&s).as_vec(),
            &f64s(&c["grad"]),
            GRAD_ABS,
            what,
        ));
        // The centre update with the teacher's column sums (one process).
        let mut sum = vec![0.0f64; k];
        for row in teacher.chunks(k) {
            for (a, &b) in sum.iter_mut().zip(row) {
                *a += b as f64;
            }
        }
        dino::center_update(
            &mut center,
            &sum,
            teacher.len() / k,
            num(c, "center_momentum"),
        );
        wc = wc.max(check_abs(&center, &f64s(&c["new_center"]), STATE_ABS, what));
    }
    println!("dino loss: max loss rel {wl:.2e}, grad abs {wg:.2e}, centre abs {wc:.2e}");
}

#[test]
fn schedules_match_reference() {
    for c in cases("teacher_temp") {
        let want = f64s(&c["schedule"]);
        for (e, w) in want.iter().enumerate() {
            let got = dino::teacher_temperature(
                e,
                num(c, "warmup_teacher_temp"),
                num(c, "teacher_temp"),
                int(c, "warmup_epochs"),
            );
            assert!((got - w).abs() < 1e-12, "epoch {e}: {got} vs {w} ({c})");
        }
    }
    for c in cases("momentum") {
        let total = (int(c, "epochs") * int(c, "steps_per_epoch")) as u64;
        for (s, w) in c["steps"]
            .as_array()
            .unwrap()
            .iter()
            .zip(f64s(&c["values"]))
        {
            let s = s.as_u64().unwrap();
            let got = dino::teacher_momentum(s, num(c, "base"), total);
            assert!((got - w).abs() < 1e-12, "step {s}: {got} vs {w}");
        }
    }
}

#[test]
fn ema_matches_reference() {
    let dev = Cpu::default();
    let mut worst = 0.0f64;
    for c in cases("ema") {
        let total = (int(c, "epochs") * int(c, "steps_per_epoch")) as u64;
        let m = dino::teacher_momentum(int(c, "step") as u64, num(c, "base"), total);
        assert!((m - num(c, "momentum")).abs() < 1e-12);
        let mut teacher = ParamStore::new(dev.clone());
        let mut student = ParamStore::new(dev.clone());
        teacher
            .add("w", &[10], f32s(&c["teacher"]), Role::Weight)
            .unwrap();
        student
            .add("w", &[10], f32s(&c["student"]), Role::Weight)
            .unwrap();
        moco::ema_update(&mut teacher, &student, m).unwrap();
        let got = teacher.data(teacher.id("w").unwrap());
        worst = worst.max(check_abs(&got, &f64s(&c["new"]), STATE_ABS, "ema"));
    }
    println!("dino ema: max abs {worst:.2e}");
}

/// A last layer of `k × d` with `v` (and `g` when it trains) from the fixture.
fn layer(c: &Value, norm_last_layer: bool) -> (ParamStore<Cpu>, DinoLastLayer) {
    let (d, k) = (int(c, "d"), int(c, "k"));
    let mut store = ParamStore::new(Cpu::default());
    let cfg = DinoLastLayerConfig {
        out_dim: k,
        dim: None,
        norm_last_layer,
    };
    let l = DinoLastLayer::new(&mut store, &mut Init::new(0), &cfg, d).unwrap();
    let ids = l.param_ids();
    store.set_data(ids[0], f32s(&c["v"])).unwrap();
    if !norm_last_layer {
        store.set_data(ids[1], f32s(&c["g"])).unwrap();
    }
    (store, l)
}

#[test]
fn weight_normalised_layer_matches_reference() {
    let mut worst = (0.0f64, 0.0f64);
    for c in cases("weight_norm") {
        let what = c["name"].as_str().unwrap();
        let nl = c["norm_last_layer"].as_bool().unwrap();
        let (n, d, k) = (int(c, "n"), int(c, "d"), int(c, "k"));
        let (store, l) = layer(c, nl);
        let dev = store.device().clone();
        let z = dev.tensor_from_vec(f32s(&c["z"]), (n, d));
        let out = l.forward(&store, z.leaky_trace()).unwrap();
        worst.0 = worst
            .0
            .max(check_abs(&out.as_vec(), &f64s(&c["out"]), STATE_ABS, what));
        let coef = dev.tensor_from_vec(f32s(&c["coef"]), (n, k));
        let g = (out * coef).sum::<(), _>().backward();
        let ids = l.param_ids();
        worst.1 = worst.1.max(check_abs(
            &g.get(&z).as_vec(),
            &f64s(&c["grad_z"]),
            GRAD_ABS,
            what,
        ));
        worst.1 = worst.1.max(check_abs(
            &g.get(&store.get(ids[0]).tensor).as_vec(),
            &f64s(&c["grad_v"]),
            GRAD_ABS,
            what,
        ));
        if !nl {
            worst.1 = worst.1.max(check_abs(
                &g.get(&store.get(ids[1]).tensor).as_vec(),
                &f64s(&c["grad_g"]),
                GRAD_ABS,
                what,
            ));
        }
    }
    println!(
        "dino last layer: out abs {:.2e}, grad abs {:.2e}",
        worst.0, worst.1
    );
}

#[test]
fn head_tail_and_loss_match_reference() {
    for c in cases("pipeline") {
        let what = c["name"].as_str().unwrap();
        let (n, d) = (int(c, "n"), int(c, "d"));
        let (crops, global) = (int(c, "crops"), int(c, "global"));
        let (store, l) = layer(c, true);
        let dev = store.device().clone();
        let zt = dev.tensor_from_vec(f32s(&c["z_teacher"]), (global * n, d));
        let teacher = l.forward(&store, zt).unwrap().as_vec();
        let z = dev.tensor_from_vec(f32s(&c["z"]), (crops * n, d));
        let s = l.forward(&store, z.leaky_trace()).unwrap();
        let loss = dino::loss(
            s,
            &teacher,
            &f32s(&c["center"]),
            n,
            num(c, "student_temp") as f32,
            num(c, "teacher_temp"),
        )
        .unwrap();
        let el = check_loss(loss.array(), num(c, "loss"), what);
        let g = loss.backward();
        let ez = check_abs(&g.get(&z).as_vec(), &f64s(&c["grad_z"]), GRAD_ABS, what);
        let ev = check_abs(
            &g.get(&store.get(l.param_ids()[0]).tensor).as_vec(),
            &f64s(&c["grad_v"]),
            GRAD_ABS,
            what,
        );
        println!("dino pipeline {what}: loss rel {el:.2e}, grad z {ez:.2e}, grad v {ev:.2e}");
    }
}

/// Central differences of the loss (f64 from f32 evaluations) against its gradient.
#[test]
fn dino_loss_gradient_matches_finite_differences() {
    let dev = Cpu::default();
    let c = &cases("loss")[0];
    let (n, crops, k) = (int(c, "n"), int(c, "crops"), int(c, "k"));
    let s0 = f32s(&c["student"]);
    let teacher = f32s(&c["teacher"]);
    let center = f32s(&c["center"]);
    let f = |s: &[f32]| -> f64 {
        let t = dev.tensor_from_vec(s.to_vec(), (crops * n, k));
        dino::loss(t, &teacher, &center, n, 0.1, 0.04)
            .unwrap()
            .array() as f64
    };
    let st = dev.tensor_from_vec(s0.clone(), (crops * n, k));
    let l = dino::loss(st.leaky_trace(), &teacher, &center, n, 0.1, 0.04).unwrap();
    let g = l.backward().get(&st).as_vec();
    let eps = 1e-2f32;
    let mut worst = 0.0f64;
    for j in (0..s0.len()).step_by(7) {
        let mut p = s0.clone();
        p[j] += eps;
        let up = f(&p);
        p[j] -= 2.0 * eps;
        let down = f(&p);
        let fd = (up - down) / (2.0 * eps as f64);
        let e = (fd - g[j] as f64).abs();
        assert!(e < 5e-4, "element {j}: fd {fd} vs {}", g[j]);
        worst = worst.max(e);
    }
    println!("dino finite differences: max abs {worst:.2e}");
}

#[test]
fn bad_inputs_are_errors() {
    let dev = Cpu::default();
    let s = dev.tensor_from_vec(vec![0.0f32; 12], (6, 2));
    // 3 images × 2 crops, teacher for 3 crops: more global crops than crops.
    assert!(dino::loss(s.clone(), &[0.0; 18], &[0.0; 2], 3, 0.1, 0.04).is_err());
    // Wrong centre size, zero temperature, and a batch that is not whole crops.
    assert!(dino::loss(s.clone(), &[0.0; 12], &[0.0; 3], 3, 0.1, 0.04).is_err());
    assert!(dino::loss(s.clone(), &[0.0; 12], &[0.0; 2], 3, 0.0, 0.04).is_err());
    assert!(dino::loss(s.clone(), &[0.0; 12], &[0.0; 2], 4, 0.1, 0.04).is_err());
    assert!(dino::loss(s, &[f32::NAN; 12], &[0.0; 2], 3, 0.1, 0.04).is_err());
}
