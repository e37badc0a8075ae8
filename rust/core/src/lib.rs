//! rlhf-core: the pure-Rust core of rlhf_core.
//!
//! Pure functions over slices and the ragged rollout buffer built on them. No Python here:
//! `cargo test -p rlhf-core` runs alone.
//!
//! | module | holds |
//! |---|---|
//! | [`error`] | [`CoreError`], the one error type |
//! | [`memory`] | checked sizes and fallible allocation of sizes the caller chooses |
//! | [`layout`] | padded and ragged layouts, element traits, the one offsets check |
//! | [`parallel`] | the process-wide parallel switch and the row / block splitting helpers |
//! | [`bools`] | the check that a bool array's bytes are 0 or 1 |
//! | [`kernels`] | GAE, returns, group advantages, KL, statistics, broadcast / reduce, running moments |
//! | [`buffer`] | the rollout buffer: storage, schema, estimators in place, summary, materialisation; dynamic sampling's refill bookkeeping |
//! | [`plan`] | samplers, balanced partition, packing |
//!
//! Imports point one way: `error` ← `memory` ← `layout` ← `parallel` ← `kernels` ← `buffer`,
//! with `plan` beside `buffer` (it needs only `error` and `memory`).
//!
//! Rules: one error enum ([`CoreError`]), no panics on user input, no aborts on sizes the
//! caller chooses ([`memory`]), statistics accumulated in f64, rayon across rows or groups
//! only so results are bit-identical for any thread count.

pub mod bools;
pub mod buffer;
pub mod error;
pub mod kernels;
pub mod layout;
pub mod memory;
pub mod parallel;
pub mod plan;
mod simd;

pub use buffer::RolloutBuffer;
pub use error::{CoreError, Result};
pub use layout::{Float, Layout, MaskValue};
