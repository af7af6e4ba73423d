//! Random mutations of valid recipes never panic the loader: deleted and duplicated
//! lines, wrong-typed values, garbage bytes and truncation all end in diagnostics (or
//! a valid recipe), and a document without errors always yields a typed recipe.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use recipe::diag::{render_human, render_json};
use recipe::spec::Loader;

const WRONG_VALUES: [&str; 16] = [
    "[]",
    "{}",
    "~",
    "-1",
    "1e999",
    "\"x\"",
    "true",
    "&a x",
    "*nope",
    "!!binary aGk=",
    ".nan",
    "99999999999999999999999",
    "0x7fffffffffffffff",
    "[[[[",
    "'unterminated",
    "a: b: c",
];

fn check(loader: &Loader, dir: &Path, bytes: &[u8], what: &str) {
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        let loaded = loader
            .load_bytes("mutant.yaml", Some(dir), bytes, &[])
            .expect("no I/O is involved");
        let _ = render_human(&loaded.diagnostics, &loaded.sources);
        let _ = render_json(&loaded.diagnostics, &loaded.sources);
        if !loaded.has_errors() {
            assert!(loaded.recipe.is_some(), "no errors but no recipe");
        }
    }));
    if outcome.is_err() {
        panic!(
            "loader panicked on {what}:\n{}",
            String::from_utf8_lossy(bytes)
        );
    }
}

fn recipes() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = ["recipes", "recipes/cifar10", "tests/valid"]
        .iter()
        .flat_map(|d| std::fs::read_dir(d).unwrap().map(|e| e.unwrap().path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    v.sort();
    v
}

#[test]
fn mutations_never_panic() {
    let loader = Loader::new();
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let mut count = 0;
    for path in recipes() {
        let dir = path.parent().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        for i in 0..lines.len() {
            let mut l = lines.clone();
            l.remove(i);
            check(
                &loader,
                dir,
                l.join("\n").as_bytes(),
                &format!("line {i} deleted"),
            );
            let mut l = lines.clone();
            l.insert(i, lines[i]);
            check(
                &loader,
                dir,
                l.join("\n").as_bytes(),
                &format!("line {i} duplicated"),
            );
            count += 2;
        }
        for (i, line) in lines.iter().enumerate() {
            if let Some(pos) = line.find(": ") {
                for w in WRONG_VALUES {
                    let mut l = lines.clone();
                    let replaced = format!("{}: {w}", &line[..pos]);
                    l[i] = &replaced;
                    check(
                        &loader,
                        dir,
                        l.join("\n").as_bytes(),
                        &format!("line {i} value {w}"),
                    );
                    count += 1;
                }
            }
        }
        let bytes = text.as_bytes();
        for _ in 0..60 {
            let cut = rng.gen_range(0..bytes.len());
            check(&loader, dir, &bytes[..cut], &format!("truncated at {cut}"));
            let mut b = bytes.to_vec();
            for _ in 0..rng.gen_range(1..8) {
                let at = rng.gen_range(0..b.len());
                b.insert(at, rng.r#gen());
            }
            check(&loader, dir, &b, "garbage bytes");
            count += 2;
        }
    }
    assert!(count > 3000, "only {count} mutants were tried");
}
