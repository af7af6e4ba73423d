//! `report.md` and the metrics files.

use recipe::report::metrics::{CSV_FILE, DEFAULT_FIELDS, JSONL_FILE};
use recipe::report::{
    Kind, MetricsTable, MetricsWriter, Record, ReportError, ReportInput, read_jsonl, write_report,
};

fn input() -> ReportInput {
    ReportInput {
        run_name: "simclr-fashion".into(),
        method: "SimCLR".into(),
        recipe_path: Some("recipes/simclr.yaml".into()),
        overrides: Vec::new(),
        history: Vec::new(),
        timings: vec![("training".into(), 754.2), ("evaluation".into(), 12.31)],
        images_per_s: Some(812.44),
        final_loss: Some(4.123456),
        metrics: MetricsTable {
            columns: vec![
                "kNN top-1".into(),
                "kNN top-5".into(),
                "linear top-1".into(),
            ],
            rows: vec![
                ("trained".into(), vec![Some(81.234), Some(98.5), Some(84.0)]),
                (
                    "untrained network".into(),
                    vec![Some(60.0), Some(90.0), None],
                ),
                (
                    "raw | pixels".into(),
                    vec![Some(79.9), Some(97.0), Some(83.1)],
                ),
            ],
        },
        tables: vec![(
            "Label efficiency: kNN top-1 (k=20) (%)".into(),
            MetricsTable {
                columns: vec!["trained".into(), "supervised (from scratch)".into()],
                rows: vec![
                    ("1% (100 labels)".into(), vec![Some(60.3), None]),
                    ("100% (10000 labels)".into(), vec![Some(81.05), Some(88.4)]),
                ],
            },
        )],
        notes: vec!["Baselines use the same evaluation settings.".into()],
        figures: vec![
            ("Training loss".into(), "plots/loss.png".into()),
            (
                "Nearest neighbours".into(),
                "plots/nearest neighbours.png".into(),
            ),
        ],
    }
}

#[test]
fn report_has_the_facts_the_table_and_the_links() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("report.md");
    write_report(&path, &input()).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.starts_with("# simclr-fashion\n"));
    for line in [
        "- Method: SimCLR",
        "- Recipe: `recipes/simclr.yaml`",
        "- training: 12 min 34 s",
        "- evaluation: 12.3 s",
        "- Throughput: 812.4 images/s",
        "- Final training loss: 4.1235",
        "| | kNN top-1 | kNN top-5 | linear top-1 |",
        "|---|---:|---:|---:|",
        "| trained | 81.23 | 98.50 | 84.00 |",
        "| untrained network | 60.00 | 90.00 | — |",
        "| raw \\| pixels | 79.90 | 97.00 | 83.10 |",
        "Baselines use the same evaluation settings.",
        "![Training loss](plots/loss.png)",
        "![Nearest neighbours](<plots/nearest neighbours.png>)",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing line {line:?} in\n{text}"
        );
    }
    // Every table row has as many cells as its header: the downstream table (5 lines)
    // and the label-efficiency table under its own heading (4 lines).
    let cells = |l: &str| l.replace("\\|", "").matches('|').count();
    let rows: Vec<&str> = text.lines().filter(|l| l.starts_with('|')).collect();
    assert_eq!(rows.len(), 9);
    assert!(rows[..5].iter().all(|l| cells(l) == cells(rows[0])));
    assert!(rows[5..].iter().all(|l| cells(l) == cells(rows[5])));
    assert!(
        text.contains("\n### Label efficiency: kNN top-1 (k=20) (%)\n"),
        "{text}"
    );
    assert!(text.contains("| 1% (100 labels) | 60.30 | — |"), "{text}");
}

