//! `HostMaxPoolBackend` for `Autodiff<B, C>`: the inner backend's forward with argmax indices,
//! and a backward pass that scatters the output gradient onto them.

use burn::backend::{
    Backend,
    autodiff::{
        Autodiff,
        checkpoint::{base::Checkpointer, strategy::CheckpointStrategy},
        grads::Gradients,
        ops::{Backward, Ops, OpsKind},
    },
    tensor::{FloatTensor, IntTensor},
};
use burn::tensor::ops::MaxPoolOptions;

use super::max_pool2d::HostMaxPoolBackend;

/// The backward pass of max-pooling (parent `x`).
#[derive(Debug)]
struct MaxPoolBackward;

/// What the backward pass reads: the input (for its shape), the argmax indices, the options.
#[derive(Debug, Clone)]
struct MaxPoolState<B: Backend> {
    x: FloatTensor<B>,
    indices: IntTensor<B>,
    options: MaxPoolOptions<2>,
}

impl<B: HostMaxPoolBackend> Backward<B, 1> for MaxPoolBackward {
    type State = MaxPoolState<B>;

    fn backward(
        self,
        ops: Ops<Self::State, 1>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let grad = grads.consume::<B>(&ops.node);
        let state = ops.state;
        if let Some(parent) = &ops.parents[0] {
            let gx = B::host_max_pool2d_backward(state.x, grad, state.indices, state.options);
            grads.register::<B>(parent.id, gx);
        }
    }
}

impl<B: HostMaxPoolBackend, C: CheckpointStrategy> HostMaxPoolBackend for Autodiff<B, C> {
    fn host_max_pool2d(x: FloatTensor<Self>, options: MaxPoolOptions<2>) -> FloatTensor<Self> {
        match MaxPoolBackward
            .prepare::<C>([x.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let x = x.into_primitive();
                let (out, indices) = B::host_max_pool2d_with_indices(x.clone(), options.clone());
                prep.finish(
                    MaxPoolState {
                        x,
                        indices,
                        options,
                    },
                    out,
                )
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(B::host_max_pool2d(x.into_primitive(), options))
            }
        }
    }
}
