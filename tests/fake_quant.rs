//! Forward of the fake-quant op against a scalar reference, on the device under test.

mod common;

use burn::tensor::{Distribution, Tensor, TensorData};
use burn_quant::{QParams, QScheme, Ste, fake_quant, quantize};
use common::{assert_fake_quant_eq, device, fake_quant_ref, to_vec};
use proptest::prelude::*;

fn per_tensor(min: f32, max: f32, bits: u32) -> QParams {
    QParams::from_bounds(min, max, QScheme::affine(bits).unwrap(), &device()).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn per_tensor_matches_scalar_reference(
        bits in 1u32..=8,
        min in -4.0f32..0.0,
        max in 0.0f32..4.0,
        values in prop::collection::vec(-8.0f32..8.0, 1..200),
    ) {
        let qp = per_tensor(min, max, bits);
        let (scale, zp) = qp.to_host();
        let x = Tensor::<1>::from_data(TensorData::new(values.clone(), [values.len()]), &device());
        let y = to_vec(fake_quant(x, &qp, Ste::Identity));
        let expected: Vec<f32> = values
            .iter()
            .map(|&v| fake_quant_ref(v, scale[0], zp[0] as f32, 0, (1 << bits) - 1))
            .collect();
        assert_fake_quant_eq(&y, &expected, &values, &vec![scale[0]; values.len()]);
    }

    #[test]
    fn ties_round_half_to_even(k in -300i32..300, exp in -4i32..2) {
        // A power-of-two scale makes (k + 0.5) * scale an exact tie.
        let scale = 2f32.powi(exp);
        let qp = QParams::from_range(
            Tensor::from_floats([-(scale * 127.0)], &device()),
            Tensor::from_floats([scale * 128.0], &device()),
            QScheme::affine(8).unwrap(),
        );
        let (s, zp) = qp.to_host();
        prop_assume!(s[0] == scale);
        let x = (k as f32 + 0.5) * scale;
        let y = to_vec(fake_quant(Tensor::<1>::from_floats([x], &device()), &qp, Ste::Identity));
        prop_assert_eq!(y[0], fake_quant_ref(x, s[0], zp[0] as f32, 0, 255));
    }
}

#[test]
fn ties_and_out_of_range_values() {
    // S = 1, Z = 2, grid [0, 3] (2 bits, range [-2, 1]).
    let qp = per_tensor(-2.0, 1.0, 2);
    assert_eq!(qp.to_host(), (vec![1.0], vec![2]));
    let x = Tensor::<1>::from_floats([-9.0, -2.5, -1.5, -0.5, 0.5, 1.5, 7.0], &device());
    let y = to_vec(fake_quant(x, &qp, Ste::Identity));
    assert_eq!(y, vec![-2.0, -2.0, -2.0, 0.0, 0.0, 1.0, 1.0]);
}

#[test]
fn per_channel_matches_scalar_reference() {
    let device = device();
    for (shape, axis) in [([4, 3, 2, 2], 0), ([2, 5, 3, 3], 1), ([3, 2, 4, 4], 3)] {
        let channels = shape[axis];
        let mins: Vec<f32> = (0..channels).map(|c| -0.5 - c as f32 * 0.25).collect();
        let maxs: Vec<f32> = (0..channels).map(|c| 0.25 + c as f32 * 0.5).collect();
        for bits in [2, 4, 8] {
            let scheme = QScheme::affine(bits).unwrap().per_channel(axis);
            let qp = QParams::from_range(
                Tensor::from_floats(mins.as_slice(), &device),
                Tensor::from_floats(maxs.as_slice(), &device),
                scheme,
            );
            let (scale, zp) = qp.to_host();
            let x = Tensor::<4>::random(shape, Distribution::Uniform(-3.0, 3.0), &device);
            let values = to_vec(x.clone());
            let y = to_vec(fake_quant(x, &qp, Ste::Identity));
            let inner: usize = shape[axis + 1..].iter().product();
            let channel_of = |i: usize| (i / inner) % channels;
            let expected: Vec<f32> = values
                .iter()
                .enumerate()
                .map(|(i, &v)| {
                    let c = channel_of(i);
                    fake_quant_ref(v, scale[c], zp[c] as f32, 0, (1 << bits) - 1)
                })
                .collect();
            let scales: Vec<f32> = (0..values.len()).map(|i| scale[channel_of(i)]).collect();
            assert_fake_quant_eq(&y, &expected, &values, &scales);
        }
    }
}

#[test]
fn fake_quant_equals_dequantized_quantize() {
    let device = device();
    let qp = per_tensor(-1.3, 2.1, 5);
    let x = Tensor::<2>::random([16, 16], Distribution::Uniform(-2.0, 3.0), &device);
    let via_ints = burn_quant::dequantize(quantize(x.clone(), &qp), &qp);
    let fused = fake_quant(x.clone(), &qp, Ste::Identity);
    let diff = to_vec((via_ints - fused).abs().max());
    assert!(diff[0] <= 1e-6, "max difference {}", diff[0]);
}

#[test]
#[should_panic(expected = "per-channel parameters")]
fn per_channel_count_mismatch_panics() {
    let device = device();
    let qp = QParams::from_range(
        Tensor::from_floats([-1.0, -1.0, -1.0], &device),
        Tensor::from_floats([1.0, 1.0, 1.0], &device),
        QScheme::affine(8).unwrap().per_channel(0),
    );
    let _ = fake_quant(Tensor::<2>::zeros([4, 2], &device), &qp, Ste::Identity);
}
