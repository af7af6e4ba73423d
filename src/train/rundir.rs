//! The run directory: `<parent>/<name>-<UTC timestamp>/`, created fresh (never an
//! existing directory), with the resolved recipe written first so an unwritable
//! location fails before any training; and its status ([`status`]): running, finished,
//! interrupted or failed, from the `status.json` each `recipe run` keeps
//! ([`LiveStatus`]).

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
/// The final downstream results, written when a run finishes.
pub const RESULTS_FILE: &str = "results.json";
/// How the latest `recipe run` on the directory ended (or that it is running).
pub const STATUS_FILE: &str = "status.json";

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

/// Whether `dir` looks like a run directory: it has a `recipe.yaml` and the
/// `checkpoints/` folder, `invocations.jsonl` or `results.json` that `recipe run`
/// writes beside it.
pub fn is_run_dir(dir: &Path) -> bool {
    dir.join(RECIPE_FILE).is_file()
        && (dir.join(CHECKPOINTS).is_dir()
            || dir.join(crate::train::resume::INVOCATIONS).is_file()
            || dir.join(RESULTS_FILE).is_file())
}

/// Where a run directory stands, as [`status`] reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RunStatus {
    /// A `recipe run` process is working on it now.
    Running {
        /// The process id.
        pid: u32,
        /// The machine it runs on.
        host: String,
    },
    /// Training and the downstream tasks are done; `results.json` is readable.
    Finished,
    /// Stopped (Ctrl-C, SIGTERM, `--stop-after-steps`, or killed) with a checkpoint to
    /// resume from: `recipe run --resume DIR` continues it.
    Interrupted {
        /// The steps done, when the run recorded them (`None` for a killed run or a
        /// directory from before `status.json`).
        step: Option<u64>,
    },
    /// Stopped by an error (divergence, I/O, a panic, a kill before the first
    /// checkpoint), or its `results.json` is unreadable.
    Failed {
        /// What went wrong, as the run reported it or as [`status`] inferred it.
        error: String,
    },
}

impl RunStatus {
    /// `running`, `finished`, `interrupted` or `failed`.
    pub fn name(&self) -> &'static str {
        match self {
            RunStatus::Running { .. } => "running",
            RunStatus::Finished => "finished",
            RunStatus::Interrupted { .. } => "interrupted",
            RunStatus::Failed { .. } => "failed",
        }
    }
}

