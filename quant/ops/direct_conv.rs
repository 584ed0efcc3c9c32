//! Direct 2-D convolution on host memory (NCHW, f32): the forward pass and the three gradients,
//! written for the small channel counts of quantized CNNs. Each image is one task; per group it
//! builds one patch matrix (a row per input channel and kernel tap, each as long as an output
//! plane, kept in a per-thread buffer), so that the innermost loops are `axpy`s and dot
//! products over whole output planes, which vectorize. No per-group slices or copies of the
//! weight.

use std::mem::MaybeUninit;

use burn::tensor::ops::ConvOptions;
use rayon::prelude::*;

use super::host_buffer::zeroed_chunks;
use crate::simd::{avx2_kernel, with_avx2};
use crate::windows::{Windows, output_extent};

/// The sizes of one convolution: input `[n, c, h, w]`, weight `[o, c / groups, kh, kw]`,
/// output `[n, o, oh, ow]`, with Burn's options (stride, `(begin, end)` padding, dilation,
/// groups).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ConvDims {
    pub batch: usize,
    pub in_channels: usize,
    pub out_channels: usize,
    pub kernel: [usize; 2],
    pub groups: usize,
    /// Input and output plane sizes, stride, dilation, padding before.
    pub windows: Windows,
}

impl ConvDims {
    /// The sizes of `conv2d(x, weight, options)`; `None` when the shapes do not make a
    /// convolution (the caller then falls back to Burn's op, which reports the error).
    pub fn new(x: [usize; 4], weight: [usize; 4], options: &ConvOptions<2>) -> Option<Self> {
        let [batch, in_channels, h, w] = x;
        let [out_channels, depth, kh, kw] = weight;
        let groups = options.groups;
        if groups == 0
            || depth == 0
            || out_channels == 0
            || in_channels != depth * groups
            || out_channels % groups != 0
            || kh == 0
            || kw == 0
        {
            return None;
        }
        let size = |d: usize, n: usize, k: usize| {
            output_extent(
                n,
                options.padding[d],
                k,
                options.stride[d],
                options.dilation[d],
            )
        };
        Some(Self {
            batch,
            in_channels,
            out_channels,
            kernel: [kh, kw],
            groups,
            windows: Windows {
                input: [h, w],
                output: [size(0, h, kh)?, size(1, w, kw)?],
                stride: options.stride,
                dilation: options.dilation,
                before: [options.padding[0].0, options.padding[1].0],
            },
        })
    }

    fn in_plane(&self) -> usize {
        self.windows.input.iter().product()
    }

    pub(crate) fn out_plane(&self) -> usize {
        self.windows.output.iter().product()
    }

    /// Input channels per group (the weight's depth).
    pub(crate) fn depth(&self) -> usize {
        self.in_channels / self.groups
    }

    pub(crate) fn taps(&self) -> usize {
        self.kernel[0] * self.kernel[1]
    }

    /// Number of elements of the output.
    pub fn out_len(&self) -> usize {
        self.batch * self.out_channels * self.out_plane()
    }

    /// Number of elements of the weight.
    pub fn weight_len(&self) -> usize {
        self.out_channels * self.depth() * self.taps()
    }

    /// The patch matrix of image `n`, group `group`: row `(ci, i, j)` holds, for every output
    /// pixel, the input pixel that tap `(i, j)` of channel `ci` reads (`T::default()`, i.e.
    /// 0, in the padding). Shared by the float convolution and the integer engine's.
    #[inline(always)]
    pub(crate) fn im2col<T: Copy + Default>(
        &self,
        x: &[T],
        n: usize,
        group: usize,
        patches: &mut [T],
    ) {
        self.im2col_rows(
            x,
            n,
            group,
            patches,
            |v| v,
            |out, src| out.copy_from_slice(src),
        );
    }

    /// [`Self::im2col`] with each input value passed through `convert` (padding stays
    /// `U::default()`).
    #[inline(always)]
    pub(crate) fn im2col_map<T: Copy, U: Copy + Default>(
        &self,
        x: &[T],
        n: usize,
        group: usize,
        patches: &mut [U],
        convert: impl Fn(T) -> U + Copy,
    ) {
        let run = move |out: &mut [U], src: &[T]| {
            out.iter_mut().zip(src).for_each(|(o, &v)| *o = convert(v));
        };
        self.im2col_rows(x, n, group, patches, convert, run);
    }

