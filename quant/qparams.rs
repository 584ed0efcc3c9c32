//! Scale and zero point, computed from an observed range.

use burn::tensor::{Device, Int, Tensor, TensorData};
use rayon::prelude::*;

use crate::backend::is_host_device;
use crate::fake_quant::grid_offset;
use crate::ops::SERIAL_MAX_LEN;
use crate::simd::avx2_kernel;
use crate::{Granularity, QMode, QScheme, QuantError};

/// Quantization parameters: one scale and zero point per tensor or per channel.
///
/// `scale` and `zero_point` are 1-D tensors of length 1 (per tensor) or `C` (per channel), kept
/// on the device of the tensors they quantize so that no host round trip is needed per batch.
/// The zero point holds integer values stored as floats.
///
/// Computation follows the reference (affine): the range is widened to contain 0,
/// `S = (max - min) / (qmax - qmin)`, `Z = clamp(round(qmax - max / S), qmin, qmax)`.
/// Symmetric: `S = max(|min|, |max|) / ((qmax - qmin) / 2)`, `Z` fixed at the middle of the grid.
/// Bipolar: `S = max(|min|, |max|)` (its observer's range is `±mean|x|`), `Z = 0`.
///
/// **Degenerate range.** When the widened range is empty (`min == max == 0`, e.g. an all-zero
/// tensor or an observer that never saw data) the scale is defined as 1, never 0 or NaN; the
/// zero point then follows the same formula, so 0 is still represented exactly.
#[derive(Debug, Clone)]
pub struct QParams {
    /// Scale `S`, shape `[1]` or `[C]`.
    pub scale: Tensor<1>,
    /// Zero point `Z` (integer-valued floats), same shape as `scale`.
    pub zero_point: Tensor<1>,
    /// The scheme these parameters belong to.
    pub scheme: QScheme,
}

impl QParams {
    /// Parameters from range tensors `min`, `max` (shape `[1]` or `[C]`) computed on device.
    ///
    /// The bounds should be finite: observers guarantee it. Use [`QParams::from_bounds`] for
    /// checked host values.
    pub fn from_range(min: Tensor<1>, max: Tensor<1>, scheme: QScheme) -> Self {
        let (qmin, qmax) = (scheme.qmin() as f32, scheme.qmax() as f32);
        let min = min.clamp_max(0.0);
        let max = max.clamp_min(0.0);
        let (scale, zero_point) = match scheme.mode() {
            QMode::Affine => {
                let scale = nonzero_scale((max.clone() - min) / (qmax - qmin));
                let zero_point = (max.div(scale.clone()).neg() + qmax)
                    .round()
                    .clamp(qmin, qmax);
                (scale, zero_point)
            }
            QMode::Symmetric | QMode::Bipolar => {
                let amax = min.abs().max_pair(max);
                let scale = nonzero_scale(amax / ((qmax - qmin) / 2.0));
                let zero_point = scale.zeros_like() + scheme.symmetric_zero_point() as f32;
                (scale, zero_point)
            }
        };
        Self {
            scale,
            zero_point,
            scheme,
        }
    }

    /// Per-tensor parameters from host bounds; fails on NaN/inf or `min > max`.
    ///
    /// ```
    /// use burn_quant::{QParams, QScheme, default_device};
    /// let device = default_device().unwrap();
    /// let qp = QParams::from_bounds(-1.0, 3.0, QScheme::affine(8).unwrap(), &device).unwrap();
    /// let (scale, zero_point) = qp.to_host();
    /// assert!((scale[0] - 4.0 / 255.0).abs() < 1e-7);
    /// assert_eq!(zero_point[0], 64);
    /// ```
    pub fn from_bounds(
        min: f32,
        max: f32,
        scheme: QScheme,
        device: &Device,
    ) -> Result<Self, QuantError> {
        check_bounds(min, max)?;
        let min = Tensor::<1>::from_floats([min], device);
        let max = Tensor::<1>::from_floats([max], device);
        Ok(Self::from_range(min, max, scheme))
    }

