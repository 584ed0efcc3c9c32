//! The seed's models, each written once with burn-quant's layers: one `forward` serves float
//! training, fake-quantized PTQ/QAT and the integer engine.

mod net;
mod net_bn;

use burn::module::{Module, ParamGroup};
use burn::tensor::{Device, Tensor};

use burn_quant::nn::{Mode, QConfig, QTensor};
use burn_quant::{QuantError, set_observing};

pub use net::Net;
pub use net_bn::NetBN;

/// An MNIST classifier built from burn-quant's layers.
pub trait MnistModel: Module + Sized {
    /// A freshly initialised model whose quantized layers follow `qconfig` (unused in
    /// [`Mode::Float`]).
    fn new(qconfig: &QConfig, device: &Device) -> Self;

    /// Logits `[n, 10]` for images `[n, 1, 28, 28]`, in `x`'s mode.
    fn forward(&self, x: QTensor<4>) -> QTensor<2>;

    /// The same model with integer logits (`true`): the classifier's i32 accumulator,
    /// dequantized, is the output instead of logits requantized to the activation grid.
    fn with_integer_logits(self, integer_logits: bool) -> Self;

    /// The same model with BatchNorm statistics frozen (`true`) or not; QAT then folds with
    /// the running statistics and stops updating them. Models without BatchNorm are returned
    /// unchanged.
    fn freeze_bn(self, _frozen: bool) -> Self {
        self
    }

    /// Real-valued logits of `x` computed in `mode`.
    fn logits(&self, x: Tensor<4>, mode: Mode) -> Tensor<2> {
        self.forward(QTensor::new(x, mode)).dequantize()
    }

    /// The same weights (and BatchNorm statistics) in a model quantized with `qconfig`, with
    /// fresh observers (their schemes, per tensor or per channel, come from `qconfig`) and
    /// observing on.
    fn with_qconfig(&self, qconfig: &QConfig) -> Result<Self, QuantError> {
        let device = self
            .devices()
            .into_iter()
            .next()
            .ok_or(QuantError::NoDevice)?;
        let model = Self::new(qconfig, &device)
            // Everything but the observers, which `qconfig` shapes anew.
            .try_load_record(
                self.clone()
                    .into_record_group(
                        ParamGroup::all().exclude(ParamGroup::from_predicate("observers")),
                    )
                    .allow_partial(true),
            )
            .map_err(|e| QuantError::IncompatibleRecord {
                reason: e.to_string(),
            })?;
        Ok(set_observing(model, true))
    }
}
