//! Helpers shared by the library's unit tests.

use burn::tensor::{Int, Tensor};

/// The integers of `t`, as i64, in order.
pub(crate) fn ints<const D: usize>(t: Tensor<D, Int>) -> Vec<i64> {
    t.into_data().convert::<i64>().try_to_vec::<i64>().unwrap()
}
