//! Helpers shared by the integration tests: the device under test and scalar references.
#![allow(dead_code)]

use burn::module::Module;
use burn::nn::Linear;
use burn::nn::conv::Conv2d;
use burn::tensor::{Device, Tensor};
use burn_quant::default_device;
use burn_quant::nn::{QConfig, QConv2d, QLinear, QReLU, QTensor};

/// mimalloc reuses the large buffers Burn's CPU backends allocate at every op (see
/// docs/performance.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The device the suite runs on (`BURN_QUANT_DEVICE`, default: the first enabled backend).
pub fn device() -> Device {
    default_device().expect("BURN_QUANT_DEVICE names an enabled backend")
}

/// Scalar reference of fake quantization, rounding half to even.
pub fn fake_quant_ref(x: f32, scale: f32, zero_point: f32, qmin: i32, qmax: i32) -> f32 {
    let q = ((x / scale).round_ties_even() + zero_point).clamp(qmin as f32, qmax as f32);
    (q - zero_point) * scale
}

/// Whether the clipped STE lets the gradient through at `x`.
pub fn in_range_ref(x: f32, scale: f32, zero_point: f32, qmin: i32, qmax: i32) -> bool {
    let q = (x / scale).round_ties_even() + zero_point;
    q >= qmin as f32 && q <= qmax as f32
}

/// Reads a tensor back as a flat `Vec<f32>`.
pub fn to_vec<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
}

/// Asserts `actual == expected` element by element. Where `x / scale` is within 1e-4 of a
/// rounding tie, a device whose division is not correctly rounded may pick the other
/// neighbour: one quantization step of difference is accepted there, nowhere else.
pub fn assert_fake_quant_eq(actual: &[f32], expected: &[f32], x: &[f32], scales: &[f32]) {
    assert_eq!(actual.len(), expected.len());
    for i in 0..actual.len() {
        let (a, e, s) = (actual[i], expected[i], scales[i]);
        if a == e || (a - e).abs() <= 1e-6 * e.abs().max(s) {
            continue;
        }
        let v = x[i] / s;
        let near_tie = (v - v.floor() - 0.5).abs() < 1e-4;
        assert!(
            near_tie && ((a - e).abs() - s).abs() <= 1e-5 * s.max(1.0),
            "element {i}: x = {}, scale = {s}: got {a}, expected {e}",
            x[i]
        );
    }
}

/// `actual` equals `expected` within 1e-5 relative to the largest magnitude of `expected`.
pub fn assert_close(what: &str, actual: &[f32], expected: &[f32]) {
    assert_eq!(actual.len(), expected.len(), "{what}: length");
    let scale = expected.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
    for (i, (a, e)) in actual.iter().zip(expected).enumerate() {
        assert!(
            (a - e).abs() <= 1e-5 * scale,
            "{what}[{i}]: {a} vs Burn's {e} (scale {scale})"
        );
    }
}

/// Random cases of an op-vs-Burn property test: 48 on the CPU backends (where burn-quant has
/// its own kernels), `elsewhere` on the GPU backends (0 where the op is Burn's there; a few
/// where burn-quant has CubeCL kernels: each new shape autotunes Burn's, slow on lavapipe).
pub fn random_cases(elsewhere: u32) -> u32 {
    use burn_quant::backend::{BackendKind, default_backend};
    match default_backend() {
        Ok(BackendKind::Flex | BackendKind::NdArray) => 48,
        _ => elsewhere,
    }
}

/// A small quantized CNN: convolution (observing its own input), ReLU, flatten, linear.
#[derive(Module, Debug)]
pub struct ConvReluLinear {
    pub conv: QConv2d,
    pub relu: QReLU,
    pub fc: QLinear,
}

impl ConvReluLinear {
    /// `conv` and `fc` quantized with `qconfig`; `integer_output`: integer logits.
    pub fn new(conv: Conv2d, fc: Linear, qconfig: &QConfig, integer_output: bool) -> Self {
        Self {
            conv: QConv2d::new(conv, qconfig, true),
            relu: QReLU::new(),
            fc: QLinear::new(fc, qconfig, false).with_integer_output(integer_output),
        }
    }

    /// The one forward.
    pub fn forward(&self, x: QTensor<4>) -> QTensor<2> {
        let x = self.relu.forward(self.conv.forward(x));
        self.fc.forward(x.flatten(1, 3))
    }
}
