//! Seeded, deterministic minibatch planning.
//!
//! Every random choice comes from [`SplitMix64`] (Steele, Lea & Flood 2014), seeded from the
//! user's seed, the epoch and a stream number through [`stream`], and bounded integers use
//! Lemire's multiply-and-reject method (Lemire 2019): integer arithmetic only, so the same
//! seed gives the same order on every machine and for any thread count. The permutation of
//! epoch `e` depends only on `(seed, e)`, so a sampler's position is two integers
//! `(epoch, step)` and resuming needs no replay.
//!
//! Plans:
//! - **minibatches**: a fresh permutation per epoch (or the identity with `shuffle = false`)
//!   cut into `batch_size` sequences; the last, smaller batch is kept or dropped (`drop_last`);
//! - **micro-batches under a token budget**: at most `token_budget` tokens per micro-batch.
//!   Padded cost = count × (longest prompt + response, rounded up to `pad_to_multiple_of`);
//!   packed cost = sum of lengths. With `bucket`, sequences are sorted by length (longest
//!   first, ties in shuffled order) before cutting (padded) or packed first-fit-decreasing
//!   (packed), then the micro-batch order is shuffled; without it, sequences are cut greedily
//!   in shuffled order (next-fit).

use crate::error::{CoreError, Result};
use crate::partition::ffd_rows;

/// Weyl increment of SplitMix64 (2^64 / golden ratio, odd).
pub const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// The SplitMix64 output function (a bijective 64-bit mixer).
#[inline]
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// SplitMix64: a 64-bit state advanced by [`GOLDEN`], output through [`mix64`].
#[derive(Debug, Clone)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64 { state: seed }
    }

    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GOLDEN);
        mix64(self.state)
    }

    /// Uniform integer in `[0, n)` for `n >= 1`, unbiased (Lemire's method with rejection).
    #[inline]
    pub fn below(&mut self, n: u64) -> u64 {
        debug_assert!(n >= 1);
        let mut m = (self.next_u64() as u128) * (n as u128);
        let mut low = m as u64;
        if low < n {
            let threshold = n.wrapping_neg() % n;
            while low < threshold {
                m = (self.next_u64() as u128) * (n as u128);
                low = m as u64;
            }
        }
        (m >> 64) as u64
    }
}

/// The generator for `(seed, epoch, stream)`: stream 0 shuffles sequences, stream 1 shuffles
/// the order of bucketed micro-batches.
pub fn stream(seed: u64, epoch: u64, stream: u64) -> SplitMix64 {
    SplitMix64::new(mix64(
        mix64(mix64(seed).wrapping_add(epoch)).wrapping_add(stream),
    ))
}

/// Fisher–Yates shuffle in place (from the last element down, `j = below(i + 1)`).
pub fn shuffle<T>(v: &mut [T], rng: &mut SplitMix64) {
    for i in (1..v.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        v.swap(i, j);
    }
}

/// The permutation of `0..n` for `(seed, epoch)`.
pub fn permutation(n: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut v: Vec<usize> = (0..n).collect();
    shuffle(&mut v, &mut stream(seed, epoch, 0));
    v
}

/// A fingerprint of a list of lengths (its count and values), stored in sampler states so that
/// a state is never restored against a different buffer.
pub fn fingerprint(lengths: &[u64]) -> u64 {
    let mut h = mix64(lengths.len() as u64 ^ GOLDEN);
    for &l in lengths {
        h = mix64(h ^ l.wrapping_add(GOLDEN));
    }
    h
}

/// How a token budget is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Budget {
    /// count × longest length (rounded up to a multiple of `pad_to_multiple_of`) ≤ `tokens`.
    Padded {
        tokens: u64,
        pad_to_multiple_of: u64,
    },
    /// sum of lengths ≤ `tokens`.
    Packed { tokens: u64 },
}

impl Budget {
    pub fn tokens(&self) -> u64 {
        match *self {
            Budget::Padded { tokens, .. } | Budget::Packed { tokens } => tokens,
        }
    }

