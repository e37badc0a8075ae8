//! Which response tokens count — the one rule of the core, shared by the advantage
//! estimators, the summary and (through the bindings) the trainers: a token is valid when its
//! `loss_mask` is true (if the buffer holds one) and its sequence's score is not NaN (if the
//! buffer holds scores). An unscorable sequence thus gets advantage 0 and stays out of every
//! statistic.

use std::borrow::Cow;

use super::column::Column;
use super::store::RolloutBuffer;

impl RolloutBuffer {
    /// The valid response tokens (see the module documentation).
    pub fn valid_tokens(&self) -> ValidTokens<'_> {
        let loss_mask = match self.token_field("loss_mask") {
            Some(Column::Bool(m)) => Some(m.as_slice()),
            _ => None,
        };
        let nan: Vec<usize> = match self.seq_field("scores") {
            Some(s) => {
                let s = s.as_slice();
                (0..self.len()).filter(|&i| s.get_f64(i).is_nan()).collect()
            }
            None => Vec::new(),
        };
        let mask = if nan.is_empty() {
            loss_mask.map(Cow::Borrowed)
        } else {
            let mut m =
                loss_mask.map_or_else(|| vec![true; self.num_response_tokens()], <[bool]>::to_vec);
            for i in nan {
                m[self.response_range(i)].fill(false);
            }
            Some(Cow::Owned(m))
        };
        ValidTokens {
            mask,
            offsets: &self.response_offsets,
        }
    }
}

/// The valid response tokens of a buffer (see [`RolloutBuffer::valid_tokens`]): a mask over
/// every response token, or `None` when all of them are valid. Borrows `loss_mask` when no
/// score is NaN.
#[derive(Debug, Clone)]
pub struct ValidTokens<'a> {
    mask: Option<Cow<'a, [bool]>>,
    offsets: &'a [i64],
}

impl ValidTokens<'_> {
    /// One entry per response token, or `None` when every token is valid.
    pub fn mask(&self) -> Option<&[bool]> {
        self.mask.as_deref()
    }

    /// One entry per response token (all `true` when every token is valid).
    pub fn to_vec(&self) -> Vec<bool> {
        match &self.mask {
            Some(m) => m.to_vec(),
            None => vec![true; *self.offsets.last().unwrap_or(&0) as usize],
        }
    }

    /// Number of valid tokens of sequence `i`.
    pub fn count(&self, i: usize) -> usize {
        let r = self.offsets[i] as usize..self.offsets[i + 1] as usize;
        match &self.mask {
            None => r.len(),
            Some(m) => m[r].iter().filter(|&&b| b).count(),
        }
    }

    /// Number of valid tokens of every sequence.
    pub fn counts(&self) -> Vec<usize> {
        (0..self.offsets.len() - 1).map(|i| self.count(i)).collect()
    }
}
