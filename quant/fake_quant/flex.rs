//! Fused fake-quant for the Flex CPU backend: one pass over contiguous f32 storage (in place
//! when the input is not shared), instead of six broadcast backend ops.

use burn::backend::ops::FloatTensorOps;
use burn::backend::{Flex, TensorMetadata, tensor::FloatTensor};
use burn::tensor::{DType, TensorData};
use rayon::prelude::*;

use super::{
    FakeQuantBackend, LsqGradientBackend, ROUNDING, autodiff::lsq_gradients_ops, fake_quant_ops,
    fake_quant_value,
};
use crate::simd::avx2_kernel;

/// Elements per parallel task for per-tensor parameters; smaller tensors (a weight's blocks per
/// channel) run on the calling thread, where rayon's cost per task would exceed their work.
const PAR_CHUNK: usize = 1 << 16;

impl FakeQuantBackend for Flex {
    fn fake_quant(
        x: FloatTensor<Self>,
        scale: FloatTensor<Self>,
        zero_point: FloatTensor<Self>,
        axis: usize,
        qmin: i32,
        qmax: i32,
        _clipped_ste: bool,
    ) -> FloatTensor<Self> {
        let Some((range, inner, params)) = fused_plan(&x, &scale, &zero_point, axis) else {
            return fake_quant_ops::<Self>(x, scale, zero_point, axis, qmin, qmax);
        };
        let grid = (qmin as f32, qmax as f32);
        let channels = params.len();
        // Per tensor, split the work in chunks for both cores; per channel, one block each.
        let block = if channels == 1 { PAR_CHUNK } else { inner };
        let apply =
            |(b, chunk): (usize, &mut [f32])| fake_quant_block(chunk, params[b % channels], grid);
        let route = Route::of(range.len(), channels, inner);
        let run = |data: &mut [f32]| match route {
            Route::Parallel => data.par_chunks_mut(block).enumerate().for_each(apply),
            Route::Serial => data.chunks_mut(block).enumerate().for_each(apply),
            Route::ChannelsLast => data.iter_mut().enumerate().for_each(|(i, v)| {
                let (s, z) = params[i % channels];
                *v = fake_quant_value(*v, s, z, grid.0, grid.1);
            }),
        };
        let mut out = x;
        if let Some(data) = out.try_storage_mut::<f32>() {
            run(&mut data[range]);
            return out;
        }
        // Shared input: read it and write a new buffer in the same parallel pass.
        let src = &out.storage::<f32>()[range];
        let mut dst = vec![0f32; src.len()];
        let apply_from = |(b, (d, s)): (usize, (&mut [f32], &[f32]))| {
            fake_quant_block_from(s, d, params[b % channels], grid)
        };
        match route {
            Route::Parallel => dst
                .par_chunks_mut(block)
                .zip(src.par_chunks(block))
                .enumerate()
                .for_each(apply_from),
            Route::Serial | Route::ChannelsLast => {
                dst.copy_from_slice(src);
                run(&mut dst);
            }
        }
        let data = TensorData::new(dst, out.shape());
        Flex::float_from_data(data, &Default::default())
    }
}

