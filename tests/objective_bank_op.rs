//! `EngineDevice::bank_log_softmax`, the memory bank's fused logits + log-softmax: the
//! CPU kernel (both its dense and its sparse path) against the composed form and an
//! f64 loop, forward and gradient, on random shapes with repeated indices; finite
//! differences; the portable (non-AVX-512) paths in a child process; and the `Bank`
//! objective drawing the same negatives as a sequential `gen_range` loop.

use dfdx::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use recipe::data::ViewBatch;
use recipe::nn::ops::{EngineDevice, T2, composed};
use recipe::nn::params::ParamStore;
use recipe::nn::{BackboneConfig, BackboneKind, HeadConfig, Model, ModelConfig};
use recipe::objective::{Encoder, Objective, StepBatch, memory_bank};

/// One random problem: `f` `(n, d)`, a table of `rows × d`, `m` indices per row,
/// weights `w` `(n, m)` for the scalar `Σ w ⊙ logits` whose gradient is checked.
struct Case {
    n: usize,
    d: usize,
    m: usize,
    scale: f32,
    f: Vec<f32>,
    bank: Vec<f32>,
    idx: Vec<usize>,
    w: Vec<f32>,
}

fn normals(r: &mut ChaCha8Rng, len: usize) -> Vec<f32> {
    (0..len).map(|_| r.gen_range(-1.0f32..1.0)).collect()
}

impl Case {
    fn random(r: &mut ChaCha8Rng, n: usize, d: usize, rows: usize, m: usize) -> Case {
        // Few rows for many draws repeats indices, within a row and across rows.
        let idx = (0..n * m).map(|_| r.gen_range(0..rows)).collect();
        Case {
            n,
            d,
            m,
            scale: r.gen_range(0.5f32..14.0),
            f: normals(r, n * d),
            bank: normals(r, rows * d),
            idx,
            w: normals(r, n * m),
        }
    }

    /// `(log-softmax, its error bound, grad_f, its error bound)` in f64. An f32 dot
    /// product's rounding error is proportional to the sum of its terms' magnitudes;
    /// the bounds carry those sums through the log-softmax and its backward.
    fn reference(&self) -> (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>) {
        let (n, d, m) = (self.n, self.d, self.m);
        let s = self.scale as f64;
        let row = |i: usize| &self.bank[i * d..(i + 1) * d];
        let (mut y, mut ytol, mut g, mut gtol) = (
            vec![0.0; n * m],
            vec![0.0; n * m],
            vec![0.0; n * d],
            vec![0.0; n * d],
        );
        for r in 0..n {
            let (mut l, mut la) = (vec![0.0f64; m], vec![0.0f64; m]);
            for j in 0..m {
                let b = row(self.idx[r * m + j]);
                for (fk, bk) in self.f[r * d..(r + 1) * d].iter().zip(b) {
                    let fb = *fk as f64 * *bk as f64;
                    l[j] += s * fb;
                    la[j] += s * fb.abs();
                }
            }
            let max = l.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let lse = max + l.iter().map(|v| (v - max).exp()).sum::<f64>().ln();
            let la_max = la.iter().cloned().fold(0.0, f64::max);
            let w = &self.w[r * m..(r + 1) * m];
            let wsum: f64 = w.iter().map(|&v| v as f64).sum();
            for j in 0..m {
                let out = l[j] - lse;
                y[r * m + j] = out;
                ytol[r * m + j] = 1e-5 * (la[j] + la_max) + 1e-6 * (1.0 + out.abs());
                let p = out.exp();
                let gl = w[j] as f64 - p * wsum;
                // p's relative error is about the logits' absolute error.
                let gl_tol = (p * wsum).abs() * 2e-5 * la_max + 1e-6 * (1.0 + gl.abs());
                let b = row(self.idx[r * m + j]);
                let gr = g[r * d..(r + 1) * d].iter_mut();
                let tr = gtol[r * d..(r + 1) * d].iter_mut();
                for ((gk, tk), bk) in gr.zip(tr).zip(b) {
                    *gk += s * gl * *bk as f64;
                    *tk += s * (1e-5 * gl.abs() + gl_tol) * (*bk as f64).abs();
                }
            }
        }
        (y, ytol, g, gtol)
    }
}

