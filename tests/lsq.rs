//! The LSQ op (learned step size): its forward is the fake-quant forward, its backward the
//! clipped STE for the input and LSQ's step gradient, checked against a scalar reference, an
//! oracle of Burn ops, finite differences, and a few steps of training.

mod common;

use burn::module::Module;
use burn::nn::{LinearConfig, PaddingConfig2d, conv::Conv2dConfig};
use burn::optim::{GradientsParams, SgdConfig};
use burn::tensor::{Device, Distribution, Tensor, TensorData};
use burn_quant::nn::{Mode, QConfig, QTensor};
use burn_quant::{
    MinMaxObserverConfig, QParams, QScheme, Ste, StepGradScale, fake_quant, freeze, lsq_fake_quant,
    lsq_grad_scale, set_observing,
};
use common::{ConvReluLinear, assert_fake_quant_eq, device, fake_quant_ref, in_range_ref, to_vec};

const SHAPE: [usize; 3] = [4, 3, 5];
const AXIS: usize = 1;

fn random(dist: Distribution, device: &Device) -> Tensor<3> {
    Tensor::<3>::random(SHAPE, dist, device)
}

/// Parameters with `steps` (one per tensor or one per channel along [`AXIS`]) as a tracked
/// tensor on `device`, zero points `zero_points`.
fn qparams(steps: &[f32], zero_points: &[f32], scheme: QScheme, device: &Device) -> QParams {
    let n = steps.len();
    let scheme = if n > 1 {
        scheme.per_channel(AXIS)
    } else {
        scheme
    };
    QParams {
        scale: Tensor::from_data(TensorData::new(steps.to_vec(), [n]), device).require_grad(),
        zero_point: Tensor::from_data(TensorData::new(zero_points.to_vec(), [n]), device),
        scheme,
    }
}

fn channel(i: usize, n: usize) -> usize {
    if n == 1 { 0 } else { (i / SHAPE[2]) % SHAPE[1] }
}

/// The LSQ step gradient of `sum(c · y)`, on the host: per element `c · (round(v) − v)` on the
/// grid, `c · (qmin − Z)` below, `c · (qmax − Z)` above, summed per channel, times `g`.
fn step_grad_ref(x: &[f32], c: &[f32], qp: (&[f32], &[f32]), grid: (i32, i32), g: f32) -> Vec<f32> {
    let (steps, zps) = qp;
    let mut out = vec![0.0f64; steps.len()];
    for i in 0..x.len() {
        let ch = channel(i, steps.len());
        let (s, z) = (steps[ch], zps[ch]);
        let v = x[i] / s;
        let q = v.round_ties_even() + z;
        let d = if q < grid.0 as f32 {
            grid.0 as f32 - z
        } else if q > grid.1 as f32 {
            grid.1 as f32 - z
        } else {
            v.round_ties_even() - v
        };
        out[ch] += (c[i] * d) as f64;
    }
    out.iter().map(|&v| v as f32 * g).collect()
}

struct Case {
    scheme: QScheme,
    steps: Vec<f32>,
    zero_points: Vec<f32>,
}

fn cases() -> Vec<Case> {
    let affine = QScheme::affine(3).unwrap();
    let signed = QScheme::symmetric(2).unwrap();
    vec![
        Case {
            scheme: affine,
            steps: vec![0.4],
            zero_points: vec![3.0],
        },
        Case {
            scheme: signed,
            steps: vec![0.3, 0.7, 1.1],
            zero_points: vec![0.0; 3],
        },
    ]
}

#[test]
fn forward_is_the_fake_quant_forward() {
    let device = device().autodiff();
    let x = random(Distribution::Uniform(-3.0, 3.0), &device);
    for case in cases() {
        let qp = qparams(&case.steps, &case.zero_points, case.scheme, &device);
        let lsq = to_vec(lsq_fake_quant(x.clone(), &qp, 0.5));
        let fq = to_vec(fake_quant(x.clone(), &qp, Ste::Clipped));
        assert_eq!(lsq, fq);
        // Without autodiff (the backend's own op, through fusion on the GPU).
        let plain = device.clone().inner();
        let qp_plain = QParams {
            scale: qp.scale.clone().inner(),
            zero_point: qp.zero_point.clone().inner(),
            scheme: qp.scheme,
        };
        assert_eq!(
            to_vec(lsq_fake_quant(x.clone().inner(), &qp_plain, 0.5)),
            fq
        );
        assert!(!plain.is_autodiff());
        let xs = to_vec(x.clone());
        let n = case.steps.len();
        let (expected, scales): (Vec<f32>, Vec<f32>) = xs
            .iter()
            .enumerate()
            .map(|(i, &v)| {
                let (s, z) = (case.steps[channel(i, n)], case.zero_points[channel(i, n)]);
                let grid = (case.scheme.qmin(), case.scheme.qmax());
                (fake_quant_ref(v, s, z, grid.0, grid.1), s)
            })
            .unzip();
        assert_fake_quant_eq(&lsq, &expected, &xs, &scales);
    }
}

