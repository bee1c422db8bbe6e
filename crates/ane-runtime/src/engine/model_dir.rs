//! The folder the private framework compiles a program in: `NSTemporaryDirectory()/<hex id>/`
//! with `model.mil` and `weights/*`, as every working client prepares it before compiling.
//!
//! The framework names the folder after the program's content hash, so two kernels of the
//! same program share it. The seed deletes it when either is freed, breaking the other; here
//! the folder is reference-counted per process and removed when the last holder drops it.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use ane_mil::WeightFiles;

/// Holders per folder.
fn holders() -> &'static Mutex<HashMap<PathBuf, usize>> {
    static HOLDERS: OnceLock<Mutex<HashMap<PathBuf, usize>>> = OnceLock::new();
    HOLDERS.get_or_init(Default::default)
}

/// A held model folder; dropping the last holder removes it.
#[derive(Debug)]
pub struct ModelDir {
    path: PathBuf,
}

/// Where a BLOBFILE path (`@model_path/weights/w.bin`) lives inside the folder, refusing
/// paths that would leave it.
pub fn weight_file_path(dir: &Path, mil_path: &str) -> std::io::Result<PathBuf> {
    let rel = mil_path.strip_prefix("@model_path/").unwrap_or(mil_path);
    let rel = Path::new(rel);
    let inside = rel.components().all(|c| matches!(c, Component::Normal(_)));
    if !inside || rel.as_os_str().is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("weight path `{mil_path}` leaves the model folder"),
        ));
    }
    Ok(dir.join(rel))
}

impl ModelDir {
    /// Holds `path`, writing `model.mil` and the weight files if this is the first holder.
    pub fn acquire(path: PathBuf, mil_text: &str, weights: &WeightFiles) -> std::io::Result<Self> {
        let mut map = holders().lock().unwrap_or_else(|e| e.into_inner());
        let count = map.entry(path.clone()).or_insert(0);
        if *count == 0 {
            let written = (|| {
                std::fs::create_dir_all(&path)?;
                std::fs::write(path.join("model.mil"), mil_text)?;
                for (mil_path, file) in weights.iter() {
                    let p = weight_file_path(&path, mil_path)?;
                    if let Some(parent) = p.parent() {
                        std::fs::create_dir_all(parent)?;
                    }
                    std::fs::write(p, file.bytes())?;
                }
                Ok::<_, std::io::Error>(())
            })();
            if let Err(e) = written {
                map.remove(&path);
                let _ = std::fs::remove_dir_all(&path);
                return Err(e);
            }
        }
        *map.get_mut(&path).expect("inserted above") += 1;
        Ok(ModelDir { path })
    }

    /// The folder.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How many holders the folder has now.
    pub fn holders(&self) -> usize {
        let map = holders().lock().unwrap_or_else(|e| e.into_inner());
        map.get(&self.path).copied().unwrap_or(0)
    }
}

impl Drop for ModelDir {
    fn drop(&mut self) {
        let mut map = holders().lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = map.get_mut(&self.path) {
            *count -= 1;
            if *count == 0 {
                map.remove(&self.path);
                // a folder that cannot be removed costs disk space, never correctness
                let _ = std::fs::remove_dir_all(&self.path);
            }
        }
    }
}
