//! Properties of the five objectives, each against a float64 computation written here
//! with plain loops (independent of the fixture and of `src/objective`):
//! losses and central-difference gradients of that computation vs the Rust f32 values;
//! invariances (image order, SupCon reducing to NT-Xent); what Sinkhorn guarantees;
//! queue, bank and EMA state updates; and bad input returning an error, never a panic.

use dfdx::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use recipe::nn::ops::{EngineDevice, T2};
use recipe::nn::params::{ParamStore, Role};
use recipe::objective::{memory_bank, moco, nt_xent, supcon, swav};

type Taped = T2<Cpu, OwnedTape<f32, Cpu>>;
type Leaf = T2<Cpu, NoneTape>;
type Scalar = Tensor<(), f32, Cpu, OwnedTape<f32, Cpu>>;

// ------------------------------------------------------------------ inputs

fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

/// Standard normal samples (Box–Muller).
fn randn(r: &mut ChaCha8Rng, len: usize) -> Vec<f32> {
    (0..len)
        .map(|_| {
            let u1: f64 = r.gen_range(f64::EPSILON..1.0);
            let u2: f64 = r.r#gen();
            ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
        })
        .collect()
}

/// View-major raw embeddings (V*N, d): views of one image share a base vector, and
/// every row has its own norm in [0.5, 3).
fn views(seed: u64, v: usize, n: usize, d: usize) -> Vec<f32> {
    let mut r = rng(seed);
    let base = randn(&mut r, n * d);
    let mut z = Vec::with_capacity(v * n * d);
    for _ in 0..v {
        let noise = randn(&mut r, n * d);
        for i in 0..n {
            let s: f32 = r.gen_range(0.5..3.0);
            for c in 0..d {
                z.push((base[i * d + c] + 0.6 * noise[i * d + c]) * s);
            }
        }
    }
    z
}

fn unit_rows32(seed: u64, n: usize, d: usize) -> Vec<f32> {
    let mut r = rng(seed);
    let x = randn(&mut r, n * d);
    normalize(&widen(&x), d)
        .into_iter()
        .map(|v| v as f32)
        .collect()
}

