//! Binary (bipolar) weights `{-α, +α}`: the observer's `α = mean|w|` per channel, the forward
//! `α·sign(w)`, its straight-through estimators and the learned step's gradient (checked
//! against analytic values and finite differences), and a binary model on the integer engine.

mod common;

use burn::config::Config;
use burn::module::Module;
use burn::nn::{LinearConfig, conv::Conv2dConfig};
use burn::tensor::{Device, Distribution, Tensor, TensorData};
use burn_quant::nn::{Mode, QConfig, QConv2dConfig, QLinearConfig, QReLU, QTensor};
use burn_quant::{
    MinMaxObserverConfig, QParams, QScheme, QuantError, Ste, bipolar_fake_quant, freeze, quantize,
};
use common::{device, to_vec};

fn weight(device: &Device) -> Tensor<2> {
    Tensor::<2>::random([3, 8], Distribution::Normal(0.0, 1.0), device)
}

fn rows(t: Tensor<2>) -> Vec<Vec<f32>> {
    let cols = t.dims()[1];
    to_vec(t).chunks(cols).map(<[f32]>::to_vec).collect()
}

fn sign(v: f32) -> f32 {
    if v >= 0.0 { 1.0 } else { -1.0 }
}

#[test]
fn the_observer_takes_the_mean_magnitude_per_channel_and_the_forward_is_its_sign() {
    let device = device();
    let w = weight(&device);
    let observer = MinMaxObserverConfig::new(QScheme::bipolar().per_channel(0))
        .with_channels(3)
        .init(&device);
    let y = observer.fake_quant(w.clone());
    let scales = to_vec(observer.checked_qparams().unwrap().scale);
    for ((row, out), scale) in rows(w.clone()).iter().zip(rows(y)).zip(&scales) {
        let mean_abs = row.iter().map(|v| v.abs()).sum::<f32>() / row.len() as f32;
        assert!(
            (scale - mean_abs).abs() <= 1e-6 * mean_abs,
            "{scale} vs {mean_abs}"
        );
        let expected: Vec<f32> = row.iter().map(|&v| sign(v) * scale).collect();
        assert_eq!(out, expected);
    }
    // The integers are the signs, 0 included as +1.
    let qparams = observer.checked_qparams().unwrap();
    let q = quantize(w.clone(), &qparams).into_data().convert::<i64>();
    let signs: Vec<i64> = to_vec(w).iter().map(|&v| sign(v) as i64).collect();
    assert_eq!(q.try_to_vec::<i64>().unwrap(), signs);
    let zero = Tensor::<2>::zeros([3, 1], &device);
    let q0 = quantize(zero, &qparams).into_data().convert::<i64>();
    assert_eq!(q0.try_to_vec::<i64>().unwrap(), vec![1, 1, 1]);
}

#[test]
fn bipolar_schemes_are_one_signed_bit_only() {
    use burn_quant::{Granularity, QMode, Signedness};
    for (bits, signedness) in [(2, Signedness::Signed), (1, Signedness::Unsigned)] {
        let scheme = QScheme::new(bits, signedness, QMode::Bipolar, Granularity::PerTensor);
        assert!(
            matches!(scheme, Err(QuantError::InvalidSetting(_))),
            "{scheme:?}"
        );
    }
    assert!(QScheme::bipolar().narrow().is_err());
    // A layer configuration with binary weights round-trips through its JSON.
    let qconfig = QConfig::reference(1)
        .unwrap()
        .with_weight(QScheme::bipolar().per_channel(0));
    let json = qconfig.to_string();
    let loaded = QConfig::load_binary(json.as_bytes()).unwrap();
    assert_eq!(loaded.weight, qconfig.weight);
}

