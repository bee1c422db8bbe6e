//! Compiled kernels on disk, shared across processes and runs.
//!
//! Key = SHA-256 of (engine, engine's build identity, OS, program text, weight file bytes),
//! never a pointer. One file per kernel holds the engine's artifact; the file's modification
//! time is its last use, and the oldest entries are evicted past a size cap.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use sha2::{Digest, Sha256};

use ane_mil::{print_program, Program, WeightFiles};

use crate::engine::EngineKind;
use crate::error::{Error, Result};

/// Default size cap: 4 GiB.
pub const DEFAULT_CAP_BYTES: u64 = 4 << 30;
const SUFFIX: &str = ".kernel";

/// A folder of compiled kernels.
#[derive(Clone, Debug)]
pub struct DiskCache {
    dir: PathBuf,
    cap_bytes: u64,
}

/// One cached kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheEntry {
    /// Hex key.
    pub key: String,
    /// Bytes on disk.
    pub bytes: u64,
    /// Last use.
    pub last_used: SystemTime,
}

fn io(path: &Path, source: std::io::Error) -> Error {
    Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl DiskCache {
    /// The cache at `dir` (created on first store).
    pub fn new(dir: impl Into<PathBuf>, cap_bytes: u64) -> Self {
        DiskCache {
            dir: dir.into(),
            cap_bytes,
        }
    }

    /// `GGML_ANE_CACHE_DIR` (`off` disables the cache), else the platform cache folder
    /// (`$XDG_CACHE_HOME` or `~/.cache` on Linux, `~/Library/Caches` on macOS) + `ggml-ane`;
    /// `None` if disabled or neither exists. `GGML_ANE_CACHE_MAX_MB` caps its size.
    pub fn from_env() -> Option<Self> {
        let dir = match std::env::var_os("GGML_ANE_CACHE_DIR") {
            Some(d) if d == "off" || d == "none" => return None,
            Some(d) if !d.is_empty() => PathBuf::from(d),
            _ => {
                let home = std::env::var_os("HOME").map(PathBuf::from);
                let base = if cfg!(target_os = "macos") {
                    home.map(|h| h.join("Library/Caches"))
                } else {
                    std::env::var_os("XDG_CACHE_HOME")
                        .map(PathBuf::from)
                        .or_else(|| home.map(|h| h.join(".cache")))
                };
                base?.join("ggml-ane")
            }
        };
        let cap = std::env::var("GGML_ANE_CACHE_MAX_MB")
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map_or(DEFAULT_CAP_BYTES, |mb| mb << 20);
        Some(DiskCache::new(dir, cap))
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The key of a program compiled by `engine` (identified by `build`, e.g. OS build and
    /// compiler version) with `weights`.
    pub fn key(
        engine: EngineKind,
        build: &str,
        program: &Program,
        weights: &WeightFiles,
    ) -> String {
        let mut h = Sha256::new();
        for part in [
            engine.as_str(),
            build,
            std::env::consts::OS,
            &print_program(program),
        ] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part.as_bytes());
        }
        for (path, file) in weights.iter() {
            h.update((path.len() as u64).to_le_bytes());
            h.update(path.as_bytes());
            h.update((file.bytes().len() as u64).to_le_bytes());
            h.update(file.bytes());
        }
        h.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }

    fn path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}{SUFFIX}"))
    }

    /// The artifact stored under `key`, marking it used.
    pub fn load(&self, key: &str) -> Option<Vec<u8>> {
        let p = self.path(key);
        let bytes = std::fs::read(&p).ok()?;
        if let Ok(f) = std::fs::File::options().append(true).open(&p) {
            let _ = f.set_modified(SystemTime::now());
        }
        Some(bytes)
    }

    /// Stores an artifact (atomically: written aside, then renamed), then evicts past the cap.
    pub fn store(&self, key: &str, artifact: &[u8]) -> Result<()> {
        std::fs::create_dir_all(&self.dir).map_err(|e| io(&self.dir, e))?;
        let p = self.path(key);
        let tmp = self.dir.join(format!("{key}.{}.tmp", std::process::id()));
        std::fs::write(&tmp, artifact).map_err(|e| io(&tmp, e))?;
        std::fs::rename(&tmp, &p).map_err(|e| io(&p, e))?;
        self.evict()
    }

    /// Every entry, most recently used first.
    pub fn list(&self) -> Result<Vec<CacheEntry>> {
        let rd = match std::fs::read_dir(&self.dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io(&self.dir, e)),
        };
        let mut out = Vec::new();
        for entry in rd.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(key) = name.strip_suffix(SUFFIX) else {
                continue;
            };
            let Ok(meta) = entry.metadata() else { continue };
            out.push(CacheEntry {
                key: key.to_string(),
                bytes: meta.len(),
                last_used: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            });
        }
        out.sort_by(|a, b| b.last_used.cmp(&a.last_used).then(a.key.cmp(&b.key)));
        Ok(out)
    }

    /// Removes every entry; returns how many.
    pub fn clear(&self) -> Result<usize> {
        let entries = self.list()?;
        for e in &entries {
            let p = self.path(&e.key);
            std::fs::remove_file(&p).map_err(|err| io(&p, err))?;
        }
        Ok(entries.len())
    }

    /// Deletes the least recently used entries until the total is within the cap.
    fn evict(&self) -> Result<()> {
        let entries = self.list()?;
        let mut total: u64 = entries.iter().map(|e| e.bytes).sum();
        for e in entries.iter().rev() {
            if total <= self.cap_bytes {
                break;
            }
            let p = self.path(&e.key);
            std::fs::remove_file(&p).map_err(|err| io(&p, err))?;
            total -= e.bytes;
        }
        Ok(())
    }
}
