//! A quantized convolution of any geometry (stride, padding, dilation, groups) gives the same
//! integers fake-quantized and frozen to the integer engine, at every bit width.

mod common;

use burn::nn::PaddingConfig2d;
use burn::nn::conv::Conv2dConfig;
use burn::tensor::{Distribution, Int, Tensor};
use burn_quant::nn::{QConfig, QConv2d, Quantized};
use burn_quant::{Granularity, quantize, set_observing};
use common::device;

fn ints<const D: usize>(t: Tensor<D, Int>) -> Vec<i64> {
    t.into_data().convert::<i64>().try_to_vec::<i64>().unwrap()
}

/// `(in, out, groups, kernel, stride, dilation, padding, input size)`.
type Case = (
    usize,
    usize,
    usize,
    [usize; 2],
    [usize; 2],
    [usize; 2],
    PaddingConfig2d,
    [usize; 2],
);

fn cases() -> Vec<Case> {
    use PaddingConfig2d::{Explicit, Same, Valid};
    vec![
        (
            3,
            8,
            1,
            [3, 3],
            [1, 1],
            [1, 1],
            Explicit(1, 1, 1, 1),
            [10, 10],
        ),
        (
            8,
            8,
            1,
            [3, 3],
            [2, 2],
            [1, 1],
            Explicit(1, 1, 1, 1),
            [11, 10],
        ),
        (
            4,
            6,
            2,
            [3, 2],
            [2, 1],
            [2, 1],
            Explicit(2, 0, 1, 1),
            [12, 9],
        ),
        (8, 8, 8, [3, 3], [1, 1], [1, 1], Same, [9, 9]),
        (6, 4, 1, [4, 4], [3, 2], [1, 2], Same, [13, 11]),
        (4, 4, 1, [1, 1], [2, 2], [1, 1], Valid, [8, 8]),
    ]
}

#[test]
fn fake_quant_and_integer_conv_agree_bit_for_bit() {
    let device = device();
    for (case, (c_in, c_out, groups, kernel, stride, dilation, padding, [h, w])) in
        cases().into_iter().enumerate()
    {
        for bits in [2, 4, 8] {
            for per_channel in [false, true] {
                let mut qconfig = QConfig::reference(bits)
                    .unwrap()
                    .with_quantize_bias(true)
                    .with_exact_eval(true);
                if per_channel {
                    qconfig.weight = qconfig.weight.per_channel(0);
                }
                let conv = Conv2dConfig::new([c_in, c_out], kernel)
                    .with_stride(stride)
                    .with_dilation(dilation)
                    .with_groups(groups)
                    .with_padding(padding.clone())
                    .init(&device);
                let layer = QConv2d::new(conv, &qconfig, true);
                let batch = || {
                    Tensor::<4>::random([4, c_in, h, w], Distribution::Normal(0.3, 1.0), &device)
                };
                for _ in 0..3 {
                    let _ = layer.forward_fq(Quantized::float(batch()));
                }
                let layer = set_observing(layer, false);
                let x = batch();
                let fake = layer.forward_fq(Quantized::float(x.clone()));
                let output = fake.qparams.expect("an output grid");
                let integer = layer.to_integer(None).unwrap();
                let input = layer.observers.input_qparams(None).unwrap();
                let got = ints(integer.forward(quantize(x, &input)));
                let expected = ints(quantize(fake.tensor, &output));
                let label = format!(
                    "case {case}, {bits} bits, {:?}",
                    if per_channel {
                        Granularity::PerChannel { axis: 0 }
                    } else {
                        Granularity::PerTensor
                    }
                );
                assert_eq!(got.len(), expected.len(), "{label}");
                assert_eq!(got, expected, "{label}");
                assert!(got.iter().any(|&v| v != got[0]), "{label}: constant output");
            }
        }
    }
}
