//! Export: the traced graph of a model written once (convolution, ReLU, residual add,
//! pooling, flatten, linear), its ONNX form (decoded back with the generated protobuf types),
//! and the errors for models that cannot be exported, naming what is wrong.
//! onnxruntime runs the exported MNIST models in `examples/mnist/tests/onnx.rs`.

mod common;

use burn::module::Module;
use burn::nn::conv::Conv2dConfig;
use burn::nn::{LinearConfig, PaddingConfig2d};
use burn::tensor::{Distribution, Tensor};
use burn_quant::export::onnx::{OnnxConfig, proto};
use burn_quant::export::{self, ExportOp};
use burn_quant::nn::{
    Mode, QAdd, QAvgPool2d, QConfig, QConv2d, QLinear, QMaxPool2d, QReLU, QTensor,
};
use burn_quant::{QScheme, QuantError, freeze, set_observing};
use common::device;
use prost::Message;

#[derive(Module, Debug)]
struct Block {
    stem: QConv2d,
    conv: QConv2d,
    add: QAdd,
    relu: QReLU,
    max_pool: QMaxPool2d,
    avg_pool: QAvgPool2d,
    fc: QLinear,
}

impl Block {
    fn new(qconfig: &QConfig) -> Self {
        let device = device();
        let conv = |c_in, observe_input| {
            let config = Conv2dConfig::new([c_in, 4], [3, 3])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1));
            QConv2d::new(config.init(&device), qconfig, observe_input)
        };
        Self {
            stem: conv(2, true),
            conv: conv(4, false),
            add: QAdd::new(qconfig, &device),
            relu: QReLU::new(),
            max_pool: QMaxPool2d::new(2),
            avg_pool: QAvgPool2d::new(2),
            fc: QLinear::new(
                LinearConfig::new(4 * 2 * 2, 3).init(&device),
                qconfig,
                false,
            ),
        }
    }

    fn forward(&self, x: QTensor<4>) -> QTensor<2> {
        let x = self.relu.forward(self.stem.forward(x));
        let y = self.relu.forward(self.conv.forward(x.clone()));
        let x = self.max_pool.forward(self.add.forward(y, x));
        self.fc.forward(self.avg_pool.forward(x).flatten(1, 3))
    }

    /// The block with every observer calibrated on random images, still observing.
    fn calibrated(qconfig: &QConfig) -> Self {
        let block = Block::new(qconfig);
        for _ in 0..3 {
            let x = Tensor::<4>::random([4, 2, 8, 8], Distribution::Normal(0.0, 1.0), &device());
            block.forward(QTensor::new(x, Mode::FakeQuant));
        }
        block
    }
}

fn trace(block: &Block) -> Result<export::ExportGraph, QuantError> {
    export::trace(block, [1, 2, 8, 8], |m, x| m.forward(x))
}

fn op_names(graph: &export::ExportGraph) -> Vec<&'static str> {
    graph
        .nodes
        .iter()
        .map(|node| match node.op {
            ExportOp::Input { .. } => "input",
            ExportOp::Quantize(_) => "quantize",
            ExportOp::Conv { .. } => "conv",
            ExportOp::MatMul { .. } => "matmul",
            ExportOp::Relu => "relu",
            ExportOp::MaxPool { .. } => "max_pool",
            ExportOp::AvgPool { .. } => "avg_pool",
            ExportOp::Add => "add",
            ExportOp::Reshape { .. } => "reshape",
        })
        .collect()
}

