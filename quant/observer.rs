//! Range observers: running min/max (the reference's) and exponential-moving-average min/max.

use burn::module::{Flag, Module, ModuleMapper, Param, RunningState};
use burn::tensor::{Device, Tensor};

use crate::{Granularity, QParams, QScheme, QuantError, Ste, fake_quant};

/// Configuration of a [`MinMaxObserver`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MinMaxObserverConfig {
    /// The scheme of the parameters the observer produces.
    pub scheme: QScheme,
    /// Number of channels for a per-channel scheme (1 per tensor).
    pub channels: usize,
    /// `None`: running min/max that only grows (the reference). `Some(m)`: EMA with weight `m`
    /// on each new batch (`range <- (1 - m) range + m batch`), the first batch taken as is.
    pub ema_momentum: Option<f64>,
    /// STE used by [`MinMaxObserver::fake_quant`].
    pub ste: Ste,
}

impl MinMaxObserverConfig {
    /// A per-tensor running min/max observer with the identity STE.
    pub fn new(scheme: QScheme) -> Self {
        Self {
            scheme,
            channels: 1,
            ema_momentum: None,
            ste: Ste::Identity,
        }
    }

    /// Sets the channel count of a per-channel scheme.
    pub fn with_channels(self, channels: usize) -> Self {
        Self { channels, ..self }
    }

    /// Switches to an exponential moving average with the given momentum in `(0, 1]`.
    pub fn with_ema_momentum(self, momentum: f64) -> Self {
        assert!(
            momentum > 0.0 && momentum <= 1.0,
            "EMA momentum must be in (0, 1], got {momentum}"
        );
        Self {
            ema_momentum: Some(momentum),
            ..self
        }
    }

    /// Sets the straight-through estimator.
    pub fn with_ste(self, ste: Ste) -> Self {
        Self { ste, ..self }
    }

    /// Creates the observer on `device`, with an empty range.
    pub fn init(&self, device: &Device) -> MinMaxObserver {
        let channels = match self.scheme.granularity() {
            Granularity::PerTensor => 1,
            Granularity::PerChannel { .. } => self.channels,
        };
        MinMaxObserver {
            min: RunningState::new(Tensor::zeros([channels], device)),
            max: RunningState::new(Tensor::zeros([channels], device)),
            updates: RunningState::new(Tensor::zeros([1], device)),
            observing: Param::from_bool(true),
            scheme: self.scheme,
            ema_momentum: self.ema_momentum,
            ste: self.ste,
        }
    }
}

/// Tracks the range of the tensors it sees and turns it into [`QParams`].
///
/// Its state (min, max, number of updates) is saved with the model. While `observing` is on,
/// [`MinMaxObserver::fake_quant`] updates the range before fake-quantizing; [`Module::valid`]
/// turns observing off, and [`MinMaxObserver::frozen`] / [`set_observing`] switch it by hand.
///
/// Non-finite values (NaN, ±inf) are replaced by 0 before the batch range is taken. Every range
/// is widened to contain 0, so for the running observer this ignores them. Empty tensors are
/// ignored.
#[derive(Module, Debug)]
pub struct MinMaxObserver {
    /// Observed lower bound per channel.
    pub min: RunningState<Tensor<1>>,
    /// Observed upper bound per channel.
    pub max: RunningState<Tensor<1>>,
    /// Number of batches observed, shape `[1]`.
    pub updates: RunningState<Tensor<1>>,
    /// Whether `fake_quant` updates the range.
    pub observing: Param<Flag>,
    #[module(skip)]
    scheme: QScheme,
    #[module(skip)]
    ema_momentum: Option<f64>,
    #[module(skip)]
    ste: Ste,
}

impl MinMaxObserver {
    /// The scheme of the parameters produced.
    pub fn scheme(&self) -> QScheme {
        self.scheme
    }

    /// Whether the range is updated by `fake_quant`.
    pub fn is_observing(&self) -> bool {
        self.observing.val().is_enabled()
    }

    /// The same observer with observing switched off (`true`) or on (`false`).
    pub fn frozen(self, frozen: bool) -> Self {
        Self {
            observing: self.observing.with_value(!frozen),
            ..self
        }
    }

