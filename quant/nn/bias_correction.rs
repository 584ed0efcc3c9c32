//! Bias correction (Nagel et al. 2019, "Data-Free Quantization", §4.2, with the input means
//! taken from calibration data): rounding a layer's weights moves the mean of its outputs by
//! `(W − Ŵ)·E[x]` per output channel; adding that to the bias puts the mean back.

use burn::module::{Module, RunningState};
use burn::tensor::{Device, Tensor};

use crate::observer::{channel_rows, finite_or_zero};
use crate::running;

/// The per-channel mean of a layer's (quantized) input over the calibration batches, from
/// which [`InputMean::bias_shift`] gives the bias correction. Saved with the model, so that a
/// loaded model freezes to the same integers.
#[derive(Module, Debug)]
pub struct InputMean {
    /// Sum over the batches seen of each input channel's batch mean.
    pub sum: RunningState<Tensor<1>>,
    /// Number of batches seen, shape `[1]`.
    pub batches: RunningState<Tensor<1>>,
}

impl InputMean {
    /// No batch seen yet, for an input of `channels` channels (axis 1 of the input).
    pub fn new(channels: usize, device: &Device) -> Self {
        Self {
            sum: RunningState::new(Tensor::zeros([channels], device)),
            batches: RunningState::new(Tensor::zeros([1], device)),
        }
    }

    /// Adds the channel means of `x` (channels along axis 1; NaN and ±∞ counted as 0).
    /// Empty batches are ignored.
    pub fn update<const D: usize>(&self, x: &Tensor<D>) {
        if x.shape().num_elements() == 0 {
            return;
        }
        let channels = x.dims()[1];
        let rows = channel_rows(finite_or_zero(x.clone().detach()), 1);
        let means = rows.mean_dim(1).reshape([channels]);
        let device = means.device();
        running::exclusive(|| {
            let sum = running::read(&self.sum, &device);
            let batches = running::read(&self.batches, &device);
            running::commit(&self.sum, sum + means);
            running::commit(&self.batches, batches + 1.0);
        });
    }

    /// The mean input per channel on `device` (a replica's, when several share this state),
    /// `None` before the first batch.
    pub fn mean(&self, device: &Device) -> Option<Tensor<1>> {
        let sum = running::read(&self.sum, device);
        let batches = running::read(&self.batches, device);
        let seen = batches.clone().into_scalar::<f32>();
        (seen > 0.0).then(|| sum / batches)
    }

