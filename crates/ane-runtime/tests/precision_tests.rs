//! The fp16 precision guard (`matmul::precision`): results fp16 operands cannot get right go
//! to the CPU, ordinary ones stay on the engine, and whatever the engine returns is within
//! ggml's tolerance — all against f64.

mod support;

use ane_runtime::matmul::{
    cpu_matmul, engine_matmul, DenseRows, FallbackReason, KernelCache, KernelPolicy, MatmulJob,
    MatmulShape, Scratch, Stats, WeightId,
};
use ane_runtime::Engine;
use half::f16;
use proptest::prelude::{any, prop_assert, proptest, ProptestConfig};
use support::*;

/// test-backend-ops' bound for MUL_MAT.
const GGML_MAX_NMSE: f64 = 5e-4;

/// `[n, m]` in f64 from `w` (`[m, k]`) and `a` (`[n, k]`), each value passed through `round`.
fn f64_matmul(s: MatmulShape, w: &[f32], a: &[f32], round: fn(f32) -> f32) -> Vec<f64> {
    let mut out = vec![0.0; s.n * s.m];
    for n in 0..s.n {
        for m in 0..s.m {
            out[n * s.m + m] = (0..s.k)
                .map(|k| f64::from(round(w[m * s.k + k])) * f64::from(round(a[n * s.k + k])))
                .sum();
        }
    }
    out
}

fn exact(v: f32) -> f32 {
    v
}

fn to_fp16(v: f32) -> f32 {
    f16::from_f32(v).to_f32()
}

fn nmse(got: &[f64], want: &[f64]) -> f64 {
    let err: f64 = got.iter().zip(want).map(|(g, w)| (g - w) * (g - w)).sum();
    let sum_sq: f64 = want.iter().map(|w| w * w).sum();
    err / sum_sq
}

/// Runs one job on `engine`; the result (NaN where untouched) and the outcome.
fn run_on(
    engine: &dyn Engine,
    s: MatmulShape,
    w: &[f32],
    a: &[f32],
    id: Option<WeightId>,
    cache: &KernelCache,
) -> (Result<(), FallbackReason>, Vec<f64>) {
    let (w, a, out) = (
        DenseRows::new(s.m, s.k, w.to_vec()),
        DenseRows::new(s.n, s.k, a.to_vec()),
        out_for(s),
    );
    let job = MatmulJob {
        shape: s,
        weights: &w,
        acts: &a,
        dst: &out,
        weight_id: id,
    };
    let r = engine_matmul(
        engine,
        cache,
        &job,
        &mut Scratch::default(),
        &Stats::default(),
    );
    let got = out.data.lock().unwrap().iter().map(|&v| v.into()).collect();
    (r.map(|_| ()), got)
}

/// [`run_on`] a fresh reference engine.
fn run(
    s: MatmulShape,
    w: &[f32],
    a: &[f32],
    id: Option<WeightId>,
    cache: &KernelCache,
) -> (Result<(), FallbackReason>, Vec<f64>) {
    run_on(&engine(), s, w, a, id, cache)
}

