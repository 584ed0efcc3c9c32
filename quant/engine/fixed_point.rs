//! Fixed-point requantization multipliers, applied with i32 tensor ops only (so they also run
//! where 64-bit integers are not available, e.g. WGSL).

use burn::tensor::{Int, Tensor};

/// A real multiplier `M > 0` as `M ≈ m0 · 2^-31 · 2^-shift` with `m0` in `[2^30, 2^31)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FixedPointMultiplier {
    /// Mantissa in `[2^30, 2^31)`.
    pub m0: i32,
    /// Right shift (negative: left shift, for `M >= 1`).
    pub shift: i32,
}

impl FixedPointMultiplier {
    /// Nearest fixed-point representation of `m`; panics unless `m` is finite and positive.
    ///
    /// ```
    /// use burn_quant::engine::FixedPointMultiplier;
    /// let m = FixedPointMultiplier::from_real(0.75);
    /// assert_eq!((m.m0, m.shift), (3 << 29, 0));
    /// assert_eq!(m.apply(100), 75);
    /// ```
    pub fn from_real(m: f64) -> Self {
        assert!(
            m.is_finite() && m > 0.0,
            "requantization multiplier must be finite and positive, got {m}"
        );
        // m = q · 2^e with q in [0.5, 1).
        let mut e = m.log2().floor() as i32 + 1;
        let mut q = m / 2f64.powi(e);
        if q >= 1.0 {
            q /= 2.0;
            e += 1;
        } else if q < 0.5 {
            q *= 2.0;
            e -= 1;
        }
        let mut m0 = (q * 2f64.powi(31)).round() as i64;
        if m0 == 1 << 31 {
            m0 = 1 << 30;
            e += 1;
        }
        Self {
            m0: m0 as i32,
            shift: -e,
        }
    }

    /// The real value represented.
    pub fn to_real(self) -> f64 {
        self.m0 as f64 * 2f64.powi(-31 - self.shift)
    }

    /// Scalar reference: `x · m0 · 2^-(31 + shift)` rounded once to nearest, ties away from
    /// zero, computed exactly.
    pub fn apply(self, x: i32) -> i32 {
        let (left, right) = (self.shift.min(0).unsigned_abs(), self.shift.max(0) as u32);
        let x = ((x as i64) << left).clamp(-(i32::MAX as i64), i32::MAX as i64);
        let total = 31 + right;
        if total > 63 {
            // The product has at most 62 bits (|x| < 2^31, m0 < 2^31): below half of 2^total.
            return 0;
        }
        let product = x.unsigned_abs() * self.m0 as u64;
        let magnitude = (product + (1u64 << (total - 1))) >> total;
        (magnitude as i64 * x.signum()) as i32
    }
}

const LIMB: i32 = 15;
const LIMB_MASK: i32 = (1 << LIMB) - 1;

/// Tensor version of [`FixedPointMultiplier::apply`], element by element, with `m0`, `left`
/// (left shift) and `right` (right shift) broadcastable to `x`. Exact for `|x << left| < 2^31`.
///
/// gemmlowp rounds twice (its doubling high multiply rounds at `2^-31`, then the shift rounds
/// again), which is off by one for a few per mille of the small accumulators of 4-bit layers.
/// Here the 62-bit product `P = |x| · m0` is formed exactly from 15-bit limbs (every
/// intermediate fits in an i32); with `H = floor(P / 2^31)` the result is rounded once:
/// `(H + 2^(n-1)) >> n` for `n >= 1`, and `H` plus the half bit of `P` for `n = 0`.
pub fn requantize<const D: usize>(
    x: Tensor<D, Int>,
    m0: Tensor<D, Int>,
    left: Tensor<D, Int>,
    right: Tensor<D, Int>,
) -> Tensor<D, Int> {
    let b0 = m0.clone().bitwise_and_scalar(LIMB_MASK);
    let b1 = m0
        .bitwise_right_shift_scalar(LIMB)
        .bitwise_and_scalar(LIMB_MASK);
    let x = x.bitwise_left_shift(left);
    let offset = right
        .ones_like()
        .bitwise_left_shift(right.clone())
        .bitwise_right_shift_scalar(1);
    let no_shift = right.clone().equal_elem(0).int();
    multiply_and_round(
        x,
        |a| a * b0.clone(),
        |a| a * b1.clone(),
        |high, half| (high + offset).bitwise_right_shift(right) + half * no_shift,
    )
}

