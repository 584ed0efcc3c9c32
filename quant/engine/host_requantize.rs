//! Requantization of i32 accumulators held in host memory: [`FixedPointMultiplier::apply`],
//! the zero point and the clamp, over a slice, eight lanes at a time with AVX2 where the CPU
//! has it. Every lane computes exactly what the scalar reference computes.

use super::FixedPointMultiplier;
use super::requantizer::Requantizer;
use crate::qparams::channel_value;

/// `output[i] = clamp(M·acc[i] + zo, qmin, qmax)` over one channel's accumulators.
///
/// # Panics
/// When the slices differ in length.
pub(crate) fn requantize_into(
    acc: &[i32],
    output: &mut [i32],
    m: FixedPointMultiplier,
    output_zero_point: i32,
    grid: (i32, i32),
) {
    assert_eq!(acc.len(), output.len(), "accumulators and outputs");
    #[cfg(target_arch = "x86_64")]
    if m.shift >= 0 && std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2 (checked above).
        unsafe { avx2::requantize(acc, output, m, output_zero_point, grid) };
        return;
    }
    requantize_scalar(acc, output, m, output_zero_point, grid);
}

/// The scalar reference of [`requantize_into`] (any shift, any CPU).
pub(crate) fn requantize_scalar(
    acc: &[i32],
    output: &mut [i32],
    m: FixedPointMultiplier,
    output_zero_point: i32,
    (qmin, qmax): (i32, i32),
) {
    for (y, &v) in output.iter_mut().zip(acc) {
        *y = m.apply(v).wrapping_add(output_zero_point).clamp(qmin, qmax);
    }
}

impl Requantizer {
    /// [`Requantizer::apply`] on host memory: `values` is laid out with `inner` consecutive
    /// values per channel and the channels cycling (e.g. `[n, c, h·w]` with `inner = h·w`,
    /// or `[n, c]` with `inner = 1`).
    pub(crate) fn apply_host(&self, acc: &[i32], inner: usize) -> Vec<i32> {
        let channels = self.multipliers.len();
        let grid = (self.qmin, self.qmax);
        let mut output = vec![0; acc.len()];
        let runs = acc
            .chunks(inner.max(1))
            .zip(output.chunks_mut(inner.max(1)));
        for (k, (run, out)) in runs.enumerate() {
            let m = self.multiplier(k % channels);
            requantize_into(run, out, m, self.output_zero_point, grid);
        }
        output
    }

    /// The multiplier of output channel `channel` (the only one when per tensor).
    pub(crate) fn multiplier(&self, channel: usize) -> FixedPointMultiplier {
        channel_value(&self.multipliers, channel)
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{FixedPointMultiplier, requantize_scalar};

    /// [`super::requantize_into`] for `m.shift >= 0`, eight lanes at a time: the 62-bit
    /// products `|v|·m0` of the even and the odd lanes (`_mm256_mul_epu32`), rounded once by
    /// adding half of `2^(31 + shift)` and shifting, the sign put back, then `+ zo` and clamp.
    ///
    /// # Safety
    /// The CPU must support AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn requantize(
        acc: &[i32],
        output: &mut [i32],
        m: FixedPointMultiplier,
        zo: i32,
        (qmin, qmax): (i32, i32),
    ) {
        let total = 31 + m.shift as u32;
        let chunks = acc.len() / 8;
        if total > 63 || chunks == 0 {
            return requantize_scalar(acc, output, m, zo, (qmin, qmax));
        }
        let half = _mm256_set1_epi64x(1i64 << (total - 1));
        let count = _mm_cvtsi32_si128(total as i32);
        let m0 = _mm256_set1_epi64x(m.m0 as i64);
        let (vzo, vmin, vmax) = (
            _mm256_set1_epi32(zo),
            _mm256_set1_epi32(qmin),
            _mm256_set1_epi32(qmax),
        );
        // The scalar reference clamps i32::MIN to -i32::MAX before taking |v|.
        let largest = _mm256_set1_epi32(i32::MAX);
        let (body, tail) = acc.split_at(chunks * 8);
        let (out_body, out_tail) = output.split_at_mut(chunks * 8);
        for (chunk, out) in body.chunks_exact(8).zip(out_body.chunks_exact_mut(8)) {
            // SAFETY: `chunk` and `out` hold 8 i32 each (unaligned access).
            let v = unsafe { _mm256_loadu_si256(chunk.as_ptr() as *const __m256i) };
            let magnitude = _mm256_min_epu32(_mm256_abs_epi32(v), largest);
            let even = _mm256_mul_epu32(magnitude, m0);
            let odd = _mm256_mul_epu32(_mm256_srli_epi64(magnitude, 32), m0);
            let even = _mm256_srl_epi64(_mm256_add_epi64(even, half), count);
            let odd = _mm256_srl_epi64(_mm256_add_epi64(odd, half), count);
            let rounded = _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0b1010_1010);
            let y = _mm256_add_epi32(_mm256_sign_epi32(rounded, v), vzo);
            let y = _mm256_min_epi32(_mm256_max_epi32(y, vmin), vmax);
            // SAFETY: as above.
            unsafe { _mm256_storeu_si256(out.as_mut_ptr() as *mut __m256i, y) };
        }
        requantize_scalar(tail, out_tail, m, zo, (qmin, qmax));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{RngCore, SeedableRng, rngs::StdRng};

    #[test]
    fn slice_equals_the_scalar_reference() {
        let mut rng = StdRng::seed_from_u64(17);
        let mut values: Vec<i32> = (0..3001)
            .map(|i| (rng.next_u64() as i64 % (1i64 << (i % 32))) as i32)
            .collect();
        values.extend([0, 1, -1, i32::MAX, i32::MIN, -i32::MAX, 1 << 30, -(1 << 30)]);
        for real in [
            0.999_999_9,
            0.75,
            0.5,
            0.0123,
            3.7e-5,
            1e-9,
            1e-12,
            1.0,
            2.5,
        ] {
            let m = FixedPointMultiplier::from_real(real);
            for (zo, grid) in [(0, (i32::MIN, i32::MAX)), (7, (0, 255)), (-3, (-8, 7))] {
                let mut fast = vec![0; values.len()];
                requantize_into(&values, &mut fast, m, zo, grid);
                let mut reference = vec![0; values.len()];
                requantize_scalar(&values, &mut reference, m, zo, grid);
                assert_eq!(fast, reference, "M {real}, zo {zo}");
            }
        }
    }
}