    /// [`Self::im2col_map`] with `run` writing a run of consecutive input values (stride 1)
    /// into a patch row, e.g. as one copy.
    #[inline(always)]
    fn im2col_rows<T: Copy, U: Copy + Default>(
        &self,
        x: &[T],
        n: usize,
        group: usize,
        patches: &mut [U],
        convert: impl Fn(T) -> U,
        run: impl Fn(&mut [U], &[T]),
    ) {
        let (plane, in_plane, depth) = (self.out_plane(), self.in_plane(), self.depth());
        let ([_, iw], [_, ow], sw) = (
            self.windows.input,
            self.windows.output,
            self.windows.stride[1],
        );
        if self.padded() {
            patches.fill(U::default());
        }
        for ci in 0..depth {
            let c = n * self.in_channels + group * depth + ci;
            let xin = &x[c * in_plane..(c + 1) * in_plane];
            for i in 0..self.kernel[0] {
                for j in 0..self.kernel[1] {
                    let row = (ci * self.kernel[0] + i) * self.kernel[1] + j;
                    let dst = &mut patches[row * plane..(row + 1) * plane];
                    let (rows, cols, ix) = self.windows.tap(i, j);
                    for (oy, iy) in rows {
                        let out = &mut dst[oy * ow..][cols.clone()];
                        let src = &xin[iy * iw + ix..];
                        if sw == 1 {
                            let len = out.len();
                            run(out, &src[..len]);
                        } else {
                            out.iter_mut()
                                .zip(src.iter().step_by(sw))
                                .for_each(|(o, &v)| *o = convert(v));
                        }
                    }
                }
            }
        }
    }

    /// Adds the patch gradients of group `group` of one image onto its input gradient `gx`
    /// (`[in_channels, h, w]`): the transpose of [`Self::im2col`].
    #[inline(always)]
    fn col2im_add(&self, patches: &[f32], group: usize, gx: &mut [f32]) {
        let (plane, in_plane, depth) = (self.out_plane(), self.in_plane(), self.depth());
        let ([_, iw], [_, ow], sw) = (
            self.windows.input,
            self.windows.output,
            self.windows.stride[1],
        );
        for ci in 0..depth {
            let c = group * depth + ci;
            let gin = &mut gx[c * in_plane..(c + 1) * in_plane];
            for i in 0..self.kernel[0] {
                for j in 0..self.kernel[1] {
                    let row = (ci * self.kernel[0] + i) * self.kernel[1] + j;
                    let src = &patches[row * plane..(row + 1) * plane];
                    let (rows, cols, ix) = self.windows.tap(i, j);
                    for (oy, iy) in rows {
                        let from = &src[oy * ow..][cols.clone()];
                        let to = &mut gin[iy * iw + ix..];
                        if sw == 1 {
                            to.iter_mut().zip(from).for_each(|(t, &f)| *t += f);
                        } else {
                            to.iter_mut()
                                .step_by(sw)
                                .zip(from)
                                .for_each(|(t, &f)| *t += f);
                        }
                    }
                }
            }
        }
    }

    /// Whether stride and dilation are 1 in both dimensions.
    fn unit_steps(&self) -> bool {
        self.windows.stride == [1, 1] && self.windows.dilation == [1, 1]
    }

    /// Whether some taps read the padding (the patch matrix then has zeros to keep).
    pub(crate) fn padded(&self) -> bool {
        let w = &self.windows;
        (0..2).any(|d| {
            let span = w.dilation[d] * (self.kernel[d] - 1) + 1;
            w.before[d] > 0 || (w.output[d] - 1) * w.stride[d] + span > w.input[d]
        })
    }

    /// Number of elements of the input.
    pub fn in_len(&self) -> usize {
        self.batch * self.in_channels * self.in_plane()
    }
}

/// `y = conv2d(x, weight) + bias`.
pub(crate) fn forward(dims: &ConvDims, x: &[f32], weight: &[f32], bias: &[f32]) -> Vec<f32> {
    let (plane, k) = (dims.out_plane(), dims.depth() * dims.taps());
    let per_group = dims.out_channels / dims.groups;
    // Not zeroed first: every value is written once below (a memset of the whole output cost
    // several percent of a training step of `Net`).
    let len = dims.out_len();
    let mut out = Vec::with_capacity(len);
    out.spare_capacity_mut()[..len]
        .par_chunks_mut(dims.out_channels * plane)
        .enumerate()
        .for_each_init(
            || vec![0f32; k * plane],
            |patches, (n, y)| {
                with_avx2(|| {
                    for group in 0..dims.groups {
                        dims.im2col(x, n, group, patches);
                        let channels = group * per_group..(group + 1) * per_group;
                        let product = Product {
                            left: &weight[channels.start * k..channels.end * k],
                            right: &patches[..],
                            inner: k,
                            plane,
                        };
                        let y = &mut y[channels.start * plane..channels.end * plane];
                        product.write_uninit(&bias[channels.clone()], y);
                    }
                })
            },
        );
    // SAFETY: the groups' channel ranges cover every output channel of every image, and
    // `write_uninit` writes every position of each of its rows.
    unsafe { out.set_len(len) };
    out
}

