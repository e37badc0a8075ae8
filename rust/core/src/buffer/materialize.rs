//! Materialise a planned batch of buffer sequences into the arrays a causal LM consumes.
//!
//! Each sequence `s` becomes `input_ids = prompt_ids(s) ++ response_ids(s)` of length
//! `L = P + R`. A causal LM's logits at position `j` predict the token at `j + 1`, so the
//! per-token fields (aligned with response tokens in the buffer) are written **next-token
//! aligned**: response token `k` sits at input position `P + k` and is predicted by logits
//! position `P + k − 1`, which is where value `k` of every per-token field goes. Arrays of this
//! kind have one column fewer than `input_ids` and line up with `logits[:, :-1]`, i.e. with
//! log-probabilities of `input_ids[:, 1:]`.
//!
//! **Padded** (`b` sequences, `t` = longest `L` rounded up to `pad_to_multiple_of`):
//! - `input_ids` int64 `(b, t)`, right-padded with `pad_token_id`;
//! - `attention_mask` int64 `(b, t)`: 1 on the `L` tokens, 0 on padding;
//! - `position_ids` int64 `(b, t)`: `0 .. L−1`, 0 on padding;
//! - `response_mask` bool `(b, t−1)`: true at `j` iff `input_ids[:, j+1]` is a response token
//!   (and its `loss_mask`, when the buffer has one, is true);
//! - each per-token field `(b, t−1)` in its stored dtype, 0 elsewhere; `logprobs` is named
//!   `old_logprobs`; `response_ids` and `loss_mask` are not repeated;
//! - `advantages` `(b, t−1)` (per-sequence advantages broadcast over `response_mask`),
//!   `returns` `(b, t−1)` when computed per token, `seq_advantages` `(b,)` for per-sequence
//!   estimators;
//! - `seq_index` int64 `(b,)` (buffer index of each row), `prompt_lengths`,
//!   `response_lengths` int64 `(b,)`, and every per-sequence field `(b,)`.
//!
//! **Packed** (one row holding the `b` sequences back to back, `total = Σ L`):
//! - `input_ids`, `position_ids` (restarting at 0 for each sequence), `seq_ids` (row of the
//!   sequence within the batch, for building a block-diagonal mask) int64 `(1, total)`;
//! - `cu_seqlens` int32 `(b + 1,)` (cumulative lengths, for variable-length attention) and
//!   `max_seqlen`;
//! - next-token arrays `(1, total − 1)` as above (the position that would predict across a
//!   sequence boundary is never a response position, since every prompt is non-empty);
//! - the same `(b,)` arrays as padded. No `attention_mask`: a row of ones would let
//!   sequences attend to each other; use `cu_seqlens` / `position_ids` / `seq_ids`.
//!
//! Every array is a fresh `Vec` that the Python glue hands to numpy without a copy.

use rayon::prelude::*;

use super::column::Column;
use super::store::{Advantages, RolloutBuffer};
use crate::error::{CoreError, Result};
use crate::memory;
use crate::parallel::parallel_enabled;

/// One output array: name, shape (C order) and data.
#[derive(Debug, Clone)]
pub struct NamedArray {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: Column,
}

/// A materialised batch.
#[derive(Debug, Clone)]
pub struct Batch {
    pub arrays: Vec<NamedArray>,
    /// Longest `prompt + response` in the batch.
    pub max_seqlen: usize,
}

impl Batch {
    pub fn get(&self, name: &str) -> Option<&NamedArray> {
        self.arrays.iter().find(|a| a.name == name)
    }
}

/// Options of [`padded`] and [`packed`].
#[derive(Debug, Clone, Copy)]
pub struct MaterializeOptions {
    pub pad_token_id: i64,
    /// Round the padded width up to a multiple of this (1 = no rounding). Ignored by `packed`.
    pub pad_to_multiple_of: usize,
}

impl Default for MaterializeOptions {
    fn default() -> Self {
        MaterializeOptions {
            pad_token_id: 0,
            pad_to_multiple_of: 1,
        }
    }
}

/// Name of a per-token field in a materialised batch (`logprobs` → `old_logprobs`).
pub fn output_name(field: &str) -> &str {
    if field == "logprobs" {
        "old_logprobs"
    } else {
        field
    }
}

/// Work (elements written) below which scatters run on the calling thread.
const PAR_MIN_WORK: usize = 1 << 16;

