//! Cheap checks of a data configuration that touch the file system but decode nothing,
//! for `recipe validate`.

use std::path::{Path, PathBuf};

use super::{DataConfig, Source};

/// A configured path that cannot be used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathProblem {
    /// The [`DataConfig`] field that holds the path, e.g. `source.train_images` or
    /// `source.train[2]`.
    pub field: String,
    /// The path.
    pub path: PathBuf,
    /// What is wrong: "does not exist", "is a folder, expected a file", ...
    pub problem: String,
}

fn want(field: String, path: &Path, dir: bool, out: &mut Vec<PathProblem>) {
    let problem = match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => "does not exist".to_string(),
        Err(e) => format!("cannot be read: {e}"),
        Ok(m) if dir && !m.is_dir() => "is a file, expected a folder".to_string(),
        Ok(m) if !dir && m.is_dir() => "is a folder, expected a file".to_string(),
        Ok(_) => return,
    };
    out.push(PathProblem {
        field,
        path: path.to_path_buf(),
        problem,
    });
}

/// Every path of `cfg` that does not exist or has the wrong kind (file vs folder), in
/// field order. The built-in source has no paths and never has problems.
pub fn check_paths(cfg: &DataConfig) -> Vec<PathProblem> {
    let mut out = Vec::new();
    match &cfg.source {
        Source::Builtin => {}
        Source::Idx(f) => {
            want(
                "source.train_images".into(),
                &f.train_images,
                false,
                &mut out,
            );
            let optional = [
                ("source.train_labels", &f.train_labels),
                ("source.test_images", &f.test_images),
                ("source.test_labels", &f.test_labels),
            ];
            for (field, p) in optional {
                if let Some(p) = p {
                    want(field.into(), p, false, &mut out);
                }
            }
        }
        Source::Cifar(f) => {
            for (i, p) in f.train.iter().enumerate() {
                want(format!("source.train[{i}]"), p, false, &mut out);
            }
            for (i, p) in f.test.iter().enumerate() {
                want(format!("source.test[{i}]"), p, false, &mut out);
            }
        }
        Source::ImageFolder { train, test } => {
            want("source.train".into(), train, true, &mut out);
            if let Some(t) = test {
                want("source.test".into(), t, true, &mut out);
            }
        }
    }
    out
}