    fn width(&self, len: u64) -> u64 {
        match *self {
            Budget::Padded {
                pad_to_multiple_of: m,
                ..
            } if m > 1 => len.div_ceil(m) * m,
            _ => len,
        }
    }

    fn check(&self) -> Result<()> {
        if self.tokens() == 0 {
            return Err(CoreError::option("token_budget must be at least 1"));
        }
        if let Budget::Padded {
            pad_to_multiple_of: 0,
            ..
        } = self
        {
            return Err(CoreError::option("pad_to_multiple_of must be at least 1"));
        }
        Ok(())
    }
}

/// Split `order` (sequence ids, in the order to consider) into micro-batches under `budget`.
/// `lengths[i]` is the token count of sequence `i` (prompt + response). Every sequence of
/// `order` lands in exactly one micro-batch. With `bucket`, see the module docs; the returned
/// batches are then longest first (the caller may shuffle their order).
pub fn token_budget_batches(
    order: &[usize],
    lengths: &[u64],
    budget: Budget,
    bucket: bool,
) -> Result<Vec<Vec<usize>>> {
    budget.check()?;
    let cap = budget.tokens();
    for &i in order {
        let l = *lengths.get(i).ok_or_else(|| {
            CoreError::shape(format!(
                "sequence index {i} is out of range for {} lengths",
                lengths.len()
            ))
        })?;
        if budget.width(l) > cap {
            let what = match budget {
                Budget::Padded {
                    pad_to_multiple_of: m,
                    ..
                } if m > 1 => {
                    format!(
                        "{l} tokens ({} once padded to a multiple of {m})",
                        budget.width(l)
                    )
                }
                _ => format!("{l} tokens"),
            };
            return Err(CoreError::capacity(format!(
                "sequence {i} has {what} (prompt + response), more than the token budget {cap}"
            )));
        }
    }
    let mut batches: Vec<Vec<usize>> = Vec::new();
    match (budget, bucket) {
        (Budget::Padded { .. }, true) => {
            let mut sorted = order.to_vec();
            sorted.sort_by(|&a, &b| lengths[b].cmp(&lengths[a])); // stable: ties keep `order`
            let mut s = 0;
            while s < sorted.len() {
                let w = budget.width(lengths[sorted[s]]).max(1);
                let count = ((cap / w) as usize).max(1);
                let e = (s + count).min(sorted.len());
                batches.push(sorted[s..e].to_vec());
                s = e;
            }
        }
        (Budget::Padded { .. }, false) => {
            let mut cur: Vec<usize> = Vec::new();
            let mut cur_w = 0u64;
            for &i in order {
                let w = cur_w.max(budget.width(lengths[i]));
                if !cur.is_empty() && (cur.len() as u64 + 1) * w > cap {
                    batches.push(std::mem::take(&mut cur));
                    cur_w = budget.width(lengths[i]);
                } else {
                    cur_w = w;
                }
                cur.push(i);
            }
            if !cur.is_empty() {
                batches.push(cur);
            }
        }
        (Budget::Packed { .. }, true) => {
            let mut sorted = order.to_vec();
            sorted.sort_by(|&a, &b| lengths[b].cmp(&lengths[a]));
            let lens: Vec<u64> = sorted.iter().map(|&i| lengths[i]).collect();
            // `lens` is already in decreasing order, so first-fit here is first-fit-decreasing.
            for row in ffd_rows(&lens, cap) {
                batches.push(row.into_iter().map(|j| sorted[j]).collect());
            }
        }
        (Budget::Packed { .. }, false) => {
            let mut cur: Vec<usize> = Vec::new();
            let mut load = 0u64;
            for &i in order {
                if !cur.is_empty() && load + lengths[i] > cap {
                    batches.push(std::mem::take(&mut cur));
                    load = 0;
                }
                load += lengths[i];
                cur.push(i);
            }
            if !cur.is_empty() {
                batches.push(cur);
            }
        }
    }
    Ok(batches)
}