/// `dL/dx` from `dL/dy` (the transposed convolution): per image and group, the patch
/// gradients `weightᵀ · dL/dy`, added back onto the input pixels they were read from.
pub(crate) fn input_grad(dims: &ConvDims, grad: &[f32], weight: &[f32]) -> Vec<f32> {
    let (plane, k) = (dims.out_plane(), dims.depth() * dims.taps());
    let per_group = dims.out_channels / dims.groups;
    if dims.unit_steps() && per_group <= SHIFTED_MAX_PER_GROUP {
        return input_grad_shifted(dims, grad, weight);
    }
    // Per group, the weight as `[k, per_group]` (the left factor of the patch gradients).
    let transposed: Vec<f32> = (0..dims.groups)
        .flat_map(|group| {
            (0..k).flat_map(move |r| (0..per_group).map(move |o| (group * per_group + o, r)))
        })
        .map(|(o, r)| weight[o * k + r])
        .collect();
    let zeros = vec![0f32; k];
    zeroed_chunks(
        dims.in_len(),
        dims.in_channels * dims.in_plane(),
        || vec![0f32; k * plane],
        |patches, n, gx| {
            with_avx2(|| {
                for group in 0..dims.groups {
                    let channels = group * per_group..(group + 1) * per_group;
                    let start = (n * dims.out_channels + channels.start) * plane;
                    let product = Product {
                        left: &transposed[group * k * per_group..(group + 1) * k * per_group],
                        right: &grad[start..start + per_group * plane],
                        inner: per_group,
                        plane,
                    };
                    product.write(&zeros, patches);
                    dims.col2im_add(patches, group, gx);
                }
            })
        },
    )
}

/// The most output channels per group for which [`input_grad`] takes the shifted-plane route.
const SHIFTED_MAX_PER_GROUP: usize = 4;

/// `dL/dx` for stride and dilation 1 (any padding and groups), without a patch matrix: tap
/// `(i, j)` of output channel `o` adds `w[o][ci][i][j] · dL/dy[o]` onto the input-gradient
/// plane of `ci` shifted by `(i, j)`. With the output gradient's rows laid `ow + kw − 1` apart
/// (zeros between them), the shifted plane is one contiguous run, so each tap is one long
/// `axpy` instead of a row of `ow` values per output row; padding is accumulated into a
/// padded plane whose interior is then copied out. Best for few output channels per group,
/// where the patch-matrix product is too small to amortize the patch matrix.
fn input_grad_shifted(dims: &ConvDims, grad: &[f32], weight: &[f32]) -> Vec<f32> {
    let ([oh, ow], [h, w], [kh, kw]) = (dims.windows.output, dims.windows.input, dims.kernel);
    let [top, left] = dims.windows.before;
    let (plane, in_plane, depth) = (dims.out_plane(), dims.in_plane(), dims.depth());
    let per_group = dims.out_channels / dims.groups;
    // The padded input plane: (oh + kh − 1) × (ow + kw − 1) at stride 1.
    let (hp, wp) = (oh + kh - 1, ow + kw - 1);
    let unpadded = hp == h && wp == w;
    // Output extents are at least 1 (`output_extent`).
    let run = (oh - 1) * wp + ow;
    zeroed_chunks(
        dims.in_len(),
        dims.in_channels * in_plane,
        || (vec![0f32; per_group * oh * wp], vec![0f32; hp * wp]),
        |(wide, padded), n, gx| {
            with_avx2(|| {
                for group in 0..dims.groups {
                    // The group's output gradients with rows `wp` apart; the columns past
                    // `ow` stay 0.
                    for o in 0..per_group {
                        let start = (n * dims.out_channels + group * per_group + o) * plane;
                        let dst = &mut wide[o * oh * wp..(o + 1) * oh * wp];
                        for (row, src) in grad[start..start + plane].chunks_exact(ow).enumerate() {
                            dst[row * wp..row * wp + ow].copy_from_slice(src);
                        }
                    }
                    for ci in 0..depth {
                        let c = group * depth + ci;
                        let add_taps = |target: &mut [f32]| {
                            for (i, j) in (0..kh).flat_map(|i| (0..kw).map(move |j| (i, j))) {
                                let to = &mut target[i * wp + j..][..run];
                                for o in 0..per_group {
                                    let oc = group * per_group + o;
                                    let a = weight[((oc * depth + ci) * kh + i) * kw + j];
                                    axpy(a, &wide[o * oh * wp..][..run], to);
                                }
                            }
                        };
                        let gin = &mut gx[c * in_plane..(c + 1) * in_plane];
                        if unpadded {
                            add_taps(gin);
                        } else {
                            padded.fill(0.0);
                            add_taps(padded);
                            for (iy, row) in gin.chunks_exact_mut(w).enumerate() {
                                row.copy_from_slice(&padded[(iy + top) * wp + left..][..w]);
                            }
                        }
                    }
                }
            })
        },
    )
}

