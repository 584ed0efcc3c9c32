//! Fake quantization (quantize then dequantize) as a Burn backend extension op with a
//! straight-through-estimator (STE) backward pass.
//!
//! Layers:
//! - [`FakeQuantBackend`]: the backend extension trait. Flex runs one fused pass over its
//!   storage (`flex.rs`), NdArray the default body (a few elementwise backend ops), the CubeCL
//!   backend one fused kernel (`cube.rs`);
//!   `Autodiff<B, C>` wraps the inner backend's forward and registers its own `Backward`
//!   (`autodiff.rs`), so `round` never kills the gradient.
//! - [`fake_quant`]: the `Tensor<D>` function that module code calls.

// `NdArray` is deprecated by Burn but still supported here behind its feature.
#![allow(deprecated)]

mod autodiff;
#[cfg(feature = "wgpu")]
mod cube;
#[cfg(feature = "flex")]
mod flex;

use burn::backend::{Backend, Dispatch, TensorMetadata, backend_extension, tensor::FloatTensor};
use burn::tensor::{Shape, Tensor};

use crate::QParams;

/// Backend extension providing the fused fake-quant op.
///
/// `scale` and `zero_point` have shape `[C]`; with `C == 1` they apply to the whole tensor,
/// otherwise channel `c` applies along `axis`. Forward:
/// `y = (clamp(round(x / S) + Z, qmin, qmax) - Z) * S` (rounding half to even).
/// `clipped_ste` only matters under autodiff: `false` passes the gradient unchanged (identity
/// STE), `true` zeroes it where `round(x / S) + Z` falls outside `[qmin, qmax]`.
#[backend_extension(
    Autodiff,
    Flex: cfg(feature = "flex"),
    NdArray: cfg(feature = "ndarray"),
    Cube: cfg(feature = "wgpu"),
    Fusion: cfg(feature = "wgpu")
)]
pub trait FakeQuantBackend: Backend {
    /// Fake-quantizes `x` with per-tensor or per-channel parameters.
    #[fusion(dtype = x, shape = x)]
    fn fake_quant(
        x: FloatTensor<Self>,
        scale: FloatTensor<Self>,
        zero_point: FloatTensor<Self>,
        axis: usize,
        qmin: i32,
        qmax: i32,
        clipped_ste: bool,
    ) -> FloatTensor<Self> {
        let _ = clipped_ste;
        fake_quant_ops::<Self>(x, scale, zero_point, axis, qmin, qmax)
    }

    /// [`FakeQuantBackend::fake_quant`] with a learned step size (LSQ, Esser et al. 2019):
    /// the same forward; under autodiff the gradient reaches `scale` as well as `x` (see
    /// [`lsq_fake_quant`]). Without autodiff it is the clipped-STE fake-quant.
    #[fusion(dtype = x, shape = x)]
    fn fake_quant_lsq(
        x: FloatTensor<Self>,
        scale: FloatTensor<Self>,
        zero_point: FloatTensor<Self>,
        axis: usize,
        qmin: i32,
        qmax: i32,
        grad_scale: f32,
    ) -> FloatTensor<Self> {
        let _ = grad_scale;
        Self::fake_quant(x, scale, zero_point, axis, qmin, qmax, true)
    }
}

/// The backward pass of [`lsq_fake_quant`] on a backend (the autodiff op calls it on the
/// inner backend): from the upstream gradient `grad`, `[dL/dx, dL/dS]`, the input's gradient by
/// the clipped STE (shape of `x`) and the step's, `grad_scale · Σ grad · ∂y/∂S` per channel
/// (shape of `scale`), with `∂y/∂S` = `round(v) − v` on the grid, `qmin − Z` below and
/// `qmax − Z` above (`v = x / S`, rounding half to even).
///
/// The default body composes backend ops; Flex runs one fused pass over its storage.
pub trait LsqGradientBackend: Backend {
    /// `[dL/dx, dL/dS]` of the LSQ fake-quant of `x` for the upstream gradient `grad`.
    #[allow(clippy::too_many_arguments)]
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
        autodiff::lsq_gradients_ops::<Self>(
            x, scale, zero_point, grad, axis, qmin, qmax, grad_scale,
        )
    }
}

#[cfg(feature = "ndarray")]
impl LsqGradientBackend for burn::backend::NdArray {}

