//! Quantization settings shared by the layers of a model.

use burn::tensor::Device;

use crate::{MinMaxObserver, MinMaxObserverConfig, QScheme, QuantError, Ste};

/// How a model's layers quantize weights and activations.
///
/// ```
/// use burn_quant::nn::QConfig;
/// let config = QConfig::reference(4).unwrap();
/// assert_eq!(config.activation.qmax(), 15);
/// assert!(QConfig::reference(0).is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QConfig {
    /// Scheme of activations (must be per tensor).
    pub activation: QScheme,
    /// Scheme of weights (per tensor or per output channel; the axis is set by each layer).
    pub weight: QScheme,
    /// EMA momentum of the observers (`None`: running min/max, the reference).
    pub ema_momentum: Option<f64>,
    /// Straight-through estimator.
    pub ste: Ste,
    /// Fake-quantize the bias on the int32 grid of scale `Si·Sw`, exactly as the integer engine
    /// stores it (the reference keeps the bias in float in the fake-quantized forward).
    pub quantize_bias: bool,
    /// Evaluate the fake-quantized forward bit-exactly as the integer engine (needs
    /// `quantize_bias`; applies without autodiff once the observers are frozen): each layer's
    /// output grid comes from the exact integer accumulator and the engine's fixed-point
    /// requantization instead of a float rounding of `y / So`.
    pub exact_eval: bool,
}

impl QConfig {
    /// The reference's settings: unsigned affine per-tensor weights and activations at `bits`,
    /// running min/max observers, identity STE, float bias.
    pub fn reference(bits: u32) -> Result<Self, QuantError> {
        let scheme = QScheme::affine(bits)?;
        Ok(Self {
            activation: scheme,
            weight: scheme,
            ema_momentum: None,
            ste: Ste::Identity,
            quantize_bias: false,
            exact_eval: false,
        })
    }

    /// Sets whether the bias is fake-quantized.
    pub fn with_quantize_bias(self, quantize_bias: bool) -> Self {
        Self {
            quantize_bias,
            ..self
        }
    }

    /// Sets whether evaluation is bit-exact with the integer engine.
    pub fn with_exact_eval(self, exact_eval: bool) -> Self {
        Self { exact_eval, ..self }
    }

    /// Sets the observers' EMA momentum.
    pub fn with_ema_momentum(self, ema_momentum: Option<f64>) -> Self {
        Self {
            ema_momentum,
            ..self
        }
    }

    /// Sets the STE.
    pub fn with_ste(self, ste: Ste) -> Self {
        Self { ste, ..self }
    }

    fn observer(&self, config: MinMaxObserverConfig, device: &Device) -> MinMaxObserver {
        let config = config.with_ste(self.ste);
        match self.ema_momentum {
            Some(m) => config.with_ema_momentum(m),
            None => config,
        }
        .init(device)
    }

    /// An activation observer.
    pub fn activation_observer(&self, device: &Device) -> MinMaxObserver {
        self.observer(MinMaxObserverConfig::new(self.activation), device)
    }

    /// A weight observer for a weight with `channels` output channels along `axis`.
    pub fn weight_observer(&self, channels: usize, axis: usize, device: &Device) -> MinMaxObserver {
        let scheme = match self.weight.granularity() {
            crate::Granularity::PerTensor => self.weight,
            crate::Granularity::PerChannel { .. } => self.weight.per_channel(axis),
        };
        self.observer(
            MinMaxObserverConfig::new(scheme).with_channels(channels),
            device,
        )
    }
}
