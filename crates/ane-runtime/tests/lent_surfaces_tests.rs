//! Surfaces in the engine's own memory (#23 item 3, apple-audit.md finding 20): staging writes
//! straight into what the engine reads, so no evaluation copies; persistent per-weight input
//! surfaces and pooled ones keep one surface set per kernel. The reference engine lends the
//! sizes the apple engine lends and counts what it would copy, so this is the apple engine's
//! bookkeeping, run here; whether the IOSurfaces themselves behave only a Mac can tell.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use ane_mil::rules::RuleOptions;
use ane_runtime::engine::reference::{ReferenceConfig, ReferenceEngine};
use ane_runtime::engine::{Port, ProcedureInfo};
use ane_runtime::fused::probe::{f64s, matmul_f64, nmse, FfnCase};
use ane_runtime::fused::{engine_fused, FusedJob};
use ane_runtime::matmul::probe::grid_values;
use ane_runtime::matmul::{
    baked_matmul_program, baked_weights, engine_matmul, two_input_matmul_program, DenseRows,
    DenseSink, KernelCache, KernelPolicy, MatmulJob, MatmulShape, Scratch, Stats, WeightId,
};
use ane_runtime::{CompileCounter, Engine, Kernel, Surface};

mod support;
use support::WrappedEngine;

/// `inner`, counting the surfaces its kernels lend (the count beside it).
fn lending(inner: ReferenceEngine) -> (WrappedEngine, Arc<AtomicUsize>) {
    let lent = Arc::new(AtomicUsize::new(0));
    let count = lent.clone();
    let engine = WrappedEngine {
        inner,
        wrap: Box::new(move |inner| {
            Box::new(LendingKernel {
                inner,
                lent: count.clone(),
            })
        }),
    };
    (engine, lent)
}

struct LendingKernel {
    inner: Box<dyn Kernel>,
    lent: Arc<AtomicUsize>,
}

impl Kernel for LendingKernel {
    fn procedures(&self) -> &[ProcedureInfo] {
        self.inner.procedures()
    }
    fn run(
        &self,
        index: usize,
        inputs: &[&Surface],
        outputs: &mut [&mut Surface],
    ) -> ane_runtime::Result<usize> {
        self.inner.run(index, inputs, outputs)
    }
    fn lend(&self, index: usize, port: Port) -> ane_runtime::Result<Surface> {
        self.lent.fetch_add(1, Ordering::Relaxed);
        self.inner.lend(index, port)
    }
    fn takes_in_place(&self, index: usize, port: Port, surface: &Surface) -> bool {
        self.inner.takes_in_place(index, port, surface)
    }
}

/// The reference engine with the two-input opt-in and a budget of its own.
fn reference(max_dim: usize) -> ReferenceEngine {
    let mut rules = RuleOptions::default();
    rules.allow_two_inputs = true;
    ReferenceEngine::with_config(
        ReferenceConfig::default()
            .with_max_dim(max_dim)
            .with_counter(CompileCounter::new(None))
            .with_rules(Some(rules)),
    )
}

fn mat(rows: usize, k: usize, seed: u64) -> DenseRows {
    DenseRows::new(rows, k, grid_values(rows * k, seed))
}

