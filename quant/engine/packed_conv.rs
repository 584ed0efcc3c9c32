//! The integer convolution on host memory, for the CPU backends: 16-bit operands in pairs,
//! 32-bit accumulators, requantization fused.
//!
//! Per image and group, the input (minus its zero point) is unfolded into a patch matrix (a row
//! per input channel and kernel tap, as long as an output plane, see
//! [`ConvDims::im2col`]), and two rows are interleaved, so that one AVX2 `madd` multiplies 16
//! pairs of i16 and adds each pair into an i32 lane: `acc += w[2r]·p[2r] + w[2r+1]·p[2r+1]`.
//! The weights are packed once into those pairs ([`PackedWeights`]). Operands of at most 15
//! bits and a sign (`|v| ≤ 32767`, every grid of up to 15 bits) keep each pair sum exact in
//! i32; larger ones take the tensor-op route. Without AVX2 the same pairs are summed by a
//! portable loop; both give exactly the integers of the tensor-op route.

use burn::tensor::{Int, Tensor, TensorData};
use rayon::prelude::*;

use super::IntConv2d;
use super::conv::ConvEpilogue;
use super::host_requantize::requantize_into;
use super::pool::max_pool_plane;
use crate::backend::host_i32;
use crate::ops::{ConvDims, SERIAL_MAX_LEN, zeroed_chunks};
use crate::simd::avx2_kernel;

/// The largest operand magnitude of the 16-bit route: with `|a|, |b| ≤ 32767` a pair sum
/// `a₀b₀ + a₁b₁` is below `2^31`.
const OPERAND_LIMIT: i32 = i16::MAX as i32;

/// Integer weights `q_w − Z_w` packed for the 16-bit route: for each output channel, the
/// weights of two consecutive patch rows in one i32 (the lower row's in the low half), an odd
/// depth padded with a zero weight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PackedWeights {
    /// `[out, pairs]`.
    pairs: Vec<i32>,
    /// Pairs per output channel: `ceil(depth / 2)`.
    per_channel: usize,
    bias: Vec<i32>,
}

impl PackedWeights {
    /// Packs `weight` (`[out, depth]` row-major) and `bias` (`[out]`); `None` when a weight
    /// is out of the 16-bit route's range.
    pub fn new(weight: &[i32], depth: usize, bias: Vec<i32>) -> Option<Self> {
        if weight.iter().any(|w| w.abs() > OPERAND_LIMIT) || depth == 0 {
            return None;
        }
        let per_channel = depth.div_ceil(2);
        let pairs = weight
            .chunks_exact(depth)
            .flat_map(|row| {
                (0..per_channel).map(move |r| {
                    let low = row[2 * r];
                    let high = row.get(2 * r + 1).copied().unwrap_or(0);
                    (low as u16 as u32 | ((high as u16 as u32) << 16)) as i32
                })
            })
            .collect();
        Some(Self {
            pairs,
            per_channel,
            bias,
        })
    }
}

