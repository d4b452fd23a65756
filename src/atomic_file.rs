//! The one way charaboard writes a file: into a temporary file beside the target, synced, then
//! renamed over it. Until the rename the target is untouched; whatever fails (a full disk, a
//! directory in the way, a failed encoder) the temporary file is removed, so no `.partial` file
//! is ever left behind and the previous version survives.

use anyhow::{bail, Context, Result};
use image::RgbImage;
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// The temporary file a write to `path` goes through: hidden, in the same folder (so the rename
/// cannot cross file systems), named after the target so that it says what it was for, and
/// unique to this process and write, so that two writers never share one.
pub fn partial_path(path: &Path) -> PathBuf {
    static WRITES: AtomicU64 = AtomicU64::new(0);
    let name = path
        .file_name()
        .map_or_else(|| "file".into(), |n| n.to_string_lossy());
    let write = WRITES.fetch_add(1, Ordering::Relaxed);
    parent_dir(path).join(format!(".{name}.{}-{write}.partial", std::process::id()))
}

/// Writes `bytes` to `path` atomically.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_with(path, |w| Ok(w.write_all(bytes)?))
}

/// Writes what `fill` writes to `path` atomically.
pub fn write_atomic_with(
    path: &Path,
    fill: impl FnOnce(&mut dyn Write) -> Result<()>,
) -> Result<()> {
    let tmp = stage(path, fill)?;
    commit(&tmp, path)
}

/// Saves `image` as a PNG at `path` atomically.
pub fn save_png(image: &RgbImage, path: &Path) -> Result<()> {
    write_atomic(path, &png_bytes(image)?)
}

/// `image` as PNG bytes (the encoder needs to seek, so it writes to memory).
pub fn png_bytes(image: &RgbImage) -> Result<Vec<u8>> {
    let mut bytes = std::io::Cursor::new(Vec::new());
    image
        .write_to(&mut bytes, image::ImageFormat::Png)
        .context("cannot encode a PNG")?;
    Ok(bytes.into_inner())
}

/// Writes the temporary file of `path` and syncs it; on failure it is removed. Several files
/// that belong together are staged first and committed after, so that a failure while writing
/// any of them replaces none.
pub fn stage(path: &Path, fill: impl FnOnce(&mut dyn Write) -> Result<()>) -> Result<PathBuf> {
    let tmp = partial_path(path);
    let written = (|| -> Result<()> {
        let file = File::create(&tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
        let mut w = BufWriter::new(file);
        fill(&mut w).with_context(|| format!("cannot write {}", path.display()))?;
        let file = w
            .into_inner()
            .map_err(|e| e.into_error())
            .with_context(|| format!("cannot write {}", path.display()))?;
        file.sync_all()
            .with_context(|| format!("cannot write {}", path.display()))
    })();
    if let Err(e) = written {
        // Best effort: the error that matters is the one already in hand.
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(tmp)
}

/// Refuses a target that a rename could not replace (a directory in the way), before anything
/// is replaced.
pub fn check_replaceable(path: &Path) -> Result<()> {
    if path.is_dir() {
        bail!(
            "cannot write {}: a folder of that name is in the way",
            path.display()
        );
    }
    Ok(())
}

/// Renames a staged file over its target; on failure the staged file is removed.
pub fn commit(tmp: &Path, path: &Path) -> Result<()> {
    let renamed = check_replaceable(path).and_then(|()| {
        fs::rename(tmp, path).with_context(|| format!("cannot write {}", path.display()))
    });
    if renamed.is_err() {
        let _ = fs::remove_file(tmp);
        return renamed;
    }
    // Make the rename itself durable. Directories cannot be opened for syncing everywhere
    // (Windows), and the data is already safe, so a failure here is not an error.
    if let Ok(d) = File::open(parent_dir(path)) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Writes several files as one: every file is staged first (nothing is replaced if one cannot
/// be), then renamed over its target in the order given, so a reader that waits for the last
/// (a key file) never sees a mixture.
pub fn write_all_in_order(files: &[(PathBuf, Vec<u8>)]) -> Result<()> {
    let mut staged = Vec::new();
    let prepared = files.iter().try_for_each(|(path, bytes)| {
        check_replaceable(path)?;
        staged.push(stage(path, |w| Ok(w.write_all(bytes)?))?);
        Ok::<_, anyhow::Error>(())
    });
    if let Err(e) = prepared {
        discard(&staged);
        return Err(e);
    }
    for (k, (tmp, (path, _))) in staged.iter().zip(files).enumerate() {
        if let Err(e) = commit(tmp, path) {
            discard(&staged[k + 1..]);
            return Err(e);
        }
    }
    Ok(())
}

/// Removes staged files that will not be committed.
pub fn discard(staged: &[PathBuf]) {
    for tmp in staged {
        let _ = fs::remove_file(tmp);
    }
}

/// `Path::parent` is `""` for a bare file name; that means the current folder.
pub fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}
