//! Staging throughput: f32 rows → fp16 surface rows (64-byte aligned, multi-threaded), and
//! fp16 rows (an F16 model's weights) copied into them, against a plain memcpy of the same
//! output bytes, in the same run; and f32 staging that also sums squares for the precision
//! check.
//! `cargo bench -p ane-runtime`.
#![allow(
    missing_docs,
    reason = "criterion's macros generate undocumented functions"
)]

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

use ane_runtime::matmul::{stage_rows, DenseRows, HalfRows};
use ane_runtime::{Surface, SurfaceDType, TensorLayout};

/// Shapes `(tokens, features)`: prompt chunks of a 7B layer's input, and an odd width.
const SHAPES: &[(usize, usize)] = &[(512, 4096), (2048, 4096), (128, 11008), (333, 4000)];

fn staging(c: &mut Criterion) {
    let mut g = c.benchmark_group("staging");
    for &(n, k) in SHAPES {
        let src = DenseRows::new(n, k, (0..n * k).map(|i| (i % 1000) as f32 * 1e-3).collect());
        let layout = TensorLayout::aligned("a", SurfaceDType::F16, &[n, k], 64).unwrap();
        let mut surface = Surface::new(layout.clone());
        let bytes = layout.byte_len();
        g.throughput(Throughput::Bytes(bytes as u64));
        g.bench_with_input(
            BenchmarkId::new("f32_to_fp16_rows", format!("{n}x{k}")),
            &(),
            |b, _| b.iter(|| stage_rows(&mut surface, &src, (0, 0), (0, n), (0, k), k, None)),
        );
        let half_src = HalfRows {
            rows: n,
            k,
            batch0: 1,
            data: src.data.iter().map(|&v| half::f16::from_f32(v)).collect(),
        };
        g.bench_with_input(
            BenchmarkId::new("fp16_rows_copied", format!("{n}x{k}")),
            &(),
            |b, _| b.iter(|| stage_rows(&mut surface, &half_src, (0, 0), (0, n), (0, k), k, None)),
        );
        // the same, also summing the values' squares for the precision check
        let mut sum_sq = 0f64;
        g.bench_with_input(
            BenchmarkId::new("f32_to_fp16_rows_summed", format!("{n}x{k}")),
            &(),
            |b, _| {
                b.iter(|| {
                    stage_rows(
                        &mut surface,
                        &src,
                        (0, 0),
                        (0, n),
                        (0, k),
                        k,
                        Some(&mut sum_sq),
                    )
                })
            },
        );
        let from = vec![7u8; bytes];
        let mut to = vec![0u8; bytes];
        g.bench_with_input(
            BenchmarkId::new("memcpy_same_bytes", format!("{n}x{k}")),
            &(),
            |b, _| b.iter(|| to.copy_from_slice(std::hint::black_box(&from))),
        );
    }
    g.finish();
}

criterion_group!(benches, staging);
criterion_main!(benches);