/// `dL/dweight` from `x` and `dL/dy`: per image, dot products of the output gradient planes
/// with the patch rows, summed over the batch.
pub(crate) fn weight_grad(dims: &ConvDims, x: &[f32], grad: &[f32]) -> Vec<f32> {
    let (plane, k) = (dims.out_plane(), dims.depth() * dims.taps());
    let per_group = dims.out_channels / dims.groups;
    let sums = (0..dims.batch)
        .into_par_iter()
        .fold(
            || (vec![0f32; k * plane], vec![0f64; dims.weight_len()]),
            |(mut patches, mut sums), n| {
                with_avx2(|| {
                    for group in 0..dims.groups {
                        dims.im2col(x, n, group, &mut patches);
                        let channels = group * per_group..(group + 1) * per_group;
                        let start = (n * dims.out_channels + channels.start) * plane;
                        let gy = &grad[start..start + per_group * plane];
                        let gw = &mut sums[channels.start * k..channels.end * k];
                        add_dots(gy, &patches[..], plane, gw);
                    }
                });
                (patches, sums)
            },
        )
        .map(|(_, sums)| sums)
        .reduce(
            || vec![0f64; dims.weight_len()],
            |mut a, b| {
                a.iter_mut().zip(b).for_each(|(a, b)| *a += b);
                a
            },
        );
    sums.into_iter().map(|s| s as f32).collect()
}

/// `dL/dbias` for `dL/dy` of shape `[batch, channels, plane]`: the sum over the batch and the
/// plane, per channel.
pub(crate) fn bias_grad(grad: &[f32], [batch, channels, plane]: [usize; 3]) -> Vec<f32> {
    (0..channels)
        .into_par_iter()
        .map(|o| {
            (0..batch)
                .map(|n| {
                    let start = (n * channels + o) * plane;
                    sum(&grad[start..start + plane]) as f64
                })
                .sum::<f64>() as f32
        })
        .collect()
}

/// A matrix product over output planes, `out[o][p] = init[o] + Σ_r left[o][r] · right[r][p]`:
/// `left` is row-major with `inner` columns, `right` is `inner` rows of `plane` values, `out`
/// has a row of `plane` per value of `init`. The sum runs over `r` in order with a separate
/// multiply and add, so every output is the same float as adding one `axpy` per `r` onto
/// `init`; with AVX2, up to four rows of 16 outputs are kept in registers, so that each value
/// of `right` is loaded once per four outputs rather than each partial sum once per `r`.
struct Product<'a> {
    left: &'a [f32],
    right: &'a [f32],
    inner: usize,
    plane: usize,
}

