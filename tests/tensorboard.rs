//! The TensorBoard events files: the CRC-32C and its masking against known answers,
//! the records read back by a reader written here (independent of the library's: its
//! own bitwise CRC and protobuf decoding), the cut-back on resume, and a tiny
//! `recipe run` (MoCo, no `visualize` task) whose run directory has the events file
//! with the expected tags and the training curves, stopped and resumed without a
//! step logged twice. `scripts/check_tensorboard.py` loads the same files with
//! TensorBoard's own reader (outside this suite).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use recipe::report::metrics::{Kind, Record};
use recipe::report::tensorboard::{
    self, Data, EventWriter, FILE_VERSION, crc32c, masked_crc32c, read_events,
};

mod common;
use common::{recipe, text, tiny_recipe};

// --- an independent reader -------------------------------------------------------

/// CRC-32C bit by bit (no table), to check the library's table-driven one.
fn crc_bitwise(data: &[u8]) -> u32 {
    let mut c = 0xFFFF_FFFFu32;
    for &b in data {
        c ^= u32::from(b);
        for _ in 0..8 {
            let lsb = c & 1;
            c >>= 1;
            if lsb == 1 {
                c ^= 0x82F6_3B78;
            }
        }
    }
    c ^ 0xFFFF_FFFF
}

fn mask(c: u32) -> u32 {
    c.rotate_right(15).wrapping_add(0xA282_EAD8)
}

fn u32_le(b: &[u8]) -> u32 {
    u32::from_le_bytes(b.try_into().unwrap())
}

/// Every record's data; panics on a CRC that does not match or a cut-short file.
fn raw_records(bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let len_bytes = &bytes[at..at + 8];
        assert_eq!(
            u32_le(&bytes[at + 8..at + 12]),
            mask(crc_bitwise(len_bytes)),
            "length CRC of record {}",
            out.len() + 1
        );
        let len = u64::from_le_bytes(len_bytes.try_into().unwrap()) as usize;
        let data = &bytes[at + 12..at + 12 + len];
        assert_eq!(
            u32_le(&bytes[at + 12 + len..at + 16 + len]),
            mask(crc_bitwise(data)),
            "data CRC of record {}",
            out.len() + 1
        );
        out.push(data.to_vec());
        at += 16 + len;
    }
    out
}

fn varint(b: &[u8], at: &mut usize) -> u64 {
    let mut v = 0u64;
    let mut shift = 0;
    loop {
        let x = b[*at];
        *at += 1;
        v |= u64::from(x & 0x7F) << shift;
        if x & 0x80 == 0 {
            return v;
        }
        shift += 7;
    }
}

/// `(field, wire type, payload)`: varints as their 8 little-endian bytes.
fn proto_fields(b: &[u8]) -> Vec<(u64, u64, Vec<u8>)> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < b.len() {
        let key = varint(b, &mut at);
        let payload = match key & 7 {
            0 => varint(b, &mut at).to_le_bytes().to_vec(),
            1 => {
                at += 8;
                b[at - 8..at].to_vec()
            }
            2 => {
                let n = varint(b, &mut at) as usize;
                at += n;
                b[at - n..at].to_vec()
            }
            5 => {
                at += 4;
                b[at - 4..at].to_vec()
            }
            w => panic!("wire type {w}"),
        };
        out.push((key >> 3, key & 7, payload));
    }
    out
}

/// What the test reader makes of one event.
#[derive(Debug, Default)]
struct Ev {
    step: i64,
    wall_time: f64,
    version: Option<String>,
    scalars: Vec<(String, f32)>,
    /// `(tag, width, height, colorspace, png)`.
    images: Vec<(String, i64, i64, i64, Vec<u8>)>,
}

