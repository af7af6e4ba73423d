//! The five objectives against float64 PyTorch references of the original
//! repositories' code (`tests/fixtures/make_losses.py`, output `losses.json`; see that
//! script for the repository, file and function each case follows).
//!
//! Tolerances (f32 on dfdx's `Cpu` vs float64): loss relative 1e-5; gradients w.r.t.
//! the raw embeddings and Sinkhorn codes absolute 1e-5; queue, bank and EMA updates
//! absolute 1e-6. Every test prints the largest error it measured.

use std::sync::OnceLock;

use dfdx::prelude::*;
use recipe::nn::ops::{EngineDevice, T2};
use recipe::nn::params::{ParamStore, Role};
use recipe::objective::{memory_bank, moco, nt_xent, supcon, swav};
use serde_json::Value;

const LOSS_REL: f64 = 1e-5;
const GRAD_ABS: f64 = 1e-5;
const CODES_ABS: f64 = 1e-5;
const STATE_ABS: f64 = 1e-6;

type Taped = T2<Cpu, OwnedTape<f32, Cpu>>;
type Leaf = T2<Cpu, NoneTape>;

fn fixture() -> &'static Value {
    static FX: OnceLock<Value> = OnceLock::new();
    FX.get_or_init(|| {
        serde_json::from_str(include_str!("fixtures/losses.json")).expect("losses.json parses")
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

fn usizes(v: &Value) -> Vec<usize> {
    v.as_array()
        .expect("an index list")
        .iter()
        .map(|x| x.as_u64().expect("an index") as usize)
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

/// Largest absolute difference; panics on a length mismatch or a non-finite value.
fn max_abs(got: &[f32], want: &[f64], what: &str) -> f64 {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    got.iter()
        .zip(want)
        .map(|(&g, &w)| {
            assert!(g.is_finite(), "{what}: non-finite value {g}");
            (g as f64 - w).abs()
        })
        .fold(0.0, f64::max)
}

fn check_abs(got: &[f32], want: &[f64], tol: f64, what: &str) -> f64 {
    let e = max_abs(got, want, what);
    assert!(e <= tol, "{what}: max abs error {e:.3e} > {tol:.0e}");
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

fn leaf(dev: &Cpu, data: Vec<f32>, rows: usize, cols: usize) -> Leaf {
    dev.tensor_from_vec(data, (rows, cols))
}

/// Runs `f` on a traced copy of `z`; returns the loss value and d loss / d z.
fn value_and_grad(
    z: &Leaf,
    f: impl FnOnce(Taped) -> Tensor<(), f32, Cpu, OwnedTape<f32, Cpu>>,
) -> (f32, Vec<f32>) {
    let loss = f(z.leaky_trace());
    let value = loss.array();
    let grads = loss.backward();
    (value, grads.get(z).as_vec())
}

/// Running maxima of the errors of one fixture family, printed at the end.
#[derive(Default)]
struct Worst {
    loss: f64,
    grad: f64,
    codes: f64,
    state: f64,
}

impl Worst {
    fn report(&self, family: &str) {
        println!(
            "{family}: max loss rel {:.2e}, grad abs {:.2e}, codes abs {:.2e}, state abs {:.2e}",
            self.loss, self.grad, self.codes, self.state
        );
    }
}

#[test]
fn nt_xent_matches_reference() {
    let dev = Cpu::default();
    let mut w = Worst::default();
    for c in cases("nt_xent") {
        let (v, n, d) = (int(c, "views"), int(c, "n"), int(c, "d"));
        let t = num(c, "temperature") as f32;
        let z = leaf(&dev, f32s(&c["z"]), v * n, d);
        let (loss, grad) = value_and_grad(&z, |x| nt_xent::loss(x, v, t).expect("nt_xent"));
        let what = format!("nt_xent {}", name(c));
        w.loss = w.loss.max(check_loss(loss, num(c, "loss"), &what));
        w.grad = w
            .grad
            .max(check_abs(&grad, &f64s(&c["grad"]), GRAD_ABS, &what));
    }
    w.report("nt_xent");
}

#[test]
fn supcon_matches_reference() {
    let dev = Cpu::default();
    let mut w = Worst::default();
    for c in cases("supcon") {
        let (v, n, d) = (int(c, "views"), int(c, "n"), int(c, "d"));
        let t = num(c, "temperature") as f32;
        let bt = num(c, "base_temperature") as f32;
        let labels: Option<Vec<u32>> = c["labels"]
            .as_array()
            .map(|a| a.iter().map(|x| x.as_u64().unwrap() as u32).collect());
        let z = leaf(&dev, f32s(&c["z"]), v * n, d);
        let (loss, grad) = value_and_grad(&z, |x| {
            supcon::loss(x, v, labels.as_deref(), t, bt).expect("supcon")
        });
        let what = format!("supcon {}", name(c));
        // SupContrast adds 1e-9 inside the log; the fixture has the loss with and without
        // it (they differ by < 5e-7 relative), so compare with the nearer one.
        let (with_eps, without) = (num(c, "loss"), num(c, "loss_without_eps"));
        let nearer = if (loss as f64 - with_eps).abs() <= (loss as f64 - without).abs() {
            ("grad", with_eps)
        } else {
            ("grad_without_eps", without)
        };
        w.loss = w.loss.max(check_loss(loss, nearer.1, &what));
        w.grad = w
            .grad
            .max(check_abs(&grad, &f64s(&c[nearer.0]), GRAD_ABS, &what));
    }
    w.report("supcon");
}

#[test]
fn moco_loss_and_queue_match_reference() {
    let dev = Cpu::default();
    let mut w = Worst::default();
    for c in cases("moco") {
        let (n, d, len) = (int(c, "n"), int(c, "d"), int(c, "queue_len"));
        let t = num(c, "temperature") as f32;
        let what = format!("moco {}", name(c));
        let mut queue = moco::KeyQueue::from_keys(len, d, f32s(&c["queue"]), int(c, "ptr"))
            .expect("queue from fixture");
        assert_eq!(
            (queue.len(), queue.dim(), queue.ptr()),
            (len, d, int(c, "ptr"))
        );
        let q = leaf(&dev, f32s(&c["q"]), n, d);
        let k = leaf(&dev, f32s(&c["k"]), n, d);
        let (loss, grad) =
            value_and_grad(&q, |x| moco::loss(x, k.clone(), &queue, t).expect("moco"));
        w.loss = w.loss.max(check_loss(loss, num(c, "loss"), &what));
        w.grad = w
            .grad
            .max(check_abs(&grad, &f64s(&c["grad_q"]), GRAD_ABS, &what));

        // MoCo._dequeue_and_enqueue with the normalised keys, then a second batch that
        // runs past the end of the queue's ring.
        queue.enqueue(&f32s(&c["k_normalized"])).expect("enqueue");
        w.state = w.state.max(check_abs(
            queue.keys(),
            &f64s(&c["queue_after"]),
            STATE_ABS,
            &format!("{what} queue after enqueue"),
        ));
        assert_eq!(
            queue.ptr(),
            int(c, "ptr_after"),
            "{what}: ptr after enqueue"
        );
        queue.enqueue(&f32s(&c["keys2"])).expect("second enqueue");
        w.state = w.state.max(check_abs(
            queue.keys(),
            &f64s(&c["queue_after2"]),
            STATE_ABS,
            &format!("{what} queue after second enqueue"),
        ));
        assert_eq!(
            queue.ptr(),
            int(c, "ptr_after2"),
            "{what}: ptr after second enqueue"
        );
    }
    w.report("moco");
}

fn role(s: &str) -> Role {
    match s {
        "weight" => Role::Weight,
        "bias" => Role::Bias,
        "norm_weight" => Role::NormWeight,
        "norm_bias" => Role::NormBias,
        "buffer" => Role::Buffer,
        other => panic!("unknown role {other}"),
    }
}

#[test]
fn moco_ema_matches_reference() {
    let ema = &fixture()["moco_ema"];
    let momentum = num(ema, "momentum");
    let entries = ema["entries"].as_array().expect("entries");
    let mut key = ParamStore::new(Cpu::default());
    let mut query = ParamStore::new(Cpu::default());
    for e in entries {
        let shape = usizes(&e["shape"]);
        let r = role(e["role"].as_str().unwrap());
        let n = name(e);
        key.add(n, &shape, f32s(&e["key_before"]), r).unwrap();
        query.add(n, &shape, f32s(&e["query"]), r).unwrap();
    }
    moco::ema_update(&mut key, &query, momentum).expect("ema_update");
    let mut worst = 0.0f64;
    for e in entries {
        let id = key.id(name(e)).unwrap();
        worst = worst.max(check_abs(
            &key.data(id),
            &f64s(&e["key_after"]),
            STATE_ABS,
            &format!("ema {}", name(e)),
        ));
        let qid = query.id(name(e)).unwrap();
        assert_eq!(
            query.data(qid),
            f32s(&e["query"]),
            "ema must not change the query store"
        );
    }
    println!("moco_ema: max abs {worst:.2e}");
}

#[test]
fn memory_bank_loss_and_update_match_reference() {
    let dev = Cpu::default();
    let mut w = Worst::default();
    for c in cases("memory_bank") {
        let (bank_n, d, n) = (int(c, "bank_n"), int(c, "d"), int(c, "n"));
        let t = num(c, "temperature") as f32;
        let m = num(c, "momentum") as f32;
        let what = format!("memory_bank {}", name(c));
        let mut bank =
            memory_bank::MemoryBank::from_data(bank_n, d, f32s(&c["bank"])).expect("bank");
        let pos = usizes(&c["positives"]);
        let neg = usizes(&c["negatives"]);
        assert_eq!(neg.len(), n * int(c, "k"));
        let f = leaf(&dev, f32s(&c["f"]), n, d);
        let (loss, grad) = value_and_grad(&f, |x| {
            memory_bank::loss(x, &pos, &neg, &bank, t).expect("memory bank loss")
        });
        w.loss = w.loss.max(check_loss(loss, num(c, "loss"), &what));
        w.grad = w
            .grad
            .max(check_abs(&grad, &f64s(&c["grad"]), GRAD_ABS, &what));
        bank.update(&pos, &f32s(&c["f_normalized"]), m)
            .expect("bank update");
        w.state = w.state.max(check_abs(
            bank.data(),
            &f64s(&c["bank_after"]),
            STATE_ABS,
            &format!("{what} bank after update"),
        ));
    }
    w.report("memory_bank");
}

/// `(k, d)` prototypes as the `(d, k)` right operand of the score product.
fn prototypes_t(dev: &Cpu, protos: &[f32], k: usize, d: usize) -> Leaf {
    let mut t = vec![0.0f32; d * k];
    for j in 0..k {
        for c in 0..d {
            t[c * k + j] = protos[j * d + c];
        }
    }
    dev.tensor_from_vec(t, (d, k))
}

/// Scores of unit rows `emb` (r, d) against prototypes (k, d), in f32 as the step does.
fn plain_scores(emb: &[f32], protos: &[f32], r: usize, k: usize, d: usize) -> Vec<f32> {
    let mut s = vec![0.0f32; r * k];
    for i in 0..r {
        for j in 0..k {
            s[i * k + j] = (0..d).map(|c| emb[i * d + c] * protos[j * d + c]).sum();
        }
    }
    s
}

#[test]
fn swav_matches_reference() {
    let dev = Cpu::default();
    let mut w = Worst::default();
    for c in cases("swav") {
        let (n, v, g) = (int(c, "n"), int(c, "views"), int(c, "global_views"));
        let (d, k) = (int(c, "d"), int(c, "k"));
        let t = num(c, "temperature") as f32;
        let eps = num(c, "epsilon");
        let iters = int(c, "iterations");
        let what = format!("swav {}", name(c));
        let protos = f32s(&c["prototypes"]);
        let pt = prototypes_t(&dev, &protos, k, d);
        let z = leaf(&dev, f32s(&c["z"]), v * n, d);
        let want_codes: Vec<Vec<f64>> = c["codes"].as_array().unwrap().iter().map(f64s).collect();
        let queue = c.get("queue").filter(|q| !q.is_null());

        // Sinkhorn alone, on the reference's own float64 scores rounded to f32.
        let ref_scores = f32s(&c["scores"]);
        for (a, want) in want_codes.iter().enumerate() {
            let mut rows = Vec::new();
            let mut total = n;
            if let Some(q) = queue {
                rows.extend(f32s(&q["scores"][a]));
                total += int(q, "len");
            }
            rows.extend_from_slice(&ref_scores[a * n * k..(a + 1) * n * k]);
            let codes = swav::sinkhorn(&rows, total, k, eps, iters);
            assert_eq!(codes.len(), total * k, "{what}: sinkhorn output length");
            w.codes = w.codes.max(check_abs(
                &codes[(total - n) * k..],
                want,
                CODES_ABS,
                &format!("{what} sinkhorn view {a}"),
            ));
        }

        // The composed step: normalise, score, codes from the detached scores, loss.
        let (loss, grad) = value_and_grad(&z, |x| {
            let scores = Cpu::l2_normalize(x, 1e-12).matmul(pt.clone());
            let detached = scores.as_vec();
            let codes: Vec<Vec<f32>> = (0..g)
                .map(|a| {
                    let mut rows = Vec::new();
                    let mut total = n;
                    if let Some(q) = queue {
                        let emb = f32s(&q["embeddings"][a]);
                        let len = int(q, "len");
                        rows.extend(plain_scores(&emb, &protos, len, k, d));
                        total += len;
                    }
                    rows.extend_from_slice(&detached[a * n * k..(a + 1) * n * k]);
                    let all = swav::sinkhorn(&rows, total, k, eps, iters);
                    all[(total - n) * k..].to_vec()
                })
                .collect();
            for (a, (got, want)) in codes.iter().zip(&want_codes).enumerate() {
                w.codes = w.codes.max(check_abs(
                    got,
                    want,
                    CODES_ABS,
                    &format!("{what} composed codes view {a}"),
                ));
            }
            swav::loss(scores, n, &codes, t).expect("swav loss")
        });
        w.loss = w.loss.max(check_loss(loss, num(c, "loss"), &what));
        w.grad = w
            .grad
            .max(check_abs(&grad, &f64s(&c["grad"]), GRAD_ABS, &what));
    }
    w.report("swav");
}

#[test]
fn swav_large_scale_scores_match_reference() {
    let dev = Cpu::default();
    let mut w = Worst::default();
    for c in cases("swav_large_scale") {
        let (n, v, g, k) = (
            int(c, "n"),
            int(c, "views"),
            int(c, "global_views"),
            int(c, "k"),
        );
        let t = num(c, "temperature") as f32;
        let eps = num(c, "epsilon");
        let iters = int(c, "iterations");
        let what = format!("swav large scale {}", name(c));
        assert!(
            num(c, "max_abs_over_eps") > 88.8,
            "{what}: the case must overflow a naive f32 exp"
        );
        let raw = f32s(&c["scores"]);
        let codes: Vec<Vec<f32>> = (0..g)
            .map(|a| swav::sinkhorn(&raw[a * n * k..(a + 1) * n * k], n, k, eps, iters))
            .collect();
        for (a, (got, want)) in codes.iter().zip(c["codes"].as_array().unwrap()).enumerate() {
            w.codes = w.codes.max(check_abs(
                got,
                &f64s(want),
                CODES_ABS,
                &format!("{what} codes view {a}"),
            ));
        }
        let s = leaf(&dev, raw, v * n, k);
        let (loss, grad) = value_and_grad(&s, |x| swav::loss(x, n, &codes, t).expect("swav loss"));
        w.loss = w.loss.max(check_loss(loss, num(c, "loss"), &what));
        w.grad = w
            .grad
            .max(check_abs(&grad, &f64s(&c["grad_scores"]), GRAD_ABS, &what));
    }
    w.report("swav_large_scale");
}
