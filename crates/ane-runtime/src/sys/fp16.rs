//! fp16 ⇄ f32 slice conversion with the CPU's own instructions where it has them (x86-64
//! F16C: 8 values per instruction); elsewhere, and for the last few values, `half`'s.
//!
//! `half` uses F16C too, but through a call per element or per 8 values; here that kept f32
//! staging at a third of memory speed (2M values: 760 µs with `half`, 220 µs with one
//! instruction per 8, memcpy of the output 180 µs). On Apple silicon `half` converts with the
//! FP16 instructions the target enables at compile time, so this module's fast path is x86's.
//! Results are bit-identical to `half` (IEEE round to nearest even; tests compare them).

use half::f16;
use half::slice::HalfFloatSliceExt;

/// `dst[i] = fp16(src[i])`: round to nearest even, overflow to ±inf, NaN stays NaN.
///
/// # Panics
/// If the lengths differ.
pub(crate) fn f32_to_f16(dst: &mut [f16], src: &[f32]) {
    assert_eq!(dst.len(), src.len(), "f32_to_f16: lengths differ");
    #[cfg(target_arch = "x86_64")]
    if x86::available() {
        // one loop for both: the sum costs a multiply-add per 8 values, next to memory traffic
        // SAFETY: F16C and AVX were detected on this CPU, and the lengths are equal.
        unsafe { x86::f32_to_f16_sum_sq(dst, src) };
        return;
    }
    dst.convert_from_f32_slice(src);
}

/// [`f32_to_f16`], returning Σ src[i]² (of the values before rounding) from the same pass.
///
/// # Panics
/// If the lengths differ.
pub(crate) fn f32_to_f16_sum_sq(dst: &mut [f16], src: &[f32]) -> f64 {
    assert_eq!(dst.len(), src.len(), "f32_to_f16_sum_sq: lengths differ");
    #[cfg(target_arch = "x86_64")]
    if x86::available() {
        // SAFETY: as above.
        return unsafe { x86::f32_to_f16_sum_sq(dst, src) };
    }
    dst.convert_from_f32_slice(src);
    sum_of_squares(src)
}

/// Σ v², in sixteen f32 lanes (so it vectorizes), returned as f64.
pub(crate) fn sum_of_squares(values: &[f32]) -> f64 {
    let (chunks, tail) = values.as_chunks::<16>();
    let mut lanes = [0f32; 16];
    for c in chunks {
        for i in 0..16 {
            lanes[i] += c[i] * c[i];
        }
    }
    let tail: f32 = tail.iter().map(|v| v * v).sum();
    f64::from(lanes.iter().sum::<f32>() + tail)
}

/// [`f32_to_f16`] with the stores past the caches (non-temporal where aligned), for buffers
/// larger than the caches that are read back once; fenced before returning, so whatever
/// this thread hands them to sees them.
///
/// # Panics
/// If the lengths differ.
pub(crate) fn f32_to_f16_streamed(dst: &mut [f16], src: &[f32]) {
    assert_eq!(dst.len(), src.len(), "f32_to_f16_streamed: lengths differ");
    #[cfg(target_arch = "x86_64")]
    if x86::available() {
        // SAFETY: F16C and AVX were detected on this CPU, and the lengths are equal.
        unsafe { x86::f32_to_f16_streamed(dst, src) };
        return;
    }
    dst.convert_from_f32_slice(src);
}

/// `dst[i] = f32(src[i])` (exact).
///
/// # Panics
/// If the lengths differ.
pub(crate) fn f16_to_f32(dst: &mut [f32], src: &[f16]) {
    assert_eq!(dst.len(), src.len(), "f16_to_f32: lengths differ");
    #[cfg(target_arch = "x86_64")]
    if x86::available() {
        // SAFETY: as above.
        unsafe { x86::f16_to_f32(dst, src) };
        return;
    }
    src.convert_to_f32_slice(dst);
}

