//! Checked sizes and fallible allocation for every size that comes from the caller's
//! arguments (a `reserve`, a pad multiple, a number of parts, a permutation's length).
//!
//! `Vec::with_capacity`, `vec![x; n]` and `Vec::reserve` abort the process when the
//! allocator refuses (and panic when the byte count passes `isize::MAX`). Sizes that a user
//! chooses go through the helpers here instead: products are checked, and the allocation is
//! `try_reserve_exact`, so a request that cannot be met is [`CoreError::Memory`] naming what it
//! was for (the Python glue raises `AllocationError`, a `MemoryError`). Sizes bounded by data
//! that already sits in memory (an add's input arrays, the buffer's own columns) need no
//! checks beyond the usual.
//!
//! An allocation the operating system grants lazily (Linux overcommit) can still fail later,
//! when its pages are first written; no library can rule that out.

use crate::error::{CoreError, Result};

/// `n` elements of `T` in bytes, for messages (`"24.0 TiB"`); "more than 2^64 bytes" when even
/// the byte count overflows.
fn human_bytes<T>(n: usize) -> String {
    let bytes = n as u128 * std::mem::size_of::<T>() as u128;
    const UNITS: [&str; 7] = ["bytes", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} bytes")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// The error for `n` elements of `T` that cannot be allocated for `what`.
pub fn too_big<T>(what: &str, n: usize) -> CoreError {
    CoreError::memory(format!(
        "cannot allocate {what}: {n} values of {} bytes ({})",
        std::mem::size_of::<T>(),
        human_bytes::<T>(n)
    ))
}

/// `a * b`, or [`CoreError::Memory`] saying that the size of `what` overflows.
pub fn checked_mul(a: usize, b: usize, what: &str) -> Result<usize> {
    a.checked_mul(b).ok_or_else(|| {
        CoreError::memory(format!(
            "cannot allocate {what}: {a} × {b} values is more than the address space holds"
        ))
    })
}

/// `a + b`, or [`CoreError::Memory`] saying that the size of `what` overflows.
pub fn checked_add(a: usize, b: usize, what: &str) -> Result<usize> {
    a.checked_add(b).ok_or_else(|| {
        CoreError::memory(format!(
            "cannot allocate {what}: {a} + {b} values is more than the address space holds"
        ))
    })
}

/// Room for exactly `additional` more elements in `v`, or [`CoreError::Memory`] naming `what`.
pub fn reserve_exact<T>(v: &mut Vec<T>, additional: usize, what: &str) -> Result<()> {
    v.try_reserve_exact(additional)
        .map_err(|_| too_big::<T>(what, v.len().saturating_add(additional)))
}

/// An empty `Vec` with room for `n` elements, or [`CoreError::Memory`] naming `what`.
pub fn with_capacity<T>(n: usize, what: &str) -> Result<Vec<T>> {
    let mut v = Vec::new();
    reserve_exact(&mut v, n, what)?;
    Ok(v)
}

/// `n` copies of `fill`, or [`CoreError::Memory`] naming `what`.
pub fn filled<T: Clone>(n: usize, fill: T, what: &str) -> Result<Vec<T>> {
    let mut v = with_capacity(n, what)?;
    v.resize(n, fill);
    Ok(v)
}

/// The items of `iter` (exactly `n` of them, as from a range) collected into a `Vec` allocated
/// fallibly.
pub fn collect<T>(n: usize, iter: impl IntoIterator<Item = T>, what: &str) -> Result<Vec<T>> {
    let mut v = with_capacity(n, what)?;
    v.extend(iter);
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_requests_are_errors_not_aborts() {
        for n in [usize::MAX, usize::MAX / 8, 1usize << 60, 1usize << 50] {
            let e = filled(n, 0u64, "the test array").unwrap_err();
            assert!(matches!(e, CoreError::Memory(_)), "{e:?}");
            assert!(e.message().contains("the test array"), "{e}");
        }
        let e = with_capacity::<u8>(usize::MAX, "x").unwrap_err();
        assert!(e.message().contains("cannot allocate x"), "{e}");
        assert!(checked_mul(1 << 40, 1 << 40, "y").is_err());
        assert!(checked_add(usize::MAX, 1, "z").is_err());
        let mut v = vec![1u8; 3];
        assert!(reserve_exact(&mut v, usize::MAX - 1, "v").is_err());
        assert_eq!(v, [1, 1, 1]);
    }

    #[test]
    fn small_requests_work() {
        assert_eq!(filled(3, 7i32, "a").unwrap(), vec![7, 7, 7]);
        assert_eq!(collect(3, 0..3usize, "b").unwrap(), vec![0, 1, 2]);
        assert_eq!(checked_mul(3, 4, "c").unwrap(), 12);
        assert!(human_bytes::<u64>(3 << 40).starts_with("24.0 TiB"));
        assert_eq!(human_bytes::<u8>(5), "5 bytes");
    }
}