    /// Scale and zero point read back to the host (one entry per channel).
    pub fn to_host(&self) -> (Vec<f32>, Vec<i32>) {
        let scale = self
            .scale
            .clone()
            .into_data()
            .convert::<f32>()
            .try_to_vec::<f32>()
            .expect("f32 scale");
        let zero_point = self
            .zero_point
            .clone()
            .into_data()
            .convert::<f32>()
            .try_to_vec::<f32>()
            .expect("f32 zero point")
            .into_iter()
            .map(|z| z as i32)
            .collect();
        (scale, zero_point)
    }

    /// The axis the parameters vary along, and the number of channels (1 per tensor).
    pub fn axis_and_channels(&self) -> (usize, usize) {
        let channels = self.scale.dims()[0];
        match self.scheme.granularity() {
            Granularity::PerChannel { axis } => (axis, channels),
            Granularity::PerTensor => (0, 1),
        }
    }

    /// Scale and zero point reshaped to broadcast against a rank-`D` tensor.
    pub(crate) fn broadcast<const D: usize>(&self) -> (Tensor<D>, Tensor<D>) {
        let (axis, channels) = self.axis_and_channels();
        let mut shape = [1usize; D];
        if channels > 1 {
            shape[axis] = channels;
        }
        (
            self.scale.clone().reshape(shape),
            self.zero_point.clone().reshape(shape),
        )
    }
}

/// The value of channel `channel` among per-channel parameters, or the only one of per-tensor
/// parameters.
pub(crate) fn channel_value<T: Copy>(values: &[T], channel: usize) -> T {
    values[if values.len() > 1 { channel } else { 0 }]
}

/// Checks host range bounds: finite and ordered.
pub fn check_bounds(min: f32, max: f32) -> Result<(), QuantError> {
    if !min.is_finite() || !max.is_finite() {
        return Err(QuantError::NonFiniteRange { min, max });
    }
    if min > max {
        return Err(QuantError::InvertedRange { min, max });
    }
    Ok(())
}

/// Replaces zero scales (empty range) by 1.
fn nonzero_scale(scale: Tensor<1>) -> Tensor<1> {
    let empty = scale.clone().equal_elem(0.0);
    scale.mask_fill(empty, 1.0)
}

/// Quantizes: `q = clamp(round(x / S) + Z, qmin, qmax)`, rounding half to even.
///
/// ```
/// use burn::tensor::Tensor;
/// use burn_quant::{QParams, QScheme, default_device, quantize, dequantize};
/// let device = default_device().unwrap();
/// let qp = QParams::from_bounds(0.0, 2.55, QScheme::affine(8).unwrap(), &device).unwrap();
/// let x = Tensor::<1>::from_floats([0.0, 0.015, 1.0, 9.0], &device);
/// let q = quantize(x, &qp);
/// assert_eq!(q.clone().into_data().convert::<i32>().try_to_vec::<i32>().unwrap(), vec![0, 2, 100, 255]);
/// let back = dequantize(q, &qp).into_data().try_to_vec::<f32>().unwrap();
/// assert!((back[2] - 1.0).abs() < 1e-6);
/// ```
pub fn quantize<const D: usize>(x: Tensor<D>, qparams: &QParams) -> Tensor<D, Int> {
    if qparams.scheme.is_bipolar() {
        return x.greater_equal_elem(0.0).int() * 2 - 1;
    }
    let (qmin, qmax) = (qparams.scheme.qmin() as f32, qparams.scheme.qmax() as f32);
    match is_host_device(&x.device()) && qparams.scale.dims() == [1] {
        true => host_quantize(x, qparams, (qmin, qmax)),
        false => tensor_quantize(x, qparams, (qmin, qmax)),
    }
}

