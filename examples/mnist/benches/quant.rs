//! Criterion benchmarks, each a pair measured in the same run so that it can be reported as a
//! ratio: fake-quant vs a plain elementwise op, a QAT training step (the seed's, and LSQ's
//! with learned steps) vs a float one, integer
//! engine vs float inference, an epoch of the pipeline's loop vs burn-train's `Learner`. Runs on every enabled backend, or on those listed in
//! `BURN_QUANT_BENCH_BACKENDS` (comma-separated). `cargo xtask bench` runs it and writes
//! `bench.json` and `bench.md`.

use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{GradientsParams, SgdConfig};
use burn::tensor::{Device, Distribution, Int, Tensor, TensorData};
use burn_quant::backend::{BackendKind, enabled_backends};
use burn_quant::nn::{Mode, QConfig};
use burn_quant::{QParams, QScheme, Ste, StepGradScale, fake_quant, freeze, set_observing};
use burn_quant_mnist::Dataset;
use burn_quant_mnist::data::{IMAGE_PIXELS, MnistSplit};
use burn_quant_mnist::learner::{Classifier, LearnerConfig, fit};
use burn_quant_mnist::models::{MnistModel, Net};
use burn_quant_mnist::train::{TrainConfig, train};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

/// mimalloc reuses the large buffers Burn's CPU backends allocate at every op (see
/// docs/performance.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn backends() -> Vec<BackendKind> {
    match std::env::var("BURN_QUANT_BENCH_BACKENDS") {
        Ok(list) => list
            .split(',')
            .map(|name| BackendKind::parse(name).expect("enabled backend"))
            .collect(),
        Err(_) => enabled_backends(),
    }
}

/// Waits for the device to finish queued work.
fn sync(device: &Device) {
    device.sync().expect("device sync");
}

fn elementwise(c: &mut Criterion) {
    const N: usize = 1 << 20;
    for kind in backends() {
        let device = kind.device();
        let mut group = c.benchmark_group(format!("elementwise/{}", kind.name()));
        group.throughput(Throughput::Elements(N as u64));
        let x = Tensor::<1>::random([N], Distribution::Normal(0.0, 1.0), &device);
        let qp = QParams::from_bounds(-3.0, 3.0, QScheme::affine(8).unwrap(), &device).unwrap();
        sync(&device);
        group.bench_function("mul_scalar", |b| {
            b.iter(|| {
                let _ = (x.clone() * 2.0).into_data();
            })
        });
        group.bench_function("fake_quant", |b| {
            b.iter(|| {
                let _ = fake_quant(x.clone(), &qp, Ste::Identity).into_data();
            })
        });
        let ad = device.clone().autodiff();
        let xa = Tensor::<1>::random([N], Distribution::Normal(0.0, 1.0), &ad);
        let qpa = QParams::from_bounds(-3.0, 3.0, QScheme::affine(8).unwrap(), &ad).unwrap();
        group.bench_function("mul_scalar_backward", |b| {
            b.iter(|| {
                let x = xa.clone().require_grad();
                let g = (x.clone() * 2.0).sum().backward();
                let _ = x.grad(&g).unwrap().into_data();
            })
        });
        group.bench_function("fake_quant_backward", |b| {
            b.iter(|| {
                let x = xa.clone().require_grad();
                let g = fake_quant(x.clone(), &qpa, Ste::Identity).sum().backward();
                let _ = x.grad(&g).unwrap().into_data();
            })
        });
        group.finish();
    }
}

fn batch(device: &Device, n: usize) -> (Tensor<4>, Tensor<1, Int>) {
    let x = Tensor::<4>::random([n, 1, 28, 28], Distribution::Normal(0.0, 1.0), device);
    let labels: Vec<i32> = (0..n as i32).map(|i| i % 10).collect();
    (x, Tensor::from_data(TensorData::new(labels, [n]), device))
}

/// Benchmarks one SGD step (cross-entropy, batch 64) of `model` with `forward` as `name`.
fn bench_step<M: Module>(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    model: M,
    forward: impl Fn(&M, Tensor<4>) -> Tensor<2>,
) {
    let device = model.devices()[0].clone();
    let (x, y) = batch(&device.clone().without_autodiff(), 64);
    let loss = CrossEntropyLossConfig::new().init(&device);
    let momentum = MomentumConfig::new().with_momentum(0.5).with_dampening(0.0);
    let mut optim = SgdConfig::new().with_momentum(Some(momentum)).init();
    let mut model = Some(model);
    group.bench_function(name, |b| {
        b.iter(|| {
            let m = model.take().expect("model");
            let l = loss.forward(forward(&m, x.clone()), y.clone());
            let grads = GradientsParams::from_grads(l.backward(), &m);
            model = Some(optim.step(0.01, m, grads));
            sync(&device);
        })
    });
}