#[test]
fn a_traced_model_lists_its_layers_in_order_with_their_integer_form() {
    let qconfig = QConfig::reference(4).unwrap();
    let block = freeze(Block::calibrated(&qconfig)).unwrap();
    let graph = trace(&block).unwrap();
    assert_eq!(
        op_names(&graph),
        [
            "input", "quantize", "conv", "quantize", "relu", "conv", "quantize", "relu", "add",
            "quantize", "max_pool", "avg_pool", "reshape", "matmul", "quantize",
        ]
    );
    graph.check().unwrap();
    assert_eq!(graph.output, graph.nodes.len() - 1);
    assert_eq!(graph.output_shape, [1, 3]);
    // The residual add reads the second convolution's ReLU and the first's.
    let add = &graph.nodes[8];
    assert_eq!(add.inputs, [7, 4]);
    assert!(add.layer.starts_with("QAdd"), "{}", add.layer);
    let ExportOp::Conv {
        weight,
        bias,
        pads,
        groups,
        ..
    } = &graph.nodes[2].op
    else {
        panic!("node 2 is the stem convolution");
    };
    assert_eq!(
        (weight.shape.as_slice(), *pads, *groups),
        (&[4, 2, 3, 3][..], [1; 4], 1)
    );
    // The reference weights: 4-bit affine per tensor; every integer on the grid.
    assert_eq!((weight.qmin, weight.qmax, weight.scale.len()), (0, 15, 1));
    assert!(weight.values.iter().all(|&q| (0..=15).contains(&q)));
    assert_eq!(bias.values.len(), 4);
    let ExportOp::AvgPool { window, global, .. } = &graph.nodes[11].op else {
        panic!("node 11 is the average pooling");
    };
    assert_eq!((*window, *global), ([2, 2], false));
    let ExportOp::Reshape { shape } = &graph.nodes[12].op else {
        panic!("node 12 is the flatten");
    };
    assert_eq!(shape, &[0, -1]);
    assert_eq!(graph.output_step().unwrap().len(), 1);
}

#[test]
fn the_onnx_model_holds_qdq_pairs_integer_weights_and_a_clip_below_8_bits() {
    for bits in [8, 4] {
        let qconfig = QConfig::reference(bits)
            .unwrap()
            .with_weight(QScheme::symmetric_narrow(bits).unwrap().per_channel(0));
        let block = freeze(Block::calibrated(&qconfig)).unwrap();
        let graph = trace(&block).unwrap();
        let bytes = export::onnx::to_bytes(&graph, &OnnxConfig::new()).unwrap();
        let model = proto::ModelProto::decode(bytes.as_slice()).unwrap();
        assert_eq!(model.opset_import[0].version, Some(export::onnx::OPSET));
        let graph = model.graph.clone().unwrap();
        let ops: Vec<&str> = graph.node.iter().map(|n| n.op_type()).collect();
        let count = |op: &str| ops.iter().filter(|&&o| o == op).count();
        // Activations: input, 2 conv outputs, add, fc output (a Clip each below 8 bits); the
        // average pooling's integers; weights and biases: 3 layers each.
        assert_eq!(
            (count("QuantizeLinear"), count("DequantizeLinear")),
            (6, 12)
        );
        assert_eq!(count("Clip"), if bits < 8 { 5 } else { 0 }, "{bits} bits");
        for op in [
            "Conv",
            "Relu",
            "Add",
            "MaxPool",
            "AveragePool",
            "Floor",
            "Reshape",
            "MatMul",
        ] {
            assert!(count(op) > 0, "{op} missing at {bits} bits");
        }
        let weight = graph
            .initializer
            .iter()
            .find(|t| t.name().ends_with("/weight") && t.dims == [4, 2, 3, 3])
            .unwrap();
        // Symmetric weights: signed, within the narrow range of `bits` bits.
        assert_eq!(
            weight.data_type(),
            proto::tensor_proto::DataType::Int8 as i32
        );
        let limit = (1i32 << (bits - 1)) - 1;
        assert!(
            weight
                .raw_data()
                .iter()
                .all(|&b| (b as i8 as i32).abs() <= limit)
        );
        let per_axis = graph
            .node
            .iter()
            .filter(|n| n.op_type() == "DequantizeLinear");
        assert!(
            per_axis
                .into_iter()
                .any(|n| n.attribute.iter().any(|a| a.name() == "axis"))
        );
        assert_eq!(graph.input[0].name(), "input");
        assert_eq!(graph.output[0].name(), "output");
        assert!(
            model.doc_string().contains("[batch, 2, 8, 8]"),
            "{}",
            model.doc_string()
        );
    }
}