/// [`IntConv2d::forward_fused`] on host memory; gives `q` back (`Err`) when the input is out
/// of the 16-bit route's range (the caller then takes the tensor-op route).
///
/// Per image (on rayon's threads), group and pair of output channels: the patch rows are
/// unfolded from the input (minus its zero point, as i16) and interleaved into row pairs
/// ([`WideRows`] at stride 1), both channels' accumulators summed over one pass of them,
/// max-pooled (when the epilogue pools) and requantized into the output, clamped below at the
/// epilogue's floor.
pub(crate) fn conv_requantize(
    conv: &IntConv2d,
    packed: &PackedWeights,
    q: Tensor<4, Int>,
    epilogue: ConvEpilogue,
) -> Result<Tensor<4, Int>, Box<Tensor<4, Int>>> {
    let device = q.device();
    let [n, c, h, w] = q.dims();
    let [groups, per_group, depth] = conv.weight.dims();
    let [kh, kw] = conv.geometry.kernel_size;
    let options = conv.geometry.options(groups, h, w);
    let Some(dims) = ConvDims::new(
        [n, c, h, w],
        [groups * per_group, depth / (kh * kw), kh, kw],
        &options,
    ) else {
        return Err(Box::new(q));
    };
    // Real 0 is the zero point: after subtracting it, padding is with integer 0.
    let zi = conv.input_zero_point;
    let x = host_i32(q);
    let fits = |v: i32| v.checked_sub(zi).is_some_and(|d| d.abs() <= OPERAND_LIMIT);
    let in_range = |chunk: &[i32]| {
        let (low, high) = extremes(chunk);
        chunk.is_empty() || fits(low) && fits(high)
    };
    let fitting = match x.len() < SERIAL_MAX_LEN {
        true => in_range(&x),
        false => x.par_chunks(1 << 14).all(in_range),
    };
    if !fitting {
        return Err(Box::new(Tensor::from_data(x.into_data(), &device)));
    }
    // An input value as a 16-bit operand (in range: checked above).
    let to_operand = move |v: i32| (v - zi) as i16;
    let [ho, wo] = dims.windows.output;
    let plane = dims.out_plane();
    let kernel = epilogue.max_pool.unwrap_or(1);
    let [pooled_h, pooled_w] = [ho / kernel, wo / kernel];
    let pooled = pooled_h * pooled_w;
    let wide = WideRows::of(&dims);
    // Patch rows as long as an output plane, or `ho` rows of the padded input's width.
    let row_len = wide.as_ref().map_or(plane, |wide| ho * wide.width);
    // Pair rows padded to whole 8-lane vectors (zeros past the plane).
    let padded = row_len.next_multiple_of(8);
    let rows = packed.per_channel;
    let r = &conv.requantizer;
    let grid = (r.qmin.max(epilogue.floor), r.qmax);
    // One multiplier for all channels: the pooled maxima of a whole image are requantized at
    // once (no short vector tails per plane).
    let whole_image = epilogue.max_pool.is_some() && r.multipliers.len() == 1;
    // The accumulator rows lie `stride` apart (the padded input's width at stride 1).
    let stride = wide.as_ref().map_or(wo, |wide| wide.width);
    let requantize = |acc: &mut [i32], out: &mut [i32], o: usize, pooling: &mut Pooling| {
        let m = r.multiplier(o);
        let rows = &mut pooling.window_rows;
        match epilogue.max_pool {
            // Requantization and the floor are non-decreasing: the maximum of the
            // requantized values is the requantized maximum.
            Some(kernel) if whole_image => max_pool_plane(acc, [ho, wo], stride, kernel, rows, out),
            Some(kernel) => {
                let maxima = &mut pooling.maxima[..pooled];
                max_pool_plane(acc, [ho, wo], stride, kernel, rows, maxima);
                requantize_into(maxima, out, m, r.output_zero_point, grid);
            }
            None => {
                if let Some(wide) = &wide {
                    wide.compact(acc, [ho, wo]);
                }
                requantize_into(&acc[..plane], out, m, r.output_zero_point, grid);
            }
        }
    };
    let y = zeroed_chunks(
        n * dims.out_channels * pooled,
        (dims.out_channels * pooled).max(1),
        || Scratch {
            patches: match &wide {
                Some(wide) => vec![0i16; wide.image_len(dims.depth())],
                None => vec![0i16; depth * plane],
            },
            interleaved: vec![0i16; rows * padded * 2],
            acc: vec![0i32; 2 * padded],
            pooling: Pooling {
                // With `whole_image`, the staging buffer of the image's requantization.
                maxima: vec![0i32; if whole_image { dims.out_channels } else { 1 } * pooled],
                window_rows: Vec::new(),
            },
        },
        |scratch, image, out| {
            let Scratch {
                patches,
                interleaved,
                acc,
                pooling,
            } = scratch;
            for group in 0..groups {
                match &wide {
                    Some(wide) => {
                        wide.fill_image(&dims, &x, image, group, patches, zi);
                        wide.interleave(&dims, patches, padded, interleaved);
                    }
                    None => {
                        dims.im2col_map(&x, image, group, patches, to_operand);
                        interleave(patches, plane, padded, interleaved);
                    }
                }
                let channels = group * per_group..(group + 1) * per_group;
                for o in channels.clone().step_by(2) {
                    let out = &mut out[o * pooled..];
                    if o + 1 < channels.end {
                        let weights = &packed.pairs[o * rows..(o + 2) * rows];
                        let bias = [packed.bias[o], packed.bias[o + 1]];
                        accumulate_two(interleaved, padded, weights, bias, acc);
                    } else {
                        let weights = &packed.pairs[o * rows..(o + 1) * rows];
                        accumulate(interleaved, padded, weights, packed.bias[o], acc);
                    }
                    for k in 0..(channels.end - o).min(2) {
                        let out = &mut out[k * pooled..][..pooled];
                        requantize(&mut acc[k * padded..][..row_len], out, o + k, pooling);
                    }
                }
            }
            if whole_image {
                let (m, zo) = (r.multiplier(0), r.output_zero_point);
                for values in out.chunks_mut(pooling.maxima.len().max(1)) {
                    let maxima = &mut pooling.maxima[..values.len()];
                    maxima.copy_from_slice(values);
                    requantize_into(maxima, values, m, zo, grid);
                }
            }
        },
    );
    Ok(Tensor::from_data(
        TensorData::new(y, [n, dims.out_channels, pooled_h, pooled_w]),
        &device,
    ))
}