fn uniform(rng: &mut Rng, n: usize, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|_| ((rng.next_u64() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale)
        .collect()
}

fn assert_precision_fallback(r: Result<(), FallbackReason>) {
    match r {
        Err(FallbackReason::Precision(why)) => assert!(why.contains("predicted NMSE"), "{why}"),
        other => panic!("expected an fp16 precision fallback, got {other:?}"),
    }
}

/// Every weight row is `(1 + 2^-12, -1)` and every activation `(1, 1)`: each result is 2^-12,
/// but in fp16 the weights are `(1, -1)` and every result 0.
fn results_that_cancel_go_to_the_cpu(make: &EngineMaker) {
    let engine = make.engine();
    let s = single_matmul(64, 2, 64);
    let w: Vec<f32> = (0..64).flat_map(|_| [1.0 + 1.0 / 4096.0, -1.0]).collect();
    let a = vec![1.0; 128];
    // what the engine sees gives nothing useful
    let seen = nmse(
        &f64_matmul(s, &w, &a, to_fp16),
        &f64_matmul(s, &w, &a, exact),
    );
    assert!(seen > 0.99, "{seen}");
    let (w, a, out) = (
        DenseRows::new(s.m, s.k, w),
        DenseRows::new(s.n, s.k, a),
        out_for(s),
    );
    let job = MatmulJob {
        shape: s,
        weights: &w,
        acts: &a,
        dst: &out,
        weight_id: None,
    };
    let (mut scratch, stats) = (Scratch::default(), Stats::default());
    let r = engine_matmul(
        engine.as_ref(),
        &KernelCache::new(),
        &job,
        &mut scratch,
        &stats,
    );
    assert_precision_fallback(r.map(|_| ()));
    // the engine's zeros went straight into the rows as they came back (the check needs the
    // whole result): the error says to compute them again, and the CPU's pass replaces them
    assert!(out.values().iter().all(|&v| v == 0.0));
    cpu_matmul(&job, &mut scratch);
    let want = f64_matmul(s, &w.data, &a.data, exact);
    let got: Vec<f64> = out.values().iter().map(|&v| v.into()).collect();
    assert!(nmse(&got, &want) < 1e-6, "{}", nmse(&got, &want));
}

/// Weights around 3e-7 lie in fp16's subnormal range (step 6e-8): a few percent error each.
fn operands_in_the_subnormal_range_go_to_the_cpu(make: &EngineMaker) {
    let engine = make.engine();
    let s = single_matmul(48, 256, 40);
    let mut rng = Rng::new(11);
    let w = uniform(&mut rng, s.m * s.k, 3e-7);
    let a = uniform(&mut rng, s.n * s.k, 1.0);
    let seen = nmse(
        &f64_matmul(s, &w, &a, to_fp16),
        &f64_matmul(s, &w, &a, exact),
    );
    assert!(seen > GGML_MAX_NMSE, "{seen}");
    let (r, _) = run_on(engine.as_ref(), s, &w, &a, None, &KernelCache::new());
    assert_precision_fallback(r);
}

/// Baked kernels go through the same check, with the weights' column sums remembered per
/// fingerprint: new (cancelling) weights under the same key are summed again.
fn baked_kernels_are_checked_and_new_weights_resummed(make: &EngineMaker) {
    let engine = make.engine();
    let s = single_matmul(32, 2, 16);
    let cache = KernelCache::new().with_policy(KernelPolicy::Baked);
    let id = |fingerprint| WeightId {
        key: 7,
        fingerprint,
    };
    let mut rng = Rng::new(5);
    let w = uniform(&mut rng, s.m * s.k, 1.0);
    let a = vec![1.0; s.n * s.k];
    let (r, got) = run_on(engine.as_ref(), s, &w, &a, Some(id(1)), &cache);
    r.unwrap();
    assert!(nmse(&got, &f64_matmul(s, &w, &a, exact)) < GGML_MAX_NMSE);

    let w: Vec<f32> = (0..s.m).flat_map(|_| [1.0 + 1.0 / 4096.0, -1.0]).collect();
    let (r, _) = run_on(engine.as_ref(), s, &w, &a, Some(id(2)), &cache);
    assert_precision_fallback(r);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Ordinary data at any sensible scale stays on the engine and matches f64.
    #[test]
    fn ordinary_data_stays_on_the_engine(
        m in 4usize..70, n in 4usize..40, k in 1usize..300,
        w_exp in -3i32..3, a_exp in -3i32..3, seed in any::<u64>(),
    ) {
        // results within fp16's normal range: below 65504 (overflow has its own fallback)
        // and above 6e-5 (results that small are the subnormal case above)
        let a_exp = a_exp.clamp(-2 - w_exp, 1 - w_exp);
        let s = single_matmul(m, k, n);
        let mut rng = Rng::new(seed);
        let w = uniform(&mut rng, m * k, 10f32.powi(w_exp));
        let a = uniform(&mut rng, n * k, 10f32.powi(a_exp));
        let (r, got) = run(s, &w, &a, None, &KernelCache::new());
        prop_assert!(r.is_ok(), "{r:?}");
        let e = nmse(&got, &f64_matmul(s, &w, &a, exact));
        prop_assert!(e < GGML_MAX_NMSE / 10.0, "NMSE {e}");
    }

    /// Mixed data — some rows cancelling, some tiny, some ordinary: whatever the engine is
    /// allowed to return is within ggml's tolerance.
    #[test]
    fn whatever_the_engine_returns_is_within_tolerance(
        m in 4usize..40, n in 4usize..24, k in 2usize..64,
        cancelling in 0usize..40, tiny_exp in -9i32..-1, seed in any::<u64>(),
    ) {
        let s = single_matmul(m, k, n);
        let mut rng = Rng::new(seed);
        let mut w = uniform(&mut rng, m * k, 1.0);
        let a = vec![1.0; n * k];
        // rows that sum to (nearly) zero against all-ones activations
        for row in w.chunks_mut(k).take(cancelling.min(m)) {
            let sum: f32 = row[..k - 1].iter().sum();
            row[k - 1] = -sum * (1.0 + 10f32.powi(tiny_exp));
        }
        let (r, got) = run(s, &w, &a, None, &KernelCache::new());
        if r.is_ok() {
            let e = nmse(&got, &f64_matmul(s, &w, &a, exact));
            prop_assert!(e < GGML_MAX_NMSE, "NMSE {e} returned");
        } else {
            prop_assert!(matches!(r, Err(FallbackReason::Precision(_))), "{r:?}");
        }
    }
}

// the fixed cases on every engine; the properties (dozens of compiles each) on the reference
// engine only
engine_test!(
    made: results_that_cancel_go_to_the_cpu,
    operands_in_the_subnormal_range_go_to_the_cpu,
    baked_kernels_are_checked_and_new_weights_resummed,
);

/// A reference engine that sums products as the M6 is reported to (Q15.16).
fn m6_engine() -> ane_runtime::engine::reference::ReferenceEngine {
    use ane_runtime::engine::reference::{ReferenceConfig, ReferenceEngine};
    ReferenceEngine::with_config(
        ReferenceConfig::default()
            .with_counter(ane_runtime::CompileCounter::new(None))
            .with_accumulator(ane_runtime::Accumulator::Q15_16),
    )
}

/// The M6's Q15.16 accumulator: small products round to multiples of 2^-16, so a job of
/// values up to 2^-8 (products up to 2^-16) comes back mostly rounded away there. The guard predicts
/// it and declines, where an f32 accumulator's result passes and is right; an ordinary job
/// passes on both, within ggml's tolerance of f64.
#[test]
fn a_q15_16_accumulator_declines_what_it_would_round_away() {
    let s = MatmulShape::new(64, 256, 32);
    let mut rng = Rng::new(7);
    let (w, a) = (
        uniform(&mut rng, s.m * s.k, 4e-3),
        uniform(&mut rng, s.n * s.k, 4e-3),
    );
    let want = f64_matmul(s, &w, &a, exact);
    let cache = KernelCache::new();
    let (f32_result, got) = run(s, &w, &a, None, &cache);
    assert!(f32_result.is_ok(), "{f32_result:?}");
    assert!(nmse(&got, &want) < GGML_MAX_NMSE, "{}", nmse(&got, &want));
    // what Q15.16 makes of it: most of the result lost
    let m6 = m6_engine();
    let q = |v: f64| (v * 65536.0).round_ties_even() / 65536.0;
    let seen: Vec<f64> = (0..s.n * s.m)
        .map(|i| {
            let (n, m) = (i / s.m, i % s.m);
            (0..s.k)
                .map(|k| q(f64::from(to_fp16(w[m * s.k + k])) * f64::from(to_fp16(a[n * s.k + k]))))
                .sum()
        })
        .collect();
    assert!(nmse(&seen, &want) > 0.1, "{}", nmse(&seen, &want));
    let (r, engine_saw) = run_on(&m6, s, &w, &a, None, &KernelCache::new());
    assert_precision_fallback(r);
    // the rows hold what the emulated accumulator returned (the caller recomputes them)
    assert!(seen.iter().any(|&v| v != 0.0));
    assert_eq!(engine_saw, seen);
    // values of ordinary size: the same job scaled up passes on the M6 too, and is right
    let (w, a): (Vec<f32>, Vec<f32>) = (
        w.iter().map(|v| v * 250.0).collect(),
        a.iter().map(|v| v * 250.0).collect(),
    );
    let want = f64_matmul(s, &w, &a, exact);
    let (r, got) = run_on(&m6, s, &w, &a, None, &KernelCache::new());
    assert!(r.is_ok(), "{r:?}");
    assert!(nmse(&got, &want) < GGML_MAX_NMSE, "{}", nmse(&got, &want));
}

/// Partial sums past ±32768 would saturate the M6's accumulator (fp16's own limit is 65504):
/// a job whose rows' norms allow that is declined on the M6 before it runs, while the f32
/// accumulator computes it right.
#[test]
fn a_q15_16_accumulator_declines_sums_it_could_not_hold() {
    let s = MatmulShape::new(32, 64, 32);
    // every product 40 · 20 = 800, 64 of them: 51200 per output, within fp16, past Q15.16
    let (w, a) = (vec![40.0f32; s.m * s.k], vec![20.0f32; s.n * s.k]);
    let want = f64_matmul(s, &w, &a, exact);
    let (r, got) = run(s, &w, &a, None, &KernelCache::new());
    assert!(r.is_ok(), "{r:?}");
    assert!(nmse(&got, &want) < 1e-6);
    let (r, saturated) = run_on(&m6_engine(), s, &w, &a, None, &KernelCache::new());
    // the emulation saturates at the top of Q15.16 (the hardware's overflow no source shows)
    assert!(
        saturated.iter().all(|&v| v == 32768.0),
        "{:?}",
        &saturated[..4]
    );
    match r {
        Err(FallbackReason::Precision(why)) => assert!(why.contains("Q15.16"), "{why}"),
        other => panic!("expected the accumulator's range to decline it, got {other:?}"),
    }
}
