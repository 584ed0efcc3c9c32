//! `burn_quant::ops::max_pool2d` (direct kernels on the CPU backends) against Burn's own
//! `max_pool2d`: the output and the input gradient, on random shapes (kernel, stride,
//! padding, dilation, ceil mode), on the device under test (`BURN_QUANT_DEVICE`). On the GPU
//! backends the op is Burn's, so the random cases run on the CPU backends only.

mod common;

use burn::tensor::ops::MaxPoolOptions;
use burn::tensor::{Distribution, Tensor, TensorData};
use burn_quant::ops::max_pool2d;
use common::{assert_close, device, random_cases, to_vec};
use proptest::prelude::*;

/// One pooling: input shape and options.
#[derive(Debug, Clone)]
struct Case {
    x: [usize; 4],
    options: MaxPoolOptions<2>,
}

fn cases() -> impl Strategy<Value = Case> {
    (
        (1usize..3, 1usize..4, 2usize..12, 2usize..12),
        (1usize..4, 1usize..4, 1usize..4, 1usize..4),
        (0usize..2, 0usize..2, 1usize..3, 1usize..3),
        any::<bool>(),
    )
        .prop_filter_map(
            "padding at most half the kernel, the dilated kernel fits",
            |((n, c, h, w), (kh, kw, sh, sw), (ph, pw, dh, dw), ceil_mode)| {
                let span = [dh * (kh - 1) + 1, dw * (kw - 1) + 1];
                let fits = h + 2 * ph >= span[0] && w + 2 * pw >= span[1];
                (fits && ph <= kh / 2 && pw <= kw / 2).then(|| Case {
                    x: [n, c, h, w],
                    options: MaxPoolOptions::new([kh, kw])
                        .with_stride([sh, sw])
                        .with_padding_pairs([(ph, ph), (pw, pw)])
                        .with_dilation([dh, dw])
                        .with_ceil_mode(ceil_mode),
                })
            },
        )
}

/// The output and the input gradient for the loss `Σ y · r`, with `pool`.
fn run(
    case: &Case,
    x: &TensorData,
    r: &TensorData,
    pool: impl Fn(Tensor<4>, MaxPoolOptions<2>) -> Tensor<4>,
) -> [Vec<f32>; 2] {
    let device = device().autodiff();
    let x = Tensor::<4>::from_data(x.clone(), &device).require_grad();
    let y = pool(x.clone(), case.options.clone());
    let r = Tensor::<4>::from_data(r.clone(), &device);
    let grads = (y.clone() * r).sum().backward();
    [to_vec(y), to_vec(x.grad(&grads).expect("input gradient"))]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(random_cases(0)))]

    #[test]
    fn max_pool2d_matches_burn_forward_and_gradient(case in cases()) {
        let device = device();
        let random = |shape: [usize; 4]| {
            Tensor::<4>::random(shape, Distribution::Uniform(-1.0, 1.0), &device).into_data()
        };
        let out = burn::tensor::module::max_pool2d(Tensor::<4>::zeros(case.x, &device), case.options.clone()).dims();
        let (x, r) = (random(case.x), random(out));
        let ours = run(&case, &x, &r, max_pool2d);
        let burn = run(&case, &x, &r, burn::tensor::module::max_pool2d);
        assert_close("output", &ours[0], &burn[0]);
        assert_close("input gradient", &ours[1], &burn[1]);
    }
}

/// Ties keep the first maximum in window order (row-major), as Burn does: the whole gradient
/// of a window goes to one input.
#[test]
fn ties_send_the_gradient_to_the_first_maximum() {
    let device = device().autodiff();
    let x = Tensor::<4>::ones([1, 2, 4, 4], &device).require_grad();
    let y = max_pool2d(x.clone(), MaxPoolOptions::new([2, 2]));
    let ours = to_vec(x.grad(&y.sum().backward()).unwrap());
    let y = burn::tensor::module::max_pool2d(x.clone(), MaxPoolOptions::new([2, 2]));
    let burn = to_vec(x.grad(&y.sum().backward()).unwrap());
    assert_eq!(ours, burn);
    assert_eq!(ours.iter().sum::<f32>(), 8.0);
}
