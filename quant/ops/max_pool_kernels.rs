//! Direct 2-D max-pooling on host memory (NCHW, f32): the forward pass with the argmax of each
//! window, and the backward pass that adds each output gradient onto its argmax. One task per
//! plane; taps in row-major window order, so that ties keep the first maximum and a NaN
//! propagates, as in PyTorch and Burn.

use std::hint::select_unpredictable;
use std::ops::Range;

use burn::tensor::ops::MaxPoolOptions;
use rayon::prelude::*;

use super::host_buffer::zeroed_chunks;
use crate::windows::{Windows, output_extent};

/// The sizes of one max-pooling: input `[n, c, h, w]`, output `[n, c, oh, ow]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PoolDims {
    planes: usize,
    channels: usize,
    kernel: [usize; 2],
    windows: Windows,
    /// For each output row and column, the kernel taps inside the input
    /// ([`Windows::taps_inside`]),
    /// computed once rather than per window.
    taps: [Vec<Range<usize>>; 2],
}

impl PoolDims {
    /// The sizes of `max_pool2d(x, options)` (symmetric padding, floor mode); `None` when the
    /// window does not fit or a dilation is 0 (the caller then runs Burn's op, which reports
    /// the error).
    pub fn new([n, c, h, w]: [usize; 4], options: &MaxPoolOptions<2>) -> Option<Self> {
        if options.dilation.contains(&0) {
            return None;
        }
        let size = |d: usize, input: usize| {
            output_extent(
                input,
                options.padding[d],
                options.kernel_size[d],
                options.stride[d],
                options.dilation[d],
            )
            .filter(|&out| out > 0)
        };
        let windows = Windows {
            input: [h, w],
            output: [size(0, h)?, size(1, w)?],
            stride: options.stride,
            dilation: options.dilation,
            before: [options.padding[0].0, options.padding[1].0],
        };
        let taps = [0, 1].map(|d| {
            (0..windows.output[d])
                .map(|o| windows.taps_inside(d, o, options.kernel_size[d]))
                .collect()
        });
        Some(Self {
            planes: n * c,
            channels: c,
            kernel: options.kernel_size,
            windows,
            taps,
        })
    }

    /// A 2×2 window with stride 2, no padding and no dilation (`Net`'s pooling), which has a
    /// vectorized path.
    fn is_two_by_two(&self) -> bool {
        let w = &self.windows;
        self.kernel == [2, 2] && w.stride == [2, 2] && w.dilation == [1, 1] && w.before == [0, 0]
    }

    /// `[n, c, oh, ow]`.
    pub fn output_shape(&self) -> [usize; 4] {
        let [oh, ow] = self.windows.output;
        [self.planes / self.channels, self.channels, oh, ow]
    }
}

/// The pooled output and the argmax of each window as `ih · w + iw`.
pub(crate) fn forward(dims: &PoolDims, x: &[f32]) -> (Vec<f32>, Vec<i32>) {
    let in_plane = dims.windows.input[0] * dims.windows.input[1];
    let out_plane = dims.windows.output[0] * dims.windows.output[1];
    // Zeroed (fresh pages from the allocator need no pass); each plane's task sets what it
    // does not write.
    let mut y = vec![0f32; dims.planes * out_plane];
    let mut indices = vec![0i32; y.len()];
    y.par_chunks_mut(out_plane)
        .zip(indices.par_chunks_mut(out_plane))
        .zip(x.par_chunks(in_plane))
        .for_each(|((out, index), plane)| pool_plane(dims, plane, out, index));
    (y, indices)
}

/// One plane of [`forward`]: each output's window in row-major tap order, the first tap inside
/// the input taken as the start (an output whose window lies wholly in the padding keeps −∞
/// and −1).
///
/// The running maximum and its position are updated by a select, not a branch: on random
/// activations the comparison goes either way about half of the time, and a mispredicted
/// branch per input element cost more than the rest of the pass. 2×2 windows with stride 2
/// (the common case) take a row-wise path, vectorized where the CPU has AVX2.
fn pool_plane(dims: &PoolDims, plane: &[f32], out: &mut [f32], index: &mut [i32]) {
    if dims.is_two_by_two() {
        let ([_, w], [_, ow]) = (dims.windows.input, dims.windows.output);
        let (out_rows, index_rows) = (out.chunks_exact_mut(ow), index.chunks_exact_mut(ow));
        for (oy, (out_row, index_row)) in out_rows.zip(index_rows).enumerate() {
            let top = 2 * oy * w;
            pool_row_two_by_two(plane, [top, top + w], 2 * ow, out_row, index_row);
        }
    } else {
        out.fill(f32::NEG_INFINITY);
        index.fill(-1);
        pool_plane_windows(dims, plane, out, index);
    }
}