impl Product<'_> {
    #[inline(always)]
    fn write(&self, init: &[f32], out: &mut [f32]) {
        // SAFETY: `write_uninit` stores only initialized floats, so `out` stays initialized.
        let out = unsafe { &mut *(out as *mut [f32] as *mut [MaybeUninit<f32>]) };
        self.write_uninit(init, out);
    }

    /// Row `o` of `out` (rows `plane` apart) becomes `init[o] + Σ_r left[o][r] · right[r]`,
    /// for every row of `init`: each of these positions is written, none is read first.
    #[inline(always)]
    fn write_uninit(&self, init: &[f32], out: &mut [MaybeUninit<f32>]) {
        let (plane, inner) = (self.plane, self.inner);
        assert!(self.left.len() >= init.len() * inner && self.right.len() >= inner * plane);
        assert!(out.len() >= init.len() * plane);
        let mut done = 0;
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2; the sizes are asserted above.
            done = unsafe { avx2::product(self, init, out.as_mut_ptr().cast()) };
        }
        for (o, &start) in init.iter().enumerate() {
            let row = &mut out[o * plane + done..(o + 1) * plane];
            for value in row.iter_mut() {
                value.write(start);
            }
            // SAFETY: every value of `row` was written just above.
            let row = unsafe { &mut *(row as *mut [MaybeUninit<f32>] as *mut [f32]) };
            for (r, &a) in self.left[o * inner..(o + 1) * inner].iter().enumerate() {
                axpy(a, &self.right[r * plane + done..(r + 1) * plane], row);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::Product;

    /// Output positions per register block: two AVX registers.
    const BLOCK: usize = 16;

    /// [`Product::write_uninit`] for every row and position (stores only: `out` may be
    /// uninitialized); returns the positions written (all).
    ///
    /// # Safety
    /// The CPU must support AVX2; `left` and `right` must hold the sizes that
    /// [`Product::write_uninit`] asserts, and `out` must be valid for writes of
    /// `init.len() · plane` floats.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn product(product: &Product<'_>, init: &[f32], out: *mut f32) -> usize {
        let mut o = 0;
        while o + 4 <= init.len() {
            // SAFETY: rows o..o + 4 exist (the caller's sizes).
            unsafe { rows::<4>(product, o, init, out) };
            o += 4;
        }
        if o + 2 <= init.len() {
            // SAFETY: as above.
            unsafe { rows::<2>(product, o, init, out) };
            o += 2;
        }
        while o < init.len() {
            // SAFETY: as above.
            unsafe { rows::<1>(product, o, init, out) };
            o += 1;
        }
        product.plane
    }

    /// Rows `o..o + R` of [`product`]: whole blocks of [`BLOCK`] positions, then the rest of
    /// the row as one block with masked loads and stores.
    ///
    /// # Safety
    /// As [`product`], and `o + R <= init.len()`.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn rows<const R: usize>(product: &Product<'_>, o: usize, init: &[f32], out: *mut f32) {
        let plane = product.plane;
        let mut p = 0;
        while p + BLOCK <= plane {
            // SAFETY: positions p..p + BLOCK <= plane of the rows (the caller's sizes).
            unsafe { block::<R, false>(product, o, init, out, p, [_mm256_setzero_si256(); 2]) };
            p += BLOCK;
        }
        if p < plane {
            let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
            let rest = _mm256_set1_epi32((plane - p) as i32);
            let mask = [
                _mm256_cmpgt_epi32(rest, lanes),
                _mm256_cmpgt_epi32(rest, _mm256_add_epi32(lanes, _mm256_set1_epi32(8))),
            ];
            // SAFETY: the masks leave out the positions at or past `plane`.
            unsafe { block::<R, true>(product, o, init, out, p, mask) };
        }
    }

    /// Positions `p..p + BLOCK` of rows `o..o + R` of [`product`]; when `MASKED`, only those
    /// whose lane is set in `mask` (the rest are neither read nor written), else all (plain
    /// loads and stores, which some CPUs run faster than masked ones).
    ///
    /// # Safety
    /// As [`rows`], and the set lanes are positions `< plane`.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn block<const R: usize, const MASKED: bool>(
        product: &Product<'_>,
        o: usize,
        init: &[f32],
        out: *mut f32,
        p: usize,
        mask: [__m256i; 2],
    ) {
        let (plane, inner) = (product.plane, product.inner);
        let (left, right) = (product.left.as_ptr(), product.right.as_ptr());
        let mut acc = [[_mm256_setzero_ps(); 2]; R];
        for (j, acc) in acc.iter_mut().enumerate() {
            *acc = [_mm256_set1_ps(init[o + j]); 2];
        }
        for r in 0..inner {
            // SAFETY: the set lanes of row r < inner of `right` are positions < plane; the
            // pointers past them are only formed, never read.
            let x = unsafe {
                let at = right.add(r * plane + p);
                if MASKED {
                    [
                        _mm256_maskload_ps(at, mask[0]),
                        _mm256_maskload_ps(at.wrapping_add(8), mask[1]),
                    ]
                } else {
                    [_mm256_loadu_ps(at), _mm256_loadu_ps(at.add(8))]
                }
            };
            for (j, acc) in acc.iter_mut().enumerate() {
                // SAFETY: row o + j < init.len() of `left` has `inner` columns.
                let a = _mm256_set1_ps(unsafe { *left.add((o + j) * inner + r) });
                acc[0] = _mm256_add_ps(acc[0], _mm256_mul_ps(a, x[0]));
                acc[1] = _mm256_add_ps(acc[1], _mm256_mul_ps(a, x[1]));
            }
        }
        for (j, acc) in acc.iter().enumerate() {
            // SAFETY: the set lanes of row o + j of `out` are positions < plane.
            unsafe {
                let at = out.add((o + j) * plane + p);
                if MASKED {
                    _mm256_maskstore_ps(at, mask[0], acc[0]);
                    _mm256_maskstore_ps(at.wrapping_add(8), mask[1], acc[1]);
                } else {
                    _mm256_storeu_ps(at, acc[0]);
                    _mm256_storeu_ps(at.add(8), acc[1]);
                }
            }
        }
    }

    /// [`super::add_dots`] for blocks of two rows of `a` and four of `b`: the pairs of the
    /// first `⌊rows / 2⌋ · 2` rows of `a` and `⌊columns / 4⌋ · 4` rows of `b`, whose counts it
    /// returns.
    ///
    /// # Safety
    /// The CPU must support AVX2; `a` and `b` must hold whole rows of `plane` values and
    /// `sums` one entry per pair.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn add_dots(
        a: &[f32],
        b: &[f32],
        plane: usize,
        sums: &mut [f64],
    ) -> [usize; 2] {
        const LANES: usize = super::LANES;
        let (rows, columns) = (a.len() / plane, b.len() / plane);
        let blocked = [rows / 2 * 2, columns / 4 * 4];
        let chunks = plane / LANES;
        for o in (0..blocked[0]).step_by(2) {
            for r in (0..blocked[1]).step_by(4) {
                let mut acc = [[_mm256_setzero_ps(); 4]; 2];
                for c in 0..chunks {
                    // SAFETY: chunk c of rows o, o + 1 of `a` and r..r + 4 of `b` lies in
                    // their first `chunks · LANES <= plane` values.
                    let (x, y) = unsafe {
                        let x = [0, 1]
                            .map(|i| _mm256_loadu_ps(a.as_ptr().add((o + i) * plane + c * LANES)));
                        let y = [0, 1, 2, 3]
                            .map(|i| _mm256_loadu_ps(b.as_ptr().add((r + i) * plane + c * LANES)));
                        (x, y)
                    };
                    for (acc, x) in acc.iter_mut().zip(x) {
                        for (acc, &y) in acc.iter_mut().zip(&y) {
                            *acc = _mm256_add_ps(*acc, _mm256_mul_ps(x, y));
                        }
                    }
                }
                for i in 0..2 {
                    for j in 0..4 {
                        let mut partial = [0f32; LANES];
                        // SAFETY: `partial` holds one AVX register.
                        unsafe { _mm256_storeu_ps(partial.as_mut_ptr(), acc[i][j]) };
                        let a_tail = &a[(o + i) * plane + chunks * LANES..(o + i + 1) * plane];
                        let b_tail = &b[(r + j) * plane + chunks * LANES..(r + j + 1) * plane];
                        let dot = super::finish_dot(&partial, a_tail, b_tail);
                        sums[(o + i) * columns + r + j] += dot as f64;
                    }
                }
            }
        }
        blocked
    }
}

