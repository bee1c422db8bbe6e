//! One compile for the cache: from disk when an earlier run stored the kernel, else by the
//! engine (spending budget), its error turned into the reason the caller falls back; and the
//! wrapper that stops calling a kernel that keeps failing at evaluation.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

use crate::disk_cache::{compile_cached, DiskCache};
use crate::engine::{Engine, Kernel};
use crate::error::Error;
use crate::matmul::{FallbackReason, Stats};

/// A compiled kernel, or why there is none (remembered: not compiled, and billed, again).
pub(crate) type KernelOrWhy = Result<Arc<dyn Kernel>, FallbackReason>;

/// Compiles (or loads from disk); the outer `Err` only for a spent budget, which is not
/// remembered. `gave_up` is set if the kernel ever gives up at evaluation. A `reload` (a
/// kernel dropped to make room) is compiled, not loaded from disk: it spends budget until
/// hardware shows a reload does not.
pub(crate) fn compile(
    engine: &dyn Engine,
    disk: Option<&DiskCache>,
    (program, weights): (&ane_mil::Program, &ane_mil::WeightFiles),
    gave_up: Option<Arc<AtomicBool>>,
    reload: bool,
    stats: &Stats,
) -> Result<KernelOrWhy, FallbackReason> {
    if reload {
        stats.add_reload();
    }
    let disk = if reload { None } else { disk };
    Ok(match compile_cached(engine, disk, program, weights) {
        Ok((kernel, from_disk)) => {
            if from_disk {
                stats.add_disk_hit();
            } else {
                stats.add_compile();
            }
            Ok(Arc::new(GivingUpKernel {
                inner: kernel,
                failures: AtomicU32::new(0),
                gave_up,
            }))
        }
        Err(Error::BudgetExhausted { .. }) => return Err(FallbackReason::Budget),
        Err(Error::Unsupported { reason, .. }) => Err(FallbackReason::Unsupported(reason)),
        Err(e @ Error::RuleBroken { .. }) => Err(FallbackReason::Rules(e.to_string())),
        Err(Error::Compile(why)) => Err(FallbackReason::Compile(why)),
        Err(e) => Err(FallbackReason::Compile(e.to_string())),
    })
}

/// Consecutive failed evaluations after which a kernel is not tried again in this process.
pub const EVAL_FAILURES_BEFORE_GIVING_UP: u32 = 3;

/// A kernel that stops calling the engine once it has failed
/// [`EVAL_FAILURES_BEFORE_GIVING_UP`] times in a row: a program the hardware rejects at run
/// time (status 0x1d, say) would otherwise cost an attempt on every call before the CPU
/// computes the node. A success in between resets the count (transient failures pass).
struct GivingUpKernel {
    inner: Box<dyn Kernel>,
    failures: AtomicU32,
    /// Raised when this kernel gives up.
    gave_up: Option<Arc<AtomicBool>>,
}

impl GivingUpKernel {
    fn given_up(&self) -> bool {
        self.failures.load(Ordering::Relaxed) >= EVAL_FAILURES_BEFORE_GIVING_UP
    }
}

impl Kernel for GivingUpKernel {
    fn procedures(&self) -> &[crate::engine::ProcedureInfo] {
        self.inner.procedures()
    }

    fn run(
        &self,
        index: usize,
        inputs: &[&crate::surface::Surface],
        outputs: &mut [&mut crate::surface::Surface],
    ) -> crate::error::Result<usize> {
        if self.given_up() {
            return Err(Error::Eval(format!(
                "not retried: failed {EVAL_FAILURES_BEFORE_GIVING_UP} times in a row"
            )));
        }
        // the surfaces were checked by the `eval` that called us
        let r = self.inner.run(index, inputs, outputs);
        match &r {
            Ok(_) => self.failures.store(0, Ordering::Relaxed),
            Err(_) => {
                let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
                if failures >= EVAL_FAILURES_BEFORE_GIVING_UP {
                    if let Some(flag) = &self.gave_up {
                        flag.store(true, Ordering::Relaxed);
                    }
                }
            }
        }
        r
    }

    // the engine's memory, not the default host memory: a wrapper lends what it wraps
    fn lend(
        &self,
        index: usize,
        port: crate::engine::Port,
    ) -> crate::error::Result<crate::surface::Surface> {
        self.inner.lend(index, port)
    }

    fn takes_in_place(
        &self,
        index: usize,
        port: crate::engine::Port,
        surface: &crate::surface::Surface,
    ) -> bool {
        self.inner.takes_in_place(index, port, surface)
    }
}
