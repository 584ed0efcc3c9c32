//! BatchNorm folding: the folded convolution against conv + BatchNorm, and the running
//! statistics during QAT, before and after freezing them.

mod common;

use burn::module::{Module, RunningState};
use burn::nn::conv::Conv2dConfig;
use burn::nn::{BatchNorm, BatchNormConfig};
use burn::tensor::{Distribution, Tensor, module::conv2d, ops::ConvOptions};
use burn_quant::nn::{QConfig, QConvBn, Quantized};
use common::{device, to_vec};

fn random_bn(channels: usize, device: &burn::tensor::Device) -> BatchNorm {
    let mut bn = BatchNormConfig::new(channels).init(device);
    let rand = |lo: f32, hi: f32| {
        Tensor::<1>::random(
            [channels],
            Distribution::Uniform(lo as f64, hi as f64),
            device,
        )
    };
    bn.gamma = burn::module::Param::from_tensor(rand(0.5, 2.0));
    bn.beta = burn::module::Param::from_tensor(rand(-1.0, 1.0));
    bn.running_mean = RunningState::new(rand(-0.5, 0.5));
    bn.running_var = RunningState::new(rand(0.2, 3.0));
    bn
}

#[test]
fn folded_conv_equals_conv_then_batch_norm() {
    let device = device();
    for (c_in, c_out, k, groups) in [(1, 4, 3, 1), (6, 8, 3, 2), (3, 5, 1, 1), (4, 4, 5, 4)] {
        let conv = Conv2dConfig::new([c_in, c_out], [k, k])
            .with_groups(groups)
            .init(&device);
        let bn = random_bn(c_out, &device);
        let x = Tensor::<4>::random([2, c_in, 9, 8], Distribution::Normal(0.0, 1.0), &device);
        let reference = bn.valid().forward(conv.forward(x.clone()));
        let layer = QConvBn::new(conv, bn, &QConfig::reference(8).unwrap(), true, false);
        let (weight, bias) = layer.fold_running();
        let options = ConvOptions::new([1, 1], [0, 0], [1, 1], groups);
        let folded = conv2d(x, weight, Some(bias), options);
        let diff = to_vec((folded - reference.clone()).abs().max())[0];
        let scale = to_vec(reference.abs().max())[0].max(1.0);
        assert!(
            diff <= 1e-5 * scale,
            "{c_in}->{c_out} k{k} g{groups}: {diff}"
        );
    }
}

#[test]
fn qat_step_updates_running_statistics_until_frozen() {
    let device = device().autodiff();
    let conv = Conv2dConfig::new([2, 3], [3, 3]).init(&device);
    let bn = BatchNormConfig::new(3).init(&device);
    let layer = QConvBn::new(conv, bn, &QConfig::reference(8).unwrap(), true, true);
    let x = Tensor::<4>::random([4, 2, 6, 6], Distribution::Normal(1.0, 2.0), &device);
    let stats = |l: &QConvBn| {
        (
            to_vec(l.bn.running_mean.value_sync()),
            to_vec(l.bn.running_var.value_sync()),
        )
    };
    let before = stats(&layer);
    let y = layer.forward_fq(Quantized::float(x.clone()));
    // The update follows Burn's convention r ← 0.9 r + 0.1 batch (mean started at 0), with the
    // batch mean of the float convolution of the fake-quantized input.
    let input = layer
        .observers
        .input
        .as_ref()
        .unwrap()
        .fake_quant(x.clone());
    let batch = layer
        .conv
        .forward(input)
        .swap_dims(0, 1)
        .reshape([3, -1])
        .mean_dim(1);
    let after = stats(&layer);
    assert_ne!(before, after);
    for (m, b) in after.0.iter().zip(to_vec(batch)) {
        assert!((m - 0.1 * b).abs() < 1e-5, "{m} vs {}", 0.1 * b);
    }
    // Gradients flow to the convolution weights through the folded, fake-quantized weights.
    let grads = y.tensor.sum().backward();
    assert!(layer.conv.weight.grad(&grads).is_some());

    let frozen = layer.freeze_bn(true);
    let _ = frozen.forward_fq(Quantized::float(x.clone()));
    assert_eq!(stats(&frozen), after);
    // Evaluation (no autodiff) never moves them either.
    let eval = frozen.freeze_bn(false).valid();
    let _ = eval.forward_fq(Quantized::float(x.without_autodiff()));
    assert_eq!(stats(&eval), after);
}
