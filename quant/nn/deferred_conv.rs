//! A convolution's integer output computed when it is read, so that a ReLU and a max-pooling
//! that follow the convolution run inside its kernel.

use std::sync::{Arc, OnceLock};

use burn::tensor::{Int, Tensor};

use super::QValue;
use crate::QParams;
use crate::engine::{ConvEpilogue, IntConv2d};

/// The integers of `conv` on `input`, clamped below at `floor` (a ReLU: the output zero
/// point): deferred where `conv` runs as one kernel, else computed now.
pub(crate) fn integer_conv_output(
    conv: IntConv2d,
    input: Tensor<4, Int>,
    floor: Option<i32>,
) -> QValue<4> {
    let floor = floor.unwrap_or(i32::MIN);
    match conv.fuses_on(&input.device()) {
        true => {
            let mut deferred = DeferredConv::new(conv, input);
            deferred.raise_floor(floor);
            QValue::Deferred(Box::new(deferred))
        }
        false => {
            let epilogue = ConvEpilogue {
                floor,
                max_pool: None,
            };
            QValue::Int {
                q: conv.forward_fused(input, epilogue),
                grid: conv.output,
            }
        }
    }
}

/// The integer output of a frozen convolution, not computed yet ([`super::QValue::Deferred`]).
///
/// In [`super::Mode::Integer`], where the convolution runs as one kernel
/// ([`IntConv2d::fuses_on`]: the CPU backends), [`super::QConv2d`] and [`super::QConvBn`]
/// return it. A following [`super::QReLU`] raises its floor and a following
/// [`super::QMaxPool2d`] (non-overlapping square windows) sets its pooling, in either order:
/// both run inside the convolution's kernel, which pools the accumulators before requantizing
/// them ([`IntConv2d::forward_fused`]). Anything else computes it. The integers are those of
/// the convolution, the ReLU and the pooling run one after the other. Clones share the
/// computed integers (a residual block reads its input twice) until one of them is pooled or
/// floored.
#[derive(Debug, Clone)]
pub struct DeferredConv<const D: usize> {
    conv: IntConv2d,
    input: Tensor<4, Int>,
    epilogue: ConvEpilogue,
    shape: [usize; D],
    /// The integers once computed, shared by the clones with this epilogue.
    computed: Arc<OnceLock<Tensor<4, Int>>>,
}

impl DeferredConv<4> {
    /// `conv` of the integers `input`, to be computed when read.
    ///
    /// # Panics
    /// When the dilated kernel does not fit into the padded input (as
    /// [`IntConv2d::forward`] would).
    pub(crate) fn new(conv: IntConv2d, input: Tensor<4, Int>) -> Self {
        let [n, _, h, w] = input.dims();
        let [ho, wo] = conv.output_size(h, w);
        let shape = [n, conv.bias.dims()[0], ho, wo];
        Self {
            conv,
            input,
            epilogue: ConvEpilogue::default(),
            shape,
            computed: Arc::default(),
        }
    }

    /// Whether the output is max-pooled already (the kernel pools once).
    pub(crate) fn is_pooled(&self) -> bool {
        self.epilogue.max_pool.is_some()
    }

    /// Max-pools the output (kernel = stride = `kernel`, no padding, odd sizes floored)
    /// inside the convolution's kernel.
    ///
    /// # Panics
    /// When it is pooled already (see [`DeferredConv::is_pooled`]).
    pub(crate) fn max_pool(&mut self, kernel: usize) {
        assert!(!self.is_pooled(), "a deferred convolution pools once");
        self.epilogue.max_pool = Some(kernel);
        let [n, c, h, w] = self.shape;
        self.shape = [n, c, h / kernel, w / kernel];
        self.computed = Arc::default();
    }
}

impl<const D: usize> DeferredConv<D> {
    /// The grid of the output.
    pub fn grid(&self) -> &QParams {
        &self.conv.output
    }

    /// The shape of the output.
    pub fn dims(&self) -> [usize; D] {
        self.shape
    }

    /// Clamps the output below at `floor` (a ReLU: the zero point). A floor commutes with
    /// max-pooling (both are non-decreasing), so it may come before or after it.
    pub(crate) fn raise_floor(&mut self, floor: i32) {
        if floor > self.epilogue.floor {
            self.epilogue.floor = floor;
            self.computed = Arc::default();
        }
    }

    /// Computes the integers and gives them with their grid.
    pub fn compute(self) -> (Tensor<D, Int>, QParams) {
        let Self {
            conv,
            input,
            epilogue,
            shape,
            computed,
        } = self;
        let q = match Arc::try_unwrap(computed) {
            // No clone shares it: computed here, the input and the result owned by one
            // tensor each (the CPU backends then read them without copies).
            Ok(cell) => cell
                .into_inner()
                .unwrap_or_else(|| conv.forward_fused(input, epilogue)),
            Err(shared) => shared
                .get_or_init(|| conv.forward_fused(input, epilogue))
                .clone(),
        };
        (q.reshape(shape), conv.output)
    }
}