/// Every kernel form the matmul path has — streamed (weights kept across calls, and not),
/// baked, two-input — and a fused FFN baked and streamed (its last hidden tile partly
/// padding, staged into a reused surface that held a full tile): each matches f64, the
/// engine copies nothing, and a repeated call lends no new surface.
#[test]
fn staging_writes_into_the_engines_memory_and_no_evaluation_copies() {
    // 96 rows × 320 features × 40 tokens; a K of 320 is one tile
    let (m, k, n) = (96, 320, 40);
    let (w, a) = (mat(m, k, 1), mat(n, k, 2));
    let want = matmul_f64(&f64s(&a.data), &f64s(&w.data), n, k, m);
    let id = Some(WeightId {
        key: 7,
        fingerprint: 1,
    });
    for (policy, weight_id) in [
        (KernelPolicy::Streamed, id),
        (KernelPolicy::Streamed, None),
        (KernelPolicy::Baked, id),
        (KernelPolicy::TwoInput, id),
    ] {
        let (engine, lent) = lending(reference(16384));
        let (cache, stats) = (KernelCache::new().with_policy(policy), Stats::default());
        let mut lent_by_call = Vec::new();
        for _ in 0..3 {
            let sink = DenseSink::for_shape(MatmulShape::new(m, k, n));
            let job = MatmulJob {
                shape: MatmulShape::new(m, k, n),
                weights: &w,
                acts: &a,
                dst: &sink,
                weight_id,
            };
            engine_matmul(&engine, &cache, &job, &mut Scratch::default(), &stats).unwrap();
            let err = nmse(&want, &sink.values());
            assert!(err < 1e-5, "{policy:?} {weight_id:?}: NMSE {err}");
            lent_by_call.push(lent.swap(0, Ordering::Relaxed));
        }
        let s = stats.snapshot();
        assert_eq!(s.dispatches, 3, "{policy:?}: one evaluation a call");
        assert_eq!(
            s.copied_bytes, 0,
            "{policy:?} {weight_id:?}: nothing copied"
        );
        assert!(
            lent_by_call[0] > 0,
            "{policy:?}: surfaces lent by the kernel"
        );
        assert_eq!(
            &lent_by_call[1..],
            [0, 0],
            "{policy:?} {weight_id:?}: later calls reuse the surfaces (one request each on \
             the ANE)"
        );
    }

    // a fused FFN: baked, then streamed in 3 hidden tiles on a 512-wide engine (301 hidden
    // features: tiles of 128, the last holding 45 and zero weights); unidentified weights
    // stage every tile into one reused surface, so the last tile's padding must be cleared
    let case = FfnCase::new(64, 301, 40);
    for (policy, weight_id) in [
        (KernelPolicy::Baked, Some(3)),
        (KernelPolicy::Streamed, None),
        (KernelPolicy::Streamed, Some(4)),
    ] {
        let (engine, lent) = lending(reference(512));
        let (cache, stats) = (KernelCache::new().with_policy(policy), Stats::default());
        let job = FusedJob {
            weight_id: weight_id.map(|key| WeightId {
                key,
                fingerprint: 0,
            }),
            ..case.job(0)
        };
        for call in 0..2 {
            let out = engine_fused(&engine, &cache, &job, &stats).unwrap();
            let err = nmse(&case.want(), out.values(0));
            assert!(
                err < 1e-5,
                "{policy:?} {weight_id:?} call {call}: NMSE {err}"
            );
            if call == 0 {
                lent.store(0, Ordering::Relaxed);
            }
        }
        let s = stats.snapshot();
        assert_eq!(
            s.copied_bytes, 0,
            "{policy:?} {weight_id:?}: nothing copied"
        );
        assert_eq!(
            lent.load(Ordering::Relaxed),
            0,
            "{policy:?} {weight_id:?}: the second call lends no new surface"
        );
    }
}

/// A surface the engine did not lend for a port — host memory, or memory lent for a port
/// group of another size — is copied, and `eval` says how many bytes; the values are the
/// same either way.
#[test]
fn a_surface_the_engine_did_not_lend_is_copied_and_counted() {
    let (engine, _) = lending(reference(16384));
    // a baked kernel's input [1, 64, 1, 32] is a two-input kernel's first input too, but
    // beside 512 weight columns (64 KiB) the two-input kernel lends both its inputs that size
    // (the ANE wants one size for all inputs; the acts alone get the 48 KiB minimum)
    let (m, k, n) = (512, 64, 32);
    let w = mat(m, k, 3);
    let tile: Vec<half::f16> = w.data.iter().map(|&v| half::f16::from_f32(v)).collect();
    let baked = engine
        .compile(&baked_matmul_program(m, k, n), &baked_weights(m, k, &tile))
        .unwrap();
    let two = engine
        .compile(&two_input_matmul_program(m, k, n), &Default::default())
        .unwrap();
    let acts: Vec<f32> = grid_values(k * n, 4);
    let run =
        |x: &Surface, y: &mut Surface| -> usize { baked.as_ref().eval(0, &[x], &mut [y]).unwrap() };
    // lent: nothing copied
    let mut x = baked.as_ref().surface(0, Port::Input(0)).unwrap();
    let mut y = baked.as_ref().surface(0, Port::Output(0)).unwrap();
    x.write_f32(&acts).unwrap();
    assert!(x.lender().is_some() && baked.takes_in_place(0, Port::Input(0), &x));
    assert_eq!(run(&x, &mut y), 0);
    let lent_result = y.read_f32();
    // host memory: both surfaces copied, the same values
    let mut hx = Surface::new(x.layout().clone());
    let mut hy = Surface::new(y.layout().clone());
    hx.write_f32(&acts).unwrap();
    assert!(!baked.takes_in_place(0, Port::Input(0), &hx));
    assert_eq!(run(&hx, &mut hy), hx.as_bytes().len() + hy.as_bytes().len());
    assert_eq!(hy.read_f32(), lent_result);
    // the baked kernel's input, given to the two-input kernel: same layout, other size
    let first = &two.procedures()[0].inputs[0];
    assert_eq!(
        (x.layout().dims, x.layout().row_stride),
        (first.dims, first.row_stride)
    );
    assert!(!two.takes_in_place(0, Port::Input(0), &x));
    let mut wt = two.as_ref().surface(0, Port::Input(1)).unwrap();
    let transposed: Vec<f32> = (0..k)
        .flat_map(|d| (0..m).map(move |r| (r, d)))
        .map(|(r, d)| w.data[r * k + d])
        .collect();
    wt.write_f32(&transposed).unwrap();
    let mut y2 = two.as_ref().surface(0, Port::Output(0)).unwrap();
    let copied = two.as_ref().eval(0, &[&x, &wt], &mut [&mut y2]).unwrap();
    assert_eq!(
        copied,
        x.as_bytes().len(),
        "only the foreign input is copied"
    );
    assert_eq!(y2.read_f32(), lent_result);
}
