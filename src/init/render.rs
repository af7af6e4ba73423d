//! The recipe text for what was detected ([`render`]), with a comment on every
//! detected value, and the paths it names.

use super::*;

/// `1234567` as `1,234,567`.
pub fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

pub(super) fn absolute(p: &Path) -> PathBuf {
    crate::spec::load::normalize_lexically(
        &std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf()),
    )
}

/// `target` relative to the folder `base` (both made absolute first); `target` itself
/// when they share no root.
pub fn relative_path(target: &Path, base: &Path) -> PathBuf {
    let (t, b) = (absolute(target), absolute(base));
    let tc: Vec<Component> = t.components().collect();
    let bc: Vec<Component> = b.components().collect();
    let common = tc.iter().zip(&bc).take_while(|(x, y)| x == y).count();
    if common == 0 {
        return t;
    }
    let mut out = PathBuf::new();
    for _ in common..bc.len() {
        out.push("..");
    }
    for c in &tc[common..] {
        out.push(c);
    }
    if out.as_os_str().is_empty() {
        out.push(".");
    }
    out
}

/// How a recipe in `base` names the data at `target`: relative when they share a
/// folder below the root (the recipe and its data move together), absolute otherwise
/// (`../../../data` climbing to the root says nothing a reader can check at a glance).
pub(super) fn data_path(target: &Path, base: &Path) -> PathBuf {
    let (t, b) = (absolute(target), absolute(base));
    let shared = t
        .components()
        .zip(b.components())
        .take_while(|(x, y)| x == y)
        .filter(|(c, _)| matches!(c, Component::Normal(_)))
        .count();
    if shared == 0 {
        t
    } else {
        relative_path(&t, &b)
    }
}

/// The project schema the modeline of a recipe in `out_dir` should name: the first
/// `schemas/recipe.schema.json` in `out_dir` or a folder above it, else the one in
/// `project_dir`; `None` when neither exists.
pub fn find_schema(out_dir: &Path, project_dir: Option<&Path>) -> Option<PathBuf> {
    let rel = Path::new("schemas").join("recipe.schema.json");
    absolute(out_dir)
        .ancestors()
        .map(|a| a.join(&rel))
        .find(|p| p.is_file())
        .or_else(|| project_dir.map(|d| d.join(&rel)).filter(|p| p.is_file()))
}

/// A path with `/` between its components, as recipes and modelines write them.
pub(super) fn slashed(p: &Path) -> String {
    let s = p
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join("/");
    // A root component renders as `/`, which the join doubles.
    s.replacen("//", "/", 1)
}

/// A path as a YAML scalar: double-quoted JSON, which YAML reads back unchanged
/// whatever the path holds (`#`, `: `, spaces, backslashes).
pub(super) fn quoted(p: &Path) -> String {
    serde_json::to_string(&slashed(p)).unwrap_or_else(|_| "\"\"".into())
}

/// A recipe name from the dataset folder and the method, kept to the characters the
/// schema allows in `name`.
pub(super) fn recipe_name(d: &Detected, method: Method) -> String {
    let dir = match &d.source {
        DetectedSource::Folder { train, test } => {
            let split_layout = test.is_some() && train.file_name().is_some_and(|n| n == "train");
            if split_layout {
                train.parent().map(Path::to_path_buf).unwrap_or_default()
            } else {
                train.clone()
            }
        }
        DetectedSource::Idx { train_images, .. } => train_images
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default(),
        DetectedSource::Cifar { dir, .. } => dir.clone(),
    };
    let raw = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut name: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect();
    name = name.trim_start_matches(['_', '.', '-']).to_string();
    if name.is_empty() {
        name = "data".into();
    }
    format!("{name}-{}", method.name().replace('_', "-"))
}

/// The backbone family a size calls for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Net {
    /// `small_cnn` with this many stages (each after the first halves the side).
    Small(usize),
    /// `resnet18` with the CIFAR stem (3 halvings).
    ResnetCifar,
    /// `resnet18` with the ImageNet stem (5 halvings).
    ResnetImagenet,
}