impl LsqGradientBackend for Flex {
    fn lsq_gradients(
        x: FloatTensor<Self>,
        scale: FloatTensor<Self>,
        zero_point: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        axis: usize,
        qmin: i32,
        qmax: i32,
        grad_scale: f32,
    ) -> [FloatTensor<Self>; 2] {
        let plan = fused_plan(&x, &scale, &zero_point, axis).filter(|_| {
            grad.dtype() == DType::F32
                && grad.shape() == x.shape()
                && grad.layout().contiguous_offsets().is_some()
        });
        let Some((range, inner, params)) = plan else {
            return lsq_gradients_ops::<Self>(
                x, scale, zero_point, grad, axis, qmin, qmax, grad_scale,
            );
        };
        let xs = &x.storage::<f32>()[range];
        let (start, end) = grad.layout().contiguous_offsets().expect("checked");
        let grid = (qmin as f32, qmax as f32);
        let channels = params.len();
        let block = if channels == 1 { PAR_CHUNK } else { inner };
        // The input's gradient overwrites the upstream one where it is not shared.
        let mut grad_x = grad;
        if grad_x.try_storage_mut::<f32>().is_none() {
            let copy = grad_x.storage::<f32>()[start..end].to_vec();
            grad_x = Flex::float_from_data(TensorData::new(copy, x.shape()), &Default::default());
        }
        let (start, end) = grad_x.layout().contiguous_offsets().expect("contiguous");
        let data = grad_x.try_storage_mut::<f32>().expect("uniquely owned");
        let data = &mut data[start..end];
        let block_sum = |(b, (g, x)): (usize, (&mut [f32], &[f32]))| {
            (b % channels, lsq_block(x, g, params[b % channels], grid))
        };
        let mut per_channel = vec![0f64; channels];
        match Route::of(data.len(), channels, inner) {
            Route::Parallel => {
                let sums: Vec<(usize, f64)> = data
                    .par_chunks_mut(block)
                    .zip(xs.par_chunks(block))
                    .enumerate()
                    .map(block_sum)
                    .collect();
                for (c, sum) in sums {
                    per_channel[c] += sum;
                }
            }
            Route::Serial => {
                for (c, sum) in data
                    .chunks_mut(block)
                    .zip(xs.chunks(block))
                    .enumerate()
                    .map(block_sum)
                {
                    per_channel[c] += sum;
                }
            }
            Route::ChannelsLast => {
                for (i, (g, &x)) in data.iter_mut().zip(xs).enumerate() {
                    let (s, z) = params[i % channels];
                    per_channel[i % channels] +=
                        lsq_element(x, g, s, (grid.0 - z, grid.1 - z)) as f64;
                }
            }
        }
        let step: Vec<f32> = per_channel
            .iter()
            .map(|&sum| (sum * grad_scale as f64) as f32)
            .collect();
        let grad_step =
            Flex::float_from_data(TensorData::new(step, scale.shape()), &Default::default());
        [grad_x, grad_step]
    }
}

/// How a fused pass walks a tensor.
#[derive(Clone, Copy)]
enum Route {
    /// Blocks spread over the cores (per tensor: chunks of [`PAR_CHUNK`]; per channel: one
    /// block per channel step).
    Parallel,
    /// The same blocks on the calling thread: the tensor is smaller than [`PAR_CHUNK`] (a
    /// weight), where rayon's cost per task would exceed the work.
    Serial,
    /// Channels along the last axis (a linear weight: one element per block): one pass, the
    /// channel of element `i` being `i % C`.
    ChannelsLast,
}

impl Route {
    /// The route for `len` elements with `channels` parameters, `inner` elements per block.
    fn of(len: usize, channels: usize, inner: usize) -> Self {
        match (channels > 1 && inner == 1, len >= PAR_CHUNK) {
            (true, _) => Self::ChannelsLast,
            (false, true) => Self::Parallel,
            (false, false) => Self::Serial,
        }
    }
}

avx2_kernel! {
    /// Fake-quantizes `values` in place on the channel `(s, z)` of the grid `(qmin, qmax)`.
    fn fake_quant_block(values: &mut [f32], channel: (f32, f32), grid: (f32, f32))
        => fake_quant_lanes
}

avx2_kernel! {
    /// [`fake_quant_block`] of `src` written into `dst`.
    fn fake_quant_block_from(src: &[f32], dst: &mut [f32], channel: (f32, f32), grid: (f32, f32))
        => fake_quant_lanes_from
}

#[inline(always)]
fn fake_quant_lanes_from(src: &[f32], dst: &mut [f32], (s, z): (f32, f32), (lo, hi): (f32, f32)) {
    for (d, &v) in dst.iter_mut().zip(src) {
        *d = fake_quant_value(v, s, z, lo, hi);
    }
}

#[inline(always)]
fn fake_quant_lanes(values: &mut [f32], (s, z): (f32, f32), (lo, hi): (f32, f32)) {
    for v in values {
        *v = fake_quant_value(*v, s, z, lo, hi);
    }
}

