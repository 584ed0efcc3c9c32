//! The integer form of a layer kept between calls on the CPU backends: freezing a layer (its
//! weights quantized, its bias and multipliers computed, its weights packed) takes dozens of
//! tensor ops, more than the layer's own integer arithmetic on a single image.

use std::any::Any;
use std::sync::Mutex;

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::{Bool, Int, Tensor, TensorData};

use crate::backend::is_host_device;
use crate::{QParams, QuantError};

/// A layer's integer form with the exact contents it was frozen from: every parameter and
/// running state of the layer (its weights, observers, batch-norm statistics) and the input
/// grid. The cached form is reused only while all of them are equal, byte for byte, so a
/// trained, re-calibrated or reloaded layer is frozen anew. A clone starts empty.
#[derive(Default)]
pub(crate) struct FrozenCache(Mutex<Option<Frozen>>);

struct Frozen {
    key: Vec<u8>,
    value: Box<dyn Any + Send + Sync>,
}

impl Clone for FrozenCache {
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl std::fmt::Debug for FrozenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let filled = self.0.lock().is_ok_and(|frozen| frozen.is_some());
        f.debug_struct("FrozenCache")
            .field("filled", &filled)
            .finish()
    }
}

impl FrozenCache {
    /// `freeze()`'s result for `layer` on the input grid `input`: on the CPU backends the
    /// cached one when `layer` and `input` are unchanged since it was frozen, else frozen now
    /// (and kept). On other devices (where reading the contents back costs a synchronization)
    /// it always freezes.
    pub(crate) fn get_or_freeze<M: Module, T: Clone + Send + Sync + 'static>(
        &self,
        layer: &M,
        input: &QParams,
        freeze: impl FnOnce() -> Result<T, QuantError>,
    ) -> Result<T, QuantError> {
        if !is_host_device(&input.scale.device()) {
            return freeze();
        }
        let key = contents(layer, input);
        if let Ok(cached) = self.0.lock()
            && let Some(frozen) = cached.as_ref()
            && frozen.key == key
            && let Some(value) = frozen.value.downcast_ref::<T>()
        {
            return Ok(value.clone());
        }
        let value = freeze()?;
        if let Ok(mut cached) = self.0.lock() {
            *cached = Some(Frozen {
                key,
                value: Box::new(value.clone()),
            });
        }
        Ok(value)
    }
}

/// Every parameter and running state of `layer`, then `input`'s scheme, scale and zero point,
/// as bytes (each tensor preceded by its shape).
fn contents<M: Module>(layer: &M, input: &QParams) -> Vec<u8> {
    let mut bytes = Contents::default();
    layer.visit(&mut bytes);
    bytes.push(input.scale.to_data());
    bytes.push(input.zero_point.to_data());
    bytes.0.extend(format!("{:?}", input.scheme).bytes());
    bytes.0
}

#[derive(Default)]
struct Contents(Vec<u8>);

impl Contents {
    fn push(&mut self, data: TensorData) {
        for &d in data.shape().iter() {
            self.0.extend((d as u64).to_le_bytes());
        }
        self.0.extend(format!("{:?}", data.dtype()).bytes());
        self.0.extend_from_slice(data.as_bytes());
    }
}

impl ModuleVisitor for Contents {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        self.push(param.val().into_data());
    }

    fn visit_int<const D: usize>(&mut self, param: &Param<Tensor<D, Int>>) {
        self.push(param.val().into_data());
    }

    fn visit_bool<const D: usize>(&mut self, param: &Param<Tensor<D, Bool>>) {
        self.push(param.val().into_data());
    }
}

#[cfg(test)]
mod tests {
    use burn::nn::conv::Conv2dConfig;
    use burn::tensor::Distribution;

    use super::*;
    use crate::default_device;
    use crate::freeze;
    use crate::nn::{Mode, QConfig, QConv2d, QTensor};

    fn integers(layer: &QConv2d, x: &Tensor<4>) -> Vec<i32> {
        let y = layer.forward(QTensor::new(x.clone(), Mode::Integer));
        let q = y.integers().expect("integer output");
        q.into_data().convert::<i32>().try_to_vec::<i32>().unwrap()
    }

    #[test]
    fn a_changed_layer_is_frozen_anew_and_a_clone_starts_empty() {
        let device = default_device().unwrap();
        let qconfig = QConfig::reference(4).unwrap();
        let conv = Conv2dConfig::new([2, 3], [3, 3]).init(&device);
        let layer = QConv2d::new(conv, &qconfig, true);
        let x = Tensor::<4>::random([2, 2, 6, 6], Distribution::Uniform(-1.0, 1.0), &device);
        let _ = layer.forward(QTensor::new(x.clone(), Mode::FakeQuant));
        let mut layer = freeze(layer).unwrap();
        let first = integers(&layer, &x);
        let filled = format!("{:?}", layer.observers.frozen);
        assert_eq!(filled.contains("filled: true"), is_host_device(&device));
        assert_eq!(integers(&layer, &x), first);
        assert!(format!("{:?}", layer.clone().observers.frozen).contains("filled: false"));

        // New weights in the same layer (its cache kept): frozen anew, as a fresh clone is.
        layer.conv.weight = layer.conv.weight.clone().map(|w| w.neg());
        let changed = integers(&layer, &x);
        assert_ne!(changed, first);
        assert_eq!(changed, integers(&layer.clone(), &x));
    }
}
