//! Checkpoint round trips, validation of every kind of mismatch, corruption and atomic
//! writes.

use std::fs;
use std::path::Path;

use dfdx::prelude::*;
use recipe::checkpoint::{self, CheckpointError, CheckpointMeta, Mismatch};
use recipe::nn::params::{ParamStore, Role};
use recipe::optim::{Optimizer, OptimizerConfig, SgdConfig};
use safetensors::SafeTensors;
use safetensors::tensor::Dtype;

type Store = ParamStore<Cpu>;

fn model(seed: f32) -> Store {
    let mut s = ParamStore::new(Cpu::default());
    let w: Vec<f32> = (0..12).map(|i| seed + i as f32 * 0.25).collect();
    s.add("backbone.conv1.weight", &[2, 1, 2, 3], w, Role::Weight)
        .unwrap();
    s.add(
        "backbone.bn1.weight",
        &[2],
        vec![seed, 1.0],
        Role::NormWeight,
    )
    .unwrap();
    s.add(
        "backbone.bn1.running_var",
        &[2],
        vec![1.0, seed],
        Role::Buffer,
    )
    .unwrap();
    s.add(
        "backbone.bn1.num_batches_tracked",
        &[],
        vec![7.0],
        Role::Buffer,
    )
    .unwrap();
    s.add("head.0.bias", &[3], vec![seed; 3], Role::Bias)
        .unwrap();
    s
}

fn meta() -> CheckpointMeta {
    CheckpointMeta {
        epoch: 3,
        step: 1234,
        rng_state: vec![u64::MAX, 0, 42],
        recipe_hash: "sha256:abc123".into(),
        train_millis: 5_000,
        images: 99,
    }
}

/// An optimiser with non-trivial state after one step on `store`.
fn trained_sgd(store: &mut Store) -> Optimizer<Cpu> {
    let mut opt = Optimizer::new(OptimizerConfig::Sgd(SgdConfig::default())).unwrap();
    let mut grads = Gradients::leaky();
    for e in store.entries().iter().filter(|e| e.trainable) {
        let loss = e.tensor.clone().traced(grads).square().sum::<Rank0, _>();
        grads = loss.backward();
    }
    opt.step(store, &mut grads, 0.1).unwrap();
    opt
}

fn all_values(s: &Store) -> Vec<(String, Vec<f32>)> {
    s.entries()
        .iter()
        .map(|e| (e.name.clone(), e.tensor.as_vec()))
        .collect()
}

#[test]
fn round_trip_restores_weights_state_and_meta() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("last.safetensors");
    let mut a = model(0.5);
    let opt = trained_sgd(&mut a);
    checkpoint::save(&path, &a, Some(&opt.state(&a)), &meta()).unwrap();

    let mut b = model(-3.0);
    let mut opt_b = Optimizer::new(OptimizerConfig::Sgd(SgdConfig::default())).unwrap();
    let m = checkpoint::load(&path, &mut b, Some(&mut opt_b)).unwrap();
    assert_eq!(m, meta());
    assert_eq!(all_values(&a), all_values(&b));
    assert_eq!(opt.state(&a), opt_b.state(&b));
    assert_eq!(opt_b.steps_taken(), 1);
    assert_eq!(checkpoint::read_meta(&path).unwrap(), meta());

    // Weights only: optimiser state in the file is ignored.
    let mut c = model(9.0);
    checkpoint::load(&path, &mut c, None).unwrap();
    assert_eq!(all_values(&a), all_values(&c));

    // The file is plain safetensors with torchvision-style names and F32 data.
    let bytes = fs::read(&path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let t = st.tensor("backbone.conv1.weight").unwrap();
    assert_eq!((t.dtype(), t.shape()), (Dtype::F32, &[2, 1, 2, 3][..]));
    assert!(st.tensor("optimizer.head.0.bias.momentum_buffer").is_ok());
    assert!(
        st.tensor("optimizer.backbone.bn1.running_var.momentum_buffer")
            .is_err(),
        "buffers have no optimiser state"
    );
}