avx2_kernel! {
    /// `y[i] += a · x[i]` (compiled with AVX2 where the CPU has it: inside a closure handed to
    /// `with_avx2` it was compiled 4 lanes wide).
    fn axpy(a: f32, x: &[f32], y: &mut [f32]) => axpy_lanes
}

#[inline(always)]
fn axpy_lanes(a: f32, x: &[f32], y: &mut [f32]) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y += a * x;
    }
}

/// Lanes of the partial sums in [`dot`] and [`sum`] (one AVX register).
const LANES: usize = 8;

/// `Σ a[i] · b[i]`, with [`LANES`] partial sums so that it vectorizes.
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let b = &b[..a.len()];
    let mut acc = [0f32; LANES];
    let (a_chunks, b_chunks) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (a_tail, b_tail) = (a_chunks.remainder(), b_chunks.remainder());
    for (a, b) in a_chunks.zip(b_chunks) {
        for lane in 0..LANES {
            acc[lane] += a[lane] * b[lane];
        }
    }
    finish_dot(&acc, a_tail, b_tail)
}

/// The last step of [`dot`]: the [`LANES`] partial sums added in order, plus the products of
/// the elements past the last whole chunk (`a_tail`, `b_tail`). The blocked dot products use
/// it too, so that they give the same floats.
#[inline(always)]
fn finish_dot(partial: &[f32; LANES], a_tail: &[f32], b_tail: &[f32]) -> f32 {
    let tail: f32 = a_tail.iter().zip(b_tail).map(|(a, b)| a * b).sum();
    partial.iter().sum::<f32>() + tail
}