/// The status of the run directory `dir`, by this rule:
///
/// 1. `status.json` (written by `recipe run` when an invocation starts, and rewritten
///    when it ends) says `finished`, `interrupted` or `failed`: that, with the step or
///    the error it recorded.
/// 2. It says `running`: if the process it names is alive (same host, same pid, same
///    process start time — a reused pid does not count), `Running`; a run started on
///    another host is taken as running, since it cannot be checked from here. Otherwise
///    the process died without recording an outcome (SIGKILL, power loss): `Interrupted`
///    when `checkpoints/last.safetensors` exists (it can be resumed), else `Failed`.
/// 3. No `status.json` (a directory written before the file existed, or one whose
///    status cannot be parsed): `Finished` when `results.json` exists, `Interrupted`
///    when `checkpoints/last.safetensors` exists, else `Failed`.
///
/// Whatever the rule gives, `Finished` needs a `results.json` that parses as a JSON
/// object; otherwise the run is `Failed` with the reason. Never panics; reads only
/// small files.
pub fn status(dir: &Path) -> RunStatus {
    let checkpoint = dir.join(CHECKPOINTS).join(LAST).is_file();
    let recorded: Option<serde_json::Value> = fs::read_to_string(dir.join(STATUS_FILE))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok());
    let s = match recorded
        .as_ref()
        .and_then(|v| Some((v, v["status"].as_str()?)))
    {
        Some((_, "finished")) => RunStatus::Finished,
        Some((v, "interrupted")) => RunStatus::Interrupted {
            step: v["step"].as_u64(),
        },
        Some((v, "failed")) => RunStatus::Failed {
            error: v["error"]
                .as_str()
                .unwrap_or("failed (no error recorded)")
                .to_string(),
        },
        Some((v, "running")) => {
            let pid = v["pid"].as_u64().and_then(|p| u32::try_from(p).ok());
            let host = v["host"].as_str().unwrap_or_default().to_string();
            match pid {
                Some(pid) if host != crate::runtime::hostname() => RunStatus::Running { pid, host },
                Some(pid) if alive(pid, v["process_start"].as_u64()) => {
                    RunStatus::Running { pid, host }
                }
                _ if checkpoint => RunStatus::Interrupted { step: None },
                _ => RunStatus::Failed {
                    error: "the process stopped before its first checkpoint without recording \
                            why (killed?)"
                        .to_string(),
                },
            }
        }
        _ if dir.join(RESULTS_FILE).exists() => RunStatus::Finished,
        _ if checkpoint => RunStatus::Interrupted { step: None },
        _ => RunStatus::Failed {
            error: "no checkpoint and no results".to_string(),
        },
    };
    if s != RunStatus::Finished {
        return s;
    }
    let path = dir.join(RESULTS_FILE);
    match fs::read_to_string(&path) {
        Err(e) => RunStatus::Failed {
            error: format!("{RESULTS_FILE} cannot be read: {e}"),
        },
        Ok(t) => match serde_json::from_str::<serde_json::Value>(&t) {
            Ok(v) if v.is_object() => RunStatus::Finished,
            Ok(_) => RunStatus::Failed {
                error: format!("{RESULTS_FILE} is not a JSON object"),
            },
            Err(e) => RunStatus::Failed {
                error: format!("{RESULTS_FILE} is unreadable: {e}"),
            },
        },
    }
}

/// The start time of process `pid` in clock ticks since boot (field 22 of
/// `/proc/PID/stat`), or `None` without `/proc`, such a process, or with a process
/// that has exited and awaits its parent (a zombie: state `Z` or `X`).
fn process_start(pid: &str) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Field 2, the command name, is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    if matches!(fields.next(), Some("Z" | "X" | "x")) {
        return None;
    }
    fields.nth(18)?.parse().ok()
}

/// Whether process `pid` (started at `start` ticks, when known) is alive on this host.
fn alive(pid: u32, start: Option<u64>) -> bool {
    if Path::new("/proc/self/stat").is_file() {
        return match process_start(&pid.to_string()) {
            None => false,
            Some(now) => start.is_none_or(|s| s == now),
        };
    }
    // No /proc: ask the kernel whether the pid exists.
    let Ok(p) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: signal 0 sends nothing; it only checks that the process exists.
    let rc = unsafe { libc::kill(p, 0) };
    rc == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// How an invocation of `recipe run` ended, for [`LiveStatus::end`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Trained, evaluated, results written; at this step.
    Finished {
        /// Steps done.
        step: u64,
    },
    /// Stopped with the state saved.
    Interrupted {
        /// Steps done.
        step: u64,
    },
    /// Stopped by an error.
    Failed {
        /// The error, as printed.
        error: String,
    },
}

/// A `recipe run` invocation's entry in `status.json`: [`LiveStatus::start`] writes
/// `running` with this process's id, host and start time; [`LiveStatus::end`] writes
/// the outcome. Dropped without `end` (a panic unwinding), it writes `failed`.
#[derive(Debug)]
pub struct LiveStatus {
    dir: PathBuf,
    ended: bool,
}

fn write_status(dir: &Path, mut v: serde_json::Value) -> Result<(), String> {
    v["time"] = serde_json::json!(timestamp(SystemTime::now()));
    write_text(
        &dir.join(STATUS_FILE),
        &(serde_json::to_string_pretty(&v).unwrap_or_default() + "\n"),
    )
}

