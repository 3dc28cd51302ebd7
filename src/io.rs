//! File output that never leaves a half-written file behind: write to a temporary sibling, flush,
//! sync, check its length, rename; and ownership of an output folder by one live process.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// `.name.tmpPID` beside `path`: renamed over it once complete.
pub(crate) fn temp_sibling(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp{}", std::process::id()))
}

/// Writes `bytes` to `path` atomically; creates missing parent folders. See [`write_atomic_with`].
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_with(path, |f| f.write_all(bytes))
}

/// The folder `path` is in: "." for a bare file name, None for a path without a parent ("/").
pub fn parent_dir(path: &Path) -> Option<&Path> {
    path.parent().map(|d| if d.as_os_str().is_empty() { Path::new(".") } else { d })
}

/// Removes `path`'s temporary siblings (`.name.tmpPID`) that no process is writing: a killed relabel
/// leaves one as large as its file. A writer holds an exclusive lock on its temporary file
/// ([`lock_temp`]), so a sibling whose lock can be taken is stale; one that cannot be checked stays.
pub(crate) fn remove_stale_temps(path: &Path) {
    let (Some(name), Some(dir)) = (path.file_name(), parent_dir(path)) else { return };
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

/// Writes the bytes `fill` produces to `path` atomically: into a locked temporary sibling, then
/// flushed, synced, its length on disk checked against the bytes `fill` wrote, and only then renamed
/// over `path` (and the folder synced, where the platform allows). Creates missing parent folders.
///
/// `fill` gets a buffered writer it must not wrap in a buffer of its own: a buffer dropped without
/// `flush` loses its last write error (a full disk), which is how empty images once reached their
/// final names. Encode into memory and write the bytes, or write through the given writer.
///
/// Errors: `Error::Output` naming `path` when anything fails (a full disk, a missing permission, a
/// short write); the temporary file is removed then and nothing is left under `path`.
pub fn write_atomic_with(path: &Path, fill: impl FnOnce(&mut dyn Write) -> std::io::Result<()>) -> Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| Error::output(parent, e))?;
    }
    let tmp = temp_sibling(path);
    let result = (|| {
        let f = File::create(&tmp)?;
        // Held until the file is closed, so `remove_stale_temps` never takes a file being written
        // (best effort: a filesystem without locks still gets its file, and then no temporary of
        // its can be taken for stale either).
        let _ = f.lock();
        let mut w = Counted { inner: std::io::BufWriter::new(f), bytes: 0 };
        fill(&mut w)?;
        w.inner.flush()?;
        let f = w.inner.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        let on_disk = f.metadata()?.len();
        if on_disk != w.bytes {
            return Err(std::io::Error::other(format!("only {on_disk} of {} bytes reached the disk", w.bytes)));
        }
        // Renamed while the lock is held: a concurrent `remove_stale_temps` (another process
        // starting on the same folder) can never take the temporary file between close and rename.
        std::fs::rename(&tmp, path)?;
        drop(f);
        Ok(())
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::output(path, e));
    }
    sync_parent(path);
    Ok(())
}

/// A writer that counts the bytes it accepted (to compare with the file's length on disk).
struct Counted<W: Write> {
    inner: W,
    bytes: u64,
}

impl<W: Write> Write for Counted<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Makes a rename into `path`'s folder durable (a crash right after it keeps the new name). Best
/// effort: some filesystems cannot sync a folder, and the file itself is already on disk.
pub(crate) fn sync_parent(path: &Path) {
    #[cfg(unix)]
    if let Some(dir) = parent_dir(path) {
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
}

/// Removes every stale temporary file (`.name.tmpPID`, see [`remove_stale_temps`]) in `dir` and its
/// immediate subfolders (the class folders of an image set): what a killed writer left.
pub fn remove_stale_temps_in(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            let Ok(inner) = std::fs::read_dir(&path) else { continue };
            for e in inner.flatten() {
                remove_if_stale_temp(&e.path());
            }
        } else {
            remove_if_stale_temp(&path);
        }
    }
}

/// Removes `path` when it is named `.name.tmpPID` and no process holds its lock.
fn remove_if_stale_temp(path: &Path) {
    let Some(file) = path.file_name().map(|n| n.to_string_lossy().into_owned()) else { return };
    let Some(rest) = file.strip_prefix('.') else { return };
    let Some((_, pid)) = rest.rsplit_once(".tmp") else { return };
    if pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
        return;
    }
    let Ok(f) = std::fs::OpenOptions::new().write(true).open(path) else { return };
    if f.try_lock().is_ok() {
        let _ = std::fs::remove_file(path);
    }
}

