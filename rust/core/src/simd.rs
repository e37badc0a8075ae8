//! Run a loop body compiled for the widest vector unit the CPU has, chosen at run time.
//!
//! The crate is compiled for the x86-64 baseline (SSE2) so one wheel runs everywhere. The hot
//! elementwise loops (KL, masked sums, whitening, broadcasts) gain 2-4x from AVX2 / AVX-512,
//! so [`vectorized`] runs its closure inside a function compiled with those features; the
//! closure (marked `#[inline(always)]` at the call site) and the `#[inline(always)]` helpers
//! it calls are inlined there and auto-vectorised. The loops use no FMA, so every path
//! rounds identically: results are the same bits on every CPU.

/// Run `f` in a context compiled for AVX-512F or AVX2 when available.
#[inline(always)]
pub(crate) fn vectorized<R, F: FnOnce() -> R>(f: F) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU supports AVX-512F (checked just above).
            return unsafe { run_avx512(f) };
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2 (checked just above).
            return unsafe { run_avx2(f) };
        }
    }
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn run_avx2<R, F: FnOnce() -> R>(f: F) -> R {
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn run_avx512<R, F: FnOnce() -> R>(f: F) -> R {
    f()
}

/// `v` when `on`, else +0.0, without a branch (and without reading NaN into the result).
#[inline(always)]
pub(crate) fn keep_f64(v: f64, on: bool) -> f64 {
    f64::from_bits(v.to_bits() & (on as u64).wrapping_neg())
}
