//! Baked kernels (weights compiled in) against streamed ones (weights as inputs): the same
//! numbers, in-place weight changes seen through the fingerprint, and the `auto` policy
//! keeping the compile budget for streamed kernels.

mod support;

use ane_runtime::matmul::{
    engine_matmul, DenseRows, KernelCache, KernelPolicy, MatmulJob, MatmulShape, MatrixSource,
    Scratch, Stats, WeightId,
};
use ane_runtime::Engine;
use support::*;

fn shape(m: usize, k: usize, n: usize, batch: [usize; 2]) -> MatmulShape {
    MatmulShape::new(m, k, n).batched(batch, [1, 1])
}

struct Case {
    shape: MatmulShape,
    w: DenseRows,
    a: DenseRows,
}

fn case(shape: MatmulShape, seed: u64) -> Case {
    let mut rng = Rng::new(seed);
    let w = DenseRows::new(shape.m, shape.k, rng.f16_values(shape.m * shape.k));
    let a = DenseRows {
        rows: shape.n,
        k: shape.k,
        batch0: shape.batch[0],
        data: rng.f16_values(shape.batch[0] * shape.batch[1] * shape.n * shape.k),
    };
    Case { shape, w, a }
}

/// Runs one job; returns the output and the stats.
fn run(
    e: &dyn Engine,
    cache: &KernelCache,
    c: &Case,
    weight_id: Option<WeightId>,
) -> (Vec<f32>, ane_runtime::matmul::StatsSnapshot) {
    run_with(e, cache, c, &c.w, weight_id)
}

/// [`run`] with other weights than the case's.
fn run_with(
    e: &dyn Engine,
    cache: &KernelCache,
    c: &Case,
    weights: &dyn MatrixSource,
    weight_id: Option<WeightId>,
) -> (Vec<f32>, ane_runtime::matmul::StatsSnapshot) {
    let out = out_for(c.shape);
    let stats = Stats::default();
    engine_matmul(
        e,
        cache,
        &MatmulJob {
            shape: c.shape,
            weights,
            acts: &c.a,
            dst: &out,
            weight_id,
        },
        &mut Scratch::default(),
        &stats,
    )
    .unwrap();
    (out.data.into_inner().unwrap(), stats.snapshot())
}

const ID: WeightId = WeightId {
    key: 7,
    fingerprint: 1,
};

fn baked_and_streamed_kernels_give_identical_numbers(make: &EngineMaker) {
    // max_dim 64: M, K and the tokens are tiled, K tiles accumulate in f32
    for (i, s) in [
        shape(37, 70, 9, [1, 1]),
        shape(70, 100, 33, [2, 1]),
        shape(64, 64, 64, [1, 1]),
    ]
    .into_iter()
    .enumerate()
    {
        let c = case(s, 90 + i as u64);
        let e = make.make(64, None);
        let baked_cache = KernelCache::new().with_policy(KernelPolicy::Baked);
        let (baked, st) = run(e.as_ref(), &baked_cache, &c, Some(ID));
        assert_eq!(st.baked_nodes, 1, "{s:?} ran baked");
        let streamed_cache = KernelCache::new().with_policy(KernelPolicy::Streamed);
        let (streamed, st) = run(e.as_ref(), &streamed_cache, &c, Some(ID));
        assert_eq!(st.baked_nodes, 0, "{s:?} ran streamed");
        // same fp16 operands, same f32 accumulation order: bit for bit
        assert_eq!(
            baked.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            streamed.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            "{s:?}"
        );
        // and both are right
        let (m, k, n) = (s.m, s.k, s.n);
        let wt = transpose(&c.w.data, m, k);
        for b in 0..s.batch[0] * s.batch[1] {
            let k_tiles = k.div_ceil(32);
            assert_matmul_close_rounded(
                &baked[b * n * m..][..n * m],
                &c.a.data[b * n * k..][..n * k],
                &wt,
                n,
                k,
                m,
                k_tiles,
                &format!("{s:?} batch {b}"),
            );
        }
    }
}

fn weights_changed_in_place_get_new_kernels(make: &EngineMaker) {
    let e = make.engine();
    let cache = KernelCache::new().with_policy(KernelPolicy::Baked);
    let mut c = case(shape(48, 64, 20, [1, 1]), 5);
    let (first, st) = run(e.as_ref(), &cache, &c, Some(ID));
    assert_eq!(st.compiles, 1);
    // same weights again: served from the cache
    let (again, st) = run(e.as_ref(), &cache, &c, Some(ID));
    assert_eq!((st.compiles, st.cache_hits), (0, 1));
    assert_eq!(first, again);
    // the caller's fingerprint changes with the contents: a new kernel, new numbers
    for v in c.w.data.iter_mut() {
        *v = -*v;
    }
    let changed = WeightId {
        fingerprint: 2,
        ..ID
    };
    let (second, st) = run(e.as_ref(), &cache, &c, Some(changed));
    assert_eq!(st.compiles, 1, "recompiled for the new contents");
    for (x, y) in first.iter().zip(&second) {
        assert_eq!(*x, -*y);
    }
}

