//! BYOL and SimSiam against float64 PyTorch re-implementations of
//! deepmind-research/byol and facebookresearch/simsiam (`tests/fixtures/make_byol.py`,
//! output `byol.json`; the script cites the file and function each value follows):
//! the losses and their gradients w.r.t. the raw predictions, the predictor chain
//! (projections → predictor MLP with batch norm → loss, gradients w.r.t. the
//! projections and the predictor's weights: SimSiam's stop-gradient shows there), the
//! target's EMA rate schedule and the EMA update; then finite differences, the target
//! network's layout, and bad input.
//!
//! Tolerances (f32 on dfdx's `Cpu` vs float64): loss relative 1e-5, gradients absolute
//! 1e-5, schedule and EMA absolute 1e-6.

use std::sync::OnceLock;

use dfdx::prelude::*;
use recipe::nn::init::Init;
use recipe::nn::model::{Head, HeadConfig};
use recipe::nn::ops::T2;
use recipe::nn::params::{ParamStore, Role};
use recipe::objective::{ObjectiveError, byol, simsiam};
use serde_json::Value;

const LOSS_REL: f64 = 1e-5;
const GRAD_ABS: f64 = 1e-5;
const STATE_ABS: f64 = 1e-6;

type Taped = T2<Cpu, OwnedTape<f32, Cpu>>;
type Leaf = T2<Cpu, NoneTape>;
type LossFn = fn(Taped, Leaf) -> Result<Tensor<(), f32, Cpu, OwnedTape<f32, Cpu>>, ObjectiveError>;

fn fixture() -> &'static Value {
    static FX: OnceLock<Value> = OnceLock::new();
    FX.get_or_init(|| {
        serde_json::from_str(include_str!("fixtures/byol.json")).expect("byol.json parses")
    })
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

fn int(c: &Value, key: &str) -> usize {
    c[key].as_u64().unwrap_or_else(|| panic!("field `{key}`")) as usize
}

