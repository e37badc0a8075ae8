//! A buffer as the pieces a checkpoint saves ([`BufferParts`]), and back: every invariant of
//! the buffer is checked on the way in, so a corrupt or foreign state is a `StateError`, never
//! a buffer that breaks later.

use super::column::{Column, DType};
use super::schema::{FieldChecker, Level};
use super::store::{Computed, RolloutBuffer};
use crate::error::{CoreError, Result};
use crate::layout::validate_offsets;

/// Every piece of a buffer, as saved by a checkpoint. [`RolloutBuffer::from_parts`] checks it.
#[derive(Debug, Clone)]
pub struct BufferParts {
    pub float_dtype: DType,
    pub prompt_offsets: Vec<i64>,
    pub response_offsets: Vec<i64>,
    /// `None` for a buffer that has never been added to (no schema yet).
    pub prompt_ids: Option<Column>,
    pub token_fields: Vec<(String, Column)>,
    pub seq_fields: Vec<(String, Column)>,
    pub computed: Option<Computed>,
}

impl RolloutBuffer {
    /// A copy of every piece (what `state_dict` saves).
    pub fn to_parts(&self) -> BufferParts {
        BufferParts {
            float_dtype: self.float_dtype,
            prompt_offsets: self.prompt_offsets.clone(),
            response_offsets: self.response_offsets.clone(),
            prompt_ids: self.prompt_ids.clone(),
            token_fields: self.token_fields.clone(),
            seq_fields: self.seq_fields.clone(),
            computed: self.computed.clone(),
        }
    }

    /// Rebuild a buffer from saved pieces, checking every invariant (`StateError` otherwise).
    pub fn from_parts(parts: BufferParts) -> Result<RolloutBuffer> {
        let st = |m: String| CoreError::state(m);
        if !parts.float_dtype.is_float() {
            return Err(st(format!(
                "float_dtype must be float32 or float64, got {}",
                parts.float_dtype.name()
            )));
        }
        for (name, offsets) in [
            ("prompt_offsets", &parts.prompt_offsets),
            ("response_offsets", &parts.response_offsets),
        ] {
            validate_offsets(offsets, None, name).map_err(|e| st(e.message().to_string()))?;
        }
        if parts.prompt_offsets.len() != parts.response_offsets.len() {
            return Err(st(format!(
                "prompt_offsets has {} entries, response_offsets has {}",
                parts.prompt_offsets.len(),
                parts.response_offsets.len()
            )));
        }
        let n = parts.prompt_offsets.len() - 1;
        let n_p = *parts.prompt_offsets.last().unwrap_or(&0) as usize;
        let n_r = *parts.response_offsets.last().unwrap_or(&0) as usize;
        match &parts.prompt_ids {
            None => {
                if n != 0
                    || !parts.token_fields.is_empty()
                    || !parts.seq_fields.is_empty()
                    || parts.computed.is_some()
                {
                    return Err(st(
                        "a buffer without prompt_ids (no schema) must be empty".into()
                    ));
                }
            }
            Some(p) => {
                if !p.dtype().is_int() {
                    return Err(st(format!(
                        "prompt_ids must be int32 or int64, got {}",
                        p.dtype().name()
                    )));
                }
                if p.len() != n_p {
                    return Err(st(format!(
                        "prompt_ids has {} values, prompt_offsets end at {n_p}",
                        p.len()
                    )));
                }
                for i in 0..n {
                    if parts.prompt_offsets[i + 1] == parts.prompt_offsets[i] {
                        return Err(st(format!("sequence {i} has an empty prompt")));
                    }
                }
                match parts.token_fields.first() {
                    Some((name, _)) if name == "response_ids" => {}
                    _ => return Err(st("the first per-token field must be response_ids".into())),
                }
            }
        }
        let mut checker = FieldChecker::default();
        let fields = (parts.token_fields.iter().map(|(n, c)| (Level::Token, n, c))).chain(
            parts
                .seq_fields
                .iter()
                .map(|(n, c)| (Level::Sequence, n, c)),
        );
        for (level, name, col) in fields {
            checker
                .check(level, name, col.dtype())
                .map_err(|e| st(e.message().to_string()))?;
            let problem = match level {
                Level::Token if col.len() != n_r => Some(format!("response_offsets end at {n_r}")),
                Level::Sequence if col.len() != n => {
                    Some(format!("the buffer holds {n} sequences"))
                }
                _ => None,
            };
            if let Some(p) = problem {
                return Err(st(format!("{name} has {} values, {p}", col.len())));
            }
        }
        let mut buf = RolloutBuffer {
            float_dtype: parts.float_dtype,
            prompt_offsets: parts.prompt_offsets,
            response_offsets: parts.response_offsets,
            prompt_ids: parts.prompt_ids,
            token_fields: parts.token_fields,
            seq_fields: parts.seq_fields,
            computed: None,
            spare: Vec::new(),
            version: 0,
        };
        if let Some(c) = parts.computed {
            buf.set_advantages(&c.estimator, c.advantages, c.returns)
                .map_err(|e| st(e.message().to_string()))?;
        }
        Ok(buf)
    }

    /// Replace this buffer's contents with `other` (e.g. one built by [`Self::from_parts`]),
    /// advancing the version so that existing samplers notice.
    pub fn replace_with(&mut self, other: RolloutBuffer) {
        let v = self.version.max(other.version) + 1;
        *self = other;
        self.version = v;
    }
}
