//! ONNX export of an [`ExportGraph`] in the QDQ form (opset 13).
//!
//! Every activation grid becomes `QuantizeLinear → DequantizeLinear`, with a `Clip` to the
//! b-bit range between them when the grid is narrower than its int8/uint8 container (the
//! "QCDQ" form: onnxruntime has no 1–7-bit types). Weights are stored as int8/uint8 integers
//! (int4/uint4 for at most 4 bits with [`OnnxConfig::int4_weights`], opset 21)
//! with their `DequantizeLinear` (per axis for per-channel weights), biases as int32 with scale
//! `Si·Sw[c]` and zero point 0, as the integer engine holds them. Layers map to standard ops:
//! `Conv`, `MatMul` + `Add`, `Relu`, `MaxPool`, `AveragePool`/`GlobalAveragePool` (with the
//! engine's rounding of the mean), `Add`, `Reshape`.
//!
//! ```
//! use burn::nn::LinearConfig;
//! use burn::tensor::Tensor;
//! use burn_quant::nn::{Mode, QConfig, QLinearConfig, QTensor};
//! use burn_quant::{default_device, export, freeze};
//! let device = default_device().unwrap();
//! let config = QLinearConfig::new(LinearConfig::new(4, 2), QConfig::reference(4).unwrap());
//! let layer = config.with_observe_input(true).init(&device).unwrap();
//! let x = Tensor::<2>::from_floats([[0.5, -1.0, 2.0, 0.0]], &device);
//! let _ = layer.forward(QTensor::new(x, Mode::FakeQuant)); // calibrate
//! let graph = export::trace(&freeze(layer).unwrap(), [1, 4], |m, x| m.forward(x)).unwrap();
//! let bytes = export::onnx::to_bytes(&graph, &export::onnx::OnnxConfig::new()).unwrap();
//! assert!(bytes.len() > 100);
//! ```

use std::path::Path;

use burn::config::Config;
use prost::Message;

use super::graph::{ActivationGrid, ExportGraph, ExportOp, IntBias, IntWeight};
use crate::QuantError;

/// The ONNX schema's types, generated at build time from `onnx.proto`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/onnx.rs"));
}

use proto::tensor_proto::DataType;
use proto::tensor_shape_proto::{Dimension, dimension};
use proto::{
    AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto,
    TensorShapeProto, TypeProto, ValueInfoProto, attribute_proto::AttributeType, type_proto,
};

/// The ONNX operator set the export uses.
pub const OPSET: i64 = 13;
/// The ONNX IR version written.
pub const IR_VERSION: i64 = 8;
/// The operator set with 4-bit integer types ([`OnnxConfig::int4_weights`]).
pub const OPSET_INT4: i64 = 21;
/// The IR version with 4-bit integer types.
pub const IR_VERSION_INT4: i64 = 10;

/// How an [`ExportGraph`] is written as ONNX.
#[derive(Config, Debug)]
pub struct OnnxConfig {
    /// Name of the graph's input.
    #[config(default = "String::from(\"input\")")]
    pub input_name: String,
    /// Name of the graph's output.
    #[config(default = "String::from(\"output\")")]
    pub output_name: String,
    /// Name of the graph.
    #[config(default = "String::from(\"burn-quant\")")]
    pub graph_name: String,
    /// Added to the model's `doc_string` after the input and output description (e.g. how the
    /// input is normalised).
    #[config(default = "String::new()")]
    pub doc: String,
    /// Store weights of at most 4 bits as int4/uint4 (two per byte; opset 21, IR version 10)
    /// instead of in an int8/uint8 container.
    #[config(default = false)]
    pub int4_weights: bool,
}

/// The ONNX model of `graph`, serialised.
///
/// Fails on a graph that does not pass [`ExportGraph::check`], on a grid that does not fit an 8-bit container or has a non-positive scale.
pub fn to_bytes(graph: &ExportGraph, config: &OnnxConfig) -> Result<Vec<u8>, QuantError> {
    Ok(to_model(graph, config)?.encode_to_vec())
}