#[cfg(feature = "wgpu")]
impl LsqGradientBackend for burn_cubecl::CubeBackend {}

#[cfg(feature = "wgpu")]
impl<B: burn::backend::fusion::FusionBackend> LsqGradientBackend
    for burn::backend::fusion::Fusion<B>
{
}

/// `1.5 · 2^23`: adding and subtracting it rounds an f32 of magnitude below `2^22` (grids lie
/// within ±2^17) to an integer, half to even (IEEE round-to-nearest), and vectorizes, unlike a
/// call to `rint`.
pub(crate) const ROUNDING: f32 = 12_582_912.0;
/// `(clamp(round(x / s) + z, lo, hi) - z) · s`, rounding half to even, as
/// `round(clamp(x / s, lo - z, hi - z)) · s`: the bounds are integers, so clamping before
/// rounding gives the same grid point, and `z` (an integer) cancels exactly.
#[inline(always)]
pub(crate) fn fake_quant_value(x: f32, s: f32, z: f32, lo: f32, hi: f32) -> f32 {
    grid_offset(x, s, z, lo, hi) * s
}

/// `clamp(round(x / s) + z, lo, hi) - z` (the grid point of `x` minus the zero point, as a
/// float), rounding half to even, computed as in [`fake_quant_value`]: the integer engine's
/// input quantization and fake-quant round every value to the same grid point.
#[inline(always)]
pub(crate) fn grid_offset(x: f32, s: f32, z: f32, lo: f32, hi: f32) -> f32 {
    let v = (x / s).clamp(lo - z, hi - z);
    (v + ROUNDING) - ROUNDING
}

/// The fake-quant forward composed of backend ops (the default body of
/// [`FakeQuantBackend::fake_quant`], and the fallback of fused implementations).
pub(crate) fn fake_quant_ops<B: Backend>(
    x: FloatTensor<B>,
    scale: FloatTensor<B>,
    zero_point: FloatTensor<B>,
    axis: usize,
    qmin: i32,
    qmax: i32,
) -> FloatTensor<B> {
    let rank = x.shape().num_dims();
    let scale = broadcast_channels::<B>(scale, rank, axis);
    let zero_point = broadcast_channels::<B>(zero_point, rank, axis);
    let q = B::float_add(
        B::float_round(B::float_div(x, scale.clone())),
        zero_point.clone(),
    );
    let q = B::float_clamp(q, (qmin as f32).into(), (qmax as f32).into());
    B::float_mul(B::float_sub(q, zero_point), scale)
}

#[cfg(feature = "ndarray")]
#[allow(deprecated)]
impl FakeQuantBackend for burn::backend::NdArray {}

/// Reshapes a `[C]` parameter so it broadcasts along `axis` of a rank-`rank` tensor.
pub(crate) fn broadcast_channels<B: Backend>(
    param: FloatTensor<B>,
    rank: usize,
    axis: usize,
) -> FloatTensor<B> {
    let channels = param.shape().num_elements();
    let mut dims = vec![1usize; rank];
    if channels > 1 {
        dims[axis] = channels;
    }
    B::float_reshape(param, Shape::from(dims))
}

/// Which gradient the straight-through estimator lets through.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, burn::serde::Serialize, burn::serde::Deserialize,
)]
#[serde(crate = "burn::serde")]
pub enum Ste {
    /// The gradient passes unchanged (the reference's `FakeQuantize`).
    #[default]
    Identity,
    /// The gradient is zeroed where the input was clipped to the grid (PyTorch's choice).
    Clipped,
}

