//! The collapse indicators (SimSiam's normalised-embedding std, RankMe's effective rank,
//! the Jacobi eigen-solver behind it) and the t-SNE map of the `visualize` task.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use recipe::eval::FeatureMatrix;
use recipe::eval::collapse::{
    Indicators, effective_rank, normalized_std, sample_indices, symmetric_eigenvalues,
};
use recipe::eval::tsne::{TsneConfig, max_perplexity, tsne_2d};
use recipe::eval::visualize::fit_perplexity;

/// A standard normal draw (Box–Muller).
fn normal(rng: &mut ChaCha8Rng) -> f64 {
    let u1: f64 = rng.gen_range(f64::MIN_POSITIVE..1.0);
    let u2: f64 = rng.r#gen();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

fn gaussian(n: usize, d: usize, seed: u64) -> FeatureMatrix {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let data = (0..n * d).map(|_| normal(&mut rng) as f32).collect();
    FeatureMatrix::new(n, d, data, None).unwrap()
}

fn close(a: &[f64], b: &[f64], tol: f64) {
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(b) {
        assert!((x - y).abs() <= tol, "{a:?} vs {b:?}");
    }
}

#[test]
fn eigenvalues_of_known_matrices() {
    // Diagonal: the diagonal, largest first.
    close(
        &symmetric_eigenvalues(&[3.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 7.0], 3).unwrap(),
        &[7.0, 3.0, -1.0],
        0.0,
    );
    // [[2, 1], [1, 2]]: 3 and 1.
    close(
        &symmetric_eigenvalues(&[2.0, 1.0, 1.0, 2.0], 2).unwrap(),
        &[3.0, 1.0],
        1e-14,
    );
    // The 1-D Laplacian tridiag(−1, 2, −1) of size n: 2 − 2 cos(kπ / (n + 1)).
    let n = 40;
    let mut a = vec![0.0; n * n];
    for i in 0..n {
        a[i * n + i] = 2.0;
        if i + 1 < n {
            a[i * n + i + 1] = -1.0;
            a[(i + 1) * n + i] = -1.0;
        }
    }
    let mut want: Vec<f64> = (1..=n)
        .map(|k| 2.0 - 2.0 * (k as f64 * std::f64::consts::PI / (n + 1) as f64).cos())
        .collect();
    want.sort_by(|x, y| y.total_cmp(x));
    close(&symmetric_eigenvalues(&a, n).unwrap(), &want, 1e-12);
    // Q diag(λ) Qᵀ with Q an orthogonal Householder reflection I − 2vvᵀ/‖v‖²,
    // including a repeated and a zero eigenvalue.
    let n = 6;
    let lambda = [5.0, 2.0, 2.0, 0.0, -3.0, 0.5];
    let v = [1.0, -2.0, 0.5, 3.0, 0.0, 1.5];
    let vv: f64 = v.iter().map(|x| x * x).sum();
    let q: Vec<f64> = (0..n * n)
        .map(|k| f64::from(u8::from(k / n == k % n)) - 2.0 * v[k / n] * v[k % n] / vv)
        .collect();
    let a: Vec<f64> = (0..n * n)
        .map(|k| {
            let (i, j) = (k / n, k % n);
            (0..n)
                .map(|m| q[i * n + m] * lambda[m] * q[j * n + m])
                .sum()
        })
        .collect();
    let mut want = lambda.to_vec();
    want.sort_by(|x, y| y.total_cmp(x));
    close(&symmetric_eigenvalues(&a, n).unwrap(), &want, 1e-12);
    // Bad input is an error, not a panic.
    assert!(symmetric_eigenvalues(&[1.0, 2.0, 3.0], 2).is_err());
    assert!(symmetric_eigenvalues(&[f64::NAN], 1).is_err());
    assert_eq!(symmetric_eigenvalues(&[], 0).unwrap(), Vec::<f64>::new());
}

#[test]
fn random_gaussian_embeddings_look_healthy() {
    let (n, d) = (2048, 64);
    let f = gaussian(n, d, 1);
    let std = normalized_std(&f).unwrap();
    let healthy = 1.0 / (d as f64).sqrt();
    assert!(
        (std / healthy - 1.0).abs() < 0.03,
        "std {std} vs 1/√d {healthy}"
    );
    // n = 32 d: the Marchenko–Pastur spread of the singular values costs a few percent.
    let rank = effective_rank(&f).unwrap();
    assert!(
        rank > 0.95 * d as f64 && rank <= d as f64,
        "rank {rank} of {d}"
    );
    // More dimensions than rows: the rank is bounded by the rows (the n × n Gram).
    let wide = gaussian(32, 256, 2);
    let r = effective_rank(&wide).unwrap();
    assert!(r > 0.8 * 32.0 && r <= 32.0, "rank {r} of at most 32");
    let ind = Indicators::of(&f, &f).unwrap();
    assert!(ind.warnings().is_empty(), "{:?}", ind.warnings());
}

#[test]
fn collapsed_embeddings_give_zero_spread_and_rank_one() {
    let (n, d) = (512, 64);
    // Every row the same vector.
    let row: Vec<f32> = gaussian(1, d, 3).data;
    let same = FeatureMatrix::new(n, d, row.repeat(n), None).unwrap();
    assert!(normalized_std(&same).unwrap() < 1e-6);
    let r = effective_rank(&same).unwrap();
    assert!((r - 1.0).abs() < 1e-3, "rank {r}");
    // Rank one with varying scale (u vᵀ): the directions collapse, the norms do not.
    let u = gaussian(n, 1, 4).data;
    let data: Vec<f32> = u
        .iter()
        .flat_map(|&a| row.iter().map(move |&b| a.abs() * b + 1e-3 * b))
        .collect();
    let r1 = FeatureMatrix::new(n, d, data, None).unwrap();
    assert!(normalized_std(&r1).unwrap() < 1e-5);
    let r = effective_rank(&r1).unwrap();
    assert!((r - 1.0).abs() < 1e-3, "rank {r}");
    // Two directions: rank about 2 (equal energy), so below a healthy 64.
    let two: Vec<f32> = (0..n)
        .flat_map(|i| (0..d).map(move |j| if j == i % 2 { 1.0 } else { 0.0 }))
        .collect();
    let r = effective_rank(&FeatureMatrix::new(n, d, two, None).unwrap()).unwrap();
    assert!((r - 2.0).abs() < 1e-3, "rank {r}");
    // All zeros: no direction at all.
    let zero = FeatureMatrix::new(n, d, vec![0.0; n * d], None).unwrap();
    assert_eq!(effective_rank(&zero).unwrap(), 0.0);
    assert_eq!(normalized_std(&zero).unwrap(), 0.0);
    // Both indicators warn; the text is what a user sees (a one-hot row, so the
    // spread is exactly 0 on every machine).
    let mut hot = vec![0.0f32; d];
    hot[0] = 1.0;
    let hot = FeatureMatrix::new(n, d, hot.repeat(n), None).unwrap();
    let ind = Indicators::of(&hot, &hot).unwrap();
    let w = ind.warnings();
    assert_eq!(w.len(), 2);
    insta::assert_snapshot!("collapse_warnings", w.join("\n"));
    // Too few rows is an error.
    let one = FeatureMatrix::new(1, d, row.clone(), None).unwrap();
    assert!(normalized_std(&one).is_err());
}

#[test]
fn the_sample_is_fixed_by_the_seed() {
    let a = sample_indices(10_000, 512, 7);
    assert_eq!(a, sample_indices(10_000, 512, 7));
    assert_ne!(a, sample_indices(10_000, 512, 8));
    assert_eq!(a.len(), 512);
    assert!(a.windows(2).all(|w| w[0] < w[1]) && a[511] < 10_000);
    assert_eq!(sample_indices(100, 512, 7), (0..100).collect::<Vec<_>>());
}

/// `k` clusters of `per` points in `d` dimensions: centres 10 apart on the axes, unit
/// noise. Labels are the cluster.
fn clusters(k: usize, per: usize, d: usize, seed: u64) -> FeatureMatrix {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut data = Vec::new();
    let mut labels = Vec::new();
    for i in 0..k * per {
        let c = i % k;
        for j in 0..d {
            let centre = if j == c { 10.0 } else { 0.0 };
            data.push((centre + normal(&mut rng)) as f32);
        }
        labels.push(c as u32);
    }
    FeatureMatrix::new(k * per, d, data, Some(labels)).unwrap()
}

/// The fraction of each point's 10 nearest neighbours in the map that share its label.
fn neighbour_agreement(coords: &[(f32, f32)], labels: &[u32]) -> f64 {
    let n = coords.len();
    let mut same = 0usize;
    for i in 0..n {
        let mut d: Vec<(f32, usize)> = (0..n)
            .filter(|&j| j != i)
            .map(|j| {
                let (dx, dy) = (coords[i].0 - coords[j].0, coords[i].1 - coords[j].1);
                (dx * dx + dy * dy, j)
            })
            .collect();
        d.sort_by(|a, b| a.0.total_cmp(&b.0));
        same += d[..10].iter().filter(|p| labels[p.1] == labels[i]).count();
    }
    same as f64 / (10 * n) as f64
}

#[test]
fn tsne_keeps_separated_clusters_apart_and_is_deterministic() {
    let f = clusters(5, 40, 20, 11);
    let cfg = TsneConfig {
        perplexity: 30.0,
        seed: 5,
    };
    let t = tsne_2d(&f, &cfg).unwrap();
    assert_eq!(t.coords.len(), 200);
    assert!(t.coords.iter().all(|c| c.0.is_finite() && c.1.is_finite()));
    let agree = neighbour_agreement(&t.coords, f.labels.as_deref().unwrap());
    // Well-separated clusters: at least 90% of each point's 10 nearest map neighbours
    // are in its own cluster (in practice all of them).
    assert!(agree >= 0.9, "10-NN agreement {agree}");
    assert!(t.kl.is_finite() && t.kl >= 0.0, "KL {}", t.kl);
    // Same seed, same bits; another seed, another map.
    assert_eq!(tsne_2d(&f, &cfg).unwrap(), t);
    let other = tsne_2d(&f, &TsneConfig { seed: 6, ..cfg }).unwrap();
    assert_ne!(other.coords, t.coords);
}

#[test]
fn tsne_refuses_what_it_cannot_do() {
    let f = clusters(2, 10, 4, 1);
    assert!((max_perplexity(20) - 19.0 / 3.0).abs() < 1e-12);
    let e = tsne_2d(
        &f,
        &TsneConfig {
            perplexity: 7.0,
            seed: 0,
        },
    )
    .unwrap_err();
    insta::assert_snapshot!("tsne_perplexity_error", e.to_string());
    for p in [0.0, -1.0, f64::NAN] {
        assert!(
            tsne_2d(
                &f,
                &TsneConfig {
                    perplexity: p,
                    seed: 0
                }
            )
            .is_err()
        );
    }
    let tiny = FeatureMatrix::new(3, 2, vec![0.0; 6], None).unwrap();
    assert!(
        tsne_2d(
            &tiny,
            &TsneConfig {
                perplexity: 0.5,
                seed: 0
            }
        )
        .is_err()
    );
    // A test split smaller than the recipe planned lowers the perplexity, with a note.
    assert_eq!(fit_perplexity(30.0, 91), (30.0, None));
    let (p, note) = fit_perplexity(30.0, 40);
    assert_eq!(p, 13.0);
    insta::assert_snapshot!("tsne_perplexity_note", note.unwrap());
    // The largest allowed perplexity works.
    let t = tsne_2d(
        &f,
        &TsneConfig {
            perplexity: max_perplexity(20),
            seed: 0,
        },
    )
    .unwrap();
    assert!(neighbour_agreement(&t.coords, f.labels.as_deref().unwrap()) >= 0.9);
}

mod common;
use common::{recipe, text, tiny_recipe};

/// After [`common::TINY_START`]: two epochs of six steps, with a `visualize` task
/// drawing the t-SNE map and the curves.
const TINY_REST: &str = r#"loss: {method: simclr, temperature: 0.5}
optimizer: {name: sgd, lr: 0.05, momentum: 0.9, weight_decay: 1.0e-4}
schedule: {kind: warmup_cosine, warmup_epochs: 1}
train: {epochs: 2, batch_size: 32, log_every: 1, threads: 2, watch_samples: 100}
downstream:
  - {task: visualize, samples: 80, perplexity: 20, plots: [embedding_tsne, training_curves]}
"#;

fn only_dir(out: &std::path::Path) -> std::path::PathBuf {
    let dirs: Vec<_> = std::fs::read_dir(out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    dirs[0].clone()
}

/// The indicator fields of every epoch record, as written.
fn indicators(dir: &std::path::Path) -> Vec<[String; 3]> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["kind"] == "epoch")
        .map(|v| {
            ["embedding_std", "feature_std", "feature_rank"].map(|k| {
                assert!(v[k].as_f64().is_some_and(f64::is_finite), "{k} in {v}");
                v[k].to_string()
            })
        })
        .collect()
}

