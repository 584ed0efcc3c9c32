//! Quantized models are ordinary Burn modules: their observers' state survives save/load.

mod common;

use burn::module::Module;
use burn::tensor::{Distribution, Tensor};
use burn_quant::models::{FloatModel, Net, NetBN, QuantizedModel};
use burn_quant::nn::QConfig;
use burn_quant::set_observing;
use common::{device, to_vec};

fn round_trip<M: FloatModel>(name: &str) {
    let device = device();
    let qconfig = QConfig::reference(6).unwrap();
    let model = M::init(&device);
    let qnet = model.quantize(&qconfig);
    let x = Tensor::<4>::random([8, 1, 28, 28], Distribution::Normal(0.0, 1.0), &device);
    let _ = qnet.forward_fq(x.clone());
    let qnet = set_observing(qnet, false);
    let expected = to_vec(qnet.forward_fq(x.clone()));

    let dir = std::env::temp_dir().join(format!("burn-quant-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("model.bpk");
    qnet.save_file(&path).unwrap();
    // A fresh model with empty observers, loaded from the file, predicts identically.
    let loaded = set_observing(M::init(&device).quantize(&qconfig), false).load_file(&path);
    assert_eq!(to_vec(loaded.forward_fq(x)), expected, "{name}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn net_round_trips_observers_exactly() {
    round_trip::<Net>("net");
}

#[test]
fn net_bn_round_trips_observers_exactly() {
    round_trip::<NetBN>("netbn");
}
