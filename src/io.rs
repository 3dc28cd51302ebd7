//! File output that never leaves a half-written file behind: write to a temporary sibling, sync, rename.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// `.name.tmpPID` beside `path`: renamed over it once complete.
pub(crate) fn temp_sibling(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp{}", std::process::id()))
}

/// Writes `bytes` to `path` atomically; creates missing parent folders.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_with(path, |f| f.write_all(bytes))
}

/// Removes `path`'s temporary siblings (`.name.tmpPID`) that no process is writing: a killed relabel
/// leaves one as large as its file. A writer holds an exclusive lock on its temporary file
/// ([`lock_temp`]), so a sibling whose lock can be taken is stale; one that cannot be checked stays.
pub(crate) fn remove_stale_temps(path: &Path) {
    let (Some(name), Some(dir)) = (path.file_name(), path.parent()) else { return };
    let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
    let prefix = format!(".{}.tmp", name.to_string_lossy());
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let file = entry.file_name().to_string_lossy().into_owned();
        if !file.strip_prefix(&prefix).is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())) {
            continue;
        }
        let Ok(f) = std::fs::OpenOptions::new().write(true).open(entry.path()) else { continue };
        if f.try_lock().is_ok() {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Marks a temporary file as being written (for [`remove_stale_temps`]) until `f` is closed.
pub(crate) fn lock_temp(f: &std::fs::File, path: &Path) -> Result<()> {
    f.lock().map_err(|e| Error::output(path, format!("cannot lock the temporary file: {e}")))
}

/// Fails now, not after hours of training, when `path` cannot be written: creates missing parent
/// folders, then creates and removes the temporary sibling a later [`write_atomic`] would use.
pub fn check_writable(path: &Path) -> Result<()> {
    if path.is_dir() {
        return Err(Error::output(path, "is a folder"));
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| Error::output(parent, e))?;
    }
    let tmp = temp_sibling(path);
    std::fs::File::create(&tmp).map_err(|e| Error::output(path, e))?;
    std::fs::remove_file(&tmp).map_err(|e| Error::output(path, e))
}

/// Like [`write_atomic`] but the content is produced by a writer callback.
pub fn write_atomic_with(path: &Path, fill: impl FnOnce(&mut std::fs::File) -> std::io::Result<()>) -> Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| Error::output(parent, e))?;
    }
    let tmp = temp_sibling(path);
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        fill(&mut f)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::output(path, e));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_temporaries_go_and_ones_being_written_stay() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("labels.safetensors");
        let stale = dir.path().join(".labels.safetensors.tmp12345");
        let live = temp_sibling(&target);
        let other = dir.path().join(".other.safetensors.tmp12345");
        for p in [&stale, &live, &other] {
            std::fs::write(p, b"x").unwrap();
        }
        // The live one is held as a writer holds it; a separate open file description, as another
        // process would have, cannot take the lock.
        let writer = std::fs::OpenOptions::new().write(true).open(&live).unwrap();
        lock_temp(&writer, &live).unwrap();
        remove_stale_temps(&target);
        assert!(!stale.exists());
        assert!(live.exists() && other.exists());
        drop(writer);
        remove_stale_temps(&target);
        assert!(!live.exists());
    }
}