/// One block of the LSQ backward on the channel `(s, z)` of the grid `(qmin, qmax)`: turns the
/// upstream gradient `grad` into the input's (zeroed where `round(x / s) + z` leaves the grid)
/// and returns `Σ grad · ∂y/∂S` over the block.
fn lsq_block(x: &[f32], grad: &mut [f32], (s, z): (f32, f32), (qmin, qmax): (f32, f32)) -> f64 {
    let grid = (qmin - z, qmax - z);
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2 (checked above).
        return unsafe { avx2::lsq_block(x, grad, s, grid) };
    }
    lsq_tail(x, grad, s, grid)
}

/// [`lsq_element`] over a whole slice, summed in f64.
fn lsq_tail(x: &[f32], grad: &mut [f32], s: f32, grid: (f32, f32)) -> f64 {
    x.iter()
        .zip(grad)
        .map(|(&x, g)| lsq_element(x, g, s, grid) as f64)
        .sum()
}

/// One element of [`lsq_block`] on the grid `(qmin − z, qmax − z)`: zeroes the upstream gradient
/// `g` where `round(x / s)` leaves the grid and returns `g · ∂y/∂S`. Always inlined, so that
/// it is compiled into the AVX2 loop.
#[inline(always)]
fn lsq_element(x: f32, g: &mut f32, s: f32, (low, high): (f32, f32)) -> f32 {
    let v = x / s;
    // Exact on the grid (|v| < 2^22 there); outside it only the side matters.
    let r = (v + ROUNDING) - ROUNDING;
    let (below, above) = (r < low, r > high);
    let derivative = if below {
        low
    } else if above {
        high
    } else {
        r - v
    };
    let upstream = *g;
    *g = if below || above { 0.0 } else { upstream };
    upstream * derivative
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{ROUNDING, lsq_tail};

    /// [`super::lsq_block`] eight lanes at a time on the grid `(low, high)` (bounds minus the
    /// zero point): the same arithmetic as [`super::lsq_element`] (NaN compares false, so it
    /// counts as on the grid there too), the lanes' sums added in f64.
    #[target_feature(enable = "avx2")]
    pub(super) fn lsq_block(x: &[f32], grad: &mut [f32], s: f32, (low, high): (f32, f32)) -> f64 {
        let n = x.len().min(grad.len());
        let step = _mm256_set1_ps(s);
        let rounding = _mm256_set1_ps(ROUNDING);
        let (below_bound, above_bound) = (_mm256_set1_ps(low), _mm256_set1_ps(high));
        let mut sum = _mm256_setzero_ps();
        let mut i = 0;
        while i + 8 <= n {
            // SAFETY: `i + 8 <= n` elements lie in both slices.
            let (xv, gv) = unsafe {
                (
                    _mm256_loadu_ps(x.as_ptr().add(i)),
                    _mm256_loadu_ps(grad.as_ptr().add(i)),
                )
            };
            let v = _mm256_div_ps(xv, step);
            let r = _mm256_sub_ps(_mm256_add_ps(v, rounding), rounding);
            let below = _mm256_cmp_ps::<_CMP_LT_OQ>(r, below_bound);
            let above = _mm256_cmp_ps::<_CMP_GT_OQ>(r, above_bound);
            let derivative = _mm256_blendv_ps(_mm256_sub_ps(r, v), below_bound, below);
            let derivative = _mm256_blendv_ps(derivative, above_bound, above);
            let inside = _mm256_andnot_ps(_mm256_or_ps(below, above), gv);
            // SAFETY: as above.
            unsafe { _mm256_storeu_ps(grad.as_mut_ptr().add(i), inside) };
            sum = _mm256_add_ps(sum, _mm256_mul_ps(gv, derivative));
            i += 8;
        }
        let mut lanes = [0f32; 8];
        // SAFETY: `lanes` holds eight f32.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), sum) };
        let lanes: f64 = lanes.iter().map(|&l| l as f64).sum();
        lanes + lsq_tail(&x[i..n], &mut grad[i..n], s, (low, high))
    }
}