/// `sums[o][r] += dot(a[o], b[r])` for every row `o` of `a` and `r` of `b` (rows of `plane`
/// values; `sums` row-major with a column per row of `b`). The same floats as [`dot`] row by
/// row; with AVX2, two rows of `a` and four of `b` at a time share their loads (eight lane
/// vectors of partial sums in registers).
#[inline(always)]
fn add_dots(a: &[f32], b: &[f32], plane: usize, sums: &mut [f64]) {
    let columns = b.len() / plane;
    let rows = a.len() / plane;
    assert!(sums.len() >= rows * columns);
    // The pairs `(o, r)` with `o < blocked[0]` and `r < blocked[1]` are added by the AVX2 path.
    let mut blocked = [0, 0];
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2; the sizes follow from `rows` and `columns`.
        blocked = unsafe { avx2::add_dots(a, b, plane, sums) };
    }
    for o in 0..rows {
        for r in 0..columns {
            if o >= blocked[0] || r >= blocked[1] {
                let row = &a[o * plane..(o + 1) * plane];
                sums[o * columns + r] += dot(row, &b[r * plane..(r + 1) * plane]) as f64;
            }
        }
    }
}

avx2_kernel! {
    /// `Σ a[i]` with [`LANES`] partial sums.
    fn sum(a: &[f32]) -> f32 => sum_lanes
}