    /// Widens (running) or moves (EMA) the range with the values of `x`.
    pub fn update<const D: usize>(&self, x: &Tensor<D>) {
        if x.shape().num_elements() == 0 {
            return;
        }
        let x = x.clone().detach();
        let x = x.clone().mask_fill(x.is_finite().bool_not(), 0.0);
        let (batch_min, batch_max) = self.batch_range(x);
        let (min, max) = (self.min.value_sync(), self.max.value_sync());
        let updates = self.updates.value_sync();
        let (min, max) = match self.ema_momentum {
            None => (min.min_pair(batch_min), max.max_pair(batch_max)),
            Some(m) => {
                // Weight 1 on the first batch, `m` afterwards.
                let weight = updates.clone().equal_elem(0.0).float() * (1.0 - m) + m;
                (
                    min.clone() + (batch_min - min) * weight.clone(),
                    max.clone() + (batch_max - max) * weight,
                )
            }
        };
        commit(&self.min, min);
        commit(&self.max, max);
        commit(&self.updates, updates + 1.0);
    }

    fn batch_range<const D: usize>(&self, x: Tensor<D>) -> (Tensor<1>, Tensor<1>) {
        match self.scheme.granularity() {
            Granularity::PerTensor => (x.clone().min(), x.max()),
            Granularity::PerChannel { axis } => {
                assert!(
                    axis < D,
                    "{}",
                    QuantError::AxisOutOfBounds { axis, rank: D }
                );
                let channels = x.dims()[axis];
                let rows: Tensor<2> = x.swap_dims(0, axis).reshape([channels as i32, -1]);
                (
                    rows.clone().min_dim(1).reshape([channels]),
                    rows.max_dim(1).reshape([channels]),
                )
            }
        }
    }

    /// The current range `(min, max)` (not yet widened to contain 0).
    pub fn range(&self) -> (Tensor<1>, Tensor<1>) {
        (self.min.value_sync(), self.max.value_sync())
    }

    /// Quantization parameters of the current range (unit scale while the range is empty).
    pub fn qparams(&self) -> QParams {
        let (min, max) = self.range();
        QParams::from_range(min, max, self.scheme)
    }

    /// Like [`MinMaxObserver::qparams`], but fails when no data was ever observed.
    pub fn checked_qparams(&self) -> Result<QParams, QuantError> {
        let updates = self.updates.value_sync().into_scalar::<f32>();
        if updates == 0.0 {
            return Err(QuantError::NotCalibrated);
        }
        Ok(self.qparams())
    }

    /// Observes `x` (when observing) and fake-quantizes it with the resulting parameters.
    pub fn fake_quant<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        self.observe_and_fake_quant(x).0
    }

    /// Like [`MinMaxObserver::fake_quant`], also returning the parameters used.
    pub fn observe_and_fake_quant<const D: usize>(&self, x: Tensor<D>) -> (Tensor<D>, QParams) {
        if self.is_observing() {
            self.update(&x);
        }
        let qparams = self.qparams();
        (fake_quant(x, &qparams, self.ste), qparams)
    }
}

/// Stores a new value so that it is visible at once, also to `save_file` and `into_record`
/// (which read the committed value, not the per-thread pending one).
pub(crate) fn commit(state: &RunningState<Tensor<1>>, value: Tensor<1>) {
    state.update(value);
    let _ = state.value_sync();
}

/// Switches observing on or off in every [`MinMaxObserver`] of a module tree.
///
/// ```
/// use burn_quant::{MinMaxObserverConfig, QScheme, default_device, set_observing};
/// let observer = MinMaxObserverConfig::new(QScheme::affine(8).unwrap())
///     .init(&default_device().unwrap());
/// let observer = set_observing(observer, false);
/// assert!(!observer.is_observing());
/// ```
pub fn set_observing<M: Module>(module: M, observing: bool) -> M {
    struct Switch {
        path: Vec<String>,
        observing: bool,
    }
    impl ModuleMapper for Switch {
        fn enter_module(&mut self, name: &str, _container_type: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _name: &str, _container_type: &str) {
            self.path.pop();
        }
        fn map_flag(&mut self, flag: Param<Flag>) -> Param<Flag> {
            if self.path.last().is_some_and(|name| name == "observing") {
                flag.with_value(self.observing)
            } else {
                flag
            }
        }
    }
    module.map(&mut Switch {
        path: Vec::new(),
        observing,
    })
}