/// `(log-softmax, grad_f)` from an op on `Cpu`.
fn run(
    c: &Case,
    op: impl Fn(T2<Cpu, OwnedTape<f32, Cpu>>) -> T2<Cpu, OwnedTape<f32, Cpu>>,
) -> (Vec<f32>, Vec<f32>) {
    let dev = Cpu::default();
    let f: T2<Cpu, NoneTape> = dev.tensor_from_vec(c.f.clone(), (c.n, c.d));
    let w: T2<Cpu, NoneTape> = dev.tensor_from_vec(c.w.clone(), (c.n, c.m));
    let y = op(f.leaky_trace());
    let out = y.retaped::<NoneTape>().as_vec();
    let grads = (y * w).sum::<(), _>().backward();
    (out, grads.get(&f).as_vec())
}

fn kernel(c: &Case) -> (Vec<f32>, Vec<f32>) {
    run(c, |f| Cpu::bank_log_softmax(f, &c.bank, &c.idx, c.scale))
}

/// The trait's default: the composed form every device but `Cpu` runs.
fn composed_form(c: &Case) -> (Vec<f32>, Vec<f32>) {
    run(c, |f| {
        composed::bank_logits(f, &c.bank, &c.idx, c.scale).log_softmax::<Axis<1>>()
    })
}

/// `got` within `tol` of the f64 value, element by element.
fn assert_near(what: &str, got: &[f32], want: &[f64], tol: &[f64]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, ((g, w), t)) in got.iter().zip(want).zip(tol).enumerate() {
        let err = (*g as f64 - w).abs();
        assert!(
            err <= *t,
            "{what}: element {i} is {g}, want {w} (error {err:.2e}, bound {t:.2e})"
        );
    }
}

/// Shapes on both sides of the kernel's dense/sparse switch (dense while the table
/// has fewer than 12·m rows), widths around the 32-lane blocks, repeated indices.
fn shapes() -> Vec<(usize, usize, usize, usize)> {
    let mut out = vec![
        // (n, d, rows, m)
        (1, 1, 1, 1),
        (3, 5, 2, 9),     // dense, every index repeated
        (4, 31, 7, 6),    // dense
        (4, 33, 200, 5),  // sparse
        (2, 32, 64, 3),   // sparse
        (5, 128, 50, 40), // dense, recipe width
        (5, 128, 500, 9), // sparse, recipe width
        (7, 64, 1, 3),    // one row for every draw
    ];
    let mut r = ChaCha8Rng::seed_from_u64(11);
    for _ in 0..16 {
        let m = r.gen_range(1..20);
        // Half below, half above the switch.
        let rows = r.gen_range(1..24 * m);
        out.push((r.gen_range(1..9), r.gen_range(1..80), rows, m));
    }
    out
}

fn check(c: &Case, what: &str) {
    let (y, ytol, g, gtol) = c.reference();
    let (ky, kg) = kernel(c);
    let (cy, cg) = composed_form(c);
    assert_near(&format!("{what}: kernel output"), &ky, &y, &ytol);
    assert_near(&format!("{what}: composed output"), &cy, &y, &ytol);
    assert_near(&format!("{what}: kernel grad"), &kg, &g, &gtol);
    assert_near(&format!("{what}: composed grad"), &cg, &g, &gtol);
}

#[test]
fn kernel_matches_composed_form_and_f64_loops() {
    let mut r = ChaCha8Rng::seed_from_u64(3);
    for (n, d, rows, m) in shapes() {
        let c = Case::random(&mut r, n, d, rows, m);
        check(&c, &format!("n={n} d={d} rows={rows} m={m}"));
    }
    // Repeats on the sparse path: every draw the same row.
    let mut c = Case::random(&mut r, 3, 40, 200, 5);
    c.idx.iter_mut().for_each(|i| *i = 7);
    check(&c, "sparse, one row drawn");
}

#[test]
fn kernel_matches_on_the_recipe_shape() {
    // The memory-bank recipe: 4096 negatives + 1 positive, 128 unit features at
    // τ = 0.07, a bank of 10,000 (dense path) and of 70,000 (sparse path); fewer
    // rows of f to stay quick.
    let mut r = ChaCha8Rng::seed_from_u64(5);
    for rows in [10_000, 70_000] {
        let mut c = Case::random(&mut r, 3, 128, rows, 4097);
        c.scale = 1.0 / 0.07;
        for v in c.f.chunks_mut(128).chain(c.bank.chunks_mut(128)) {
            let nrm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            v.iter_mut().for_each(|x| *x /= nrm);
        }
        check(&c, &format!("recipe shape, bank of {rows}"));
    }
}

