//! Which input pixel each output pixel of a 2-D sliding window (convolution or pooling) reads
//! for each kernel tap: the shared index arithmetic of the host kernels (the integer engine's
//! convolution and the float direct convolution).

use std::ops::Range;

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

    /// Calls `f(output_row, input_row, output_columns, first_input_column)` for every output
    /// row that kernel tap `(i, j)` reads inside the input: the output columns `output_columns`
    /// read the input columns `first_input_column`, `+ stride`, ….
    #[inline(always)]
    pub fn for_each_row(
        &self,
        i: usize,
        j: usize,
        mut f: impl FnMut(usize, usize, Range<usize>, usize),
    ) {
        let (rows, first_row) = self.valid(0, i);
        let (cols, first_col) = self.valid(1, j);
        if cols.is_empty() {
            return;
        }
        for (k, oh) in rows.enumerate() {
            f(oh, first_row + k * self.stride[0], cols.clone(), first_col);
        }
    }
}
