//! Quantization settings shared by the layers of a model.

use burn::config::Config;
use burn::tensor::Device;

use crate::{
    Granularity, MinMaxObserver, MinMaxObserverConfig, QScheme, QuantError, RangeEstimator, Ste,
    StepGradScale,
};

/// How a model's layers quantize weights and activations.
///
/// A Burn [`Config`]: it is part of each layer's config (e.g.
/// [`QConv2dConfig`](super::QConv2dConfig)) and is saved as JSON next to the weights with
/// [`Config::save`].
///
/// ```
/// use burn_quant::nn::QConfig;
/// let config = QConfig::reference(4).unwrap();
/// assert_eq!(config.activation.qmax(), 15);
/// assert!(QConfig::reference(0).is_err());
/// ```
#[derive(Config, Debug, Copy, PartialEq)]
pub struct QConfig {
    /// Scheme of activations (must be per tensor).
    pub activation: QScheme,
    /// Scheme of weights (per tensor or per output channel; the axis is set by each layer).
    pub weight: QScheme,
    /// EMA momentum of the observers in `(0, 1]` (`None`: running min/max, the reference).
    pub ema_momentum: Option<f64>,
    /// Straight-through estimator.
    #[config(default = "Ste::Identity")]
    pub ste: Ste,
    /// Fake-quantize the bias on the int32 grid of scale `Si·Sw`, exactly as the integer engine
    /// stores it (the reference keeps the bias in float in the fake-quantized forward).
    #[config(default = false)]
    pub quantize_bias: bool,
    /// Evaluate the fake-quantized forward bit-exactly as the integer engine (needs
    /// `quantize_bias`; applies without autodiff once the observers are frozen): each layer's
    /// output grid comes from the exact integer accumulator and the engine's fixed-point
    /// requantization instead of a float rounding of `y / So`.
    #[config(default = false)]
    pub exact_eval: bool,
    /// LSQ: every observer's step becomes a trained parameter once observing stops
    /// (calibrate with observing on, then train with it off; see
    /// [`LearnedStep`](crate::LearnedStep)).
    #[config(default = false)]
    pub learned_step: bool,
    /// How a batch of weights gives a range (PTQ calibration and QAT observing).
    #[config(default = "RangeEstimator::MinMax")]
    pub weight_range: RangeEstimator,
    /// How a batch of activations gives a range.
    #[config(default = "RangeEstimator::MinMax")]
    pub activation_range: RangeEstimator,
    /// What `N` counts in LSQ's gradient scale of a learned activation step (weights count
    /// the elements of one channel).
    #[config(default = "StepGradScale::AllElements")]
    pub activation_step_grad: StepGradScale,
    /// Bias correction: each layer with weights records the channel means of its input while
    /// calibrating and adds `(W − Ŵ)·E[x]` to its bias, the shift of its mean output that
    /// rounding the weights causes (see [`InputMean`](super::InputMean)).
    #[config(default = false)]
    pub bias_correction: bool,
}

impl QConfig {
    /// The reference's settings: unsigned affine per-tensor weights and activations at `bits`,
    /// running min/max observers, identity STE, float bias.
    pub fn reference(bits: u32) -> Result<Self, QuantError> {
        let scheme = QScheme::affine(bits)?;
        Ok(Self::new(scheme, scheme))
    }

    /// Checks the settings that [`QScheme`] does not: activations per tensor, the EMA momentum
    /// in `(0, 1]`. Layer configs call it in their `init`.
    ///
    /// ```
    /// use burn_quant::{QScheme, nn::QConfig};
    /// let config = QConfig::reference(8).unwrap();
    /// assert!(config.check().is_ok());
    /// assert!(config.with_ema_momentum(Some(1.5)).check().is_err());
    /// let per_channel = QScheme::symmetric(8).unwrap().per_channel(0);
    /// assert!(config.with_activation(per_channel).check().is_err());
    /// ```
    pub fn check(&self) -> Result<(), QuantError> {
        self.weight_range.check()?;
        self.activation_range.check()?;
        if self.activation.granularity() != Granularity::PerTensor {
            return Err(QuantError::InvalidSetting(
                "activations must be quantized per tensor".into(),
            ));
        }
        match self.ema_momentum {
            Some(m) if !(m > 0.0 && m <= 1.0) => Err(QuantError::InvalidSetting(format!(
                "EMA momentum must be in (0, 1], got {m}"
            ))),
            _ => Ok(()),
        }
    }

    /// Sets the activation scheme.
    pub fn with_activation(self, activation: QScheme) -> Self {
        Self { activation, ..self }
    }

    /// Sets the weight scheme.
    pub fn with_weight(self, weight: QScheme) -> Self {
        Self { weight, ..self }
    }

    fn observer(&self, config: MinMaxObserverConfig, device: &Device) -> MinMaxObserver {
        let config = config
            .with_ste(self.ste)
            .with_learned_step(self.learned_step);
        match self.ema_momentum {
            Some(m) => config.with_ema_momentum(m),
            None => config,
        }
        .init(device)
    }

    /// An activation observer.
    ///
    /// # Panics
    /// When the EMA momentum is outside `(0, 1]` ([`QConfig::check`] reports it as an error).
    pub fn activation_observer(&self, device: &Device) -> MinMaxObserver {
        let config = MinMaxObserverConfig::new(self.activation)
            .with_range(self.activation_range)
            .with_step_grad(self.activation_step_grad);
        self.observer(config, device)
    }

    /// A weight observer for a weight with `channels` output channels along `axis`.
    ///
    /// # Panics
    /// When the EMA momentum is outside `(0, 1]` ([`QConfig::check`] reports it as an error).
    pub fn weight_observer(&self, channels: usize, axis: usize, device: &Device) -> MinMaxObserver {
        let scheme = match self.weight.granularity() {
            Granularity::PerTensor => self.weight,
            Granularity::PerChannel { .. } => self.weight.per_channel(axis),
        };
        let config = MinMaxObserverConfig::new(scheme)
            .with_channels(channels)
            .with_range(self.weight_range);
        self.observer(config, device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trip() {
        let config = QConfig::new(
            QScheme::affine(3).unwrap(),
            QScheme::symmetric(4).unwrap().per_channel(0),
        )
        .with_ema_momentum(Some(0.01))
        .with_ste(Ste::Clipped)
        .with_quantize_bias(true)
        .with_weight_range(RangeEstimator::Mse)
        .with_activation_range(RangeEstimator::percentile(99.9).unwrap());
        let json = config.to_string();
        assert_eq!(QConfig::load_binary(json.as_bytes()).unwrap(), config);
    }

    #[test]
    fn bad_bits_in_json_are_an_error() {
        let json = QConfig::reference(3).unwrap().to_string();
        let bad = json.replacen("\"bits\": 3", "\"bits\": 40", 1);
        assert_ne!(bad, json, "{json}");
        let err = QConfig::load_binary(bad.as_bytes()).unwrap_err();
        assert!(err.to_string().contains("40"), "{err}");
    }
}