/// Writes the ONNX model of `graph` to `path`.
pub fn save(
    graph: &ExportGraph,
    config: &OnnxConfig,
    path: impl AsRef<Path>,
) -> Result<(), QuantError> {
    let path = path.as_ref();
    let bytes = to_bytes(graph, config)?;
    std::fs::write(path, bytes).map_err(|e| QuantError::Io {
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

/// The ONNX model of `graph`.
pub fn to_model(graph: &ExportGraph, config: &OnnxConfig) -> Result<ModelProto, QuantError> {
    graph.check()?;
    let input_shape = graph.input_shape().unwrap_or_default();
    let mut builder = Builder {
        int4_weights: config.int4_weights,
        ..Builder::default()
    };
    let (opset, ir_version) = match config.int4_weights {
        true => (OPSET_INT4, IR_VERSION_INT4),
        false => (OPSET, IR_VERSION),
    };
    let mut outputs: Vec<String> = Vec::with_capacity(graph.nodes.len());
    for node in &graph.nodes {
        let inputs: Vec<String> = node.inputs.iter().map(|&i| outputs[i].clone()).collect();
        let prefix = node.layer.replace([' ', '#', ':'], "");
        let output = builder
            .op(&prefix, &node.op, inputs, config)
            .map_err(|reason| QuantError::Unexportable {
                layer: node.layer.clone(),
                reason,
            })?;
        outputs.push(output);
    }
    builder.node(
        "Identity",
        "output",
        vec![outputs[graph.output].clone()],
        Vec::new(),
        Some(config.output_name.clone()),
    );
    let input = value_info(&config.input_name, input_shape);
    let output = value_info(&config.output_name, &graph.output_shape);
    let doc = format!(
        "Exported by burn-quant {} (QDQ, opset {opset}). Input `{}`: float32 {}. Output `{}`: \
         float32 {}. The first dimension is the batch (any size). {}",
        env!("CARGO_PKG_VERSION"),
        config.input_name,
        shape_text(input_shape),
        config.output_name,
        shape_text(&graph.output_shape),
        config.doc
    );
    Ok(ModelProto {
        ir_version: Some(ir_version),
        opset_import: vec![OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(opset),
        }],
        producer_name: Some("burn-quant".into()),
        producer_version: Some(env!("CARGO_PKG_VERSION").into()),
        doc_string: Some(doc.trim_end().to_string()),
        graph: Some(GraphProto {
            name: Some(config.graph_name.clone()),
            node: builder.nodes,
            initializer: builder.initializers,
            input: vec![input],
            output: vec![output],
            ..Default::default()
        }),
        ..Default::default()
    })
}

fn shape_text(shape: &[usize]) -> String {
    let dims: Vec<String> = std::iter::once("batch".to_string())
        .chain(shape.iter().skip(1).map(|d| d.to_string()))
        .collect();
    format!("[{}]", dims.join(", "))
}

/// A float32 tensor of `shape` with a dynamic first dimension (`batch`).
fn value_info(name: &str, shape: &[usize]) -> ValueInfoProto {
    let dim = |value| Dimension {
        value: Some(value),
        ..Default::default()
    };
    let dims = std::iter::once(dim(dimension::Value::DimParam("batch".into())))
        .chain(
            shape
                .iter()
                .skip(1)
                .map(|&d| dim(dimension::Value::DimValue(d as i64))),
        )
        .collect();
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(DataType::Float as i32),
                shape: Some(TensorShapeProto { dim: dims }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The 8-bit integer type that holds `qmin..=qmax`: uint8 when non-negative, else int8.
fn container(qmin: i32, qmax: i32) -> Result<DataType, String> {
    match (qmin, qmax) {
        (0..=255, 0..=255) => Ok(DataType::Uint8),
        (-128..=127, -128..=127) => Ok(DataType::Int8),
        _ => Err(format!(
            "the integer range [{qmin}, {qmax}] does not fit 8 bits"
        )),
    }
}

fn full_range(data_type: DataType) -> (i32, i32) {
    match data_type {
        DataType::Uint8 => (0, 255),
        _ => (-128, 127),
    }
}

/// The 4-bit integer type that holds `qmin..=qmax`, if one does.
fn container4(qmin: i32, qmax: i32) -> Option<DataType> {
    match (qmin, qmax) {
        (0..=15, 0..=15) => Some(DataType::Uint4),
        (-8..=7, -8..=7) => Some(DataType::Int4),
        _ => None,
    }
}

/// Little-endian bytes of `values` as `data_type` (int4/uint4 packed two per byte, the first
/// in the low nibble; int8, uint8, int32, int64, float).
fn raw<T: Copy + Into<f64>>(values: &[T], data_type: DataType) -> Vec<u8> {
    if matches!(data_type, DataType::Int4 | DataType::Uint4) {
        let nibble = |v: &T| ((*v).into() as i32 & 0xF) as u8;
        return values
            .chunks(2)
            .map(|pair| nibble(&pair[0]) | pair.get(1).map_or(0, nibble) << 4)
            .collect();
    }
    values
        .iter()
        .flat_map(|&v| {
            let v: f64 = v.into();
            match data_type {
                DataType::Uint8 => vec![v as u8],
                DataType::Int8 => vec![v as i8 as u8],
                DataType::Int32 => (v as i32).to_le_bytes().to_vec(),
                DataType::Int64 => (v as i64).to_le_bytes().to_vec(),
                _ => (v as f32).to_le_bytes().to_vec(),
            }
        })
        .collect()
}

fn ints(name: &str, values: &[usize]) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Ints as i32),
        ints: values.iter().map(|&v| v as i64).collect(),
        ..Default::default()
    }
}

/// The attributes of a sliding window (convolution, pooling).
fn window_attributes(
    kernel: &[usize],
    strides: &[usize],
    pads: &[usize],
    dilations: &[usize],
) -> Vec<AttributeProto> {
    vec![
        ints("kernel_shape", kernel),
        ints("strides", strides),
        ints("pads", pads),
        ints("dilations", dilations),
    ]
}

fn int(name: &str, value: i64) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Int as i32),
        i: Some(value),
        ..Default::default()
    }
}