#[test]
fn a_run_logs_reports_and_resumes_the_indicators() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("tiny.yaml");
    std::fs::write(&file, tiny_recipe(TINY_REST)).unwrap();
    let f = file.to_str().unwrap();
    let whole = tmp.path().join("whole");
    let o = recipe(&["run", f, "--out", whole.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let err = text(&o.stderr);
    assert!(err.contains("embedding_std 0."), "{err}");
    let whole = only_dir(&whole);
    let ind = indicators(&whole);
    assert_eq!(ind.len(), 2);
    let csv = std::fs::read_to_string(whole.join("metrics.csv")).unwrap();
    assert!(
        csv.lines()
            .next()
            .unwrap()
            .ends_with("embedding_std,feature_std,feature_rank,watch_seconds"),
        "{csv}"
    );
    for png in ["collapse.png", "rank.png", "embedding_tsne.png", "loss.png"] {
        assert!(
            image::open(whole.join(png)).is_ok_and(|i| i.width() > 0),
            "{png}"
        );
    }
    let res: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(whole.join("results.json")).unwrap())
            .unwrap();
    let w = &res["watch"];
    assert_eq!(w["samples"], 100);
    assert_eq!(w["embedding_dim"], 8);
    assert_eq!(w["feature_dim"], 16);
    let std = w["embedding_std"].as_f64().unwrap();
    assert!(std > 0.0 && std < 1.0, "{w}");
    let rank = w["feature_rank"].as_f64().unwrap();
    assert!((1.0..=16.0).contains(&rank), "{w}");
    assert!(w["seconds_per_epoch"].as_f64().unwrap() > 0.0);
    // The final measurement is the last epoch's (same weights, same sample).
    assert_eq!(serde_json::Value::from(std).to_string(), ind[1][0]);
    let vis = &res["downstream"][0];
    assert_eq!(vis["tsne"]["points"], 80, "{vis}");
    assert_eq!(vis["tsne"]["perplexity"], 20.0, "{vis}");
    let report = std::fs::read_to_string(whole.join("report.md")).unwrap();
    for want in [
        "Collapse indicators on 100 fixed training images",
        "collapse indicators (per epoch)",
        "(collapse.png)",
        "(rank.png)",
        "(embedding_tsne.png)",
    ] {
        assert!(report.contains(want), "{want} not in:\n{report}");
    }

    // `recipe eval` measures the checkpoint it evaluates: the same final values.
    let o = recipe(&["eval", whole.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert!(
        text(&o.stdout).contains("collapse indicators on 100 training images"),
        "{}",
        text(&o.stdout)
    );
    let ev: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(whole.join("eval.json")).unwrap()).unwrap();
    assert_eq!(ev["watch"].as_array().unwrap().len(), 1, "{ev}");
    assert_eq!(ev["watch"][0]["embedding_std"], w["embedding_std"]);
    assert_eq!(ev["watch"][0]["feature_rank"], w["feature_rank"]);

    // Stopped in the second epoch and resumed: the same indicators, to the bit.
    let parts = tmp.path().join("parts");
    let args = ["run", f, "--out", parts.to_str().unwrap()];
    let o = recipe(&[&args[..], &["--stop-after-steps", "8"]].concat());
    assert_eq!(o.status.code(), Some(130), "{}", text(&o.stderr));
    let parts = only_dir(&parts);
    let o = recipe(&["run", f, "--resume", parts.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert_eq!(indicators(&parts), ind);

    // Turned off: no fields, no pictures, no entry.
    let off = tmp.path().join("off");
    let o = recipe(&[
        "run",
        f,
        "--out",
        off.to_str().unwrap(),
        "--set",
        "train.watch_samples=0",
        "--set",
        "downstream=[]",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let off = only_dir(&off);
    assert!(!off.join("collapse.png").exists());
    let jsonl = std::fs::read_to_string(off.join("metrics.jsonl")).unwrap();
    assert!(!jsonl.contains("embedding_std"));
    let res: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(off.join("results.json")).unwrap()).unwrap();
    assert!(res["watch"].is_null());
}

/// Timings for the report (`cargo test --release --test eval_watch -- --ignored
/// --nocapture`): t-SNE of 1,000 points in 128 dimensions, and the effective rank of
/// 512 × 128 (the main job's backbone) and 512 × 512 (a ResNet-18's) features.
#[test]
#[ignore = "a timing, not a check"]
fn timings() {
    let f = clusters(10, 100, 128, 1);
    let t = std::time::Instant::now();
    let m = tsne_2d(
        &f,
        &TsneConfig {
            perplexity: 30.0,
            seed: 0,
        },
    )
    .unwrap();
    println!(
        "t-SNE of 1000 × 128: {:.2} s on {} threads (KL {:.3})",
        t.elapsed().as_secs_f64(),
        rayon::current_num_threads(),
        m.kl
    );
    for d in [128, 512] {
        let g = gaussian(512, d, 2);
        let t = std::time::Instant::now();
        let r = effective_rank(&g).unwrap();
        let s = normalized_std(&g).unwrap();
        println!(
            "indicators of 512 × {d}: {:.3} s (rank {r:.1}, std {s:.4})",
            t.elapsed().as_secs_f64()
        );
    }
}