#[test]
fn every_mismatch_is_listed_by_name_and_nothing_is_loaded() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ck.safetensors");
    let mut a = model(0.5);
    let opt = trained_sgd(&mut a);
    checkpoint::save(&path, &a, Some(&opt.state(&a)), &meta()).unwrap();

    // A model that differs in every way: a missing tensor (`head.1.weight`), an
    // unexpected one (`head.0.bias` gone from the model), a wrong shape.
    let mut b = ParamStore::new(Cpu::default());
    b.add(
        "backbone.conv1.weight",
        &[2, 1, 3, 2],
        vec![0.0; 12],
        Role::Weight,
    )
    .unwrap();
    b.add("backbone.bn1.weight", &[2], vec![0.0; 2], Role::NormWeight)
        .unwrap();
    b.add("backbone.bn1.running_var", &[2], vec![0.0; 2], Role::Buffer)
        .unwrap();
    b.add(
        "backbone.bn1.num_batches_tracked",
        &[],
        vec![0.0],
        Role::Buffer,
    )
    .unwrap();
    b.add("head.1.weight", &[3], vec![0.0; 3], Role::Weight)
        .unwrap();
    let before = all_values(&b);
    let mut opt_b = Optimizer::new(OptimizerConfig::Sgd(SgdConfig::default())).unwrap();
    let err = checkpoint::load(&path, &mut b, Some(&mut opt_b)).unwrap_err();
    let CheckpointError::Mismatch { problems, .. } = &err else {
        panic!("{err}")
    };
    let has = |m: &Mismatch| problems.contains(m);
    assert!(has(&Mismatch::Shape {
        name: "backbone.conv1.weight".into(),
        expected: vec![2, 1, 3, 2],
        found: vec![2, 1, 2, 3],
    }));
    assert!(has(&Mismatch::Shape {
        name: "optimizer.backbone.conv1.weight.momentum_buffer".into(),
        expected: vec![2, 1, 3, 2],
        found: vec![2, 1, 2, 3],
    }));
    assert!(has(&Mismatch::Missing {
        name: "head.1.weight".into()
    }));
    assert!(has(&Mismatch::Missing {
        name: "optimizer.head.1.weight.momentum_buffer".into()
    }));
    assert!(has(&Mismatch::Unexpected {
        name: "head.0.bias".into()
    }));
    assert!(has(&Mismatch::Unexpected {
        name: "optimizer.head.0.bias.momentum_buffer".into()
    }));
    assert_eq!(problems.len(), 6, "{err}");
    let text = err.to_string();
    assert!(text.contains("6 problems"), "{text}");
    assert!(text.contains("missing tensor `head.1.weight`"), "{text}");
    assert_eq!(all_values(&b), before, "the store must not be half-loaded");
    assert_eq!(opt_b.steps_taken(), 0);

    // A different optimiser kind is one more mismatch, reported with the rest.
    let mut c = model(1.0);
    let mut adam =
        Optimizer::new(OptimizerConfig::AdamW(recipe::optim::AdamWConfig::default())).unwrap();
    let err = checkpoint::load(&path, &mut c, Some(&mut adam)).unwrap_err();
    assert!(
        matches!(&err, CheckpointError::Mismatch { problems, .. }
            if problems == &[Mismatch::Optimizer { expected: "adamw".into(), found: "sgd".into() }]),
        "{err}"
    );
}

#[test]
fn wrong_dtype_is_reported() {
    // Correct names and shapes, but one tensor stored as I64: a weights export (where
    // num_batches_tracked is I64, torchvision's dtype) rewrapped as a checkpoint.
    let dir = tempfile::tempdir().unwrap();
    let a = model(0.5);
    let export = dir.path().join("w.safetensors");
    checkpoint::export_weights(&export, &a, "", false).unwrap();
    // Re-wrap the export's tensors as a checkpoint: same tensors, recipe metadata.
    let ck = dir.path().join("ck.safetensors");
    recipe_checkpoint_from(&export, &ck);
    let mut b = model(0.0);
    let err = checkpoint::load(&ck, &mut b, None).unwrap_err();
    let CheckpointError::Mismatch { problems, .. } = &err else {
        panic!("{err}")
    };
    assert_eq!(
        problems,
        &[Mismatch::Dtype {
            name: "backbone.bn1.num_batches_tracked".into(),
            expected: "F32".into(),
            found: "I64".into(),
        }]
    );
}

