//! The seeded random stream of the planners: [`SplitMix64`] (Steele, Lea & Flood 2014) seeded
//! from the user's seed, the epoch and a stream number through [`stream`], with bounded
//! integers by Lemire's multiply-and-reject method (Lemire 2019). Integer arithmetic only, so
//! the same seed gives the same order on every machine and for any thread count, and the
//! permutation of epoch `e` depends only on `(seed, e)`.

use crate::error::Result;
use crate::memory;

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

/// The permutation of `0..n` for `(seed, epoch)`; [`crate::CoreError::Memory`] naming `n` when it
/// cannot be allocated.
pub fn permutation(n: usize, seed: u64, epoch: u64) -> Result<Vec<usize>> {
    let mut v = memory::collect(n, 0..n, &format!("a permutation of n={n} indices"))?;
    shuffle(&mut v, &mut stream(seed, epoch, 0));
    Ok(v)
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
