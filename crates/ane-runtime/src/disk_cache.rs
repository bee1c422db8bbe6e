//! Compiled kernels on disk, shared across processes and runs.
//!
//! Key = SHA-256 of (engine, engine's build identity, OS, program text, weight file bytes),
//! never a pointer. One file per kernel holds the engine's artifact; the file's modification
//! time is its last use, and the oldest entries are evicted past a size cap.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use sha2::{Digest, Sha256};

use ane_mil::{print_program, Program, WeightFiles};

use crate::engine::{Engine, EngineKind, Kernel};
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

    /// The platform's cache folder for `ggml-ane`: `~/Library/Caches/ggml-ane` on macOS,
    /// `$XDG_CACHE_HOME/ggml-ane` or `~/.cache/ggml-ane` elsewhere; `None` without a home.
    /// The caller reads `HOME` and `XDG_CACHE_HOME` (this crate reads no environment).
    pub fn platform_dir(home: Option<&Path>, xdg_cache_home: Option<&Path>) -> Option<PathBuf> {
        let base = if cfg!(target_os = "macos") {
            home.map(|h| h.join("Library/Caches"))
        } else {
            xdg_cache_home
                .filter(|d| !d.as_os_str().is_empty())
                .map(Path::to_path_buf)
                .or_else(|| home.map(|h| h.join(".cache")))
        };
        Some(base?.join("ggml-ane"))
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

/// Compiles `program`, or loads it from `disk` when an earlier run stored it; stores what it
/// compiles. Returns the kernel and whether it came from the disk cache.
pub fn compile_cached(
    engine: &dyn Engine,
    disk: Option<&DiskCache>,
    program: &Program,
    weights: &WeightFiles,
) -> Result<(Box<dyn Kernel>, bool)> {
    let Some(disk) = disk else {
        return Ok((engine.compile(program, weights)?, false));
    };
    let key = DiskCache::key(engine.info().kind, &engine.build_id(), program, weights);
    if let Some(artifact) = disk.load(&key) {
        // a damaged or foreign entry is recompiled, not trusted
        if let Ok(kernel) = engine.import(&artifact, weights) {
            return Ok((kernel, true));
        }
    }
    let kernel = engine.compile(program, weights)?;
    if let Some(artifact) = engine.export(program, kernel.as_ref()) {
        // a cache that cannot be written costs time, never correctness
        let _ = disk.store(&key, &artifact);
    }
    Ok((kernel, false))
}
