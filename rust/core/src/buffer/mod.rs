//! The ragged rollout buffer: one flat array per field plus offsets.
//!
//! Layout (N sequences held):
//! - `prompt_ids`: the prompt tokens of every sequence concatenated, with `prompt_offsets`
//!   (int64, N+1, `prompt_offsets[0] = 0`, non-decreasing);
//! - per-token fields (`response_ids`, `logprobs`, `ref_logprobs`, `values`, `rewards`,
//!   `loss_mask` and any user-named field): aligned with the **response tokens**, all sharing
//!   `response_offsets` (int64, N+1); value `k` of sequence `i` belongs to response token `k`;
//! - per-sequence fields (`scores`, `group_ids`, `truncated` and user-named ones): one value per
//!   sequence;
//! - computed fields (after [`RolloutBuffer::set_advantages`]): advantages either per token
//!   (GAE, REINFORCE++) or per sequence (GRPO family; broadcast only when a batch is built),
//!   and optionally per-token returns.
//!
//! The first [`RolloutBuffer::add`] fixes the schema (field names and dtypes); every later add
//! must supply the same fields with the same dtypes. An add is validated completely before
//! anything is written, so a rejected add leaves the buffer exactly as it was.
//!
//! Memory: columns grow by at most 1/8 of their capacity beyond what an add needs (not the
//! doubling of `Vec::push`), so a full buffer costs close to the raw bytes it holds.
//!
//! | module | holds |
//! |---|---|
//! | [`column`] | element types, borrowed slices, owned columns |
//! | [`schema`] | field levels, known fields and dtypes, reserved names, the schema checks |
//! | [`input`] | what an add takes and its validation |
//! | [`store`] | the buffer: add, clear, reset, set advantages, lookups |
//! | [`filter`] | keeping a subset of the sequences in place (dynamic sampling's group filter) |
//! | [`refill`] | dynamic sampling's refill bookkeeping: the filter round after round, the counters, the batch's rows |
//! | [`valid`] | which response tokens count (the one rule) |
//! | [`parts`] | the pieces a checkpoint saves, and back |
//! | [`estimators`] | the typed options of each advantage estimator |
//! | [`advantages`] | running an estimator in place |
//! | [`summary`] | statistics of a buffer, for logging |
//! | [`materialize`] | planned batches as padded or packed arrays |
//!
//! Imports point one way: `column` ← `schema` ← `input` ← `store` ← `valid`, `parts`,
//! `summary`, `advantages`, `materialize`, `filter` (the store knows neither its reports nor its
//! estimators); `estimators` and `refill` need only the kernels.

pub mod advantages;
pub mod column;
pub mod estimators;
pub mod filter;
pub mod input;
pub mod materialize;
pub mod parts;
pub mod refill;
pub mod schema;
pub mod store;
pub mod summary;
pub mod valid;

pub use column::{Column, DType, Slice};
pub use input::{AddBatch, TokenInput};
pub use parts::BufferParts;
pub use refill::{GroupRefill, RefillConfig, RefillProgress, RefillSelection};
pub use schema::Level;
pub use store::{Advantages, Computed, RolloutBuffer};
pub use valid::ValidTokens;
