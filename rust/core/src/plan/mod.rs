//! Planning how the sequences of a buffer are split: seeded minibatch and micro-batch samplers,
//! balanced partition across data-parallel ranks, and packing under a token budget.
//!
//! | module | holds |
//! |---|---|
//! | [`rng`] | the seeded random stream, permutations, fingerprints |
//! | [`lengths`] | length checks and the linear-time longest-first order |
//! | [`packing`] | micro-batches under a token budget; first-fit-decreasing packing |
//! | [`partition`] | balanced partition (Karmarkar–Karp, LPT, local search) |
//! | [`sampler`] | the resumable sampler over several epochs |
//!
//! Every plan is deterministic: ties are broken by index and all randomness comes from
//! `(seed, epoch)`, so the same inputs give the same plan on every machine.

pub mod lengths;
pub mod packing;
pub mod partition;
pub mod rng;
pub mod sampler;

pub use lengths::check_lengths;
pub use packing::{pack, token_budget_batches, Budget, PackPlan};
pub use partition::{balanced_partition, Method, Partition};
pub use rng::{permutation, SplitMix64};
pub use sampler::{PlanKind, Sampler, SamplerConfig, SamplerState};
