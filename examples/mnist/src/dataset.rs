//! An image classification set held as two device tensors, with seeded shuffled batches.

use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::data::MnistSplit;

/// Images `[n, c, h, w]` and labels `[n]` on one device, plus the labels on the host.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// All images.
    pub images: Tensor<4>,
    /// All labels.
    pub labels: Tensor<1, Int>,
    /// The labels on the host (for accuracy and agreement).
    pub host_labels: Vec<u8>,
}

impl Dataset {
    /// Uploads an MNIST split (normalised) to `device`.
    pub fn from_mnist(split: &MnistSplit, device: &Device) -> Self {
        let (images, labels) = split.to_tensors(device);
        Self {
            images,
            labels,
            host_labels: split.labels.clone(),
        }
    }

    /// The first `n` examples (all of them when there are fewer).
    pub fn first(&self, n: usize) -> Self {
        let n = n.min(self.len());
        Self {
            images: self.images.clone().narrow(0, 0, n),
            labels: self.labels.clone().narrow(0, 0, n),
            host_labels: self.host_labels[..n].to_vec(),
        }
    }

    /// Number of examples.
    pub fn len(&self) -> usize {
        self.host_labels.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.host_labels.is_empty()
    }

    /// The examples at `indices`.
    pub fn batch(&self, indices: &[usize]) -> (Tensor<4>, Tensor<1, Int>) {
        let device = self.images.device();
        let idx: Vec<i32> = indices.iter().map(|&i| i as i32).collect();
        let idx = Tensor::<1, Int>::from_data(TensorData::new(idx, [indices.len()]), &device);
        (
            self.images.clone().select(0, idx.clone()),
            self.labels.clone().select(0, idx),
        )
    }

    /// Consecutive examples `start..end` (no copy of indices).
    pub fn range(&self, start: usize, end: usize) -> (Tensor<4>, Tensor<1, Int>) {
        (
            self.images.clone().narrow(0, start, end - start),
            self.labels.clone().narrow(0, start, end - start),
        )
    }

    /// Index batches of one epoch in a seeded random order (the last batch may be smaller).
    pub fn shuffled_batches(&self, batch_size: usize, rng: &mut SplitMix64) -> Vec<Vec<usize>> {
        let mut order: Vec<usize> = (0..self.len()).collect();
        // Fisher-Yates.
        for i in (1..order.len()).rev() {
            let j = (rng.next_u64() % (i as u64 + 1)) as usize;
            order.swap(i, j);
        }
        order.chunks(batch_size).map(<[usize]>::to_vec).collect()
    }
}

/// A small, portable, seedable PRNG (SplitMix64) for reproducible shuffling.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// Seeds the generator.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next pseudo-random value.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}
