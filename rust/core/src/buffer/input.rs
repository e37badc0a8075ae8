//! What an add takes and how it is checked: [`TokenInput`] (ragged values with lengths,
//! one piece per sequence, or a padded array with a padding mask), [`AddBatch`], and the
//! validation that resolves where every sequence's values sit before anything is written, so a
//! rejected add leaves the buffer exactly as it was.

use super::column::{Column, DType, Slice};
use super::schema::{check_fields, match_schema, Level};
use crate::error::{CoreError, Result};

/// One field of an add, as it arrives from the caller.
#[derive(Debug, Clone)]
pub enum TokenInput<'a> {
    /// Values of all sequences concatenated, with one length per sequence.
    Ragged {
        values: Slice<'a>,
        lengths: &'a [i64],
    },
    /// One slice per sequence (at least one; all of the same dtype): copied straight into the
    /// column, without concatenating them first.
    Pieces(Vec<Slice<'a>>),
    /// A `(rows, cols)` C-order array and a mask of shape `mask_shape` that must equal
    /// `(rows, cols)`. Each mask row must be one contiguous run of ones (right padding, left
    /// padding or both); the run gives the sequence's tokens. Mask values must be 0 or 1.
    Padded {
        values: Slice<'a>,
        rows: usize,
        cols: usize,
        mask: Slice<'a>,
        mask_shape: (usize, usize),
    },
}

impl TokenInput<'_> {
    pub fn num_sequences(&self) -> usize {
        match self {
            TokenInput::Ragged { lengths, .. } => lengths.len(),
            TokenInput::Pieces(p) => p.len(),
            TokenInput::Padded { rows, .. } => *rows,
        }
    }

    /// The dtype (of the first piece for `Pieces`; an empty list reads as int64).
    pub fn dtype(&self) -> DType {
        match self {
            TokenInput::Ragged { values, .. } | TokenInput::Padded { values, .. } => values.dtype(),
            TokenInput::Pieces(p) => p.first().map_or(DType::I64, |s| s.dtype()),
        }
    }
}