/// A new array of `out_len` elements set to `fill` (allocated fallibly; `what` names it in the
/// error), then `f(r, segment_r)` for every segment `(start, len)` (sorted by start, disjoint),
/// in parallel when there is enough work. Each segment is written by one call, so the result
/// does not depend on the thread count.
fn scatter<T, F>(
    what: &str,
    out_len: usize,
    fill: T,
    segs: &[(usize, usize)],
    f: F,
) -> Result<Vec<T>>
where
    T: Copy + Send + Sync,
    F: Fn(usize, &mut [T]) + Sync + Send,
{
    let mut out = memory::filled(out_len, fill, what)?;
    let mut pieces: Vec<&mut [T]> = Vec::with_capacity(segs.len());
    let mut rest: &mut [T] = &mut out;
    let mut pos = 0usize;
    let mut work = 0usize;
    for &(start, len) in segs {
        let tail = std::mem::take(&mut rest);
        let (_, tail) = tail.split_at_mut(start - pos);
        let (piece, tail) = tail.split_at_mut(len);
        pieces.push(piece);
        rest = tail;
        pos = start + len;
        work += len;
    }
    if pieces.len() >= 2 && work >= PAR_MIN_WORK && parallel_enabled() {
        let min_len = (pieces.len() * 8192 / work.max(1)).max(1);
        pieces
            .into_par_iter()
            .enumerate()
            .with_min_len(min_len)
            .for_each(|(r, p)| f(r, p));
    } else {
        pieces.into_iter().enumerate().for_each(|(r, p)| f(r, p));
    }
    Ok(out)
}

/// Where each sequence of a batch goes.
struct Placement {
    seqs: Vec<usize>,
    prompt: Vec<usize>,
    response: Vec<usize>,
    /// Start of the sequence's tokens in the flat `input_ids`.
    token_start: Vec<usize>,
    /// Start of its next-token values (response token 0) in the flat next-token arrays.
    next_start: Vec<usize>,
    tokens_len: usize,
    next_len: usize,
    shape: Vec<usize>,
    next_shape: Vec<usize>,
    max_seqlen: usize,
    /// The batch in words, for allocation errors ("3 rows × 64 columns, pad_to_multiple_of=64").
    desc: String,
}

impl Placement {
    /// What the output array `name` is, for an allocation error.
    fn what(&self, name: &str) -> String {
        format!("{name} of a batch of {}", self.desc)
    }

    fn token_segs(&self) -> Vec<(usize, usize)> {
        (0..self.seqs.len())
            .map(|r| (self.token_start[r], self.prompt[r] + self.response[r]))
            .collect()
    }

    fn next_segs(&self) -> Vec<(usize, usize)> {
        (0..self.seqs.len())
            .map(|r| (self.next_start[r], self.response[r]))
            .collect()
    }
}

fn check_indices(buf: &RolloutBuffer, idx: &[usize]) -> Result<()> {
    if idx.is_empty() {
        return Err(CoreError::shape(
            "a batch needs at least one sequence; got an empty index list",
        ));
    }
    let n = buf.len();
    if let Some((pos, &bad)) = idx.iter().enumerate().find(|(_, &i)| i >= n) {
        return Err(CoreError::shape(format!(
            "sequence index {bad} (position {pos} of the batch) is out of range for a buffer of {n} sequences"
        )));
    }
    Ok(())
}

fn place(buf: &RolloutBuffer, idx: &[usize], packed: bool, multiple: usize) -> Result<Placement> {
    check_indices(buf, idx)?;
    if multiple == 0 {
        return Err(CoreError::option("pad_to_multiple_of must be at least 1"));
    }
    let b = idx.len();
    let prompt: Vec<usize> = idx.iter().map(|&s| buf.prompt_len(s)).collect();
    let response: Vec<usize> = idx.iter().map(|&s| buf.response_len(s)).collect();
    let max_seqlen = (0..b).map(|r| prompt[r] + response[r]).max().unwrap_or(0);
    if packed {
        let mut token_start = Vec::with_capacity(b);
        let mut acc = 0usize;
        for r in 0..b {
            token_start.push(acc);
            // Saturating: a repeated index can make the total exceed usize; it is refused below.
            acc = acc.saturating_add(prompt[r] + response[r]);
        }
        if acc > i32::MAX as usize {
            return Err(CoreError::capacity(format!(
                "a packed batch of {acc} tokens does not fit int32 cu_seqlens; use smaller micro-batches"
            )));
        }
        let next_start = (0..b).map(|r| token_start[r] + prompt[r] - 1).collect();
        Ok(Placement {
            seqs: idx.to_vec(),
            prompt,
            response,
            token_start,
            next_start,
            tokens_len: acc,
            next_len: acc - 1,
            shape: vec![1, acc],
            next_shape: vec![1, acc - 1],
            max_seqlen,
            desc: format!("{b} sequences packed into {acc} tokens"),
        })
    } else {
        // The width and the sizes checked: `pad_to_multiple_of` and repeated indices are the
        // caller's, so `b × t` may not fit (then nothing is allocated).
        let t = memory::checked_mul(
            max_seqlen.div_ceil(multiple),
            multiple,
            &format!(
                "a padded batch whose longest sequence ({max_seqlen}) is rounded up to \
                 pad_to_multiple_of={multiple}"
            ),
        )?;
        let desc = format!("{b} rows × {t} columns (pad_to_multiple_of={multiple})");
        let tokens_len = memory::checked_mul(b, t, &format!("a batch of {desc}"))?;
        let token_start = (0..b).map(|r| r * t).collect();
        let next_start = (0..b).map(|r| r * (t - 1) + prompt[r] - 1).collect();
        Ok(Placement {
            seqs: idx.to_vec(),
            prompt,
            response,
            token_start,
            next_start,
            tokens_len,
            next_len: b * (t - 1),
            shape: vec![b, t],
            next_shape: vec![b, t - 1],
            max_seqlen,
            desc,
        })
    }
}