/// Whether this CPU has F16C and AVX (the transposes in `sys::transpose` need them too).
#[cfg(target_arch = "x86_64")]
pub(crate) fn x86_available() -> bool {
    x86::available()
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::{
        __m128i, _mm256_add_ps, _mm256_cvtph_ps, _mm256_cvtps_ph, _mm256_loadu_ps, _mm256_mul_ps,
        _mm256_setzero_ps, _mm256_storeu_ps, _mm_loadu_si128, _mm_storeu_si128, _mm_stream_si128,
        _MM_FROUND_TO_NEAREST_INT,
    };
    use std::sync::OnceLock;

    use half::f16;
    use half::slice::HalfFloatSliceExt;

    pub(super) fn available() -> bool {
        static HAS: OnceLock<bool> = OnceLock::new();
        *HAS.get_or_init(|| {
            std::arch::is_x86_feature_detected!("f16c")
                && std::arch::is_x86_feature_detected!("avx")
        })
    }

    /// # Safety
    /// The CPU has F16C and AVX, and `dst.len() == src.len()`.
    #[target_feature(enable = "avx,f16c")]
    pub(super) unsafe fn f32_to_f16_sum_sq(dst: &mut [f16], src: &[f32]) -> f64 {
        let whole = src.len() / 8 * 8;
        let mut acc = _mm256_setzero_ps();
        for i in (0..whole).step_by(8) {
            // SAFETY: i + 8 <= len of both slices; the loads and stores are unaligned ones.
            unsafe {
                let v = _mm256_loadu_ps(src.as_ptr().add(i));
                acc = _mm256_add_ps(acc, _mm256_mul_ps(v, v));
                let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(v);
                _mm_storeu_si128(dst.as_mut_ptr().add(i).cast::<__m128i>(), h);
            }
        }
        let mut lanes = [0f32; 8];
        // SAFETY: `lanes` holds exactly 8 f32s.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), acc) };
        dst[whole..].convert_from_f32_slice(&src[whole..]);
        f64::from(lanes.iter().sum::<f32>()) + super::sum_of_squares(&src[whole..])
    }

    /// # Safety
    /// The CPU has F16C and AVX, and `dst.len() == src.len()`.
    #[target_feature(enable = "avx,f16c")]
    pub(super) unsafe fn f32_to_f16_streamed(dst: &mut [f16], src: &[f32]) {
        // up to the first 16-byte boundary, then streamed 8 values at a time
        let head = (dst.as_ptr().align_offset(16)).min(dst.len());
        dst[..head].convert_from_f32_slice(&src[..head]);
        let whole = head + (src.len() - head) / 8 * 8;
        for i in (head..whole).step_by(8) {
            // SAFETY: i + 8 <= len of both slices; the store is to a 16-byte-aligned address.
            unsafe {
                let v = _mm256_loadu_ps(src.as_ptr().add(i));
                let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(v);
                _mm_stream_si128(dst.as_mut_ptr().add(i).cast::<__m128i>(), h);
            }
        }
        dst[whole..].convert_from_f32_slice(&src[whole..]);
        crate::sys::transpose::fence();
    }

    /// # Safety
    /// The CPU has F16C and AVX, and `dst.len() == src.len()`.
    #[target_feature(enable = "avx,f16c")]
    pub(super) unsafe fn f16_to_f32(dst: &mut [f32], src: &[f16]) {
        let whole = src.len() / 8 * 8;
        for i in (0..whole).step_by(8) {
            // SAFETY: i + 8 <= len of both slices; the loads and stores are unaligned ones.
            unsafe {
                let h = _mm_loadu_si128(src.as_ptr().add(i).cast::<__m128i>());
                _mm256_storeu_ps(dst.as_mut_ptr().add(i), _mm256_cvtph_ps(h));
            }
        }
        src[whole..].convert_to_f32_slice(&mut dst[whole..]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every sign/exponent/kept-mantissa pattern (the top 19 bits), each with low bits below,
    /// at and above the rounding half-way point, and odd lengths so the tails are used.
    #[test]
    fn matches_half_bit_for_bit() {
        let lows = [0u32, 1, 0x0fff, 0x1000, 0x1001, 0x1fff, 0x0800, 0x1800];
        let values: Vec<f32> = (0u32..1 << 19)
            .flat_map(|hi| lows.iter().map(move |lo| f32::from_bits(hi << 13 | lo)))
            .collect();
        let values = &values[..values.len() - 3];
        let mut ours = vec![f16::ZERO; values.len()];
        f32_to_f16(&mut ours, values);
        for (o, v) in ours.iter().zip(values) {
            assert_eq!(
                o.to_bits(),
                f16::from_f32(*v).to_bits(),
                "{:08x}",
                v.to_bits()
            );
        }
        // the same conversion with the sum of squares, against an f64 sum
        let finite: Vec<f32> = (0..100_003)
            .map(|i| (i as f32 * 0.37).sin() * 300.0)
            .collect();
        let mut again = vec![f16::ZERO; finite.len()];
        let e = f32_to_f16_sum_sq(&mut again, &finite);
        let want: f64 = finite.iter().map(|&v| f64::from(v) * f64::from(v)).sum();
        assert!((e - want).abs() <= 1e-5 * want, "{e} vs {want}");
        for (o, v) in again.iter().zip(&finite) {
            assert_eq!(
                o.to_bits(),
                f16::from_f32(*v).to_bits(),
                "{:08x}",
                v.to_bits()
            );
        }
        // every fp16 back to f32
        let all: Vec<f16> = (0..=u16::MAX).map(f16::from_bits).collect();
        let mut back = vec![0f32; all.len() - 5];
        f16_to_f32(&mut back, &all[..all.len() - 5]);
        for (b, h) in back.iter().zip(&all) {
            assert_eq!(b.to_bits(), h.to_f32().to_bits(), "{:04x}", h.to_bits());
        }
    }
}
