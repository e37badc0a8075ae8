//! The one place that releases the GIL. Every kernel call goes through [`without_gil`], so a
//! test with two Python threads can prove kernels overlap.

use pyo3::prelude::*;

/// Run `f` with the GIL released. `f` must not touch Python objects: borrow the numpy data
/// as slices first, compute inside, wrap the result after.
#[inline]
pub fn without_gil<T, F>(py: Python<'_>, f: F) -> T
where
    F: Send + FnOnce() -> T,
    T: Send,
{
    py.detach(f)
}