fn decode(data: &[u8]) -> Ev {
    let mut e = Ev::default();
    for (n, w, p) in proto_fields(data) {
        match (n, w) {
            (1, 1) => e.wall_time = f64::from_le_bytes(p.try_into().unwrap()),
            (2, 0) => e.step = i64::from_le_bytes(p.try_into().unwrap()),
            (3, 2) => e.version = Some(String::from_utf8(p).unwrap()),
            (5, 2) => {
                for (vn, vw, v) in proto_fields(&p) {
                    assert_eq!((vn, vw), (1, 2), "Summary holds only values");
                    let mut tag = String::new();
                    let mut scalar = None;
                    let mut image = None;
                    for (f, fw, q) in proto_fields(&v) {
                        match (f, fw) {
                            (1, 2) => tag = String::from_utf8(q).unwrap(),
                            (2, 5) => scalar = Some(f32::from_le_bytes(q.try_into().unwrap())),
                            (4, 2) => {
                                let mut img = (0, 0, 0, Vec::new());
                                for (g, _, r) in proto_fields(&q) {
                                    let int = || i64::from_le_bytes(r.clone().try_into().unwrap());
                                    match g {
                                        1 => img.1 = int(),
                                        2 => img.0 = int(),
                                        3 => img.2 = int(),
                                        4 => img.3 = r.clone(),
                                        _ => panic!("Image field {g}"),
                                    }
                                }
                                image = Some(img);
                            }
                            _ => panic!("Value field {f} (wire type {fw})"),
                        }
                    }
                    match (scalar, image) {
                        (Some(s), None) => e.scalars.push((tag, s)),
                        (None, Some((w, h, c, png))) => e.images.push((tag, w, h, c, png)),
                        other => panic!("value {tag}: {other:?}"),
                    }
                }
            }
            _ => panic!("Event field {n} (wire type {w})"),
        }
    }
    e
}

fn read_file(path: &Path) -> Vec<Ev> {
    let evs: Vec<Ev> = raw_records(&std::fs::read(path).unwrap())
        .iter()
        .map(|d| decode(d))
        .collect();
    assert_eq!(
        evs.first().and_then(|e| e.version.as_deref()),
        Some(FILE_VERSION),
        "{} starts with its file version",
        path.display()
    );
    evs
}

fn events_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("events.out.tfevents.")
        })
        .collect();
    v.sort();
    v
}

/// Every scalar of every events file in `dir`, by tag: `(step, value)` in file order.
fn scalars_by_tag(dir: &Path) -> BTreeMap<String, Vec<(i64, f32)>> {
    let mut out: BTreeMap<String, Vec<(i64, f32)>> = BTreeMap::new();
    for f in events_files(dir) {
        for e in read_file(&f) {
            for (t, v) in e.scalars {
                out.entry(t).or_default().push((e.step, v));
            }
        }
    }
    out
}

// --- the CRC ---------------------------------------------------------------------

#[test]
fn crc32c_known_answers() {
    assert_eq!(crc32c(b"123456789"), 0xE306_9283);
    assert_eq!(crc32c(b""), 0);
    // RFC 3720, B.4.
    assert_eq!(crc32c(&[0u8; 32]), 0x8A91_36AA);
    assert_eq!(crc32c(&[0xFFu8; 32]), 0x62A8_AB43);
    let ascending: Vec<u8> = (0..32).collect();
    assert_eq!(crc32c(&ascending), 0x46DD_794E);
    // Masking: rotate right by 15, add 0xA282EAD8.
    assert_eq!(masked_crc32c(b"123456789"), 0xC78A_B0E5);
    assert_eq!(masked_crc32c(b""), 0xA282_EAD8);
}

#[test]
fn crc32c_agrees_with_a_bitwise_one() {
    let mut x = 12345u32;
    for len in [1usize, 7, 8, 63, 1000] {
        let data: Vec<u8> = (0..len)
            .map(|_| {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                (x >> 16) as u8
            })
            .collect();
        assert_eq!(crc32c(&data), crc_bitwise(&data), "length {len}");
        assert_eq!(masked_crc32c(&data), mask(crc_bitwise(&data)));
    }
}

