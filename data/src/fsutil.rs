//! File-system helpers: atomic writes, so that nothing already written is lost when a run dies.
use std::io::Write;
use std::path::Path;

/// Write `bytes` to `path` atomically: a temporary file in the same directory, fsync, rename.
/// A reader sees either the old file or the new one, never a torn one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
    let written = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        // A write that failed part-way (disk full, quota, file size limit) leaves the old file
        // as it was; the partial temporary goes, so it does not hold on to the space.
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// Append one line to a file (used for JSONL metrics), creating it if needed. A write that
/// fails part-way (disk full, quota, file size limit) is cut back off, so the file never ends in
/// a torn line that would break its readers once the run resumes.
pub fn append_line(path: &Path, line: &str) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    let len = f.metadata()?.len();
    let mut text = String::with_capacity(line.len() + 1);
    text.push_str(line);
    text.push('\n');
    let written = f.write_all(text.as_bytes());
    if written.is_err() {
        let _ = f.set_len(len);
    }
    written
}

/// Name of the lock file [`DirLock`] keeps in a folder.
pub const LOCK_FILE: &str = ".host-trainer.lock";

/// One writer per folder: an OS advisory lock (`flock`) on `DIR/.host-trainer.lock`, which holds
/// the PID and command of the process that took it.
///
/// Why the OS lock and not just a PID file: the kernel releases the lock when its process dies,
/// however it dies (a crash, `kill -9`, power loss), so a lock left by a dead run never blocks
/// the next one; the file's PID is only there to name the holder in the refusal. The file is
/// never removed (removing it would let a third process lock a fresh file while a second still
/// holds the old one); the next holder rewrites its contents.
#[derive(Debug)]
pub struct DirLock {
    _file: std::fs::File,
}

impl DirLock {
    /// Takes the lock of `dir` (created if missing) for `what` (e.g. "host-trainer pretrain"), or
    /// fails at once with an error that names the folder and the holder's PID
    /// ([`std::io::ErrorKind::WouldBlock`]). A file system without locks gives
    /// [`std::io::ErrorKind::Unsupported`]: the caller decides whether to go on unprotected.
    pub fn acquire(dir: &Path, what: &str) -> std::io::Result<DirLock> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(LOCK_FILE);
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let holder = std::fs::read_to_string(&path).unwrap_or_default();
                let holder = holder.trim();
                let holder = if holder.is_empty() {
                    "a process that has not written its PID yet".to_string()
                } else {
                    format!("PID {holder}")
                };
                return Err(std::io::Error::new(
                    std::io::ErrorKind::WouldBlock,
                    format!(
                        "{} is in use by another process ({holder}; lock {}): wait for it to \
                         finish or stop it, or choose another folder",
                        dir.display(),
                        path.display()
                    ),
                ));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(e),
        }
        file.set_len(0)?;
        writeln!(file, "{} ({what})", std::process::id())?;
        file.flush()?;
        Ok(DirLock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_contents_and_leaves_no_temp() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a.bin");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        let n = std::fs::read_dir(d.path()).unwrap().count();
        assert_eq!(n, 1, "temporary file left behind");
    }

    #[test]
    fn a_held_lock_refuses_a_second_holder_naming_the_pid_and_frees_on_drop() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("run");
        let first = DirLock::acquire(&dir, "test").unwrap();
        let e = DirLock::acquire(&dir, "test").unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock);
        let pid = format!("PID {} (test)", std::process::id());
        assert!(e.to_string().contains(&pid), "{e}");
        drop(first);
        // A lock file left behind by a holder that is gone does not block.
        DirLock::acquire(&dir, "again").unwrap();
    }
}