/// The buffers one rayon job of [`conv_requantize`] reuses across its images.
struct Scratch {
    patches: Vec<i16>,
    interleaved: Vec<i16>,
    acc: Vec<i32>,
    pooling: Pooling,
}

/// The buffers of the pooling in [`conv_requantize`]: the window maxima of one plane (of a
/// whole image with one multiplier for all channels, staged for its requantization), and the
/// row maxima of windows larger than 2 × 2.
struct Pooling {
    maxima: Vec<i32>,
    window_rows: Vec<i32>,
}

/// The patch rows of a stride-1 convolution read straight from the zero-padded input: with
/// the padded image `width` wide, the input of tap `(ci, i, j)` for output `(oy, ox)` lies at
/// `ci·height·width + i·dh·width + j·dw + oy·width + ox`, so each tap's row of `ho · width`
/// outputs (of which the first `wo` of every `width` are real, the rest are dropped after
/// accumulation) is one contiguous run of the image. No per-output-row copies, which dominate
/// an im2col of small planes.
struct WideRows {
    /// Padded input rows and columns: `ho + (kh − 1)·dh`, `wo + (kw − 1)·dw`.
    height: usize,
    width: usize,
}

impl WideRows {
    /// The layout for `dims`; `None` unless the stride is 1.
    fn of(dims: &ConvDims) -> Option<Self> {
        let w = &dims.windows;
        let [kh, kw] = dims.kernel;
        (w.stride == [1, 1]).then(|| Self {
            height: w.output[0] + (kh - 1) * w.dilation[0],
            width: w.output[1] + (kw - 1) * w.dilation[1],
        })
    }

    /// The image buffer's length for `channels` input channels: the last tap's run reaches
    /// `(kw − 1)·dw` values past the last channel.
    fn image_len(&self, channels: usize) -> usize {
        channels * self.height * self.width + self.width
    }

    /// The input channels of `group` of image `n`, each value minus `zero_point` as i16 (in
    /// range: checked by the caller), into the zero-padded image.
    fn fill_image(
        &self,
        dims: &ConvDims,
        x: &[i32],
        n: usize,
        group: usize,
        image: &mut [i16],
        zero_point: i32,
    ) {
        let w = &dims.windows;
        let ([h, iw], [top, left]) = (w.input, w.before);
        let depth = dims.depth();
        if dims.padded() {
            image.fill(0);
        } else {
            // Only the tail past the last channel (read by the last taps' runs) is padding.
            image[depth * self.height * self.width..].fill(0);
        }
        for ci in 0..depth {
            let c = n * dims.in_channels + group * depth + ci;
            let channel = &x[c * h * iw..][..h * iw];
            let padded = &mut image[ci * self.height * self.width..][..self.height * self.width];
            let rows = channel
                .chunks_exact(iw)
                .take(self.height.saturating_sub(top));
            for (row, out) in rows.zip(padded.chunks_exact_mut(self.width).skip(top)) {
                to_operands(row, &mut out[left.min(self.width)..], zero_point);
            }
        }
    }

