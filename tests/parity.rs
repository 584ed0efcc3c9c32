//! Every enabled backend gives the same fake-quant output and STE gradient on the same input.

mod common;

use burn::tensor::{Device, Distribution, Tensor, TensorData};
use burn_quant::backend::enabled_backends;
use burn_quant::{QParams, QScheme, Ste, fake_quant};
use common::{assert_fake_quant_eq, to_vec};

fn run(device: &Device, x: &TensorData, bits: u32, axis: Option<usize>) -> (Vec<f32>, Vec<f32>) {
    let device = device.clone().autodiff();
    let (scheme, mins, maxs) = match axis {
        None => (QScheme::affine(bits).unwrap(), vec![-1.1], vec![1.7]),
        Some(axis) => (
            QScheme::affine(bits).unwrap().per_channel(axis),
            vec![-1.1, -0.4, -2.0],
            vec![1.7, 0.3, 0.9],
        ),
    };
    let qp = QParams::from_range(
        Tensor::from_floats(mins.as_slice(), &device),
        Tensor::from_floats(maxs.as_slice(), &device),
        scheme,
    );
    let x = Tensor::<3>::from_data(x.clone(), &device).require_grad();
    let y = fake_quant(x.clone(), &qp, Ste::Clipped);
    let grads = y.clone().sum().backward();
    (to_vec(y), to_vec(x.grad(&grads).unwrap()))
}

#[test]
fn all_backends_agree() {
    let backends = enabled_backends();
    let reference = backends[0].device();
    let x =
        Tensor::<3>::random([3, 3, 50], Distribution::Uniform(-2.5, 2.5), &reference).into_data();
    let values = x.clone().convert::<f32>().try_to_vec::<f32>().unwrap();
    for bits in [1, 2, 3, 4, 8] {
        for axis in [None, Some(0), Some(1)] {
            let (y0, g0) = run(&reference, &x, bits, axis);
            for kind in &backends[1..] {
                let (y, g) = run(&kind.device(), &x, bits, axis);
                // Scales are within an ulp across backends; outputs agree up to near-ties.
                let scale_bound = 4.0 / ((1u32 << bits) - 1) as f32;
                assert_fake_quant_eq(&y, &y0, &values, &vec![scale_bound; values.len()]);
                let differing = g.iter().zip(&g0).filter(|(a, b)| a != b).count();
                assert!(
                    differing <= 1,
                    "{}: {differing} gradients differ",
                    kind.name()
                );
            }
        }
    }
    eprintln!(
        "parity checked on: {}",
        backends
            .iter()
            .map(|b| b.name())
            .collect::<Vec<_>>()
            .join(", ")
    );
}
