//! The graph of a frozen model as an exporter sees it: quantize-dequantize steps on activation
//! grids, layers with integer weights, and the ops between them.

/// The grid of an activation: `q = clamp(round(x / scale) + zero_point, qmin, qmax)`, one
/// scale and zero point for the whole tensor.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ActivationGrid {
    /// Step.
    pub scale: f32,
    /// Integer that stands for 0.
    pub zero_point: i32,
    /// Smallest integer of the grid.
    pub qmin: i32,
    /// Largest integer of the grid.
    pub qmax: i32,
}

/// Integer weights `q` (zero point included) with the scale and zero point of each channel
/// along `axis` (one of each: per tensor). Real value: `(q - zero_point) · scale`.
#[derive(Debug, Clone, PartialEq)]
pub struct IntWeight {
    /// The integers, row-major in `shape`.
    pub values: Vec<i32>,
    /// Shape of the weight.
    pub shape: Vec<usize>,
    /// Scales: one, or one per channel along `axis`.
    pub scale: Vec<f32>,
    /// Zero points, as many as scales.
    pub zero_point: Vec<i32>,
    /// The channel axis of per-channel parameters.
    pub axis: usize,
    /// Smallest integer of the weight's grid.
    pub qmin: i32,
    /// Largest integer of the weight's grid.
    pub qmax: i32,
}

/// An int32 bias with zero point 0 and one scale per output channel (`Si · Sw[c]`).
#[derive(Debug, Clone, PartialEq)]
pub struct IntBias {
    /// `round(b / (Si · Sw[c]))`.
    pub values: Vec<i32>,
    /// `Si · Sw[c]` (one value for a per-tensor weight).
    pub scale: Vec<f32>,
}

/// One step of an exported graph. Values between steps are real (f32); those on a grid are
/// exactly the dequantized integers of the integer engine.
#[derive(Debug, Clone, PartialEq)]
pub enum ExportOp {
    /// The model's input, real values of this shape (the first dimension is the batch).
    Input {
        /// The shape the model was traced with.
        shape: Vec<usize>,
    },
    /// Quantize onto `grid` and dequantize again (ONNX QuantizeLinear → Clip → DequantizeLinear).
    Quantize(ActivationGrid),
    /// 2-D convolution of real inputs with dequantized weights and bias (no requantization:
    /// a [`ExportOp::Quantize`] follows unless the layer's output is its accumulator).
    Conv {
        /// `[out, in / groups, kh, kw]`, channels along axis 0.
        weight: IntWeight,
        /// One value per output channel.
        bias: IntBias,
        /// `[sh, sw]`.
        strides: [usize; 2],
        /// `[top, left, bottom, right]`.
        pads: [usize; 4],
        /// `[dh, dw]`.
        dilations: [usize; 2],
        /// Groups.
        groups: usize,
    },
    /// `x · W + b` over the last dimension, with dequantized `W` `[in, out]` and `b`.
    MatMul {
        /// `[in, out]`, channels along axis 1.
        weight: IntWeight,
        /// One value per output.
        bias: IntBias,
    },
    /// `max(x, 0)`.
    Relu,
    /// 2-D max-pooling.
    MaxPool {
        /// `[kh, kw]`.
        kernel: [usize; 2],
        /// `[sh, sw]`.
        strides: [usize; 2],
        /// `[top, left, bottom, right]`.
        pads: [usize; 4],
        /// `[dh, dw]`.
        dilations: [usize; 2],
        /// Output size rounded up.
        ceil_mode: bool,
    },
    /// Average pooling of values on `grid` back onto `grid`, as the integer engine computes
    /// it: the mean of the integers `q - Z` rounded half up.
    AvgPool {
        /// The window `[kh, kw]` (stride = window); the whole plane for global pooling.
        window: [usize; 2],
        /// Whether the window is the whole plane (`[n, c, 1, 1]` out).
        global: bool,
        /// The grid of the input and the output.
        grid: ActivationGrid,
    },
    /// Elementwise sum of two values.
    Add,
    /// Reshape; `0` keeps the input's dimension at that index, `-1` is inferred.
    Reshape {
        /// The target shape.
        shape: Vec<i64>,
    },
}

/// One step of an [`ExportGraph`] and the values it reads.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportNode {
    /// Which layer recorded it, e.g. `QConv2d #1` (layers counted in call order from 1).
    pub layer: String,
    /// What it computes.
    pub op: ExportOp,
    /// The nodes whose outputs it reads (indices into [`ExportGraph::nodes`]).
    pub inputs: Vec<usize>,
}

