//! Recording a model's forward as an [`ExportGraph`]: the input [`QTensor`] carries a handle to
//! a recorder, and each burn-quant layer it passes through appends its steps.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Mutex, PoisonError};

use burn::module::Module;
use burn::tensor::{Device, Tensor};

use super::graph::{ExportGraph, ExportNode, ExportOp};
use crate::QuantError;
use crate::nn::{Mode, QTensor};

/// The link from a traced [`QTensor`] to the recorder and the node that computed it.
#[derive(Debug, Clone)]
pub(crate) struct Traced {
    recorder: Arc<Mutex<Recorder>>,
    node: usize,
}

#[derive(Debug, Default)]
struct Recorder {
    nodes: Vec<ExportNode>,
    layers: usize,
    failure: Option<QuantError>,
}

impl Recorder {
    fn fail(&mut self, layer: String, reason: String) {
        self.failure
            .get_or_insert(QuantError::Unexportable { layer, reason });
    }
}

/// The error of a layer reached by a traced tensor outside [`Mode::Integer`] (its `mode` was
/// changed inside the forward): layers export their integer form.
pub(crate) fn not_integer() -> QuantError {
    QuantError::InvalidSetting("a model is exported from its integer form (Mode::Integer)".into())
}

/// Appends the steps of `layer` to the graph that `inputs` belong to and returns the trace of
/// its output: `None` when no input is traced (an ordinary forward). `ops` runs only when
/// tracing; its error (or an input that is not traced while another is) is recorded as the
/// export's failure, naming the layer.
pub(crate) fn record(
    inputs: &[Option<&Traced>],
    layer: &str,
    ops: impl FnOnce() -> Result<Vec<ExportOp>, QuantError>,
) -> Option<Traced> {
    let traced = inputs.iter().flatten().next()?;
    let recorder = traced.recorder.clone();
    let mut graph = recorder.lock().unwrap_or_else(PoisonError::into_inner);
    graph.layers += 1;
    let layer = format!("{layer} #{}", graph.layers);
    let mut previous: Vec<usize> = inputs.iter().flatten().map(|t| t.node).collect();
    if graph.failure.is_none() {
        let result = match previous.len() == inputs.len() {
            true => ops().map_err(|e| match e {
                // The layers' own reasons, without the "invalid setting" prefix.
                QuantError::InvalidSetting(reason) => reason,
                e => e.to_string(),
            }),
            false => Err(
                "an input does not come from the model's input through burn-quant \
                 layers (built with QTensor::new inside the forward?)"
                    .to_string(),
            ),
        };
        match result {
            Ok(ops) => {
                for op in ops {
                    graph.nodes.push(ExportNode {
                        layer: layer.clone(),
                        op,
                        inputs: previous,
                    });
                    previous = vec![graph.nodes.len() - 1];
                }
            }
            Err(reason) => graph.fail(layer, reason),
        }
    }
    // With a single input and no steps (e.g. a failure), the output stands for the input.
    let node = previous.first().copied().unwrap_or(0);
    drop(graph);
    Some(Traced { recorder, node })
}

/// Records the forward of a frozen model as an [`ExportGraph`].
///
/// Runs `forward` once on the integer engine ([`Mode::Integer`]) with zeros of `input_shape`
/// (the first dimension is the batch, which exporters keep dynamic), with the model's own
/// layers appending their steps. Fails, naming the observer or layer, when the model is not
/// frozen ([`crate::freeze`]), when a step has no export mapping (e.g.
/// [`QTensor::map_values`] with a custom function), or when the output is not computed from
/// the input by burn-quant layers.
///
/// ```
/// use burn::nn::{LinearConfig, conv::Conv2dConfig};
/// use burn::tensor::Tensor;
/// use burn_quant::nn::{Mode, QConfig, QConv2dConfig, QTensor};
/// use burn_quant::{default_device, export, freeze};
/// let device = default_device().unwrap();
/// let conv = QConv2dConfig::new(Conv2dConfig::new([1, 4], [3, 3]), QConfig::reference(8).unwrap())
///     .with_observe_input(true)
///     .init(&device)
///     .unwrap();
/// let x = Tensor::<4>::ones([2, 1, 5, 5], &device);
/// let _ = conv.forward(QTensor::new(x, Mode::FakeQuant)); // calibrate
/// assert!(export::trace(&conv, [1, 1, 5, 5], |m, x| m.forward(x)).is_err()); // not frozen
/// let conv = freeze(conv).unwrap();
/// let graph = export::trace(&conv, [1, 1, 5, 5], |m, x| m.forward(x)).unwrap();
/// assert_eq!(graph.output_shape, [1, 4, 3, 3]);
/// ```
pub fn trace<M: Module, const DI: usize, const DO: usize>(
    model: &M,
    input_shape: [usize; DI],
    forward: impl FnOnce(&M, QTensor<DI>) -> QTensor<DO>,
) -> Result<ExportGraph, QuantError> {
    if let Some(layer) = crate::freeze::observing_observer(model)? {
        return Err(QuantError::Unexportable {
            layer,
            reason: "the observer is still observing: freeze the model (burn_quant::freeze)".into(),
        });
    }
    let device: Device = model
        .devices()
        .into_iter()
        .next()
        .ok_or(QuantError::NoDevice)?;
    let recorder = Arc::new(Mutex::new(Recorder::default()));
    recorder
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .nodes
        .push(ExportNode {
            layer: "input".into(),
            op: ExportOp::Input {
                shape: input_shape.to_vec(),
            },
            inputs: Vec::new(),
        });
    let mut input = QTensor::new(Tensor::zeros(input_shape, &device), Mode::Integer);
    input.trace = Some(Traced {
        recorder: recorder.clone(),
        node: 0,
    });
    let output = catch_unwind(AssertUnwindSafe(|| forward(model, input))).map_err(|panic| {
        let reason = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "the forward panicked".into());
        QuantError::Unexportable {
            layer: "forward".into(),
            reason,
        }
    })?;
    let output_shape = output.dims().to_vec();
    let Some(traced) = output.trace else {
        return Err(QuantError::Unexportable {
            layer: "output".into(),
            reason: "the output is not computed from the input by burn-quant layers".into(),
        });
    };
    drop(traced.recorder);
    let recorder = Arc::try_unwrap(recorder)
        .map_err(|_| QuantError::Unexportable {
            layer: "forward".into(),
            reason: "the forward kept a traced tensor".into(),
        })?
        .into_inner()
        .unwrap_or_else(PoisonError::into_inner);
    if let Some(failure) = recorder.failure {
        return Err(failure);
    }
    Ok(ExportGraph {
        nodes: recorder.nodes,
        output: traced.node,
        output_shape,
    })
}
