//! Exact integer dot products computed with f32 operations.
//!
//! An f32 holds every integer up to `2^24`, so a convolution or matmul of integer-valued f32
//! operands is exact as long as every partial sum stays within `2^24`. Where the bound is
//! larger, the weight is split into base-`2^s` digits small enough for each product to be
//! exact, and the digit products are combined in i32.

use burn::tensor::{Int, Tensor};

/// Integers up to here (inclusive) are exact in f32.
const F32_EXACT: u64 = 1 << 24;

/// `apply(x, w)` computed exactly as integers, for integer-valued `x` with
/// `|x| <= x_bound`, integer `w` with `|w| <= w_bound`, and `apply` a bilinear map summing at
/// most `fan_in` products per output (a convolution or matmul without bias).
///
/// Returns `None` when even one-bit digits could not keep the partial sums exact
/// (`x_bound · fan_in > 2^24`).
///
/// ```
/// use burn::tensor::{Int, Tensor};
/// use burn_quant::default_device;
/// use burn_quant::engine::exact_products;
/// let device = default_device().unwrap();
/// let x = Tensor::<2>::from_floats([[255.0; 1000]], &device);
/// let w = Tensor::<2, Int>::from_ints([[255]; 1000], &device);
/// // 255 · 255 · 1000 = 65,025,000 is beyond 2^24: the weight is split into digits.
/// let acc = exact_products(x, w, 255, 255, 1000, |x, w| x.matmul(w)).unwrap();
/// assert_eq!(acc.into_scalar::<i32>(), 65_025_000);
/// ```
pub fn exact_products<const D: usize, const DW: usize>(
    x: Tensor<D>,
    w: Tensor<DW, Int>,
    x_bound: u64,
    w_bound: u64,
    fan_in: usize,
    apply: impl Fn(Tensor<D>, Tensor<DW>) -> Tensor<D>,
) -> Option<Tensor<D, Int>> {
    let term_bound = x_bound.max(1) * fan_in.max(1) as u64;
    // Largest weight magnitude for which every partial sum stays exact.
    let digit_bound = F32_EXACT / term_bound;
    if digit_bound == 0 {
        return None;
    }
    Some(split_products(x, w, w_bound, digit_bound, &apply))
}

fn split_products<const D: usize, const DW: usize>(
    x: Tensor<D>,
    w: Tensor<DW, Int>,
    w_bound: u64,
    digit_bound: u64,
    apply: &impl Fn(Tensor<D>, Tensor<DW>) -> Tensor<D>,
) -> Tensor<D, Int> {
    if w_bound <= digit_bound {
        return apply(x, w.float()).int();
    }
    // w = high · 2^s + low with low in [0, 2^s), 2^s - 1 <= digit_bound.
    let s = (digit_bound + 1).ilog2();
    let base = 1i32 << s;
    let low = w.clone().remainder_scalar(base);
    let low = low.clone() + low.lower_elem(0).int() * base;
    let high = (w - low.clone()).div_scalar(base);
    let high = split_products(x.clone(), high, (w_bound >> s) + 1, digit_bound, apply);
    apply(x, low.float()).int() + high * base
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::default_device;
    use crate::test_support::ints;
    use burn::tensor::{Distribution, TensorData};

    #[test]
    fn split_products_equal_integer_matmul() {
        let device = default_device().unwrap();
        for (w_bound, fan_in) in [(7, 50), (255, 1000), (255, 360), (127, 4096)] {
            let x = Tensor::<2>::random([8, fan_in], Distribution::Uniform(-255.0, 255.0), &device)
                .round();
            let w = Tensor::<2>::random(
                [fan_in, 5],
                Distribution::Uniform(-(w_bound as f64), w_bound as f64),
                &device,
            )
            .round()
            .int();
            let exact = ints(x.clone().int().matmul(w.clone()));
            let got = exact_products(x, w, 255, w_bound, fan_in, |x, w| x.matmul(w)).unwrap();
            assert_eq!(ints(got), exact, "w_bound {w_bound}, fan_in {fan_in}");
        }
    }

    #[test]
    fn too_large_a_fan_in_is_refused() {
        let device = default_device().unwrap();
        let x = Tensor::<2>::zeros([1, 2], &device);
        let w = Tensor::<2, Int>::from_data(TensorData::new(vec![1, 1], [2, 1]), &device);
        assert!(exact_products(x, w, 1 << 24, 1, 2, |x, w| x.matmul(w)).is_none());
    }
}
