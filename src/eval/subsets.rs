//! Labelled subsets for label-efficiency measurements: which training images keep their
//! labels when a task sees only a fraction of them.
//!
//! The rule (the SimCLR paper's 1% / 10% ImageNet subsets are class-balanced in the same
//! way): a fraction `f < 1` of `n` labelled images over `C` classes keeps
//! `max(1, round(f·n / C))` images of every class (fewer when a class has fewer), chosen
//! by a shuffle of each class's images drawn from the seed. The draw does not depend on
//! the fraction, so the subsets are nested (the 1% subset is part of the 10% one); it
//! does not depend on the task or the row either, so every row (trained, untrained, raw
//! pixels, supervised) and every task sees the same images. `f = 1` keeps every image in
//! dataset order, so a task without `label_fraction` measures exactly what it did
//! before.

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use super::EvalError;

/// Mixed into the seed so the subsets draw apart from every other use of it.
const SALT: u64 = 0x1abe_155a_b5e7;

/// Images of each class kept at fraction `fraction` of `n` images over `classes`
/// classes (before capping at a class's own size).
pub fn per_class(n: usize, classes: usize, fraction: f64) -> usize {
    if classes == 0 {
        return 0;
    }
    ((fraction * n as f64 / classes as f64).round() as usize).max(1)
}

/// Indices (ascending) of the labelled subset at `fraction` of the images labelled
/// `labels` (classes `0..classes`), drawn from `seed` as the module describes.
pub fn balanced_subset(
    labels: &[u32],
    classes: usize,
    fraction: f64,
    seed: u64,
) -> Result<Vec<usize>, EvalError> {
    if !(fraction > 0.0 && fraction <= 1.0) {
        return Err(EvalError::Config(format!(
            "a label fraction must be in (0, 1], got {fraction}"
        )));
    }
    if fraction == 1.0 {
        return Ok((0..labels.len()).collect());
    }
    let classes = classes.max(labels.iter().map(|&l| l as usize + 1).max().unwrap_or(0));
    let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); classes];
    for (i, &l) in labels.iter().enumerate() {
        by_class[l as usize].push(i);
    }
    let present = by_class.iter().filter(|c| !c.is_empty()).count();
    let keep = per_class(labels.len(), present, fraction);
    let mut out = Vec::new();
    for (c, members) in by_class.iter_mut().enumerate() {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ SALT);
        rng.set_stream(c as u64);
        members.shuffle(&mut rng);
        out.extend(members.iter().take(keep));
    }
    out.sort_unstable();
    Ok(out)
}

/// `fraction` as a report label: `1%`, `10%`, `0.5%`, `100%`.
pub fn percent(fraction: f64) -> String {
    let p = fraction * 100.0;
    let s = format!("{p:.3}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    format!("{s}%")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(per: &[usize]) -> Vec<u32> {
        // Interleaved, so dataset order is not class order.
        let mut out = Vec::new();
        let max = per.iter().copied().max().unwrap_or(0);
        for i in 0..max {
            for (c, &n) in per.iter().enumerate() {
                if i < n {
                    out.push(c as u32);
                }
            }
        }
        out
    }

    #[test]
    fn subsets_are_class_balanced_nested_and_seeded() {
        let y = labels(&[100; 10]);
        let one = balanced_subset(&y, 10, 0.01, 7).unwrap();
        let ten = balanced_subset(&y, 10, 0.1, 7).unwrap();
        assert_eq!(one.len(), 10);
        assert_eq!(ten.len(), 100);
        for c in 0..10u32 {
            assert_eq!(one.iter().filter(|&&i| y[i] == c).count(), 1);
            assert_eq!(ten.iter().filter(|&&i| y[i] == c).count(), 10);
        }
        assert!(one.iter().all(|i| ten.contains(i)), "1% ⊂ 10%");
        assert_eq!(one, balanced_subset(&y, 10, 0.01, 7).unwrap());
        assert_ne!(ten, balanced_subset(&y, 10, 0.1, 8).unwrap());
        assert!(ten.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn the_whole_set_keeps_dataset_order_and_small_classes_are_capped() {
        let y = labels(&[50, 3, 50]);
        assert_eq!(
            balanced_subset(&y, 3, 1.0, 0).unwrap(),
            (0..103).collect::<Vec<_>>()
        );
        let s = balanced_subset(&y, 3, 0.3, 0).unwrap();
        // round(0.3 · 103 / 3) = 10 per class, class 1 has only 3.
        assert_eq!(s.iter().filter(|&&i| y[i] == 1).count(), 3);
        assert_eq!(s.iter().filter(|&&i| y[i] == 0).count(), 10);
        assert!(balanced_subset(&y, 3, 0.0, 0).is_err());
        assert!(balanced_subset(&y, 3, 1.5, 0).is_err());
    }

    #[test]
    fn percent_labels() {
        assert_eq!(percent(0.01), "1%");
        assert_eq!(percent(0.1), "10%");
        assert_eq!(percent(1.0), "100%");
        assert_eq!(percent(0.005), "0.5%");
    }
}
