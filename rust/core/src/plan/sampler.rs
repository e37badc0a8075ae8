//! Seeded, deterministic minibatch planning with a resumable position.
//!
//! Plans:
//! - **minibatches**: a fresh permutation per epoch (or the identity with `shuffle = false`)
//!   cut into `batch_size` sequences; the last, smaller batch is kept or dropped (`drop_last`);
//! - **micro-batches under a token budget** (see [`super::packing`]): sequences in shuffled
//!   order, cut under the budget; with `bucket`, the order of the micro-batches is shuffled
//!   too.
//!
//! The permutation of epoch `e` depends only on `(seed, e)` (see [`super::rng`]), so a
//! sampler's position is two integers `(epoch, step)` and resuming needs no replay.

use super::packing::{token_budget_batches, Budget};
use super::rng::{fingerprint, permutation, shuffle, stream};
use crate::error::{CoreError, Result};

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
        permutation(n, config.seed, epoch)?
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
