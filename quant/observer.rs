//! Range observers: running min/max (the reference's) and exponential-moving-average min/max,
//! optionally with a learned step size (LSQ) once observing stops.

use burn::module::{Flag, Module, ModuleMapper, Param, RunningState};
use burn::tensor::{Device, Tensor};

use crate::ops::finite_extremes;
use crate::running;
use crate::{
    Granularity, QParams, QScheme, QuantError, RangeEstimator, Ste, bipolar_fake_quant, fake_quant,
    lsq_fake_quant, lsq_grad_scale,
};

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
    /// LSQ: once observing stops, the step is a trained parameter (see [`LearnedStep`]).
    pub learned_step: bool,
    /// How one batch gives a range (extremes, percentile, MSE); not used by bipolar schemes,
    /// whose step is the mean magnitude.
    pub range: RangeEstimator,
    /// What `N` counts in LSQ's gradient scale of a learned step.
    pub step_grad: StepGradScale,
}

/// What `N` counts in LSQ's gradient scale `1/sqrt(N·Q_P)` of a learned step.
///
/// LSQ (Esser et al. 2019) takes `N` as the number of weights of a layer, or of features
/// (activations per example) for an activation step. With the batch counted too, an activation
/// step trained on batches of `B` examples gets a gradient `sqrt(B)` times smaller.
///
/// ```
/// use burn_quant::StepGradScale;
/// assert_eq!(StepGradScale::AllElements.elements(&[64, 20, 24, 24], 1), 64 * 20 * 24 * 24);
/// assert_eq!(StepGradScale::PerExample.elements(&[64, 20, 24, 24], 1), 20 * 24 * 24);
/// assert_eq!(StepGradScale::PerExample.elements(&[64, 20, 24, 24], 20), 24 * 24);
/// ```
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, burn::serde::Serialize, burn::serde::Deserialize,
)]
#[serde(crate = "burn::serde")]
pub enum StepGradScale {
    /// Every element one step covers, the batch included.
    #[default]
    AllElements,
    /// The elements one step covers in one example (the leading axis is the batch): LSQ's
    /// features per layer.
    PerExample,
}

impl StepGradScale {
    /// Parses `all` or `per-example`.
    ///
    /// ```
    /// use burn_quant::StepGradScale;
    /// assert_eq!(StepGradScale::parse("per-example").unwrap(), StepGradScale::PerExample);
    /// assert!(StepGradScale::parse("batch").is_err());
    /// ```
    pub fn parse(s: &str) -> Result<Self, QuantError> {
        match s.trim() {
            "all" => Ok(Self::AllElements),
            "per-example" => Ok(Self::PerExample),
            _ => Err(QuantError::InvalidSetting(format!(
                "a step gradient scale counts `all` elements or those `per-example`, got `{s}`"
            ))),
        }
    }

    /// `N` for a tensor of `dims` whose steps are shared by `channels` equal slices (at least 1).
    pub fn elements(self, dims: &[usize], channels: usize) -> usize {
        let all: usize = dims.iter().product();
        let per_step = all / channels.max(1);
        match self {
            Self::AllElements => per_step,
            Self::PerExample => per_step / dims.first().copied().unwrap_or(1).max(1),
        }
        .max(1)
    }
}

impl MinMaxObserverConfig {
    /// A per-tensor running min/max observer with the identity STE.
    pub fn new(scheme: QScheme) -> Self {
        Self {
            scheme,
            channels: 1,
            ema_momentum: None,
            ste: Ste::Identity,
            learned_step: false,
            range: RangeEstimator::MinMax,
            step_grad: StepGradScale::AllElements,
        }
    }

    /// Sets what `N` counts in LSQ's gradient scale.
    pub fn with_step_grad(self, step_grad: StepGradScale) -> Self {
        Self { step_grad, ..self }
    }

    /// Sets how one batch gives a range.
    pub fn with_range(self, range: RangeEstimator) -> Self {
        Self { range, ..self }
    }

    /// Sets whether the step is learned (LSQ) once observing stops.
    pub fn with_learned_step(self, learned_step: bool) -> Self {
        Self {
            learned_step,
            ..self
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
            learned: self.learned_step.then(|| LearnedStep {
                multiplier: Param::from_tensor(Tensor::ones([channels], device)),
                initial: RunningState::new(Tensor::zeros([channels], device)),
                zero_point: RunningState::new(Tensor::zeros([channels], device)),
            }),
            scheme: self.scheme,
            ema_momentum: self.ema_momentum,
            ste: self.ste,
            range: self.range,
            step_grad: self.step_grad,
        }
    }
}