/// `Net` as the `lsq` method trains it at 4 bits: symmetric per-channel weights, every step
/// learned (per-example gradient scale of the activation steps), calibrated on one batch.
fn lsq_net(device: &Device) -> Net {
    let weight = QScheme::symmetric_narrow(4).unwrap().per_channel(0);
    let qconfig = QConfig::reference(4)
        .unwrap()
        .with_weight(weight)
        .with_quantize_bias(true)
        .with_learned_step(true)
        .with_activation_step_grad(StepGradScale::PerExample);
    let net = Net::new(&qconfig, device);
    let (x, _) = batch(device, 64);
    let _ = net.logits(x, Mode::FakeQuant);
    set_observing(net, false)
}

fn train_step(c: &mut Criterion) {
    let qconfig = QConfig::reference(8).unwrap();
    for kind in backends() {
        let ad = kind.device().autodiff();
        let mut group = c.benchmark_group(format!("train_step/{}", kind.name()));
        group.sample_size(20);
        group.throughput(Throughput::Elements(64));
        let float = |m: &Net, x| m.logits(x, Mode::Float);
        bench_step(&mut group, "float", Net::new(&qconfig, &ad), float);
        let fake = |m: &Net, x| m.logits(x, Mode::FakeQuant);
        bench_step(&mut group, "qat", Net::new(&qconfig, &ad), fake);
        bench_step(&mut group, "qat_lsq", lsq_net(&ad), fake);
        group.finish();
    }
}

fn inference(c: &mut Criterion) {
    for kind in backends() {
        let device = kind.device();
        let mut group = c.benchmark_group(format!("inference/{}", kind.name()));
        group.sample_size(20);
        let net = Net::new(&QConfig::reference(8).unwrap(), &device);
        let (calib, _) = batch(&device, 64);
        let _ = net.logits(calib, Mode::FakeQuant).into_data();
        let net = freeze(net).expect("calibrated");
        for n in [1usize, 256] {
            let (x, _) = batch(&device, n);
            group.throughput(Throughput::Elements(n as u64));
            group.bench_with_input(BenchmarkId::new("float", n), &x, |b, x| {
                b.iter(|| net.logits(x.clone(), Mode::Float).into_data())
            });
            group.bench_with_input(BenchmarkId::new("integer", n), &x, |b, x| {
                b.iter(|| net.logits(x.clone(), Mode::Integer).into_data())
            });
        }
        group.finish();
    }
}

/// Images of the mini-epoch of [`epoch`]: 32 batches of 64.
const EPOCH_IMAGES: usize = 32 * 64;

/// One QAT epoch over the same images (32 batches of 64, SGD with momentum, in order) with the
/// pipeline's loop (`loop`) and with burn-train's `Learner` (`learner`: with its metrics,
/// checkpoint, and a validation pass over 64 images).
fn epoch(c: &mut Criterion) {
    let qconfig = QConfig::reference(8).unwrap();
    let labels: Vec<u8> = (0..EPOCH_IMAGES).map(|i| (i % 10) as u8).collect();
    let pixels = (0..EPOCH_IMAGES * IMAGE_PIXELS)
        .map(|i| (i * 7 % 256) as u8)
        .collect();
    let split = MnistSplit { pixels, labels };
    let valid = split.take(64);
    let config = TrainConfig {
        epochs: 1,
        ..TrainConfig::reference_qat()
    };
    let artifact_dir = std::env::temp_dir().join("burn-quant-bench-learner");
    for kind in backends() {
        let device = kind.device();
        let ad = device.clone().autodiff();
        let data = Dataset::from_mnist(&split, &device);
        let mut group = c.benchmark_group(format!("epoch/{}", kind.name()));
        group.sample_size(10);
        group.throughput(Throughput::Elements(EPOCH_IMAGES as u64));
        group.bench_function("loop", |b| {
            b.iter(|| {
                let forward = |m: &Net, x| m.logits(x, Mode::FakeQuant);
                let net = Net::new(&qconfig, &ad);
                let net = train(net, &data, &config, forward, &mut |m, _| m, &mut |_| {});
                sync(&net.devices()[0]);
            })
        });
        let learner = LearnerConfig {
            epochs: 1,
            lr: config.lr,
            momentum: config.momentum,
            batch_size: config.batch_size,
            shuffle_seed: None,
            devices: vec![device.clone()],
            artifact_dir: artifact_dir.clone(),
        };
        group.bench_function("learner", |b| {
            b.iter(|| {
                let _ = std::fs::remove_dir_all(&artifact_dir);
                let net = Classifier::new(Net::new(&qconfig, &ad), Mode::FakeQuant);
                let net = fit(net, &split, &valid, &learner);
                sync(&net.devices()[0]);
            })
        });
        group.finish();
    }
}

criterion_group!(benches, elementwise, train_step, inference, epoch);
criterion_main!(benches);
