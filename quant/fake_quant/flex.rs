//! Fused fake-quant for the Flex CPU backend: one pass over contiguous f32 storage (in place
//! when the input is not shared), instead of six broadcast backend ops.

use burn::backend::ops::FloatTensorOps;
use burn::backend::{Flex, TensorMetadata, tensor::FloatTensor};
use burn::tensor::{DType, TensorData};
use rayon::prelude::*;

use super::{FakeQuantBackend, fake_quant_ops};
use crate::simd::with_avx2;

/// `1.5 · 2^23`: adding and subtracting it rounds an f32 of magnitude below `2^22` (grids lie
/// within ±2^17) to an integer, half to even (IEEE round-to-nearest), and vectorizes, unlike a
/// call to `rint`.
const ROUNDING: f32 = 12_582_912.0;
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

/// `(clamp(round(x / s) + z, lo, hi) - z) · s`, rounding half to even, as
/// `round(clamp(x / s, lo - z, hi - z)) · s`: the bounds are integers, so clamping before
/// rounding gives the same grid point, and `z` (an integer) cancels exactly.
#[inline(always)]
fn fake_quant_value(x: f32, s: f32, z: f32, lo: f32, hi: f32) -> f32 {
    let v = (x / s).clamp(lo - z, hi - z);
    ((v + ROUNDING) - ROUNDING) * s
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
