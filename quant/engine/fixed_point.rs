//! Fixed-point requantization multipliers, applied as gemmlowp/TFLite do, with i32 tensor ops
//! only (so it also runs where 64-bit integers are not available, e.g. WGSL).

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

    /// Scalar reference: `RoundingDivideByPOT(SaturatingRoundingDoublingHighMul(x << left, m0), right)`.
    pub fn apply(self, x: i32) -> i32 {
        let (left, right) = (self.shift.min(0).unsigned_abs(), self.shift.max(0) as u32);
        let x = (x as i64) << left;
        let x = x.clamp(i32::MIN as i64 + 1, i32::MAX as i64);
        let ab = x * self.m0 as i64;
        let nudge = if ab >= 0 { 1 << 30 } else { 1 - (1 << 30) };
        let high = ((ab + nudge) / (1i64 << 31)) as i32; // C++ division truncates toward zero
        rounding_divide_by_pot(high, right)
    }
}

/// gemmlowp's `RoundingDivideByPOT`: `x / 2^exponent`, rounding half away from zero.
pub fn rounding_divide_by_pot(x: i32, exponent: u32) -> i32 {
    if exponent == 0 {
        return x;
    }
    let mask = (1i64 << exponent) - 1;
    let remainder = x as i64 & mask;
    let threshold = (mask >> 1) + i64::from(x < 0);
    (x >> exponent) + i32::from(remainder > threshold)
}

const LIMB: i32 = 15;
const LIMB_MASK: i32 = (1 << LIMB) - 1;

/// Tensor version of [`FixedPointMultiplier::apply`], element by element, with `m0`, `left`
/// (left shift) and `right` (right shift) broadcastable to `x`. Exact for `|x << left| < 2^31`.
///
/// The 62-bit product `|x| · m0` is formed from 15-bit limbs so that every intermediate fits
/// in an i32.
pub fn requantize<const D: usize>(
    x: Tensor<D, Int>,
    m0: Tensor<D, Int>,
    left: Tensor<D, Int>,
    right: Tensor<D, Int>,
) -> Tensor<D, Int> {
    let x = x.bitwise_left_shift(left);
    let negative = x.clone().lower_elem(0).int();
    let a = x.abs();
    let limbs = |v: Tensor<D, Int>| {
        (
            v.clone().bitwise_and_scalar(LIMB_MASK),
            v.clone()
                .bitwise_right_shift_scalar(LIMB)
                .bitwise_and_scalar(LIMB_MASK),
            v.bitwise_right_shift_scalar(2 * LIMB),
        )
    };
    let (a0, a1, a2) = limbs(a);
    let (b0, b1, b2) = limbs(m0);
    // Rounding nudge: 2^30 for x >= 0, 2^30 - 1 for x < 0 (limbs [n·0x7fff, n·0x7fff, 1 - n]).
    let nudge_low = negative.clone() * LIMB_MASK;
    let nudge_top = negative.clone().neg() + 1;
    // Column sums of the limb products, each below 2^31, with carries.
    let c0 = a0.clone() * b0.clone() + nudge_low.clone();
    let c1 = a0.clone() * b1.clone()
        + a1.clone() * b0.clone()
        + nudge_low
        + c0.bitwise_right_shift_scalar(LIMB);
    let c2 = a0 * b2.clone()
        + a1.clone() * b1.clone()
        + a2.clone() * b0
        + nudge_top
        + c1.bitwise_right_shift_scalar(LIMB);
    let c3 = a1 * b2.clone() + a2.clone() * b1 + c2.clone().bitwise_right_shift_scalar(LIMB);
    let c4 = a2 * b2 + c3.clone().bitwise_right_shift_scalar(LIMB);
    // floor(P / 2^31) = (d2 >> 1) + d3 · 2^14 + d4 · 2^29.
    let d2 = c2.bitwise_and_scalar(LIMB_MASK);
    let d3 = c3.bitwise_and_scalar(LIMB_MASK);
    let high = d2.bitwise_right_shift_scalar(1)
        + d3.bitwise_left_shift_scalar(LIMB - 1)
        + c4.bitwise_left_shift_scalar(2 * LIMB - 1);
    let sign = negative.clone() * -2 + 1;
    let high = high * sign;
    // RoundingDivideByPOT with per-element exponents.
    let floor = high.clone().bitwise_right_shift(right.clone());
    let remainder = high - floor.clone().bitwise_left_shift(right.clone());
    let threshold =
        (right.ones_like().bitwise_left_shift(right) - 1).bitwise_right_shift_scalar(1) + negative;
    floor + remainder.greater(threshold).int()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Exact `x · m0 / 2^(31 + shift)` rounded to nearest, in i128.
    fn exact_round(m: FixedPointMultiplier, x: i32) -> f64 {
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
    fn scalar_apply_rounds_like_exact_arithmetic() {
        let ms = [
            0.999_999,
            0.5,
            0.25 + 1e-9,
            0.123_456_7,
            3.1e-3,
            7.7e-5,
            1.5,
            3.0,
        ];
        for &m in &ms {
            let f = FixedPointMultiplier::from_real(m);
            for x in (-70_000..70_000)
                .step_by(37)
                .chain([0, 1, -1, 1 << 24, -(1 << 24)])
            {
                let exact = exact_round(f, x);
                let got = f.apply(x) as f64;
                // gemmlowp rounds twice (at 2^-31, then at 2^-n): the error is at most
                // 1/2 + 2^-(n+1), and the result is the exact rounding away from ties.
                let right = f.shift.max(0);
                let bound = 0.5 + 2f64.powi(-right - 1);
                assert!(
                    (got - exact).abs() <= bound,
                    "m {m}, x {x}: {got} vs {exact}"
                );
                if (exact - exact.round()).abs() < 0.5 - 2f64.powi(-right - 1) - 1e-9 {
                    assert_eq!(got, exact.round(), "m {m}, x {x}");
                }
            }
        }
    }

    #[test]
    fn rounding_divide_rounds_half_away_from_zero() {
        assert_eq!(rounding_divide_by_pot(5, 1), 3);
        assert_eq!(rounding_divide_by_pot(-5, 1), -3);
        assert_eq!(rounding_divide_by_pot(4, 1), 2);
        assert_eq!(rounding_divide_by_pot(-7, 2), -2);
        assert_eq!(rounding_divide_by_pot(6, 2), 2);
    }
}
