//! Surfaces reused across evaluations, in the engine's own memory: each is lent by a kernel
//! ([`Kernel::lend`]) for the port it serves, so staging writes straight into what the engine
//! reads (on the ANE an IOSurface, with no copy at evaluation) and a surface set keeps its
//! request. Shared by every job of a kernel cache; a few surfaces, least recently returned
//! dropped first.

use std::sync::Mutex;

use crate::engine::{Kernel, Port};
use crate::surface::Surface;

/// Surfaces kept at most.
const POOLED_SURFACES: usize = 16;
/// Bytes kept at most.
const POOLED_BYTES: usize = 256 << 20;

/// Idle surfaces, most recently returned last.
#[derive(Debug, Default)]
pub(crate) struct SurfacePool {
    idle: Mutex<Vec<Surface>>,
}

impl SurfacePool {
    /// A surface `kernel` takes in place for `port` of its first procedure: an idle one with
    /// its layout that the kernel accepts, else a new one it lends (host memory when it cannot
    /// lend; the evaluation then copies).
    ///
    /// # Panics
    /// If the kernel has no such port (the pipeline asks only for ports its kernels have).
    pub(crate) fn take(&self, kernel: &dyn Kernel, port: Port) -> Surface {
        let layout = crate::engine::port_layout(kernel.procedures(), 0, port)
            .expect("the pipeline's kernels have the ports it stages");
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let found = idle
            .iter()
            .rposition(|s| s.layout() == layout && kernel.takes_in_place(0, port, s));
        match found {
            Some(i) => idle.remove(i),
            None => {
                drop(idle);
                kernel
                    .lend(0, port)
                    .unwrap_or_else(|_| Surface::new(layout.clone()))
            }
        }
    }

    /// Keeps `s` for a later [`take`](Self::take), within the pool's count and bytes.
    pub(crate) fn give_back(&self, s: Surface) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        idle.push(s);
        let bytes = |v: &[Surface]| v.iter().map(|s| s.as_bytes().len()).sum::<usize>();
        while idle.len() > POOLED_SURFACES || (idle.len() > 1 && bytes(&idle) > POOLED_BYTES) {
            idle.remove(0);
        }
    }
}
