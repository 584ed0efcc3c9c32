//! The integer engine's pieces against scalar and float references, on the device under test.

mod common;

use burn::nn::PaddingConfig2d;
use burn::tensor::{Distribution, Int, Tensor, TensorData, module::conv2d};
use burn_quant::engine::{
    ConvEpilogue, ConvGeometry, FixedPointMultiplier, IntConv2d, Requantizer, int_max_pool2d,
    int_relu, requantize, requantize_uniform,
};
use burn_quant::{QParams, QScheme};
use common::device;
use rand::{RngCore, SeedableRng, rngs::StdRng};

fn ints<const D: usize>(t: Tensor<D, Int>) -> Vec<i64> {
    t.into_data().convert::<i64>().try_to_vec::<i64>().unwrap()
}

#[test]
fn tensor_requantize_equals_scalar_reference() {
    let device = device();
    let mut rng = StdRng::seed_from_u64(7);
    let mut xs: Vec<i32> = (0..4000)
        .map(|i| {
            let magnitude = 1i64 << (i % 31);
            (rng.next_u64() as i64 % magnitude) as i32
        })
        .collect();
    xs.extend([
        0,
        1,
        -1,
        i32::MAX,
        -i32::MAX,
        1 << 30,
        -(1 << 30),
        12345,
        -12345,
    ]);
    let n = xs.len();
    for m in [
        0.999_999_9,
        0.75,
        0.5,
        0.5 - 1e-10,
        0.25 + 1e-9,
        0.0123,
        3.7e-5,
        1e-9,
        1.0,
        2.5,
    ] {
        let f = FixedPointMultiplier::from_real(m);
        let (left, right) = ((-f.shift).max(0), f.shift.max(0));
        // Keep |x << left| below 2^31.
        let xs: Vec<i32> = xs
            .iter()
            .map(|&x| x.clamp(-(i32::MAX >> left), i32::MAX >> left))
            .collect();
        let full = |v: i32| Tensor::<1, Int>::from_data(TensorData::new(vec![v; n], [n]), &device);
        let x = Tensor::<1, Int>::from_data(TensorData::new(xs.clone(), [n]), &device);
        let got = ints(requantize(x.clone(), full(f.m0), full(left), full(right)));
        let uniform = ints(requantize_uniform(x, f));
        for (i, &x) in xs.iter().enumerate() {
            assert_eq!(got[i], f.apply(x) as i64, "m {m}, x {x}");
            assert_eq!(uniform[i], f.apply(x) as i64, "uniform: m {m}, x {x}");
        }
    }
}

#[test]
fn requantizer_per_channel_and_clamp() {
    let device = device();
    let r = Requantizer::new(0.5, &[0.1, 0.2], 0.05, 3, (0, 15), &device);
    // M = [1, 2]: acc [[4, 4], [-10, 100]] → [[7, 11], [0, 15]] after + 3 and clamp.
    let acc = Tensor::<2, Int>::from_data(TensorData::new(vec![4, 4, -10, 100], [2, 2]), &device);
    assert_eq!(ints(r.apply(acc, 1)), vec![7, 11, 0, 15]);
}

/// Random convolutions: channels, groups, kernel, stride, dilation, padding (valid, same,
/// explicit and asymmetric) and input size, with a fitting kernel.
fn random_convs(seed: u64, count: usize) -> Vec<(usize, usize, usize, ConvGeometry, [usize; 2])> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut pick = |n: u64| (rng.next_u64() % n) as usize;
    let mut out = Vec::new();
    while out.len() < count {
        let groups = [1, 2, 4][pick(3)];
        let (c_in, c_out) = (groups * (1 + pick(3)), groups * (1 + pick(3)));
        let padding = match pick(4) {
            0 => PaddingConfig2d::Valid,
            1 => PaddingConfig2d::Same,
            2 => {
                let p = pick(3);
                PaddingConfig2d::Explicit(p, p, p, p)
            }
            _ => PaddingConfig2d::Explicit(pick(3), pick(3), pick(3), pick(3)),
        };
        let geometry = ConvGeometry {
            kernel_size: [1 + pick(4), 1 + pick(4)],
            stride: [1 + pick(3), 1 + pick(3)],
            dilation: [1 + pick(2), 1 + pick(2)],
            padding,
        };
        let size = [4 + pick(9), 4 + pick(9)];
        if geometry.output_size(size[0], size[1]).is_some() {
            out.push((c_in, c_out, groups, geometry, size));
        }
    }
    out
}

/// The integer convolution equals a float convolution of the same (small) integers, the
/// input padded with its zero point, for random geometries.
#[test]
fn int_conv_accumulates_exactly_for_any_geometry() {
    let device = device();
    for (case, (c_in, c_out, groups, geometry, [h, w])) in
        random_convs(11, 40).into_iter().enumerate()
    {
        let [kh, kw] = geometry.kernel_size;
        let x =
            Tensor::<4>::random([2, c_in, h, w], Distribution::Uniform(0.0, 15.0), &device).floor();
        let weight = Tensor::<4>::random(
            [c_out, c_in / groups, kh, kw],
            Distribution::Uniform(-8.0, 8.0),
            &device,
        )
        .floor();
        let b = Tensor::<1>::random([c_out], Distribution::Uniform(-100.0, 100.0), &device).floor();
        let zero_point = 5;
        let expected = conv2d(
            x.clone() - zero_point as f32,
            weight.clone(),
            Some(b.clone()),
            geometry.options(groups, h, w),
        );
        let qp = QParams::from_bounds(0.0, 1.0, QScheme::affine(8).unwrap(), &device).unwrap();
        let conv = IntConv2d::new(
            weight
                .int()
                .reshape([groups, c_out / groups, (c_in / groups) * kh * kw]),
            b.int(),
            zero_point,
            geometry.clone(),
            Requantizer::new(1.0, &[1.0], 1.0, 0, (0, 255), &device),
            qp,
        );
        assert_eq!(
            ints(conv.accumulate(x.int())),
            ints(expected.int()),
            "case {case}: {geometry:?}, groups {groups}"
        );
    }
}

