//! Per backend instance: scratch buffers, counters, and ggml's CPU backend for the nodes the
//! engine does not compute.

use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use ane_runtime::matmul::{Scratch, Stats};

use crate::abi::{self, CpuBackend};
use crate::stats::placement::Placements;

/// Per backend instance: scratch buffers, counters, and ggml's CPU backend for the nodes
/// the engine does not compute.
#[derive(Default)]
pub(crate) struct BackendContext {
    pub(crate) scratch: Mutex<Scratch>,
    pub(crate) stats: Arc<Stats>,
    /// What ran where, kept with `GGML_ANE_STATS=2`.
    pub(crate) placements: Arc<Placements>,
    /// Created on first use.
    pub(crate) cpu: Mutex<Option<CpuBackend>>,
    /// The thread count ggml set (0: never set, the CPU backend's default).
    pub(crate) n_threads: AtomicI32,
    /// The abort callback ggml set, and its data (an address), for the CPU backend.
    pub(crate) abort: Mutex<Option<(abi::ggml_abort_callback, usize)>>,
}

impl BackendContext {
    /// Computes `nodes` nodes on ggml's CPU backend through `compute`, creating the backend
    /// on first use; counts them.
    pub(crate) fn run_on_cpu(
        &self,
        nodes: usize,
        compute: impl FnOnce(&CpuBackend) -> Result<(), i32>,
    ) -> Result<(), String> {
        if nodes == 0 {
            return Ok(());
        }
        let mut cpu = self.cpu.lock().unwrap_or_else(|e| e.into_inner());
        if cpu.is_none() {
            // the thread count ggml set, else one per core (ggml's own default of 4 oversubscribes
            // smaller machines; the meta device of `-sm tensor` never sets one)
            let n = match self.n_threads.load(Ordering::Relaxed) {
                0 => std::thread::available_parallelism().map_or(4, |n| n.get() as i32),
                n => n,
            };
            let backend = CpuBackend::new(n)?;
            if let Some((cb, data)) = *self.abort.lock().unwrap_or_else(|e| e.into_inner()) {
                backend.set_abort_callback(cb, data as *mut std::ffi::c_void);
            }
            *cpu = Some(backend);
            abi::log(
                abi::GGML_LOG_LEVEL_INFO,
                &format!(
                    "ggml-ane: other nodes go to ggml's CPU backend (registry found in {})",
                    abi::cpu::registry_source().unwrap_or_default()
                ),
            );
        }
        let backend = cpu.as_ref().expect("created above");
        let t = Instant::now();
        compute(backend)
            .map_err(|status| format!("ggml's CPU backend returned status {status}"))?;
        self.stats.record_glue(nodes, t.elapsed());
        Ok(())
    }

    /// Sets the thread count of the CPU backend (now, or when it is created).
    pub(crate) fn set_n_threads(&self, n: i32) {
        self.n_threads.store(n, Ordering::Relaxed);
        if let Some(cpu) = self.cpu.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
            cpu.set_n_threads(n);
        }
    }

    /// Sets the abort callback of the CPU backend (now, or when it is created); the engine's
    /// work is not interrupted by it.
    pub(crate) fn set_abort_callback(&self, cb: abi::ggml_abort_callback, data: usize) {
        *self.abort.lock().unwrap_or_else(|e| e.into_inner()) = Some((cb, data));
        if let Some(cpu) = self.cpu.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            cpu.set_abort_callback(cb, data as *mut std::ffi::c_void);
        }
    }
}
