//! Freezing a model written with burn-quant's layers: every observer calibrated, observing
//! switched off, so that it runs in [`Mode::Integer`](crate::nn::Mode::Integer).

use burn::module::{Flag, Module, ModuleVisitor, Param};
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
    observing_observer(&model)?;
    Ok(set_observing(model, false))
}

/// The module path of the first observer of `model` still observing (`None`: all frozen);
/// fails with [`QuantError::UncalibratedObserver`] naming the first observer that never saw
/// data.
pub(crate) fn observing_observer<M: Module>(model: &M) -> Result<Option<String>, QuantError> {
    let mut check = Observers::default();
    model.visit(&mut check);
    match check.uncalibrated {
        Some(path) => Err(QuantError::UncalibratedObserver { path }),
        None => Ok(check.observing),
    }
}

/// The first observer (module path) that never saw data, and the first still observing.
#[derive(Default)]
struct Observers {
    path: Vec<String>,
    uncalibrated: Option<String>,
    observing: Option<String>,
}

impl Observers {
    /// The observer owning the parameter being visited.
    fn observer(&self) -> String {
        match &self.path[..self.path.len() - 1] {
            [] => "<root>".into(),
            observer => observer.join("."),
        }
    }

    fn visits(&self, parameter: &str) -> bool {
        self.path.last().is_some_and(|name| name == parameter)
    }
}

impl ModuleVisitor for Observers {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if self.uncalibrated.is_none()
            && self.visits("updates")
            && param.val().sum().into_scalar::<f32>() == 0.0
        {
            self.uncalibrated = Some(self.observer());
        }
    }

    fn visit_flag(&mut self, flag: &Param<Flag>) {
        if self.observing.is_none() && self.visits("observing") && flag.val().is_enabled() {
            self.observing = Some(self.observer());
        }
    }
}