/// `L = Σ c·y`: the input's gradient is `c` (identity) or `c·1[|x| <= α]` (clipped), the
/// step's `g·Σ c·sign(x)` per channel, equal to `g` times the finite difference of `L` in
/// `α` (exact: `y` is linear in `α`).
#[test]
fn gradients_match_the_straight_through_estimators_and_finite_differences() {
    let device = device().autodiff();
    let x_host = Tensor::<2>::random([3, 8], Distribution::Normal(0.0, 1.0), &device);
    let c = Tensor::<2>::random([3, 8], Distribution::Normal(0.0, 1.0), &device);
    let steps = [0.3f32, 0.8, 1.5];
    let grad_scale = 0.25;
    let scheme = QScheme::bipolar().per_channel(0);
    let loss_at = |steps: &[f32], ste: Ste| {
        let step =
            Tensor::<1>::from_data(TensorData::new(steps.to_vec(), [3]), &device).require_grad();
        let qparams = QParams {
            scale: step.clone(),
            zero_point: Tensor::zeros([3], &device),
            scheme,
        };
        let x = x_host.clone().detach().require_grad();
        let y = bipolar_fake_quant(x.clone(), &qparams, ste, grad_scale);
        let loss = (y * c.clone()).sum();
        (loss, x, step)
    };
    let (xs, cs) = (rows(x_host.clone()), rows(c.clone()));
    for ste in [Ste::Identity, Ste::Clipped] {
        let (loss, x, step) = loss_at(&steps, ste);
        let grads = loss.backward();
        let dx = rows(x.grad(&grads).unwrap());
        let ds = to_vec(step.grad(&grads).unwrap());
        for ch in 0..3 {
            let expected_dx: Vec<f32> = xs[ch]
                .iter()
                .zip(&cs[ch])
                .map(|(&v, &g)| match ste {
                    Ste::Clipped if v.abs() > steps[ch] => 0.0,
                    _ => g,
                })
                .collect();
            assert_eq!(dx[ch], expected_dx, "{ste:?}, channel {ch}");
            let analytic: f32 = xs[ch].iter().zip(&cs[ch]).map(|(&v, &g)| g * sign(v)).sum();
            assert!(
                (ds[ch] - grad_scale * analytic).abs() < 1e-5,
                "{ste:?} {ch}"
            );
            let h = 1e-2;
            let mut up = steps;
            let mut down = steps;
            up[ch] += h;
            down[ch] -= h;
            let value = |s: &[f32]| loss_at(s, ste).0.into_scalar::<f32>();
            let fd = (value(&up) - value(&down)) / (2.0 * h);
            assert!(
                (ds[ch] - grad_scale * fd).abs() < 1e-3 * (1.0 + fd.abs()),
                "{ste:?} channel {ch}: {} vs finite difference {}",
                ds[ch],
                grad_scale * fd
            );
        }
    }
}

/// A binary-weight model (1-bit weights and activations, integer logits) runs on the integer
/// engine bit for bit, and its weights there are the signs.
#[test]
fn a_binary_model_is_bit_exact_on_the_integer_engine() {
    #[derive(Module, Debug)]
    struct Binary {
        conv: burn_quant::nn::QConv2d,
        relu: QReLU,
        fc: burn_quant::nn::QLinear,
    }
    let device = device();
    for activation_bits in [1, 2, 4, 8] {
        let qconfig = QConfig::reference(activation_bits)
            .unwrap()
            .with_weight(QScheme::bipolar().per_channel(0))
            .with_quantize_bias(true)
            .with_exact_eval(true);
        let conv = QConv2dConfig::new(Conv2dConfig::new([1, 6], [3, 3]), qconfig)
            .with_observe_input(true)
            .init(&device)
            .unwrap();
        let fc = QLinearConfig::new(LinearConfig::new(6 * 6 * 6, 5), qconfig)
            .with_integer_output(true)
            .init(&device)
            .unwrap();
        let model = Binary {
            conv,
            relu: QReLU::new(),
            fc,
        };
        let forward = |m: &Binary, x: Tensor<4>, mode| {
            let h = m.relu.forward(m.conv.forward(QTensor::new(x, mode)));
            m.fc.forward(h.flatten(1, 3)).dequantize()
        };
        let batch = || Tensor::<4>::random([16, 1, 8, 8], Distribution::Uniform(0.0, 1.0), &device);
        for _ in 0..3 {
            let _ = forward(&model, batch(), Mode::FakeQuant);
        }
        let model = freeze(model).unwrap();
        let x = batch();
        let fake = to_vec(forward(&model, x.clone(), Mode::FakeQuant));
        let int = to_vec(forward(&model, x, Mode::Integer));
        assert_eq!(fake, int, "{activation_bits}-bit activations");
        // Not vacuous (at 1-bit activations this small random model may output its bias).
        assert!(
            activation_bits == 1 || fake.iter().any(|&v| v != fake[0]),
            "{activation_bits} bits: constant output"
        );
        let weights = model.conv.conv.weight.val();
        let qparams = model.conv.observers.weight.checked_qparams().unwrap();
        let q = quantize(weights, &qparams).into_data().convert::<i64>();
        assert!(
            q.try_to_vec::<i64>()
                .unwrap()
                .iter()
                .all(|&v| v == 1 || v == -1)
        );
    }
}
