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
use crate::simd::with_avx2;

/// Elements per parallel task for per-tensor parameters.
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
        let (lo, hi) = (qmin as f32, qmax as f32);
        let channels = params.len();
        let value = |block: usize, v: f32| {
            let (s, z) = params[block % channels];
            fake_quant_value(v, s, z, lo, hi)
        };
        // Per tensor, split the work in chunks for both cores; per channel, one block each.
        let block = if channels == 1 { PAR_CHUNK } else { inner };
        let mut out = x;
        if let Some(data) = out.try_storage_mut::<f32>() {
            data[range]
                .par_chunks_mut(block)
                .enumerate()
                .for_each(|(b, chunk)| {
                    with_avx2(|| chunk.iter_mut().for_each(|v| *v = value(b, *v)))
                });
            return out;
        }
        let src = &out.storage::<f32>()[range];
        let mut dst = vec![0f32; src.len()];
        dst.par_chunks_mut(block)
            .zip(src.par_chunks(block))
            .enumerate()
            .for_each(|(b, (d, s))| {
                with_avx2(|| d.iter_mut().zip(s).for_each(|(d, &v)| *d = value(b, v)))
            });
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
        let sums: Vec<(usize, f64)> = data[start..end]
            .par_chunks_mut(block)
            .zip(xs.par_chunks(block))
            .enumerate()
            .map(|(b, (g, x))| {
                let (s, z) = params[b % channels];
                (b % channels, lsq_block(x, g, s, z, grid))
            })
            .collect();
        let mut per_channel = vec![0f64; channels];
        for (c, sum) in sums {
            per_channel[c] += sum;
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

/// One block of the LSQ backward on the channel `(s, z)` of the grid `(qmin, qmax)`: turns the
/// upstream gradient `grad` into the input's (zeroed where `round(x / s) + z` leaves the grid)
/// and returns `Σ grad · ∂y/∂S` over the block.
fn lsq_block(x: &[f32], grad: &mut [f32], s: f32, z: f32, (qmin, qmax): (f32, f32)) -> f64 {
    const LANES: usize = 8;
    let (low, high) = (qmin - z, qmax - z);
    let element = |x: f32, g: &mut f32| -> f32 {
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
    };
    with_avx2(|| {
        let mut lanes = [0f32; LANES];
        let mut grads = grad.chunks_exact_mut(LANES);
        let mut xs = x.chunks_exact(LANES);
        for (g, x) in (&mut grads).zip(&mut xs) {
            for k in 0..LANES {
                lanes[k] += element(x[k], &mut g[k]);
            }
        }
        let tail: f32 = grads
            .into_remainder()
            .iter_mut()
            .zip(xs.remainder())
            .map(|(g, &x)| element(x, g))
            .sum();
        lanes.iter().map(|&l| l as f64).sum::<f64>() + tail as f64
    })
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
