//! Compiled tile kernels, shared by every backend instance in the process.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::program::matmul_program;
use super::stats::{FallbackReason, Stats};
use crate::disk_cache::DiskCache;
use crate::engine::{compile_cached, Engine, Kernel};
use crate::error::Error;

/// A compiled kernel, or why there is none.
type Entry = Result<Arc<dyn Kernel>, FallbackReason>;

/// Tile kernels by shape: compiled once per process, failures remembered so they are not
/// retried (and re-billed) on every call.
#[derive(Default)]
pub struct KernelCache {
    entries: Mutex<HashMap<(usize, usize, usize), Entry>>,
    disk: Option<DiskCache>,
}

impl std::fmt::Debug for KernelCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.entries.lock().map(|e| e.len()).unwrap_or(0);
        f.debug_struct("KernelCache").field("entries", &n).finish()
    }
}

impl KernelCache {
    /// An empty cache, in memory only.
    pub fn new() -> Self {
        KernelCache::default()
    }

    /// An empty cache backed by compiled kernels on disk (shared with other processes).
    pub fn with_disk(disk: Option<DiskCache>) -> Self {
        KernelCache {
            entries: Mutex::default(),
            disk,
        }
    }

    /// The kernel for tile `(m, k, n)`, compiling it on first use.
    ///
    /// The lock is held while compiling, so two threads never compile (and pay for) the same
    /// kernel twice. A spent budget is not remembered: it is reported again, cheaply.
    pub fn get_or_compile(
        &self,
        engine: &dyn Engine,
        m: usize,
        k: usize,
        n: usize,
        stats: &Stats,
    ) -> Result<Arc<dyn Kernel>, FallbackReason> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = entries.get(&(m, k, n)) {
            stats.add_cache_hit();
            return e.clone();
        }
        let result = match compile_cached(
            engine,
            self.disk.as_ref(),
            &matmul_program(m, k, n),
            &Default::default(),
        ) {
            Ok((kernel, from_disk)) => {
                if from_disk {
                    stats.add_disk_hit();
                } else {
                    stats.add_compile();
                }
                Ok(Arc::from(kernel))
            }
            Err(Error::BudgetExhausted { .. }) => return Err(FallbackReason::Budget),
            Err(Error::Unsupported { reason, .. }) => Err(FallbackReason::Unsupported(reason)),
            Err(e) => Err(FallbackReason::Compile(e.to_string())),
        };
        entries.insert((m, k, n), result.clone());
        result
    }
}
