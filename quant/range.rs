//! How an observer turns one batch into a range: its extremes, a percentile, or the clipping
//! range with the smallest quantization error (MSE).

use burn::serde::{Deserialize, Serialize};
use burn::tensor::{Int, Tensor, TensorData};

use rayon::prelude::*;

use crate::backend::{host_f32, is_host_device};
use crate::fake_quant::fake_quant_value;
use crate::qparams::channel_value;
use crate::simd::avx2_kernel;
use crate::{QParams, QScheme, QuantError, Ste, fake_quant};

/// Candidate clipping ratios of [`RangeEstimator::Mse`]: `1, 0.96, …, 0.24` of the extremes.
const MSE_RATIOS: usize = 20;
/// The smallest ratio tried.
const MSE_MIN_RATIO: f64 = 0.24;

/// The range an observer takes from one batch (per tensor or per channel); observers then
/// merge batches as configured (running or EMA).
///
/// ```
/// use burn_quant::RangeEstimator;
/// assert!(RangeEstimator::percentile(99.9).is_ok());
/// assert!(RangeEstimator::percentile(40.0).is_err());
/// assert_eq!(RangeEstimator::parse("mse").unwrap(), RangeEstimator::Mse);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(crate = "burn::serde")]
pub enum RangeEstimator {
    /// The batch's minimum and maximum (the reference).
    #[default]
    MinMax,
    /// The `100 − p` and `p` percentiles, `p` in `(50, 100]`: outliers beyond them are
    /// clipped.
    Percentile {
        /// Upper percentile, e.g. `99.99`.
        percentile: f64,
    },
    /// The extremes scaled by the ratio in `{1, 0.96, …, 0.24}` whose fake-quantized values
    /// are closest to the batch (least squared error), per channel for per-channel schemes.
    Mse,
}

impl RangeEstimator {
    /// A percentile estimator; fails unless `percentile` is in `(50, 100]`.
    pub fn percentile(percentile: f64) -> Result<Self, QuantError> {
        if !(percentile > 50.0 && percentile <= 100.0) {
            return Err(QuantError::InvalidSetting(format!(
                "a percentile range needs a percentile in (50, 100], got {percentile}"
            )));
        }
        Ok(Self::Percentile { percentile })
    }

    /// Parses `minmax`, `mse` or `percentile:P` (e.g. `percentile:99.99`).
    pub fn parse(s: &str) -> Result<Self, QuantError> {
        match s.trim() {
            "minmax" => Ok(Self::MinMax),
            "mse" => Ok(Self::Mse),
            other => match other.strip_prefix("percentile:").map(str::parse::<f64>) {
                Some(Ok(p)) => Self::percentile(p),
                _ => Err(QuantError::InvalidSetting(format!(
                    "a range estimator is `minmax`, `mse` or `percentile:P`, got `{s}`"
                ))),
            },
        }
    }

    /// Checks the percentile (deserialized settings skip [`RangeEstimator::percentile`]).
    pub fn check(&self) -> Result<(), QuantError> {
        match *self {
            Self::Percentile { percentile } => Self::percentile(percentile).map(|_| ()),
            _ => Ok(()),
        }
    }

    /// The range `(min, max)`, each `[C]`, of `rows` (`[C, N]`: one row per channel, or one
    /// row for a per-tensor scheme) quantized with `scheme` (its per-channel axis is ignored).
    ///
    /// # Panics
    /// When `rows` is empty.
    pub fn rows_range(&self, rows: Tensor<2>, scheme: QScheme) -> (Tensor<1>, Tensor<1>) {
        let [channels, n] = rows.dims();
        assert!(n > 0, "a range of an empty batch");
        match *self {
            Self::MinMax => extremes(rows),
            Self::Percentile { percentile } => {
                let sorted = rows.sort(1);
                let upper = ((percentile / 100.0) * (n - 1) as f64).round() as usize;
                let lower = (n - 1) - upper;
                let at = |k: usize| sorted.clone().narrow(1, k, 1).reshape([channels]);
                (at(lower), at(upper))
            }
            Self::Mse => {
                let (min, max) = extremes(rows.clone());
                let scheme = match channels {
                    1 => scheme.per_tensor(),
                    _ => scheme.per_channel(0),
                };
                let device = rows.device();
                let ratios: Vec<f32> = (0..MSE_RATIOS)
                    .map(|i| {
                        let t = i as f64 / (MSE_RATIOS - 1) as f64;
                        (1.0 - t * (1.0 - MSE_MIN_RATIO)) as f32
                    })
                    .collect();
                let grids: Vec<QParams> = ratios
                    .iter()
                    .map(|&r| QParams::from_range(min.clone() * r, max.clone() * r, scheme))
                    .collect();
                // [C, K] → the best ratio per channel (the first of equal errors: the widest).
                let errors: Tensor<2> = match is_host_device(&device) {
                    true => host_squared_errors(rows, &grids),
                    false => squared_errors(rows, &grids),
                };
                let best: Tensor<1, Int> = errors.argmin(1).reshape([channels]);
                let ratios = Tensor::<1>::from_data(TensorData::new(ratios, [MSE_RATIOS]), &device);
                let ratio = ratios.select(0, best);
                (min * ratio.clone(), max * ratio)
            }
        }
    }
}