impl Net {
    fn for_size(s: usize) -> Net {
        match s {
            // Under 32 px a ResNet's stages end below 4×4, and the project's small
            // datasets (8×8 digits, 28×28 Fashion-MNIST) train in minutes on a CPU.
            0..32 => Net::Small(match s {
                0..2 => 1,
                2..4 => 2,
                _ => 3,
            }),
            32..=64 => Net::ResnetCifar,
            _ => Net::ResnetImagenet,
        }
    }

    /// The smallest side a view may have.
    fn min_side(self) -> usize {
        match self {
            Net::Small(stages) => 1 << (stages - 1),
            Net::ResnetCifar => 8,
            Net::ResnetImagenet => 32,
        }
    }
}

/// A float as YAML: always with a decimal point, so it reads back as a float.
pub(super) fn num(x: f64) -> String {
    if x.fract() == 0.0 {
        format!("{x:.1}")
    } else {
        format!("{x}")
    }
}

/// `[a, b, c]` of floats at 4 decimals.
pub(super) fn list4(v: &[f64]) -> String {
    let items: Vec<String> = v.iter().map(|x| format!("{x:.4}")).collect();
    format!("[{}]", items.join(", "))
}

/// The largest power of two at most `n` (1 for 0).
pub(super) fn pow2_at_most(n: usize) -> usize {
    if n < 2 {
        1
    } else {
        1 << (usize::BITS - 1 - n.leading_zeros())
    }
}

