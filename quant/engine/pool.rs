//! Integer ReLU and max-pooling: exact on the grid.

use burn::tensor::{Int, Tensor, TensorData};

use crate::backend::{host_i32, is_host_device};
use crate::ops::zeroed_chunks;

/// ReLU on the grid: `max(q, Z)` where `Z` is the zero point (real 0).
pub fn int_relu<const D: usize>(q: Tensor<D, Int>, zero_point: i32) -> Tensor<D, Int> {
    q.clamp_min(zero_point)
}

/// Non-overlapping max-pooling (kernel = stride, no padding), flooring odd sizes like PyTorch.
/// On the CPU backends it runs directly on the host memory the tensor lives in.
pub fn int_max_pool2d(q: Tensor<4, Int>, kernel: usize) -> Tensor<4, Int> {
    match is_host_device(&q.device()) {
        true => host_max_pool2d(q, kernel),
        false => tensor_max_pool2d(q, kernel),
    }
}

/// [`int_max_pool2d`] composed of Burn tensor ops (any backend).
fn tensor_max_pool2d(q: Tensor<4, Int>, kernel: usize) -> Tensor<4, Int> {
    let [n, c, h, w] = q.dims();
    let (ho, wo) = (h / kernel, w / kernel);
    if ho * wo == 0 {
        // No whole window (the reshape below would not make a 6-d view of an empty slice).
        return Tensor::zeros([n, c, ho, wo], &q.device());
    }
    let q = if (ho * kernel, wo * kernel) == (h, w) {
        q
    } else {
        q.slice([0..n, 0..c, 0..ho * kernel, 0..wo * kernel])
    };
    let windows: Tensor<6, Int> = q.reshape([n, c, ho, kernel, wo, kernel]);
    windows.max_dim(5).max_dim(3).reshape([n, c, ho, wo])
}

/// [`int_max_pool2d`] as a direct loop over each plane ([`max_pool_plane`]; each image's
/// output zeroed and filled on one of rayon's threads).
fn host_max_pool2d(q: Tensor<4, Int>, kernel: usize) -> Tensor<4, Int> {
    let device = q.device();
    let [n, c, h, w] = q.dims();
    let (ho, wo) = (h / kernel, w / kernel);
    let x = host_i32(q);
    // One image per chunk: a single image stays on the calling thread.
    let y = zeroed_chunks(
        n * c * ho * wo,
        (c * ho * wo).max(1),
        Vec::new,
        |rows, image, out| {
            let planes = x[image * c * h * w..].chunks_exact(h * w);
            for (plane, out) in planes.zip(out.chunks_exact_mut(ho * wo)) {
                max_pool_plane(plane, [h, w], w, kernel, rows, out);
            }
        },
    );
    Tensor::from_data(TensorData::new(y, [n, c, ho, wo]), &device)
}