fn auto_bakes_only_while_the_budget_keeps_room_for_streamed_kernels(make: &EngineMaker) {
    // budget 34 = reserve 32 + 2: exactly one weight (two buckets) can be baked
    let e = make.make(16384, Some(34));
    let cache = KernelCache::new();
    assert_eq!(cache.policy(), KernelPolicy::Auto);
    let c = case(shape(40, 64, 100, [1, 1]), 8);
    let two_buckets = case(shape(40, 64, 3000, [1, 1]), 8);
    let (_, st) = run(e.as_ref(), &cache, &two_buckets, Some(ID));
    assert_eq!(
        (st.baked_nodes, st.compiles),
        (1, 2),
        "2048 and 1024 buckets baked"
    );
    // a second weight would leave less than the reserve: streamed
    let other = WeightId { key: 8, ..ID };
    let (got, st) = run(e.as_ref(), &cache, &c, Some(other));
    assert_eq!((st.baked_nodes, st.compiles), (0, 1), "one streamed kernel");
    let wt = transpose(&c.w.data, 40, 64);
    assert_matmul_close_rounded(&got, &c.a.data, &wt, 100, 64, 40, 1, "streamed under auto");
    // no identity (weights that may change): never baked, even with budget
    let (_, st) = run(make.engine().as_ref(), &KernelCache::new(), &c, None);
    assert_eq!(st.baked_nodes, 0);
}

#[test]
fn the_policy_parses_from_its_names_only() {
    for (s, p) in [
        ("", KernelPolicy::Auto),
        ("auto", KernelPolicy::Auto),
        ("BAKED", KernelPolicy::Baked),
        ("streamed", KernelPolicy::Streamed),
        ("two-input", KernelPolicy::TwoInput),
        // the single-input form's old name, from when it was not the default
        (" Packed ", KernelPolicy::Streamed),
    ] {
        assert_eq!(s.parse::<KernelPolicy>().unwrap(), p);
        assert_eq!(p.as_str().parse::<KernelPolicy>().unwrap(), p);
    }
    let err = "fast".parse::<KernelPolicy>().unwrap_err().to_string();
    assert!(err.contains("auto, baked, streamed or two-input"), "{err}");
}

/// An fp16 source that refuses to be read as f32: staging must copy its rows.
struct CopyOnly(ane_runtime::matmul::HalfRows);

impl MatrixSource for CopyOnly {
    fn read_row(&self, _b2: usize, _b3: usize, _row: usize, _out: &mut [f32]) {
        panic!("an fp16 row was converted instead of copied");
    }

    fn row_f16(&self, b2: usize, b3: usize, row: usize) -> Option<&[half::f16]> {
        self.0.row_f16(b2, b3, row)
    }
}

/// fp16 sources are staged by copying, not converting: the same bits as from f32 rows holding
/// the same (fp16-exact) values, streamed and baked.
fn fp16_weights_stage_by_copy_with_the_same_results(make: &EngineMaker) {
    use ane_runtime::matmul::HalfRows;
    let c = case(shape(70, 100, 33, [1, 1]), 12);
    let half_w = CopyOnly(HalfRows {
        rows: c.w.rows,
        k: c.w.k,
        batch0: 1,
        data: c.w.data.iter().map(|&v| half::f16::from_f32(v)).collect(),
    });
    // HalfRows itself also reads as f32, for the CPU path
    let mut row = vec![0f32; c.w.k];
    half_w.0.read_row(0, 0, 3, &mut row);
    assert_eq!(row, c.w.data[3 * c.w.k..4 * c.w.k]);
    let e = make.make(64, None);
    for (policy, baked) in [(KernelPolicy::Streamed, 0), (KernelPolicy::Baked, 1)] {
        let (from_f32, _) = run(
            e.as_ref(),
            &KernelCache::new().with_policy(policy),
            &c,
            Some(ID),
        );
        let cache = KernelCache::new().with_policy(policy);
        let (from_f16, st) = run_with(e.as_ref(), &cache, &c, &half_w, Some(ID));
        assert_eq!(st.baked_nodes, baked, "{policy:?}");
        assert_eq!(
            from_f32.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            from_f16.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            "{policy:?}"
        );
    }
}

/// A baked tile wider than one K piece (4100 input channels: three pieces of 1376, 1376 and
/// 1348, summed in fp16 inside the program) is right against f64 over the fp16 operands, with
/// one rounding per piece allowed, and agrees with the streamed kernel (K whole) to within it.
fn a_baked_kernel_cut_along_k_is_right(make: &EngineMaker) {
    let s = shape(48, 4100, 40, [1, 1]);
    let c = case(s, 7);
    let e = make.make(16384, None);
    let (baked, st) = run(
        e.as_ref(),
        &KernelCache::new().with_policy(KernelPolicy::Baked),
        &c,
        Some(ID),
    );
    assert_eq!(st.baked_nodes, 1, "ran baked");
    assert_eq!(ane_runtime::matmul::k_pieces(s.k).len(), 3);
    let wt = transpose(&c.w.data, s.m, s.k);
    assert_matmul_close_rounded(&baked, &c.a.data, &wt, s.n, s.k, s.m, 3, "baked, K cut");
    let (streamed, _) = run(
        e.as_ref(),
        &KernelCache::new().with_policy(KernelPolicy::Streamed),
        &c,
        Some(ID),
    );
    assert_matmul_close_rounded(&streamed, &c.a.data, &wt, s.n, s.k, s.m, 1, "streamed");
}

engine_test!(
    made: baked_and_streamed_kernels_give_identical_numbers,
    a_baked_kernel_cut_along_k_is_right,
    weights_changed_in_place_get_new_kernels,
    auto_bakes_only_while_the_budget_keeps_room_for_streamed_kernels,
    fp16_weights_stage_by_copy_with_the_same_results,
);