/// Where the fused pass applies (contiguous f32 input, host-readable parameters): the storage
/// range of `x`, the elements per channel step, and the `(scale, zero point)` per channel.
#[allow(clippy::type_complexity)]
fn fused_plan(
    x: &FloatTensor<Flex>,
    scale: &FloatTensor<Flex>,
    zero_point: &FloatTensor<Flex>,
    axis: usize,
) -> Option<(std::ops::Range<usize>, usize, Vec<(f32, f32)>)> {
    let scales = scale.as_slice::<f32>()?;
    let zero_points = zero_point.as_slice::<f32>()?;
    if x.dtype() != DType::F32 || scales.len() != zero_points.len() || scales.is_empty() {
        return None;
    }
    let (start, end) = x.layout().contiguous_offsets()?;
    let inner: usize = match scales.len() {
        1 => end - start,
        _ => x.shape().iter().skip(axis + 1).product(),
    };
    let params = scales
        .iter()
        .copied()
        .zip(zero_points.iter().copied())
        .collect();
    Some((start..end, inner.max(1), params))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every route of the fused forward (in place or from a shared input, parallel or not, per
    /// tensor, per channel in blocks, channels last) gives the scalar values.
    #[test]
    fn every_route_of_the_fused_forward_gives_the_scalar_values() {
        let device = Default::default();
        let tensor = |values: Vec<f32>, shape: Vec<usize>| {
            Flex::float_from_data(TensorData::new(values, shape), &device)
        };
        for (shape, axis) in [
            (vec![3, 70_000], 0),   // per tensor and per channel, parallel
            (vec![40, 1, 3, 3], 0), // per channel in blocks, on the calling thread
            (vec![1000, 10], 1),    // channels last
            (vec![7000, 10], 1),    // channels last, larger than a parallel chunk
        ] {
            let n: usize = shape.iter().product();
            let values: Vec<f32> = (0..n)
                .map(|i| ((i * 7919) % 1000) as f32 / 97.0 - 5.0)
                .collect();
            let channels = match n >= PAR_CHUNK && axis == 0 && shape[0] == 3 {
                true => [1, 3],
                false => [shape[axis], shape[axis]],
            };
            for channels in channels {
                let scales: Vec<f32> = (0..channels).map(|c| 0.05 + 0.01 * c as f32).collect();
                let zero_points: Vec<f32> = (0..channels).map(|c| (c % 3) as f32).collect();
                let inner: usize = match channels {
                    1 => n,
                    _ => shape[axis + 1..].iter().product(),
                };
                let expected: Vec<f32> = values
                    .iter()
                    .enumerate()
                    .map(|(i, &v)| {
                        let c = (i / inner) % channels;
                        fake_quant_value(v, scales[c], zero_points[c], -8.0, 7.0)
                    })
                    .collect();
                let x = tensor(values.clone(), shape.clone());
                let scale = tensor(scales.clone(), vec![channels]);
                let zero_point = tensor(zero_points.clone(), vec![channels]);
                let shared = x.clone();
                let from_shared = Flex::fake_quant(
                    shared,
                    scale.clone(),
                    zero_point.clone(),
                    axis,
                    -8,
                    7,
                    false,
                );
                drop(x);
                let unique = tensor(values.clone(), shape.clone());
                let in_place = Flex::fake_quant(unique, scale, zero_point, axis, -8, 7, false);
                for got in [from_shared, in_place] {
                    let got = got.as_slice::<f32>().expect("contiguous f32").to_vec();
                    assert_eq!(got, expected, "{shape:?}, {channels}");
                }
            }
        }
    }

    #[test]
    fn rounding_trick_rounds_half_to_even() {
        let (lo, hi) = (0.0, 65_535.0);
        for z in [0.0f32, 7.0, 65_535.0] {
            for v in [
                -2.5f32, -1.5, -0.5, 0.5, 1.5, 2.5, 3.49, -3.51, 1e7, -1e9, 65_530.5,
            ] {
                let got = fake_quant_value(v, 1.0, z, lo, hi);
                let want = (v.round_ties_even() + z).clamp(lo, hi) - z;
                assert_eq!(got, want, "{v}, zero point {z}");
            }
        }
    }
}
