//! The folder the private framework compiles a program in: `NSTemporaryDirectory()/<hex id>/`
//! with `model.mil` and `weights/*`, as every working client prepares it before compiling.
//!
//! The framework names the folder after the program's content hash, so every kernel of the
//! same program — in this process or another — shares it. arozanov/ggml-ane deletes it when any of
//! them is freed, breaking the others. Here each holder keeps a shared lock on
//! `<hex id>.lock` beside the folder; the holder that drops it and then gets the lock
//! exclusively is the last one anywhere, and only it removes the folder and then the lock
//! file (so lock files do not pile up, one per program ever compiled). A holder that opened
//! the lock file just before it was removed notices, once its lock is granted, that the
//! path no longer names its file, and starts over on a fresh one. (A process spawned
//! at that moment briefly shares our descriptors until it execs; then the folder is simply
//! left for the next last holder — disk space, never correctness.)

use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};

use ane_mil::WeightFiles;

use crate::weights::model_path_file;

/// A held model folder; the last holder (across processes) removes it.
#[derive(Debug)]
pub(crate) struct ModelDir {
    path: PathBuf,
    lock_path: PathBuf,
    /// Our shared lock; `None` only while dropping.
    lock: Option<File>,
}

/// Writes `bytes` to `path` unless it already holds them; via a temporary name and a
/// rename, so a concurrent reader never sees half a file.
fn write_if_changed(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if std::fs::read(path).is_ok_and(|old| old == bytes) {
        return Ok(());
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

fn open_lock(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path)
}

/// Whether `path` still names the file `lock` has open (not removed and re-created since).
#[cfg(unix)]
fn still_named_by(lock: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (lock.metadata(), std::fs::metadata(path)) {
        (Ok(open), Ok(named)) => open.dev() == named.dev() && open.ino() == named.ino(),
        _ => false,
    }
}

/// Without inode numbers the check is skipped (the Apple engines only run on Unix).
#[cfg(not(unix))]
fn still_named_by(_lock: &File, path: &Path) -> bool {
    path.exists()
}

impl ModelDir {
    /// Holds `path` (a folder named after the program's hash), writing `model.mil` and the
    /// weight files where they are missing or differ.
    pub(crate) fn acquire(
        path: PathBuf,
        mil_text: &str,
        weights: &WeightFiles,
    ) -> std::io::Result<Self> {
        // validate every weight path before touching the disk
        let files = weights
            .iter()
            .map(|(p, f)| Ok((model_path_file(&path, p)?, f.bytes())))
            .collect::<std::io::Result<Vec<_>>>()?;
        let mut lock_name = path.file_name().unwrap_or_default().to_os_string();
        lock_name.push(".lock");
        let lock_path = path.with_file_name(lock_name);
        if let Some(parent) = lock_path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let lock = loop {
            let lock = open_lock(&lock_path)?;
            // waits while a last holder elsewhere is removing the folder
            lock.lock_shared()?;
            if still_named_by(&lock, &lock_path) {
                break lock;
            }
            // the last holder removed this lock file while we waited: take the new one
        };
        let held = ModelDir {
            path,
            lock_path,
            lock: Some(lock),
        };
        write_if_changed(&held.path.join("model.mil"), mil_text.as_bytes())?;
        for (p, bytes) in files {
            write_if_changed(&p, bytes)?;
        }
        Ok(held)
    }
}

impl Drop for ModelDir {
    fn drop(&mut self) {
        // closing our descriptor releases our shared lock
        drop(self.lock.take());
        let Ok(probe) = open_lock(&self.lock_path) else {
            return;
        };
        match probe.try_lock() {
            // nobody else holds it: we were the last; a folder that cannot be removed costs
            // disk space, never correctness
            Ok(()) => {
                let _ = std::fs::remove_dir_all(&self.path);
                // still under the exclusive lock: waiters see the file gone and start over
                let _ = std::fs::remove_file(&self.lock_path);
            }
            Err(TryLockError::WouldBlock) | Err(TryLockError::Error(_)) => {}
        }
    }
}

#[cfg(test)]
#[path = "model_dir_tests.rs"]
mod tests;