/// [`pool_plane`] for any window: each output's taps inside the input ([`Windows::taps_inside`], computed
/// once per call in [`PoolDims`]), one at a time.
fn pool_plane_windows(dims: &PoolDims, plane: &[f32], out: &mut [f32], index: &mut [i32]) {
    let windows = &dims.windows;
    let ([_, w], [_, ow]) = (windows.input, windows.output);
    let (out_rows, index_rows) = (out.chunks_exact_mut(ow), index.chunks_exact_mut(ow));
    for (oy, (out_row, index_row)) in out_rows.zip(index_rows).enumerate() {
        let rows = dims.taps[0][oy].clone();
        let slots = out_row.iter_mut().zip(index_row).zip(&dims.taps[1]);
        for (ox, ((best_out, at_out), cols)) in slots.enumerate() {
            if rows.is_empty() || cols.is_empty() {
                continue;
            }
            let position = |i: usize, j: usize| {
                let iy = oy * windows.stride[0] + i * windows.dilation[0] - windows.before[0];
                let ix = ox * windows.stride[1] + j * windows.dilation[1] - windows.before[1];
                iy * w + ix
            };
            let mut at = position(rows.start, cols.start);
            let mut best = plane[at];
            for i in rows.clone() {
                for j in cols.clone() {
                    let p = position(i, j);
                    (best, at) = keep_max((best, at), (plane[p], p));
                }
            }
            *best_out = best;
            *at_out = at as i32;
        }
    }
}

/// The running maximum and its position after tap `(v, p)`: the tap replaces it when it is
/// larger or NaN (a NaN propagates).
///
/// Written so that it compiles without a branch: the comparison goes either way about half
/// of the time on activations, and LLVM turns a plain float select (even one through the
/// bits, or `select_unpredictable`) into a branch on baseline x86-64, which has no scalar
/// float select. SSE2 masks (always there on x86-64) choose the float, a conditional move the
/// position.
#[inline(always)]
fn keep_max<P: Copy>((best, at): (f32, P), (v, p): (f32, P)) -> (f32, P) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::*;
        // SAFETY: SSE and SSE2 are part of every x86-64 CPU.
        let (kept, taken) = unsafe {
            let (v, best) = (_mm_set_ss(v), _mm_set_ss(best));
            let take = _mm_or_ps(_mm_cmpgt_ss(v, best), _mm_cmpunord_ss(v, v));
            let kept = _mm_or_ps(_mm_and_ps(take, v), _mm_andnot_ps(take, best));
            (_mm_cvtss_f32(kept), _mm_movemask_ps(take) & 1 == 1)
        };
        (kept, select_unpredictable(taken, p, at))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let take = v > best || v.is_nan();
        (
            select_unpredictable(take, v, best),
            select_unpredictable(take, p, at),
        )
    }
}

/// One output row of a 2×2, stride-2 pooling without padding: the input rows start at `rows`
/// in `plane` and `width` (even) columns of each are read. The four taps of each window are
/// compared in row-major order; eight windows at a time with AVX2 where the CPU has it.
fn pool_row_two_by_two(
    plane: &[f32],
    rows: [usize; 2],
    width: usize,
    out: &mut [f32],
    index: &mut [i32],
) {
    let (top, bottom) = (
        &plane[rows[0]..rows[0] + width],
        &plane[rows[1]..rows[1] + width],
    );
    let (first, below) = (rows[0] as i32, (rows[1] - rows[0]) as i32);
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2 (checked above).
        done = unsafe { avx2::pool_row_two_by_two(top, bottom, first, below, out, index) };
    }
    let windows = top.chunks_exact(2).zip(bottom.chunks_exact(2));
    let slots = out.iter_mut().zip(index.iter_mut());
    for (ox, ((t, b), (best_out, at_out))) in windows.zip(slots).enumerate().skip(done) {
        let first = first + 2 * ox as i32;
        let (mut best, mut at) = (t[0], first);
        for tap in [
            (t[1], first + 1),
            (b[0], first + below),
            (b[1], first + below + 1),
        ] {
            (best, at) = keep_max((best, at), tap);
        }
        *best_out = best;
        *at_out = at;
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    /// The even and odd elements of 16 consecutive floats at `p`, each in order.
    ///
    /// # Safety
    /// 16 floats from `p` must be readable; the CPU must support AVX2.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn deinterleave(p: *const f32) -> (__m256, __m256) {
        // SAFETY: the caller guarantees 16 readable floats.
        let (lo, hi) = unsafe { (_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8))) };
        // Per 128-bit lane: [lo0 lo2 hi0 hi2] and [lo1 lo3 hi1 hi3]; then the 64-bit quarters
        // reordered to [lo…, hi…].
        let even = _mm256_shuffle_ps::<0b10_00_10_00>(lo, hi);
        let odd = _mm256_shuffle_ps::<0b11_01_11_01>(lo, hi);
        let order = |v: __m256| {
            _mm256_castpd_ps(_mm256_permute4x64_pd::<0b11_01_10_00>(_mm256_castps_pd(v)))
        };
        (order(even), order(odd))
    }

    /// [`super::pool_row_two_by_two`] eight windows at a time: the running maximum and its
    /// position replaced where a tap is larger or NaN, as in the scalar loop. Returns how many
    /// windows it wrote (a multiple of 8); the caller finishes the row.
    ///
    /// # Safety
    /// The CPU must support AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn pool_row_two_by_two(
        top: &[f32],
        bottom: &[f32],
        first: i32,
        below: i32,
        out: &mut [f32],
        index: &mut [i32],
    ) -> usize {
        let windows = (top.len().min(bottom.len()) / 2)
            .min(out.len())
            .min(index.len());
        let lanes = _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14);
        let mut ox = 0;
        while ox + 8 <= windows {
            // SAFETY: windows ox..ox + 8 read columns 2·ox..2·ox + 16 <= top.len(), bottom.len().
            let ((a, b), (c, d)) = unsafe {
                (
                    deinterleave(top.as_ptr().add(2 * ox)),
                    deinterleave(bottom.as_ptr().add(2 * ox)),
                )
            };
            let start = _mm256_add_epi32(_mm256_set1_epi32(first + 2 * ox as i32), lanes);
            let (mut best, mut at) = (a, start);
            for (v, offset) in [(b, 1), (c, below), (d, below + 1)] {
                let take = _mm256_or_ps(
                    _mm256_cmp_ps::<_CMP_GT_OQ>(v, best),
                    _mm256_cmp_ps::<_CMP_UNORD_Q>(v, v),
                );
                best = _mm256_blendv_ps(best, v, take);
                let position = _mm256_add_epi32(start, _mm256_set1_epi32(offset));
                at = _mm256_castps_si256(_mm256_blendv_ps(
                    _mm256_castsi256_ps(at),
                    _mm256_castsi256_ps(position),
                    take,
                ));
            }
            // SAFETY: ox + 8 <= out.len(), index.len().
            unsafe {
                _mm256_storeu_ps(out.as_mut_ptr().add(ox), best);
                _mm256_storeu_si256(index.as_mut_ptr().add(ox) as *mut __m256i, at);
            }
            ox += 8;
        }
        ox
    }
}

