//! Runtime CPU-feature dispatch for the host kernels.

/// Runs `f` in a function compiled with AVX2 enabled when the CPU has it (the build targets
/// baseline x86-64, whose SSE2 has no 8-lane or 32-bit-multiply vector instructions); `f` and
/// the `#[inline(always)]` functions it calls are inlined into it. Elsewhere runs `f` as is.
#[inline(always)]
pub(crate) fn with_avx2<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        #[target_feature(enable = "avx2")]
        fn run<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        // SAFETY: the CPU supports AVX2 (checked above).
        return unsafe { run(f) };
    }
    f()
}