    /// Pairs of tap rows of `image` interleaved as [`interleave`] does for a patch matrix.
    fn interleave(&self, dims: &ConvDims, image: &[i16], padded: usize, interleaved: &mut [i16]) {
        let [kh, kw] = dims.kernel;
        let [dh, dw] = dims.windows.dilation;
        let len = dims.windows.output[0] * self.width;
        let taps = dims.depth() * kh * kw;
        let run = |t: usize| {
            let (ci, i, j) = (t / (kh * kw), t / kw % kh, t % kw);
            &image[ci * self.height * self.width + i * dh * self.width + j * dw..][..len]
        };
        for (r, pairs) in interleaved.chunks_exact_mut(padded * 2).enumerate() {
            let high = (2 * r + 1 < taps).then(|| run(2 * r + 1));
            interleave_pair(run(2 * r), high, &mut pairs[..2 * len]);
        }
    }

    /// Drops the padding columns of one channel's accumulators (`ho` rows of `width`) in
    /// place: the first `ho · wo` values become the output plane. (Pooling reads the rows
    /// where they are.)
    fn compact(&self, acc: &mut [i32], [ho, wo]: [usize; 2]) {
        for oy in 1..ho {
            acc.copy_within(oy * self.width..oy * self.width + wo, oy * wo);
        }
    }
}

/// Rows `2r` and `2r + 1` of `patches` (`[depth, plane]`) as one row of pairs in
/// `interleaved` (`[pairs, padded, 2]`); an odd depth's last row is paired with zeros.
fn interleave(patches: &[i16], plane: usize, padded: usize, interleaved: &mut [i16]) {
    let depth = patches.len() / plane;
    for (r, pairs) in interleaved.chunks_exact_mut(padded * 2).enumerate() {
        let low = &patches[2 * r * plane..][..plane];
        let high = (2 * r + 1 < depth).then(|| &patches[(2 * r + 1) * plane..][..plane]);
        interleave_pair(low, high, &mut pairs[..plane * 2]);
    }
}

/// `pairs[2p] = low[p]`, `pairs[2p + 1] = high[p]` (0 without `high`).
fn interleave_pair(low: &[i16], high: Option<&[i16]>, pairs: &mut [i16]) {
    // Rows of 16 pairs or more with AVX2, shorter ones (or without AVX2) here.
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2 (checked above).
        if unsafe { avx2::interleave_pair(low, high, pairs) } {
            return;
        }
    }
    match high {
        Some(high) => {
            for ((pair, &a), &b) in pairs.chunks_exact_mut(2).zip(low).zip(high) {
                pair[0] = a;
                pair[1] = b;
            }
        }
        None => {
            for (pair, &a) in pairs.chunks_exact_mut(2).zip(low) {
                pair[0] = a;
                pair[1] = 0;
            }
        }
    }
}

/// `out[i] = values[i] − zero_point` as i16, for the shorter of the two (each in range:
/// checked by the caller).
#[inline(always)]
fn operands(values: &[i32], out: &mut [i16], zero_point: i32) {
    for (o, &v) in out.iter_mut().zip(values) {
        *o = v.wrapping_sub(zero_point) as i16;
    }
}

avx2_kernel!(
    /// [`operands`], with AVX2 when the CPU has it.
    fn to_operands(values: &[i32], out: &mut [i16], zero_point: i32) => operands
);