/// [`requantize`] with one multiplier for every element: scalar operands, fewer passes.
pub fn requantize_uniform<const D: usize>(
    x: Tensor<D, Int>,
    m: FixedPointMultiplier,
) -> Tensor<D, Int> {
    let (b0, b1) = (m.m0 & LIMB_MASK, (m.m0 >> LIMB) & LIMB_MASK);
    let x = match m.shift {
        s if s < 0 => x.bitwise_left_shift_scalar(-s),
        _ => x,
    };
    let right = m.shift.max(0);
    multiply_and_round(
        x,
        |a| a * b0,
        |a| a * b1,
        |high, half| match right {
            0 => high + half,
            n => (high + (1 << (n - 1))).bitwise_right_shift_scalar(n),
        },
    )
}

/// `sign(x) · round(|x| · m0 / 2^(31 + n))`, given multiplication by the two low limbs of
/// `m0` (its top limb is 1: `m0` lies in `[2^30, 2^31)`) and the final rounding shift, which
/// receives `floor(P / 2^31)` and the half bit of `P`.
fn multiply_and_round<const D: usize>(
    x: Tensor<D, Int>,
    mul_b0: impl Fn(Tensor<D, Int>) -> Tensor<D, Int>,
    mul_b1: impl Fn(Tensor<D, Int>) -> Tensor<D, Int>,
    round_shift: impl FnOnce(Tensor<D, Int>, Tensor<D, Int>) -> Tensor<D, Int>,
) -> Tensor<D, Int> {
    let sign = x.clone().sign();
    let a = x.abs();
    let a0 = a.clone().bitwise_and_scalar(LIMB_MASK);
    let a1 = a
        .clone()
        .bitwise_right_shift_scalar(LIMB)
        .bitwise_and_scalar(LIMB_MASK);
    let a2 = a.bitwise_right_shift_scalar(2 * LIMB);
    // Column sums of the limb products (each below 2^31), with carries; b2 = 1.
    let c0 = mul_b0(a0.clone());
    let c1 = mul_b1(a0.clone()) + mul_b0(a1.clone()) + c0.bitwise_right_shift_scalar(LIMB);
    let c2 = a0 + mul_b1(a1.clone()) + mul_b0(a2.clone()) + c1.bitwise_right_shift_scalar(LIMB);
    let c3 = a1 + mul_b1(a2.clone()) + c2.clone().bitwise_right_shift_scalar(LIMB);
    let c4 = a2 + c3.clone().bitwise_right_shift_scalar(LIMB);
    // H = (d2 >> 1) + d3 · 2^14 + c4 · 2^29; the half bit of P is d2 & 1.
    let d2 = c2.bitwise_and_scalar(LIMB_MASK);
    let d3 = c3.bitwise_and_scalar(LIMB_MASK);
    let half = d2.clone().bitwise_and_scalar(1);
    let high = d2.bitwise_right_shift_scalar(1)
        + d3.bitwise_left_shift_scalar(LIMB - 1)
        + c4.bitwise_left_shift_scalar(2 * LIMB - 1);
    round_shift(high, half) * sign
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Exact `x · m0 / 2^(31 + shift)` (a dyadic rational with at most 62 significant bits,
    /// compared in f64 only where that is exact enough for the assertion).
    fn exact(m: FixedPointMultiplier, x: i32) -> f64 {
        (x as f64) * m.m0 as f64 / 2f64.powi(31 + m.shift)
    }

    #[test]
    fn from_real_is_within_half_an_ulp_of_m0() {
        let mut m = 1e-6f64;
        while m < 4.0 {
            let f = FixedPointMultiplier::from_real(m);
            assert!((1 << 30..=i32::MAX).contains(&f.m0), "{m}: m0 {}", f.m0);
            let rel = (f.to_real() - m).abs() / m;
            assert!(rel <= 2f64.powi(-31), "{m}: relative error {rel}");
            m *= 1.0137;
        }
    }

    #[test]
    fn powers_of_two_and_their_neighbours() {
        for k in 0..20 {
            let p = 2f64.powi(-k);
            let f = FixedPointMultiplier::from_real(p);
            assert_eq!((f.m0, f.shift), (1 << 30, k - 1), "2^-{k}");
            for m in [
                p * (1.0 - 1e-12),
                p * (1.0 + 1e-12),
                p * (1.0 - 2f64.powi(-32)),
            ] {
                let f = FixedPointMultiplier::from_real(m);
                assert!((1 << 30..=i32::MAX).contains(&f.m0));
                assert!((f.to_real() - m).abs() / m <= 2f64.powi(-31));
            }
        }
    }

    #[test]
    fn scalar_apply_rounds_once_like_exact_arithmetic() {
        let ms = [
            0.999_999,
            0.5,
            0.25 + 1e-9,
            0.123_456_7,
            0.017_921_15,
            3.1e-3,
            7.7e-5,
            1.5,
            3.0,
        ];
        for &m in &ms {
            let f = FixedPointMultiplier::from_real(m);
            let xs = (-70_000..70_000).step_by(37);
            for x in xs.chain([0, 1, -1, 83, -83, 1 << 24, -(1 << 24)]) {
                let exact = exact(f, x);
                let got = f.apply(x) as f64;
                assert!((got - exact).abs() <= 0.5, "m {m}, x {x}: {got} vs {exact}");
                if (exact.abs().fract() - 0.5).abs() < 1e-9 {
                    assert_eq!(got.abs(), exact.abs().ceil(), "ties away from zero");
                }
            }
        }
    }

    /// `apply` (u64 arithmetic) against the same rounding in u128, for any i32 and shift.
    #[test]
    fn apply_equals_the_wide_reference() {
        let reference = |m: FixedPointMultiplier, x: i32| -> i32 {
            let (left, right) = (m.shift.min(0).unsigned_abs(), m.shift.max(0) as u32);
            let x = ((x as i64) << left).clamp(-(i32::MAX as i64), i32::MAX as i64);
            let total = 31 + right;
            let product = x.unsigned_abs() as u128 * m.m0 as u128;
            let magnitude = (product + (1u128 << (total - 1))) >> total;
            (magnitude as i64 * x.signum()) as i32
        };
        use rand::{RngCore, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut m = 1e-12f64;
        while m < 2.0 {
            let f = FixedPointMultiplier::from_real(m);
            for _ in 0..200 {
                let x = (rng.next_u64() as i64 >> (rng.next_u64() % 40)) as i32;
                assert_eq!(f.apply(x), reference(f, x), "m {m}, x {x}");
            }
            m *= 1.37;
        }
    }

    #[test]
    fn small_accumulators_are_rounded_once() {
        // gemmlowp's two roundings give 2 here (83 · M = 1.4875); one rounding gives 1.
        let f = FixedPointMultiplier::from_real(0.017_921_148_682_944_477);
        assert_eq!((f.m0, f.shift), (1_231_531_960, 5));
        assert_eq!(f.apply(83), 1);
        assert_eq!(f.apply(-83), -1);
        // An exact tie (M = 1/2): away from zero.
        let half = FixedPointMultiplier::from_real(0.5);
        assert_eq!((half.apply(3), half.apply(-3)), (2, -2));
    }
}