#[derive(Default)]
struct Builder {
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    int4_weights: bool,
}

impl Builder {
    /// Adds a node; its output is `output` or a name made from `prefix`, which is returned.
    fn node(
        &mut self,
        op_type: &str,
        prefix: &str,
        inputs: Vec<String>,
        attribute: Vec<AttributeProto>,
        output: Option<String>,
    ) -> String {
        let name = format!("{prefix}/{op_type}_{}", self.nodes.len());
        let output = output.unwrap_or_else(|| name.clone());
        self.nodes.push(NodeProto {
            name: Some(name),
            op_type: Some(op_type.into()),
            input: inputs,
            output: vec![output.clone()],
            attribute,
            ..Default::default()
        });
        output
    }

    /// Adds a constant; scalars have `dims` empty.
    fn constant<T: Copy + Into<f64>>(
        &mut self,
        prefix: &str,
        what: &str,
        data_type: DataType,
        dims: &[usize],
        values: &[T],
    ) -> String {
        let name = format!("{prefix}/{what}");
        self.initializers.push(TensorProto {
            name: Some(name.clone()),
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: Some(data_type as i32),
            raw_data: Some(raw(values, data_type)),
            ..Default::default()
        });
        name
    }

    fn op(
        &mut self,
        prefix: &str,
        op: &ExportOp,
        inputs: Vec<String>,
        config: &OnnxConfig,
    ) -> Result<String, String> {
        let prefix = &format!("{prefix}_{}", self.nodes.len());
        Ok(match op {
            ExportOp::Input { .. } => config.input_name.clone(),
            ExportOp::Quantize(grid) => self.quantize(prefix, inputs, grid)?,
            ExportOp::Conv {
                weight,
                bias,
                strides,
                pads,
                dilations,
                groups,
            } => {
                let w = self.weight(prefix, weight)?;
                let b = self.bias(prefix, bias);
                let kernel = &weight.shape[2..];
                let mut attributes = window_attributes(kernel, strides, pads, dilations);
                attributes.push(int("group", *groups as i64));
                let inputs = [inputs, vec![w, b]].concat();
                self.node("Conv", prefix, inputs, attributes, None)
            }
            ExportOp::MatMul { weight, bias } => {
                let w = self.weight(prefix, weight)?;
                let b = self.bias(prefix, bias);
                let y = self.node("MatMul", prefix, [inputs, vec![w]].concat(), vec![], None);
                self.node("Add", prefix, vec![y, b], Vec::new(), None)
            }
            ExportOp::Relu => self.node("Relu", prefix, inputs, Vec::new(), None),
            ExportOp::MaxPool {
                kernel,
                strides,
                pads,
                dilations,
                ceil_mode,
            } => {
                let mut attributes = window_attributes(kernel, strides, pads, dilations);
                attributes.push(int("ceil_mode", *ceil_mode as i64));
                self.node("MaxPool", prefix, inputs, attributes, None)
            }
            ExportOp::AvgPool {
                window,
                global,
                grid,
            } => self.avg_pool(prefix, inputs, *window, *global, grid)?,
            ExportOp::Add => self.node("Add", prefix, inputs, Vec::new(), None),
            ExportOp::Reshape { shape } => {
                let values: Vec<f64> = shape.iter().map(|&d| d as f64).collect();
                let shape =
                    self.constant(prefix, "shape", DataType::Int64, &[shape.len()], &values);
                self.node(
                    "Reshape",
                    prefix,
                    [inputs, vec![shape]].concat(),
                    vec![],
                    None,
                )
            }
        })
    }