/// A frozen model recorded by [`crate::export::trace`]: nodes in execution order, each
/// reading the outputs of earlier ones. Node 0 is the input.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportGraph {
    /// The nodes, in an order where every node comes after its inputs.
    pub nodes: Vec<ExportNode>,
    /// The node whose output is the model's output.
    pub output: usize,
    /// The output's shape when traced (the first dimension is the batch).
    pub output_shape: Vec<usize>,
}

impl ExportGraph {
    /// The shape of the input the model was traced with (`None` when node 0 is not the input).
    pub fn input_shape(&self) -> Option<&[usize]> {
        match self.nodes.first().map(|node| &node.op) {
            Some(ExportOp::Input { shape }) => Some(shape),
            _ => None,
        }
    }

    /// Checks what an exporter relies on (a graph from [`crate::export::trace`] passes): node 0
    /// is the only input, every node reads earlier nodes (two for an add, one otherwise), the
    /// output exists, and integer weights and biases have as many values and parameters as
    /// their shapes say. The error names the offending node's layer.
    pub fn check(&self) -> Result<(), crate::QuantError> {
        let fail = |layer: &str, reason: String| {
            Err(crate::QuantError::Unexportable {
                layer: layer.into(),
                reason,
            })
        };
        if self.input_shape().is_none() {
            return fail("graph", "node 0 must be the input".into());
        }
        if self.output >= self.nodes.len() {
            return fail(
                "graph",
                format!("the output node {} does not exist", self.output),
            );
        }
        for (index, node) in self.nodes.iter().enumerate() {
            let arity = match node.op {
                ExportOp::Input { .. } if index == 0 => 0,
                ExportOp::Input { .. } => return fail(&node.layer, "a second input".into()),
                ExportOp::Add => 2,
                _ => 1,
            };
            if node.inputs.len() != arity || node.inputs.iter().any(|&i| i >= index) {
                let reason = format!("reads {:?}: needs {arity} earlier node(s)", node.inputs);
                return fail(&node.layer, reason);
            }
            if let ExportOp::Conv { weight, bias, .. } | ExportOp::MatMul { weight, bias } =
                &node.op
                && let Err(reason) = check_parameters(weight, bias)
            {
                return fail(&node.layer, reason);
            }
        }
        Ok(())
    }
}

/// Sizes of an integer weight and bias against the weight's shape.
fn check_parameters(weight: &IntWeight, bias: &IntBias) -> Result<(), String> {
    let count: usize = weight.shape.iter().product();
    let channels = weight.shape.get(weight.axis).copied();
    let parameters = weight.scale.len();
    if weight.values.len() != count {
        return Err(format!(
            "{} weight values for the shape {:?}",
            weight.values.len(),
            weight.shape
        ));
    }
    if weight.zero_point.len() != parameters || (parameters != 1 && Some(parameters) != channels) {
        return Err(format!(
            "{parameters} scales and {} zero points for {channels:?} channels",
            weight.zero_point.len()
        ));
    }
    if Some(bias.values.len()) != channels
        || !(bias.scale.len() == 1 || bias.scale.len() == bias.values.len())
    {
        return Err(format!(
            "{} bias values and {} bias scales for {channels:?} channels",
            bias.values.len(),
            bias.scale.len()
        ));
    }
    Ok(())
}

impl ActivationGrid {
    /// The grid of per-tensor parameters; an error for per-channel ones.
    pub(crate) fn of(qparams: &crate::QParams) -> Result<Self, crate::QuantError> {
        let (scale, zero_point) = qparams.to_host();
        match (scale.as_slice(), zero_point.as_slice()) {
            ([scale], [zero_point]) => Ok(Self {
                scale: *scale,
                zero_point: *zero_point,
                qmin: qparams.scheme.qmin(),
                qmax: qparams.scheme.qmax(),
            }),
            _ => Err(crate::QuantError::InvalidSetting(
                "activations are exported per tensor only".into(),
            )),
        }
    }
}

impl ExportGraph {
    /// The real value of one integer step of the output: the output grid's scale, or, for a
    /// layer whose output is its accumulator (integer logits), `Si·Sw[c]` per channel.
    /// `None` when the output is not on a grid.
    pub fn output_step(&self) -> Option<Vec<f32>> {
        match &self.nodes[self.output].op {
            ExportOp::Quantize(grid) => Some(vec![grid.scale]),
            ExportOp::Conv { bias, .. } | ExportOp::MatMul { bias, .. } => Some(bias.scale.clone()),
            _ => None,
        }
    }
}
