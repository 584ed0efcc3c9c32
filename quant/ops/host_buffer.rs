//! Output buffers of the host kernels, zeroed chunk by chunk on the thread that fills the
//! chunk next, instead of by one memset of the whole buffer on the calling thread first (which
//! ran on one core and left the buffer out of cache: several percent of a training step).

use std::mem::MaybeUninit;

use rayon::prelude::*;

/// Inputs with fewer values than this (a single image) are processed on the calling thread:
/// waking rayon's threads costs more than the work.
pub(crate) const SERIAL_MAX_LEN: usize = 1 << 15;

/// `len` values in chunks of `chunk`: on rayon's threads (a single chunk on the calling
/// thread) each chunk is zeroed, then `fill(state, index, chunk)` adds into it, with one
/// `init()` state per rayon job (as `for_each_init`).
///
/// # Panics
/// When `chunk` is 0 or does not divide `len` (a broken invariant of the caller's sizes).
pub(crate) fn zeroed_chunks<S, T: Copy + Default + Send + Sync>(
    len: usize,
    chunk: usize,
    init: impl Fn() -> S + Sync + Send,
    fill: impl Fn(&mut S, usize, &mut [T]) + Sync + Send,
) -> Vec<T> {
    assert!(
        chunk > 0 && len.is_multiple_of(chunk),
        "{len} values in chunks of {chunk}"
    );
    if len == chunk {
        // One chunk (e.g. a single image) on the calling thread: waking rayon's costs more.
        let mut out = vec![T::default(); len];
        fill(&mut init(), 0, &mut out);
        return out;
    }
    let mut out = Vec::with_capacity(len);
    out.spare_capacity_mut()[..len]
        .par_chunks_mut(chunk)
        .enumerate()
        .for_each_init(init, |state, (index, values)| {
            values.fill(MaybeUninit::new(T::default()));
            // SAFETY: every value of the chunk was written just above.
            let values = unsafe { &mut *(values as *mut [MaybeUninit<T>] as *mut [T]) };
            fill(state, index, values);
        });
    // SAFETY: the chunks cover `0..len` and each was zeroed (a panic in `fill` propagates
    // before this line, leaving the vector empty).
    unsafe { out.set_len(len) };
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_chunk_starts_at_zero_and_keeps_what_fill_adds() {
        let out = zeroed_chunks(
            12,
            3,
            || 0,
            |_, i, c: &mut [f32]| c[i % 3] += i as f32 + 1.0,
        );
        assert_eq!(
            out,
            vec![1.0, 0.0, 0.0, 0.0, 2.0, 0.0, 0.0, 0.0, 3.0, 4.0, 0.0, 0.0]
        );
        assert!(zeroed_chunks::<_, f32>(0, 4, || (), |_, _, _| unreachable!()).is_empty());
        let single = zeroed_chunks(3, 3, || 5, |s, i, c: &mut [u8]| c[i + 1] = *s);
        assert_eq!(single, vec![0, 5, 0]);
        let ints = zeroed_chunks(6, 2, || (), |_, i, c: &mut [i32]| c[1] = i as i32 - 1);
        assert_eq!(ints, vec![0, -1, 0, 0, 0, 1]);
    }
}
