//! rlhf-core-kernels: the pure-Rust core of rlhf_core.
//!
//! Pure functions over slices: advantage estimators (GAE, discounted returns, group
//! baselines), masked statistics, KL estimators, token broadcast/reduce, running moments,
//! the ragged rollout buffer and minibatch planning. No Python here: `cargo test` runs alone.
//!
//! Rules: one error enum ([`CoreError`]), no panics on user input, statistics accumulated in
//! f64, rayon across rows or groups only so results are bit-identical for any thread count.

pub mod buffer;
pub mod buffer_advantages;
pub mod buffer_stats;
pub mod error;
pub mod gae;
pub mod group;
pub mod kl;
pub mod layout;
pub mod materialize;
pub mod partition;
pub mod plan;
pub mod returns;
pub mod running;
mod simd;
pub mod stats;
pub mod tokens;

pub use error::{CoreError, Result};
pub use layout::{Float, Layout, MaskValue};
