//! `recipe init`: writes a starting recipe for a dataset on disk (`recipe::init`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::ValueEnum;
use recipe::init::{self, InitOptions, Method, TestSplit};

/// The methods `--method` accepts (the recipe's `loss.method` values).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
#[value(rename_all = "snake_case")]
pub enum MethodArg {
    /// SimCLR (NT-Xent over two views).
    Simclr,
    /// MoCo v2 (momentum encoder and a queue of negatives).
    Moco,
    /// InstDisc's memory bank.
    MemoryBank,
    /// SwAV (multi-crop where the images are large enough).
    Swav,
    /// Supervised contrastive learning (needs class subfolders or labelled files).
    Supcon,
    /// BYOL (an online network and predictor regress an EMA target's projection).
    Byol,
    /// SimSiam (a predictor and a stop-gradient, no momentum encoder).
    Simsiam,
    /// Barlow Twins (the views' cross-correlation driven to the identity).
    BarlowTwins,
    /// VICReg (invariance, variance and covariance terms).
    Vicreg,
    /// DINO self-distillation (multi-crop where the images are large enough).
    Dino,
    /// RotNet rotation prediction (one view, the head a 4-way classifier).
    Rotation,
}

impl From<MethodArg> for Method {
    fn from(m: MethodArg) -> Method {
        match m {
            MethodArg::Simclr => Method::Simclr,
            MethodArg::Moco => Method::Moco,
            MethodArg::MemoryBank => Method::MemoryBank,
            MethodArg::Swav => Method::Swav,
            MethodArg::Supcon => Method::Supcon,
            MethodArg::Byol => Method::Byol,
            MethodArg::Simsiam => Method::Simsiam,
            MethodArg::BarlowTwins => Method::BarlowTwins,
            MethodArg::Vicreg => Method::Vicreg,
            MethodArg::Dino => Method::Dino,
            MethodArg::Rotation => Method::Rotation,
        }
    }
}

/// Detects the data, writes the recipe to `output` and prints what was found and what
/// to run next.
pub fn init(data: &Path, method: MethodArg, output: &Path, force: bool) -> ExitCode {
    let opts = InitOptions {
        data: data.to_path_buf(),
        method: method.into(),
        output: output.to_path_buf(),
        force,
        project_dir: Some(PathBuf::from(env!("CARGO_MANIFEST_DIR"))),
    };
    let w = match init::init(&opts) {
        Ok(w) => w,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(e.exit_code());
        }
    };
    eprint!("{}", w.warnings);
    let d = &w.detected;
    let s = d.image_size;
    println!("data: {}", d.layout);
    let mixed = if d.other_sizes.is_empty() {
        String::new()
    } else {
        let others: usize = d.other_sizes.values().sum();
        format!(
            " (mixed sizes: {} image(s) of other sizes will be resized)",
            init::thousands(others)
        )
    };
    println!("  size: {s}×{s}{mixed}");
    println!("  channels: {} ({})", d.channels, d.channels_note);
    if d.labelled() {
        println!("  classes: {}", d.classes.len());
    } else {
        println!("  classes: none (unlabelled)");
    }
    println!("  training images: {}", init::thousands(d.train_images));
    match &d.test {
        TestSplit::Own(n) => println!(
            "  test split: the source's own, {} images",
            init::thousands(*n)
        ),
        TestSplit::HeldOut(f, n) => println!(
            "  test split: none in the data; {} images ({:.0}%) held out with test_fraction",
            init::thousands(*n),
            f * 100.0
        ),
        TestSplit::None => println!("  test split: none"),
    }
    let fmt = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.4}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!(
        "  normalize: mean [{}], std [{}]",
        fmt(&d.mean),
        fmt(&d.std)
    );
    if let Some((n, path, reason)) = &d.unreadable {
        println!(
            "  unreadable: {} file(s) skipped (skip_unreadable: true), e.g. {}: {reason}",
            init::thousands(*n),
            path.display()
        );
    }
    if w.wrote_schema {
        println!(
            "wrote {} (for the editor's $schema line)",
            w.schema.display()
        );
    }
    println!("wrote {}", output.display());
    println!("next:");
    println!(
        "  recipe preview {}   # look at the augmented views",
        output.display()
    );
    println!("  recipe run {}", output.display());
    ExitCode::SUCCESS
}