/// The smallest and the largest of `values` (`(i32::MAX, i32::MIN)` when empty).
#[inline(always)]
fn min_max(values: &[i32]) -> (i32, i32) {
    values
        .iter()
        .fold((i32::MAX, i32::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)))
}

avx2_kernel!(
    /// [`min_max`], with AVX2 when the CPU has it.
    fn extremes(values: &[i32]) -> (i32, i32) => min_max
);

/// `acc[p] = bias + Σ_r w_lo[r]·pairs[r][p][0] + w_hi[r]·pairs[r][p][1]` over a padded plane.
fn accumulate(interleaved: &[i16], padded: usize, weights: &[i32], bias: i32, acc: &mut [i32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2 (checked above).
        unsafe { avx2::accumulate(interleaved, padded, weights, bias, acc) };
        return;
    }
    accumulate_portable(interleaved, padded, weights, bias, acc);
}

/// [`accumulate`] for two output channels over one pass of `interleaved`: `weights` holds
/// both channels' pairs one after the other, `acc` both accumulators (`[2, padded]`).
fn accumulate_two(
    interleaved: &[i16],
    padded: usize,
    weights: &[i32],
    bias: [i32; 2],
    acc: &mut [i32],
) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2 (checked above).
        unsafe { avx2::accumulate_two(interleaved, padded, weights, bias, acc) };
        return;
    }
    let (first, second) = acc.split_at_mut(padded);
    let rows = weights.len() / 2;
    accumulate_portable(interleaved, padded, &weights[..rows], bias[0], first);
    accumulate_portable(interleaved, padded, &weights[rows..], bias[1], second);
}