// --- the writer ------------------------------------------------------------------

fn tiny_png() -> Vec<u8> {
    let mut png = Vec::new();
    image::RgbImage::from_pixel(5, 3, image::Rgb([10, 200, 30]))
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    png
}

#[test]
fn scalars_and_images_read_back() {
    let tmp = tempfile::tempdir().unwrap();
    let mut w = EventWriter::create(tmp.path()).unwrap();
    let name = w.path().file_name().unwrap().to_string_lossy().into_owned();
    assert!(name.starts_with("events.out.tfevents."), "{name}");
    w.record(
        &Record::new(Kind::Step, 0, 1)
            .with("loss", 4.5)
            .with("lr", 0.25)
            .with("images_per_s", 1000.0),
    )
    .unwrap();
    w.record(
        &Record::new(Kind::Epoch, 0, 2)
            .with("loss", 4.0)
            .with("knn_top1", 55.5)
            .with("embedding_std", 0.125)
            .with("watch_seconds", 0.5),
    )
    .unwrap();
    // Eval records are left to the downstream scalars.
    w.record(&Record::new(Kind::Eval, 0, 2).with("knn_top1", 1.0))
        .unwrap();
    let png = tiny_png();
    w.png(2, "loss", &png).unwrap();
    assert!(w.png(2, "bad", b"not a png").is_err());
    drop(w);

    let files = events_files(tmp.path());
    assert_eq!(files.len(), 1);
    let evs = read_file(&files[0]);
    assert_eq!(evs.len(), 4, "{evs:?}");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    for e in &evs {
        assert!((now - e.wall_time).abs() < 600.0, "{}", e.wall_time);
    }
    assert_eq!(evs[1].step, 1);
    assert_eq!(
        evs[1].scalars,
        vec![
            ("train/loss".to_string(), 4.5),
            ("train/lr".to_string(), 0.25),
            ("train/images_per_s".to_string(), 1000.0)
        ]
    );
    assert_eq!(evs[2].step, 2);
    assert_eq!(
        evs[2].scalars,
        vec![
            ("epoch/loss".to_string(), 4.0),
            ("knn/top1".to_string(), 55.5),
            ("watch/embedding_std".to_string(), 0.125),
            ("watch/seconds".to_string(), 0.5)
        ]
    );
    assert_eq!(evs[3].images, vec![("loss".to_string(), 5, 3, 3, png)]);

    // The library's reader agrees.
    let lib = read_events(&files[0]).unwrap();
    assert_eq!(lib.len(), 4);
    assert_eq!(lib[0].file_version.as_deref(), Some(FILE_VERSION));
    assert_eq!(lib[1].values[0].tag, "train/loss");
    assert_eq!(lib[1].values[0].data, Data::Scalar(4.5));
    assert!(matches!(
        lib[3].values[0].data,
        Data::Image {
            width: 5,
            height: 3,
            colorspace: 3,
            ..
        }
    ));
}

#[test]
fn downstream_results_become_tags() {
    let entries = vec![
        serde_json::json!({"task": "knn", "k": 5, "trained": {"top1": 40.5, "top5": 80.0},
            "raw_pixels": {"top1": 70.0, "top5": 90.0}, "seconds": 1.0}),
        serde_json::json!({"task": "knn", "trained": {"top1": 41.0, "top5": 81.0}}),
        serde_json::json!({"task": "visualize", "figures": ["filters.png"]}),
    ];
    let s = tensorboard::downstream_scalars(&entries);
    let tags: Vec<&str> = s.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(
        tags,
        [
            "downstream/knn/trained/top1",
            "downstream/knn/trained/top5",
            "downstream/knn/raw_pixels/top1",
            "downstream/knn/raw_pixels/top5",
            "downstream/knn_2/trained/top1",
            "downstream/knn_2/trained/top5",
        ]
    );
    assert_eq!(s[0].1, 40.5);
}