/// What a sampler plans.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlanKind {
    /// `batch_size` sequences per minibatch.
    Minibatches { batch_size: usize, drop_last: bool },
    /// Micro-batches under a token budget (every sequence used once per epoch; none dropped).
    MicroBatches { budget: Budget, bucket: bool },
}

/// A sampler's configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SamplerConfig {
    pub kind: PlanKind,
    pub epochs: u64,
    pub seed: u64,
    pub shuffle: bool,
}

/// The batches of one epoch.
pub fn plan_epoch(config: &SamplerConfig, lengths: &[u64], epoch: u64) -> Result<Vec<Vec<usize>>> {
    let n = lengths.len();
    let order = if config.shuffle {
        permutation(n, config.seed, epoch)
    } else {
        (0..n).collect()
    };
    match config.kind {
        PlanKind::Minibatches {
            batch_size,
            drop_last,
        } => {
            if batch_size == 0 {
                return Err(CoreError::option("batch_size must be at least 1"));
            }
            let full = n / batch_size;
            let count = if drop_last {
                full
            } else {
                n.div_ceil(batch_size)
            };
            Ok((0..count)
                .map(|b| order[b * batch_size..((b + 1) * batch_size).min(n)].to_vec())
                .collect())
        }
        PlanKind::MicroBatches { budget, bucket } => {
            let mut batches = token_budget_batches(&order, lengths, budget, bucket)?;
            if bucket && config.shuffle {
                shuffle(&mut batches, &mut stream(config.seed, epoch, 1));
            }
            Ok(batches)
        }
    }
}

/// A sampler's position and configuration: everything needed to resume it exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SamplerState {
    pub config: SamplerConfig,
    pub num_sequences: u64,
    pub fingerprint: u64,
    /// The epoch of the next batch (== `config.epochs` once exhausted).
    pub epoch: u64,
    /// The index within `epoch` of the next batch.
    pub step: u64,
}

/// An iterator over the batches of several epochs, with a resumable position.
#[derive(Debug, Clone)]
pub struct Sampler {
    config: SamplerConfig,
    lengths: Vec<u64>,
    fingerprint: u64,
    epoch: u64,
    step: u64,
    cache: Option<(u64, Vec<Vec<usize>>)>,
}

impl Sampler {
    /// Check the configuration against `lengths` (prompt + response per sequence) and start at
    /// epoch 0, step 0.
    pub fn new(config: SamplerConfig, lengths: Vec<u64>) -> Result<Sampler> {
        let n = lengths.len();
        if n == 0 {
            return Err(CoreError::option(
                "the buffer holds no sequences; add rollouts before planning",
            ));
        }
        if config.epochs == 0 {
            return Err(CoreError::option("epochs must be at least 1"));
        }
        match config.kind {
            PlanKind::Minibatches {
                batch_size,
                drop_last,
            } => {
                if batch_size == 0 {
                    return Err(CoreError::option("batch_size must be at least 1"));
                }
                if drop_last && batch_size > n {
                    return Err(CoreError::option(format!(
                        "drop_last=True with batch_size {batch_size} and {n} sequences gives no minibatch at all; \
                         lower batch_size or set drop_last=False"
                    )));
                }
            }
            PlanKind::MicroBatches { budget, .. } => {
                // Checks the options and every length against the budget, once, up front.
                let all: Vec<usize> = (0..n).collect();
                token_budget_batches(&all, &lengths, budget, false)?;
            }
        }
        let fingerprint = fingerprint(&lengths);
        Ok(Sampler {
            config,
            lengths,
            fingerprint,
            epoch: 0,
            step: 0,
            cache: None,
        })
    }

