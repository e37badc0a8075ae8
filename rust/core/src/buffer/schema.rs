//! What a buffer's named fields may be: the two [`Level`]s, the fields the buffer knows with
//! their allowed dtypes, the reserved names, and the checks an add and a saved state share.
//!
//! Both levels go through the same loops: [`check_fields`] checks names and dtypes of a new
//! schema (an add, or saved parts), [`match_schema`] checks a later add against the schema
//! held.

use std::str::FromStr;

use super::column::{Column, DType};
use crate::error::{CoreError, Result};

/// Where a field (or the advantages) lives: one value per response token, or one per sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Token,
    Sequence,
}

impl Level {
    /// Both levels, per-token first (the order of checks and of storage).
    pub const BOTH: [Level; 2] = [Level::Token, Level::Sequence];

    /// `"token"` or `"sequence"` (the option string and the state-dict value).
    pub fn name(self) -> &'static str {
        match self {
            Level::Token => "token",
            Level::Sequence => "sequence",
        }
    }

    /// `"per-token"` or `"per-sequence"`, for messages.
    pub fn describe(self) -> &'static str {
        match self {
            Level::Token => "per-token",
            Level::Sequence => "per-sequence",
        }
    }

    /// The fields the buffer knows at this level, with the dtypes each accepts.
    pub fn known_fields(self) -> &'static [(&'static str, &'static [DType])] {
        match self {
            Level::Token => KNOWN_TOKEN_FIELDS,
            Level::Sequence => KNOWN_SEQ_FIELDS,
        }
    }

    fn other(self) -> Level {
        match self {
            Level::Token => Level::Sequence,
            Level::Sequence => Level::Token,
        }
    }
}

impl FromStr for Level {
    type Err = CoreError;

    fn from_str(s: &str) -> Result<Level> {
        match s {
            "token" => Ok(Level::Token),
            "sequence" => Ok(Level::Sequence),
            other => Err(CoreError::option(format!(
                "level must be 'token' or 'sequence', got {other:?}"
            ))),
        }
    }
}

/// Per-token fields the buffer knows, with the dtypes each accepts.
pub const KNOWN_TOKEN_FIELDS: &[(&str, &[DType])] = &[
    ("response_ids", &[DType::I32, DType::I64]),
    ("logprobs", &[DType::F32, DType::F64]),
    ("ref_logprobs", &[DType::F32, DType::F64]),
    ("values", &[DType::F32, DType::F64]),
    ("rewards", &[DType::F32, DType::F64]),
    ("loss_mask", &[DType::Bool]),
];

/// Per-sequence fields the buffer knows, with the dtypes each accepts.
pub const KNOWN_SEQ_FIELDS: &[(&str, &[DType])] = &[
    ("scores", &[DType::F32, DType::F64]),
    ("group_ids", &[DType::I32, DType::I64]),
    ("truncated", &[DType::Bool]),
];

/// Names used by materialised batches and the buffer itself; no user field may take them.
pub const RESERVED_NAMES: &[&str] = &[
    "prompt_ids",
    "input_ids",
    "attention_mask",
    "position_ids",
    "response_mask",
    "old_logprobs",
    "advantages",
    "returns",
    "seq_advantages",
    "seq_index",
    "seq_ids",
    "prompt_lengths",
    "response_lengths",
    "cu_seqlens",
    "max_seqlen",
];

fn known_dtypes(level: Level, name: &str) -> Option<&'static [DType]> {
    level
        .known_fields()
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, d)| *d)
}

fn dtype_list(ds: &[DType]) -> String {
    ds.iter().map(|d| d.name()).collect::<Vec<_>>().join(" or ")
}

/// Check a user-chosen field name: an identifier, not reserved.
pub fn check_field_name(name: &str) -> Result<()> {
    let mut chars = name.chars();
    let ok = match chars.next() {
        Some(c) if c.is_ascii_alphabetic() || c == '_' => {
            chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        }
        _ => false,
    };
    if !ok {
        return Err(CoreError::field(format!(
            "field name {name:?} is not an identifier (letters, digits, underscore; not starting with a digit)"
        )));
    }
    if RESERVED_NAMES.contains(&name) {
        return Err(CoreError::field(format!(
            "field name {name:?} is reserved (it names a buffer or batch array); choose another name"
        )));
    }
    Ok(())
}

/// Checks the named fields of a new schema one at a time, in order (per-token fields first):
/// no name twice (across both levels), no known field at the other level, an allowed dtype for
/// a known name, a valid and unreserved identifier otherwise. Used by `add` and `from_parts`.
#[derive(Debug, Default)]
pub struct FieldChecker<'a> {
    seen: Vec<&'a str>,
}

impl<'a> FieldChecker<'a> {
    pub fn check(&mut self, level: Level, name: &'a str, dtype: DType) -> Result<()> {
        if self.seen.contains(&name) {
            return Err(CoreError::field(format!("field {name:?} is given twice")));
        }
        self.seen.push(name);
        if known_dtypes(level.other(), name).is_some() {
            return Err(CoreError::field(match level {
                Level::Token => format!(
                    "{name:?} is a per-sequence field (one value per sequence), but it was given per token"
                ),
                Level::Sequence => {
                    format!("{name:?} is a per-token field, but it was given per sequence")
                }
            }));
        }
        match known_dtypes(level, name) {
            Some(allowed) if !allowed.contains(&dtype) => Err(CoreError::dtype(format!(
                "{name} must be {}, got {}",
                dtype_list(allowed),
                dtype.name()
            ))),
            Some(_) => Ok(()),
            None => check_field_name(name),
        }
    }
}

/// [`FieldChecker::check`] every field, in order.
pub fn check_fields<'a>(fields: impl IntoIterator<Item = (Level, &'a str, DType)>) -> Result<()> {
    let mut checker = FieldChecker::default();
    fields
        .into_iter()
        .try_for_each(|(level, name, dtype)| checker.check(level, name, dtype))
}

/// Match the fields of a later add (`given`, per level: names and dtypes in the add's order)
/// against the schema held (`held`, per level, in storage order): first that the add names no
/// field the buffer lacks, then that it gives every held field with the held dtype. Returns,
/// per level, the add's index of each held field in storage order.
pub fn match_schema(
    held: [&[(String, Column)]; 2],
    given: [&[(&str, DType)]; 2],
) -> Result<[Vec<usize>; 2]> {
    for ((level, held), given) in Level::BOTH.into_iter().zip(held).zip(given) {
        for (name, _) in given {
            if !held.iter().any(|(n, _)| n == name) {
                let names: Vec<&str> = held.iter().map(|(n, _)| n.as_str()).collect();
                return Err(CoreError::field(format!(
                    "unknown field {name:?}: the buffer holds {} fields {names:?} (the first add fixes the \
                     fields; call reset() to change them)",
                    level.describe()
                )));
            }
        }
    }
    let mut order: [Vec<usize>; 2] = [Vec::new(), Vec::new()];
    for ((held, given), out) in held.into_iter().zip(given).zip(order.iter_mut()) {
        for (name, col) in held {
            let j = given.iter().position(|(n, _)| n == name).ok_or_else(|| {
                CoreError::field(format!(
                    "field {name:?} is missing: every add must give the fields of the first add"
                ))
            })?;
            let got = given[j].1;
            if got != col.dtype() {
                return Err(CoreError::dtype(format!(
                    "{name}: the buffer holds {} but this add gives {}; cast it first",
                    col.dtype().name(),
                    got.name()
                )));
            }
            out.push(j);
        }
    }
    Ok(order)
}
