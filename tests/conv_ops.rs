//! `burn_quant::ops::conv2d` (direct kernels on the CPU backends, CubeCL kernels for grouped
//! convolutions on the GPU backends) against Burn's own `conv2d`: the forward pass and the
//! gradients of the input, the weight and the bias, within 1e-5 relative, on random shapes
//! (strides, asymmetric padding, dilation, groups), on the device under test
//! (`BURN_QUANT_DEVICE`).

mod common;

use burn::tensor::ops::ConvOptions;
use burn::tensor::{Distribution, Tensor, TensorData};
use burn_quant::ops::conv2d;
use common::{assert_close, device, random_cases, to_vec};
use proptest::prelude::*;

/// One convolution: shapes and options.
#[derive(Debug, Clone)]
struct Case {
    x: [usize; 4],
    weight: [usize; 4],
    options: ConvOptions<2>,
    bias: bool,
}

fn cases() -> impl Strategy<Value = Case> {
    (
        (1usize..3, 1usize..4, 1usize..4, 1usize..4),
        (1usize..4, 1usize..4, 3usize..12, 3usize..12),
        (
            (1usize..3, 1usize..3),
            (0usize..3, 0usize..3, 0usize..3, 0usize..3),
        ),
        ((1usize..3, 1usize..3), any::<bool>()),
    )
        .prop_filter_map(
            "the dilated kernel fits the padded input",
            |((n, groups, depth, per_group), (kh, kw, h, w), (stride, pads), (dilation, bias))| {
                let (top, bottom, left, right) = pads;
                let padded = [h + top + bottom, w + left + right];
                let span = [dilation.0 * (kh - 1) + 1, dilation.1 * (kw - 1) + 1];
                (padded[0] >= span[0] && padded[1] >= span[1]).then(|| Case {
                    x: [n, groups * depth, h, w],
                    weight: [groups * per_group, depth, kh, kw],
                    options: ConvOptions::new_with_padding(
                        [stride.0, stride.1],
                        [(top, bottom), (left, right)],
                        [dilation.0, dilation.1],
                        groups,
                    ),
                    bias,
                })
            },
        )
}

/// The output and the gradients of `x`, `weight` and `bias` for the loss `Σ y · r` (`r`
/// random, so every output position weighs differently), with `conv`.
fn run(
    case: &Case,
    data: &[TensorData; 4],
    conv: impl Fn(Tensor<4>, Tensor<4>, Option<Tensor<1>>, ConvOptions<2>) -> Tensor<4>,
) -> [Vec<f32>; 4] {
    let device = device().autodiff();
    let x = Tensor::<4>::from_data(data[0].clone(), &device).require_grad();
    let weight = Tensor::<4>::from_data(data[1].clone(), &device).require_grad();
    let bias = Tensor::<1>::from_data(data[2].clone(), &device).require_grad();
    let y = conv(
        x.clone(),
        weight.clone(),
        case.bias.then(|| bias.clone()),
        case.options.clone(),
    );
    let r = Tensor::<4>::from_data(data[3].clone(), &device);
    let grads = (y.clone() * r).sum().backward();
    let bias_grad = match case.bias {
        true => to_vec(bias.grad(&grads).expect("bias gradient")),
        false => Vec::new(),
    };
    [
        to_vec(y),
        to_vec(x.grad(&grads).expect("input gradient")),
        to_vec(weight.grad(&grads).expect("weight gradient")),
        bias_grad,
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(random_cases(6)))]

    #[test]
    fn direct_conv2d_matches_burn_forward_and_gradients(case in cases()) {
        let device = device();
        let random = |shape: Vec<usize>| {
            Tensor::<1>::random([shape.iter().product::<usize>()], Distribution::Uniform(-1.0, 1.0), &device)
                .into_data()
                .convert::<f32>()
        };
        let reshape = |d: TensorData, shape: &[usize]| TensorData::new(d.try_to_vec::<f32>().unwrap(), shape.to_vec());
        let out = burn::tensor::module::conv2d(
            Tensor::<4>::zeros(case.x, &device),
            Tensor::<4>::zeros(case.weight, &device),
            None,
            case.options.clone(),
        )
        .dims();
        let data = [
            reshape(random(case.x.to_vec()), &case.x),
            reshape(random(case.weight.to_vec()), &case.weight),
            random(vec![case.weight[0]]),
            reshape(random(out.to_vec()), &out),
        ];
        let ours = run(&case, &data, conv2d);
        let burn = run(&case, &data, burn::tensor::module::conv2d);
        for (k, what) in ["output", "input gradient", "weight gradient", "bias gradient"].iter().enumerate() {
            assert_close(what, &ours[k], &burn[k]);
        }
    }
}

/// Without `require_grad` on the input (the first layer of a network), only the weight and
/// bias gradients are computed, and they equal Burn's (grouped, as `Net`'s second layer).
#[test]
fn an_untracked_input_gets_no_gradient() {
    let device = device().autodiff();
    let x = Tensor::<4>::random([2, 2, 8, 8], Distribution::Uniform(-1.0, 1.0), &device);
    let weight =
        Tensor::<4>::random([4, 1, 3, 3], Distribution::Uniform(-1.0, 1.0), &device).require_grad();
    let options = ConvOptions::new([1, 1], [0, 0], [1, 1], 2);
    let y = conv2d(x.clone(), weight.clone(), None, options.clone());
    let grads = y.sum().backward();
    assert!(x.grad(&grads).is_none());
    let ours = to_vec(weight.grad(&grads).unwrap());
    let y = burn::tensor::module::conv2d(x, weight.clone(), None, options);
    let grads = y.sum().backward();
    assert_close(
        "weight gradient",
        &ours,
        &to_vec(weight.grad(&grads).unwrap()),
    );
}