#[inline(always)]
fn sum_lanes(a: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let chunks = a.chunks_exact(LANES);
    let tail: f32 = chunks.remainder().iter().sum();
    for a in chunks {
        for lane in 0..LANES {
            acc[lane] += a[lane];
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The convolution's definition, one tap at a time: `y`, and `dL/dx`, `dL/dw` for `dL/dy`
    /// = `gy`.
    fn naive(dims: &ConvDims, x: &[f32], w: &[f32], gy: &[f32]) -> [Vec<f32>; 3] {
        let (mut y, mut gx, mut gw) = (
            vec![0f32; dims.out_len()],
            vec![0f32; dims.in_len()],
            vec![0f32; dims.weight_len()],
        );
        let depth = dims.depth();
        let per_group = dims.out_channels / dims.groups;
        let ([oh, ow], [h, iw], [kh, kw]) = (dims.windows.output, dims.windows.input, dims.kernel);
        let (stride, dilation, before) = (
            dims.windows.stride,
            dims.windows.dilation,
            dims.windows.before,
        );
        for n in 0..dims.batch {
            for o in 0..dims.out_channels {
                for (oy, ox) in (0..oh).flat_map(|oy| (0..ow).map(move |ox| (oy, ox))) {
                    let yi = ((n * dims.out_channels + o) * oh + oy) * ow + ox;
                    for ci in 0..depth {
                        let c = o / per_group * depth + ci;
                        for (ky, kx) in (0..kh).flat_map(|ky| (0..kw).map(move |kx| (ky, kx))) {
                            let iy =
                                (oy * stride[0] + ky * dilation[0]) as isize - before[0] as isize;
                            let ix =
                                (ox * stride[1] + kx * dilation[1]) as isize - before[1] as isize;
                            if iy < 0 || ix < 0 || iy >= h as isize || ix >= iw as isize {
                                continue;
                            }
                            let xi =
                                ((n * dims.in_channels + c) * h + iy as usize) * iw + ix as usize;
                            let wi = ((o * depth + ci) * kh + ky) * kw + kx;
                            y[yi] += x[xi] * w[wi];
                            gx[xi] += gy[yi] * w[wi];
                            gw[wi] += gy[yi] * x[xi];
                        }
                    }
                }
            }
        }
        [y, gx, gw]
    }

    fn values(len: usize, seed: u32) -> Vec<f32> {
        (0..len)
            .map(|i| {
                ((i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) % 1000) as f32 / 500.0
                    - 1.0
            })
            .collect()
    }

    fn close(a: &[f32], b: &[f32]) {
        assert_eq!(a.len(), b.len());
        for (i, (a, b)) in a.iter().zip(b).enumerate() {
            assert!((a - b).abs() <= 1e-4 * (1.0 + b.abs()), "{i}: {a} vs {b}");
        }
    }

    /// Geometries: plain, strided + padded (asymmetric), dilated, grouped (padded, unpadded,
    /// depthwise with padding on one side).
    fn cases() -> Vec<ConvDims> {
        let options = [
            ConvOptions::new_with_padding([1, 1], [(0, 0), (0, 0)], [1, 1], 1),
            ConvOptions::new_with_padding([2, 3], [(1, 2), (2, 0)], [1, 1], 1),
            ConvOptions::new_with_padding([1, 2], [(2, 2), (1, 1)], [2, 1], 2),
            ConvOptions::new_with_padding([1, 1], [(1, 1), (1, 1)], [1, 1], 3),
            ConvOptions::new_with_padding([1, 1], [(0, 0), (0, 0)], [1, 1], 2),
            ConvOptions::new_with_padding([1, 1], [(0, 2), (1, 0)], [1, 1], 6),
        ];
        options
            .iter()
            .map(|o| ConvDims::new([2, 6, 7, 9], [6, 6 / o.groups, 3, 2], o).unwrap())
            .collect()
    }

    #[test]
    fn empty_channel_counts_are_not_a_direct_convolution() {
        // They fall back to Burn's op: a zero chunk size would make the kernels panic.
        let o = ConvOptions::new([1, 1], [0, 0], [1, 1], 1);
        assert!(ConvDims::new([2, 0, 5, 5], [4, 0, 3, 3], &o).is_none());
        assert!(ConvDims::new([2, 3, 5, 5], [0, 3, 3, 3], &o).is_none());
        assert!(ConvDims::new([2, 3, 5, 5], [4, 3, 3, 3], &o).is_some());
    }

    #[test]
    fn the_blocked_product_is_the_same_float_as_one_axpy_per_row() {
        // Rows and positions that leave every kind of tail (4-, 2- and 1-row blocks; a last
        // block of positions with 5, 8, 9, 15 or 4 of its 16 lanes).
        for (rows, inner, plane) in [
            (7, 5, 37),
            (3, 4, 24),
            (2, 2, 31),
            (4, 9, 16),
            (2, 18, 121),
            (1, 3, 5),
            (40, 9, 676),
        ] {
            let left = values(rows * inner, 3);
            let right = values(inner * plane, 4);
            let init = values(rows, 5);
            let mut blocked = vec![0f32; rows * plane];
            with_avx2(|| {
                let product = Product {
                    left: &left,
                    right: &right,
                    inner,
                    plane,
                };
                product.write(&init, &mut blocked);
            });
            let mut plain = vec![0f32; rows * plane];
            for (o, row) in plain.chunks_exact_mut(plane).enumerate() {
                row.fill(init[o]);
                for r in 0..inner {
                    let a = left[o * inner + r];
                    for (y, &x) in row.iter_mut().zip(&right[r * plane..(r + 1) * plane]) {
                        *y += a * x;
                    }
                }
            }
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&blocked), bits(&plain), "{rows}×{inner}×{plane}");
        }
    }

    #[test]
    fn the_blocked_dots_are_the_same_floats_as_one_dot_per_pair() {
        for (rows, columns, plane) in [
            (3, 5, 37),
            (2, 4, 16),
            (2, 18, 121),
            (40, 9, 676),
            (1, 1, 3),
        ] {
            let a = values(rows * plane, 6);
            let b = values(columns * plane, 7);
            let start = values(rows * columns, 8);
            let mut blocked: Vec<f64> = start.iter().map(|&v| v as f64).collect();
            with_avx2(|| add_dots(&a, &b, plane, &mut blocked));
            let mut plain: Vec<f64> = start.iter().map(|&v| v as f64).collect();
            for o in 0..rows {
                for r in 0..columns {
                    let (x, y) = (
                        &a[o * plane..(o + 1) * plane],
                        &b[r * plane..(r + 1) * plane],
                    );
                    plain[o * columns + r] += dot(x, y) as f64;
                }
            }
            let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&blocked), bits(&plain), "{rows}×{columns}×{plane}");
        }
    }

    #[test]
    fn forward_and_gradients_match_the_definition() {
        for dims in cases() {
            let x = values(dims.in_len(), 1);
            let w = values(dims.weight_len(), 2);
            let gy = values(dims.out_len(), 3);
            let b = values(dims.out_channels, 4);
            let [y, gx, gw] = naive(&dims, &x, &w, &gy);
            close(&forward(&dims, &x, &w, &vec![0.0; dims.out_channels]), &y);
            let with_bias: Vec<f32> = y
                .iter()
                .enumerate()
                .map(|(i, y)| y + b[i / dims.out_plane() % dims.out_channels])
                .collect();
            close(&forward(&dims, &x, &w, &b), &with_bias);
            close(&input_grad(&dims, &gy, &w), &gx);
            if dims.unit_steps() {
                close(&input_grad_shifted(&dims, &gy, &w), &gx);
            }
            close(&weight_grad(&dims, &x, &gy), &gw);
            let plane = dims.out_plane();
            let gb: Vec<f32> = (0..dims.out_channels)
                .map(|o| {
                    (0..dims.batch)
                        .flat_map(|n| {
                            let start = (n * dims.out_channels + o) * plane;
                            gy[start..start + plane].iter().copied()
                        })
                        .sum()
                })
                .collect();
            close(&bias_grad(&gy, [dims.batch, dims.out_channels, plane]), &gb);
        }
    }
}