#[test]
fn torn_last_record_is_ignored_and_a_bad_crc_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let mut w = EventWriter::create(tmp.path()).unwrap();
    w.scalars(1, &[("train/loss".into(), 1.0)]).unwrap();
    w.scalars(2, &[("train/loss".into(), 2.0)]).unwrap();
    let path = w.path().to_path_buf();
    drop(w);
    let bytes = std::fs::read(&path).unwrap();
    // Cut the last record short: two events left.
    std::fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
    assert_eq!(read_events(&path).unwrap().len(), 2);
    // Flip a data byte of the second record: an error naming the file.
    let mut bad = bytes.clone();
    let first_len = u64::from_le_bytes(bad[..8].try_into().unwrap()) as usize;
    bad[16 + first_len + 12] ^= 1;
    std::fs::write(&path, &bad).unwrap();
    let err = read_events(&path).unwrap_err().to_string();
    assert!(err.contains("CRC") && err.contains("tfevents"), "{err}");
}

#[test]
fn an_unwritable_directory_is_an_error_not_a_panic() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("no").join("such");
    let err = EventWriter::create(&missing).unwrap_err().to_string();
    assert!(err.contains("events.out.tfevents."), "{err}");
}

#[test]
fn resume_cuts_earlier_files_back_to_the_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let mut w = EventWriter::create(tmp.path()).unwrap();
    for step in 1..=5u64 {
        w.record(&Record::new(Kind::Step, 0, step).with("loss", step as f64))
            .unwrap();
    }
    // The outputs of a finished run, at its last step.
    w.scalars(5, &[("downstream/knn/trained/top1".into(), 50.0)])
        .unwrap();
    w.png(5, "loss", &tiny_png()).unwrap();
    let first = w.path().to_path_buf();
    drop(w);

    let mut r = EventWriter::resume(tmp.path(), 3).unwrap();
    assert_ne!(r.path(), first.as_path(), "a resumed run opens a new file");
    for step in 4..=6u64 {
        r.record(&Record::new(Kind::Step, 0, step).with("loss", 10.0 + step as f64))
            .unwrap();
    }
    drop(r);
    assert_eq!(events_files(tmp.path()).len(), 2);
    let old = read_file(&first);
    assert_eq!(old.iter().map(|e| e.step).collect::<Vec<_>>(), [0, 1, 2, 3]);
    assert!(old.iter().all(|e| e.images.is_empty()));
    let by = scalars_by_tag(tmp.path());
    assert_eq!(by.keys().collect::<Vec<_>>(), ["train/loss"]);
    assert_eq!(
        by["train/loss"],
        [
            (1, 1.0),
            (2, 2.0),
            (3, 3.0),
            (4, 14.0),
            (5, 15.0),
            (6, 16.0)
        ]
    );
    // Nothing is left of the temporary files.
    let names: Vec<String> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");
}

// --- a run -----------------------------------------------------------------------

/// After [`common::TINY_START`]: two epochs of MoCo with a checkpoint each.
const TINY_REST: &str = r#"optimizer: {name: sgd, lr: 0.05, momentum: 0.9, weight_decay: 1.0e-4}
schedule: {kind: warmup_cosine, warmup_epochs: 1}
train: {epochs: 2, batch_size: 32, log_every: 1, checkpoint_every: 1, threads: 2, watch_samples: 64}
loss: {method: moco, temperature: 0.2, momentum: 0.9, queue_size: 64}
downstream:
  - {task: knn, k: 5, every_epochs: 1}
"#;

fn only_dir(out: &Path) -> PathBuf {
    let dirs: Vec<PathBuf> = std::fs::read_dir(out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    dirs[0].clone()
}

/// The step losses of `metrics.jsonl`, as `f32` (what the events file stores).
fn jsonl_losses(dir: &Path) -> Vec<(i64, f32)> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["kind"] == "step")
        .map(|v| {
            (
                v["step"].as_i64().unwrap(),
                v["loss"].as_f64().unwrap() as f32,
            )
        })
        .collect()
}

