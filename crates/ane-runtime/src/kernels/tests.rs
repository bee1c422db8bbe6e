//! The cache under concurrent lookups: one compile per kernel however many callers ask at
//! once, and no caller held up by a compile of another kernel. An engine whose next compile
//! waits until the test releases it makes both deterministic.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ane_mil::{Program, WeightFiles};

use super::policy::WeightId;
use super::KernelCache;
use crate::engine::reference::{ReferenceConfig, ReferenceEngine};
use crate::engine::{CompileCounter, Engine, EngineInfo, Kernel, Limits};
use crate::matmul::{baked_matmul_program, baked_weights, matmul_program, BakedTile};
use crate::matmul::{FallbackReason, Stats};

/// Long enough for any thread on a loaded machine; reached only when the code is wrong.
const PATIENCE: Duration = Duration::from_secs(30);

/// A reference engine that counts compiles; the first compile after [`GatedEngine::arm`]
/// says it started and waits to be released.
struct GatedEngine {
    inner: ReferenceEngine,
    compiles: AtomicUsize,
    gate: Mutex<Option<(Sender<()>, Receiver<()>)>>,
}

/// The test's side of an armed gate.
struct Gate {
    started: Receiver<()>,
    release: Sender<()>,
}

impl GatedEngine {
    fn new() -> Self {
        let config = ReferenceConfig::default().with_counter(CompileCounter::new(None));
        GatedEngine {
            inner: ReferenceEngine::with_config(config),
            compiles: AtomicUsize::new(0),
            gate: Mutex::new(None),
        }
    }

    /// Makes the next compile wait for the gate's release.
    fn arm(&self) -> Gate {
        let (started_tx, started) = channel();
        let (release, release_rx) = channel();
        *self.gate.lock().unwrap() = Some((started_tx, release_rx));
        Gate { started, release }
    }

    fn compiles(&self) -> usize {
        self.compiles.load(Ordering::SeqCst)
    }
}

impl Engine for GatedEngine {
    fn info(&self) -> EngineInfo {
        self.inner.info()
    }

    fn limits(&self) -> Limits {
        self.inner.limits()
    }

    fn compile(&self, program: &Program, weights: &WeightFiles) -> crate::Result<Box<dyn Kernel>> {
        self.compiles.fetch_add(1, Ordering::SeqCst);
        let gate = self.gate.lock().unwrap().take();
        if let Some((started, release)) = gate {
            started.send(()).unwrap();
            release.recv_timeout(PATIENCE).unwrap();
        }
        self.inner.compile(program, weights)
    }

    fn build_id(&self) -> String {
        self.inner.build_id()
    }
}

/// Every kind of kernel the cache holds.
#[derive(Clone, Copy, Debug)]
enum Kind {
    Streamed,
    Baked,
    FusedBaked,
    FusedStreamed,
}

const ID: WeightId = WeightId {
    key: 7,
    fingerprint: 11,
};

/// Kernel number `n` of `kind` (different `n`, different kernel): small matmul programs
/// stand in for every kind.
fn fetch(
    kind: Kind,
    n: usize,
    cache: &KernelCache,
    engine: &GatedEngine,
    stats: &Stats,
) -> Result<Arc<dyn Kernel>, FallbackReason> {
    let (m, k, tokens) = (8 + n, 16, 32);
    let tile = BakedTile {
        m0: 0,
        k0: 0,
        bm: m,
        bk: k,
        bucket: tokens,
    };
    let weights = || vec![half::f16::ONE; m * k];
    let baked = || {
        (
            baked_matmul_program(m, k, tokens),
            baked_weights(m, k, &weights()),
        )
    };
    match kind {
        Kind::Streamed => cache.get_or_compile(engine, m, k, tokens, stats),
        Kind::Baked => cache.get_or_bake(engine, &ID, tile, weights, stats),
        Kind::FusedBaked => cache.get_or_bake_fused(engine, &ID, n, baked, stats),
        Kind::FusedStreamed => {
            cache.get_or_compile_fused(engine, n as u64, || matmul_program(m, k, tokens), stats)
        }
    }
}

fn wait_until(what: &str, done: impl Fn() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < PATIENCE, "never happened: {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Two callers for one kernel while it compiles: the second waits for the first's result,
/// and the kernel compiles once.
#[test]
fn callers_for_one_kernel_at_once_compile_it_once() {
    for kind in [
        Kind::Streamed,
        Kind::Baked,
        Kind::FusedBaked,
        Kind::FusedStreamed,
    ] {
        let (engine, cache, stats) = (GatedEngine::new(), KernelCache::new(), Stats::default());
        let gate = engine.arm();
        std::thread::scope(|s| {
            let first = s.spawn(|| fetch(kind, 0, &cache, &engine, &stats));
            gate.started.recv_timeout(PATIENCE).unwrap();
            let second = s.spawn(|| fetch(kind, 0, &cache, &engine, &stats));
            wait_until("the second caller waits for the compile in flight", || {
                cache.kernels.waiting() == 1
            });
            gate.release.send(()).unwrap();
            let (a, b) = (first.join().unwrap(), second.join().unwrap());
            let (a, b) = (a.expect("compiled"), b.expect("the same kernel"));
            assert!(Arc::ptr_eq(&a, &b), "{kind:?}: one kernel for both callers");
        });
        assert_eq!(engine.compiles(), 1, "{kind:?}: the engine compiled once");
        let s = stats.snapshot();
        assert_eq!((s.compiles, s.cache_hits), (1, 1), "{kind:?}");
        assert_eq!(cache.loaded().0, 1, "{kind:?}: one kernel loaded");
    }
}

/// While one kernel compiles, a lookup of another kernel — already compiled, or compiled now —
/// goes through: the compile holds no lock other keys need.
#[test]
fn a_compile_in_flight_blocks_no_other_kernel() {
    for kind in [
        Kind::Streamed,
        Kind::Baked,
        Kind::FusedBaked,
        Kind::FusedStreamed,
    ] {
        let (engine, cache, stats) = (GatedEngine::new(), KernelCache::new(), Stats::default());
        fetch(kind, 1, &cache, &engine, &stats).expect("compiled beforehand");
        let gate = engine.arm();
        let (cache, engine, stats) = (&cache, &engine, &stats);
        std::thread::scope(|s| {
            let slow = s.spawn(|| fetch(kind, 0, cache, engine, stats));
            gate.started.recv_timeout(PATIENCE).unwrap();
            let (done_tx, done) = channel();
            let others = s.spawn(move || {
                let found = fetch(kind, 1, cache, engine, stats);
                let compiled = fetch(kind, 2, cache, engine, stats);
                done_tx.send(()).unwrap();
                (found, compiled)
            });
            let went_through = done.recv_timeout(PATIENCE).is_ok();
            let slow_still_compiling = !slow.is_finished();
            gate.release.send(()).unwrap();
            assert!(went_through, "{kind:?}: other kernels waited for a compile");
            assert!(
                slow_still_compiling,
                "{kind:?}: the gated compile was in flight"
            );
            let (found, compiled) = others.join().unwrap();
            assert!(found.is_ok() && compiled.is_ok(), "{kind:?}");
            assert!(slow.join().unwrap().is_ok(), "{kind:?}");
        });
        assert_eq!(engine.compiles(), 3, "{kind:?}");
        assert_eq!(stats.snapshot().cache_hits, 1, "{kind:?}");
    }
}
