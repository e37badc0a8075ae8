//! `rlhf_core._core`: PyO3 glue over `rlhf-core-kernels`. Borrow, check, release the GIL,
//! call the core, wrap the result; no arithmetic here.

use pyo3::prelude::*;

mod buffer;
mod errors;
mod gil;
mod ops;
mod pool;

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add(
        "BUILD_PROFILE",
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
    )?;
    errors::register(m)?;
    ops::register(m)?;
    buffer::register(m)?;
    Ok(())
}