#[test]
fn a_run_writes_events_and_curves_and_a_resume_logs_no_step_twice() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("tiny.yaml");
    std::fs::write(&file, tiny_recipe(TINY_REST)).unwrap();
    let f = file.to_str().unwrap();

    // Whole.
    let out = tmp.path().join("whole");
    let o = recipe(&["run", f, "--out", out.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let whole = only_dir(&out);
    assert_eq!(events_files(&whole).len(), 1);
    // The training curves without a `visualize` task (issue 25, item 4).
    for png in ["loss.png", "lr.png", "knn.png"] {
        assert!(whole.join(png).is_file(), "{png} missing");
    }
    let by = scalars_by_tag(&whole);
    for tag in [
        "train/loss",
        "train/lr",
        "train/images_per_s",
        "epoch/loss",
        "knn/top1",
        "knn/top5",
        "watch/embedding_std",
        "watch/feature_std",
        "watch/feature_rank",
        "downstream/knn/trained/top1",
        "downstream/knn/untrained_network/top1",
        "downstream/knn/raw_pixels/top1",
    ] {
        assert!(by.contains_key(tag), "{tag} missing: {:?}", by.keys());
    }
    // 2 epochs of 6 steps, logged every step.
    assert_eq!(by["train/loss"], jsonl_losses(&whole));
    assert_eq!(by["train/loss"].len(), 12);
    assert_eq!(
        by["knn/top1"].iter().map(|p| p.0).collect::<Vec<_>>(),
        [6, 12]
    );
    let res: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(whole.join("results.json")).unwrap())
            .unwrap();
    let top1 = res["downstream"][0]["trained"]["top1"].as_f64().unwrap() as f32;
    assert_eq!(by["downstream/knn/trained/top1"], [(12, top1)]);
    let images: Vec<(String, i64)> = events_files(&whole)
        .iter()
        .flat_map(|f| read_file(f))
        .flat_map(|e| {
            let step = e.step;
            e.images.into_iter().map(move |i| (i.0, step))
        })
        .collect();
    for tag in ["loss", "lr", "knn", "collapse", "rank"] {
        assert!(
            images.contains(&(tag.to_string(), 12)),
            "image {tag}: {images:?}"
        );
    }
    for (tag, ..) in &images {
        let png = std::fs::read(whole.join(format!("{tag}.png"))).unwrap();
        let ev = events_files(&whole)
            .iter()
            .flat_map(|f| read_file(f))
            .flat_map(|e| e.images)
            .find(|i| &i.0 == tag)
            .unwrap();
        assert_eq!(ev.4, png, "{tag}: the PNG's bytes");
    }

    // Stopped in the second epoch, then resumed.
    let out = tmp.path().join("parts");
    let o = recipe(&[
        "run",
        f,
        "--out",
        out.to_str().unwrap(),
        "--stop-after-steps",
        "8",
    ]);
    assert_eq!(o.status.code(), Some(130), "{}", text(&o.stderr));
    let parts = only_dir(&out);
    let o = recipe(&["run", "--resume", parts.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert_eq!(events_files(&parts).len(), 2, "a new file per invocation");
    let resumed = scalars_by_tag(&parts);
    assert_eq!(
        resumed.keys().collect::<Vec<_>>(),
        by.keys().collect::<Vec<_>>()
    );
    for (tag, points) in &resumed {
        let steps: Vec<i64> = points.iter().map(|p| p.0).collect();
        let mut unique = steps.clone();
        unique.dedup();
        assert_eq!(steps, unique, "{tag}: a step logged twice");
        let expected: Vec<i64> = by[tag].iter().map(|p| p.0).collect();
        assert_eq!(steps, expected, "{tag}");
    }
    // The training numbers do not change: the same losses as the uninterrupted run.
    assert_eq!(resumed["train/loss"], by["train/loss"]);
}
