//! The seed's models, each written once with burn-quant's layers: one `forward` serves float
//! training, fake-quantized PTQ/QAT and the integer engine.

mod net;
mod net_bn;
mod res_net;

use std::path::Path;

use burn::module::{Module, ParamGroup};
use burn::tensor::{Device, Tensor};

use burn_quant::export::{self, ExportGraph, onnx::OnnxConfig};
use burn_quant::nn::{Mode, QConfig, QTensor};
use burn_quant::{QuantError, set_observing};

pub use net::Net;
pub use net_bn::NetBN;
pub use res_net::ResNet;

/// The ONNX settings of the MNIST models: input `image`, output `logits`, and in the model's
/// documentation how the input is normalised.
pub fn onnx_config() -> OnnxConfig {
    OnnxConfig::new()
        .with_input_name("image".into())
        .with_output_name("logits".into())
        .with_doc(ONNX_INPUT_DOC.into())
}

/// How the exported ONNX models take their input (the pipeline's normalisation).
pub const ONNX_INPUT_DOC: &str = "Input: MNIST images as float32 [batch, 1, 28, 28], pixel \
    values p in 0..=255 normalised as (p / 255 - 0.1307) / 0.3081. Output: logits [batch, 10].";

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

    /// The frozen model's graph, traced for images `[n, 1, 28, 28]`.
    fn export_graph(&self) -> Result<ExportGraph, QuantError> {
        export::trace(self, [1, 1, 28, 28], |m, x| m.forward(x))
    }

    /// Writes the frozen model to `path` as ONNX (QDQ) with `config` (e.g. [`onnx_config`]).
    fn save_onnx(&self, path: &Path, config: &OnnxConfig) -> Result<(), QuantError> {
        export::onnx::save(&self.export_graph()?, config, path)
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