/// Rewraps the tensors of the plain safetensors file `src` as a recipe checkpoint at
/// `dst`, computing the digest by the layout documented in `checkpoint` (an independent
/// re-implementation, so this also pins that layout).
fn recipe_checkpoint_from(src: &Path, dst: &Path) {
    use sha2::{Digest, Sha256};
    use std::collections::BTreeMap;
    let bytes = fs::read(src).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut meta = BTreeMap::new();
    meta.insert("format".to_string(), "recipe-checkpoint".to_string());
    meta.insert("format_version".to_string(), "1".to_string());
    meta.insert("epoch".to_string(), "0".to_string());
    meta.insert("step".to_string(), "0".to_string());
    meta.insert("rng_state".to_string(), "[]".to_string());
    meta.insert("recipe_hash".to_string(), String::new());
    let mut h = Sha256::new();
    let mut field = |b: &[u8]| {
        h.update((b.len() as u64).to_le_bytes());
        h.update(b);
    };
    for (k, v) in &meta {
        field(k.as_bytes());
        field(v.as_bytes());
    }
    let mut tensors = st.tensors();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, view) in &tensors {
        field(name.as_bytes());
        field(view.dtype().to_string().as_bytes());
        let dims: Vec<u8> = view
            .shape()
            .iter()
            .flat_map(|&d| (d as u64).to_le_bytes())
            .collect();
        field(&dims);
        field(view.data());
    }
    let digest: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    meta.insert("sha256".to_string(), digest);
    let out = safetensors::serialize(tensors, Some(meta.into_iter().collect())).unwrap();
    fs::write(dst, out).unwrap();
}

#[test]
fn truncated_flipped_and_foreign_files_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ck.safetensors");
    let a = model(0.5);
    checkpoint::save(&path, &a, None, &meta()).unwrap();
    let good = fs::read(&path).unwrap();
    let reference = all_values(&model(2.0));

    let try_load = |bytes: &[u8], name: &str| {
        let p = dir.path().join(name);
        fs::write(&p, bytes).unwrap();
        let mut b = model(2.0);
        let err = checkpoint::load(&p, &mut b, None).unwrap_err();
        assert_eq!(all_values(&b), reference, "{name}: store changed");
        err
    };

    // Truncated at several points (header length, header, data).
    for cut in [4, 20, good.len() / 2, good.len() - 1] {
        let err = try_load(&good[..cut], "cut.safetensors");
        assert!(
            matches!(&err, CheckpointError::Corrupt { reason, .. } if reason.contains("truncated")),
            "cut at {cut}: {err}"
        );
    }
    // A flipped byte in the data, then in the header's metadata (the epoch digit).
    let mut flipped = good.clone();
    let last = flipped.len() - 3;
    flipped[last] ^= 0x40;
    let err = try_load(&flipped, "flip.safetensors");
    assert!(err.to_string().contains("SHA-256"), "{err}");
    let mut meta_flip = good.clone();
    let at = find(&good, b"\"epoch\":\"3\"").unwrap() + 9;
    meta_flip[at] = b'4';
    let err = try_load(&meta_flip, "flipmeta.safetensors");
    assert!(err.to_string().contains("SHA-256"), "{err}");
    // Not safetensors at all.
    let err = try_load(b"name: simclr\nmodel: resnet18\n", "recipe.yaml");
    assert!(
        matches!(&err, CheckpointError::Corrupt { reason, .. } if reason.contains("not a safetensors file")),
        "{err}"
    );
    // Safetensors, but not a checkpoint (a weights export).
    let export = dir.path().join("export.safetensors");
    checkpoint::export_weights(&export, &a, "", false).unwrap();
    let err = try_load(&fs::read(&export).unwrap(), "export2.safetensors");
    assert!(err.to_string().contains("not a checkpoint"), "{err}");
    // A file that does not exist.
    let mut b = model(2.0);
    let err = checkpoint::load(&dir.path().join("nope"), &mut b, None).unwrap_err();
    assert!(matches!(err, CheckpointError::Io { .. }), "{err}");
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[test]
fn atomic_write_leaves_only_the_file_and_replaces_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("last.safetensors");
    checkpoint::save(&path, &model(0.5), None, &meta()).unwrap();
    let mut m2 = meta();
    m2.epoch = 4;
    checkpoint::save(&path, &model(1.5), None, &m2).unwrap();
    let names: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, ["last.safetensors"]);
    assert_eq!(checkpoint::read_meta(&path).unwrap().epoch, 4);
}

