//! Quantized models are ordinary Burn modules: weights and observers survive save/load, so
//! the loaded model computes the same fake-quantized and integer outputs.

#[path = "../../../tests/common/mod.rs"]
mod common;

use burn::tensor::{Distribution, Tensor};
use burn_quant::nn::{Mode, QConfig};
use burn_quant::{freeze, set_observing};
use burn_quant_mnist::models::{MnistModel, Net, NetBN};
use common::{device, to_vec};

fn round_trip<M: MnistModel>(name: &str) {
    let device = device();
    let qconfig = QConfig::reference(6).unwrap();
    let qnet = M::new(&qconfig, &device);
    let x = Tensor::<4>::random([8, 1, 28, 28], Distribution::Normal(0.0, 1.0), &device);
    let _ = qnet.logits(x.clone(), Mode::FakeQuant);
    let qnet = freeze(qnet).unwrap();
    let expected = to_vec(qnet.logits(x.clone(), Mode::FakeQuant));
    let expected_int = to_vec(qnet.logits(x.clone(), Mode::Integer));

    let dir = std::env::temp_dir().join(format!("burn-quant-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("model.bpk");
    qnet.save_file(&path).unwrap();
    // A fresh model with empty observers, loaded from the file, predicts identically.
    let loaded = set_observing(M::new(&qconfig, &device), false)
        .try_load_file(&path)
        .unwrap();
    assert_eq!(
        to_vec(loaded.logits(x.clone(), Mode::FakeQuant)),
        expected,
        "{name}"
    );
    assert_eq!(
        to_vec(loaded.logits(x, Mode::Integer)),
        expected_int,
        "{name}"
    );
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