#[test]
fn metrics_files_parse_and_stay_aligned() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = MetricsWriter::create(dir.path(), &["queue_fill"]).unwrap();
    let records = vec![
        Record::new(Kind::Step, 0, 0)
            .with("loss", 5.5)
            .with("lr", 0.1),
        Record::new(Kind::Step, 0, 1)
            .with("loss", f64::NAN)
            .with("lr", 0.2)
            .with("queue_fill", 0.5),
        Record::new(Kind::Epoch, 0, 2).with("images_per_s", 800.0),
        // A field nobody declared: JSONL only.
        Record::new(Kind::Eval, 1, 2)
            .with("knn_top1", 71.5)
            .with("surprise", 3.0),
    ];
    for r in &records {
        w.write(r).unwrap();
    }
    // JSONL round trip (NaN comes back as NaN).
    let back = read_jsonl(&dir.path().join(JSONL_FILE)).unwrap();
    assert_eq!(back.len(), 4);
    assert!(back[1].get("loss").unwrap().is_nan());
    assert_eq!(back[0], records[0]);
    assert_eq!(back[3], records[3]);
    assert_eq!(back[1].get("queue_fill"), Some(0.5));
    // CSV: a fixed header, one row per record, every row as wide as the header.
    let csv = std::fs::read_to_string(dir.path().join(CSV_FILE)).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    let header: Vec<&str> = lines[0].split(',').collect();
    assert_eq!(&header[..3], &["kind", "epoch", "step"]);
    assert_eq!(&header[3..3 + DEFAULT_FIELDS.len()], DEFAULT_FIELDS);
    assert_eq!(header.last(), Some(&"queue_fill"));
    assert_eq!(lines.len(), 5);
    assert!(lines.iter().all(|l| l.split(',').count() == header.len()));
    let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
    let row1: Vec<&str> = lines[2].split(',').collect();
    assert_eq!(row1[col("lr")], "0.2");
    assert_eq!(row1[col("loss")], "NaN");
    assert_eq!(row1[col("knn_top1")], "");
    assert!(!csv.contains("surprise"));
    // Bad field names are refused.
    assert!(matches!(
        w.write(&Record::new(Kind::Step, 0, 3).with("a,b", 1.0)),
        Err(ReportError::Input(_))
    ));
}

#[test]
fn resume_keeps_records_up_to_the_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = MetricsWriter::create(dir.path(), &[]).unwrap();
    for s in 0..6 {
        w.write(&Record::new(Kind::Step, s / 3, s).with("loss", 6.0 - s as f64))
            .unwrap();
    }
    w.write(&Record::new(Kind::Eval, 1, 5).with("extra_metric", 1.0))
        .unwrap();
    drop(w);
    let (mut w, kept) = MetricsWriter::resume(dir.path(), &[], 3).unwrap();
    assert_eq!(kept.len(), 4);
    assert_eq!(kept[3].get("loss"), Some(3.0));
    w.write(&Record::new(Kind::Step, 1, 4).with("loss", 2.5))
        .unwrap();
    let back = read_jsonl(&dir.path().join(JSONL_FILE)).unwrap();
    assert_eq!(back.len(), 5);
    assert_eq!(back[4].get("loss"), Some(2.5));
    let csv = std::fs::read_to_string(dir.path().join(CSV_FILE)).unwrap();
    assert_eq!(csv.lines().count(), 6);
    // A record torn by a crash (no newline) is ignored; a bad line elsewhere is not.
    let path = dir.path().join(JSONL_FILE);
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str("{\"kind\":\"step\",\"epo");
    std::fs::write(&path, &text).unwrap();
    assert_eq!(read_jsonl(&path).unwrap().len(), 5);
    std::fs::write(
        &path,
        "{\"kind\":\"step\",\"epoch\":0,\"step\":0}\nnot json\n{}\n",
    )
    .unwrap();
    assert!(matches!(
        read_jsonl(&path),
        Err(ReportError::Parse { line: 2, .. })
    ));
}

#[test]
fn report_names_the_overrides_and_how_the_run_was_made() {
    let mut inp = input();
    inp.overrides = vec!["loss.method=moco".into(), "train.epochs=3".into()];
    inp.history = vec![
        "20261207-120000 at step 0: `recipe run recipes/simclr.yaml --set loss.method=moco`".into(),
        "20261207-130000 at step 660: `recipe run --resume runs/x --set train.epochs=80 --force`"
            .into(),
        "  changed from step 660: `train.epochs`: 60 → 80".into(),
    ];
    let text = recipe::report::markdown::render_report(&inp);
    assert!(
        text.starts_with("# simclr-fashion (with loss.method=moco, train.epochs=3)\n"),
        "{text}"
    );
    assert!(
        text.contains("- Override: `--set loss.method=moco`"),
        "{text}"
    );
    assert!(text.contains("## How this run was made"), "{text}");
    assert!(
        text.contains("  - changed from step 660: `train.epochs`: 60 → 80"),
        "{text}"
    );
}