/// Non-overlapping max-pooling of one `h × w` plane, its rows `stride` values apart (`≥ w`),
/// into `out` (`⌊h / kernel⌋ × ⌊w / kernel⌋`): 2 × 2 windows read straight from the two input
/// rows, larger ones through the elementwise maximum of the `kernel` input rows (in `rows`,
/// resized as needed), then of each window's `kernel` columns.
///
/// # Panics
/// When `plane` is too short for `h` rows or `out` has not the pooled size.
pub(crate) fn max_pool_plane(
    plane: &[i32],
    [h, w]: [usize; 2],
    stride: usize,
    kernel: usize,
    rows: &mut Vec<i32>,
    out: &mut [i32],
) {
    let (ho, wo) = (h / kernel, w / kernel);
    let needed = if h == 0 { 0 } else { (h - 1) * stride + w };
    assert!(
        stride >= w && plane.len() >= needed && out.len() == ho * wo,
        "plane sizes"
    );
    if wo == 0 {
        return;
    }
    rows.resize(wo * kernel, i32::MIN);
    for (oh, out_row) in out.chunks_exact_mut(wo).enumerate() {
        let input = &plane[oh * kernel * stride..];
        if kernel == 2 {
            let (top, bottom) = (&input[..2 * wo], &input[stride..][..2 * wo]);
            #[allow(unused_mut)]
            let mut done = 0;
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: the CPU supports AVX2 (checked above).
                done = unsafe { avx2::pool_row_two_by_two(top, bottom, out_row) };
            }
            let windows = top.chunks_exact(2).zip(bottom.chunks_exact(2)).skip(done);
            for (o, (a, b)) in out_row[done..].iter_mut().zip(windows) {
                *o = a[0].max(a[1]).max(b[0].max(b[1]));
            }
            continue;
        }
        rows.fill(i32::MIN);
        for i in 0..kernel {
            for (m, &v) in rows.iter_mut().zip(&input[i * stride..][..w]) {
                *m = (*m).max(v);
            }
        }
        for (o, window) in out_row.iter_mut().zip(rows.chunks_exact(kernel)) {
            *o = window.iter().copied().fold(i32::MIN, i32::max);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    /// The 2 × 2 windows of one output row: the larger of the two input rows, then of each
    /// pair of columns, eight windows at a time (four at a time in rows of 4 to 7 windows). A
    /// row that is not a whole number of steps ends with one step over its last windows,
    /// overlapping the step before (the same values written twice). Returns how many outputs
    /// it wrote: all of them, or none in rows of fewer than 4 windows (the caller writes
    /// those).
    ///
    /// # Safety
    /// The CPU must support AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn pool_row_two_by_two(
        top: &[i32],
        bottom: &[i32],
        out: &mut [i32],
    ) -> usize {
        let count = (top.len().min(bottom.len()) / 2).min(out.len());
        let (t, b, o) = (top.as_ptr(), bottom.as_ptr(), out.as_mut_ptr());
        let step = if count >= 8 { 8 } else { 4 };
        if count < step {
            return 0;
        }
        // Window `x` of each step: `0, step, 2·step, …`, then `count − step`.
        let starts = (0..count - step + 1)
            .step_by(step)
            .chain((!count.is_multiple_of(step)).then_some(count - step));
        for x in starts {
            // SAFETY: inputs 2x..2x + 2·step and outputs x..x + step lie inside the slices
            // (`x + step ≤ count`); unaligned access.
            unsafe {
                if step == 8 {
                    let load = |p: *const i32| _mm256_loadu_si256(p as *const __m256i);
                    let lo = _mm256_max_epi32(load(t.add(2 * x)), load(b.add(2 * x)));
                    let hi = _mm256_max_epi32(load(t.add(2 * x + 8)), load(b.add(2 * x + 8)));
                    // Per 128-bit lane: the even and the odd columns of lo and hi, then the
                    // 64-bit quarters put in order.
                    let (lo, hi) = (_mm256_castsi256_ps(lo), _mm256_castsi256_ps(hi));
                    let even = _mm256_castps_si256(_mm256_shuffle_ps::<0b10_00_10_00>(lo, hi));
                    let odd = _mm256_castps_si256(_mm256_shuffle_ps::<0b11_01_11_01>(lo, hi));
                    let windows =
                        _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_max_epi32(even, odd));
                    _mm256_storeu_si256(o.add(x) as *mut __m256i, windows);
                } else {
                    let load = |p: *const i32| _mm_loadu_si128(p as *const __m128i);
                    let lo = _mm_max_epi32(load(t.add(2 * x)), load(b.add(2 * x)));
                    let hi = _mm_max_epi32(load(t.add(2 * x + 4)), load(b.add(2 * x + 4)));
                    let (lo, hi) = (_mm_castsi128_ps(lo), _mm_castsi128_ps(hi));
                    let even = _mm_castps_si128(_mm_shuffle_ps::<0b10_00_10_00>(lo, hi));
                    let odd = _mm_castps_si128(_mm_shuffle_ps::<0b11_01_11_01>(lo, hi));
                    _mm_storeu_si128(o.add(x) as *mut __m128i, _mm_max_epi32(even, odd));
                }
            }
        }
        count
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::Distribution;

    use super::*;
    use crate::default_device;

    #[test]
    fn host_pooling_equals_the_tensor_route() {
        let device = default_device().unwrap();
        for (kernel, [h, w]) in [
            (2, [9, 8]),
            (2, [26, 26]),
            (2, [5, 37]),
            (2, [1, 5]),
            // Rows of 5 and 8 windows: the 4-wide step with an overlapping last step, and
            // exactly one 8-wide step.
            (2, [4, 11]),
            (2, [6, 16]),
            (3, [8, 10]),
            (1, [3, 2]),
        ] {
            let q = Tensor::<4, Int>::random(
                [3, 2, h, w],
                Distribution::Uniform(-500.0, 500.0),
                &device,
            );
            let host = host_max_pool2d(q.clone(), kernel).into_data();
            let tensor = tensor_max_pool2d(q, kernel).into_data();
            assert_eq!(host.shape(), tensor.shape(), "kernel {kernel}, {h}x{w}");
            assert_eq!(
                host.convert::<i32>().try_to_vec::<i32>().unwrap(),
                tensor.convert::<i32>().try_to_vec::<i32>().unwrap(),
                "kernel {kernel}, {h}x{w}"
            );
        }
    }
}
