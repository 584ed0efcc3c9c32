//! `DirectConvBackend` for `Autodiff<B, C>`: the inner backend's direct forward, and a backward
//! pass that computes the input, weight and bias gradients with the inner backend's direct
//! kernels (only those whose input is tracked).

use burn::backend::{
    Backend,
    autodiff::{
        Autodiff, NodeId,
        checkpoint::{base::Checkpointer, strategy::CheckpointStrategy},
        grads::Gradients,
        ops::{Backward, Ops, OpsKind},
    },
    tensor::FloatTensor,
};
use burn::tensor::ops::ConvOptions;

use super::conv2d::DirectConvBackend;

/// The backward pass of the direct convolution (parents `x`, `weight`, `bias`).
#[derive(Debug)]
struct ConvBackward;

/// What the backward pass reads: the checkpointed input and weight, the bias (only its shape
/// is read) and the options.
#[derive(Debug, Clone)]
struct ConvState<B: Backend> {
    x: NodeId,
    weight: NodeId,
    bias: FloatTensor<B>,
    options: ConvOptions<2>,
}

impl<B: DirectConvBackend> Backward<B, 3> for ConvBackward {
    type State = ConvState<B>;

    fn backward(
        self,
        ops: Ops<Self::State, 3>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        let grad = grads.consume::<B>(&ops.node);
        let state = ops.state;
        let x: FloatTensor<B> = checkpointer.retrieve_node_output(state.x);
        let weight: FloatTensor<B> = checkpointer.retrieve_node_output(state.weight);
        let options = state.options;
        if let Some(parent) = &ops.parents[0] {
            let gx = B::direct_conv2d_x_backward(
                x.clone(),
                weight.clone(),
                grad.clone(),
                options.clone(),
            );
            grads.register::<B>(parent.id, gx);
        }
        if let Some(parent) = &ops.parents[1] {
            let gw = B::direct_conv2d_weight_backward(x.clone(), weight, grad.clone(), options);
            grads.register::<B>(parent.id, gw);
        }
        if let Some(parent) = &ops.parents[2] {
            let gb = B::direct_conv2d_bias_backward(x, state.bias, grad);
            grads.register::<B>(parent.id, gb);
        }
    }
}

impl<B: DirectConvBackend, C: CheckpointStrategy> DirectConvBackend for Autodiff<B, C> {
    fn direct_conv2d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        let nodes = [x.node(), weight.node(), bias.node()];
        match ConvBackward.prepare::<C>(nodes).compute_bound().stateful() {
            OpsKind::Tracked(mut prep) => {
                let state = ConvState {
                    x: prep.checkpoint(&x),
                    weight: prep.checkpoint(&weight),
                    bias: bias.primitive().clone(),
                    options: options.clone(),
                };
                let out = B::direct_conv2d(
                    x.primitive().clone(),
                    weight.primitive().clone(),
                    bias.into_primitive(),
                    options,
                );
                prep.finish(state, out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::direct_conv2d(
                x.into_primitive(),
                weight.into_primitive(),
                bias.into_primitive(),
                options,
            )),
        }
    }
}
