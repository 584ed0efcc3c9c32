//! `FakeQuantBackend` for `Autodiff<B, C>`: the inner backend's fused forward and a hand-written
//! straight-through-estimator backward.

use burn::backend::{
    Backend, TensorMetadata,
    autodiff::{
        Autodiff, NodeId,
        checkpoint::{base::Checkpointer, strategy::CheckpointStrategy},
        grads::Gradients,
        ops::{Backward, Ops, OpsKind},
    },
    get_or_init_device_settings,
    tensor::FloatTensor,
};

use super::{FakeQuantBackend, broadcast_channels};

/// Identity STE: `dL/dx = dL/dy`.
#[derive(Debug)]
struct IdentityBackward;

impl<B: Backend> Backward<B, 1> for IdentityBackward {
    type State = ();

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [parent] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        if let Some(parent) = parent {
            grads.register::<B>(parent.id, grad);
        }
    }
}

/// What the clipped STE needs to rebuild the in-range mask.
#[derive(Debug, Clone)]
struct ClipState<B: Backend> {
    x: NodeId,
    scale: FloatTensor<B>,
    zero_point: FloatTensor<B>,
    axis: usize,
    qmin: i32,
    qmax: i32,
}

/// Clipped STE: `dL/dx = dL/dy * 1[qmin <= round(x / S) + Z <= qmax]`.
#[derive(Debug)]
struct ClippedBackward;

impl<B: Backend> Backward<B, 1> for ClippedBackward {
    type State = ClipState<B>;

    fn backward(
        self,
        ops: Ops<Self::State, 1>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        let [parent] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let Some(parent) = parent else { return };
        let state = ops.state;
        let x: FloatTensor<B> = checkpointer.retrieve_node_output(state.x);
        let rank = x.shape().num_dims();
        let bool_dtype = get_or_init_device_settings::<B>(&x.device()).bool_dtype;
        let scale = broadcast_channels::<B>(state.scale, rank, state.axis);
        let zero_point = broadcast_channels::<B>(state.zero_point, rank, state.axis);
        let q = B::float_add(B::float_round(B::float_div(x, scale)), zero_point);
        let below = B::float_lower_elem(q.clone(), (state.qmin as f32).into(), bool_dtype);
        let above = B::float_greater_elem(q, (state.qmax as f32).into(), bool_dtype);
        let outside = B::bool_or(below, above);
        grads.register::<B>(parent.id, B::float_mask_fill(grad, outside, 0.0f32.into()));
    }
}

impl<B: FakeQuantBackend, C: CheckpointStrategy> FakeQuantBackend for Autodiff<B, C> {
    fn fake_quant(
        x: FloatTensor<Self>,
        scale: FloatTensor<Self>,
        zero_point: FloatTensor<Self>,
        axis: usize,
        qmin: i32,
        qmax: i32,
        clipped_ste: bool,
    ) -> FloatTensor<Self> {
        // The quantization parameters are constants: no gradient flows to them.
        let scale = scale.into_primitive();
        let zero_point = zero_point.into_primitive();
        let forward = |x: FloatTensor<B>| {
            B::fake_quant(
                x,
                scale.clone(),
                zero_point.clone(),
                axis,
                qmin,
                qmax,
                clipped_ste,
            )
        };
        if !clipped_ste {
            let prep = IdentityBackward.prepare::<C>([x.node()]).compute_bound();
            return prep.stateless(forward(x.into_primitive()));
        }
        match ClippedBackward
            .prepare::<C>([x.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let x_id = prep.checkpoint(&x);
                let out = forward(x.primitive().clone());
                let state = ClipState {
                    x: x_id,
                    scale: scale.clone(),
                    zero_point: zero_point.clone(),
                    axis,
                    qmin,
                    qmax,
                };
                prep.finish(state, out)
            }
            OpsKind::UnTracked(prep) => prep.finish(forward(x.into_primitive())),
        }
    }
}