/// The smallest learned step, as a fraction of the calibrated one.
const MIN_MULTIPLIER: f32 = 1e-3;

/// A learned step size (LSQ, Esser et al. 2019) of a [`MinMaxObserver`].
///
/// While the observer observes (calibration) the step follows the observed range. At the first
/// fake-quantization after observing stops, the current step and zero point are stored as
/// `k` ([`LearnedStep::initial`]) and `Z`; from then on the step is `S = k ⊙ p` with the
/// trained parameter `p` ([`LearnedStep::multiplier`], starting at 1), the op is
/// [`lsq_fake_quant`] with LSQ's gradient scale `1/sqrt(N·Q_P)` (`N`: elements per step,
/// `Q_P = qmax − Z`), and `p`'s gradient is divided by `k²` so that plain SGD moves `S` exactly
/// as LSQ does; `p` is floored at `10⁻³` so that the step stays positive. The zero point is
/// not learned. Freezing and the integer engine use `S`.
#[derive(Module, Debug)]
pub struct LearnedStep {
    /// `p`, per channel, starting at 1.
    pub multiplier: Param<Tensor<1>>,
    /// `k`, the observer's step when observing stopped (0 before).
    pub initial: RunningState<Tensor<1>>,
    /// `Z`, the observer's zero point when observing stopped.
    pub zero_point: RunningState<Tensor<1>>,
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
    /// The learned step (LSQ), used while not observing; `None`: the range gives the step.
    pub learned: Option<LearnedStep>,
    #[module(skip)]
    scheme: QScheme,
    #[module(skip)]
    ema_momentum: Option<f64>,
    #[module(skip)]
    ste: Ste,
    #[module(skip)]
    range: RangeEstimator,
    #[module(skip)]
    step_grad: StepGradScale,
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
    ///
    /// Replicas of a model on several devices share this state: each replica's batch is merged
    /// into the state the previous one left, one at a time (see the crate's multi-device notes
    /// in the README). The running range then ends every step at the range of the union of the
    /// replicas' batches; EMA takes each replica's batch as one update.
    pub fn update<const D: usize>(&self, x: &Tensor<D>) {
        if x.shape().num_elements() == 0 {
            return;
        }
        let (batch_min, batch_max) = self.batch_range(x.clone().detach());
        let device = batch_min.device();
        running::exclusive(|| {
            let min = running::read(&self.min, &device);
            let max = running::read(&self.max, &device);
            let updates = running::read(&self.updates, &device);
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
            running::commit(&self.min, min);
            running::commit(&self.max, max);
            running::commit(&self.updates, updates + 1.0);
        });
    }

    /// The batch's range per channel or per tensor, as the [`RangeEstimator`] takes it (NaN
    /// and ±∞ counted as 0); for a bipolar scheme `(-mean|x|, mean|x|)`, whose step `mean|x|`
    /// minimises the squared error of `S·sign(x)`.
    fn batch_range<const D: usize>(&self, x: Tensor<D>) -> (Tensor<1>, Tensor<1>) {
        let rows = match self.scheme.granularity() {
            Granularity::PerTensor => x.reshape([1, -1]),
            Granularity::PerChannel { axis } => channel_rows(x, axis),
        };
        if self.range == RangeEstimator::MinMax && !self.scheme.is_bipolar() {
            // One fused pass on the CPU backends.
            return finite_extremes(rows);
        }
        let rows = finite_or_zero(rows);
        if self.scheme.is_bipolar() {
            let channels = rows.dims()[0];
            let mean_abs = rows.abs().mean_dim(1).reshape([channels]);
            return (mean_abs.clone().neg(), mean_abs);
        }
        self.range.rows_range(rows, self.scheme)
    }

    /// The current range `(min, max)` (not yet widened to contain 0).
    pub fn range(&self) -> (Tensor<1>, Tensor<1>) {
        self.range_on(&self.min.value().device())
    }