/// The lock file [`lock_folder`] keeps inside an output folder while a process writes into it.
pub const LOCK_FILE: &str = ".cda-engine.lock";

/// Exclusive ownership of an output folder: while this value lives, no other [`lock_folder`] on the
/// same folder succeeds, in this or any other process. The lock is the operating system's advisory
/// lock on [`LOCK_FILE`], so it ends with the process however that ends (kill -9 included); the file
/// is removed when the value is dropped, and so is the folder when [`lock_folder`] created it and
/// nothing was written into it (a command refused after taking its folder leaves no empty `--out`).
#[derive(Debug)]
pub struct FolderLock {
    file: Option<File>,
    path: PathBuf,
    /// Whether `lock_folder` created the folder.
    created: bool,
    /// A shared lock leaves its file: other holders may still lock it.
    shared: bool,
}

impl FolderLock {
    /// The lock file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for FolderLock {
    fn drop(&mut self) {
        // Removed while still held: a process that opened it meanwhile finds the name gone or new
        // after taking the lock and tries again (see `lock_folder`).
        if self.file.is_some() && !self.shared {
            let _ = std::fs::remove_file(&self.path);
        }
        if self.created {
            // Fails, as it should, when the folder holds anything.
            if let Some(dir) = self.path.parent() {
                let _ = std::fs::remove_dir(dir);
            }
        }
    }
}

/// Creates `dir` if needed and takes it for this process (see [`FolderLock`]).
///
/// Errors: `Error::Output` naming `dir` when another process holds it ("another cda-engine process
/// is writing into this folder"), or when the folder or its lock file cannot be created. On a
/// filesystem without advisory locks a warning is printed and the folder is used unlocked.
pub fn lock_folder(dir: &Path) -> Result<FolderLock> {
    lock_in(dir, LOCK_FILE, false, "wait for it to finish or give another --out")
}

/// Takes `dir` together with the other shards of one sharded run: a shared lock on [`LOCK_FILE`], so
/// shards do not block each other while a plain run (which needs it exclusively) and they exclude
/// each other. Errors as [`lock_folder`]'s.
pub fn lock_folder_shared(dir: &Path) -> Result<FolderLock> {
    lock_in(dir, LOCK_FILE, true, "a run without --shard owns it; wait for it to finish or give another --out")
}

/// An exclusive lock on the file `name` in `dir` (which must exist), e.g. one shard's: a second
/// process for the same shard stops at once. Errors as [`lock_folder`]'s, `hint` ending the message.
pub fn lock_named(dir: &Path, name: &str, hint: &str) -> Result<FolderLock> {
    lock_in(dir, name, false, hint)
}

/// [`lock_named`] that waits while another process holds the lock (for short work that cooperating
/// processes must do one after the other, such as checking for and merging shards). Errors as
/// [`lock_folder`]'s, except that a held lock is waited for.
pub fn wait_lock_named(dir: &Path, name: &str) -> Result<FolderLock> {
    match take_lock(dir, name, false, true)? {
        Taken::Yes(l) => Ok(l),
        Taken::Held(path) => Err(Error::output(dir, format!("cannot lock {}", path.display()))),
    }
}

fn lock_in(dir: &Path, name: &str, shared: bool, hint: &str) -> Result<FolderLock> {
    match take_lock(dir, name, shared, false)? {
        Taken::Yes(l) => Ok(l),
        Taken::Held(path) => {
            let pid = std::fs::read_to_string(&path).ok().map(|t| t.trim().to_string()).filter(|t| !t.is_empty() && !shared);
            let who = pid.map_or_else(|| "another cda-engine process".to_string(), |p| format!("another cda-engine process (pid {p})"));
            Err(Error::output(dir, format!("{who} is writing into this folder (it holds {}); {hint}", path.display())))
        }
    }
}

enum Taken {
    Yes(FolderLock),
    /// Another process holds the lock file at this path.
    Held(PathBuf),
}

