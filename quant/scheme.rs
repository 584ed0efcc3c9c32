//! How a tensor is quantized: bit width, signedness, affine or symmetric, granularity.

use burn::serde::{Deserialize, Serialize};

use crate::QuantError;

/// Smallest supported bit width.
pub const MIN_BITS: u32 = 1;
/// Largest supported bit width.
pub const MAX_BITS: u32 = 16;

/// Whether the integer grid is signed (`[-2^(b-1), 2^(b-1)-1]`) or unsigned (`[0, 2^b-1]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(crate = "burn::serde")]
pub enum Signedness {
    /// `[0, 2^b - 1]`, the reference's choice for weights and activations.
    Unsigned,
    /// `[-2^(b-1), 2^(b-1) - 1]`.
    Signed,
}

/// How the real range is mapped onto the integer grid (Burn's own `QuantMode` has no affine
/// mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(crate = "burn::serde")]
pub enum QMode {
    /// Scale and zero point from `[min, max]` (Jacob et al. 2018).
    Affine,
    /// Scale from `max(|min|, |max|)`, zero point fixed at the middle of the grid
    /// (0 when signed, `2^(b-1)` when unsigned).
    Symmetric,
    /// Binary `{-S, +S}`: the integer is the sign (`-1` or `+1`, `sign(0) = +1`), the scale
    /// `S` the mean absolute value its observer saw (XNOR-Net's `α`), zero point 0. One bit,
    /// signed only ([`QScheme::bipolar`]).
    Bipolar,
}

/// One set of quantization parameters for the whole tensor, or one per channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(crate = "burn::serde")]
pub enum Granularity {
    /// A single scale and zero point.
    PerTensor,
    /// One scale and zero point per index along `axis`.
    PerChannel {
        /// The channel axis (e.g. 0 for conv weights `[out, in, kh, kw]`).
        axis: usize,
    },
}

/// A validated quantization scheme: the integer grid a tensor is fake-quantized to.
///
/// Not to be confused with Burn's `burn::tensor::quantization::QuantScheme`, which describes
/// how Burn *stores* a quantized tensor (8/4/2-bit values, symmetric only, packed storage).
/// `QScheme` covers any bit width in `1..=16`, affine grids with a zero point and per-channel
/// axes, and is what observers, fake-quant and the integer engine of this crate use.
///
/// ```
/// use burn_quant::{QScheme, Signedness};
/// let scheme = QScheme::affine(4).unwrap();
/// assert_eq!((scheme.qmin(), scheme.qmax()), (0, 15));
/// let signed = QScheme::symmetric(8).unwrap();
/// assert_eq!(signed.signedness(), Signedness::Signed);
/// assert!(QScheme::affine(0).is_err());
/// // Narrow range: at 2 bits the ternary grid {-1, 0, 1}.
/// let ternary = QScheme::symmetric_narrow(2).unwrap();
/// assert_eq!((ternary.qmin(), ternary.qmax()), (-1, 1));
/// assert!(QScheme::symmetric_narrow(1).is_err());
/// ```
///
/// It serializes as its fields; deserializing checks the bit width as [`QScheme::new`] does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(crate = "burn::serde", try_from = "UncheckedQScheme")]
pub struct QScheme {
    bits: u32,
    signedness: Signedness,
    mode: QMode,
    granularity: Granularity,
    #[serde(default)]
    narrow: bool,
}

/// The serialized fields of a [`QScheme`], before the bit width is checked.
#[derive(Deserialize)]
#[serde(crate = "burn::serde")]
struct UncheckedQScheme {
    bits: u32,
    signedness: Signedness,
    mode: QMode,
    granularity: Granularity,
    #[serde(default)]
    narrow: bool,
}

impl TryFrom<UncheckedQScheme> for QScheme {
    type Error = QuantError;

    fn try_from(s: UncheckedQScheme) -> Result<Self, QuantError> {
        let scheme = Self::new(s.bits, s.signedness, s.mode, s.granularity)?;
        match s.narrow {
            true => scheme.narrow(),
            false => Ok(scheme),
        }
    }
}

impl QScheme {
    /// A scheme with every field given; fails when `bits` is outside `1..=16`.
    pub fn new(
        bits: u32,
        signedness: Signedness,
        mode: QMode,
        granularity: Granularity,
    ) -> Result<Self, QuantError> {
        if !(MIN_BITS..=MAX_BITS).contains(&bits) {
            return Err(QuantError::BitsOutOfRange {
                bits,
                min: MIN_BITS,
                max: MAX_BITS,
            });
        }
        if mode == QMode::Bipolar && (bits != 1 || signedness != Signedness::Signed) {
            return Err(QuantError::InvalidSetting(format!(
                "a bipolar grid is signed with 1 bit, got {bits} {signedness:?} bits"
            )));
        }
        Ok(Self {
            bits,
            signedness,
            mode,
            granularity,
            narrow: false,
        })
    }

