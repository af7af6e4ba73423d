//! The recipe's `data` section ([`crate::spec::data::Data`]) as the data layer's
//! [`DataConfig`], and its path problems under recipe key paths. Paths are used as the
//! spec loader resolved them.

use std::path::PathBuf;

use crate::data::{
    Builtin, CifarFiles, CifarKind, DataConfig, IdxFiles, PathProblem, Resize, Source, check_paths,
};
use crate::spec::data as spec;

/// The configuration a recipe's `data` section describes; `seed` seeds the subset and
/// hold-out choices (the recipe's run seed).
///
/// `subset: 1` and `test_fraction: 0` mean "all images" and "no hold-out". A
/// `test_fraction` given for a source with its own test split is passed on, so
/// [`crate::data::load`] refuses it rather than ignoring it. `normalize` is not data
/// loading: the augment chain applies it.
pub fn config(d: &spec::Data, seed: u64) -> DataConfig {
    let source = match &d.source {
        spec::Source::Builtin { name } => Source::Builtin(match name {
            spec::BuiltinDataset::FashionMnist => Builtin::FashionMnist,
            spec::BuiltinDataset::Mnist => Builtin::Mnist,
        }),
        spec::Source::Idx {
            train_images,
            train_labels,
            test_images,
            test_labels,
        } => Source::Idx(IdxFiles {
            train_images: PathBuf::from(train_images),
            train_labels: Some(PathBuf::from(train_labels)),
            test_images: test_images.as_ref().map(PathBuf::from),
            test_labels: test_labels.as_ref().map(PathBuf::from),
        }),
        spec::Source::Cifar { variant, dir } => {
            let kind = match variant {
                spec::CifarVariant::Cifar10 => CifarKind::Cifar10,
                spec::CifarVariant::Cifar100 => CifarKind::Cifar100Fine,
            };
            Source::Cifar(CifarFiles::in_dir(&PathBuf::from(dir), kind))
        }
        spec::Source::ImageFolder { train, test } => Source::ImageFolder {
            train: PathBuf::from(train),
            test: test.as_ref().map(PathBuf::from),
        },
    };
    DataConfig {
        source,
        channels: Some(d.channels),
        image_size: Some((d.image_size, d.image_size)),
        resize: match d.mixed_sizes {
            spec::MixedSizes::Resize => Resize::Bilinear,
            spec::MixedSizes::Error => Resize::Error,
        },
        subset: (d.subset < 1.0).then_some(d.subset),
        test_subset: None,
        holdout: (d.test_fraction > 0.0).then_some(d.test_fraction),
        use_labels: d.labels,
        skip_unreadable: d.skip_unreadable,
        seed,
    }
}

/// [`check_paths`] for a recipe's `data` section at recipe path `at` (`data`, or a
/// task's `downstream.N.data`), with each problem's `field` given as the recipe key
/// path (`data.source.train_images`, `data.source.dir`, ...), for `recipe validate`.
pub fn path_problems(d: &spec::Data, at: &str) -> Vec<PathProblem> {
    let cfg = config(d, 0);
    let mut problems = Vec::new();
    if let spec::Source::Cifar { dir, .. } = &d.source {
        let dir = PathBuf::from(dir);
        if !dir.is_dir() {
            // One problem for the folder rather than one per missing batch inside it.
            return vec![PathProblem {
                field: format!("{at}.source.dir"),
                problem: if dir.exists() {
                    "is a file, expected a folder".into()
                } else {
                    "does not exist".into()
                },
                path: dir,
            }];
        }
        for mut p in check_paths(&cfg) {
            p.field = format!("{at}.source.dir");
            problems.push(p);
        }
        return problems;
    }
    for mut p in check_paths(&cfg) {
        p.field = format!("{at}.{}", p.field);
        problems.push(p);
    }
    problems
}

/// The recipe key path of a [`DataConfig`] field of the `data` section at `at`
/// (`source.train` → `data.source.train`; a CIFAR batch `source.train[2]` →
/// `data.source.dir`, the folder the recipe names).
pub fn recipe_field(d: &spec::Data, at: &str, field: &str) -> String {
    match &d.source {
        spec::Source::Cifar { .. } if field.starts_with("source.") => format!("{at}.source.dir"),
        _ => format!("{at}.{field}"),
    }
}