impl LiveStatus {
    /// Records in `dir` that this process runs it, from step `start_step`.
    pub fn start(dir: &Path, start_step: u64) -> Result<LiveStatus, String> {
        write_status(
            dir,
            serde_json::json!({
                "status": "running",
                "pid": std::process::id(),
                "host": crate::runtime::hostname(),
                "process_start": process_start("self"),
                "start_step": start_step,
            }),
        )?;
        Ok(LiveStatus {
            dir: dir.to_path_buf(),
            ended: false,
        })
    }

    /// Records how the invocation ended. A failure to write is returned; the caller
    /// may only warn about it (the outcome itself is already decided).
    pub fn end(mut self, outcome: &Outcome) -> Result<(), String> {
        self.ended = true;
        write_status(
            &self.dir,
            match outcome {
                Outcome::Finished { step } => {
                    serde_json::json!({"status": "finished", "step": step})
                }
                Outcome::Interrupted { step } => {
                    serde_json::json!({"status": "interrupted", "step": step})
                }
                Outcome::Failed { error } => {
                    serde_json::json!({"status": "failed", "error": error})
                }
            },
        )
    }
}

impl Drop for LiveStatus {
    fn drop(&mut self) {
        if !self.ended {
            let error = if std::thread::panicking() {
                "the process panicked"
            } else {
                "the invocation ended without recording an outcome"
            };
            let _ = write_status(
                &self.dir,
                serde_json::json!({"status": "failed", "error": error}),
            );
        }
    }
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
    fn status_follows_the_recorded_outcome_then_the_files() {
        let tmp = tempfile::tempdir().unwrap();
        let d = create(tmp.path(), "x", "a: 1\n").unwrap();
        assert!(is_run_dir(&d));
        assert!(!is_run_dir(tmp.path()));
        // No status file: the files decide.
        assert_eq!(status(&d).name(), "failed");
        fs::write(d.join(CHECKPOINTS).join(LAST), "x").unwrap();
        assert_eq!(status(&d), RunStatus::Interrupted { step: None });
        fs::write(d.join(RESULTS_FILE), "{\"a\": 1}").unwrap();
        assert_eq!(status(&d), RunStatus::Finished);
        // This process is alive: running.
        let live = LiveStatus::start(&d, 0).unwrap();
        assert!(matches!(status(&d), RunStatus::Running { pid, .. } if pid == std::process::id()));
        live.end(&Outcome::Interrupted { step: 7 }).unwrap();
        assert_eq!(status(&d), RunStatus::Interrupted { step: Some(7) });
        let live = LiveStatus::start(&d, 7).unwrap();
        drop(live);
        assert!(matches!(status(&d), RunStatus::Failed { .. }));
        LiveStatus::start(&d, 7)
            .unwrap()
            .end(&Outcome::Finished { step: 9 })
            .unwrap();
        assert_eq!(status(&d), RunStatus::Finished);
        // A finished run needs readable results.
        fs::write(d.join(RESULTS_FILE), "{\"a\": ").unwrap();
        assert!(matches!(status(&d), RunStatus::Failed { error } if error.contains("unreadable")));
        // A dead process (no such pid) that left a checkpoint: interrupted; none: failed.
        let dead = serde_json::json!({"status": "running", "pid": u32::MAX - 1,
            "host": crate::runtime::hostname(), "process_start": 1});
        fs::write(d.join(STATUS_FILE), dead.to_string()).unwrap();
        assert_eq!(status(&d), RunStatus::Interrupted { step: None });
        fs::remove_file(d.join(CHECKPOINTS).join(LAST)).unwrap();
        assert_eq!(status(&d).name(), "failed");
        // A reused pid (this process, another start time) is not the run's process.
        let reused = serde_json::json!({"status": "running", "pid": std::process::id(),
            "host": crate::runtime::hostname(), "process_start": 1});
        fs::write(d.join(STATUS_FILE), reused.to_string()).unwrap();
        assert_eq!(status(&d).name(), "failed");
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
