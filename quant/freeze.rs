//! Freezing a model written with burn-quant's layers: every observer calibrated, observing
//! switched off, so that it runs in [`Mode::Integer`](crate::nn::Mode::Integer).

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::Tensor;

use crate::{QuantError, set_observing};

/// Checks that every observer of `model` has seen data and switches observing off.
///
/// Fails with [`QuantError::UncalibratedObserver`] naming the first observer (by its module
/// path, e.g. `conv1.observers.output`) that never saw data: run a few batches through the
/// model in [`Mode::FakeQuant`](crate::nn::Mode::FakeQuant) first.
///
/// ```
/// use burn::tensor::Tensor;
/// use burn_quant::{MinMaxObserverConfig, QScheme, default_device, freeze};
/// let device = default_device().unwrap();
/// let observer = MinMaxObserverConfig::new(QScheme::affine(8).unwrap()).init(&device);
/// assert!(freeze(observer.clone()).is_err());
/// let _ = observer.fake_quant(Tensor::<1>::from_floats([1.0, -2.0], &device));
/// assert!(!freeze(observer).unwrap().is_observing());
/// ```
pub fn freeze<M: Module>(model: M) -> Result<M, QuantError> {
    check_calibrated(&model)?;
    Ok(set_observing(model, false))
}

/// Fails with [`QuantError::UncalibratedObserver`] naming the first observer of `model` that
/// never saw data.
pub(crate) fn check_calibrated<M: Module>(model: &M) -> Result<(), QuantError> {
    let mut check = Calibrated {
        path: Vec::new(),
        missing: None,
    };
    model.visit(&mut check);
    match check.missing {
        Some(path) => Err(QuantError::UncalibratedObserver { path }),
        None => Ok(()),
    }
}

struct Calibrated {
    path: Vec<String>,
    missing: Option<String>,
}

impl ModuleVisitor for Calibrated {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if self.missing.is_some() || self.path.last().is_none_or(|name| name != "updates") {
            return;
        }
        if param.val().sum().into_scalar::<f32>() == 0.0 {
            let observer = &self.path[..self.path.len() - 1];
            self.missing = Some(if observer.is_empty() {
                "<root>".into()
            } else {
                observer.join(".")
            });
        }
    }
}