#[test]
fn gradients_match_the_scalar_reference() {
    let device = device().autodiff();
    let x = random(Distribution::Uniform(-3.0, 3.0), &device).require_grad();
    let c = random(Distribution::Normal(0.0, 1.0), &device);
    let (xs, cs) = (to_vec(x.clone()), to_vec(c.clone()));
    for case in cases() {
        let qp = qparams(&case.steps, &case.zero_points, case.scheme, &device);
        let g = lsq_grad_scale(xs.len() / case.steps.len(), case.scheme.qmax());
        let y = lsq_fake_quant(x.clone(), &qp, g);
        let grads = (y * c.clone()).sum().backward();
        let grid = (case.scheme.qmin(), case.scheme.qmax());
        let n = case.steps.len();
        // Input: the clipped STE.
        let dx = to_vec(x.grad(&grads).unwrap());
        for i in 0..xs.len() {
            let (s, z) = (case.steps[channel(i, n)], case.zero_points[channel(i, n)]);
            let expected = if in_range_ref(xs[i], s, z, grid.0, grid.1) {
                cs[i]
            } else {
                0.0
            };
            assert_eq!(dx[i], expected, "element {i}");
        }
        assert!(dx.contains(&0.0), "nothing was clipped");
        // Step: LSQ's gradient.
        let ds = to_vec(qp.scale.grad(&grads).unwrap());
        let expected = step_grad_ref(&xs, &cs, (&case.steps, &case.zero_points), grid, g);
        assert_eq!(ds.len(), expected.len());
        for (a, e) in ds.iter().zip(&expected) {
            assert!(
                (a - e).abs() <= 1e-4 * e.abs().max(1.0),
                "{ds:?} vs {expected:?}"
            );
        }
    }
}

/// The step gradient is the derivative of the forward with the decisions of `round` and of the
/// clamp held at the current step: `y = (v + (round(v0) − v0)) · S` on the grid, `(qmin − Z) · S`
/// below and `(qmax − Z) · S` above, `v = x / S`, `v0 = x / S0`. That surrogate, written with
/// Burn's ops, is differentiated by Burn's autodiff (`g = 1`) and by central finite differences.
#[test]
fn gradients_match_autodiff_and_finite_differences_of_the_surrogate() {
    let device = device().autodiff();
    let x = random(Distribution::Uniform(-2.5, 2.5), &device);
    let c = random(Distribution::Normal(0.0, 1.0), &device);
    for case in cases() {
        let n = case.steps.len();
        let z = case.zero_points[0];
        assert!(case.zero_points.iter().all(|&v| v == z));
        let (low, high) = (case.scheme.qmin() as f32 - z, case.scheme.qmax() as f32 - z);
        let shape = if n > 1 { [1, n, 1] } else { [1, 1, 1] };
        let surrogate = |s: Tensor<1>, s0: Tensor<1>| {
            let v0 = x.clone() / s0.reshape(shape);
            let rounded = v0.clone().round();
            let offset = (rounded.clone() - v0).detach();
            let below = rounded.clone().lower_elem(low);
            let above = rounded.greater_elem(high);
            let level = (x.clone() / s.clone().reshape(shape) + offset)
                .mask_fill(below, low)
                .mask_fill(above, high);
            level * s.reshape(shape)
        };
        let step = Tensor::<1>::from_floats(case.steps.as_slice(), &device).require_grad();
        let loss = (surrogate(step.clone(), step.clone().detach()) * c.clone()).sum();
        let oracle = to_vec(step.grad(&loss.backward()).unwrap());

        let qp = qparams(&case.steps, &case.zero_points, case.scheme, &device);
        let loss = (lsq_fake_quant(x.clone(), &qp, 1.0) * c.clone()).sum();
        let got = to_vec(qp.scale.grad(&loss.backward()).unwrap());
        for (a, e) in got.iter().zip(&oracle) {
            assert!(
                (a - e).abs() <= 1e-4 * e.abs().max(1.0),
                "{got:?} vs {oracle:?}"
            );
        }

        let h = 1e-2f32;
        for ch in 0..n {
            let at = |delta: f32| {
                let mut steps = case.steps.clone();
                steps[ch] += delta;
                let s = Tensor::<1>::from_floats(steps.as_slice(), &device);
                let s0 = Tensor::<1>::from_floats(case.steps.as_slice(), &device);
                to_vec((surrogate(s, s0) * c.clone()).sum())[0] as f64
            };
            let fd = ((at(h) - at(-h)) / (2.0 * h as f64)) as f32;
            assert!(
                (got[ch] - fd).abs() <= 1e-3 * fd.abs().max(1.0),
                "channel {ch}: {} vs finite difference {fd}",
                got[ch]
            );
        }
    }
}