fn ids_as_i64(col: &Column, start: usize, dst: &mut [i64]) {
    match col {
        Column::I32(v) => dst
            .iter_mut()
            .zip(&v[start..])
            .for_each(|(d, &x)| *d = x as i64),
        Column::I64(v) => dst.copy_from_slice(&v[start..start + dst.len()]),
        _ => unreachable!("token id columns are int32 or int64 (checked on add and load)"),
    }
}

/// Copy a per-token column into next-token position (the output array `name`).
fn scatter_field(name: &str, col: &Column, offsets: &[i64], pl: &Placement) -> Result<Column> {
    let segs = pl.next_segs();
    let what = pl.what(name);
    macro_rules! go {
        ($v:ident, $zero:expr) => {
            scatter(&what, pl.next_len, $zero, &segs, |r, d| {
                let a = offsets[pl.seqs[r]] as usize;
                d.copy_from_slice(&$v[a..a + d.len()]);
            })?
        };
    }
    Ok(match col {
        Column::I32(v) => Column::I32(go!(v, 0)),
        Column::I64(v) => Column::I64(go!(v, 0)),
        Column::F32(v) => Column::F32(go!(v, 0.0)),
        Column::F64(v) => Column::F64(go!(v, 0.0)),
        Column::Bool(v) => Column::Bool(go!(v, false)),
    })
}

/// Broadcast one value per sequence over its response positions where the loss mask allows.
fn broadcast_field(
    col: &Column,
    loss_mask: Option<&[bool]>,
    offsets: &[i64],
    pl: &Placement,
) -> Result<Column> {
    let segs = pl.next_segs();
    let what = pl.what("advantages");
    macro_rules! go {
        ($v:ident, $zero:expr) => {
            scatter(&what, pl.next_len, $zero, &segs, |r, d| {
                let s = pl.seqs[r];
                let x = $v[s];
                match loss_mask {
                    None => d.fill(x),
                    Some(m) => {
                        let a = offsets[s] as usize;
                        for (dj, &mj) in d.iter_mut().zip(&m[a..]) {
                            *dj = if mj { x } else { $zero };
                        }
                    }
                }
            })?
        };
    }
    Ok(match col {
        Column::F32(v) => Column::F32(go!(v, 0.0)),
        Column::F64(v) => Column::F64(go!(v, 0.0)),
        Column::I32(v) => Column::I32(go!(v, 0)),
        Column::I64(v) => Column::I64(go!(v, 0)),
        Column::Bool(v) => Column::Bool(go!(v, false)),
    })
}

