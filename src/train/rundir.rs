//! The run directory: `<parent>/<name>-<UTC timestamp>/`, created fresh (never an
//! existing directory), with the resolved recipe written first so an unwritable
//! location fails before any training.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// The resolved recipe's file in a run directory.
pub const RECIPE_FILE: &str = "recipe.yaml";
/// The checkpoints folder.
pub const CHECKPOINTS: &str = "checkpoints";
/// The checkpoint written at the end of every epoch and on interruption.
pub const LAST: &str = "last.safetensors";

/// `YYYYMMDD-HHMMSS` in UTC for `t` (civil-from-days, so no date crate is needed).
pub fn timestamp(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's days-to-civil algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}{m:02}{d:02}-{:02}{:02}{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Creates `<parent>/<name>-<timestamp>/` (with `-2`, `-3`, … if that exists) and its
/// `checkpoints/` folder, and writes `recipe_text` to `recipe.yaml` in it. Errors say
/// which path could not be created or written.
pub fn create(parent: &Path, name: &str, recipe_text: &str) -> Result<PathBuf, String> {
    fs::create_dir_all(parent).map_err(|e| {
        format!(
            "cannot create the output directory `{}`: {e}",
            parent.display()
        )
    })?;
    let base = format!("{name}-{}", timestamp(SystemTime::now()));
    let mut dir = parent.join(&base);
    let mut n = 1;
    loop {
        match fs::create_dir(&dir) {
            Ok(()) => break,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && n < 1000 => {
                n += 1;
                dir = parent.join(format!("{base}-{n}"));
            }
            Err(e) => {
                return Err(format!(
                    "cannot create the run directory `{}`: {e}",
                    dir.display()
                ));
            }
        }
    }
    fs::create_dir(dir.join(CHECKPOINTS))
        .and_then(|_| fs::write(dir.join(RECIPE_FILE), recipe_text))
        .map_err(|e| {
            format!(
                "cannot write into the run directory `{}`: {e}",
                dir.display()
            )
        })?;
    Ok(dir)
}

/// Creates the run directory `dir` itself (its parents as needed; `dir` must not exist)
/// with its `checkpoints/` folder and `recipe.yaml`, as [`create`] does for a named one.
pub fn create_at(dir: &Path, recipe_text: &str) -> Result<PathBuf, String> {
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(|e| {
            format!(
                "cannot create the output directory `{}`: {e}",
                parent.display()
            )
        })?;
    }
    fs::create_dir(dir)
        .and_then(|_| fs::create_dir(dir.join(CHECKPOINTS)))
        .and_then(|_| fs::write(dir.join(RECIPE_FILE), recipe_text))
        .map_err(|e| format!("cannot create the run directory `{}`: {e}", dir.display()))?;
    Ok(dir.to_path_buf())
}

/// Writes `text` to `path` through a temporary file and a rename, so a reader never
/// sees half a file.
pub fn write_text(path: &Path, text: &str) -> Result<(), String> {
    crate::checkpoint::write_atomic(path, text.as_bytes()).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps_are_utc_civil_dates() {
        assert_eq!(timestamp(UNIX_EPOCH), "19700101-000000");
        // 2026-11-30 05:35:56 UTC
        let t = UNIX_EPOCH + Duration::from_secs(1_796_016_956);
        assert_eq!(timestamp(t), "20261130-053556");
        // 2024-02-29 23:59:59 UTC (leap day)
        let t = UNIX_EPOCH + Duration::from_secs(1_709_251_199);
        assert_eq!(timestamp(t), "20240229-235959");
    }

    #[test]
    fn never_reuses_a_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let a = create(tmp.path(), "x", "a: 1\n").unwrap();
        let b = create(tmp.path(), "x", "a: 2\n").unwrap();
        assert_ne!(a, b);
        assert_eq!(fs::read_to_string(a.join(RECIPE_FILE)).unwrap(), "a: 1\n");
        assert!(b.join(CHECKPOINTS).is_dir());
    }
}
