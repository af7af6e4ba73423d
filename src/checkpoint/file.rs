//! The file level of a checkpoint: tensor bytes, the SHA-256 digest over metadata and
//! tensors, atomic writes (temp file, fsync, rename, fsync of the folder) and a read
//! that checks the digest before anything is applied.

use super::*;

pub(super) fn f32_bytes(data: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() * 4);
    for x in data {
        out.extend_from_slice(&x.to_le_bytes());
    }
    out
}

pub(super) fn f32_from_bytes(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

pub(super) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 over the metadata (except the digest itself) and every tensor, both in name
/// order, with lengths so that no two different contents hash the same byte stream.
pub(super) fn digest<'a>(
    meta: &BTreeMap<String, String>,
    tensors: impl Iterator<Item = (&'a str, Dtype, &'a [usize], &'a [u8])>,
) -> String {
    let mut h = Sha256::new();
    let mut field = |b: &[u8]| {
        h.update((b.len() as u64).to_le_bytes());
        h.update(b);
    };
    for (k, v) in meta
        .iter()
        .filter(|(k, _)| *k != KEY_DIGEST && !k.starts_with(INFO_PREFIX))
    {
        field(k.as_bytes());
        field(v.as_bytes());
    }
    let mut sorted: Vec<_> = tensors.collect();
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    for (name, dtype, shape, bytes) in sorted {
        field(name.as_bytes());
        field(dtype.to_string().as_bytes());
        let dims: Vec<u8> = shape
            .iter()
            .flat_map(|&d| (d as u64).to_le_bytes())
            .collect();
        field(&dims);
        field(bytes);
    }
    hex(&h.finalize())
}

/// Serialises `blobs` with `meta` (plus the digest) and writes them atomically.
pub(super) fn write_file(
    path: &Path,
    blobs: &BTreeMap<String, Blob>,
    mut meta: BTreeMap<String, String>,
) -> Result<(), CheckpointError> {
    let d = digest(
        &meta,
        blobs
            .iter()
            .map(|(n, b)| (n.as_str(), b.dtype, b.shape.as_slice(), b.bytes.as_slice())),
    );
    meta.insert(KEY_DIGEST.to_string(), d);
    let views = blobs
        .iter()
        .map(|(n, b)| {
            TensorView::new(b.dtype, b.shape.clone(), &b.bytes)
                .map(|v| (n.clone(), v))
                .map_err(|e| CheckpointError::Invalid(format!("tensor `{n}`: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let bytes = safetensors::serialize(views, Some(meta.into_iter().collect()))
        .map_err(|e| CheckpointError::Invalid(format!("cannot serialise checkpoint: {e}")))?;
    write_atomic(path, &bytes)
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Writes `bytes` to `path` through a temporary file in the same directory: write,
/// fsync, rename, fsync the directory. On failure the temporary file is removed.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), CheckpointError> {
    let file_name = path.file_name().ok_or_else(|| {
        CheckpointError::Invalid(format!("`{}` does not name a file", path.display()))
    })?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let tmp = dir.join(format!(
        ".{}.tmp-{}-{}",
        file_name.to_string_lossy(),
        std::process::id(),
        TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = write_then_rename(&tmp, path, &dir, bytes);
    if result.is_err() {
        // Best effort: the temporary file may not exist if creating it failed.
        let _ = fs::remove_file(&tmp);
    }
    result
}

pub(super) fn write_then_rename(
    tmp: &Path,
    path: &Path,
    dir: &Path,
    bytes: &[u8],
) -> Result<(), CheckpointError> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(tmp)
        .map_err(io_err("create", tmp))?;
    f.write_all(bytes).map_err(io_err("write", tmp))?;
    f.sync_all().map_err(io_err("fsync", tmp))?;
    drop(f);
    fs::rename(tmp, path).map_err(io_err("rename into", path))?;
    sync_dir(dir)
}

#[cfg(unix)]
pub(super) fn sync_dir(dir: &Path) -> Result<(), CheckpointError> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("fsync directory", dir))
}

#[cfg(not(unix))]
pub(super) fn sync_dir(_dir: &Path) -> Result<(), CheckpointError> {
    // Directories cannot be opened for syncing on this platform; rename is still atomic.
    Ok(())
}

/// A parsed, digest-checked checkpoint file, not yet applied to anything.
pub(super) struct Parsed {
    /// name -> (dtype, shape, bytes)
    pub(super) tensors: BTreeMap<String, (Dtype, Vec<usize>, Vec<u8>)>,
    /// The metadata, digest included.
    pub(super) meta: HashMap<String, String>,
}

pub(super) fn read_checked(path: &Path) -> Result<Parsed, CheckpointError> {
    let bytes = fs::read(path).map_err(io_err("read", path))?;
    let corrupt = |reason: String| CheckpointError::Corrupt {
        path: path.to_path_buf(),
        reason,
    };
    let st = SafeTensors::deserialize(&bytes).map_err(|e| {
        corrupt(format!(
            "not a safetensors file, or truncated or corrupted ({e})"
        ))
    })?;
    let (_, header) = SafeTensors::read_metadata(&bytes)
        .map_err(|e| corrupt(format!("unreadable header ({e})")))?;
    let meta = header.metadata().clone().unwrap_or_default();
    match meta.get(KEY_FORMAT) {
        Some(f) if f == FORMAT => {}
        _ => {
            return Err(corrupt(format!(
                "a safetensors file, but not a checkpoint written by recipe (no `{KEY_FORMAT}: {FORMAT}` metadata)"
            )));
        }
    }
    match meta.get(KEY_VERSION) {
        Some(v) if v == FORMAT_VERSION => {}
        v => {
            return Err(corrupt(format!(
                "checkpoint format version {} is not the supported version {FORMAT_VERSION}",
                v.map_or("(none)", String::as_str)
            )));
        }
    }
    let tensors: BTreeMap<String, (Dtype, Vec<usize>, Vec<u8>)> = st
        .iter()
        .map(|(n, v)| {
            (
                n.to_string(),
                (v.dtype(), v.shape().to_vec(), v.data().to_vec()),
            )
        })
        .collect();
    let sorted: BTreeMap<String, String> =
        meta.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    let want = digest(
        &sorted,
        tensors
            .iter()
            .map(|(n, (d, s, b))| (n.as_str(), *d, s.as_slice(), b.as_slice())),
    );
    match meta.get(KEY_DIGEST) {
        Some(d) if *d == want => {}
        Some(_) => {
            return Err(corrupt(
                "its contents do not match the stored SHA-256 digest (the file is corrupted)"
                    .to_string(),
            ));
        }
        None => return Err(corrupt("it has no SHA-256 digest".to_string())),
    }
    Ok(Parsed { tensors, meta })
}
