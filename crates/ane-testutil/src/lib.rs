//! Helpers for tests across the workspace: deterministic data and f64 references with
//! stated fp16 tolerances. Not part of any shipped crate.

#![forbid(unsafe_code)]

use half::f16;

/// splitmix64: deterministic, dependency-free test data.
pub struct Rng(u64);

impl Rng {
    /// A generator started at `seed`: the same seed gives the same sequence.
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [-1, 1), rounded to fp16 (so the f64 reference sees what the engine sees).
    pub fn f16_values(&mut self, n: usize) -> Vec<f32> {
        (0..n)
            .map(|_| {
                let u = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
                f16::from_f64(u * 2.0 - 1.0).to_f32()
            })
            .collect()
    }
}

/// f64 `a[M×K] · b[K×N]` for the listed rows of the result only.
pub fn ref_matmul_rows(
    a: &[f32],
    b: &[f32],
    k: usize,
    n: usize,
    rows: &[usize],
) -> Vec<(usize, Vec<f64>, Vec<f64>)> {
    rows.iter()
        .map(|&i| {
            let mut out = vec![0f64; n];
            let mut mag = vec![0f64; n];
            for p in 0..k {
                let av = a[i * k + p] as f64;
                for j in 0..n {
                    let prod = av * b[p * n + j] as f64;
                    out[j] += prod;
                    mag[j] += prod.abs();
                }
            }
            (i, out, mag)
        })
        .collect()
}

/// Tolerance for one fp16 result of an f32-accumulated dot product of fp16 operands:
/// the final rounding to fp16 (half an ulp: 2^-11 relative, or 2^-25 absolute in the
/// subnormal range) plus f32 accumulation error (at most K·2^-24 of Σ|aᵢbᵢ|), doubled for margin.
pub fn fp16_dot_tolerance(reference: f64, magnitude: f64, k: usize) -> f64 {
    2.0 * (reference.abs() * 2f64.powi(-11)
        + 2f64.powi(-25)
        + k as f64 * 2f64.powi(-24) * magnitude)
}

/// Asserts that `got` (row-major M×N) matches the f64 reference on the sampled rows.
pub fn assert_matmul_close(
    got: &[f32],
    a: &[f32],
    b: &[f32],
    m: usize,
    k: usize,
    n: usize,
    what: &str,
) {
    assert_matmul_close_rounded(got, a, b, m, k, n, 1, what)
}

/// Like [`assert_matmul_close`] for results summed from `roundings` separately rounded fp16
/// partial products (a K dimension split into tiles): each partial sum adds its own rounding.
#[allow(
    clippy::too_many_arguments,
    reason = "the matmul and its tolerance inputs, spelled out"
)]
pub fn assert_matmul_close_rounded(
    got: &[f32],
    a: &[f32],
    b: &[f32],
    m: usize,
    k: usize,
    n: usize,
    roundings: usize,
    what: &str,
) {
    assert_eq!(got.len(), m * n, "{what}: output size");
    let mut rows: Vec<usize> = if m <= 64 {
        (0..m).collect()
    } else {
        vec![0, 1, m / 3, m / 2, m - 2, m - 1]
    };
    rows.dedup();
    let (mut err_sum, mut ulp_sum) = (0f64, 0f64);
    for (i, want, mag) in ref_matmul_rows(a, b, k, n, &rows) {
        for j in 0..n {
            err_sum += (got[i * n + j] as f64 - want[j]).abs();
            ulp_sum += fp16_ulp(want[j]);
            let g = got[i * n + j] as f64;
            // each partial sum is at most Σ|aᵢbᵢ| in size, so its rounding is bounded by that
            let tol = fp16_dot_tolerance(want[j], mag[j], k)
                + (roundings - 1) as f64 * 2.0 * mag[j] * 2f64.powi(-11);
            assert!(
                (g - want[j]).abs() <= tol,
                "{what}: [{i},{j}] = {g}, f64 reference {} (tolerance {tol:e})",
                want[j]
            );
        }
    }
    // The bound above is the worst case of f32 accumulation and grows with K; on average a
    // correctly rounded fp16 result is within a quarter ulp. Half an ulp on average catches
    // systematic faults (fp16 accumulation, truncation) that the worst-case bound admits.
    assert!(
        err_sum <= 0.5 * roundings as f64 * ulp_sum,
        "{what}: mean error {:.3} ulp",
        err_sum / ulp_sum
    );
}

/// The spacing of fp16 values around `x`.
pub fn fp16_ulp(x: f64) -> f64 {
    let a = x.abs().max(2f64.powi(-14));
    2f64.powi(a.log2().floor() as i32 - 10)
}

/// Row-major transpose of a `rows × cols` matrix.
pub fn transpose(v: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0f32; v.len()];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = v[r * cols + c];
        }
    }
    t
}

pub mod coremltools;
pub mod fixtures;
