//! Runtime CPU-feature dispatch for the host kernels.

/// Runs `f` in a function compiled with AVX2 enabled when the CPU has it (the build targets
/// baseline x86-64, whose SSE2 has no 8-lane or 32-bit-multiply vector instructions). Elsewhere
/// runs `f` as is.
///
/// LLVM may keep `f`'s body out of line (a profile showed closures with loops compiled as
/// separate SSE2 functions), so `f` should call functions that are themselves compiled with
/// AVX2; a loop kernel is better dispatched with [`avx2_kernel!`].
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

/// Defines `fn $name(args) [-> R]` that runs the `#[inline(always)]` function `$kernel` compiled
/// with AVX2 when the CPU has it (inlined into a `#[target_feature(enable = "avx2")]` copy,
/// which a closure handed to [`with_avx2`] does not guarantee), and as is elsewhere.
macro_rules! avx2_kernel {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? => $kernel:path) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx2") {
                #[target_feature(enable = "avx2")]
                fn avx2($($arg: $ty),*) $(-> $ret)? {
                    $kernel($($arg),*)
                }
                // SAFETY: the CPU supports AVX2 (checked above).
                return unsafe { avx2($($arg),*) };
            }
            $kernel($($arg),*)
        }
    };
}
pub(crate) use avx2_kernel;