/// [`accumulate`] without SIMD intrinsics (any CPU; the reference of the AVX2 version).
fn accumulate_portable(
    interleaved: &[i16],
    padded: usize,
    weights: &[i32],
    bias: i32,
    acc: &mut [i32],
) {
    acc.fill(bias);
    for (&pair, row) in weights.iter().zip(interleaved.chunks_exact(padded * 2)) {
        let (lo, hi) = (pair as i16 as i32, (pair >> 16) as i16 as i32);
        for (a, p) in acc.iter_mut().zip(row.chunks_exact(2)) {
            *a = a.wrapping_add(lo * p[0] as i32 + hi * p[1] as i32);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    /// [`super::interleave_pair`] 16 pairs at a time (a row that is not a whole number of
    /// steps ends with one step over its last 16 pairs, overlapping the step before); without
    /// `high` the odd values are 0. Returns whether it wrote the row: `false` (nothing
    /// written) for rows of fewer than 16 pairs.
    ///
    /// # Safety
    /// The CPU must support AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn interleave_pair(
        low: &[i16],
        high: Option<&[i16]>,
        pairs: &mut [i16],
    ) -> bool {
        let count = match high {
            Some(high) => low.len().min(high.len()),
            None => low.len(),
        }
        .min(pairs.len() / 2);
        if count < 16 {
            return false;
        }
        let (a, out) = (low.as_ptr(), pairs.as_mut_ptr());
        let starts = (0..count - 15)
            .step_by(16)
            .chain((!count.is_multiple_of(16)).then_some(count - 16));
        for p in starts {
            // SAFETY: values p..p + 16 of `low` and `high` and 2p..2p + 32 of `pairs` lie
            // inside the slices (`p + 16 ≤ count`); unaligned access.
            unsafe {
                let a = _mm256_loadu_si256(a.add(p) as *const __m256i);
                let b = match high {
                    Some(high) => _mm256_loadu_si256(high.as_ptr().add(p) as *const __m256i),
                    None => _mm256_setzero_si256(),
                };
                // Per 128-bit lane: pairs 0..4 and 8..12 (lo), 4..8 and 12..16 (hi).
                let (lo, hi) = (_mm256_unpacklo_epi16(a, b), _mm256_unpackhi_epi16(a, b));
                let first = _mm256_permute2x128_si256::<0x20>(lo, hi);
                let second = _mm256_permute2x128_si256::<0x31>(lo, hi);
                _mm256_storeu_si256(out.add(2 * p) as *mut __m256i, first);
                _mm256_storeu_si256(out.add(2 * p + 16) as *mut __m256i, second);
            }
        }
        true
    }

    /// [`super::accumulate`] with `_mm256_madd_epi16`: 32 outputs at a time in four
    /// registers, then 8 at a time.
    ///
    /// # Safety
    /// The CPU must support AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn accumulate(
        interleaved: &[i16],
        padded: usize,
        weights: &[i32],
        bias: i32,
        acc: &mut [i32],
    ) {
        assert!(padded.is_multiple_of(8) && acc.len() >= padded);
        assert!(interleaved.len() >= weights.len() * padded * 2);
        let vbias = _mm256_set1_epi32(bias);
        let base = interleaved.as_ptr();
        let out = acc.as_mut_ptr() as *mut __m256i;
        // Each vector holds 8 output positions (16 i16); `p` counts vectors.
        let vectors = padded / 8;
        let mut p = 0;
        while p + 4 <= vectors {
            let mut sums = [vbias; 4];
            for (r, &w) in weights.iter().enumerate() {
                let w = _mm256_set1_epi32(w);
                let row = base.wrapping_add(r * padded * 2) as *const __m256i;
                for (k, sum) in sums.iter_mut().enumerate() {
                    // SAFETY: vector `p + k < vectors` of row `r < weights.len()` lies inside
                    // `interleaved` (asserted above).
                    let v = unsafe { _mm256_loadu_si256(row.add(p + k)) };
                    *sum = _mm256_add_epi32(*sum, _mm256_madd_epi16(v, w));
                }
            }
            for (k, sum) in sums.into_iter().enumerate() {
                // SAFETY: vector `p + k < vectors` lies inside `acc` (asserted above).
                unsafe { _mm256_storeu_si256(out.add(p + k), sum) };
            }
            p += 4;
        }
        while p < vectors {
            let mut sum = vbias;
            for (r, &w) in weights.iter().enumerate() {
                let row = base.wrapping_add(r * padded * 2) as *const __m256i;
                // SAFETY: as above.
                let v = unsafe { _mm256_loadu_si256(row.add(p)) };
                sum = _mm256_add_epi32(sum, _mm256_madd_epi16(v, _mm256_set1_epi32(w)));
            }
            // SAFETY: as above.
            unsafe { _mm256_storeu_si256(out.add(p), sum) };
            p += 1;
        }
    }

    /// [`super::accumulate_two`]: 32 outputs of both channels at a time in eight registers
    /// (each row vector loaded once for both), then 8 at a time.
    ///
    /// # Safety
    /// The CPU must support AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn accumulate_two(
        interleaved: &[i16],
        padded: usize,
        weights: &[i32],
        bias: [i32; 2],
        acc: &mut [i32],
    ) {
        let rows = weights.len() / 2;
        assert!(padded.is_multiple_of(8) && acc.len() >= 2 * padded);
        assert!(weights.len() == 2 * rows && interleaved.len() >= rows * padded * 2);
        let (first, second) = weights.split_at(rows);
        let vbias = [_mm256_set1_epi32(bias[0]), _mm256_set1_epi32(bias[1])];
        let base = interleaved.as_ptr();
        let out = acc.as_mut_ptr() as *mut __m256i;
        let vectors = padded / 8;
        let mut p = 0;
        while p + 4 <= vectors {
            let mut sums = [[vbias[0]; 4], [vbias[1]; 4]];
            for (r, (&w0, &w1)) in first.iter().zip(second).enumerate() {
                let w = [_mm256_set1_epi32(w0), _mm256_set1_epi32(w1)];
                let row = base.wrapping_add(r * padded * 2) as *const __m256i;
                for k in 0..4 {
                    // SAFETY: vector `p + k < vectors` of row `r < rows` lies inside
                    // `interleaved` (asserted above).
                    let v = unsafe { _mm256_loadu_si256(row.add(p + k)) };
                    for (c, sum) in sums.iter_mut().enumerate() {
                        sum[k] = _mm256_add_epi32(sum[k], _mm256_madd_epi16(v, w[c]));
                    }
                }
            }
            for (c, sum) in sums.into_iter().enumerate() {
                for (k, sum) in sum.into_iter().enumerate() {
                    // SAFETY: vector `p + k < vectors` of channel `c < 2` lies inside `acc`
                    // (asserted above).
                    unsafe { _mm256_storeu_si256(out.add(c * vectors + p + k), sum) };
                }
            }
            p += 4;
        }
        while p < vectors {
            let mut sums = vbias;
            for (r, (&w0, &w1)) in first.iter().zip(second).enumerate() {
                let row = base.wrapping_add(r * padded * 2) as *const __m256i;
                // SAFETY: as above.
                let v = unsafe { _mm256_loadu_si256(row.add(p)) };
                sums[0] = _mm256_add_epi32(sums[0], _mm256_madd_epi16(v, _mm256_set1_epi32(w0)));
                sums[1] = _mm256_add_epi32(sums[1], _mm256_madd_epi16(v, _mm256_set1_epi32(w1)));
            }
            for (c, sum) in sums.into_iter().enumerate() {
                // SAFETY: as above.
                unsafe { _mm256_storeu_si256(out.add(c * vectors + p), sum) };
            }
            p += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{RngCore, SeedableRng, rngs::StdRng};

    #[test]
    fn packed_pairs_and_both_accumulators_equal_the_plain_sum() {
        let mut rng = StdRng::seed_from_u64(5);
        let mut value = |limit: i64| (rng.next_u64() % (2 * limit as u64 + 1)) as i64 - limit;
        for (depth, plane) in [(1, 5), (9, 26 * 26), (18, 121), (7, 33), (2, 8)] {
            // The widest operands where one pair is the whole sum.
            let limit = if depth == 2 { 32767 } else { 255 };
            let patches: Vec<i16> = (0..depth * plane).map(|_| value(limit) as i16).collect();
            let weight: Vec<i32> = (0..3 * depth).map(|_| value(limit) as i32).collect();
            let packed = PackedWeights::new(&weight, depth, vec![11, -4, 0]).unwrap();
            let padded = plane.next_multiple_of(8);
            let mut interleaved = vec![0i16; packed.per_channel * padded * 2];
            interleave(&patches, plane, padded, &mut interleaved);
            for o in 0..3 {
                let weights = &packed.pairs[o * packed.per_channel..][..packed.per_channel];
                let mut fast = vec![0i32; padded];
                accumulate(&interleaved, padded, weights, packed.bias[o], &mut fast);
                let mut portable = vec![0i32; padded];
                accumulate_portable(&interleaved, padded, weights, packed.bias[o], &mut portable);
                assert_eq!(fast, portable, "depth {depth}, plane {plane}");
                if o < 2 {
                    let both = &packed.pairs[o * packed.per_channel..][..2 * packed.per_channel];
                    let bias = [packed.bias[o], packed.bias[o + 1]];
                    let mut two = vec![0i32; 2 * padded];
                    accumulate_two(&interleaved, padded, both, bias, &mut two);
                    assert_eq!(two[..padded], fast[..], "depth {depth}, plane {plane}");
                    let mut next = vec![0i32; padded];
                    let weights = &both[packed.per_channel..];
                    accumulate_portable(&interleaved, padded, weights, bias[1], &mut next);
                    assert_eq!(two[padded..], next[..], "depth {depth}, plane {plane}");
                }
                for p in 0..plane {
                    let plain: i64 = packed.bias[o] as i64
                        + (0..depth)
                            .map(|k| weight[o * depth + k] as i64 * patches[k * plane + p] as i64)
                            .sum::<i64>();
                    assert_eq!(
                        fast[p] as i64, plain,
                        "depth {depth}, output {o}, position {p}"
                    );
                }
            }
        }
        assert_eq!(PackedWeights::new(&[40000], 1, vec![0]), None);
    }
}