/// A few steps of gradient descent on the step alone lower the quantization error of a
/// badly initialised quantizer.
#[test]
fn the_step_learns() {
    let device = device().autodiff();
    let x = random(Distribution::Normal(0.0, 1.0), &device);
    let scheme = QScheme::symmetric(3).unwrap();
    let mse = |step: f32| {
        let qp = qparams(&[step], &[0.0], scheme, &device);
        let err = lsq_fake_quant(x.clone(), &qp, 1.0) - x.clone();
        let loss = (err.clone() * err).mean();
        let grad = to_vec(qp.scale.grad(&loss.backward()).unwrap())[0];
        (to_vec(loss)[0], grad)
    };
    let mut step = 0.05f32;
    let (first, _) = mse(step);
    for _ in 0..100 {
        let (_, grad) = mse(step);
        step -= 0.05 * grad;
    }
    let (last, _) = mse(step);
    assert!(last < 0.5 * first, "MSE {first} -> {last} (step {step})");
}

/// LSQ's `N` for an activation step: counted per example, the step's gradient is `sqrt(B)`
/// times the one with the whole batch of `B` examples counted, and nothing else changes.
#[test]
fn per_example_step_gradients_are_sqrt_batch_times_larger() {
    let device = device().autodiff();
    let x = Tensor::<4>::random([16, 3, 4, 4], Distribution::Normal(0.0, 1.0), &device);
    let step_grad = |count: StepGradScale| {
        let observer = MinMaxObserverConfig::new(QScheme::affine(3).unwrap())
            .with_learned_step(true)
            .with_step_grad(count)
            .init(&device);
        observer.fake_quant(x.clone());
        let observer = set_observing(observer, false);
        let y = observer.fake_quant(x.clone());
        let grads = (y.clone() * y.clone()).sum().backward();
        let multiplier = observer.learned.as_ref().unwrap().multiplier.val();
        (to_vec(y), to_vec(multiplier.grad(&grads).unwrap())[0])
    };
    let (y_all, all) = step_grad(StepGradScale::AllElements);
    let (y_example, per_example) = step_grad(StepGradScale::PerExample);
    assert_eq!(y_all, y_example);
    assert!(all != 0.0);
    let ratio = per_example / all;
    assert!(
        (ratio - 4.0).abs() < 1e-4,
        "{per_example} / {all} = {ratio}"
    );
}

/// The model of the layer tests: a padded convolution 2 -> 4 channels on 6 × 6, ReLU, linear.
fn small(qconfig: QConfig, device: &Device) -> ConvReluLinear {
    let conv = Conv2dConfig::new([2, 4], [3, 3]).with_padding(PaddingConfig2d::Same);
    let fc = LinearConfig::new(4 * 6 * 6, 3);
    ConvReluLinear::new(conv.init(device), fc.init(device), &qconfig, false)
}

/// LSQ in layers: calibrate with observing on, train the steps with it off, freeze, and the
/// integer engine equals the fake-quantized model bit for bit with the learned steps.
#[test]
fn learned_steps_train_freeze_and_run_on_integers() {
    let device = device().autodiff();
    let qconfig = QConfig::new(
        QScheme::affine(3).unwrap(),
        QScheme::symmetric(3).unwrap().per_channel(0),
    )
    .with_learned_step(true)
    .with_quantize_bias(true)
    .with_exact_eval(true);
    let batch = |d: &Device| Tensor::<4>::random([8, 2, 6, 6], Distribution::Normal(0.0, 1.0), d);
    let model = small(qconfig, &device);
    for _ in 0..3 {
        model.forward(QTensor::new(batch(&device), Mode::FakeQuant));
    }
    let calibrated = model.conv.observers.weight.qparams().to_host().0;
    let mut model = set_observing(model, false);
    let target = Tensor::<2>::random([8, 3], Distribution::Normal(0.0, 1.0), &device);
    let x = batch(&device);
    let mut optim = SgdConfig::new().init();
    let mut losses = Vec::new();
    for _ in 0..30 {
        let y = model
            .forward(QTensor::new(x.clone(), Mode::FakeQuant))
            .dequantize();
        let err = y - target.clone();
        let loss = (err.clone() * err).mean();
        losses.push(to_vec(loss.clone())[0]);
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(0.05, model, grads);
    }
    assert!(
        losses[29] < losses[0],
        "loss {} -> {}",
        losses[0],
        losses[29]
    );
    // The step started at the calibrated one and moved.
    let learned = model.conv.observers.weight.learned.as_ref().unwrap();
    assert_eq!(to_vec(learned.initial.value_sync()), calibrated);
    let p = to_vec(learned.multiplier.val());
    assert!(p.iter().any(|&v| v != 1.0), "multiplier {p:?}");
    let output_p = to_vec(
        model
            .fc
            .observers
            .output
            .learned
            .as_ref()
            .unwrap()
            .multiplier
            .val(),
    );
    assert_ne!(output_p, vec![1.0]);

    let model = freeze(model.valid()).unwrap();
    let plain = device.clone().inner();
    let x = batch(&plain);
    let fake = model.forward(QTensor::new(x.clone(), Mode::FakeQuant));
    let int = model.forward(QTensor::new(x, Mode::Integer));
    let grid = fake.grid().unwrap().clone();
    let (scale, _) = grid.to_host();
    let learned_scale = model.fc.observers.output.qparams().to_host().0;
    assert_eq!(scale, learned_scale);
    assert_eq!(
        to_vec(fake.dequantize()),
        to_vec(int.dequantize()),
        "integer engine and fake-quant differ with learned steps"
    );
}
