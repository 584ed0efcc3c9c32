//! Integer fully connected layer.

use burn::tensor::{Int, Tensor, TensorData};

use super::Requantizer;
use crate::QParams;
use crate::backend::{host_i32, is_host_device};

/// The most multiply-adds [`IntLinear::accumulate`] sums on host memory (one thread); larger
/// products take Burn's parallel matmul (a batch of 256 of `Net`'s classifier was slower on
/// host memory, a single image faster).
const HOST_PRODUCTS: usize = 1 << 16;

/// A frozen linear layer on the integer grid.
#[derive(Debug, Clone)]
pub struct IntLinear {
    /// `q_w - Z_w`, shape `[in, out]` (Burn's row layout).
    pub weight: Tensor<2, Int>,
    /// Bias on the accumulator grid (scale `Si·Sw`), shape `[out]`.
    pub bias: Tensor<1, Int>,
    /// Input zero point `Zi`.
    pub input_zero_point: i32,
    /// Output requantization.
    pub requantizer: Requantizer,
    /// Parameters of the output grid.
    pub output: QParams,
}

impl IntLinear {
    /// The i32 accumulators, shape `[n, out]`: for few rows on the CPU backends summed on
    /// host memory (in i64, then checked to fit i32: fewer calls than the tensor ops, which
    /// win on large batches), elsewhere (or when a sum does not fit) with tensor ops. Both
    /// give the same integers.
    pub fn accumulate(&self, q: Tensor<2, Int>) -> Tensor<2, Int> {
        let [n, inputs] = q.dims();
        let products = n * inputs * self.bias.dims()[0];
        match is_host_device(&q.device()) && products <= HOST_PRODUCTS {
            true => self
                .accumulate_on_host(q)
                .unwrap_or_else(|q| self.accumulate_with_tensor_ops(*q)),
            false => self.accumulate_with_tensor_ops(q),
        }
    }

    /// [`IntLinear::accumulate`] composed of Burn tensor ops (any backend).
    pub fn accumulate_with_tensor_ops(&self, q: Tensor<2, Int>) -> Tensor<2, Int> {
        let out = self.bias.dims()[0];
        (q - self.input_zero_point).matmul(self.weight.clone())
            + self.bias.clone().reshape([1, out])
    }

    /// [`IntLinear::accumulate`] on host memory: per row of `q`, the bias plus each input
    /// (minus its zero point) times its weight row; gives `q` back when a sum leaves i32.
    fn accumulate_on_host(&self, q: Tensor<2, Int>) -> Result<Tensor<2, Int>, Box<Tensor<2, Int>>> {
        let device = q.device();
        let [n, inputs] = q.dims();
        let out = self.bias.dims()[0];
        if inputs == 0 || out == 0 {
            return Err(Box::new(q));
        }
        let x = host_i32(q);
        let weight = host_i32(self.weight.clone());
        let bias = host_i32(self.bias.clone());
        let mut sums = vec![0i64; out];
        let mut acc = Vec::with_capacity(n * out);
        for row in x.chunks_exact(inputs) {
            sums.iter_mut()
                .zip(bias.iter())
                .for_each(|(s, &b)| *s = b as i64);
            for (&v, weights) in row.iter().zip(weight.chunks_exact(out)) {
                let v = v as i64 - self.input_zero_point as i64;
                if v != 0 {
                    sums.iter_mut()
                        .zip(weights)
                        .for_each(|(s, &w)| *s += v * w as i64);
                }
            }
            acc.extend(sums.iter().map(|&s| i32::try_from(s).ok()));
        }
        match acc.into_iter().collect::<Option<Vec<i32>>>() {
            Some(acc) => Ok(Tensor::from_data(TensorData::new(acc, [n, out]), &device)),
            None => Err(Box::new(Tensor::from_data(x.into_data(), &device))),
        }
    }

    /// Linear layer followed by requantization to the output grid.
    pub fn forward(&self, q: Tensor<2, Int>) -> Tensor<2, Int> {
        self.requantizer.apply(self.accumulate(q), 1)
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::Distribution;

    use super::*;
    use crate::test_support::ints;
    use crate::{QScheme, default_device};

    #[test]
    fn host_accumulators_equal_the_tensor_route() {
        let device = default_device().unwrap();
        let output = QParams::from_bounds(-1.0, 1.0, QScheme::affine(8).unwrap(), &device);
        let requantizer = Requantizer::new(0.1, &[0.01], 0.5, 3, (0, 255), &device);
        for (n, inputs, out, limit) in [(1, 1000, 10, 255.0), (5, 7, 3, 15_000.0), (3, 4, 2, 1e5)] {
            let random = |shape: [usize; 2]| {
                Tensor::<2>::random(shape, Distribution::Uniform(-limit, limit), &device).int()
            };
            let layer = IntLinear {
                weight: random([inputs, out]),
                bias: random([1, out]).reshape([out]),
                input_zero_point: 17,
                requantizer: requantizer.clone(),
                output: output.clone().unwrap(),
            };
            let q = random([n, inputs]);
            let host = layer.accumulate_on_host(q.clone());
            let tensor = ints(layer.accumulate_with_tensor_ops(q.clone()));
            match host {
                Ok(host) => assert_eq!(ints(host), tensor, "{n}x{inputs}x{out}"),
                // Sums beyond i32 (the widest case) hand the input back unchanged.
                Err(back) => {
                    assert!(limit > 3e4, "{n}x{inputs}x{out}");
                    assert_eq!(ints(*back), ints(q.clone()));
                }
            }
            assert_eq!(ints(layer.accumulate(q)), tensor, "{n}x{inputs}x{out}");
        }
    }
}