#[test]
fn untaped_forward_equals_taped_forward() {
    let mut r = ChaCha8Rng::seed_from_u64(8);
    for (n, d, rows, m) in [(3, 20, 4, 6), (3, 20, 400, 6)] {
        let c = Case::random(&mut r, n, d, rows, m);
        let f: T2<Cpu, NoneTape> = Cpu::default().tensor_from_vec(c.f.clone(), (n, d));
        let plain = Cpu::bank_log_softmax(f, &c.bank, &c.idx, c.scale).as_vec();
        assert_eq!(plain, kernel(&c).0, "rows={rows}");
    }
}

#[test]
fn kernel_gradient_matches_finite_differences() {
    let mut r = ChaCha8Rng::seed_from_u64(21);
    for (n, d, rows, m) in [(3, 37, 5, 8), (3, 37, 400, 8)] {
        let mut c = Case::random(&mut r, n, d, rows, m);
        // A mild scale keeps the truncation error of the differences small.
        c.scale = 0.7;
        let (_, g) = kernel(&c);
        let objective = |f: &[f32]| -> f64 {
            let ft: T2<Cpu, NoneTape> = Cpu::default().tensor_from_vec(f.to_vec(), (n, d));
            let y = Cpu::bank_log_softmax(ft, &c.bank, &c.idx, c.scale).as_vec();
            y.iter().zip(&c.w).map(|(a, b)| (a * b) as f64).sum()
        };
        let h = 1e-2f32;
        for k in 0..n * d {
            let (mut up, mut down) = (c.f.clone(), c.f.clone());
            up[k] += h;
            down[k] -= h;
            let fd = (objective(&up) - objective(&down)) / (2.0 * h as f64);
            let tol = 2e-3 * (1.0 + fd.abs());
            assert!(
                (g[k] as f64 - fd).abs() <= tol,
                "rows={rows} element {k}: gradient {}, finite difference {fd}",
                g[k]
            );
        }
    }
}

#[test]
fn portable_paths_match_too() {
    // The AVX-512 switch is process-wide: run the comparison in a child process with
    // the portable paths forced.
    if std::env::var_os("RECIPE_NO_AVX512").is_some() {
        return;
    }
    let out = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "kernel_matches_composed_form_and_f64_loops",
            "--exact",
            "--test-threads=1",
        ])
        .env("RECIPE_NO_AVX512", "1")
        .output()
        .expect("run the test binary");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("1 passed"),
        "portable run failed:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A one-conv small CNN on 1×6×6 inputs with a linear head to `dim` features.
fn tiny_model(dim: usize) -> ModelConfig {
    ModelConfig {
        backbone: BackboneConfig {
            kind: BackboneKind::SmallCnn { channels: vec![4] },
            in_channels: 1,
        },
        head: Some(HeadConfig {
            in_dim: None,
            hidden: vec![],
            out_dim: dim,
            batch_norm: false,
            last_bn: false,
        }),
        prototypes: None,
        predictor: None,
        last_layer: None,
        input_hw: (6, 6),
    }
}

/// `v` views of `n` 1×6×6 images of seeded normal noise.
fn tiny_views(seed: u64, n: usize, v: usize) -> Vec<ViewBatch> {
    let mut r = ChaCha8Rng::seed_from_u64(seed);
    (0..v)
        .map(|_| ViewBatch {
            data: normals(&mut r, n * 36),
            shape: [n, 1, 6, 6],
        })
        .collect()
}