fn take_lock(dir: &Path, name: &str, shared: bool, wait: bool) -> Result<Taken> {
    let created = !dir.exists();
    std::fs::create_dir_all(dir).map_err(|e| Error::output(dir, e))?;
    let path = dir.join(name);
    loop {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| Error::output(dir, format!("cannot create its lock file {}: {e}", path.display())))?;
        let taken = match (wait, shared) {
            (true, _) => file.lock().map_err(std::fs::TryLockError::Error),
            (false, true) => file.try_lock_shared(),
            (false, false) => file.try_lock(),
        };
        match taken {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Ok(Taken::Held(path)),
            Err(std::fs::TryLockError::Error(e)) => {
                eprintln!("warning: cannot lock {} ({e}); make sure no other process writes into it", dir.display());
                return Ok(Taken::Yes(FolderLock { file: None, path, created, shared }));
            }
        }
        // The holder before us may have removed the name between our open and our lock: then we
        // hold a lock on a file nobody else will open, and must start again on the current one.
        if same_file(&file, &path) {
            // The holder's process id, for the message a refused process prints (shared holders
            // are many: none is named).
            if !shared {
                let _ = file.set_len(0).and_then(|()| (&file).write_all(format!("{}\n", std::process::id()).as_bytes()));
            }
            return Ok(Taken::Yes(FolderLock { file: Some(file), path, created, shared }));
        }
    }
}

/// Empties `dir` after a failed write of a whole set (`sample`, `select`): the caller holds its lock
/// and found it empty, so everything in it but the lock file is this process's partial output. A
/// set is then either whole (with its record) or absent, never a part that looks finished.
pub fn clear_partial_set(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        if e.file_name() == LOCK_FILE {
            continue;
        }
        let p = e.path();
        let _ = if p.is_dir() { std::fs::remove_dir_all(&p) } else { std::fs::remove_file(&p) };
    }
}

/// The names in `dir` other than its [`LOCK_FILE`] (none when `dir` cannot be read): what decides
/// whether a locked output folder is empty.
pub fn folder_entries(dir: &Path) -> impl Iterator<Item = String> {
    // Every lock file (the folder's, a shard's) starts with the folder lock's stem.
    std::fs::read_dir(dir).into_iter().flatten().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).filter(|n| !n.starts_with(".cda-engine."))
}

/// Whether `path` still names the open `file`.
fn same_file(file: &File, path: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        match (file.metadata(), std::fs::metadata(path)) {
            (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
            _ => false,
        }
    }
    #[cfg(not(unix))]
    {
        let _ = file;
        path.exists()
    }
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

    #[test]
    fn stale_temporaries_go_from_a_folder_and_its_class_folders() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("new000")).unwrap();
        let stale = [dir.path().join(".recover_record.json.tmp4242"), dir.path().join("new000/.class000_id000.jpg.tmp4242")];
        let kept = [
            dir.path().join("recover_record.json"),
            dir.path().join("new000/class000_id000.jpg"),
            dir.path().join("new000/.hidden"),
            dir.path().join(".x.tmpabc"),
        ];
        for p in stale.iter().chain(&kept) {
            std::fs::write(p, b"x").unwrap();
        }
        remove_stale_temps_in(dir.path());
        assert!(stale.iter().all(|p| !p.exists()));
        assert!(kept.iter().all(|p| p.exists()));
    }

    #[test]
    fn a_failed_write_leaves_nothing_under_the_name_or_beside_it() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("a.bin");
        let e = write_atomic_with(&target, |w| {
            w.write_all(b"half")?;
            Err(std::io::Error::new(std::io::ErrorKind::StorageFull, "no space left"))
        })
        .unwrap_err();
        assert!(e.to_string().contains("a.bin") && e.to_string().contains("no space left"), "{e}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        // A parent that is a file: an error, not a panic, and nothing written.
        std::fs::write(dir.path().join("file"), b"x").unwrap();
        assert!(write_atomic(&dir.path().join("file/a.bin"), b"data").is_err());
        write_atomic(&target, b"data").unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"data");
    }

    #[test]
    fn a_folder_has_one_owner_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let held = lock_folder(&out).unwrap();
        assert!(held.path().exists());
        assert_eq!(folder_entries(&out).count(), 0, "the lock file does not make a folder non-empty");
        // A second open file description, as another process has, is refused.
        let e = lock_folder(&out).unwrap_err().to_string();
        assert!(e.contains("is writing into this folder") && e.contains(&format!("pid {}", std::process::id())), "{e}");
        drop(held);
        assert!(!out.join(LOCK_FILE).exists());
        let again = lock_folder(&out).unwrap();
        drop(again);
    }
}
