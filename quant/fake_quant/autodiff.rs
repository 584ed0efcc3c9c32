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
    tensor::{BoolTensor, FloatTensor},
};

use super::{FakeQuantBackend, LsqGradientBackend, broadcast_channels};

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

/// Where `x` falls on a grid: `v = x / S`, `round(v)` and the zero point, broadcast per channel.
struct GridPosition<B: Backend> {
    v: FloatTensor<B>,
    rounded: FloatTensor<B>,
    zero_point: FloatTensor<B>,
    bool_dtype: burn::tensor::BoolDType,
}

impl<B: Backend> GridPosition<B> {
    fn of(
        x: FloatTensor<B>,
        scale: FloatTensor<B>,
        zero_point: FloatTensor<B>,
        axis: usize,
    ) -> Self {
        let rank = x.shape().num_dims();
        let bool_dtype = get_or_init_device_settings::<B>(&x.device()).bool_dtype;
        let scale = broadcast_channels::<B>(scale, rank, axis);
        let v = B::float_div(x, scale);
        Self {
            rounded: B::float_round(v.clone()),
            v,
            zero_point: broadcast_channels::<B>(zero_point, rank, axis),
            bool_dtype,
        }
    }

    /// The masks `round(v) + Z < qmin` and `round(v) + Z > qmax`.
    fn outside(&self, qmin: i32, qmax: i32) -> (BoolTensor<B>, BoolTensor<B>) {
        let q = B::float_add(self.rounded.clone(), self.zero_point.clone());
        (
            B::float_lower_elem(q.clone(), (qmin as f32).into(), self.bool_dtype),
            B::float_greater_elem(q, (qmax as f32).into(), self.bool_dtype),
        )
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
        let grid = GridPosition::<B>::of(x, state.scale, state.zero_point, state.axis);
        let (below, above) = grid.outside(state.qmin, state.qmax);
        let outside = B::bool_or(below, above);
        grads.register::<B>(parent.id, B::float_mask_fill(grad, outside, 0.0f32.into()));
    }
}

/// What the LSQ backward needs: the input and the step (checkpointed), the zero point and grid.
#[derive(Debug, Clone)]
struct LsqState<B: Backend> {
    x: NodeId,
    scale: NodeId,
    zero_point: FloatTensor<B>,
    axis: usize,
    qmin: i32,
    qmax: i32,
    grad_scale: f32,
}

/// LSQ: the clipped STE for `x`, and for the step
/// `dL/dS = g · Σ dL/dy · (round(v) − v | qmin − Z | qmax − Z)` (on the grid | below | above).
#[derive(Debug)]
struct LsqBackward;

impl<B: LsqGradientBackend> Backward<B, 2> for LsqBackward {
    type State = LsqState<B>;

    fn backward(
        self,
        ops: Ops<Self::State, 2>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        let [x_parent, scale_parent] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let state = ops.state;
        let x: FloatTensor<B> = checkpointer.retrieve_node_output(state.x);
        let step: FloatTensor<B> = checkpointer.retrieve_node_output(state.scale);
        let [grad_x, grad_step] = B::lsq_gradients(
            x,
            step,
            state.zero_point,
            grad,
            state.axis,
            state.qmin,
            state.qmax,
            state.grad_scale,
        );
        if let Some(parent) = x_parent {
            grads.register::<B>(parent.id, grad_x);
        }
        if let Some(parent) = scale_parent {
            grads.register::<B>(parent.id, grad_step);
        }
    }
}

/// [`LsqGradientBackend::lsq_gradients`] composed of backend ops (its default body).
#[allow(clippy::too_many_arguments)]
pub(crate) fn lsq_gradients_ops<B: Backend>(
    x: FloatTensor<B>,
    step: FloatTensor<B>,
    zero_point: FloatTensor<B>,
    grad: FloatTensor<B>,
    axis: usize,
    qmin: i32,
    qmax: i32,
    grad_scale: f32,
) -> [FloatTensor<B>; 2] {
    let step_shape = step.shape();
    let rank = x.shape().num_dims();
    let float_dtype = x.dtype();
    let grid = GridPosition::<B>::of(x, step, zero_point, axis);
    let (below, above) = grid.outside(qmin, qmax);
    let GridPosition {
        v,
        rounded,
        zero_point,
        ..
    } = grid;
    let outside = B::bool_or(below.clone(), above.clone());
    let grad_x = B::float_mask_fill(grad.clone(), outside.clone(), 0.0f32.into());
    // (qmin − Z) and (qmax − Z), broadcast per channel.
    let low = B::float_neg(B::float_sub_scalar(
        zero_point.clone(),
        (qmin as f32).into(),
    ));
    let high = B::float_neg(B::float_sub_scalar(zero_point, (qmax as f32).into()));
    let to_float = |mask| B::bool_into_float(mask, float_dtype.into());
    let inside = to_float(B::bool_not(outside));
    let derivative = B::float_add(
        B::float_mul(B::float_sub(rounded, v), inside),
        B::float_add(
            B::float_mul(to_float(below), low),
            B::float_mul(to_float(above), high),
        ),
    );
    let per_element = B::float_mul_scalar(B::float_mul(grad, derivative), grad_scale.into());
    let channels = step_shape.num_elements();
    let dims: Vec<usize> = (0..rank).filter(|&d| channels == 1 || d != axis).collect();
    let summed = B::float_sum_dims(per_element, &dims);
    [grad_x, B::float_reshape(summed, step_shape)]
}

impl<B: FakeQuantBackend + LsqGradientBackend, C: CheckpointStrategy> FakeQuantBackend
    for Autodiff<B, C>
{
    fn fake_quant_lsq(
        x: FloatTensor<Self>,
        scale: FloatTensor<Self>,
        zero_point: FloatTensor<Self>,
        axis: usize,
        qmin: i32,
        qmax: i32,
        grad_scale: f32,
    ) -> FloatTensor<Self> {
        // The zero point is a constant: no gradient flows to it.
        let zero_point = zero_point.into_primitive();
        let forward =
            |x, scale, zero_point| B::fake_quant(x, scale, zero_point, axis, qmin, qmax, true);
        match LsqBackward
            .prepare::<C>([x.node(), scale.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let x_id = prep.checkpoint(&x);
                let scale_id = prep.checkpoint(&scale);
                let out = forward(
                    x.primitive().clone(),
                    scale.primitive().clone(),
                    zero_point.clone(),
                );
                let state = LsqState {
                    x: x_id,
                    scale: scale_id,
                    zero_point,
                    axis,
                    qmin,
                    qmax,
                    grad_scale,
                };
                prep.finish(state, out)
            }
            OpsKind::UnTracked(prep) => prep.finish(forward(
                x.into_primitive(),
                scale.into_primitive(),
                zero_point,
            )),
        }
    }

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