    /// QuantizeLinear → (Clip to `qmin..=qmax`) → DequantizeLinear.
    fn quantize(
        &mut self,
        prefix: &str,
        inputs: Vec<String>,
        grid: &ActivationGrid,
    ) -> Result<String, String> {
        if !(grid.scale.is_finite() && grid.scale > 0.0) {
            return Err(format!("the grid's scale {} is not positive", grid.scale));
        }
        let data_type = container(grid.qmin, grid.qmax)?;
        let scale = self.constant(prefix, "scale", DataType::Float, &[], &[grid.scale]);
        let zero = self.constant(prefix, "zero_point", data_type, &[], &[grid.zero_point]);
        let quantize = [inputs, vec![scale.clone(), zero.clone()]].concat();
        let mut q = self.node("QuantizeLinear", prefix, quantize, Vec::new(), None);
        if (grid.qmin, grid.qmax) != full_range(data_type) {
            let min = self.constant(prefix, "qmin", data_type, &[], &[grid.qmin]);
            let max = self.constant(prefix, "qmax", data_type, &[], &[grid.qmax]);
            q = self.node("Clip", prefix, vec![q, min, max], Vec::new(), None);
        }
        Ok(self.node(
            "DequantizeLinear",
            prefix,
            vec![q, scale, zero],
            vec![],
            None,
        ))
    }

    /// Average pooling as the integer engine computes it, exactly in float: the integers
    /// `q - Z` (QuantizeLinear, DequantizeLinear with scale 1), their window sums (the mean
    /// times the window size, rounded: the sums are exact integers), the mean rounded half up
    /// (`Floor(sum / n + 0.5)`), times the scale. (`AveragePool` → `QuantizeLinear` would round
    /// half to even, and a float mean misses exact ties.)
    fn avg_pool(
        &mut self,
        prefix: &str,
        inputs: Vec<String>,
        window: [usize; 2],
        global: bool,
        grid: &ActivationGrid,
    ) -> Result<String, String> {
        let data_type = container(grid.qmin, grid.qmax)?;
        let scale = self.constant(prefix, "scale", DataType::Float, &[], &[grid.scale]);
        let zero = self.constant(prefix, "zero_point", data_type, &[], &[grid.zero_point]);
        let one = self.constant(prefix, "one", DataType::Float, &[], &[1.0f32]);
        let half = self.constant(prefix, "half", DataType::Float, &[], &[0.5f32]);
        let count = (window[0] * window[1]) as f32;
        let count = self.constant(prefix, "count", DataType::Float, &[], &[count]);
        let quantize = [inputs, vec![scale.clone(), zero.clone()]].concat();
        let q = self.node("QuantizeLinear", prefix, quantize, Vec::new(), None);
        let centred = self.node("DequantizeLinear", prefix, vec![q, one, zero], vec![], None);
        let mean = match global {
            true => self.node("GlobalAveragePool", prefix, vec![centred], vec![], None),
            false => {
                let attributes = vec![ints("kernel_shape", &window), ints("strides", &window)];
                self.node("AveragePool", prefix, vec![centred], attributes, None)
            }
        };
        let sum = self.node("Mul", prefix, vec![mean, count.clone()], vec![], None);
        let sum = self.node("Round", prefix, vec![sum], vec![], None);
        let mean = self.node("Div", prefix, vec![sum, count], vec![], None);
        let mean = self.node("Add", prefix, vec![mean, half], vec![], None);
        let mean = self.node("Floor", prefix, vec![mean], vec![], None);
        Ok(self.node("Mul", prefix, vec![mean, scale], vec![], None))
    }

    /// The integer weight and its DequantizeLinear (per axis for per-channel weights).
    fn weight(&mut self, prefix: &str, weight: &IntWeight) -> Result<String, String> {
        let data_type = match container4(weight.qmin, weight.qmax) {
            Some(int4) if self.int4_weights => int4,
            _ => container(weight.qmin, weight.qmax)?,
        };
        let w = self.constant(prefix, "weight", data_type, &weight.shape, &weight.values);
        let per_channel = weight.scale.len() > 1;
        let dims = if per_channel {
            vec![weight.scale.len()]
        } else {
            vec![]
        };
        let scale = self.constant(
            prefix,
            "weight_scale",
            DataType::Float,
            &dims,
            &weight.scale,
        );
        let zero = self.constant(prefix, "weight_zero", data_type, &dims, &weight.zero_point);
        let axis = match per_channel {
            true => vec![int("axis", weight.axis as i64)],
            false => Vec::new(),
        };
        Ok(self.node("DequantizeLinear", prefix, vec![w, scale, zero], axis, None))
    }

    /// The int32 bias and its DequantizeLinear with scale `Si·Sw[c]`.
    fn bias(&mut self, prefix: &str, bias: &IntBias) -> String {
        let channels = bias.values.len();
        let b = self.constant(prefix, "bias", DataType::Int32, &[channels], &bias.values);
        let (dims, axis) = match bias.scale.len() > 1 {
            true => (vec![channels], vec![int("axis", 0)]),
            false => (vec![], Vec::new()),
        };
        let zeros = vec![0i32; bias.scale.len()];
        let scale = self.constant(prefix, "bias_scale", DataType::Float, &dims, &bias.scale);
        let zero = self.constant(prefix, "bias_zero", DataType::Int32, &dims, &zeros);
        self.node("DequantizeLinear", prefix, vec![b, scale, zero], axis, None)
    }
}
