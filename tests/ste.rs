//! Backward of the fake-quant op: the STE gradient, exactly, and a real training step.

mod common;

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::optim::{GradientsParams, SgdConfig};
use burn::tensor::{Distribution, Tensor, TensorData};
use burn_quant::{QParams, QScheme, Ste, fake_quant};
use common::{device, in_range_ref, to_vec};

/// Gradient of `sum(fake_quant(x) * c)` with respect to `x`.
fn grad_of_weighted_sum(x: &[f32], c: &[f32], ste: Ste) -> Vec<f32> {
    let device = device().autodiff();
    let n = x.len();
    let x = Tensor::<1>::from_data(TensorData::new(x.to_vec(), [n]), &device).require_grad();
    let c = Tensor::<1>::from_data(TensorData::new(c.to_vec(), [n]), &device);
    let y = fake_quant(x.clone(), &on_device(qp_ref(), &device), ste);
    let grads = (y * c).sum().backward();
    to_vec(x.grad(&grads).expect("x has a gradient"))
}

fn qp_ref() -> (f32, f32, u32) {
    (-1.0, 2.0, 3)
}

fn on_device((min, max, bits): (f32, f32, u32), device: &burn::tensor::Device) -> QParams {
    QParams::from_bounds(min, max, QScheme::affine(bits).unwrap(), device).unwrap()
}

fn inputs() -> (Vec<f32>, Vec<f32>) {
    let device = device();
    let x = to_vec(Tensor::<1>::random(
        [257],
        Distribution::Uniform(-3.0, 4.0),
        &device,
    ));
    let c = to_vec(Tensor::<1>::random(
        [257],
        Distribution::Normal(0.0, 1.0),
        &device,
    ));
    (x, c)
}

#[test]
fn identity_ste_gradient_is_the_upstream_gradient() {
    let (x, c) = inputs();
    assert_eq!(grad_of_weighted_sum(&x, &c, Ste::Identity), c);
}

#[test]
fn clipped_ste_gradient_is_masked_outside_the_grid() {
    let (x, c) = inputs();
    let qp = on_device(qp_ref(), &device());
    let (scale, zp) = qp.to_host();
    let expected: Vec<f32> = x
        .iter()
        .zip(&c)
        .map(|(&x, &c)| {
            if in_range_ref(x, scale[0], zp[0] as f32, 0, 7) {
                c
            } else {
                0.0
            }
        })
        .collect();
    let grad = grad_of_weighted_sum(&x, &c, Ste::Clipped);
    assert_eq!(grad, expected);
    // The range [-1, 2] clips part of U(-3, 4): the mask must have zeroed something.
    assert!(grad.iter().filter(|g| **g == 0.0).count() > 10);
}

#[test]
fn clipped_ste_matches_the_detach_trick_oracle() {
    let device = device().autodiff();
    let qp = on_device(qp_ref(), &device);
    let (scale, zp) = qp.to_host();
    let (lo, hi) = (
        (0.0 - zp[0] as f32) * scale[0],
        (7.0 - zp[0] as f32) * scale[0],
    );
    let data = Tensor::<2>::random([8, 9], Distribution::Uniform(-3.0, 4.0), &device).into_data();
    let x1 = Tensor::<2>::from_data(data.clone(), &device).require_grad();
    let x2 = Tensor::<2>::from_data(data, &device).require_grad();
    let w = Tensor::<2>::random([8, 9], Distribution::Normal(0.0, 1.0), &device);
    let ours = fake_quant(x1.clone(), &qp, Ste::Clipped);
    // Oracle: clamp (masks the gradient) plus a detached rounding correction.
    let clamped = x2.clone().clamp(lo - 0.5 * scale[0], hi + 0.5 * scale[0]);
    let oracle =
        clamped.clone() + (fake_quant(x2.clone().detach(), &qp, Ste::Identity) - clamped).detach();
    let max_diff = to_vec((ours.clone() - oracle.clone()).abs().max())[0];
    assert!(max_diff <= 1e-6, "forward differs by {max_diff}");
    let g1 = (ours * w.clone()).sum().backward();
    let g2 = (oracle * w).sum().backward();
    let (g1, g2) = (to_vec(x1.grad(&g1).unwrap()), to_vec(x2.grad(&g2).unwrap()));
    // Away from the exact clamp edges the two agree.
    assert_eq!(g1.len(), g2.len());
    let differing = g1.iter().zip(&g2).filter(|(a, b)| a != b).count();
    assert!(differing <= 2, "{differing} gradients differ");
}

#[test]
fn per_channel_clipped_gradient() {
    let device = device().autodiff();
    let scheme = QScheme::affine(2).unwrap().per_channel(1);
    let qp = QParams::from_range(
        Tensor::from_floats([-1.0, -3.0], &device),
        Tensor::from_floats([2.0, 0.0], &device),
        scheme,
    );
    // Channel 0: S = 1, Z = 1, grid [-1, 2]. Channel 1: S = 1, Z = 3, grid [-3, 0].
    let x =
        Tensor::<2>::from_floats([[-1.6, -3.6], [2.4, 0.4], [2.6, 0.6]], &device).require_grad();
    let y = fake_quant(x.clone(), &qp, Ste::Clipped);
    assert_eq!(to_vec(y.clone()), vec![-1.0, -3.0, 2.0, 0.0, 2.0, 0.0]);
    let grads = y.sum().backward();
    assert_eq!(
        to_vec(x.grad(&grads).unwrap()),
        vec![0.0, 0.0, 1.0, 1.0, 0.0, 0.0]
    );
}

/// The reference's "round kills the gradient": a naive quantize-dequantize has a zero
/// gradient, so the layer cannot learn; the STE op fixes it.
#[test]
fn gradient_reaches_the_weights_and_sgd_moves_them() {
    let device = device().autodiff();
    let layer: Linear = LinearConfig::new(6, 3).init(&device);
    let x = Tensor::<2>::random([5, 6], Distribution::Normal(0.0, 1.0), &device);
    let target = Tensor::<2>::random([5, 3], Distribution::Normal(0.0, 1.0), &device);
    let qp = on_device((-1.0, 1.0, 4), &device);
    let (scale, zp) = qp.to_host();

    let loss_of = |w: Tensor<2>| {
        (x.clone().matmul(w) - target.clone())
            .powf_scalar(2.0)
            .mean()
    };

    // Naive: quantize-dequantize with plain ops.
    let w = layer.weight.val();
    let naive = ((w.clone() / scale[0]).round() + zp[0] as f32).clamp(0.0, 15.0);
    let naive = (naive - zp[0] as f32) * scale[0];
    let grads = loss_of(naive).backward();
    let naive_grad = to_vec(layer.weight.grad(&grads).unwrap());
    assert!(
        naive_grad.iter().all(|g| *g == 0.0),
        "round should kill the gradient"
    );

    // STE.
    let grads = loss_of(fake_quant(layer.weight.val(), &qp, Ste::Identity)).backward();
    let ste_grad = to_vec(layer.weight.grad(&grads).unwrap());
    assert!(ste_grad.iter().any(|g| *g != 0.0));

    let before = to_vec(layer.weight.val());
    let grads = GradientsParams::from_grads(grads, &layer);
    let mut optim = SgdConfig::new().init();
    let layer = optim.step(0.1, layer, grads);
    let after = to_vec(layer.weight.val());
    let moved = before.iter().zip(&after).filter(|(b, a)| b != a).count();
    assert_eq!(
        moved,
        before.len(),
        "every weight receives a gradient and moves"
    );
    let _ = layer.valid();
}