#[cfg(unix)]
#[test]
fn unwritable_directory_is_an_error_without_leftovers() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let ro = dir.path().join("ro");
    fs::create_dir(&ro).unwrap();
    fs::set_permissions(&ro, fs::Permissions::from_mode(0o555)).unwrap();
    let path = ro.join("ck.safetensors");
    let result = checkpoint::save(&path, &model(0.5), None, &meta());
    let probe = fs::write(ro.join("probe"), b"x").is_ok(); // root ignores permissions
    fs::set_permissions(&ro, fs::Permissions::from_mode(0o755)).unwrap();
    if probe {
        // Running as root: permissions are not enforced; use a missing directory instead.
        fs::remove_file(ro.join("probe")).unwrap();
        fs::remove_file(&path).unwrap();
    } else {
        let err = result.unwrap_err();
        assert!(matches!(err, CheckpointError::Io { .. }), "{err}");
        assert_eq!(fs::read_dir(&ro).unwrap().count(), 0);
    }
    let missing = dir.path().join("no/such/dir/ck.safetensors");
    let err = checkpoint::save(&missing, &model(0.5), None, &meta()).unwrap_err();
    assert!(err.to_string().contains("cannot create"), "{err}");
}

#[test]
fn backbone_export_for_pytorch() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("backbone.safetensors");
    let names = checkpoint::export_weights(&path, &model(0.5), "backbone.", true).unwrap();
    assert_eq!(
        names,
        [
            "bn1.num_batches_tracked",
            "bn1.running_var",
            "bn1.weight",
            "conv1.weight"
        ]
    );
    let bytes = fs::read(&path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let nbt = st.tensor("bn1.num_batches_tracked").unwrap();
    assert_eq!(nbt.dtype(), Dtype::I64);
    assert_eq!(nbt.data(), 7i64.to_le_bytes());
    let w = st.tensor("conv1.weight").unwrap();
    assert_eq!(w.shape(), [2, 1, 2, 3]);
    assert_eq!(&w.data()[..4], 0.5f32.to_le_bytes());
    let (_, header) = SafeTensors::read_metadata(&bytes).unwrap();
    assert_eq!(
        header.metadata().as_ref().unwrap().get("format").unwrap(),
        "pt"
    );
    assert!(checkpoint::export_weights(&path, &model(0.5), "encoder.", true).is_err());
}

#[test]
fn bookkeeping_is_kept_but_outside_the_digest() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (
        dir.path().join("a.safetensors"),
        dir.path().join("b.safetensors"),
    );
    checkpoint::save(&a, &model(0.5), None, &meta()).unwrap();
    let mut slower = meta();
    slower.train_millis *= 3;
    slower.images += 1;
    checkpoint::save(&b, &model(0.5), None, &slower).unwrap();
    let digest = |p: &std::path::Path| {
        let bytes = fs::read(p).unwrap();
        let (_, m) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        m.metadata().as_ref().unwrap()["sha256"].clone()
    };
    assert_eq!(digest(&a), digest(&b));
    assert_eq!(checkpoint::read_meta(&b).unwrap(), slower);
    // A changed state field does change the digest.
    let mut other = meta();
    other.step += 1;
    checkpoint::save(&b, &model(0.5), None, &other).unwrap();
    assert_ne!(digest(&a), digest(&b));
}