fn check_abs(got: &[f32], want: &[f64], tol: f64, what: &str) -> f64 {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let e = got
        .iter()
        .zip(want)
        .map(|(&g, &w)| {
            assert!(g.is_finite(), "{what}: non-finite {g}");
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

fn methods() -> [(&'static str, LossFn); 2] {
    [
        ("byol", |p, z| byol::loss(p, z)),
        ("simsiam", |p, z| simsiam::loss(p, z)),
    ]
}

#[test]
fn losses_and_gradients_match_the_references() {
    let dev = Cpu::default();
    for (method, f) in methods() {
        let (mut wl, mut wg) = (0.0f64, 0.0f64);
        for c in fixture()[method].as_array().unwrap() {
            let (n, d) = (int(c, "n"), int(c, "d"));
            let what = format!("{method} {}", c["name"]);
            let p: Leaf = dev.tensor_from_vec(f32s(&c["p"]), (2 * n, d));
            let z: Leaf = dev.tensor_from_vec(f32s(&c["z"]), (2 * n, d));
            let l = f(p.leaky_trace(), z).unwrap();
            let v = l.array();
            let g = l.backward();
            wl = wl.max(check_loss(v, c["loss"].as_f64().unwrap(), &what));
            wg = wg.max(check_abs(
                &g.get(&p).as_vec(),
                &f64s(&c["grad_p"]),
                GRAD_ABS,
                &what,
            ));
        }
        println!("{method}: max loss rel {wl:.2e}, grad abs {wg:.2e}");
    }
}

/// The predictor (our `Head` under `predictor.*`) with the fixture's weights.
fn predictor(c: &Value, d: usize, h: usize) -> (ParamStore<Cpu>, Head) {
    let mut store = ParamStore::new(Cpu::default());
    let cfg = HeadConfig {
        in_dim: None,
        hidden: vec![h],
        out_dim: d,
        batch_norm: true,
        last_bn: false,
    };
    let head = Head::named(&mut store, &mut Init::new(0), &cfg, d, "predictor").unwrap();
    for (name, key) in [
        ("predictor.0.weight", "w1"),
        ("predictor.0.bias", "b1"),
        ("predictor.1.weight", "gamma"),
        ("predictor.1.bias", "beta"),
        ("predictor.3.weight", "w2"),
        ("predictor.3.bias", "b2"),
    ] {
        let id = store.id(name).unwrap_or_else(|| panic!("no `{name}`"));
        store.set_data(id, f32s(&c[key])).unwrap();
    }
    (store, head)
}

#[test]
fn the_predictor_chain_matches_the_references() {
    let dev = Cpu::default();
    for c in fixture()["chains"].as_array().unwrap() {
        let (n, d, h) = (int(c, "n"), int(c, "d"), int(c, "hidden"));
        let method = c["method"].as_str().unwrap();
        let what = c["name"].as_str().unwrap();
        let (mut store, head) = predictor(c, d, h);
        let z = f32s(&c["z"]);
        let z1: Leaf = dev.tensor_from_vec(z[..n * d].to_vec(), (n, d));
        let z2: Leaf = dev.tensor_from_vec(z[n * d..].to_vec(), (n, d));
        // Each view its own batch through the predictor, as the objectives do.
        let p1 = head.forward(&mut store, z1.leaky_trace(), true).unwrap();
        let p2 = head.forward(&mut store, z2.leaky_trace(), true).unwrap();
        let p = (p1, p2).concat_along(Axis::<0>);
        let l = if method == "byol" {
            let t: Leaf = dev.tensor_from_vec(f32s(&c["target"]), (2 * n, d));
            byol::loss(p, t).unwrap()
        } else {
            // The stop-gradient: the projections' values, off the tape.
            simsiam::loss(p, dev.tensor_from_vec(z.clone(), (2 * n, d))).unwrap()
        };
        let v = l.array();
        let g = l.backward();
        let el = check_loss(v, c["loss"].as_f64().unwrap(), what);
        let gz: Vec<f32> = [g.get(&z1).as_vec(), g.get(&z2).as_vec()].concat();
        let mut eg = check_abs(&gz, &f64s(&c["grad_z"]), GRAD_ABS, what);
        for (name, key) in [
            ("predictor.0.weight", "grad_w1"),
            ("predictor.1.weight", "grad_gamma"),
            ("predictor.1.bias", "grad_beta"),
            ("predictor.3.weight", "grad_w2"),
            ("predictor.3.bias", "grad_b2"),
        ] {
            let t = &store.get(store.id(name).unwrap()).tensor;
            eg = eg.max(check_abs(
                &g.get(t).as_vec(),
                &f64s(&c[key]),
                GRAD_ABS,
                &format!("{what} {name}"),
            ));
        }
        println!("{what}: loss rel {el:.2e}, grad abs {eg:.2e}");
    }
}

#[test]
fn the_target_momentum_follows_the_cosine_schedule() {
    let s = &fixture()["schedule"];
    let base = s["base"].as_f64().unwrap();
    let total = s["total"].as_u64().unwrap();
    let steps: Vec<u64> = s["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect();
    for (k, want) in steps.iter().zip(f64s(&s["tau"])) {
        let got = byol::target_momentum(base, *k, total);
        assert!((got - want).abs() < STATE_ABS, "step {k}: {got} vs {want}");
    }
    // The ends and the middle in closed form.
    assert_eq!(byol::target_momentum(0.99, 0, 100), 0.99);
    assert!((byol::target_momentum(0.99, 50, 100) - 0.995).abs() < 1e-12);
    assert_eq!(byol::target_momentum(0.99, 100, 100), 1.0);
    assert_eq!(byol::target_momentum(0.99, 500, 100), 1.0);
    // Non-decreasing.
    let taus: Vec<f64> = (0..=40)
        .map(|k| byol::target_momentum(0.9, k, 40))
        .collect();
    assert!(taus.windows(2).all(|w| w[0] <= w[1]), "{taus:?}");
}

fn role(s: &str) -> Role {
    match s {
        "weight" => Role::Weight,
        "bias" => Role::Bias,
        "norm_weight" => Role::NormWeight,
        _ => Role::Buffer,
    }
}

#[test]
fn the_ema_update_matches_the_reference() {
    let e = &fixture()["ema"];
    let tau = e["tau"].as_f64().unwrap();
    let mut target = ParamStore::new(Cpu::default());
    let mut online = ParamStore::new(Cpu::default());
    let entries = e["entries"].as_array().unwrap();
    for c in entries {
        let shape: Vec<usize> = c["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as usize)
            .collect();
        let name = c["name"].as_str().unwrap();
        let r = role(c["role"].as_str().unwrap());
        target
            .add(name, &shape, f32s(&c["target_before"]), r)
            .unwrap();
        online.add(name, &shape, f32s(&c["online"]), r).unwrap();
    }
    // The online network's predictor is not part of the target: it is not read.
    online
        .add("predictor.0.weight", &[2], vec![9.0, 9.0], Role::Weight)
        .unwrap();
    byol::ema_update(&mut target, &online, tau).unwrap();
    let mut worst = 0.0f64;
    for c in entries {
        let id = target.id(c["name"].as_str().unwrap()).unwrap();
        worst = worst.max(check_abs(
            &target.data(id),
            &f64s(&c["target_after"]),
            STATE_ABS,
            c["name"].as_str().unwrap(),
        ));
    }
    println!("ema: max abs {worst:.2e}");
    // A target entry the online network lacks, or a bad rate, is an error.
    target
        .add("extra.weight", &[1], vec![0.0], Role::Weight)
        .unwrap();
    assert!(byol::ema_update(&mut target, &online, tau).is_err());
    assert!(byol::ema_update(&mut target, &online, 1.5).is_err());
}

/// Central differences of `f` in f64 around the f32 point `p`, against the tape's
/// gradient.
#[test]
fn gradients_match_finite_differences() {
    let dev = Cpu::default();
    let (n, d) = (3, 4);
    let mut init = Init::new(5);
    let p0 = init.normal(2 * n * d, 1.0);
    let z0 = init.normal(2 * n * d, 1.0);
    for (method, f) in methods() {
        let p: Leaf = dev.tensor_from_vec(p0.clone(), (2 * n, d));
        let l = f(p.leaky_trace(), dev.tensor_from_vec(z0.clone(), (2 * n, d))).unwrap();
        let g = l.backward().get(&p).as_vec();
        let value = |x: &[f32]| -> f64 {
            f(
                dev.tensor_from_vec(x.to_vec(), (2 * n, d)).leaky_trace(),
                dev.tensor_from_vec(z0.clone(), (2 * n, d)),
            )
            .unwrap()
            .array() as f64
        };
        let h = 1e-2f32;
        let mut worst = 0.0f64;
        for i in 0..p0.len() {
            let (mut a, mut b) = (p0.clone(), p0.clone());
            a[i] += h;
            b[i] -= h;
            let fd = (value(&a) - value(&b)) / (2.0 * h as f64);
            worst = worst.max((fd - g[i] as f64).abs());
        }
        assert!(
            worst < 2e-3,
            "{method}: finite differences off by {worst:.2e}"
        );
        println!("{method}: finite differences within {worst:.2e}");
    }
}

#[test]
fn bad_input_is_an_error_not_a_panic() {
    let dev = Cpu::default();
    for (method, f) in methods() {
        let odd: Leaf = dev.tensor_from_vec(vec![1.0; 3 * 4], (3, 4));
        assert!(
            matches!(
                f(odd.leaky_trace(), odd.clone()),
                Err(ObjectiveError::Shape(_))
            ),
            "{method}: an odd row count is not two views"
        );
        let p: Leaf = dev.tensor_from_vec(vec![1.0; 4 * 4], (4, 4));
        let narrow: Leaf = dev.tensor_from_vec(vec![1.0; 4 * 3], (4, 3));
        assert!(
            f(p.leaky_trace(), narrow).is_err(),
            "{method}: widths differ"
        );
        let mut bad = vec![1.0; 16];
        bad[5] = f32::NAN;
        let nan: Leaf = dev.tensor_from_vec(bad, (4, 4));
        assert!(
            matches!(
                f(nan.leaky_trace(), p.clone()),
                Err(ObjectiveError::NonFinite(_))
            ),
            "{method}: NaN"
        );
    }
}

#[test]
fn the_target_network_is_the_online_one_without_the_predictor() {
    use recipe::nn::model::{BackboneConfig, BackboneKind, Model, ModelConfig};
    let cfg = ModelConfig {
        backbone: BackboneConfig {
            kind: BackboneKind::SmallCnn {
                channels: vec![4, 8],
            },
            in_channels: 1,
        },
        head: Some(HeadConfig {
            in_dim: None,
            hidden: vec![8],
            out_dim: 6,
            batch_norm: true,
            last_bn: false,
        }),
        prototypes: None,
        last_layer: None,
        predictor: Some(HeadConfig {
            in_dim: None,
            hidden: vec![5],
            out_dim: 6,
            batch_norm: true,
            last_bn: false,
        }),
        input_hw: (8, 8),
    };
    let mut store = ParamStore::new(Cpu::default());
    let model = Model::new(&mut store, &cfg, 1).unwrap();
    let target = byol::target_network(&store).unwrap();
    let kept: Vec<&str> = store
        .entries()
        .iter()
        .map(|e| e.name.as_str())
        .filter(|n| !n.starts_with("predictor."))
        .collect();
    let names: Vec<&str> = target.entries().iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, kept);
    assert!(store.entries().iter().any(|e| e.name == "predictor.3.bias"));
    assert!(target.entries().iter().all(|e| !e.trainable));
    // Same ids: the online model projects with the target's values.
    let mut t = target.clone();
    let img = Cpu::default().tensor_from_vec(Init::new(2).normal(2 * 64, 1.0), (2, 1, 8, 8));
    let a = model
        .project(&mut store, img.clone(), false)
        .unwrap()
        .as_vec();
    let b = model.project(&mut t, img, false).unwrap().as_vec();
    assert_eq!(a, b);
    // The backbone export leaves the predictor out.
    assert!(
        model
            .backbone_entry_names(&store)
            .iter()
            .all(|n| !n.starts_with("predictor.") && !n.starts_with("projector."))
    );
    // Applying the predictor keeps the projection's width; a model without one errors.
    let z: T2<Cpu, NoneTape> = Cpu::default().tensor_from_vec(vec![0.5; 12], (2, 6));
    assert_eq!(
        model.predict(&mut store, z.clone(), true).unwrap().shape(),
        &(2, 6)
    );
    let mut plain = model.clone();
    plain.predictor = None;
    assert!(plain.predict(&mut store, z, true).is_err());
}

/// The collapse indicator of a finished run (not part of the suite: run with
/// `RECIPE_RUN_DIR=<run directory> cargo test --test objective_reference_byol --
/// --ignored --nocapture`): the test images' backbone features and projections from
/// the last checkpoint, each L2-normalised, and the mean over dimensions of the
/// per-dimension standard deviation. A healthy embedding of `d` dimensions spreads
/// over the sphere, ≈ 1/√d; a collapsed one (every image to one point) tends to 0
/// (SimSiam's paper, §4.1 and Fig. 2).
#[test]
#[ignore]
fn collapse_indicator_of_a_run() {
    use recipe::eval::features::{Which, extract};
    use recipe::nn::model::Model;
    let Ok(dir) = std::env::var("RECIPE_RUN_DIR") else {
        println!("set RECIPE_RUN_DIR to a run directory");
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    let loaded = recipe::spec::Loader::new()
        .load_file(&dir.join("recipe.yaml"), &[])
        .unwrap();
    let r = loaded.valid_recipe().expect("a valid recipe").clone();
    let data = recipe::data::load(&recipe::build::data::config(&r.data, r.seed)).unwrap();
    let test = data.test.expect("a test split");
    let cfg = recipe::build::model(&r, r.data.image_size).unwrap();
    let mut store = ParamStore::new(Cpu::default());
    let model = Model::new(&mut store, &cfg, r.seed).unwrap();
    recipe::checkpoint::load_training(
        &dir.join("checkpoints/last.safetensors"),
        &mut store,
        None,
        None,
        None,
    )
    .unwrap();
    let norm = recipe::experiment::normalization(&r);
    for which in [Which::Backbone, Which::Head] {
        let f = extract(&model, &mut store, &test, &norm, which, 256).unwrap();
        let (n, d) = (f.n, f.dim);
        let mut rows = f.data.clone();
        for row in rows.chunks_mut(d) {
            let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
            row.iter_mut().for_each(|x| *x /= norm);
        }
        let mut stds = Vec::with_capacity(d);
        for j in 0..d {
            let mean = (0..n).map(|i| rows[i * d + j] as f64).sum::<f64>() / n as f64;
            let var = (0..n)
                .map(|i| (rows[i * d + j] as f64 - mean).powi(2))
                .sum::<f64>()
                / n as f64;
            stds.push(var.sqrt());
        }
        let mean_std = stds.iter().sum::<f64>() / d as f64;
        let min_std = stds.iter().cloned().fold(f64::INFINITY, f64::min);
        println!(
            "{which:?}: {n} test images, d = {d}: mean per-dimension std of the L2-normalised embeddings {mean_std:.4} (min {min_std:.4}; 1/√d = {:.4})",
            1.0 / (d as f64).sqrt()
        );
    }
}