/// Both routes of the integer convolution (the CPU backends' direct one and the tensor-op one)
/// give the same integers, per tensor and per channel, for random geometries.
#[test]
fn int_conv_routes_agree_for_any_geometry() {
    let device = device();
    let mut rng = StdRng::seed_from_u64(3);
    // Stride 1 has a route of its own on the CPU backends: more cases of it.
    let stride_one = random_convs(11, 30)
        .into_iter()
        .filter_map(|(i, o, g, geometry, size)| {
            let geometry = ConvGeometry {
                stride: [1, 1],
                ..geometry
            };
            geometry
                .output_size(size[0], size[1])
                .map(|_| (i, o, g, geometry, size))
        });
    let convs = random_convs(5, 30).into_iter().chain(stride_one).chain([(
        40,
        40,
        20,
        ConvGeometry::valid([3, 3]),
        [9, 8],
    )]);
    for (case, (c_in, c_out, groups, geometry, [h, w])) in convs.enumerate() {
        let per_channel = case % 2 == 1;
        let [kh, kw] = geometry.kernel_size;
        let depth = (c_in / groups) * kh * kw;
        let x = Tensor::<4>::random([3, c_in, h, w], Distribution::Uniform(0.0, 16.0), &device)
            .floor()
            .int();
        let weight = Tensor::<3>::random(
            [groups, c_out / groups, depth],
            Distribution::Uniform(-8.0, 8.0),
            &device,
        );
        let weight_scales: Vec<f32> = (0..if per_channel { c_out } else { 1 })
            .map(|_| 0.01 + (rng.next_u64() % 1000) as f32 * 1e-4)
            .collect();
        let qp = QParams::from_bounds(0.0, 1.0, QScheme::affine(4).unwrap(), &device).unwrap();
        let conv = IntConv2d::new(
            weight.floor().int(),
            Tensor::<1>::random([c_out], Distribution::Uniform(-300.0, 300.0), &device)
                .floor()
                .int(),
            3,
            geometry.clone(),
            Requantizer::new(0.5, &weight_scales, 0.4, 6, (0, 15), &device),
            qp,
        );
        let direct = ints(conv.forward(x.clone()));
        let ops = conv.forward_with_tensor_ops(x.clone());
        assert_eq!(
            direct,
            ints(ops.clone()),
            "case {case}: {geometry:?}, groups {groups}"
        );
        // A floor (ReLU) and max-pooling inside the convolution's kernel: the integers of the
        // three ops one after the other.
        let floor = [i32::MIN, 6, 9][case % 3];
        let max_pool = [None, Some(2), Some(3)][case / 3 % 3];
        let epilogue = ConvEpilogue { floor, max_pool };
        let separate = match max_pool {
            Some(kernel) => int_max_pool2d(int_relu(ops, floor), kernel),
            None => int_relu(ops, floor),
        };
        assert_eq!(
            ints(conv.forward_fused(x, epilogue)),
            ints(separate),
            "case {case}: {geometry:?}, groups {groups}, {epilogue:?}"
        );
    }
}

#[test]
fn int_max_pool_floors_odd_sizes() {
    let device = device();
    let values: Vec<i32> = (0..25).collect();
    let q = Tensor::<4, Int>::from_data(TensorData::new(values, [1, 1, 5, 5]), &device);
    assert_eq!(ints(int_max_pool2d(q, 2)), vec![6, 8, 16, 18]);
}

/// Operands beyond 16 bits (a 20-bit input grid) take the tensor-op route on every backend and
/// give the same integers as it.
#[test]
fn int_conv_with_wide_operands_equals_the_tensor_route() {
    let device = device();
    let x = Tensor::<4>::random([2, 2, 6, 6], Distribution::Uniform(0.0, 1e6), &device)
        .floor()
        .int();
    let weight = Tensor::<3>::random([1, 3, 18], Distribution::Uniform(-40.0, 40.0), &device);
    let qp = QParams::from_bounds(0.0, 1.0, QScheme::affine(8).unwrap(), &device).unwrap();
    let conv = IntConv2d::new(
        weight.floor().int(),
        Tensor::<1, Int>::zeros([3], &device),
        500_000,
        ConvGeometry::valid([3, 3]),
        Requantizer::new(2e-6, &[1.0], 1.0, 100, (0, 255), &device),
        qp,
    );
    let y = ints(conv.forward(x.clone()));
    assert_eq!(y, ints(conv.forward_with_tensor_ops(x)));
    assert!(
        y.iter().any(|&v| v != 0 && v != 255),
        "some values inside the grid"
    );
}
