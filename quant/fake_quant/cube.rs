//! The fused fake-quant CubeCL kernel: one read, one write per element.

use burn::backend::cubecl::dtype_to_storage_type;
use burn_cubecl::{CubeBackend, kernel::into_contiguous, ops::numeric::empty_device_dtype};
use cubecl::{calculate_cube_count_elemwise, prelude::*};

use super::FakeQuantBackend;
use burn::backend::tensor::FloatTensor;

/// `output[i] = (clamp(round(input[i] / s) + z, qmin, qmax) - z) * s` with `s`, `z` taken from
/// channel `(i / inner) % channels`.
#[cube(launch)]
pub fn fake_quant_kernel<F: Float>(
    input: &Tensor<F>,
    scale: &Tensor<F>,
    zero_point: &Tensor<F>,
    output: &mut Tensor<F>,
    inner: usize,
    channels: usize,
    qmin: f32,
    qmax: f32,
    #[define(F)] _dtype: ElemType,
) {
    let i = ABSOLUTE_POS;
    if i >= output.len() {
        terminate!();
    }
    let c = (i / inner) % channels;
    let s = scale[c];
    let z = zero_point[c];
    let q = F::clamp(
        F::round(input[i] / s) + z,
        F::cast_from(qmin),
        F::cast_from(qmax),
    );
    output[i] = (q - z) * s;
}

impl FakeQuantBackend for CubeBackend {
    fn fake_quant(
        x: FloatTensor<Self>,
        scale: FloatTensor<Self>,
        zero_point: FloatTensor<Self>,
        axis: usize,
        qmin: i32,
        qmax: i32,
        _clipped_ste: bool,
    ) -> FloatTensor<Self> {
        let x = into_contiguous(x);
        let scale = into_contiguous(scale);
        let zero_point = into_contiguous(zero_point);
        let shape = x.meta.shape().clone();
        let channels = scale.meta.shape().num_elements();
        let inner: usize = if channels > 1 {
            shape.iter().skip(axis + 1).product()
        } else {
            1
        };
        let num_elems = shape.num_elements();
        let dtype = x.dtype;
        let output = empty_device_dtype(x.client.clone(), x.device.clone(), shape, dtype);
        if num_elems == 0 {
            return output;
        }
        let cube_dim = CubeDim::new(&x.client, num_elems);
        let cube_count = calculate_cube_count_elemwise(&x.client, num_elems, cube_dim);
        fake_quant_kernel::launch(
            &x.client,
            cube_count,
            cube_dim,
            x.clone().into_tensor_arg(),
            scale.into_tensor_arg(),
            zero_point.into_tensor_arg(),
            output.clone().into_tensor_arg(),
            inner,
            channels,
            qmin as f32,
            qmax as f32,
            dtype_to_storage_type(dtype),
        );
        output
    }
}