/// A batch of sequences to add. `token_fields` must contain `response_ids`.
#[derive(Debug, Clone)]
pub struct AddBatch<'a> {
    pub prompt_ids: TokenInput<'a>,
    pub token_fields: Vec<(String, TokenInput<'a>)>,
    pub seq_fields: Vec<(String, Slice<'a>)>,
}

/// Where the tokens of each sequence sit inside one input's values: (start, len) per sequence.
pub(super) struct Resolved {
    pub(super) segments: Vec<(usize, usize)>,
    /// Segments tile the values exactly, in order (one `extend_from_slice` suffices).
    pub(super) contiguous: bool,
}

fn seq_label(i: usize, base: usize) -> String {
    format!("sequence {i} of this add (buffer index {})", base + i)
}

/// Segments of padded inputs already scanned in one add, by (mask address, mask dtype,
/// rows, cols): every per-token field of a padded batch usually shares one mask, which is
/// then scanned once instead of once per field.
#[derive(Default)]
struct MaskScans(Vec<(MaskKey, Vec<(usize, usize)>)>);

/// (mask address, mask dtype, rows, cols).
type MaskKey = (usize, DType, usize, usize);

/// Resolve one input into per-sequence segments, checking lengths and the mask.
fn resolve(name: &str, input: &TokenInput<'_>, scans: &mut MaskScans) -> Result<Resolved> {
    match *input {
        TokenInput::Pieces(ref pieces) => {
            let dt = input.dtype();
            if let Some(i) = pieces.iter().position(|p| p.dtype() != dt) {
                return Err(CoreError::dtype(format!(
                    "{name}: sequence {i} has dtype {}, sequence 0 has {}; every sequence of a field must \
                     have the same dtype",
                    pieces[i].dtype().name(),
                    dt.name()
                )));
            }
            Ok(Resolved {
                segments: pieces.iter().map(|p| (0, p.len())).collect(),
                contiguous: false,
            })
        }
        TokenInput::Ragged { values, lengths } => {
            let mut segments = Vec::with_capacity(lengths.len());
            let mut start = 0usize;
            for (i, &l) in lengths.iter().enumerate() {
                if l < 0 {
                    return Err(CoreError::shape(format!(
                        "{name}: sequence {i} has negative length {l}"
                    )));
                }
                segments.push((start, l as usize));
                start = start.checked_add(l as usize).ok_or_else(|| {
                    CoreError::shape(format!(
                        "{name}: the per-sequence lengths add up to more than 2^64 (at sequence {i})"
                    ))
                })?;
            }
            if start != values.len() {
                return Err(CoreError::shape(format!(
                    "{name}: the per-sequence lengths add up to {start} but {} values were given",
                    values.len()
                )));
            }
            Ok(Resolved {
                segments,
                contiguous: true,
            })
        }
        TokenInput::Padded {
            values,
            rows,
            cols,
            mask,
            mask_shape,
        } => {
            if rows.checked_mul(cols) != Some(values.len()) {
                return Err(CoreError::shape(format!(
                    "{name}: a ({rows}, {cols}) array needs {rows} × {cols} values, got {}",
                    values.len()
                )));
            }
            if mask_shape != (rows, cols) || mask.len() != values.len() {
                return Err(CoreError::shape(format!(
                    "{name}: mask has shape {mask_shape:?} but the values have shape ({rows}, {cols})"
                )));
            }
            let key = (mask.addr(), mask.dtype(), rows, cols);
            if let Some((_, segments)) = scans.0.iter().find(|(k, _)| *k == key) {
                return Ok(Resolved {
                    segments: segments.clone(),
                    contiguous: false,
                });
            }
            let mut segments = Vec::with_capacity(rows);
            for r in 0..rows {
                let base = r * cols;
                let mut first = None;
                let mut last = 0usize;
                for c in 0..cols {
                    let m = mask.get_f64(base + c);
                    if m == 1.0 {
                        if first.is_none() {
                            first = Some(c);
                        } else if last + 1 != c {
                            return Err(CoreError::shape(format!(
                                "{name}: mask row {r} is not one contiguous run of ones (a gap before column {c}); \
                                 masks must mark padding only (left or right); put in-sequence masking in the \
                                 per-token field loss_mask"
                            )));
                        }
                        last = c;
                    } else if m != 0.0 {
                        return Err(CoreError::shape(format!(
                            "{name}: mask row {r} column {c} holds {m}; mask values must be 0 or 1"
                        )));
                    }
                }
                match first {
                    Some(f) => segments.push((base + f, last + 1 - f)),
                    None => segments.push((base, 0)),
                }
            }
            scans.0.push((key, segments.clone()));
            Ok(Resolved {
                segments,
                contiguous: false,
            })
        }
    }
}

/// Append one validated input to its column.
pub(super) fn extend_input(col: &mut Column, input: &TokenInput<'_>, res: &Resolved) -> Result<()> {
    match input {
        TokenInput::Pieces(p) => col.extend_pieces(p),
        TokenInput::Ragged { values, .. } | TokenInput::Padded { values, .. } => {
            col.extend_segments(*values, &res.segments, res.contiguous)
        }
    }
}

/// What validation found, so the append cannot fail.
pub(super) struct AddPlan {
    pub(super) n: usize,
    pub(super) prompt: Resolved,
    /// Index into `batch.token_fields` for each buffer token field, in buffer order.
    pub(super) token_order: Vec<usize>,
    pub(super) token_resolved: Vec<Resolved>,
    pub(super) seq_order: Vec<usize>,
    pub(super) response_lengths: Vec<usize>,
}

/// What a buffer holds that an add is checked against.
pub(super) struct Held<'a> {
    /// `None` before the first add (no schema yet).
    pub(super) prompt_ids: Option<&'a Column>,
    pub(super) token_fields: &'a [(String, Column)],
    pub(super) seq_fields: &'a [(String, Column)],
    pub(super) sequences: usize,
    pub(super) prompt_tokens: usize,
    pub(super) response_tokens: usize,
}