#[test]
fn models_that_cannot_be_exported_are_errors_that_name_the_cause() {
    let qconfig = QConfig::reference(8).unwrap();
    // Never calibrated: the first observer is named.
    match trace(&Block::new(&qconfig)) {
        Err(QuantError::UncalibratedObserver { path }) => {
            assert_eq!(path, "stem.observers.input")
        }
        other => panic!("expected an uncalibrated observer, got {other:?}"),
    }
    // Calibrated but still observing.
    let calibrated = Block::calibrated(&qconfig);
    match trace(&calibrated) {
        Err(QuantError::Unexportable { layer, reason }) => {
            assert_eq!(layer, "stem.observers.input");
            assert!(reason.contains("freeze"), "{reason}");
        }
        other => panic!("expected an observing observer, got {other:?}"),
    }
    let frozen = freeze(calibrated).unwrap();
    // A custom function between the layers.
    let custom = export::trace(&frozen, [1, 2, 8, 8], |m, x| {
        let x = x.map_values(|t| t * 1.0, |q, _| q);
        m.forward(x)
    });
    match custom {
        Err(e @ QuantError::Unexportable { .. }) => assert_eq!(
            e.to_string(),
            "cannot export QTensor::map_values #1: a custom function has no export mapping"
        ),
        other => panic!("expected map_values to be refused, got {other:?}"),
    }
    // An output not computed from the traced input.
    let detached = export::trace(&frozen, [1, 2, 8, 8], |m, x| {
        m.forward(QTensor::new(x.dequantize(), Mode::Integer))
    });
    assert!(matches!(detached, Err(QuantError::Unexportable { layer, .. }) if layer == "output"));
    // A hand-edited graph that an exporter cannot write: errors, not panics.
    let graph = trace(&frozen).unwrap();
    let mut broken = graph.clone();
    broken.nodes[2].inputs = vec![5];
    match export::onnx::to_bytes(&broken, &OnnxConfig::new()) {
        Err(QuantError::Unexportable { layer, .. }) => assert!(layer.starts_with("QConv2d")),
        other => panic!("expected a forward reference to be refused, got {other:?}"),
    }
    let mut broken = graph.clone();
    if let ExportOp::Conv { weight, .. } = &mut broken.nodes[2].op {
        weight.values.pop();
    }
    assert!(broken.check().is_err());
    let mut broken = graph;
    broken.output = broken.nodes.len();
    assert!(export::onnx::to_bytes(&broken, &OnnxConfig::new()).is_err());
    // Observing switched back on after freezing.
    let observing = set_observing(frozen, true);
    assert!(matches!(
        trace(&observing),
        Err(QuantError::Unexportable { .. })
    ));
}

#[test]
fn weights_of_at_most_4_bits_are_stored_as_packed_int4_on_request() {
    let qconfig = QConfig::reference(4)
        .unwrap()
        .with_weight(QScheme::symmetric_narrow(3).unwrap().per_channel(0));
    let block = freeze(Block::calibrated(&qconfig)).unwrap();
    let graph = trace(&block).unwrap();
    let ExportOp::Conv { weight, .. } = &graph.nodes[2].op else {
        panic!("node 2 is the stem convolution");
    };
    let config = OnnxConfig::new().with_int4_weights(true);
    let bytes = export::onnx::to_bytes(&graph, &config).unwrap();
    let model = proto::ModelProto::decode(bytes.as_slice()).unwrap();
    assert_eq!(
        model.opset_import[0].version,
        Some(export::onnx::OPSET_INT4)
    );
    assert_eq!(model.ir_version, Some(export::onnx::IR_VERSION_INT4));
    let initializers = &model.graph.as_ref().unwrap().initializer;
    let stem = initializers
        .iter()
        .find(|t| t.name().ends_with("/weight") && t.dims == [4, 2, 3, 3])
        .unwrap();
    assert_eq!(stem.data_type(), proto::tensor_proto::DataType::Int4 as i32);
    // 72 weights, two per byte, the first in the low nibble (sign-extended from 4 bits).
    let raw = stem.raw_data();
    assert_eq!(raw.len(), 36);
    let unpacked: Vec<i32> = raw
        .iter()
        .flat_map(|&b| [((b << 4) as i8 >> 4) as i32, (b as i8 >> 4) as i32])
        .collect();
    assert_eq!(unpacked, weight.values);
}
