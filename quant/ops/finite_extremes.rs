//! The per-row minimum and maximum of an observer's batch, non-finite values counted as 0, as a
//! Burn backend extension: one fused pass over host memory on Flex and NdArray instead of five
//! tensor ops (`is_finite`, `bool_not`, `mask_fill`, `min_dim`, `max_dim`); other backends
//! run those ops.

// `NdArray` is deprecated by Burn but still supported here behind its feature.
#![allow(deprecated)]

use burn::backend::autodiff::{Autodiff, checkpoint::strategy::CheckpointStrategy};
use burn::backend::{
    AutodiffBackend, Backend, Dispatch, TensorMetadata, backend_extension, tensor::FloatTensor,
};
use burn::tensor::Tensor;
use rayon::prelude::*;

use super::conv2d::HostSlice;
use crate::backend::is_host_device;
use crate::simd::with_avx2;

/// Backend extension: the extremes of each row of a `[rows, n]` tensor.
#[backend_extension(
    Autodiff,
    Flex: cfg(feature = "flex"),
    NdArray: cfg(feature = "ndarray")
)]
pub(crate) trait FiniteExtremesBackend: Backend {
    /// `(min, max)` of each row (shape `[rows]` each), non-finite values counted as 0.
    fn finite_extremes(rows: FloatTensor<Self>) -> (FloatTensor<Self>, FloatTensor<Self>);
}

/// `(min, max)` of each row of `rows` (`[channels, n]`, `n > 0`), with NaN and ±∞ counted as 0.
pub(crate) fn finite_extremes(rows: Tensor<2>) -> (Tensor<1>, Tensor<1>) {
    let [channels, _] = rows.dims();
    if !is_host_device(&rows.device()) {
        let rows = rows.clone().mask_fill(rows.is_finite().bool_not(), 0.0);
        return (
            rows.clone().min_dim(1).reshape([channels]),
            rows.max_dim(1).reshape([channels]),
        );
    }
    let (min, max) = Dispatch::finite_extremes(rows.into_dispatch());
    (Tensor::from_dispatch(min), Tensor::from_dispatch(max))
}

/// Values per parallel task of a long row.
const CHUNK: usize = 1 << 15;

/// The extremes of one row on the host.
fn row_extremes(row: &[f32]) -> (f32, f32) {
    let fold = |chunk: &[f32]| {
        with_avx2(|| {
            chunk
                .iter()
                .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
                    let v = if v.is_finite() { v } else { 0.0 };
                    (lo.min(v), hi.max(v))
                })
        })
    };
    row.par_chunks(CHUNK).map(fold).reduce(
        || (f32::INFINITY, f32::NEG_INFINITY),
        |a, b| (a.0.min(b.0), a.1.max(b.1)),
    )
}

/// Implements [`FiniteExtremesBackend`] for a backend with host memory.
macro_rules! host_finite_extremes {
    ($backend:ty) => {
        impl FiniteExtremesBackend for $backend {
            fn finite_extremes(rows: FloatTensor<Self>) -> (FloatTensor<Self>, FloatTensor<Self>) {
                let shape = rows.shape();
                let (channels, n) = (shape[0], shape[1]);
                let (min, max): (Vec<f32>, Vec<f32>) = Self::with_host(&rows, |values| {
                    values
                        .chunks(n.max(1))
                        .take(channels)
                        .map(row_extremes)
                        .unzip()
                });
                (
                    Self::from_host(min, vec![channels]),
                    Self::from_host(max, vec![channels]),
                )
            }
        }
    };
}

#[cfg(feature = "flex")]
host_finite_extremes!(burn::backend::Flex);

#[cfg(feature = "ndarray")]
host_finite_extremes!(burn::backend::NdArray);

impl<B: FiniteExtremesBackend, C: CheckpointStrategy> FiniteExtremesBackend for Autodiff<B, C> {
    fn finite_extremes(rows: FloatTensor<Self>) -> (FloatTensor<Self>, FloatTensor<Self>) {
        // Observers read their batch detached: no gradient flows through the extremes.
        let (min, max) = B::finite_extremes(Self::inner(rows));
        (Self::from_inner(min), Self::from_inner(max))
    }
}
