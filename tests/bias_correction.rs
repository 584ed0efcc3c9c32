//! Bias correction (`QConfig::bias_correction`): it moves a layer's mean fake-quantized output
//! towards the float layer's, the integer engine reproduces the corrected model bit for bit,
//! and the correction survives save/load.

mod common;

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Linear, LinearConfig};
use burn::tensor::{Device, Tensor, TensorData};
use burn_quant::nn::{Mode, QConfig, QLinear, QTensor};
use burn_quant::{QScheme, freeze};
use common::{ConvReluLinear, device, to_vec};

/// Deterministic inputs in `[0, 1)` (a linear congruential sequence), so that the means the
/// correction sees are far from 0.
fn inputs<const D: usize>(shape: [usize; D], seed: u64, device: &Device) -> Tensor<D> {
    let n: usize = shape.iter().product();
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let values: Vec<f32> = (0..n)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 40) as f32 / (1u64 << 24) as f32
        })
        .collect();
    Tensor::from_data(TensorData::new(values, shape), device)
}

/// 3-bit activations, ternary-ish 2-bit symmetric per-channel weights, exact evaluation.
fn qconfig(bias_correction: bool) -> QConfig {
    QConfig::reference(3)
        .unwrap()
        .with_weight(QScheme::symmetric_narrow(2).unwrap().per_channel(0))
        .with_quantize_bias(true)
        .with_exact_eval(true)
        .with_bias_correction(bias_correction)
}

/// `linear` with integer output, calibrated on `batches` batches.
fn calibrated_linear(linear: &Linear, bias_correction: bool, batches: u64) -> QLinear {
    let device = linear.weight.val().device();
    let layer =
        QLinear::new(linear.clone(), &qconfig(bias_correction), true).with_integer_output(true);
    for seed in 0..batches {
        layer.forward(QTensor::new(
            inputs([32, 24], seed, &device),
            Mode::FakeQuant,
        ));
    }
    freeze(layer).unwrap()
}

#[test]
fn the_mean_output_moves_towards_the_float_layer() {
    let device = device();
    let x = Tensor::cat((0..8).map(|s| inputs([32, 24], s, &device)).collect(), 0);
    let linear = LinearConfig::new(24, 6).init(&device);
    let gap = |bias_correction: bool| {
        let layer = calibrated_linear(&linear, bias_correction, 8);
        let float = layer.forward_float(x.clone()).mean_dim(0);
        let fake = layer
            .forward(QTensor::new(x.clone(), Mode::FakeQuant))
            .dequantize()
            .mean_dim(0);
        to_vec((float - fake).abs().sum())[0]
    };
    let (without, with) = (gap(false), gap(true));
    assert!(with < 0.5 * without, "gap {with} with, {without} without");
}

/// A grouped convolution 4 -> 6 channels and a linear layer, in float.
fn float_layers(device: &Device) -> (Conv2d, Linear) {
    let conv = Conv2dConfig::new([4, 6], [3, 3]).with_groups(2);
    (
        conv.init(device),
        LinearConfig::new(6 * 4 * 4, 5).init(device),
    )
}

/// Those layers quantized, with integer logits.
fn small((conv, fc): (Conv2d, Linear), bias_correction: bool) -> ConvReluLinear {
    ConvReluLinear::new(conv, fc, &qconfig(bias_correction), true)
}

#[test]
fn a_corrected_model_runs_on_integers_bit_for_bit_and_survives_save_load() {
    let device = device();
    let layers = float_layers(&device);
    let model = small(layers.clone(), true);
    for seed in 0..6 {
        model.forward(QTensor::new(
            inputs([8, 4, 6, 6], seed, &device),
            Mode::FakeQuant,
        ));
    }
    let model = freeze(model).unwrap();
    let shift = model.conv.observers.bias_correction.as_ref().unwrap();
    assert!(
        shift.mean(&device).is_some(),
        "the input means were recorded"
    );
    let x = inputs([16, 4, 6, 6], 99, &device);
    let fake = to_vec(
        model
            .forward(QTensor::new(x.clone(), Mode::FakeQuant))
            .dequantize(),
    );
    let int = to_vec(
        model
            .forward(QTensor::new(x.clone(), Mode::Integer))
            .dequantize(),
    );
    assert_eq!(fake, int);

    let path = std::env::temp_dir().join(format!("bias_correction_{}.bpk", std::process::id()));
    model.clone().save_file(&path).unwrap();
    let fresh = small(float_layers(&device), true);
    let loaded = freeze(fresh.try_load_file(&path).unwrap()).unwrap();
    let loaded_int = to_vec(
        loaded
            .forward(QTensor::new(x.clone(), Mode::Integer))
            .dequantize(),
    );
    // Flex reads a loaded file's tensors lazily: remove it only after their last use.
    drop(loaded);
    std::fs::remove_file(&path).ok();
    assert_eq!(loaded_int, int);

    // The correction changed the integers: the same layers calibrated without it differ.
    let plain = small(layers, false);
    for seed in 0..6 {
        plain.forward(QTensor::new(
            inputs([8, 4, 6, 6], seed, &device),
            Mode::FakeQuant,
        ));
    }
    let plain = freeze(plain).unwrap();
    let plain_int = to_vec(plain.forward(QTensor::new(x, Mode::Integer)).dequantize());
    assert_ne!(plain_int, int);
}
