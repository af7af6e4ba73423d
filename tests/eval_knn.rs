//! Weighted kNN (InstDisc) on toy features with hand-computed answers.

use recipe::eval::{EvalError, FeatureMatrix, KnnConfig, Metric, knn, nearest};

fn fm(rows: &[[f32; 2]], labels: Option<&[u32]>) -> FeatureMatrix {
    FeatureMatrix::new(
        rows.len(),
        2,
        rows.iter().flatten().copied().collect(),
        labels.map(<[u32]>::to_vec),
    )
    .unwrap()
}

/// t0 = (1, 0) is class 0; t1 = (0, 1) and t2 = (0.6, 0.8) are class 1; t3 = (−1, 0)
/// is class 2. The query (1, 0.1) has cosines 0.995 (t0), 0.677 (t2), 0.0995 (t1).
fn toy() -> (FeatureMatrix, FeatureMatrix) {
    let train = fm(
        &[[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [-1.0, 0.0]],
        Some(&[0, 1, 1, 2]),
    );
    let test = fm(&[[1.0, 0.1]], Some(&[0]));
    (train, test)
}

#[test]
fn nearest_lists_neighbours_by_cosine_best_first() {
    let (train, test) = toy();
    let nb = nearest(&train, &test, 3, Metric::Cosine).unwrap();
    let q = 1.01f32.sqrt();
    let expected = [(0, 1.0 / q), (2, 0.68 / q), (1, 0.1 / q)];
    assert_eq!(nb.len(), 1);
    assert_eq!(nb[0].len(), 3);
    for (got, want) in nb[0].iter().zip(expected) {
        assert_eq!(got.0, want.0);
        assert!((got.1 - want.1).abs() < 1e-6, "{got:?} vs {want:?}");
    }
    // k larger than the training set is capped.
    assert_eq!(
        nearest(&train, &test, 10, Metric::Cosine).unwrap()[0].len(),
        4
    );
}

#[test]
fn nearest_by_euclidean_distance() {
    let train = fm(&[[0.0, 0.0], [3.0, 4.0], [1.0, 0.0]], None);
    let queries = fm(&[[0.0, 0.0], [3.0, 3.0]], None);
    let nb = nearest(&train, &queries, 2, Metric::Euclidean).unwrap();
    assert_eq!(nb[0][0].0, 0);
    assert!(nb[0][0].1.abs() < 1e-6);
    assert_eq!(nb[0][1].0, 2);
    assert!((nb[0][1].1 + 1.0).abs() < 1e-6);
    // (3, 3): distance 1 to (3, 4), √13 to (1, 0).
    assert_eq!(nb[1][0].0, 1);
    assert!((nb[1][0].1 + 1.0).abs() < 1e-5);
    assert_eq!(nb[1][1].0, 2);
    assert!((nb[1][1].1 + 13f32.sqrt()).abs() < 1e-5);
}

#[test]
fn the_temperature_decides_between_a_close_neighbour_and_a_majority() {
    let (train, test) = toy();
    // T = 0.1: class 0 gets e^9.95, class 1 e^6.77 + e^0.995, so class 0 wins.
    let sharp = KnnConfig {
        k: 3,
        temperature: 0.1,
        metric: Metric::Cosine,
    };
    let r = knn(&train, &test, &sharp).unwrap();
    assert_eq!((r.top1, r.top5, r.k), (100.0, 100.0, 3));
    // T = 100: the weights are nearly equal and class 1's two votes win.
    let flat = KnnConfig {
        temperature: 100.0,
        ..sharp
    };
    let r = knn(&train, &test, &flat).unwrap();
    assert_eq!(r.top1, 0.0);
    // Three classes: top-5 always holds the answer.
    assert_eq!(r.top5, 100.0);
    // k = 1 is the nearest neighbour's class whatever T.
    let one = KnnConfig { k: 1, ..flat };
    assert_eq!(knn(&train, &test, &one).unwrap().top1, 100.0);
}

#[test]
fn top5_misses_when_the_class_ranks_sixth() {
    // Seven classes at angles; the query sits on class 6's side of the circle, and its
    // label 0 is the farthest of the 7 neighbours.
    let rows: Vec<[f32; 2]> = (0..7)
        .map(|i| {
            let a = i as f32 * 0.4;
            [a.cos(), a.sin()]
        })
        .collect();
    let labels: Vec<u32> = (0..7).collect();
    let train = fm(&rows, Some(&labels));
    let a = 6.0 * 0.4f32;
    let test = fm(&[[a.cos(), a.sin()]], Some(&[0]));
    let cfg = KnnConfig {
        k: 7,
        temperature: 0.07,
        metric: Metric::Cosine,
    };
    let r = knn(&train, &test, &cfg).unwrap();
    assert_eq!((r.top1, r.top5), (0.0, 0.0));
    let test = fm(&[[a.cos(), a.sin()]], Some(&[2]));
    let r = knn(&train, &test, &cfg).unwrap();
    assert_eq!((r.top1, r.top5), (0.0, 100.0));
}

#[test]
fn bad_settings_and_inputs_are_errors() {
    let (train, test) = toy();
    let cfg = KnnConfig::default();
    let zero_k = KnnConfig { k: 0, ..cfg };
    assert!(matches!(
        knn(&train, &test, &zero_k),
        Err(EvalError::Config(_))
    ));
    let cold = KnnConfig {
        temperature: 0.0,
        ..cfg
    };
    assert!(matches!(
        knn(&train, &test, &cold),
        Err(EvalError::Config(_))
    ));
    let unlabelled = fm(&[[1.0, 0.0]], None);
    assert!(matches!(
        knn(&unlabelled, &test, &cfg),
        Err(EvalError::Data(_))
    ));
    let wide = FeatureMatrix::new(1, 3, vec![1.0, 0.0, 0.0], Some(vec![0])).unwrap();
    assert!(matches!(knn(&train, &wide, &cfg), Err(EvalError::Data(_))));
    assert!(FeatureMatrix::new(2, 2, vec![0.0; 3], None).is_err());
}

#[test]
fn many_queries_match_a_brute_force_reference() {
    // More queries than one block, with random features: same neighbours as a plain
    // loop over all pairs.
    let (n, m, d) = (150, 70, 5);
    let mut s = 7u64;
    let mut next = || {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((s >> 33) as f32 / (1u64 << 31) as f32) * 2.0 - 1.0
    };
    let train = FeatureMatrix::new(n, d, (0..n * d).map(|_| next()).collect(), None).unwrap();
    let queries = FeatureMatrix::new(m, d, (0..m * d).map(|_| next()).collect(), None).unwrap();
    let got = nearest(&train, &queries, 4, Metric::Euclidean).unwrap();
    for (q, nb) in got.iter().enumerate() {
        let mut all: Vec<(usize, f32)> = (0..n)
            .map(|j| {
                let d2: f32 = queries
                    .row(q)
                    .iter()
                    .zip(train.row(j))
                    .map(|(a, b)| (a - b) * (a - b))
                    .sum();
                (j, -d2.sqrt())
            })
            .collect();
        all.sort_by(|a, b| b.1.total_cmp(&a.1));
        let want: Vec<usize> = all[..4].iter().map(|p| p.0).collect();
        let have: Vec<usize> = nb.iter().map(|p| p.0).collect();
        assert_eq!(have, want, "query {q}");
    }
}