/// Fake-quantizes a tensor: quantize with `qparams`, then dequantize, with an STE backward.
///
/// `qparams` must live on the tensor's device. Panics when a per-channel parameter count does
/// not match the tensor's size along the channel axis.
///
/// ```
/// use burn::tensor::Tensor;
/// use burn_quant::{QParams, QScheme, Ste, default_device, fake_quant};
/// let device = default_device().unwrap();
/// let qp = QParams::from_bounds(-1.0, 1.0, QScheme::affine(2).unwrap(), &device).unwrap();
/// let x = Tensor::<1>::from_floats([-2.0, -0.4, 0.1, 0.9], &device);
/// let y = fake_quant(x, &qp, Ste::Identity).into_data().try_to_vec::<f32>().unwrap();
/// // S = 2/3, Z = 2: representable values are -4/3, -2/3, 0, 2/3.
/// let s = 2.0f32 / 3.0;
/// assert_eq!(y, vec![-2.0 * s, -s, 0.0, s]);
/// ```
pub fn fake_quant<const D: usize>(x: Tensor<D>, qparams: &QParams, ste: Ste) -> Tensor<D> {
    let axis = channel_axis("fake_quant", &x, qparams);
    fake_quant_on_grid(
        x,
        qparams.scale.clone(),
        qparams.zero_point.clone(),
        axis,
        (qparams.scheme.qmin(), qparams.scheme.qmax()),
        ste,
    )
}

/// Fake-quantizes `x` with a learned step size (LSQ, Esser et al. 2019,
/// arXiv:1902.08153): the forward is [`fake_quant`]'s, the backward lets the gradient reach
/// the step `qparams.scale` (a tracked tensor, e.g. a module parameter) as well as `x`.
///
/// With `v = x / S`, `q = round(v) + Z` and the grid `[qmin, qmax]`:
/// - `dL/dx = dL/dy · 1[qmin <= q <= qmax]` (clipped STE);
/// - `dL/dS = g · Σ dL/dy · (round(v) − v)` where `q` is on the grid, `(qmin − Z)` below it and
///   `(qmax − Z)` above it, summed per channel (per tensor: over everything), where `g` is
///   `grad_scale`, LSQ's gradient scale `1 / sqrt(N · Q_P)` ([`lsq_grad_scale`]).
///
/// The zero point gets no gradient.
///
/// ```
/// use burn::tensor::Tensor;
/// use burn_quant::{QParams, QScheme, default_device, lsq_fake_quant};
/// let device = default_device().unwrap().autodiff();
/// let scheme = QScheme::symmetric(3).unwrap(); // grid [-4, 3], zero point 0
/// let step = Tensor::<1>::from_floats([0.5], &device).require_grad();
/// let zero_point = Tensor::zeros([1], &device);
/// let qparams = QParams { scale: step.clone(), zero_point, scheme };
/// let x = Tensor::<1>::from_floats([0.3, 2.9], &device).require_grad();
/// let y = lsq_fake_quant(x.clone(), &qparams, 1.0);
/// assert_eq!(y.clone().into_data().try_to_vec::<f32>().unwrap(), vec![0.5, 1.5]);
/// let grads = y.sum().backward();
/// // 0.3: round(0.6) - 0.6 = 0.4; 2.9: clipped above, qmax - Z = 3.
/// let ds = step.grad(&grads).unwrap().into_data().try_to_vec::<f32>().unwrap()[0];
/// assert!((ds - 3.4).abs() < 1e-6);
/// assert_eq!(x.grad(&grads).unwrap().into_data().try_to_vec::<f32>().unwrap(), vec![1.0, 0.0]);
/// ```
///
/// # Panics
/// When a per-channel parameter count does not match the tensor's size along the axis.
pub fn lsq_fake_quant<const D: usize>(
    x: Tensor<D>,
    qparams: &QParams,
    grad_scale: f32,
) -> Tensor<D> {
    let axis = channel_axis("lsq_fake_quant", &x, qparams);
    let out = Dispatch::fake_quant_lsq(
        x.into_dispatch(),
        qparams.scale.clone().into_dispatch(),
        qparams.zero_point.clone().into_dispatch(),
        axis,
        qparams.scheme.qmin(),
        qparams.scheme.qmax(),
        grad_scale,
    );
    Tensor::from_dispatch(out)
}

