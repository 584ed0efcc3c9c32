//! Which input pixel each output pixel of a 2-D sliding window (convolution or pooling) reads
//! for each kernel tap: the shared index arithmetic of the host kernels (the integer engine's
//! convolution, the float direct convolution and max-pooling).

use std::ops::Range;

/// Output positions along one dimension of a window of `kernel` taps spaced `dilation` apart,
/// stepping by `stride` over `input` positions padded by `(begin, end)`; `None` when the
/// dilated kernel does not fit into the padded input.
pub(crate) fn output_extent(
    input: usize,
    (begin, end): (usize, usize),
    kernel: usize,
    stride: usize,
    dilation: usize,
) -> Option<usize> {
    let padded = input + begin + end;
    let span = dilation * kernel.checked_sub(1)? + 1;
    (padded >= span && stride > 0).then(|| (padded - span) / stride + 1)
}

/// Sizes and steps of a 2-D sliding window over one plane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Windows {
    /// Input `[h, w]`.
    pub input: [usize; 2],
    /// Output `[h, w]`.
    pub output: [usize; 2],
    pub stride: [usize; 2],
    pub dilation: [usize; 2],
    /// Padding before the first row and column.
    pub before: [usize; 2],
}

impl Windows {
    /// The output indices `o` along dimension `d` whose input index
    /// `o·stride + tap·dilation − before` lies inside the input, and the input index of the
    /// first one.
    #[inline]
    pub fn valid(&self, d: usize, tap: usize) -> (Range<usize>, usize) {
        let offset = tap * self.dilation[d];
        let s = self.stride[d];
        // First o with o·s + offset >= before.
        let first = self.before[d].saturating_sub(offset).div_ceil(s);
        // Last o with o·s + offset - before <= input - 1.
        let limit = self.input[d] + self.before[d];
        let end = if limit > offset {
            ((limit - offset - 1) / s + 1).min(self.output[d])
        } else {
            0
        };
        let first = first.min(end);
        (
            first..end,
            first * s + offset - self.before[d].min(first * s + offset),
        )
    }

    /// The kernel taps `t` (of `kernel` along dimension `d`) whose input index
    /// `o·stride + t·dilation − before` lies inside the input, for output index `o`: the
    /// inverse view of [`Self::valid`]. The dilation must not be 0.
    pub fn taps_inside(&self, d: usize, o: usize, kernel: usize) -> Range<usize> {
        let (start, dilation) = (o * self.stride[d], self.dilation[d]);
        // First t with start + t·dilation >= before; last with start + t·dilation < input + before.
        let first = self.before[d].saturating_sub(start).div_ceil(dilation);
        let limit = self.input[d] + self.before[d];
        let end = if limit > start {
            ((limit - start - 1) / dilation + 1).min(kernel)
        } else {
            0
        };
        first.min(end)..end
    }

    /// The output rows that kernel tap `(i, j)` reads inside the input, each with its input
    /// row, and the output columns it reads there with the input column of the first one (the
    /// next ones step by the column stride). No rows when no column is inside.
    #[inline(always)]
    pub fn tap(&self, i: usize, j: usize) -> (TapRows, Range<usize>, usize) {
        let (rows, first_row) = self.valid(0, i);
        let (cols, first_col) = self.valid(1, j);
        let rows = if cols.is_empty() { 0..0 } else { rows };
        let tap_rows = TapRows {
            rows,
            input_row: first_row,
            stride: self.stride[0],
        };
        (tap_rows, cols, first_col)
    }
}

/// `(output row, input row)` pairs of one kernel tap (see [`Windows::tap`]).
pub(crate) struct TapRows {
    rows: Range<usize>,
    input_row: usize,
    stride: usize,
}

impl Iterator for TapRows {
    type Item = (usize, usize);

    #[inline(always)]
    fn next(&mut self) -> Option<(usize, usize)> {
        let row = self.rows.next()?;
        let input_row = self.input_row;
        self.input_row += self.stride;
        Some((row, input_row))
    }
}