    /// Signed symmetric per-tensor on the narrow range `[-(2^(b-1)-1), 2^(b-1)-1]` (zero point
    /// 0, the grid symmetric about 0): at 2 bits ternary `{-S, 0, S}`. Needs at least 2 bits.
    pub fn symmetric_narrow(bits: u32) -> Result<Self, QuantError> {
        Self::symmetric(bits)?.narrow()
    }

    /// The same signed scheme without its most negative level (narrow range); fails for an
    /// unsigned scheme or below 2 bits.
    pub fn narrow(self) -> Result<Self, QuantError> {
        if self.signedness != Signedness::Signed || self.bits < 2 || self.is_bipolar() {
            return Err(QuantError::InvalidSetting(format!(
                "a narrow range needs a signed grid of at least 2 bits, got {} {:?} bits",
                self.bits, self.signedness
            )));
        }
        Ok(Self {
            narrow: true,
            ..self
        })
    }

    /// Whether the grid is binary `{-1, +1}` ([`QMode::Bipolar`]).
    pub fn is_bipolar(&self) -> bool {
        self.mode == QMode::Bipolar
    }

    /// Whether the most negative level of a signed grid is left out.
    pub fn is_narrow(&self) -> bool {
        self.narrow
    }

    /// Binary per-tensor `{-S, +S}` ([`QMode::Bipolar`]): 1 bit, signed, zero point 0.
    pub fn bipolar() -> Self {
        Self::new(
            1,
            Signedness::Signed,
            QMode::Bipolar,
            Granularity::PerTensor,
        )
        .expect("1 signed bit is a valid bipolar grid")
    }

    /// Unsigned affine per-tensor: the reference's scheme for weights and activations.
    pub fn affine(bits: u32) -> Result<Self, QuantError> {
        Self::new(
            bits,
            Signedness::Unsigned,
            QMode::Affine,
            Granularity::PerTensor,
        )
    }

    /// Signed symmetric per-tensor (zero point 0).
    pub fn symmetric(bits: u32) -> Result<Self, QuantError> {
        Self::new(
            bits,
            Signedness::Signed,
            QMode::Symmetric,
            Granularity::PerTensor,
        )
    }

    /// The same scheme with one set of parameters per index along `axis`.
    pub fn per_channel(self, axis: usize) -> Self {
        Self {
            granularity: Granularity::PerChannel { axis },
            ..self
        }
    }

    /// The same scheme with one set of parameters for the whole tensor.
    pub fn per_tensor(self) -> Self {
        Self {
            granularity: Granularity::PerTensor,
            ..self
        }
    }

    /// Bit width.
    pub fn bits(&self) -> u32 {
        self.bits
    }

    /// Signed or unsigned grid.
    pub fn signedness(&self) -> Signedness {
        self.signedness
    }

    /// Affine or symmetric.
    pub fn mode(&self) -> QMode {
        self.mode
    }

    /// Per tensor or per channel.
    pub fn granularity(&self) -> Granularity {
        self.granularity
    }

    /// Smallest integer of the grid (for a bipolar grid `-1`; its levels are `-1` and `+1`).
    pub fn qmin(&self) -> i32 {
        match self.signedness {
            Signedness::Unsigned => 0,
            Signedness::Signed => -(1i32 << (self.bits - 1)) + i32::from(self.narrow),
        }
    }

    /// Largest integer of the grid.
    pub fn qmax(&self) -> i32 {
        if self.is_bipolar() {
            return 1;
        }
        match self.signedness {
            Signedness::Unsigned => (1i32 << self.bits) - 1,
            Signedness::Signed => (1i32 << (self.bits - 1)) - 1,
        }
    }

    /// The zero point used in symmetric mode: the middle of the grid, rounded down.
    pub fn symmetric_zero_point(&self) -> i32 {
        (self.qmin() + self.qmax() + 1).div_euclid(2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_bounds() {
        let u = QScheme::affine(8).unwrap();
        assert_eq!((u.qmin(), u.qmax()), (0, 255));
        let s = QScheme::symmetric(8).unwrap();
        assert_eq!((s.qmin(), s.qmax()), (-128, 127));
        assert_eq!(s.symmetric_zero_point(), 0);
        let one = QScheme::affine(1).unwrap();
        assert_eq!((one.qmin(), one.qmax()), (0, 1));
        let wide = QScheme::affine(16).unwrap();
        assert_eq!(wide.qmax(), 65535);
        let mid = QScheme::new(
            4,
            Signedness::Unsigned,
            QMode::Symmetric,
            Granularity::PerTensor,
        )
        .unwrap();
        assert_eq!(mid.symmetric_zero_point(), 8);
    }

    #[test]
    fn bits_out_of_range_are_rejected() {
        for bits in [0, 17, 32] {
            assert_eq!(
                QScheme::affine(bits),
                Err(QuantError::BitsOutOfRange {
                    bits,
                    min: 1,
                    max: 16
                })
            );
        }
    }
}