/// The input gradient: each output gradient added onto the input position of its argmax.
pub(crate) fn backward(dims: &PoolDims, grad: &[f32], indices: &[i32]) -> Vec<f32> {
    let in_plane = dims.windows.input[0] * dims.windows.input[1];
    let out_plane = dims.windows.output[0] * dims.windows.output[1];
    zeroed_chunks(
        dims.planes * in_plane,
        in_plane,
        || (),
        |_, plane, gx| {
            let window = plane * out_plane..(plane + 1) * out_plane;
            for (&g, &k) in grad[window.clone()].iter().zip(&indices[window]) {
                if let Some(slot) = usize::try_from(k).ok().and_then(|k| gx.get_mut(k)) {
                    *slot += g;
                }
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argmax_ties_nan_and_padding() {
        // One 3×4 plane; 2×2 windows, stride 2, padding 1: windows see 1, 2 or 4 inputs.
        let x = [
            1.0,
            5.0,
            5.0,
            -2.0,
            0.0,
            f32::NAN,
            3.0,
            -1.0,
            7.0,
            7.0,
            -3.0,
            -4.0,
        ];
        let options = MaxPoolOptions {
            kernel_size: [2, 2],
            stride: [2, 2],
            padding: [(1, 1), (1, 1)],
            dilation: [1, 1],
            ceil_mode: false,
        };
        let dims = PoolDims::new([1, 1, 3, 4], &options).unwrap();
        assert_eq!(dims.output_shape(), [1, 1, 2, 3]);
        let (y, indices) = forward(&dims, &x);
        assert_eq!(indices, vec![0, 1, 3, 8, 5, 7]);
        assert_eq!(&y[..4], &[1.0, 5.0, -2.0, 7.0]);
        assert!(y[4].is_nan());
        assert_eq!(y[5], -1.0);
        let gx = backward(&dims, &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], &indices);
        let expected = [1.0, 2.0, 0.0, 3.0, 0.0, 5.0, 0.0, 6.0, 4.0, 0.0, 0.0, 0.0];
        assert_eq!(gx, expected);
    }

    #[test]
    fn the_two_by_two_rows_equal_the_window_loop() {
        let options = MaxPoolOptions::new([2, 2]).with_stride([2, 2]);
        let mut seed = 7u32;
        let mut next = move || {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            seed >> 8
        };
        for (h, w) in [(2, 2), (5, 7), (4, 16), (9, 34), (26, 26), (3, 41)] {
            let dims = PoolDims::new([1, 1, h, w], &options).unwrap();
            assert!(dims.is_two_by_two());
            // Few distinct values (ties), NaN and ±∞ here and there.
            let plane: Vec<f32> = (0..h * w)
                .map(|_| match next() % 23 {
                    0 => f32::NAN,
                    1 => f32::INFINITY,
                    2 => f32::NEG_INFINITY,
                    r => r as f32 % 5.0 - 2.0,
                })
                .collect();
            let len = dims.output_shape().iter().product();
            let (mut fast, mut fast_index) = (vec![0.0; len], vec![0; len]);
            pool_plane(&dims, &plane, &mut fast, &mut fast_index);
            let (mut slow, mut slow_index) = (vec![0.0; len], vec![0; len]);
            pool_plane_windows(&dims, &plane, &mut slow, &mut slow_index);
            assert_eq!(fast_index, slow_index, "{h}×{w}");
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&fast), bits(&slow), "{h}×{w}");
        }
    }
}