/// Binary fake-quantization `y = S·sign(x)` (`sign(0) = +1`) for a bipolar scheme
/// ([`crate::QMode::Bipolar`]), with `S` from `qparams.scale` (per tensor or per channel).
///
/// Backward: `dL/dx = dL/dy` with [`Ste::Identity`], `dL/dy · 1[|x| <= S]` with
/// [`Ste::Clipped`] (BinaryConnect's hard-tanh STE at the scale); when `S` is tracked (a
/// learned step), `dL/dS = grad_scale · Σ dL/dy · sign(x)` per channel. Written with Burn's
/// tensor ops, so it runs on every backend.
///
/// ```
/// use burn::tensor::Tensor;
/// use burn_quant::{QParams, QScheme, Ste, bipolar_fake_quant, default_device};
/// let device = default_device().unwrap().autodiff();
/// let scheme = QScheme::bipolar();
/// let step = Tensor::<1>::from_floats([0.5], &device).require_grad();
/// let qparams = QParams { scale: step.clone(), zero_point: Tensor::zeros([1], &device), scheme };
/// let x = Tensor::<1>::from_floats([-0.2, 0.0, 0.9], &device).require_grad();
/// let y = bipolar_fake_quant(x.clone(), &qparams, Ste::Clipped, 1.0);
/// assert_eq!(y.clone().into_data().try_to_vec::<f32>().unwrap(), vec![-0.5, 0.5, 0.5]);
/// let grads = y.sum().backward();
/// assert_eq!(x.grad(&grads).unwrap().into_data().try_to_vec::<f32>().unwrap(), vec![1.0, 1.0, 0.0]);
/// // -1 + 1 + 1
/// assert_eq!(step.grad(&grads).unwrap().into_data().try_to_vec::<f32>().unwrap(), vec![1.0]);
/// ```
///
/// # Panics
/// When the scheme is not bipolar, or a per-channel parameter count does not match the
/// tensor's size along the axis.
pub fn bipolar_fake_quant<const D: usize>(
    x: Tensor<D>,
    qparams: &QParams,
    ste: Ste,
    grad_scale: f32,
) -> Tensor<D> {
    assert!(
        qparams.scheme.is_bipolar(),
        "bipolar_fake_quant needs a bipolar scheme, got {:?}",
        qparams.scheme
    );
    channel_axis("bipolar_fake_quant", &x, qparams);
    let (scale, _) = qparams.broadcast::<D>();
    // Forward `S`, backward `grad_scale · dL/dS` (LSQ's gradient scale).
    let scaled = scale.clone() * grad_scale;
    let scale_for_grad = scaled.clone() - scaled.detach() + scale.clone().detach();
    let sign = x.clone().detach().greater_equal_elem(0.0).float() * 2.0 - 1.0;
    // Zero in the forward pass, the STE's gradient in the backward pass.
    let straight = x.clone() - x.clone().detach();
    let straight = match ste {
        Ste::Identity => straight,
        Ste::Clipped => {
            let scale = scale.detach().expand(x.shape());
            let inside = x.detach().abs().lower_equal(scale).float();
            straight * inside
        }
    };
    sign * scale_for_grad + straight
}

/// The channel axis of `qparams` for `x`.
///
/// # Panics
/// When a per-channel parameter count does not match `x`'s size along the axis (`op` names
/// the caller).
fn channel_axis<const D: usize>(op: &str, x: &Tensor<D>, qparams: &QParams) -> usize {
    let (axis, channels) = qparams.axis_and_channels();
    if channels > 1 {
        assert!(
            axis < D && x.dims()[axis] == channels,
            "{op}: {channels} per-channel parameters along axis {axis} do not fit a tensor of shape {:?}",
            x.dims()
        );
    }
    axis
}

/// LSQ's gradient scale `1 / sqrt(N · Q_P)` for a step shared by `elements` values on a grid
/// whose largest positive level is `qmax − Z` (at least 1).
///
/// ```
/// assert_eq!(burn_quant::lsq_grad_scale(4, 1), 0.5);
/// ```
pub fn lsq_grad_scale(elements: usize, positive_levels: i32) -> f32 {
    1.0 / ((elements.max(1) as f64) * positive_levels.max(1) as f64).sqrt() as f32
}

/// [`fake_quant`] on an arbitrary integer grid `[qmin, qmax]` (e.g. the int32 bias grid).
pub(crate) fn fake_quant_on_grid<const D: usize>(
    x: Tensor<D>,
    scale: Tensor<1>,
    zero_point: Tensor<1>,
    axis: usize,
    (qmin, qmax): (i32, i32),
    ste: Ste,
) -> Tensor<D> {
    let out = Dispatch::fake_quant(
        x.into_dispatch(),
        scale.into_dispatch(),
        zero_point.into_dispatch(),
        axis,
        qmin,
        qmax,
        ste == Ste::Clipped,
    );
    Tensor::from_dispatch(out)
}