fn materialize(
    buf: &RolloutBuffer,
    idx: &[usize],
    opts: &MaterializeOptions,
    packed: bool,
) -> Result<Batch> {
    let pl = place(
        buf,
        idx,
        packed,
        if packed { 1 } else { opts.pad_to_multiple_of },
    )?;
    let prompt_ids = buf
        .prompt_ids()
        .ok_or_else(|| CoreError::state("the buffer has no sequences"))?;
    let response_ids = buf
        .token_field("response_ids")
        .ok_or_else(|| CoreError::state("the buffer has no response_ids"))?;
    let (p_off, r_off) = (buf.prompt_offsets(), buf.response_offsets());
    let b = pl.seqs.len();
    let tsegs = pl.token_segs();
    let mut arrays: Vec<NamedArray> = Vec::new();
    let mut push = |name: &str, shape: Vec<usize>, data: Column| {
        arrays.push(NamedArray {
            name: name.to_string(),
            shape,
            data,
        });
    };

    let input_ids = scatter(
        &pl.what("input_ids"),
        pl.tokens_len,
        opts.pad_token_id,
        &tsegs,
        |r, d| {
            let s = pl.seqs[r];
            let (dp, dr) = d.split_at_mut(pl.prompt[r]);
            ids_as_i64(prompt_ids, p_off[s] as usize, dp);
            ids_as_i64(response_ids, r_off[s] as usize, dr);
        },
    )?;
    push("input_ids", pl.shape.clone(), Column::I64(input_ids));
    if !packed {
        let am = scatter(
            &pl.what("attention_mask"),
            pl.tokens_len,
            0i64,
            &tsegs,
            |_, d| d.fill(1),
        )?;
        push("attention_mask", pl.shape.clone(), Column::I64(am));
    }
    let pos = scatter(
        &pl.what("position_ids"),
        pl.tokens_len,
        0i64,
        &tsegs,
        |_, d| {
            for (j, x) in d.iter_mut().enumerate() {
                *x = j as i64;
            }
        },
    )?;
    push("position_ids", pl.shape.clone(), Column::I64(pos));
    if packed {
        let seq_ids = scatter(&pl.what("seq_ids"), pl.tokens_len, 0i64, &tsegs, |r, d| {
            d.fill(r as i64)
        })?;
        push("seq_ids", pl.shape.clone(), Column::I64(seq_ids));
        let mut cu = Vec::with_capacity(b + 1);
        cu.extend(pl.token_start.iter().map(|&x| x as i32));
        cu.push(pl.tokens_len as i32);
        push("cu_seqlens", vec![b + 1], Column::I32(cu));
    }

    let loss_mask: Option<&[bool]> = match buf.token_field("loss_mask") {
        Some(Column::Bool(v)) => Some(v),
        _ => None,
    };
    let rm = scatter(
        &pl.what("response_mask"),
        pl.next_len,
        false,
        &pl.next_segs(),
        |r, d| match loss_mask {
            None => d.fill(true),
            Some(m) => {
                let a = r_off[pl.seqs[r]] as usize;
                d.copy_from_slice(&m[a..a + d.len()]);
            }
        },
    )?;
    push("response_mask", pl.next_shape.clone(), Column::Bool(rm));

    for (name, col) in buf.token_fields() {
        if name == "response_ids" || name == "loss_mask" {
            continue;
        }
        let out = output_name(name);
        push(
            out,
            pl.next_shape.clone(),
            scatter_field(out, col, r_off, &pl)?,
        );
    }
    if let Some(c) = buf.computed() {
        match &c.advantages {
            Advantages::Token(col) => push(
                "advantages",
                pl.next_shape.clone(),
                scatter_field("advantages", col, r_off, &pl)?,
            ),
            Advantages::Sequence(col) => {
                push(
                    "advantages",
                    pl.next_shape.clone(),
                    broadcast_field(col, loss_mask, r_off, &pl)?,
                );
                push("seq_advantages", vec![b], col.take(&pl.seqs));
            }
        }
        if let Some(r) = &c.returns {
            push(
                "returns",
                pl.next_shape.clone(),
                scatter_field("returns", r, r_off, &pl)?,
            );
        }
    }
    push(
        "seq_index",
        vec![b],
        Column::I64(pl.seqs.iter().map(|&s| s as i64).collect()),
    );
    push(
        "prompt_lengths",
        vec![b],
        Column::I64(pl.prompt.iter().map(|&x| x as i64).collect()),
    );
    push(
        "response_lengths",
        vec![b],
        Column::I64(pl.response.iter().map(|&x| x as i64).collect()),
    );
    for (name, col) in buf.seq_fields() {
        push(name, vec![b], col.take(&pl.seqs));
    }
    Ok(Batch {
        arrays,
        max_seqlen: pl.max_seqlen,
    })
}

/// Right-padded `(b, t)` batch of the sequences `idx` (buffer indices, in row order).
pub fn padded(buf: &RolloutBuffer, idx: &[usize], opts: &MaterializeOptions) -> Result<Batch> {
    materialize(buf, idx, opts, false)
}

/// Packed `(1, total)` batch of the sequences `idx` (buffer indices, in packing order).
pub fn packed(buf: &RolloutBuffer, idx: &[usize], opts: &MaterializeOptions) -> Result<Batch> {
    materialize(buf, idx, opts, true)
}
