//! The advantage and statistics kernels: pure functions over flat slices in a [`Layout`]
//! (padded `(B, T)` or ragged with offsets), writing into caller-provided outputs.
//!
//! | module | computes |
//! |---|---|
//! | [`gae`] | GAE advantages and returns |
//! | [`returns`] | discounted reward-to-go |
//! | [`group`] | group-relative advantages (GRPO, Dr.GRPO, RLOO) from one score per sequence |
//! | [`kl`] | k1 / k2 / k3 / abs KL estimates and KL-shaped rewards |
//! | [`stats`] | [`Moments`](stats::Moments), masked mean / variance / whitening, weighted whitening |
//! | [`describe`] | moments with min / max of a set of values, for logging summaries |
//! | [`tokens`] | broadcast one value per sequence to its tokens; reduce tokens to sequences |
//! | [`running`] | mergeable running moments |
//! | [`select`] | informative groups (dynamic sampling), linear quantile, top-k |
//!
//! Conventions: each option's default (the value the Python API uses) and the framework it
//! matches. Each kernel's module states its formula and edge cases.
//!
//! | option | default | matches | other choice |
//! |---|---|---|---|
//! | `gae` / `discounted_returns` `masked` | `skip`: carry the state across masked tokens | verl (multi-turn) | `zero`: zero-reward steps (OpenRLHF) |
//! | `group` `baseline` | `mean` | GRPO (verl, TRL) | `leave_one_out` (RLOO) |
//! | `group` `scale` | `group`: divide by the group std | verl `norm_adv_by_std_in_grpo=True` | `batch` (TRL `scale_rewards="batch"`), `none` (Dr.GRPO) |
//! | `group` `ddof` | 1 (unbiased) | verl, OpenRLHF, TRL | 0 |
//! | `group` `eps` | 1e-6 | verl | TRL uses 1e-4 |
//! | `group` `singleton` | `zero` | verl's vectorised RLOO | `raw`: the raw score (verl's GRPO and loop RLOO) |
//! | `kl` `estimator` | `k3` (`low_var_kl`) | verl `kl_penalty`, TRL GRPO's KL in the loss | `k1`, `k2`, `abs` |
//! | `kl` / `shaped_rewards` `clamp` | ±10 | OpenRLHF (all estimators), verl (k3) | `None`: raw formula |
//! | `shaped_rewards` `estimator` | `k1` | OpenRLHF `compute_reward` | `k2`, `k3`, `abs` |
//! | `masked_whiten` `ddof`, `eps`, `shift_mean` | 1, 1e-8, true | verl `masked_whiten` (TRL's PPO too) | `ddof = 0` (OpenRLHF), keep the mean |
//!
//! Shared rules: statistics accumulate in f64 (two-pass per block, Chan et al.'s merge across
//! blocks); masked and padding slots of per-token outputs are exactly 0 and their inputs are
//! never read into a result; rows run in parallel only through [`crate::parallel`], so
//! results are bit-identical for any thread count.
//!
//! [`Layout`]: crate::layout::Layout

pub mod describe;
pub mod gae;
pub mod group;
pub mod kl;
pub mod returns;
pub mod running;
pub mod select;
pub mod stats;
pub mod tokens;