/// `[C, K]`: the squared error of each row of `rows` (`[C, N]`) on each of the `K` grids, with
/// tensor ops (any device).
fn squared_errors(rows: Tensor<2>, grids: &[QParams]) -> Tensor<2> {
    let errors = grids
        .iter()
        .map(|qparams| {
            let fq = fake_quant(rows.clone(), qparams, Ste::Identity);
            (rows.clone() - fq).powi_scalar(2).sum_dim(1)
        })
        .collect();
    Tensor::cat(errors, 1)
}

/// Elements per task of [`host_squared_errors`] (64 KiB: the block stays in cache while every
/// grid reads it).
const MSE_BLOCK: usize = 1 << 14;

/// `[C, K]`: the squared error `Σ (x − fq_k(x))²` of each row of `rows` (`[C, N]`) on each of
/// the `K` grids (per channel along axis 0, or per tensor), in one pass over host memory
/// (instead of four tensor ops per grid).
fn host_squared_errors(rows: Tensor<2>, grids: &[QParams]) -> Tensor<2> {
    let device = rows.device();
    let [channels, n] = rows.dims();
    let values = host_f32(rows);
    // Per grid: (scale, zero point) of each channel, and the grid's bounds.
    let params: Vec<(Vec<f32>, Vec<i32>, f32, f32)> = grids
        .iter()
        .map(|qparams| {
            let (scale, zero_point) = qparams.to_host();
            let (lo, hi) = (qparams.scheme.qmin() as f32, qparams.scheme.qmax() as f32);
            (scale, zero_point, lo, hi)
        })
        .collect();
    let errors: Vec<f32> = (0..channels)
        .flat_map(|c| {
            let row = &values[c * n..(c + 1) * n];
            let channel: Vec<[f32; 4]> = params
                .iter()
                .map(|(scale, zero_point, lo, hi)| {
                    [
                        channel_value(scale, c),
                        channel_value(zero_point, c) as f32,
                        *lo,
                        *hi,
                    ]
                })
                .collect();
            let partial: Vec<Vec<f64>> = row
                .par_chunks(MSE_BLOCK)
                .map(|block| block_errors(block, &channel))
                .collect();
            (0..grids.len())
                .map(move |k| partial.iter().map(|p| p[k]).sum::<f64>() as f32)
                .collect::<Vec<_>>()
        })
        .collect();
    Tensor::from_data(TensorData::new(errors, [channels, grids.len()]), &device)
}

avx2_kernel! {
    /// `Σ (x − fq(x))²` over `block` on each grid `[s, z, lo, hi]`.
    fn block_errors(block: &[f32], grids: &[[f32; 4]]) -> Vec<f64> => block_errors_lanes
}

#[inline(always)]
fn block_errors_lanes(block: &[f32], grids: &[[f32; 4]]) -> Vec<f64> {
    let mut errors = Vec::with_capacity(grids.len());
    for &grid in grids {
        errors.push(squared_error(block, grid));
    }
    errors
}

/// `Σ (x − fq(x))²` over `block` on the grid `[s, z, lo, hi]`, in eight lanes.
#[inline(always)]
fn squared_error(block: &[f32], [s, z, lo, hi]: [f32; 4]) -> f64 {
    const LANES: usize = 8;
    let mut lanes = [0f32; LANES];
    let mut chunks = block.chunks_exact(LANES);
    for chunk in &mut chunks {
        for k in 0..LANES {
            let e = chunk[k] - fake_quant_value(chunk[k], s, z, lo, hi);
            lanes[k] += e * e;
        }
    }
    let mut tail = 0f32;
    for &x in chunks.remainder() {
        let e = x - fake_quant_value(x, s, z, lo, hi);
        tail += e * e;
    }
    lanes.iter().map(|&l| l as f64).sum::<f64>() + tail as f64
}