/// The recipe text for `d` and `method`, to be saved as a file in `out_dir`, whose
/// modeline names `schema` (a path relative to `out_dir`).
///
/// Data paths are relative to `out_dir` (absolute when the two share only the root).
/// Sizing, from the detected side `S`, channels and training images `N`:
/// - backbone: `small_cnn` below 32 px (fewer stages below 4 px), `resnet18` with the
///   CIFAR stem up to 64 px, with the ImageNet stem above;
/// - batch: 128 (`small_cnn`), 256 (CIFAR stem) or 64 (ImageNet stem), lowered to the
///   largest power of two that gives at least 4 steps per epoch;
/// - epochs 20 (`small_cnn`) or 100, warmup a tenth of them, a checkpoint every fifth;
/// - crops of the whole side, down to 40% of the area under 16 px, 20% under 32 px,
///   8% (torchvision's default) from 32 px; flips; colour jitter (brightness and
///   contrast only on one channel), grayscale only on three; a Gaussian blur with a
///   kernel of about 10% of the side (odd) from 64 px, where it no longer wipes out
///   the image;
/// - per method: MoCo's queue a multiple of the keys enqueued per step (2 × batch,
///   symmetric) up to 4096 and at most `N / 2`; the memory bank one view and up to
///   4096 negatives, at most `N / 2`; SwAV multi-crop (2 global + 4 local crops) where
///   a local crop of about half the side still fits the backbone, 10 prototypes per
///   class (or `N / 10`, at most `N / 2`), the prototypes frozen for the first epoch;
///   SupCon only with labels; BYOL and SimSiam with `model.predictor` (BYOL's as wide
///   as the projector's hidden layer, SimSiam's a quarter of the projection), BYOL's
///   and DINO's EMA momentum 0.99 for runs under 10,000 steps, 0.996 (the papers')
///   from there; Barlow Twins and VICReg with a wide projector (512 on `small_cnn`,
///   2048 on ResNet) and LARS; DINO with SwAV's multi-crop (the reference's ResNet-50
///   uses SwAV's crop scales), `loss.out_dim` about a tenth of the images as a power
///   of two (64 to 65,536) and the teacher temperature warmed up over 30% of the epochs;
///   rotation with one view, a crop of 50–100% and a flip only (RotNet's), the head a
///   classifier with one output per rotation, and RotNet's Nesterov SGD;
/// - downstream: kNN, a linear probe and all pictures with labels; pictures that need
///   no labels without them.
pub fn render(
    d: &Detected,
    method: Method,
    out_dir: &Path,
    schema: &Path,
) -> Result<String, InitError> {
    if method == Method::Supcon && !d.labelled() {
        return Err(InitError::Usage(format!(
            "`--method supcon` needs labels, but {} has none; use class subfolders \
             (one per class), or a self-supervised method (simclr, moco, memory_bank, swav, \
             byol, simsiam, barlow_twins, vicreg, dino, rotation)",
            d.layout
        )));
    }
    let n = d.train_images;
    if n < 2 {
        return Err(InitError::Usage(format!(
            "only {n} training image(s); contrastive learning needs at least 2 per batch"
        )));
    }
    let s = d.image_size;
    let c = d.channels;
    let net = Net::for_size(s);
    let mut y = String::new();
    let mut line = |t: &str| {
        y.push_str(t);
        y.push('\n');
    };

    // --- header
    line(&format!(
        "# yaml-language-server: $schema={}",
        slashed(schema)
    ));
    line(&format!(
        "# Written by `recipe init --method {}`.",
        method.name()
    ));
    line(&format!("# Data: {}.", d.layout));
    line("# Every value is a starting point: look at the views with `recipe preview`, check");
    line("# shapes and memory with `recipe plan`, then train with `recipe run`.");
    line("version: 1");
    line(&format!("name: {}", recipe_name(d, method)));
    if matches!(d.test, TestSplit::HeldOut(..)) {
        line("seed: 0\u{1}# also picks the held-out test images: keep it when comparing runs");
    } else {
        line("seed: 0");
    }

    // --- data
    line("data:");
    match &d.source {
        DetectedSource::Folder { train, test } => {
            let mut src = format!(
                "  source: {{format: image_folder, train: {}",
                quoted(&data_path(train, out_dir))
            );
            if let Some(t) = test {
                src += &format!(", test: {}", quoted(&data_path(t, out_dir)));
            }
            line(&(src + "}"));
        }
        DetectedSource::Idx {
            train_images,
            train_labels,
            test,
        } => {
            line("  source:");
            line("    format: idx");
            line(&format!(
                "    train_images: {}",
                quoted(&data_path(train_images, out_dir))
            ));
            line(&format!(
                "    train_labels: {}",
                quoted(&data_path(train_labels, out_dir))
            ));
            if let Some((ti, tl)) = test {
                line(&format!(
                    "    test_images: {}",
                    quoted(&data_path(ti, out_dir))
                ));
                line(&format!(
                    "    test_labels: {}",
                    quoted(&data_path(tl, out_dir))
                ));
            }
        }
        DetectedSource::Cifar { variant, dir } => {
            let v = match variant {
                spec::CifarVariant::Cifar10 => "cifar10",
                spec::CifarVariant::Cifar100 => "cifar100",
            };
            line(&format!(
                "  source: {{format: cifar, variant: {v}, dir: {}}}",
                quoted(&data_path(dir, out_dir))
            ));
        }
    }
    let held_out = match d.test {
        TestSplit::HeldOut(_, k) => k,
        _ => 0,
    };
    if d.labelled() {
        line(&format!(
            "  # {} training images in {}",
            thousands(n + held_out),
            classes_comment(&d.classes)
        ));
    } else {
        line(&format!("  # {} images", thousands(n)));
    }
    let (ch, cw) = d.common_size;
    let size_note = if d.other_sizes.is_empty() {
        format!("every image is {s}×{s}")
    } else if d.common_size == (s, s) {
        let others: usize = d.other_sizes.values().sum();
        format!(
            "{} of {} images are {s}×{s}",
            thousands(d.common_count),
            thousands(d.common_count + others)
        )
    } else {
        format!(
            "the most common size is {ch}×{cw} (height × width); images are squares of its shorter side"
        )
    };
    line(&format!("  image_size: {s}\u{1}# {size_note}"));
    line(&format!("  channels: {c}\u{1}# {}", d.channels_note));
    if !d.other_sizes.is_empty() {
        let others: usize = d.other_sizes.values().sum();
        let mut listed: Vec<String> = d
            .other_sizes
            .iter()
            .take(4)
            .map(|((h, w), k)| format!("{}× {h}×{w}", thousands(*k)))
            .collect();
        if d.other_sizes.len() > 4 {
            listed.push(format!("{} more sizes", d.other_sizes.len() - 4));
        }
        line(&format!(
            "  mixed_sizes: resize\u{1}# {} image(s) of other sizes ({}) are resized to {s}×{s}",
            thousands(others),
            listed.join(", ")
        ));
        line("\u{1}# (bilinear, aspect not kept); `error` would refuse them");
    } else if matches!(d.source, DetectedSource::Folder { .. }) {
        // A file added later in another size is then a located error, not a silent
        // resize that changes what the model sees.
        line(
            "  mixed_sizes: error\u{1}# all one size: a file of another size is refused, not resized",
        );
    }
    line("  normalize:");
    line("    # per channel, on the [0, 1] scale the loader uses, measured over the");
    line(&format!(
        "    # {} training images{}",
        thousands(n),
        if matches!(d.test, TestSplit::None) {
            ""
        } else {
            " (test split excluded)"
        }
    ));
    let std: Vec<f64> = d
        .std
        .iter()
        .map(|&x| if x < 1e-3 { 1.0 } else { x })
        .collect();
    line(&format!("    mean: {}", list4(&d.mean)));
    let flat = d.std.iter().any(|&x| x < 1e-3);
    line(&format!(
        "    std: {}{}",
        list4(&std),
        if flat {
            "\u{1}# a constant channel gets 1.0 (its std is 0)"
        } else {
            ""
        }
    ));
    if !d.labelled() {
        line("  labels: false\u{1}# a flat folder has no classes");
    }
    match &d.test {
        TestSplit::Own(k) => line(&format!(
            "  # test split: the source's own, {} images",
            thousands(*k)
        )),
        TestSplit::HeldOut(f, k) => line(&format!(
            "  test_fraction: {}\u{1}# no test split in the data: {} images ({:.0}%, stratified by class) held out for evaluation",
            num(*f),
            thousands(*k),
            f * 100.0
        )),
        TestSplit::None => line("  # no test split: nothing below needs one without labels"),
    }
    if let Some((k, path, reason)) = &d.unreadable {
        line(&format!(
            "  skip_unreadable: true\u{1}# {} file(s) could not be read, e.g. {}: {}",
            thousands(*k),
            path.file_name().unwrap_or_default().to_string_lossy(),
            reason.replace('\n', " ")
        ));
    }

    // --- augment
    let crop_lo = match s {
        0..16 => 0.4,
        16..32 => 0.2,
        _ => 0.08,
    };
    let mut ops: Vec<String> = Vec::new();
    let flip =
        "- horizontal_flip: {p: 0.5}\u{1}# drop it where left and right differ (digits, text)"
            .to_string();
    let jitter = if c == 3 {
        "- color_jitter: {brightness: 0.4, contrast: 0.4, saturation: 0.4, hue: 0.1, p: 0.8}"
            .to_string()
    } else {
        "- color_jitter: {brightness: 0.4, contrast: 0.4, saturation: 0.0, hue: 0.0, p: 0.8}\u{1}# one channel: no saturation or hue".to_string()
    };
    let gray = (c == 3).then(|| "- grayscale: {p: 0.2}".to_string());
    let blur = (s >= 64).then(|| {
        // The odd size nearest below 10% of the side, as SimCLR's 23 for 224.
        let k = 2 * (s / 20) + 1;
        format!(
            "- gaussian_blur: {{kernel_size: {k}, sigma: [0.1, 2.0], p: 0.5}}\u{1}# about 10% of the side, odd"
        )
    });
    let multi_crop = matches!(method, Method::Swav | Method::Dino).then(|| {
        let local = if s <= 64 { s / 2 } else { (s * 3).div_ceil(7) }.max(net.min_side());
        (local < s).then_some(local)
    });
    line("augment:");
    match multi_crop {
        Some(Some(local)) => {
            let (g, l) = if s < 32 {
                ("[0.35, 1.0]", "[0.1, 0.35]")
            } else {
                // Also DINO's scales for a ResNet-50 (facebookresearch/dino's
                // `dino_resnet50` arguments); its ViT defaults are 0.4 and 0.05–0.4.
                ("[0.14, 1.0]", "[0.05, 0.14]")
            };
            line("  pipeline:\u{1}# applied to every crop after it is made");
            ops.push(flip);
            ops.push(jitter);
            ops.extend(gray);
            ops.extend(blur);
            for o in &ops {
                line(&format!("    {o}"));
            }
            if method == Method::Dino {
                line(
                    "  multi_crop:\u{1}# DINO: the teacher sees the global crops, the student all",
                );
            } else {
                line("  multi_crop:\u{1}# SwAV: codes from the global crops, predicted from all");
            }
            line(&format!("    global: {{count: 2, size: {s}, scale: {g}}}"));
            line(&format!(
                "    local: {{count: 4, size: {local}, scale: {l}}}"
            ));
        }
        _ => {
            let views = match method {
                Method::MemoryBank => {
                    "1\u{1}# the memory bank compares one view with its stored embedding"
                }
                Method::Rotation => "1\u{1}# RotNet: one view, fed at every rotation",
                Method::Swav | Method::Dino => {
                    "2\u{1}# too small for multi-crop's local crops: two views"
                }
                _ => "2",
            };
            line(&format!("  views: {views}"));
            line("  pipeline:");
            if method == Method::Rotation {
                // RotNet's CIFAR augmentation is a padded random crop and a flip: the
                // rotation is the task, and colour changes do not hide it.
                ops.push(format!(
                    "- random_resized_crop: {{size: {s}, scale: [0.5, 1.0]}}\u{1}# a mild crop, as rotation.yaml (RotNet: a padded crop)"
                ));
                ops.push(flip);
            } else {
                ops.push(format!(
                    "- random_resized_crop: {{size: {s}, scale: [{}, 1.0]}}\u{1}# the whole side; crops down to {:.0}% of the area",
                    num(crop_lo),
                    crop_lo * 100.0
                ));
                ops.push(flip);
                ops.push(jitter);
                ops.extend(gray);
                ops.extend(blur);
            }
            for o in &ops {
                line(&format!("    {o}"));
            }
            if method == Method::Rotation {
                line("    # no colour ops: RotNet's augmentation is a crop and a flip");
            }
        }
    }

    // --- model
    line("model:");
    match net {
        Net::Small(stages) => {
            let widths: Vec<String> = [32, 64, 128][..stages]
                .iter()
                .map(|w| w.to_string())
                .collect();
            line(&format!(
                "  backbone: {{arch: small_cnn, channels: [{}]}}\u{1}# {s} px is too small for a ResNet's stages",
                widths.join(", ")
            ));
        }
        Net::ResnetCifar => line(&format!(
            "  backbone: {{arch: resnet18, stem: cifar}}\u{1}# {s} px: a 3×3 stem without max pool, as for CIFAR"
        )),
        Net::ResnetImagenet => line(&format!(
            "  backbone: {{arch: resnet18, stem: imagenet}}\u{1}# {s} px: the 7×7 stride-2 stem and max pool"
        )),
    }
    let small = matches!(net, Net::Small(_));
    match method {
        Method::MemoryBank => {
            line("  head: {hidden: [], out_dim: 128}\u{1}# InstDisc: one linear layer to 128-d")
        }
        Method::Rotation => line(&format!(
            "  head: {{hidden: [{}], out_dim: 4, batch_norm: true}}\u{1}# the rotation classifier: one output per rotation",
            if small { 128 } else { 512 }
        )),
        Method::Byol => {
            // byol.yaml's 256 → 64 projector on the small CNN; the predictor is as wide
            // as the projector, as in the paper (4096 for both).
            let (hidden, out) = if small { (256, 64) } else { (512, 128) };
            line(&format!(
                "  head: {{hidden: [{hidden}], out_dim: {out}, batch_norm: true}}\u{1}# the projector (the paper's 4096 → 256, scaled down)"
            ));
            line(&format!(
                "  predictor: {{hidden: [{hidden}]}}\u{1}# BYOL's predictor: as wide as the projector, back to {out}"
            ));
        }
        Method::Simsiam => {
            // The projection as wide as the backbone's features (the paper's 2048 for
            // ResNet-50's), the predictor a bottleneck of a quarter of it.
            let width = if small { 128 } else { 512 };
            line(&format!(
                "  head: {{hidden: [{width}], out_dim: {width}, batch_norm: true}}\u{1}# the projector, as wide as the features"
            ));
            line(&format!(
                "  predictor: {{hidden: [{}]}}\u{1}# SimSiam's bottleneck: a quarter of the projection",
                width / 4
            ));
        }
        Method::BarlowTwins | Method::Vicreg => {
            let w = if small { 512 } else { 2048 };
            line(&format!(
                "  head: {{hidden: [{w}, {w}], out_dim: {w}, batch_norm: true}}\u{1}# a wide projector (the paper's 8192-8192-8192, scaled down)"
            ));
        }
        Method::Dino => {
            let (hidden, out) = if small { (256, 64) } else { (512, 128) };
            line(&format!(
                "  head: {{hidden: [{hidden}, {hidden}], out_dim: {out}, batch_norm: true}}\u{1}# DINOHead's MLP to its bottleneck (2048, 2048 → 256 in the paper)"
            ));
        }
        _ if small => line("  head: {hidden: [128], out_dim: 64, batch_norm: true}"),
        _ => line("  head: {hidden: [512], out_dim: 128, batch_norm: true}"),
    }

    // --- training length and batch
    let (base_batch, epochs) = match net {
        Net::Small(_) => (128, 20),
        Net::ResnetCifar => (256, 100),
        Net::ResnetImagenet => (64, 100),
    };
    let batch = base_batch.min(pow2_at_most(n / 4)).max(2);
    let steps = (n / batch).max(1);

    // --- loss
    // BYOL's and DINO's EMA rate rises to 1 over the run from this base: the papers'
    // 0.996 moves the target too slowly over a short run (byol.yaml and dino.yaml use
    // 0.99 for a few hundred steps, as solo-learn's CIFAR recipes).
    let total_steps = steps * epochs;
    let ema = if total_steps >= 10_000 {
        format!(
            "0.996\u{1}# the paper's, for {} steps; rises to 1 on a cosine",
            thousands(total_steps)
        )
    } else {
        format!(
            "0.99\u{1}# {} steps: the paper's 0.996 is for longer runs; rises to 1 on a cosine",
            thousands(total_steps)
        )
    };
    line("loss:");
    if method == Method::Simsiam {
        line("  method: simsiam\u{1}# no keys: the predictor and a stop-gradient do the work");
    } else {
        line(&format!("  method: {}", method.name()));
    }
    match method {
        Method::Simclr => line("  temperature: 0.2"),
        Method::Moco => {
            let per_step = 2 * batch;
            // Half the dataset at most: a queue that holds an image's own key from an
            // earlier step makes it its own negative.
            let queue = (4096.min(n / 2) / per_step).max(1) * per_step;
            line("  temperature: 0.2");
            line("  momentum: 0.99\u{1}# of the key encoder's EMA");
            line(&format!(
                "  queue_size: {queue}\u{1}# {} × 2 × batch {batch} (symmetric: both views' keys each step), at most half the dataset",
                queue / per_step
            ));
            line("  symmetric: true");
        }
        Method::MemoryBank => {
            let negatives = 4096.min(n / 2).max(1);
            line("  temperature: 0.07");
            line("  bank_momentum: 0.5");
            line(&format!(
                "  negatives: {negatives}\u{1}# drawn from a bank of {} embeddings",
                thousands(n)
            ));
            line(
                "  shared_negatives: true\u{1}# one draw per step for the whole batch: much faster on a CPU",
            );
        }
        Method::Swav => {
            let k = if d.labelled() {
                10 * d.classes.len()
            } else {
                n / 10
            };
            // Sinkhorn spreads the images evenly over the prototypes, so more than
            // half as many prototypes as images would leave most of them empty.
            let k = k.min(n / 2).clamp(2, 3000);
            line("  temperature: 0.1");
            line(&format!(
                "  prototypes: {k}\u{1}# {}",
                if d.labelled() {
                    format!("10 per class ({} classes)", d.classes.len())
                } else {
                    "a tenth of the training images".to_string()
                }
            ));
            line("  epsilon: 0.05");
            line("  sinkhorn_iterations: 3");
            line(&format!(
                "  freeze_prototypes_steps: {steps}\u{1}# the first epoch"
            ));
            if batch < 256 && n >= 16 * batch && epochs > 1 {
                line(&format!(
                    "  queue: {{size: {}, start_epoch: {}}}\u{1}# small batches: codes also from past embeddings",
                    8 * batch,
                    epochs / 5
                ));
            }
        }
        Method::Supcon => {
            line("  temperature: 0.1");
            line("  base_temperature: 0.07");
        }
        Method::Byol => line(&format!("  momentum: {ema}")),
        Method::Simsiam => {}
        Method::BarlowTwins => {
            line("  lambda: 0.0051\u{1}# off-diagonal weight, the reference's `--lambd`");
            line("  scale_loss: 0.1\u{1}# solo-learn's CIFAR value, as barlow_twins.yaml");
        }
        Method::Vicreg => {
            line("  invariance_coeff: 25.0\u{1}# the paper's 25 : 25 : 1");
            line("  variance_coeff: 25.0\u{1}# keeps each feature's std over the batch at 1");
            line("  covariance_coeff: 1.0\u{1}# decorrelates the features");
            line("  variance_epsilon: 1.0e-4\u{1}# in sqrt(Var + ε), as the reference");
        }
        Method::Dino => {
            // About a tenth of the images, as a power of two: dino.yaml's 1024 for
            // 10,000 images; the reference's 65,536 for ImageNet.
            let out_dim = (n / 10).next_power_of_two().clamp(64, 65536);
            let warm = (epochs * 3 / 10).max(1);
            line(&format!(
                "  out_dim: {out_dim}\u{1}# the last layer's outputs: about a tenth of the images, a power of two"
            ));
            line("  student_temp: 0.1\u{1}# the paper's τ_s");
            line("  warmup_teacher_temp: 0.04\u{1}# τ_t rises from 0.04 to 0.07, as the paper");
            line("  teacher_temp: 0.07\u{1}# sharper than the student's");
            line(&format!(
                "  warmup_teacher_temp_epochs: {warm}\u{1}# 30% of the epochs (the paper: 30 of 100)"
            ));
            line(&format!("  teacher_momentum: {ema}"));
            line("  center_momentum: 0.9\u{1}# of the teacher outputs' centre");
            line("  freeze_last_layer: 1\u{1}# epochs the last layer stays fixed, as the paper");
        }
        Method::Rotation => {
            line("  rotations: [0, 90, 180, 270]\u{1}# RotNet's four: head.out_dim is their count");
            line("  all_rotations: true\u{1}# every rotation of every image in each batch");
        }
    }

    // --- optimiser and schedule
    line("optimizer:");
    match method {
        Method::BarlowTwins | Method::Vicreg => {
            line("  name: lars\u{1}# as barlow_twins.yaml and vicreg.yaml");
            line("  lr: 0.3\u{1}# their 0.3 × batch/256");
            line("  lr_scaling: linear\u{1}# × batch/256");
            line("  momentum: 0.9");
            line("  weight_decay: 1.0e-5\u{1}# light: LARS adapts each layer's step");
            line("  trust_coefficient: 0.02\u{1}# LARS's η, as solo-learn");
        }
        Method::Rotation => {
            line("  name: sgd\u{1}# RotNet's CIFAR settings: lr 0.1 at batch 128, Nesterov");
            line("  lr: 0.2\u{1}# 0.1 at batch 128");
            line("  lr_scaling: linear\u{1}# × batch/256");
            line("  momentum: 0.9");
            line("  nesterov: true\u{1}# RotNet's Nesterov momentum");
            line("  weight_decay: 5.0e-4\u{1}# RotNet's");
        }
        Method::Swav => {
            line("  name: lars");
            line("  lr: 0.6");
            line("  lr_scaling: linear\u{1}# × batch/256");
            line("  momentum: 0.9");
            line("  weight_decay: 1.0e-6");
            line("  trust_coefficient: 0.02");
        }
        _ => {
            let (lr, wd, scaled) = match method {
                Method::Moco => ("0.06", "5.0e-4", true),
                Method::MemoryBank => ("0.03", "5.0e-4", false),
                Method::Supcon => ("0.5", "1.0e-4", true),
                // byol.yaml and simsiam.yaml: 0.1 beat 0.05 on their short runs.
                Method::Byol | Method::Simsiam => ("0.1", "5.0e-4", true),
                _ => ("0.3", "1.0e-4", true),
            };
            let (name_note, lr_note) = match method {
                Method::Byol => (
                    "\u{1}# as byol.yaml (the paper: LARS, for batches of 4096)",
                    "\u{1}# 0.1 beat 0.05 in byol.yaml's short runs",
                ),
                Method::Simsiam => (
                    "\u{1}# SGD with momentum, as the paper",
                    "\u{1}# 0.1 beat the paper's 0.05 in simsiam.yaml's short runs",
                ),
                Method::Dino => (
                    "\u{1}# SGD, as dino.yaml and the reference's ResNet-50",
                    "\u{1}# dino.yaml's",
                ),
                _ => ("", ""),
            };
            line(&format!("  name: sgd{name_note}"));
            line(&format!("  lr: {lr}{lr_note}"));
            if scaled {
                line("  lr_scaling: linear\u{1}# × batch/256");
            }
            line("  momentum: 0.9");
            line(&format!("  weight_decay: {wd}"));
        }
    }
    line("schedule:");
    line("  kind: warmup_cosine");
    line(&format!("  warmup_epochs: {}", (epochs / 10).max(1)));
    if method == Method::Swav {
        line("  final_lr: 0.0006");
    }
    line("train:");
    line(&format!(
        "  epochs: {epochs}\u{1}# a starting point: more epochs usually help"
    ));
    line(&format!(
        "  batch_size: {batch}\u{1}# {} steps per epoch over {} training images",
        thousands(steps),
        thousands(n)
    ));
    line(&format!("  checkpoint_every: {}", (epochs / 5).max(1)));

    // --- downstream
    line("downstream:");
    if d.labelled() {
        let k = 20.min(n);
        line(&format!("  - {{task: knn, k: {k}, temperature: 0.07}}"));
        line(
            "  - {task: linear_probe, epochs: 30, lr: 0.1, weight_decay: [0.0, 1.0e-4, 1.0e-3, 1.0e-2]}",
        );
        line("  - {task: visualize}");
    } else {
        line("  # no labels: kNN, the linear probe and fine-tuning need them");
        line(
            "  - {task: visualize, plots: [filters, feature_maps, embedding_pca, training_curves, augmentation_views]}",
        );
    }
    line("output:");
    line("  dir: runs\u{1}# relative to the folder `recipe run` is started in");
    Ok(align_comments(&y))
}

/// Column at which [`render`] starts end-of-line comments, where the code leaves room.
pub(super) const COMMENT_COLUMN: usize = 28;

/// Replaces the `\u{1}` that [`render`] puts between code and its comment by the
/// spaces that start the comment at [`COMMENT_COLUMN`] (two, past it).
pub(super) fn align_comments(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 1024);
    for l in text.lines() {
        match l.split_once('\u{1}') {
            Some((code, comment)) => {
                let width = code.chars().count();
                let pad = if width + 2 <= COMMENT_COLUMN {
                    COMMENT_COLUMN - width
                } else {
                    2
                };
                out.push_str(code);
                out.extend(std::iter::repeat_n(' ', pad));
                out.push_str(comment);
            }
            None => out.push_str(l),
        }
        out.push('\n');
    }
    out
}

pub(super) fn classes_comment(classes: &[String]) -> String {
    let k = classes.len();
    let names = if k <= 6 {
        classes.join(", ")
    } else {
        format!(
            "{}, {}, {}, …, {}",
            classes[0],
            classes[1],
            classes[2],
            classes[k - 1]
        )
    };
    format!("{k} classes: {names}")
}