impl Held<'_> {
    /// Check `batch` completely against the schema held (or as the first add) and resolve
    /// where every sequence's values sit, so that appending it cannot fail.
    pub(super) fn plan_add(&self, batch: &AddBatch<'_>) -> Result<AddPlan> {
        let n = batch.prompt_ids.num_sequences();
        let base = self.sequences;

        // Names: known dtypes, no duplicates, no clash between levels.
        check_fields(
            (batch
                .token_fields
                .iter()
                .map(|(n, t)| (Level::Token, n.as_str(), t.dtype())))
            .chain(
                batch
                    .seq_fields
                    .iter()
                    .map(|(n, s)| (Level::Sequence, n.as_str(), s.dtype())),
            ),
        )?;
        if !batch.token_fields.iter().any(|(n, _)| n == "response_ids") {
            return Err(CoreError::field("response_ids is required"));
        }
        if !batch.prompt_ids.dtype().is_int() {
            return Err(CoreError::dtype(format!(
                "prompt_ids must be int32 or int64, got {}",
                batch.prompt_ids.dtype().name()
            )));
        }

        // Schema: the same names and dtypes as the first add.
        let (token_order, seq_order) = if let Some(p) = self.prompt_ids {
            if p.dtype() != batch.prompt_ids.dtype() {
                return Err(CoreError::dtype(format!(
                    "prompt_ids: the buffer holds {} but this add gives {}; cast it first",
                    p.dtype().name(),
                    batch.prompt_ids.dtype().name()
                )));
            }
            let given_t: Vec<(&str, DType)> = batch
                .token_fields
                .iter()
                .map(|(n, t)| (n.as_str(), t.dtype()))
                .collect();
            let given_s: Vec<(&str, DType)> = batch
                .seq_fields
                .iter()
                .map(|(n, s)| (n.as_str(), s.dtype()))
                .collect();
            let [t_order, s_order] =
                match_schema([self.token_fields, self.seq_fields], [&given_t, &given_s])?;
            (t_order, s_order)
        } else {
            // First add: response_ids first, then the given order.
            let r = batch
                .token_fields
                .iter()
                .position(|(n, _)| n == "response_ids")
                .unwrap_or(0);
            let mut t_order = vec![r];
            t_order.extend((0..batch.token_fields.len()).filter(|&j| j != r));
            (t_order, (0..batch.seq_fields.len()).collect())
        };

        // Sequence counts.
        for (name, input) in &batch.token_fields {
            if input.num_sequences() != n {
                return Err(CoreError::shape(format!(
                    "{name} has {} sequences, prompt_ids has {n}",
                    input.num_sequences()
                )));
            }
        }
        for (name, values) in &batch.seq_fields {
            if values.len() != n {
                return Err(CoreError::shape(format!(
                    "{name} has {} values (one per sequence expected), prompt_ids has {n} sequences",
                    values.len()
                )));
            }
        }

        // Lengths.
        let mut scans = MaskScans::default();
        let prompt = resolve("prompt_ids", &batch.prompt_ids, &mut scans)?;
        for (i, &(_, l)) in prompt.segments.iter().enumerate() {
            if l == 0 {
                return Err(CoreError::shape(format!(
                    "prompt_ids: {} is empty; every sequence needs at least one prompt token (e.g. BOS) so that a \
                     logit predicts its first response token",
                    seq_label(i, base)
                )));
            }
        }
        let resp_j = token_order[0];
        let resp = resolve("response_ids", &batch.token_fields[resp_j].1, &mut scans)?;
        let response_lengths: Vec<usize> = resp.segments.iter().map(|&(_, l)| l).collect();
        let mut token_resolved = Vec::with_capacity(token_order.len());
        token_resolved.push(resp);
        for &j in &token_order[1..] {
            let (name, input) = &batch.token_fields[j];
            let r = resolve(name, input, &mut scans)?;
            for (i, (&(_, l), &rl)) in r.segments.iter().zip(&response_lengths).enumerate() {
                if l != rl {
                    return Err(CoreError::shape(format!(
                        "{name}: {} has {l} values but response_ids has {rl} tokens (per-token fields are \
                         aligned with the response tokens)",
                        seq_label(i, base)
                    )));
                }
            }
            token_resolved.push(r);
        }
        // Each input's segments lie inside its values, so these sums fit; the totals with
        // what is held are checked (offsets are int64).
        let total_p: usize = prompt.segments.iter().map(|&(_, l)| l).sum();
        let total_r: usize = response_lengths.iter().sum();
        let fits = |held: usize, add: usize| {
            held.checked_add(add)
                .is_some_and(|t| t <= i64::MAX as usize)
        };
        if !fits(self.prompt_tokens, total_p) || !fits(self.response_tokens, total_r) {
            return Err(CoreError::capacity(
                "the buffer would hold more than 2^63 tokens",
            ));
        }
        Ok(AddPlan {
            n,
            prompt,
            token_order,
            token_resolved,
            seq_order,
            response_lengths,
        })
    }
}