/// [`quantize`] composed of Burn tensor ops (any backend, any granularity).
fn tensor_quantize<const D: usize>(
    x: Tensor<D>,
    qparams: &QParams,
    (qmin, qmax): (f32, f32),
) -> Tensor<D, Int> {
    let (scale, zero_point) = qparams.broadcast::<D>();
    (x.div(scale).round() + zero_point).clamp(qmin, qmax).int()
}

/// [`quantize`] per tensor on host memory (the CPU backends): the same grid points in one
/// pass over the values ([`quantize_block`], on rayon's threads when they are many) instead of
/// five tensor ops.
fn host_quantize<const D: usize>(
    x: Tensor<D>,
    qparams: &QParams,
    (qmin, qmax): (f32, f32),
) -> Tensor<D, Int> {
    let (device, shape) = (x.device(), x.dims());
    let (scale, zero_point) = qparams.to_host();
    let grid = [scale[0], zero_point[0] as f32, qmin, qmax];
    let data = x.into_data().convert::<f32>();
    let values = data.as_slice::<f32>().expect("f32 data");
    let mut q = vec![0i32; values.len()];
    match values.len() < SERIAL_MAX_LEN {
        true => quantize_block(values, &mut q, grid),
        false => values
            .par_chunks(1 << 14)
            .zip(q.par_chunks_mut(1 << 14))
            .for_each(|(values, q)| quantize_block(values, q, grid)),
    }
    Tensor::from_data(TensorData::new(q, shape), &device)
}

/// `q[i] = clamp(round(values[i] / s) + z, lo, hi)` for `[s, z, lo, hi]`, rounding half to even
/// as fake-quant does ([`grid_offset`]); NaN becomes 0.
#[inline(always)]
fn quantize_values(values: &[f32], q: &mut [i32], [s, z, lo, hi]: [f32; 4]) {
    for (q, &v) in q.iter_mut().zip(values) {
        *q = (grid_offset(v, s, z, lo, hi) + z) as i32;
    }
}

avx2_kernel!(
    /// [`quantize_values`], with AVX2 when the CPU has it.
    fn quantize_block(values: &[f32], q: &mut [i32], grid: [f32; 4]) => quantize_values
);