    /// The current range on `device` (a replica's, when several share this state).
    fn range_on(&self, device: &Device) -> (Tensor<1>, Tensor<1>) {
        (
            running::read(&self.min, device),
            running::read(&self.max, device),
        )
    }

    /// Quantization parameters: of the learned step while it is in use, else of the current
    /// range (unit scale while the range is empty).
    pub fn qparams(&self) -> QParams {
        self.learned_qparams()
            .unwrap_or_else(|| self.range_qparams())
    }

    fn range_qparams(&self) -> QParams {
        self.range_qparams_on(&self.min.value().device())
    }

    /// The range's parameters on `device` (a replica's, when several share this state).
    fn range_qparams_on(&self, device: &Device) -> QParams {
        let (min, max) = self.range_on(device);
        QParams::from_range(min, max, self.scheme)
    }

    /// The learned step's parameters, when there is one and observing has stopped; the first
    /// call after calibration stores the range's step and zero point as `k` and `Z`.
    fn learned_qparams(&self) -> Option<QParams> {
        let learned = self.learned.as_ref()?;
        if self.is_observing() || self.update_count() == 0.0 {
            return None;
        }
        // The first replica to get here stores `k` and `Z`; the others read them.
        let device = learned.multiplier.device();
        let initial = running::exclusive(|| {
            let initial = running::read(&learned.initial, &device);
            if initial.clone().sum().into_scalar::<f32>() != 0.0 {
                return initial;
            }
            let range = self.range_qparams_on(&device);
            running::commit(&learned.initial, range.scale.clone().detach());
            running::commit(&learned.zero_point, range.zero_point.detach());
            range.scale.detach()
        });
        // A step must stay positive: `p` is floored at MIN_MULTIPLIER (no gradient below it).
        let p = learned.multiplier.val().clamp_min(MIN_MULTIPLIER);
        // Forward `p`, gradient `dL/dp / k²`: then `S = k ⊙ p` moves as LSQ's step under SGD.
        let damping = (initial.clone() * initial.clone()).recip();
        let p = p.clone() * damping.clone() - (p.clone() * damping).detach() + p.detach();
        Some(QParams {
            scale: initial * p,
            zero_point: running::read(&learned.zero_point, &device),
            scheme: self.scheme,
        })
    }

    /// How many batches the range has seen (0 before calibration).
    fn update_count(&self) -> f32 {
        running::host_value(&self.updates)
            .iter::<f32>()
            .next()
            .unwrap_or(0.0)
    }

    /// Like [`MinMaxObserver::qparams`], but fails when no data was ever observed.
    pub fn checked_qparams(&self) -> Result<QParams, QuantError> {
        if self.update_count() == 0.0 {
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
        // A learned step also gets a gradient, scaled by LSQ's `1/sqrt(N·Q_P)`.
        let (qparams, learned_grad_scale) = match self.learned_qparams() {
            Some(qparams) => {
                let channels = qparams.scale.dims()[0];
                // The largest zero point leaves the fewest positive levels.
                let top = qparams.zero_point.clone().max().into_scalar::<f32>() as i32;
                let grad_scale = lsq_grad_scale(
                    self.step_grad.elements(&x.dims(), channels),
                    self.scheme.qmax() - top,
                );
                (qparams, Some(grad_scale))
            }
            None => (self.range_qparams_on(&x.device()), None),
        };
        let y = match (self.scheme.is_bipolar(), learned_grad_scale) {
            (true, g) => bipolar_fake_quant(x, &qparams, self.ste, g.unwrap_or(1.0)),
            (false, Some(g)) => lsq_fake_quant(x, &qparams, g),
            (false, None) => fake_quant(x, &qparams, self.ste),
        };
        (y, qparams)
    }
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

/// `x` as one row per index along `axis` (`[x.dims()[axis], rest]`).
///
/// # Panics
/// When `axis` is not an axis of `x`.
pub(crate) fn channel_rows<const D: usize>(x: Tensor<D>, axis: usize) -> Tensor<2> {
    assert!(
        axis < D,
        "{}",
        QuantError::AxisOutOfBounds { axis, rank: D }
    );
    let channels = x.dims()[axis];
    x.swap_dims(0, axis).reshape([channels as i32, -1])
}

/// `x` with NaN and ±∞ replaced by 0.
pub(crate) fn finite_or_zero<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    x.clone().mask_fill(x.is_finite().bool_not(), 0.0)
}