    /// The correction to add to the bias of a layer whose weights `weight` are used as
    /// `rounded`: `(W − Ŵ)·E[x]` per output channel, detached (a constant for autodiff).
    /// `None` before the first batch.
    ///
    /// A linear weight is `[in, out]` (`output_axis` 1); a convolution's is
    /// `[out, in / groups, kh, kw]` (`output_axis` 0), whose group count is the input's
    /// channels over the weight's depth. The mean over a convolution's input plane stands for
    /// the mean under each tap (padding and borders aside).
    ///
    /// # Panics
    /// When the weight's shape does not fit the channel count of the observed input (a broken
    /// invariant: the layer builds this state from its own weight).
    pub fn bias_shift<const D: usize>(
        &self,
        weight: Tensor<D>,
        rounded: Tensor<D>,
        output_axis: usize,
    ) -> Option<Tensor<1>> {
        let mean = self.mean(&weight.device())?;
        let error = (weight - rounded).detach();
        let dims = error.dims();
        let channels = mean.dims()[0];
        Some(match output_axis {
            1 => {
                let [inputs, outputs] = [dims[0], dims[1]];
                assert_eq!(inputs, channels, "linear weight and input mean disagree");
                let error: Tensor<2> = error.reshape([inputs, outputs]);
                mean.reshape([1, inputs]).matmul(error).reshape([outputs])
            }
            _ => {
                let [outputs, depth] = [dims[0], dims[1]];
                assert!(
                    depth > 0 && channels % depth == 0 && outputs % (channels / depth) == 0,
                    "convolution weight and input mean disagree"
                );
                let groups = channels / depth;
                let per_group = outputs / groups;
                let error: Tensor<3> = error.reshape([outputs as i64, depth as i64, -1]);
                let error: Tensor<2> = error.sum_dim(2).reshape([outputs, depth]);
                let mean: Tensor<2> = mean
                    .reshape([groups, 1, depth])
                    .expand([groups, per_group, depth])
                    .reshape([outputs, depth]);
                (error * mean).sum_dim(1).reshape([outputs])
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::host_f32;
    use crate::default_device;
    use burn::tensor::TensorData;

    #[test]
    fn the_mean_is_over_batches_and_the_plane() {
        let device = default_device().unwrap();
        let mean = InputMean::new(2, &device);
        assert!(mean.mean(&device).is_none());
        // [1, 2, 1, 2]: channel 0 holds 1 and 3, channel 1 holds 10 and 20.
        let a = Tensor::<4>::from_data(
            TensorData::new(vec![1f32, 3., 10., 20.], [1, 2, 1, 2]),
            &device,
        );
        let b = Tensor::<4>::from_data(
            TensorData::new(vec![0f32, 0., f32::NAN, 2.], [1, 2, 1, 2]),
            &device,
        );
        mean.update(&a);
        mean.update(&b);
        assert_eq!(host_f32(mean.mean(&device).unwrap()), vec![1.0, 8.0]);
    }

    #[test]
    fn the_shift_is_the_mean_output_error_of_the_rounded_weights() {
        let device = default_device().unwrap();
        // A grouped convolution: 4 input channels in 2 groups, 4 outputs, 1×2 kernel.
        let mean = InputMean::new(4, &device);
        let x = Tensor::<4>::from_data(
            TensorData::new(vec![1f32, 1., 2., 2., 3., 3., 4., 4.], [1, 4, 1, 2]),
            &device,
        );
        mean.update(&x);
        let weight: Vec<f32> = (0..16).map(|i| i as f32 * 0.1).collect();
        let rounded: Vec<f32> = weight.iter().map(|w| w.round()).collect();
        let w = Tensor::<4>::from_data(TensorData::new(weight.clone(), [4, 2, 1, 2]), &device);
        let r = Tensor::<4>::from_data(TensorData::new(rounded.clone(), [4, 2, 1, 2]), &device);
        let shift = host_f32(mean.bias_shift(w, r, 0).unwrap());
        let mu = [1.0f32, 2.0, 3.0, 4.0];
        for (o, &s) in shift.iter().enumerate() {
            let group = o / 2;
            let expected: f32 = (0..2)
                .flat_map(|d| (0..2).map(move |t| (d, t)))
                .map(|(d, t)| {
                    let i = o * 4 + d * 2 + t;
                    (weight[i] - rounded[i]) * mu[group * 2 + d]
                })
                .sum();
            assert!((s - expected).abs() < 1e-5, "{o}: {s} vs {expected}");
        }
        // A linear layer [in 2, out 3].
        let mean = InputMean::new(2, &device);
        mean.update(&Tensor::<2>::from_data(
            TensorData::new(vec![2f32, -1.], [1, 2]),
            &device,
        ));
        let w = Tensor::<2>::from_data(
            TensorData::new(vec![0.4f32, 0.6, 1.2, -0.3, 0.2, 0.9], [2, 3]),
            &device,
        );
        let shift = host_f32(mean.bias_shift(w.clone(), w.clone().round(), 1).unwrap());
        let expected = [2.0 * 0.4 + 0.3, 2.0 * -0.4 - 0.2, 2.0 * 0.2 + 0.1];
        for (s, e) in shift.iter().zip(expected) {
            assert!((s - e).abs() < 1e-5, "{shift:?} vs {expected:?}");
        }
    }
}