/// Dequantizes: `x = S * (q - Z)`.
pub fn dequantize<const D: usize>(q: Tensor<D, Int>, qparams: &QParams) -> Tensor<D> {
    let (scale, zero_point) = qparams.broadcast::<D>();
    (q.float() - zero_point) * scale
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::ints;
    use crate::{Signedness, default_device};

    #[test]
    fn host_quantize_equals_the_tensor_ops() {
        let device = default_device().unwrap();
        // More values than `SERIAL_MAX_LEN`: the parallel route too.
        let mut values: Vec<f32> = (0..SERIAL_MAX_LEN + 5000)
            .map(|i| ((i * 7919) % 2001) as f32 * 0.0137 - 13.0)
            .collect();
        values.extend([0.0, -0.0, 0.5, 1.5, 2.5, -0.5, -1.5, 1e7, -1e7]);
        // No NaN: NdArray's tensor route panics converting it to an integer.
        values.extend([f32::INFINITY, f32::NEG_INFINITY, f32::MIN_POSITIVE]);
        let x = Tensor::<1>::from_floats(values.as_slice(), &device);
        for (min, max, scheme) in [
            (-13.0, 14.0, QScheme::affine(8).unwrap()),
            (-1.0, 1.0, QScheme::affine(3).unwrap()),
            (0.0, 4.0, QScheme::affine(2).unwrap()),
            (-3.0, 3.0, QScheme::symmetric(4).unwrap()),
        ] {
            let qp = QParams::from_bounds(min, max, scheme, &device).unwrap();
            let grid = (scheme.qmin() as f32, scheme.qmax() as f32);
            assert_eq!(
                ints(host_quantize(x.clone(), &qp, grid)),
                ints(tensor_quantize(x.clone(), &qp, grid)),
                "{scheme:?} on [{min}, {max}]"
            );
        }
    }

    fn host(min: f32, max: f32, scheme: QScheme) -> (f32, i32) {
        let qp = QParams::from_bounds(min, max, scheme, &default_device().unwrap()).unwrap();
        let (s, z) = qp.to_host();
        (s[0], z[0])
    }

    #[test]
    fn affine_matches_reference_formula() {
        let scheme = QScheme::affine(8).unwrap();
        let (s, z) = host(-0.424_212_96, 2.821_486_7, scheme);
        let expected_s = (2.821_486_7_f32 + 0.424_212_96) / 255.0;
        assert!((s - expected_s).abs() < 1e-7);
        assert_eq!(
            z,
            (255.0f32 - 2.821_486_7 / expected_s).round_ties_even() as i32
        );
    }

    #[test]
    fn range_is_widened_to_zero() {
        let scheme = QScheme::affine(4).unwrap();
        let (s, z) = host(2.0, 3.0, scheme);
        assert!((s - 3.0 / 15.0).abs() < 1e-7);
        assert_eq!(z, 0);
        let (s, z) = host(-3.0, -2.0, scheme);
        assert!((s - 3.0 / 15.0).abs() < 1e-7);
        assert_eq!(z, 15);
    }

    #[test]
    fn degenerate_range_gives_unit_scale() {
        let (s, z) = host(0.0, 0.0, QScheme::affine(8).unwrap());
        assert_eq!((s, z), (1.0, 255));
        let (s, z) = host(0.0, 0.0, QScheme::symmetric(8).unwrap());
        assert_eq!((s, z), (1.0, 0));
        // min == max != 0 is not degenerate once widened to contain 0.
        let (s, z) = host(2.0, 2.0, QScheme::affine(8).unwrap());
        assert!((s - 2.0 / 255.0).abs() < 1e-7);
        assert_eq!(z, 0);
    }

    #[test]
    fn symmetric_signed_and_unsigned() {
        let (s, z) = host(-1.0, 0.5, QScheme::symmetric(8).unwrap());
        assert!((s - 1.0 / 127.5).abs() < 1e-7);
        assert_eq!(z, 0);
        let unsigned = QScheme::new(
            8,
            Signedness::Unsigned,
            QMode::Symmetric,
            Granularity::PerTensor,
        )
        .unwrap();
        assert_eq!(host(-1.0, 0.5, unsigned).1, 128);
    }

    #[test]
    fn narrow_symmetric_is_ternary_at_2_bits() {
        let scheme = QScheme::symmetric_narrow(2).unwrap();
        let (s, z) = host(-1.0, 0.5, scheme);
        assert_eq!((s, z), (1.0, 0));
        let device = default_device().unwrap();
        let qp = QParams::from_bounds(-1.0, 0.5, scheme, &device).unwrap();
        let x = Tensor::<1>::from_floats([-2.0, -0.6, -0.4, 0.3, 0.7, 3.0], &device);
        let y = crate::fake_quant(x, &qp, crate::Ste::Identity);
        let y = y.into_data().try_to_vec::<f32>().unwrap();
        assert_eq!(y, vec![-1.0, -1.0, 0.0, 0.0, 1.0, 1.0]);
    }

    #[test]
    fn bad_bounds_are_errors() {
        let scheme = QScheme::affine(8).unwrap();
        let device = default_device().unwrap();
        for (min, max) in [
            (f32::NAN, 1.0),
            (0.0, f32::INFINITY),
            (f32::NEG_INFINITY, 0.0),
        ] {
            assert!(matches!(
                QParams::from_bounds(min, max, scheme, &device),
                Err(QuantError::NonFiniteRange { .. })
            ));
        }
        assert!(matches!(
            QParams::from_bounds(1.0, -1.0, scheme, &device),
            Err(QuantError::InvertedRange { .. })
        ));
    }
}
