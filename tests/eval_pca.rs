//! 2-D PCA: the dominant directions, coordinates and determinism.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use recipe::eval::{FeatureMatrix, pca_2d};

/// Points `mean + a·u + b·v + noise`, with `a` of spread 10, `b` of spread 3 and noise
/// 0.1, `u = (0.6, 0.8, 0, 0)`, `v = (0, 0, 0, 1)`.
fn cloud(n: usize) -> FeatureMatrix {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let mut data = Vec::new();
    for _ in 0..n {
        let a: f32 = rng.gen_range(-10.0..10.0);
        let b: f32 = rng.gen_range(-3.0..3.0);
        let mut e = || rng.gen_range(-0.1f32..0.1);
        data.extend([
            5.0 + 0.6 * a + e(),
            -2.0 + 0.8 * a + e(),
            1.0 + e(),
            b + e(),
        ]);
    }
    FeatureMatrix::new(n, 4, data, None).unwrap()
}

#[test]
fn recovers_the_dominant_directions() {
    let m = cloud(400);
    let p = pca_2d(&m).unwrap();
    let u = [0.6f32, 0.8, 0.0, 0.0];
    let v = [0.0f32, 0.0, 0.0, 1.0];
    let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
    // Signs: each component's largest entry is positive.
    assert!(dot(&p.components[0], &u) > 0.999, "{:?}", p.components[0]);
    assert!(dot(&p.components[1], &v) > 0.999, "{:?}", p.components[1]);
    assert!(dot(&p.components[0], &p.components[1]).abs() < 1e-5);
    // Uniform(−10, 10) has variance 100/3; uniform(−3, 3) has 3.
    assert!(
        (p.variance[0] / (100.0 / 3.0) - 1.0).abs() < 0.15,
        "{:?}",
        p.variance
    );
    assert!((p.variance[1] / 3.0 - 1.0).abs() < 0.15, "{:?}", p.variance);
    assert!(p.variance_ratio[0] > 0.85 && p.variance_ratio[0] + p.variance_ratio[1] > 0.99);
    assert!((p.mean[0] - 5.0).abs() < 0.5 && (p.mean[2] - 1.0).abs() < 0.01);
    // Coordinates are the centred rows projected on the components.
    for i in [0, 17, 399] {
        let centred: Vec<f32> = m.row(i).iter().zip(&p.mean).map(|(x, mu)| x - mu).collect();
        let (x, y) = p.coords[i];
        assert!((x - dot(&centred, &p.components[0])).abs() < 1e-3);
        assert!((y - dot(&centred, &p.components[1])).abs() < 1e-3);
    }
}

#[test]
fn is_deterministic_and_handles_degenerate_input() {
    let m = cloud(100);
    assert_eq!(pca_2d(&m).unwrap(), pca_2d(&m).unwrap());
    // All rows equal: no variance, coordinates all zero.
    let flat = FeatureMatrix::new(5, 3, vec![1.0; 15], None).unwrap();
    let p = pca_2d(&flat).unwrap();
    assert!(p.coords.iter().all(|&(x, y)| x == 0.0 && y == 0.0));
    assert_eq!(p.variance_ratio, [0.0, 0.0]);
    // One dimension: the second coordinate is zero.
    let line = FeatureMatrix::new(3, 1, vec![1.0, 2.0, 3.0], None).unwrap();
    let p = pca_2d(&line).unwrap();
    assert_eq!(
        p.coords.iter().map(|c| c.1).collect::<Vec<_>>(),
        vec![0.0; 3]
    );
    assert!((p.coords[2].0 - 1.0).abs() < 1e-6);
    // One row is not enough.
    assert!(pca_2d(&FeatureMatrix::new(1, 3, vec![0.0; 3], None).unwrap()).is_err());
}
