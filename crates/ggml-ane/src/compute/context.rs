//! Per backend instance: scratch buffers, counters, and ggml's CPU backend for the nodes the
//! engine does not compute.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use ane_runtime::matmul::{Scratch, Stats};

use crate::abi::{self, CpuBackend};
use crate::stats::placement::Placements;

/// Why a graph computation failed, with the ggml status to return: ggml's CPU backend's own
/// (`GGML_STATUS_ABORTED` when the host's abort callback fired), else `GGML_STATUS_FAILED`.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) status: i32,
    pub(crate) why: String,
}

impl From<String> for Failure {
    fn from(why: String) -> Self {
        Failure {
            status: abi::GGML_STATUS_FAILED,
            why,
        }
    }
}

impl From<&str> for Failure {
    fn from(why: &str) -> Self {
        Failure::from(why.to_string())
    }
}

/// What ggml set for the CPU backend, applied at its next use.
#[derive(Default)]
struct CpuSettings {
    /// The thread count ggml set (`None`: never set, one per core).
    n_threads: Option<i32>,
    /// The abort callback ggml set, and its data (an address).
    abort: Option<(abi::ggml_abort_callback, usize)>,
    /// Set since the backend last took them.
    changed: bool,
}

/// Per backend instance: scratch buffers, counters, and ggml's CPU backend for the nodes
/// the engine does not compute.
#[derive(Default)]
pub(crate) struct BackendContext {
    pub(crate) scratch: Mutex<Scratch>,
    pub(crate) stats: Arc<Stats>,
    /// What ran where, kept with `GGML_ANE_STATS=2`.
    pub(crate) placements: Arc<Placements>,
    /// Created on first use; locked only while it computes.
    cpu: Mutex<Option<CpuBackend>>,
    /// Locked only to copy values in or out: the host's abort callback, which ggml's CPU
    /// backend calls mid-graph, may set them again without waiting on `cpu`.
    settings: Mutex<CpuSettings>,
}

impl BackendContext {
    /// Computes `nodes` nodes on ggml's CPU backend through `compute`, creating the backend
    /// on first use; counts them. A status other than success is the CPU backend's own.
    pub(crate) fn run_on_cpu(
        &self,
        nodes: usize,
        compute: impl FnOnce(&CpuBackend) -> Result<(), i32>,
    ) -> Result<(), Failure> {
        if nodes == 0 {
            return Ok(());
        }
        let mut cpu = self.cpu.lock().unwrap_or_else(|e| e.into_inner());
        let (n_threads, abort, changed) = {
            let mut s = self.settings.lock().unwrap_or_else(|e| e.into_inner());
            let taken = (s.n_threads, s.abort, s.changed);
            s.changed = false;
            taken
        };
        let created = cpu.is_none();
        if created {
            // the thread count ggml set, else one per core (ggml's own default of 4
            // oversubscribes smaller machines; the meta device of `-sm tensor` never sets one)
            let n = n_threads.unwrap_or_else(|| {
                std::thread::available_parallelism().map_or(4, |n| n.get() as i32)
            });
            *cpu = Some(CpuBackend::new(n)?);
        }
        let backend = cpu.as_mut().expect("created above");
        if changed || created {
            if let (Some(n), false) = (n_threads, created) {
                backend.set_n_threads(n);
            }
            if let Some((cb, data)) = abort {
                backend.set_abort_callback(cb, data as *mut std::ffi::c_void);
            }
        }
        let t = Instant::now();
        let done = compute(backend);
        drop(cpu);
        if created {
            abi::log(
                abi::GGML_LOG_LEVEL_INFO,
                &format!(
                    "ggml-ane: other nodes go to ggml's CPU backend (registry found in {})",
                    abi::cpu::registry_source().unwrap_or_default()
                ),
            );
        }
        done.map_err(|status| Failure {
            status,
            why: format!("ggml's CPU backend returned status {status}"),
        })?;
        self.stats.record_glue(nodes, t.elapsed());
        Ok(())
    }

    /// Sets the thread count of the CPU backend (at its next use).
    pub(crate) fn set_n_threads(&self, n: i32) {
        let mut s = self.settings.lock().unwrap_or_else(|e| e.into_inner());
        s.n_threads = Some(n);
        s.changed = true;
    }

    /// Sets the abort callback of the CPU backend (at its next use); the engine's work is not
    /// interrupted by it.
    pub(crate) fn set_abort_callback(&self, cb: abi::ggml_abort_callback, data: usize) {
        let mut s = self.settings.lock().unwrap_or_else(|e| e.into_inner());
        s.abort = Some((cb, data));
        s.changed = true;
    }
}