    /// Resume from a saved state; `lengths` must be those the state was planned on.
    pub fn restore(state: SamplerState, lengths: Vec<u64>) -> Result<Sampler> {
        if state.num_sequences != lengths.len() as u64 {
            return Err(CoreError::state(format!(
                "the sampler state was saved for {} sequences but the buffer holds {}",
                state.num_sequences,
                lengths.len()
            )));
        }
        if state.fingerprint != fingerprint(&lengths) {
            return Err(CoreError::state(
                "the sampler state was saved for a buffer with other sequence lengths; restore the buffer from the \
                 same checkpoint first",
            ));
        }
        let mut s = Sampler::new(state.config, lengths)
            .map_err(|e| CoreError::state(e.message().to_string()))?;
        s.set_position(state.epoch, state.step)?;
        Ok(s)
    }

    pub fn config(&self) -> &SamplerConfig {
        &self.config
    }

    pub fn lengths(&self) -> &[u64] {
        &self.lengths
    }

    pub fn state(&self) -> SamplerState {
        SamplerState {
            config: self.config,
            num_sequences: self.lengths.len() as u64,
            fingerprint: self.fingerprint,
            epoch: self.epoch,
            step: self.step,
        }
    }

    /// `(epoch, step)` of the next batch.
    pub fn position(&self) -> (u64, u64) {
        (self.epoch, self.step)
    }

    fn epoch_batches(&mut self, epoch: u64) -> Result<&Vec<Vec<usize>>> {
        if self.cache.as_ref().map(|(e, _)| *e) != Some(epoch) {
            let plan = plan_epoch(&self.config, &self.lengths, epoch)?;
            self.cache = Some((epoch, plan));
        }
        Ok(&self.cache.as_ref().expect("just filled").1)
    }

    /// Number of batches in `epoch` (fixed for minibatches; may vary per epoch for unbucketed
    /// token-budget plans).
    pub fn batches_in_epoch(&mut self, epoch: u64) -> Result<usize> {
        if let PlanKind::Minibatches {
            batch_size,
            drop_last,
        } = self.config.kind
        {
            let n = self.lengths.len();
            return Ok(if drop_last {
                n / batch_size
            } else {
                n.div_ceil(batch_size)
            });
        }
        Ok(self.epoch_batches(epoch)?.len())
    }

    /// Move to `(epoch, step)`; `step == batches_in_epoch(epoch)` means the start of the next
    /// epoch; `(epochs, 0)` means exhausted.
    pub fn set_position(&mut self, epoch: u64, step: u64) -> Result<()> {
        if epoch > self.config.epochs || (epoch == self.config.epochs && step != 0) {
            return Err(CoreError::state(format!(
                "position (epoch {epoch}, step {step}) is past the end of a {}-epoch plan",
                self.config.epochs
            )));
        }
        if epoch < self.config.epochs {
            let count = self.batches_in_epoch(epoch)? as u64;
            if step > count {
                return Err(CoreError::state(format!(
                    "epoch {epoch} has {count} batches; step {step} does not exist"
                )));
            }
            if step == count {
                self.epoch = epoch + 1;
                self.step = 0;
                return Ok(());
            }
        }
        self.epoch = epoch;
        self.step = step;
        Ok(())
    }

    /// The next batch (sequence ids) with its `(epoch, step)`, or `None` when exhausted.
    pub fn next_batch(&mut self) -> Result<Option<(u64, u64, Vec<usize>)>> {
        loop {
            if self.epoch >= self.config.epochs {
                return Ok(None);
            }
            let (epoch, step) = (self.epoch, self.step);
            let batches = self.epoch_batches(epoch)?;
            let count = batches.len() as u64;
            if step < count {
                let b = batches[step as usize].clone();
                // Keep the position canonical: after an epoch's last batch it reads (epoch+1, 0).
                if step + 1 == count {
                    self.epoch += 1;
                    self.step = 0;
                } else {
                    self.step += 1;
                }
                return Ok(Some((epoch, step, b)));
            }
            self.epoch += 1;
            self.step = 0;
        }
    }
}