fn widen(x: &[f32]) -> Vec<f64> {
    x.iter().map(|&v| v as f64).collect()
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

// ------------------------------------------------------------------ f64 references

fn normalize(x: &[f64], d: usize) -> Vec<f64> {
    x.chunks(d)
        .flat_map(|row| {
            let norm = row.iter().map(|v| v * v).sum::<f64>().sqrt().max(1e-12);
            row.iter().map(move |v| v / norm).collect::<Vec<_>>()
        })
        .collect()
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn logsumexp(x: &[f64]) -> f64 {
    let m = x.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    m + x.iter().map(|v| (v - m).exp()).sum::<f64>().ln()
}

/// Cross-entropy of `logits` with target 0.
fn ce0(logits: &[f64]) -> f64 {
    logsumexp(logits) - logits[0]
}

/// NT-Xent over V views: each anchor averages -log softmax over its V-1 positives
/// (the other views of its image) against all rows but itself; mean over anchors.
fn nt_xent_ref(z: &[f64], v: usize, n: usize, d: usize, t: f64) -> f64 {
    let u = normalize(z, d);
    let m = v * n;
    let row = |i: usize| &u[i * d..(i + 1) * d];
    let mut total = 0.0;
    for a in 0..m {
        let others: Vec<usize> = (0..m).filter(|&j| j != a).collect();
        let logits: Vec<f64> = others.iter().map(|&j| dot(row(a), row(j)) / t).collect();
        let lse = logsumexp(&logits);
        let pos: Vec<f64> = (0..v)
            .map(|w| w * n + a % n)
            .filter(|&p| p != a)
            .map(|p| lse - dot(row(a), row(p)) / t)
            .collect();
        total += pos.iter().sum::<f64>() / pos.len() as f64;
    }
    total / m as f64
}

/// SupCon L_out, contrast mode 'all': positives are the other rows with the anchor's
/// label (image ids when `labels` is None), scaled by T / base_T.
fn supcon_ref(
    z: &[f64],
    v: usize,
    n: usize,
    d: usize,
    labels: Option<&[u32]>,
    t: f64,
    bt: f64,
) -> f64 {
    let u = normalize(z, d);
    let m = v * n;
    let label = |i: usize| labels.map_or((i % n) as u32, |l| l[i % n]);
    let row = |i: usize| &u[i * d..(i + 1) * d];
    let mut total = 0.0;
    for a in 0..m {
        let logits: Vec<f64> = (0..m)
            .filter(|&j| j != a)
            .map(|j| dot(row(a), row(j)) / t)
            .collect();
        let lse = logsumexp(&logits);
        let pos: Vec<f64> = (0..m)
            .filter(|&p| p != a && label(p) == label(a))
            .map(|p| dot(row(a), row(p)) / t - lse)
            .collect();
        total += -(t / bt) * pos.iter().sum::<f64>() / pos.len() as f64;
    }
    total / m as f64
}

/// MoCo: CE over [q·k, q·queue_j] / T with target 0; q and k normalised.
fn moco_ref(q: &[f64], k: &[f64], queue: &[f64], d: usize, t: f64) -> f64 {
    let (qn, kn) = (normalize(q, d), normalize(k, d));
    let n = q.len() / d;
    let mut total = 0.0;
    for i in 0..n {
        let qi = &qn[i * d..(i + 1) * d];
        let mut logits = vec![dot(qi, &kn[i * d..(i + 1) * d]) / t];
        logits.extend(queue.chunks(d).map(|key| dot(qi, key) / t));
        total += ce0(&logits);
    }
    total / n as f64
}

/// Memory bank: CE over [f·bank[pos], f·bank[neg_1..K]] / T with target 0.
fn bank_ref(f: &[f64], pos: &[usize], neg: &[usize], bank: &[f64], d: usize, t: f64) -> f64 {
    let x = normalize(f, d);
    let n = pos.len();
    let kneg = neg.len() / n;
    let b = |j: usize| &bank[j * d..(j + 1) * d];
    let mut total = 0.0;
    for i in 0..n {
        let xi = &x[i * d..(i + 1) * d];
        let mut logits = vec![dot(xi, b(pos[i])) / t];
        logits.extend(
            neg[i * kneg..(i + 1) * kneg]
                .iter()
                .map(|&j| dot(xi, b(j)) / t),
        );
        total += ce0(&logits);
    }
    total / n as f64
}

/// SwAV's Sinkhorn-Knopp in log space (so any score scale is exact in f64): total
/// mass 1, then `iters` times prototypes to 1/K and samples to 1/B; codes per sample
/// scaled to sum to 1. Returns n*k row-major.
fn sinkhorn_ref(scores: &[f64], n: usize, k: usize, eps: f64, iters: usize) -> Vec<f64> {
    let mut l: Vec<f64> = scores.iter().map(|s| s / eps).collect();
    let total = logsumexp(&l);
    l.iter_mut().for_each(|v| *v -= total);
    for _ in 0..iters {
        for j in 0..k {
            let col: Vec<f64> = (0..n).map(|i| l[i * k + j]).collect();
            let s = logsumexp(&col) + (k as f64).ln();
            (0..n).for_each(|i| l[i * k + j] -= s);
        }
        for i in 0..n {
            let s = logsumexp(&l[i * k..(i + 1) * k]) + (n as f64).ln();
            l[i * k..(i + 1) * k].iter_mut().for_each(|v| *v -= s);
        }
    }
    l.iter().map(|v| (v + (n as f64).ln()).exp()).collect()
}

/// SwAV loss for given codes of views 0..codes.len(): per assigned view, mean over the
/// other views of -mean_i sum_k q log softmax(s/T), then mean over assigned views.
fn swav_ref(scores: &[f64], n: usize, v: usize, k: usize, codes: &[Vec<f64>], t: f64) -> f64 {
    let mut total = 0.0;
    for (a, q) in codes.iter().enumerate() {
        let mut sub = 0.0;
        for w in (0..v).filter(|&w| w != a) {
            for i in 0..n {
                let row: Vec<f64> = scores[(w * n + i) * k..(w * n + i + 1) * k]
                    .iter()
                    .map(|s| s / t)
                    .collect();
                let lse = logsumexp(&row);
                sub -= (0..k).map(|j| q[i * k + j] * (row[j] - lse)).sum::<f64>() / n as f64;
            }
        }
        total += sub / (v - 1) as f64;
    }
    total / codes.len() as f64
}

// ------------------------------------------------------------------ checks

/// Rust loss vs the f64 reference (relative 1e-5) and Rust gradient vs central
/// differences of the reference (h = 1e-6 in f64; absolute 2e-5 scaled by max(1, |g|)).
/// Returns the largest gradient error.
fn check_against_ref(
    what: &str,
    x: &[f32],
    loss: f32,
    grad: &[f32],
    f: impl Fn(&[f64]) -> f64,
) -> f64 {
    let x64 = widen(x);
    let want = f(&x64);
    let rel = (loss as f64 - want).abs() / want.abs().max(1e-12);
    assert!(
        rel <= 1e-5,
        "{what}: loss {loss} vs f64 {want} (rel {rel:.2e})"
    );
    assert_eq!(grad.len(), x.len(), "{what}: gradient length");
    let h = 1e-6;
    let mut worst = 0.0f64;
    for j in 0..x.len() {
        let mut p = x64.clone();
        p[j] += h;
        let mut m = x64.clone();
        m[j] -= h;
        let fd = (f(&p) - f(&m)) / (2.0 * h);
        let err = (grad[j] as f64 - fd).abs() / fd.abs().max(1.0);
        worst = worst.max(err);
        assert!(
            err <= 2e-5,
            "{what}: d/dx[{j}] Rust {} vs finite difference {fd}",
            grad[j]
        );
    }
    worst
}

fn assert_close32(a: &[f32], b: &[f32], tol: f32, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(
            (x - y).abs() <= tol * 1f32.max(x.abs()),
            "{what}[{i}]: {x} vs {y}"
        );
    }
}

fn rel_close(a: f32, b: f32, tol: f32, what: &str) {
    assert!(a.is_finite() && b.is_finite(), "{what}: {a} vs {b}");
    assert!(
        (a - b).abs() <= tol * a.abs().max(b.abs()).max(1e-6),
        "{what}: {a} vs {b}"
    );
}

// ------------------------------------------------------------------ NT-Xent / SupCon

#[test]
fn nt_xent_matches_f64_loops_and_finite_differences() {
    let dev = Cpu::default();
    for (seed, v, n, d, t) in [
        (1, 2, 5, 6, 0.5),
        (2, 2, 4, 7, 0.1),
        (3, 3, 4, 5, 0.2),
        (4, 4, 3, 4, 1.0),
    ] {
        let z = views(seed, v, n, d);
        let zl = leaf(&dev, z.clone(), v * n, d);
        let (loss, grad) = value_and_grad(&zl, |x| nt_xent::loss(x, v, t as f32).unwrap());
        let e = check_against_ref(&format!("nt_xent V={v} T={t}"), &z, loss, &grad, |x| {
            nt_xent_ref(x, v, n, d, t)
        });
        println!("nt_xent V={v} N={n} T={t}: grad err {e:.2e}");
    }
}

#[test]
fn supcon_matches_f64_loops_and_finite_differences() {
    let dev = Cpu::default();
    type Case = (u64, usize, usize, usize, Option<Vec<u32>>, f64, f64);
    let cases: [Case; 3] = [
        (5, 2, 6, 5, Some(vec![0, 1, 0, 1, 2, 0]), 0.1, 0.07),
        (6, 3, 4, 4, Some(vec![3, 3, 3, 1]), 0.5, 0.5),
        (7, 2, 5, 6, None, 0.2, 0.07),
    ];
    for (seed, v, n, d, labels, t, bt) in cases {
        let z = views(seed, v, n, d);
        let zl = leaf(&dev, z.clone(), v * n, d);
        let (loss, grad) = value_and_grad(&zl, |x| {
            supcon::loss(x, v, labels.as_deref(), t as f32, bt as f32).unwrap()
        });
        let e = check_against_ref(&format!("supcon V={v} {labels:?}"), &z, loss, &grad, |x| {
            supcon_ref(x, v, n, d, labels.as_deref(), t, bt)
        });
        println!("supcon V={v} N={n} labels {labels:?}: grad err {e:.2e}");
    }
}

/// Reorders the images of view-major rows: image i of every view becomes perm[i].
fn permute_images(z: &[f32], v: usize, n: usize, d: usize, perm: &[usize]) -> Vec<f32> {
    let mut out = vec![0.0; z.len()];
    for w in 0..v {
        for (i, &p) in perm.iter().enumerate() {
            let (src, dst) = ((w * n + p) * d, (w * n + i) * d);
            out[dst..dst + d].copy_from_slice(&z[src..src + d]);
        }
    }
    out
}

#[test]
fn nt_xent_is_invariant_to_image_order() {
    let dev = Cpu::default();
    let (v, n, d) = (3, 6, 5);
    let z = views(11, v, n, d);
    let perm = [4, 0, 5, 2, 1, 3];
    let zp = permute_images(&z, v, n, d, &perm);
    let a = leaf(&dev, z.clone(), v * n, d);
    let b = leaf(&dev, zp, v * n, d);
    let (la, ga) = value_and_grad(&a, |x| nt_xent::loss(x, v, 0.3).unwrap());
    let (lb, gb) = value_and_grad(&b, |x| nt_xent::loss(x, v, 0.3).unwrap());
    rel_close(la, lb, 1e-5, "loss under a permutation of images");
    assert_close32(
        &permute_images(&ga, v, n, d, &perm),
        &gb,
        1e-5,
        "permuted gradient",
    );
}

#[test]
fn supcon_reduces_to_nt_xent() {
    let dev = Cpu::default();
    for (seed, v, n, t) in [(12, 2, 6, 0.5f32), (13, 3, 5, 0.1)] {
        let d = 6;
        let z = leaf(&dev, views(seed, v, n, d), v * n, d);
        let (nt, gnt) = value_and_grad(&z, |x| nt_xent::loss(x, v, t).unwrap());
        // no labels, base_T = T
        let (none, gnone) = value_and_grad(&z, |x| supcon::loss(x, v, None, t, t).unwrap());
        rel_close(nt, none, 1e-5, "SupCon without labels vs NT-Xent");
        assert_close32(&gnt, &gnone, 1e-5, "SupCon without labels: gradient");
        // all-distinct labels, in an arbitrary order and numbering
        let labels: Vec<u32> = (0..n as u32).map(|i| 100 + (i * 7) % n as u32).collect();
        let (dist, gdist) =
            value_and_grad(&z, |x| supcon::loss(x, v, Some(&labels), t, t).unwrap());
        rel_close(nt, dist, 1e-5, "SupCon with distinct labels vs NT-Xent");
        assert_close32(&gnt, &gdist, 1e-5, "SupCon with distinct labels: gradient");
        // base_T scales the loss by T / base_T
        let (scaled, _) = value_and_grad(&z, |x| supcon::loss(x, v, None, t, 2.0 * t).unwrap());
        rel_close(scaled, 0.5 * nt, 1e-5, "SupCon with base_T = 2T");
    }
}

#[test]
fn supcon_depends_on_label_classes_not_their_names() {
    let dev = Cpu::default();
    let (v, n, d) = (2, 6, 5);
    let z = leaf(&dev, views(14, v, n, d), v * n, d);
    let a = [0u32, 1, 0, 2, 1, 0];
    let b = [9u32, 4, 9, 7, 4, 9];
    let (la, _) = value_and_grad(&z, |x| supcon::loss(x, v, Some(&a), 0.2, 0.07).unwrap());
    let (lb, _) = value_and_grad(&z, |x| supcon::loss(x, v, Some(&b), 0.2, 0.07).unwrap());
    rel_close(la, lb, 1e-6, "relabelled classes");
    let (lc, _) = value_and_grad(&z, |x| supcon::loss(x, v, None, 0.2, 0.07).unwrap());
    assert!((la - lc).abs() > 1e-3, "labels must change the loss");
}

// ------------------------------------------------------------------ MoCo

#[test]
fn moco_matches_f64_loops_and_finite_differences() {
    let dev = Cpu::default();
    let (n, d, len, t) = (4, 6, 8, 0.1);
    let q = views(21, 1, n, d);
    let k = views(22, 1, n, d);
    let keys = unit_rows32(23, len, d);
    let queue = moco::KeyQueue::from_keys(len, d, keys.clone(), 4).unwrap();
    let ql = leaf(&dev, q.clone(), n, d);
    let kl = leaf(&dev, k.clone(), n, d);
    let (loss, grad) = value_and_grad(&ql, |x| {
        moco::loss(x, kl.clone(), &queue, t as f32).unwrap()
    });
    let (k64, keys64) = (widen(&k), widen(&keys));
    let e = check_against_ref("moco", &q, loss, &grad, |x| {
        moco_ref(x, &k64, &keys64, d, t)
    });
    println!("moco: grad err {e:.2e}");
}

#[test]
fn key_queue_is_fifo_and_wraps() {
    let (len, dim) = (6, 2);
    let mut q = moco::KeyQueue::from_keys(len, dim, vec![0.0; len * dim], 0).unwrap();
    let batch = |b: f32| vec![b, -b, b + 0.5, -b - 0.5];
    let mut expected = vec![0.0f32; len * dim];
    for (step, b) in [1.0f32, 2.0, 3.0, 4.0, 5.0].into_iter().enumerate() {
        q.enqueue(&batch(b)).unwrap();
        // the oldest two rows are replaced: rows (2*step) mod 6 and the next
        let at = (2 * step) % len;
        expected[at * dim..(at + 2) * dim].copy_from_slice(&batch(b));
        assert_eq!(q.keys(), &expected[..], "after enqueue {step}");
        assert_eq!(q.ptr(), (2 * (step + 1)) % len, "ptr after enqueue {step}");
    }
    // after five batches of two, rows 0-1 hold the fourth and rows 2-3 the fifth batch
    assert_eq!(&q.keys()[..4], &batch(4.0)[..]);
    assert_eq!(&q.keys()[4..8], &batch(5.0)[..]);
    assert_eq!(&q.keys()[8..], &batch(3.0)[..]);
}

#[test]
fn key_queue_new_is_seeded_unit_rows() {
    let a = moco::KeyQueue::new(16, 5, 7).unwrap();
    let b = moco::KeyQueue::new(16, 5, 7).unwrap();
    let c = moco::KeyQueue::new(16, 5, 8).unwrap();
    assert_eq!(a.keys(), b.keys(), "same seed, same keys");
    assert_ne!(a.keys(), c.keys(), "another seed, other keys");
    assert_eq!((a.len(), a.dim(), a.ptr()), (16, 5, 0));
    for row in a.keys().chunks(5) {
        let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!(
            (norm - 1.0).abs() < 1e-5,
            "queue rows are unit vectors: {norm}"
        );
    }
}

#[test]
fn ema_update_matches_hand_computed_values() {
    let mut key = ParamStore::new(Cpu::default());
    let mut query = ParamStore::new(Cpu::default());
    key.add("w", &[2, 2], vec![1.0, 2.0, -1.0, 0.0], Role::Weight)
        .unwrap();
    query
        .add("w", &[2, 2], vec![3.0, 4.0, 1.0, 10.0], Role::Weight)
        .unwrap();
    key.add("b", &[1], vec![0.5], Role::Bias).unwrap();
    query.add("b", &[1], vec![-0.5], Role::Bias).unwrap();
    key.add("bn.running_var", &[2], vec![1.0, 2.0], Role::Buffer)
        .unwrap();
    query
        .add("bn.running_var", &[2], vec![9.0, 9.0], Role::Buffer)
        .unwrap();
    moco::ema_update(&mut key, &query, 0.9).unwrap();
    // k = 0.9 k + 0.1 q
    let w = key.data(key.id("w").unwrap());
    for (g, want) in w.iter().zip([1.2f32, 2.2, -0.8, 1.0]) {
        assert!((g - want).abs() < 1e-6, "w: {w:?}");
    }
    assert!((key.data(key.id("b").unwrap())[0] - 0.4).abs() < 1e-6);
    assert_eq!(
        key.data(key.id("bn.running_var").unwrap()),
        vec![1.0, 2.0],
        "buffers untouched"
    );
    // momentum 0 copies the query encoder
    moco::ema_update(&mut key, &query, 0.0).unwrap();
    assert_eq!(key.data(key.id("w").unwrap()), vec![3.0, 4.0, 1.0, 10.0]);
}

// ------------------------------------------------------------------ memory bank

#[test]
fn memory_bank_matches_f64_loops_and_finite_differences() {
    let dev = Cpu::default();
    let (bank_n, d, n, kneg, t) = (16, 5, 4, 6, 0.2);
    let data = unit_rows32(31, bank_n, d);
    let bank = memory_bank::MemoryBank::from_data(bank_n, d, data.clone()).unwrap();
    let mut r = rng(32);
    let pos: Vec<usize> = (0..n).map(|i| (i * 5 + 1) % bank_n).collect();
    let neg: Vec<usize> = (0..n * kneg).map(|_| r.gen_range(0..bank_n)).collect();
    let f = views(33, 1, n, d);
    let fl = leaf(&dev, f.clone(), n, d);
    let (loss, grad) = value_and_grad(&fl, |x| {
        memory_bank::loss(x, &pos, &neg, &bank, t as f32).unwrap()
    });
    let b64 = widen(&data);
    let e = check_against_ref("memory bank", &f, loss, &grad, |x| {
        bank_ref(x, &pos, &neg, &b64, d, t)
    });
    println!("memory bank: grad err {e:.2e}");
}

#[test]
fn shared_negatives_match_f64_loops_finite_differences_and_per_row_loss() {
    let dev = Cpu::default();
    let (bank_n, d, n, kneg, t) = (16, 5, 4, 6, 0.2);
    let data = unit_rows32(41, bank_n, d);
    let bank = memory_bank::MemoryBank::from_data(bank_n, d, data.clone()).unwrap();
    let mut r = rng(42);
    // A repeated positive and a positive that is also a negative.
    let pos: Vec<usize> = vec![3, 7, 3, 11];
    let shared: Vec<usize> = (0..kneg)
        .map(|_| r.gen_range(0..bank_n))
        .chain([7])
        .collect();
    let every_row: Vec<usize> = (0..n).flat_map(|_| shared.iter().copied()).collect();
    let f = views(43, 1, n, d);
    let fl = leaf(&dev, f.clone(), n, d);
    let (loss, grad) = value_and_grad(&fl, |x| {
        memory_bank::shared_loss(x, &pos, &shared, &bank, t as f32).unwrap()
    });
    let b64 = widen(&data);
    let e = check_against_ref("memory bank, shared negatives", &f, loss, &grad, |x| {
        bank_ref(x, &pos, &every_row, &b64, d, t)
    });
    println!("shared negatives: grad err {e:.2e}");
    // The same loss as the per-row form given every row the same negatives.
    let (per_row, per_row_grad) = value_and_grad(&fl, |x| {
        memory_bank::loss(x, &pos, &every_row, &bank, t as f32).unwrap()
    });
    assert!(
        (loss - per_row).abs() <= 1e-6 * per_row.abs(),
        "{loss} vs {per_row}"
    );
    for (a, b) in grad.iter().zip(&per_row_grad) {
        assert!((a - b).abs() <= 1e-6, "gradient {a} vs {b}");
    }
    // Bad input is an error.
    let z = |rows| leaf(&dev, views(44, 1, rows, d), rows, d).leaky_trace();
    assert!(memory_bank::shared_loss(z(n), &pos[..3], &shared, &bank, 0.1).is_err());
    assert!(memory_bank::shared_loss(z(n), &pos, &[], &bank, 0.1).is_err());
    assert!(memory_bank::shared_loss(z(n), &pos, &[1, 16], &bank, 0.1).is_err());
    assert!(memory_bank::shared_loss(z(n), &[0, 1, 2, 16], &shared, &bank, 0.1).is_err());
    assert!(memory_bank::shared_loss(z(n), &pos, &shared, &bank, 0.0).is_err());
    let wide = leaf(&dev, views(45, 1, n, d + 1), n, d + 1).leaky_trace();
    assert!(memory_bank::shared_loss(wide, &pos, &shared, &bank, 0.1).is_err());
}

#[test]
fn memory_bank_update_is_a_renormalised_moving_average() {
    let (n, d) = (5, 3);
    let data = unit_rows32(34, n, d);
    let mut bank = memory_bank::MemoryBank::from_data(n, d, data.clone()).unwrap();
    let feats = unit_rows32(35, 2, d);
    let idx = [3usize, 1];
    let m = 0.7f32;
    bank.update(&idx, &feats, m).unwrap();
    let got = bank.data();
    for i in 0..n {
        let row = &got[i * d..(i + 1) * d];
        match idx.iter().position(|&j| j == i) {
            None => assert_eq!(row, &data[i * d..(i + 1) * d], "row {i} not in the batch"),
            Some(b) => {
                let mixed: Vec<f64> = (0..d)
                    .map(|c| {
                        m as f64 * data[i * d + c] as f64
                            + (1.0 - m as f64) * feats[b * d + c] as f64
                    })
                    .collect();
                let want = normalize(&mixed, d);
                for c in 0..d {
                    assert!(
                        (row[c] as f64 - want[c]).abs() < 1e-6,
                        "row {i}: {row:?} vs {want:?}"
                    );
                }
                let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
                assert!(
                    (norm - 1.0).abs() < 1e-6,
                    "updated row {i} is a unit vector"
                );
            }
        }
    }
}

#[test]
fn memory_bank_new_is_seeded() {
    let a = memory_bank::MemoryBank::new(10, 4, 3).unwrap();
    let b = memory_bank::MemoryBank::new(10, 4, 3).unwrap();
    assert_eq!(a.data(), b.data());
    assert_eq!(a.data().len(), 40);
    assert!(a.data().iter().all(|v| v.is_finite()));
    assert_ne!(
        a.data(),
        memory_bank::MemoryBank::new(10, 4, 4).unwrap().data()
    );
}

// ------------------------------------------------------------------ SwAV

fn row_sums(c: &[f32], k: usize) -> Vec<f64> {
    c.chunks(k)
        .map(|r| r.iter().map(|&v| v as f64).sum())
        .collect()
}

fn prototype_sums(c: &[f32], n: usize, k: usize) -> Vec<f64> {
    (0..k)
        .map(|j| (0..n).map(|i| c[i * k + j] as f64).sum())
        .collect()
}

/// Cosine-like scores in [-1, 1]: unit embeddings against unit prototypes.
fn cosine_scores(seed: u64, n: usize, k: usize, d: usize) -> Vec<f32> {
    let e = widen(&unit_rows32(seed, n, d));
    let p = widen(&unit_rows32(seed + 1000, k, d));
    (0..n * k)
        .map(|x| {
            dot(
                &e[(x / k) * d..(x / k + 1) * d],
                &p[(x % k) * d..(x % k + 1) * d],
            ) as f32
        })
        .collect()
}

#[test]
fn sinkhorn_matches_f64_log_domain_and_its_guarantees() {
    let (n, k) = (32, 16);
    let s = cosine_scores(41, n, k, 8);
    let s64 = widen(&s);
    let mut deviation = Vec::new();
    for iters in [1usize, 3, 10, 200] {
        let c = swav::sinkhorn(&s, n, k, 0.05, iters);
        let want = sinkhorn_ref(&s64, n, k, 0.05, iters);
        let err = c
            .iter()
            .zip(&want)
            .map(|(a, b)| (*a as f64 - b).abs())
            .fold(0.0, f64::max);
        assert!(
            err <= 1e-5,
            "{iters} iterations: codes differ from f64 by {err:.2e}"
        );
        // The last step normalises each sample, so every row sums to 1 exactly (up to
        // rounding) after any number of iterations ...
        for (i, r) in row_sums(&c, k).iter().enumerate() {
            assert!(
                (r - 1.0).abs() < 1e-5,
                "{iters} iterations: row {i} sums to {r}"
            );
        }
        // ... while the prototype totals only approach N/K as iterations grow
        // (after 3 iterations they are still ~40% off on these scores).
        let dev = prototype_sums(&c, n, k)
            .iter()
            .map(|p| (p - n as f64 / k as f64).abs() / (n as f64 / k as f64))
            .fold(0.0, f64::max);
        deviation.push(dev);
    }
    assert!(
        deviation.windows(2).all(|w| w[1] < w[0]),
        "prototype totals converge: {deviation:?}"
    );
    assert!(deviation[3] < 1e-3, "after 200 iterations: {deviation:?}");
    println!("sinkhorn prototype-total deviation at 1/3/10/200 iterations: {deviation:?}");
}

#[test]
fn sinkhorn_has_no_nan_at_small_epsilon_or_large_scale() {
    let (n, k) = (24, 12);
    // |s| / eps up to 20, 100, 400 and 2000 (cosine scores at eps = 0.05, 0.01, 0.0025
    // and 0.0005): exp overflows f32 above 88.7 and f64 above 709, and exp(s - max)
    // underflows to 0 for every entry of a prototype or sample beyond ~745.
    for scale in [1.0f32, 5.0, 20.0, 100.0] {
        let s: Vec<f32> = cosine_scores(42, n, k, 6)
            .iter()
            .map(|v| v * scale)
            .collect();
        let c = swav::sinkhorn(&s, n, k, 0.05, 3);
        assert!(
            c.iter().all(|v| v.is_finite() && *v >= 0.0),
            "scale {scale}: {c:?}"
        );
        for r in row_sums(&c, k) {
            assert!((r - 1.0).abs() < 1e-5, "scale {scale}: row sums to {r}");
        }
        let want = sinkhorn_ref(&widen(&s), n, k, 0.05, 3);
        let err = c
            .iter()
            .zip(&want)
            .map(|(a, b)| (*a as f64 - b).abs())
            .fold(0.0, f64::max);
        assert!(
            err <= 1e-5,
            "scale {scale}: codes differ from f64 by {err:.2e}"
        );
    }
    // identical scores: uniform codes
    let c = swav::sinkhorn(&[0.7; 4 * 8], 4, 8, 0.05, 3);
    assert!(c.iter().all(|v| (v - 0.125).abs() < 1e-6), "{c:?}");
}

#[test]
fn swav_matches_f64_loops_and_finite_differences() {
    let dev = Cpu::default();
    // scores as the leaf (2 global + 1 local view), then the composed step from raw z
    let (n, v, k, t) = (4, 3, 6, 0.1);
    let s = cosine_scores(43, v * n, k, 5);
    let codes: Vec<Vec<f32>> = (0..2)
        .map(|a| swav::sinkhorn(&s[a * n * k..(a + 1) * n * k], n, k, 0.05, 3))
        .collect();
    let c64: Vec<Vec<f64>> = codes.iter().map(|c| widen(c)).collect();
    let sl = leaf(&dev, s.clone(), v * n, k);
    let (loss, grad) = value_and_grad(&sl, |x| swav::loss(x, n, &codes, t as f32).unwrap());
    let e = check_against_ref("swav scores", &s, loss, &grad, |x| {
        swav_ref(x, n, v, k, &c64, t)
    });
    println!("swav w.r.t. scores: grad err {e:.2e}");

    let d = 5;
    let z = views(44, v, n, d);
    let protos = unit_rows32(45, k, d);
    let mut pt = vec![0.0f32; d * k];
    for j in 0..k {
        for c in 0..d {
            pt[c * k + j] = protos[j * d + c];
        }
    }
    let ptl = leaf(&dev, pt, d, k);
    let zl = leaf(&dev, z.clone(), v * n, d);
    let scores_of = |z64: &[f64]| -> Vec<f64> {
        let e = normalize(z64, d);
        let p = widen(&protos);
        (0..v * n * k)
            .map(|x| {
                dot(
                    &e[(x / k) * d..(x / k + 1) * d],
                    &p[(x % k) * d..(x % k + 1) * d],
                )
            })
            .collect()
    };
    let fixed = scores_of(&widen(&z));
    let codes: Vec<Vec<f32>> = (0..2)
        .map(|a| {
            sinkhorn_ref(&fixed[a * n * k..(a + 1) * n * k], n, k, 0.05, 3)
                .iter()
                .map(|&c| c as f32)
                .collect()
        })
        .collect();
    let c64: Vec<Vec<f64>> = codes.iter().map(|c| widen(c)).collect();
    let (loss, grad) = value_and_grad(&zl, |x| {
        let scores = Cpu::l2_normalize(x, 1e-12).matmul(ptl.clone());
        swav::loss(scores, n, &codes, t as f32).unwrap()
    });
    let e = check_against_ref("swav from z", &z, loss, &grad, |x| {
        swav_ref(&scores_of(x), n, v, k, &c64, t)
    });
    println!("swav w.r.t. raw z: grad err {e:.2e}");
}

// ------------------------------------------------------------------ bad input

#[test]
fn bad_input_is_an_error_not_a_panic() {
    let dev = Cpu::default();
    let z = |rows: usize, d: usize| leaf(&dev, views(51, 1, rows, d), rows, d).leaky_trace();
    let mut nan = views(52, 2, 4, 3);
    nan[5] = f32::NAN;
    let nan_z = || leaf(&dev, nan.clone(), 8, 3).leaky_trace();

    // NT-Xent / SupCon
    assert!(
        nt_xent::loss(z(7, 3), 2, 0.5).is_err(),
        "odd rows for two views"
    );
    assert!(
        nt_xent::loss(z(8, 3), 1, 0.5).is_err(),
        "one view has no positive"
    );
    assert!(nt_xent::loss(nan_z(), 2, 0.5).is_err(), "NaN embedding");
    assert!(nt_xent::loss(z(8, 3), 2, 0.0).is_err(), "zero temperature");
    assert!(
        supcon::loss(z(8, 3), 2, Some(&[0, 1, 0]), 0.1, 0.1).is_err(),
        "3 labels for 4 images"
    );
    assert!(
        supcon::loss(z(9, 3), 2, None, 0.1, 0.1).is_err(),
        "odd rows for two views"
    );
    assert!(
        supcon::loss(nan_z(), 2, Some(&[0, 1, 0, 1]), 0.1, 0.1).is_err(),
        "NaN embedding"
    );

    // MoCo
    assert!(
        moco::KeyQueue::from_keys(6, 2, vec![0.0; 11], 0).is_err(),
        "keys length"
    );
    assert!(
        moco::KeyQueue::from_keys(6, 2, vec![0.0; 12], 6).is_err(),
        "ptr past the end"
    );
    let mut queue = moco::KeyQueue::from_keys(6, 3, unit_rows32(53, 6, 3), 0).unwrap();
    assert!(
        queue.enqueue(&[0.0; 4 * 3]).is_err(),
        "queue length 6 is not a multiple of 4"
    );
    assert!(queue.enqueue(&[0.0; 5]).is_err(), "partial key row");
    assert_eq!(queue.ptr(), 0, "a failed enqueue changes nothing");
    let k = |rows: usize, d: usize| leaf(&dev, views(54, 1, rows, d), rows, d);
    assert!(
        moco::loss(z(4, 3), k(5, 3), &queue, 0.1).is_err(),
        "q and k row counts"
    );
    assert!(
        moco::loss(z(4, 4), k(4, 4), &queue, 0.1).is_err(),
        "embedding vs queue dim"
    );
    let mut nan_q = views(55, 1, 4, 3);
    nan_q[0] = f32::NAN;
    assert!(
        moco::loss(leaf(&dev, nan_q, 4, 3).leaky_trace(), k(4, 3), &queue, 0.1).is_err(),
        "NaN query"
    );
    let mut a = ParamStore::new(Cpu::default());
    let mut b = ParamStore::new(Cpu::default());
    a.add("w", &[2], vec![0.0; 2], Role::Weight).unwrap();
    b.add("w", &[3], vec![0.0; 3], Role::Weight).unwrap();
    assert!(
        moco::ema_update(&mut a, &b, 0.99).is_err(),
        "stores of different shapes"
    );
    let mut c = ParamStore::new(Cpu::default());
    c.add("v", &[2], vec![0.0; 2], Role::Weight).unwrap();
    assert!(
        moco::ema_update(&mut a, &c, 0.99).is_err(),
        "stores with different names"
    );
    let same = a.clone();
    assert!(
        moco::ema_update(&mut a, &same, 1.5).is_err(),
        "momentum above 1"
    );

    // memory bank
    assert!(
        memory_bank::MemoryBank::from_data(4, 3, vec![0.0; 11]).is_err(),
        "bank data length"
    );
    let mut bank = memory_bank::MemoryBank::from_data(4, 3, unit_rows32(56, 4, 3)).unwrap();
    assert!(
        memory_bank::loss(z(2, 3), &[0, 4], &[1, 2], &bank, 0.1).is_err(),
        "positive out of range"
    );
    assert!(
        memory_bank::loss(z(2, 3), &[0, 1], &[1, 9], &bank, 0.1).is_err(),
        "negative out of range"
    );
    assert!(
        memory_bank::loss(z(2, 3), &[0], &[1, 2], &bank, 0.1).is_err(),
        "one positive per row"
    );
    assert!(
        memory_bank::loss(z(2, 3), &[0, 1], &[1, 2, 3], &bank, 0.1).is_err(),
        "K negatives per row"
    );
    assert!(
        memory_bank::loss(z(2, 4), &[0, 1], &[1, 2], &bank, 0.1).is_err(),
        "feature dim"
    );
    let mut nan_f = views(57, 1, 2, 3);
    nan_f[1] = f32::NAN;
    assert!(
        memory_bank::loss(
            leaf(&dev, nan_f, 2, 3).leaky_trace(),
            &[0, 1],
            &[1, 2],
            &bank,
            0.1
        )
        .is_err(),
        "NaN feature"
    );
    let before = bank.data().to_vec();
    assert!(
        bank.update(&[4], &[1.0, 0.0, 0.0], 0.5).is_err(),
        "update index out of range"
    );
    assert!(
        bank.update(&[1, 2], &[1.0, 0.0, 0.0], 0.5).is_err(),
        "features length"
    );
    assert_eq!(bank.data(), &before[..], "a failed update changes nothing");

    // SwAV
    let s = |rows: usize| leaf(&dev, cosine_scores(58, rows, 4, 3), rows, 4).leaky_trace();
    let code = vec![0.25f32; 2 * 4];
    assert!(
        swav::loss(s(6), 4, std::slice::from_ref(&code), 0.1).is_err(),
        "rows not a multiple of n"
    );
    assert!(
        swav::loss(s(8), 2, &vec![code.clone(); 5], 0.1).is_err(),
        "more assigned views than views"
    );
    assert!(
        swav::loss(s(8), 2, &[vec![0.25; 7]], 0.1).is_err(),
        "codes of the wrong size"
    );
    assert!(swav::loss(s(8), 2, &[], 0.1).is_err(), "no assigned view");
    assert!(
        swav::loss(s(2), 2, &[code], 0.1).is_err(),
        "a single view has nothing to predict"
    );
}