/// Per-row minimum and maximum, each `[C]`.
fn extremes(rows: Tensor<2>) -> (Tensor<1>, Tensor<1>) {
    let channels = rows.dims()[0];
    (
        rows.clone().min_dim(1).reshape([channels]),
        rows.max_dim(1).reshape([channels]),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::default_device;

    #[test]
    fn percentile_clips_the_outliers() {
        let device = default_device().unwrap();
        // 0..=999 and one outlier per side.
        let mut values: Vec<f32> = (0..1001).map(|v| v as f32 - 500.0).collect();
        values[0] = -1e6;
        values[1000] = 1e6;
        let rows = Tensor::<2>::from_data(TensorData::new(values, [1, 1001]), &device);
        let scheme = QScheme::affine(8).unwrap();
        let (min, max) = RangeEstimator::percentile(99.0)
            .unwrap()
            .rows_range(rows.clone(), scheme);
        assert_eq!((host_f32(min), host_f32(max)), (vec![-490.0], vec![490.0]));
        let (min, max) = RangeEstimator::MinMax.rows_range(rows, scheme);
        assert_eq!((host_f32(min), host_f32(max)), (vec![-1e6], vec![1e6]));
    }

    #[test]
    fn mse_clips_a_long_tail_per_channel_and_keeps_a_uniform_row() {
        let device = default_device().unwrap();
        let n = 1000;
        // Row 0: uniform in [-1, 1] (its extremes are optimal); row 1: the same with one
        // outlier at 8 (clipping it costs less than coarse steps for everything else).
        let uniform: Vec<f32> = (0..n)
            .map(|i| -1.0 + 2.0 * i as f32 / (n - 1) as f32)
            .collect();
        let mut tail = uniform.clone();
        tail[n - 1] = 8.0;
        let values = [uniform, tail].concat();
        let rows = Tensor::<2>::from_data(TensorData::new(values, [2, n]), &device);
        let scheme = QScheme::symmetric(4).unwrap().per_channel(3);
        let (_, max) = RangeEstimator::Mse.rows_range(rows, scheme);
        let max = host_f32(max);
        assert!(max[0] >= 0.9, "{max:?}");
        assert!(max[1] < 8.0 * 0.5, "{max:?}");
    }

    #[test]
    fn the_host_pass_gives_the_squared_errors_of_the_tensor_ops() {
        let device = default_device().unwrap();
        // Three channels of 40,000 values (more than one block), with a long tail.
        let (channels, n) = (3, 40_000);
        let values: Vec<f32> = (0..channels * n)
            .map(|i| {
                let t = ((i * 7919) % 10_007) as f32 / 10_007.0 - 0.4;
                t * t * t * 10.0 + (i % 5) as f32 * 0.01
            })
            .collect();
        let rows = Tensor::<2>::from_data(TensorData::new(values, [channels, n]), &device);
        let (min, max) = extremes(rows.clone());
        for scheme in [
            QScheme::affine(3).unwrap().per_channel(0),
            QScheme::symmetric(4).unwrap().per_channel(0),
        ] {
            let grids: Vec<QParams> = [1.0f32, 0.7, 0.3]
                .iter()
                .map(|&r| QParams::from_range(min.clone() * r, max.clone() * r, scheme))
                .collect();
            let host = host_f32(host_squared_errors(rows.clone(), &grids));
            let ops = host_f32(squared_errors(rows.clone(), &grids));
            assert_eq!(host.len(), channels * grids.len());
            for (h, o) in host.iter().zip(&ops) {
                assert!(
                    (h - o).abs() <= 1e-4 * o.abs().max(1.0),
                    "{host:?} vs {ops:?}"
                );
            }
        }
    }

    #[test]
    fn parsing_and_checks() {
        assert_eq!(
            RangeEstimator::parse("minmax").unwrap(),
            RangeEstimator::MinMax
        );
        assert_eq!(
            RangeEstimator::parse("percentile:99.9").unwrap(),
            RangeEstimator::Percentile { percentile: 99.9 }
        );
        for bad in ["percentile:", "percentile:101", "max", "percentile:x"] {
            assert!(RangeEstimator::parse(bad).is_err(), "{bad}");
        }
        assert!(
            RangeEstimator::Percentile { percentile: 10.0 }
                .check()
                .is_err()
        );
    }
}