#[test]
fn bank_objective_draws_the_same_negatives_as_before() {
    // The draws of a sequential loop (one stream per step seeded by
    // `seed ^ step·0x9e3779b97f4a7c15`, K `gen_range` calls per anchor in anchor order,
    // positives repeated per view), fed to the public `loss`: the objective's loss
    // must be bit-identical. 5000 negatives × 10 anchors spans several of the
    // parallel generator's blocks; a bank of 1 and one of 256 (a power of two) test
    // the rejection zone's edges.
    let (temperature, momentum, dim, seed) = (0.1, 0.5, 8, 7u64);
    let cfg = tiny_model(dim);
    let (n, v) = (5usize, 2usize);
    let views = tiny_views(1, n, v);
    for (dataset_len, k) in [(300usize, 5000usize), (1, 7), (256, 40)] {
        let mut store = ParamStore::new(Cpu::default());
        let model = Model::new(&mut store, &cfg, seed).expect("model");
        let mut encoder = Encoder::new(model);
        let negatives = memory_bank::Negatives {
            count: k,
            shared: false,
        };
        let mut obj =
            memory_bank::Bank::new(temperature, momentum, negatives, dataset_len, dim, seed)
                .expect("bank");
        let indices: Vec<usize> = (0..n).map(|i| (i * 37 + 3) % dataset_len).collect();
        for step in [0u64, 6] {
            let what = format!("bank of {dataset_len}, {k} negatives, step {step}");
            let before = obj.bank().clone();
            let batch = StepBatch {
                views: &views,
                indices: &indices,
                labels: None,
                epoch: 0,
                step,
                dist: &recipe::dist::Solo,
            };
            let got = Objective::<Cpu>::loss(&mut obj, &mut encoder, &mut store, &batch)
                .expect("loss")
                .as_vec()[0];
            let z = encoder.embed(&mut store, &views, true).expect("embed");
            let positives: Vec<usize> = (0..v).flat_map(|_| indices.iter().copied()).collect();
            let mut rng =
                ChaCha8Rng::seed_from_u64(seed ^ step.wrapping_mul(0x9e37_79b9_7f4a_7c15));
            let negatives: Vec<usize> = (0..v * n * k)
                .map(|_| rng.gen_range(0..dataset_len))
                .collect();
            let want = memory_bank::loss(z, &positives, &negatives, &before, temperature)
                .expect("reference loss")
                .as_vec()[0];
            assert_eq!(got.to_bits(), want.to_bits(), "{what}: {got} vs {want}");
            assert_ne!(obj.bank(), &before, "{what}: the bank was not updated");
        }
    }
}

#[test]
fn shared_negatives_objective_draws_k_per_step_and_equals_shared_loss() {
    // With `shared_negatives`, a step draws K `gen_range` calls from the step's stream
    // once, for every anchor; the objective's loss must be bit-identical to
    // `shared_loss` on those draws, and the bank is updated as without sharing.
    let (temperature, momentum, dim, seed) = (0.1, 0.5, 8, 7u64);
    let cfg = tiny_model(dim);
    let (n, v, dataset_len, k) = (5usize, 2usize, 300usize, 64usize);
    let views = tiny_views(2, n, v);
    let mut store = ParamStore::new(Cpu::default());
    let model = Model::new(&mut store, &cfg, seed).expect("model");
    let mut encoder = Encoder::new(model);
    let negatives = memory_bank::Negatives {
        count: k,
        shared: true,
    };
    let mut obj = memory_bank::Bank::new(temperature, momentum, negatives, dataset_len, dim, seed)
        .expect("bank");
    let indices: Vec<usize> = (0..n).map(|i| (i * 37 + 3) % dataset_len).collect();
    for step in [0u64, 6] {
        let before = obj.bank().clone();
        let batch = StepBatch {
            views: &views,
            indices: &indices,
            labels: None,
            epoch: 0,
            step,
            dist: &recipe::dist::Solo,
        };
        let got = Objective::<Cpu>::loss(&mut obj, &mut encoder, &mut store, &batch)
            .expect("loss")
            .as_vec()[0];
        let z = encoder.embed(&mut store, &views, true).expect("embed");
        let positives: Vec<usize> = (0..v).flat_map(|_| indices.iter().copied()).collect();
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ step.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let shared: Vec<usize> = (0..k).map(|_| rng.gen_range(0..dataset_len)).collect();
        let want = memory_bank::shared_loss(z, &positives, &shared, &before, temperature)
            .expect("reference loss")
            .as_vec()[0];
        assert_eq!(
            got.to_bits(),
            want.to_bits(),
            "step {step}: {got} vs {want}"
        );
        assert_ne!(obj.bank(), &before, "step {step}: the bank was not updated");
    }
}
