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

use crate::error::{CoreError, Result};
use crate::layout::for_each_item;

/// Element type of a column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    I32,
    I64,
    F32,
    F64,
    Bool,
}

impl DType {
    /// numpy's name of the dtype (`"int32"`, `"float64"`, `"bool"`, ...).
    pub fn name(self) -> &'static str {
        match self {
            DType::I32 => "int32",
            DType::I64 => "int64",
            DType::F32 => "float32",
            DType::F64 => "float64",
            DType::Bool => "bool",
        }
    }

    /// Bytes per element.
    pub fn itemsize(self) -> usize {
        match self {
            DType::I32 | DType::F32 => 4,
            DType::I64 | DType::F64 => 8,
            DType::Bool => 1,
        }
    }

    /// Parse numpy's name of a dtype.
    pub fn parse(name: &str) -> Result<DType> {
        match name {
            "int32" => Ok(DType::I32),
            "int64" => Ok(DType::I64),
            "float32" => Ok(DType::F32),
            "float64" => Ok(DType::F64),
            "bool" => Ok(DType::Bool),
            other => Err(CoreError::dtype(format!(
                "unsupported dtype {other:?}; expected one of int32, int64, float32, float64, bool"
            ))),
        }
    }

    pub fn is_float(self) -> bool {
        matches!(self, DType::F32 | DType::F64)
    }

    pub fn is_int(self) -> bool {
        matches!(self, DType::I32 | DType::I64)
    }
}

/// A borrowed, typed, contiguous 1-D view (a numpy array's data, flattened in C order).
#[derive(Debug, Clone, Copy)]
pub enum Slice<'a> {
    I32(&'a [i32]),
    I64(&'a [i64]),
    F32(&'a [f32]),
    F64(&'a [f64]),
    Bool(&'a [bool]),
}

macro_rules! each_slice {
    ($s:expr, $v:ident => $body:expr) => {
        match $s {
            Slice::I32($v) => $body,
            Slice::I64($v) => $body,
            Slice::F32($v) => $body,
            Slice::F64($v) => $body,
            Slice::Bool($v) => $body,
        }
    };
}

macro_rules! each_column {
    ($c:expr, $v:ident => $body:expr) => {
        match $c {
            Column::I32($v) => $body,
            Column::I64($v) => $body,
            Column::F32($v) => $body,
            Column::F64($v) => $body,
            Column::Bool($v) => $body,
        }
    };
}

impl<'a> Slice<'a> {
    pub fn len(&self) -> usize {
        each_slice!(self, v => v.len())
    }

    /// Address of the first element (with the dtype and length, identifies the memory).
    fn addr(&self) -> usize {
        each_slice!(self, v => v.as_ptr() as usize)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn dtype(&self) -> DType {
        match self {
            Slice::I32(_) => DType::I32,
            Slice::I64(_) => DType::I64,
            Slice::F32(_) => DType::F32,
            Slice::F64(_) => DType::F64,
            Slice::Bool(_) => DType::Bool,
        }
    }

    /// Element `i` as f64 (exact for every stored type except int64 beyond 2^53).
    pub fn get_f64(&self, i: usize) -> f64 {
        match self {
            Slice::I32(v) => v[i] as f64,
            Slice::I64(v) => v[i] as f64,
            Slice::F32(v) => v[i] as f64,
            Slice::F64(v) => v[i],
            Slice::Bool(v) => {
                if v[i] {
                    1.0
                } else {
                    0.0
                }
            }
        }
    }
}

/// An owned, typed, growable 1-D array.
#[derive(Debug, Clone)]
pub enum Column {
    I32(Vec<i32>),
    I64(Vec<i64>),
    F32(Vec<f32>),
    F64(Vec<f64>),
    Bool(Vec<bool>),
}

/// Reserve room for `additional` more elements, growing by at most 1/8 beyond the need.
fn grow<T>(v: &mut Vec<T>, additional: usize) {
    let need = v.len() + additional;
    if need > v.capacity() {
        let target = need.max(v.capacity() + v.capacity() / 8);
        v.reserve_exact(target - v.len());
    }
}

impl Column {
    pub fn empty(dtype: DType) -> Column {
        match dtype {
            DType::I32 => Column::I32(Vec::new()),
            DType::I64 => Column::I64(Vec::new()),
            DType::F32 => Column::F32(Vec::new()),
            DType::F64 => Column::F64(Vec::new()),
            DType::Bool => Column::Bool(Vec::new()),
        }
    }

    /// Copy a borrowed slice into a new column of the same dtype.
    pub fn from_slice(s: Slice<'_>) -> Column {
        match s {
            Slice::I32(v) => Column::I32(v.to_vec()),
            Slice::I64(v) => Column::I64(v.to_vec()),
            Slice::F32(v) => Column::F32(v.to_vec()),
            Slice::F64(v) => Column::F64(v.to_vec()),
            Slice::Bool(v) => Column::Bool(v.to_vec()),
        }
    }

    pub fn dtype(&self) -> DType {
        self.as_slice().dtype()
    }

    pub fn len(&self) -> usize {
        each_column!(self, v => v.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes held by the elements.
    pub fn nbytes(&self) -> usize {
        self.len() * self.dtype().itemsize()
    }

    /// Bytes allocated (capacity), which is what memory use is made of.
    pub fn capacity_bytes(&self) -> usize {
        each_column!(self, v => v.capacity()) * self.dtype().itemsize()
    }

    pub fn as_slice(&self) -> Slice<'_> {
        match self {
            Column::I32(v) => Slice::I32(v),
            Column::I64(v) => Slice::I64(v),
            Column::F32(v) => Slice::F32(v),
            Column::F64(v) => Slice::F64(v),
            Column::Bool(v) => Slice::Bool(v),
        }
    }

    fn clear(&mut self) {
        each_column!(self, v => v.clear())
    }

    fn shrink_to_fit(&mut self) {
        each_column!(self, v => v.shrink_to_fit())
    }

    fn reserve(&mut self, additional: usize) {
        each_column!(self, v => grow(v, additional))
    }

    /// Append `segments` (start, len) of `src` in order. `src` must have this column's dtype
    /// (checked by the caller's validation; a mismatch is reported, never a panic).
    fn extend_segments(
        &mut self,
        src: Slice<'_>,
        segments: &[(usize, usize)],
        contiguous: bool,
    ) -> Result<()> {
        macro_rules! ext {
            ($dst:ident, $s:ident) => {{
                if contiguous {
                    grow($dst, $s.len());
                    $dst.extend_from_slice($s);
                } else {
                    let total: usize = segments.iter().map(|&(_, l)| l).sum();
                    grow($dst, total);
                    for &(start, len) in segments {
                        $dst.extend_from_slice(&$s[start..start + len]);
                    }
                }
                Ok(())
            }};
        }
        match (self, src) {
            (Column::I32(d), Slice::I32(s)) => ext!(d, s),
            (Column::I64(d), Slice::I64(s)) => ext!(d, s),
            (Column::F32(d), Slice::F32(s)) => ext!(d, s),
            (Column::F64(d), Slice::F64(s)) => ext!(d, s),
            (Column::Bool(d), Slice::Bool(s)) => ext!(d, s),
            (d, s) => Err(CoreError::dtype(format!(
                "internal: column holds {} but {} was appended",
                d.dtype().name(),
                s.dtype().name()
            ))),
        }
    }

    /// Append every piece in order (all of this column's dtype, checked by validation).
    fn extend_pieces(&mut self, pieces: &[Slice<'_>]) -> Result<()> {
        let total: usize = pieces.iter().map(Slice::len).sum();
        self.reserve(total);
        for p in pieces {
            self.extend_segments(*p, &[(0, p.len())], true)?;
        }
        Ok(())
    }

    /// Bitwise equality (NaN equals NaN with the same bits); what an exact round trip means.
    pub fn bits_eq(&self, other: &Column) -> bool {
        match (self, other) {
            (Column::I32(a), Column::I32(b)) => a == b,
            (Column::I64(a), Column::I64(b)) => a == b,
            (Column::Bool(a), Column::Bool(b)) => a == b,
            (Column::F32(a), Column::F32(b)) => {
                a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
            }
            (Column::F64(a), Column::F64(b)) => {
                a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
            }
            _ => false,
        }
    }

    /// A new column with the elements at `idx` (for per-sequence fields of a minibatch).
    pub fn take(&self, idx: &[usize]) -> Column {
        match self {
            Column::I32(v) => Column::I32(idx.iter().map(|&i| v[i]).collect()),
            Column::I64(v) => Column::I64(idx.iter().map(|&i| v[i]).collect()),
            Column::F32(v) => Column::F32(idx.iter().map(|&i| v[i]).collect()),
            Column::F64(v) => Column::F64(idx.iter().map(|&i| v[i]).collect()),
            Column::Bool(v) => Column::Bool(idx.iter().map(|&i| v[i]).collect()),
        }
    }
}

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

fn known_dtypes(table: &[(&str, &'static [DType])], name: &str) -> Option<&'static [DType]> {
    table.iter().find(|(n, _)| *n == name).map(|(_, d)| *d)
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

/// Advantages: one per response token, or one per sequence (broadcast when a batch is built).
#[derive(Debug, Clone)]
pub enum Advantages {
    Token(Column),
    Sequence(Column),
}

impl Advantages {
    pub fn column(&self) -> &Column {
        match self {
            Advantages::Token(c) | Advantages::Sequence(c) => c,
        }
    }

    pub fn is_token_level(&self) -> bool {
        matches!(self, Advantages::Token(_))
    }
}

/// Results of an advantage estimator, valid until the next add / clear.
#[derive(Debug, Clone)]
pub struct Computed {
    pub estimator: String,
    pub advantages: Advantages,
    pub returns: Option<Column>,
}

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

/// The ragged rollout buffer. See the module documentation for the layout.
#[derive(Debug, Clone)]
pub struct RolloutBuffer {
    float_dtype: DType,
    prompt_offsets: Vec<i64>,
    response_offsets: Vec<i64>,
    prompt_ids: Option<Column>,
    token_fields: Vec<(String, Column)>,
    seq_fields: Vec<(String, Column)>,
    computed: Option<Computed>,
    /// Token-sized float storage of earlier advantages / returns, kept by `clear` and reused
    /// by the next estimator (fewer fresh pages to fault in every step). At most
    /// [`MAX_SPARE`], so a cleared buffer holds no more than it held before.
    spare: Vec<Column>,
    version: u64,
}

/// Float columns kept for reuse by the advantage estimators: the advantages and returns of
/// the last estimator (what the buffer held before `clear`).
const MAX_SPARE: usize = 2;

/// Where the tokens of each sequence sit inside one input's values: (start, len) per sequence.
struct Resolved {
    segments: Vec<(usize, usize)>,
    /// Segments tile the values exactly, in order (one `extend_from_slice` suffices).
    contiguous: bool,
}

/// Check a field of one level (per token or per sequence): not named twice (`seen` holds the
/// names so far), not a known field of the other level, an allowed dtype for a known name,
/// a valid name otherwise. Used by `add` and by `from_parts`.
fn check_field_kind<'a>(
    name: &'a str,
    dtype: DType,
    per_token: bool,
    seen: &mut Vec<&'a str>,
) -> Result<()> {
    if seen.contains(&name) {
        return Err(CoreError::field(format!("field {name:?} is given twice")));
    }
    seen.push(name);
    let (own, other) = if per_token {
        (KNOWN_TOKEN_FIELDS, KNOWN_SEQ_FIELDS)
    } else {
        (KNOWN_SEQ_FIELDS, KNOWN_TOKEN_FIELDS)
    };
    if known_dtypes(other, name).is_some() {
        return Err(CoreError::field(if per_token {
            format!(
                "{name:?} is a per-sequence field (one value per sequence), but it was given per token"
            )
        } else {
            format!("{name:?} is a per-token field, but it was given per sequence")
        }));
    }
    match known_dtypes(own, name) {
        Some(allowed) if !allowed.contains(&dtype) => Err(CoreError::dtype(format!(
            "{name} must be {}, got {}",
            dtype_list(allowed),
            dtype.name()
        ))),
        Some(_) => Ok(()),
        None => check_field_name(name),
    }
}

fn seq_label(i: usize, base: usize) -> String {
    format!("sequence {i} of this add (buffer index {})", base + i)
}

/// Resolve one input into per-sequence segments, checking lengths and the mask.
/// Segments of padded inputs already scanned in one add, by (mask address, mask dtype,
/// rows, cols): every per-token field of a padded batch usually shares one mask, which is
/// then scanned once instead of once per field.
#[derive(Default)]
struct MaskScans(Vec<(MaskKey, Vec<(usize, usize)>)>);

/// (mask address, mask dtype, rows, cols).
type MaskKey = (usize, DType, usize, usize);

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
                start += l as usize;
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
            if values.len() != rows * cols {
                return Err(CoreError::shape(format!(
                    "{name}: a ({rows}, {cols}) array needs {} values, got {}",
                    rows * cols,
                    values.len()
                )));
            }
            if mask_shape != (rows, cols) || mask.len() != rows * cols {
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
fn extend_input(col: &mut Column, input: &TokenInput<'_>, res: &Resolved) -> Result<()> {
    match input {
        TokenInput::Pieces(p) => col.extend_pieces(p),
        TokenInput::Ragged { values, .. } | TokenInput::Padded { values, .. } => {
            col.extend_segments(*values, &res.segments, res.contiguous)
        }
    }
}

/// What validation found, so the append cannot fail.
struct AddPlan {
    n: usize,
    prompt: Resolved,
    /// Index into `batch.token_fields` for each buffer token field, in buffer order.
    token_order: Vec<usize>,
    token_resolved: Vec<Resolved>,
    seq_order: Vec<usize>,
    response_lengths: Vec<usize>,
}

impl Default for RolloutBuffer {
    fn default() -> Self {
        RolloutBuffer::new(DType::F32).expect("float32 is a float dtype")
    }
}

impl RolloutBuffer {
    /// An empty buffer. `float_dtype` (float32 or float64) is the dtype of computed advantages
    /// and returns.
    pub fn new(float_dtype: DType) -> Result<RolloutBuffer> {
        if !float_dtype.is_float() {
            return Err(CoreError::dtype(format!(
                "float_dtype must be float32 or float64, got {}",
                float_dtype.name()
            )));
        }
        Ok(RolloutBuffer {
            float_dtype,
            prompt_offsets: vec![0],
            response_offsets: vec![0],
            prompt_ids: None,
            token_fields: Vec::new(),
            seq_fields: Vec::new(),
            computed: None,
            spare: Vec::new(),
            version: 0,
        })
    }

    /// Number of sequences held.
    pub fn len(&self) -> usize {
        self.prompt_offsets.len() - 1
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Total response tokens held.
    pub fn num_response_tokens(&self) -> usize {
        *self.response_offsets.last().unwrap_or(&0) as usize
    }

    /// Total prompt tokens held.
    pub fn num_prompt_tokens(&self) -> usize {
        *self.prompt_offsets.last().unwrap_or(&0) as usize
    }

    pub fn float_dtype(&self) -> DType {
        self.float_dtype
    }

    /// Incremented by every change of the sequences held (add, clear, load); samplers use it to
    /// notice that their plan no longer matches the buffer.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Whether the schema is fixed (some add happened since construction / reset).
    pub fn has_schema(&self) -> bool {
        self.prompt_ids.is_some()
    }

    pub fn prompt_offsets(&self) -> &[i64] {
        &self.prompt_offsets
    }

    pub fn response_offsets(&self) -> &[i64] {
        &self.response_offsets
    }

    pub fn prompt_ids(&self) -> Option<&Column> {
        self.prompt_ids.as_ref()
    }

    pub fn token_fields(&self) -> &[(String, Column)] {
        &self.token_fields
    }

    pub fn seq_fields(&self) -> &[(String, Column)] {
        &self.seq_fields
    }

    pub fn token_field(&self, name: &str) -> Option<&Column> {
        self.token_fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, c)| c)
    }

    pub fn seq_field(&self, name: &str) -> Option<&Column> {
        self.seq_fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, c)| c)
    }

    pub fn computed(&self) -> Option<&Computed> {
        self.computed.as_ref()
    }

    /// Prompt length of sequence `i`.
    #[inline]
    pub fn prompt_len(&self, i: usize) -> usize {
        (self.prompt_offsets[i + 1] - self.prompt_offsets[i]) as usize
    }

    /// Response length of sequence `i`.
    #[inline]
    pub fn response_len(&self, i: usize) -> usize {
        (self.response_offsets[i + 1] - self.response_offsets[i]) as usize
    }

    /// Prompt + response length of every sequence (the width each needs in `input_ids`).
    pub fn total_lengths(&self) -> Vec<u64> {
        (0..self.len())
            .map(|i| (self.prompt_len(i) + self.response_len(i)) as u64)
            .collect()
    }

    /// Bytes of the values held (offsets included).
    pub fn nbytes(&self) -> usize {
        let mut b = (self.prompt_offsets.len() + self.response_offsets.len()) * 8;
        b += self.prompt_ids.as_ref().map_or(0, Column::nbytes);
        b += self
            .token_fields
            .iter()
            .map(|(_, c)| c.nbytes())
            .sum::<usize>();
        b += self
            .seq_fields
            .iter()
            .map(|(_, c)| c.nbytes())
            .sum::<usize>();
        if let Some(c) = &self.computed {
            b += c.advantages.column().nbytes() + c.returns.as_ref().map_or(0, Column::nbytes);
        }
        b
    }

    /// Bytes allocated (capacity of every column and offsets array).
    pub fn capacity_bytes(&self) -> usize {
        let mut b = (self.prompt_offsets.capacity() + self.response_offsets.capacity()) * 8;
        b += self.prompt_ids.as_ref().map_or(0, Column::capacity_bytes);
        b += self
            .token_fields
            .iter()
            .map(|(_, c)| c.capacity_bytes())
            .sum::<usize>();
        b += self
            .seq_fields
            .iter()
            .map(|(_, c)| c.capacity_bytes())
            .sum::<usize>();
        if let Some(c) = &self.computed {
            b += c.advantages.column().capacity_bytes()
                + c.returns.as_ref().map_or(0, Column::capacity_bytes);
        }
        b + self.spare.iter().map(Column::capacity_bytes).sum::<usize>()
    }

    /// Reserve room for `sequences` more sequences and `response_tokens` / `prompt_tokens`
    /// more tokens in every column (avoids regrowth when the final size is known).
    pub fn reserve(&mut self, sequences: usize, prompt_tokens: usize, response_tokens: usize) {
        grow(&mut self.prompt_offsets, sequences);
        grow(&mut self.response_offsets, sequences);
        if let Some(p) = &mut self.prompt_ids {
            p.reserve(prompt_tokens);
        }
        for (_, c) in &mut self.token_fields {
            c.reserve(response_tokens);
        }
        for (_, c) in &mut self.seq_fields {
            c.reserve(sequences);
        }
    }

    /// Release unused capacity (and the spare storage kept for the estimators).
    pub fn shrink_to_fit(&mut self) {
        self.spare = Vec::new();
        self.prompt_offsets.shrink_to_fit();
        self.response_offsets.shrink_to_fit();
        if let Some(p) = &mut self.prompt_ids {
            p.shrink_to_fit();
        }
        for (_, c) in self
            .token_fields
            .iter_mut()
            .chain(self.seq_fields.iter_mut())
        {
            c.shrink_to_fit();
        }
    }

    /// Drop every sequence, keeping the schema and the allocated memory for the next adds (and
    /// the computed advantages' storage, for the next estimator).
    pub fn clear(&mut self) {
        self.prompt_offsets.truncate(1);
        self.response_offsets.truncate(1);
        if let Some(p) = &mut self.prompt_ids {
            p.clear();
        }
        for (_, c) in self
            .token_fields
            .iter_mut()
            .chain(self.seq_fields.iter_mut())
        {
            c.clear();
        }
        self.recycle_computed();
        self.version += 1;
    }

    /// Move the computed advantages / returns into the spare storage (dropping them).
    fn recycle_computed(&mut self) {
        if let Some(c) = self.computed.take() {
            if let Advantages::Token(a) = c.advantages {
                self.keep_spare(a);
            }
            if let Some(r) = c.returns {
                self.keep_spare(r);
            }
        }
    }

    fn keep_spare(&mut self, col: Column) {
        if !col.dtype().is_float() {
            return;
        }
        self.spare.push(col); // contents kept: reused outputs are overwritten, not re-zeroed
                              // keep the largest ones
        self.spare
            .sort_by_key(|c| std::cmp::Reverse(c.capacity_bytes()));
        self.spare.truncate(MAX_SPARE);
    }

    /// Take the spare float storage (for an estimator's outputs and scratch).
    pub(crate) fn take_spare(&mut self) -> Vec<Column> {
        std::mem::take(&mut self.spare)
    }

    /// Drop every sequence, the schema and the memory: as new (same `float_dtype`).
    pub fn reset(&mut self) {
        let v = self.version + 1;
        *self = RolloutBuffer::new(self.float_dtype).expect("float dtype checked at construction");
        self.version = v;
    }

    /// Append a batch of sequences. Everything is checked first; on error nothing changes.
    pub fn add(&mut self, batch: &AddBatch<'_>) -> Result<()> {
        let plan = self.validate(batch)?;
        self.append(batch, plan)
    }

    fn validate(&self, batch: &AddBatch<'_>) -> Result<AddPlan> {
        let n = batch.prompt_ids.num_sequences();
        let base = self.len();

        // Names: known dtypes, no duplicates, no clash between levels.
        let mut seen: Vec<&str> = Vec::new();
        for (name, input) in &batch.token_fields {
            check_field_kind(name, input.dtype(), true, &mut seen)?;
        }
        for (name, values) in &batch.seq_fields {
            check_field_kind(name, values.dtype(), false, &mut seen)?;
        }
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
        let (token_order, seq_order) = if let Some(p) = &self.prompt_ids {
            if p.dtype() != batch.prompt_ids.dtype() {
                return Err(CoreError::dtype(format!(
                    "prompt_ids: the buffer holds {} but this add gives {}; cast it first",
                    p.dtype().name(),
                    batch.prompt_ids.dtype().name()
                )));
            }
            let held_t: Vec<&str> = self.token_fields.iter().map(|(n, _)| n.as_str()).collect();
            let held_s: Vec<&str> = self.seq_fields.iter().map(|(n, _)| n.as_str()).collect();
            for (name, _) in &batch.token_fields {
                if !held_t.contains(&name.as_str()) {
                    return Err(CoreError::field(format!(
                        "unknown field {name:?}: the buffer holds per-token fields {held_t:?} (the first add fixes \
                         the fields; call reset() to change them)"
                    )));
                }
            }
            for (name, _) in &batch.seq_fields {
                if !held_s.contains(&name.as_str()) {
                    return Err(CoreError::field(format!(
                        "unknown field {name:?}: the buffer holds per-sequence fields {held_s:?} (the first add \
                         fixes the fields; call reset() to change them)"
                    )));
                }
            }
            let mut t_order = Vec::with_capacity(held_t.len());
            for (name, col) in &self.token_fields {
                let j = batch.token_fields.iter().position(|(n, _)| n == name).ok_or_else(|| {
                    CoreError::field(format!("field {name:?} is missing: every add must give the fields of the first add"))
                })?;
                let got = batch.token_fields[j].1.dtype();
                if got != col.dtype() {
                    return Err(CoreError::dtype(format!(
                        "{name}: the buffer holds {} but this add gives {}; cast it first",
                        col.dtype().name(),
                        got.name()
                    )));
                }
                t_order.push(j);
            }
            let mut s_order = Vec::with_capacity(held_s.len());
            for (name, col) in &self.seq_fields {
                let j = batch.seq_fields.iter().position(|(n, _)| n == name).ok_or_else(|| {
                    CoreError::field(format!("field {name:?} is missing: every add must give the fields of the first add"))
                })?;
                let got = batch.seq_fields[j].1.dtype();
                if got != col.dtype() {
                    return Err(CoreError::dtype(format!(
                        "{name}: the buffer holds {} but this add gives {}; cast it first",
                        col.dtype().name(),
                        got.name()
                    )));
                }
                s_order.push(j);
            }
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
        let total_p: usize = prompt.segments.iter().map(|&(_, l)| l).sum();
        let total_r: usize = response_lengths.iter().sum();
        if self.num_prompt_tokens() + total_p > i64::MAX as usize
            || self.num_response_tokens() + total_r > i64::MAX as usize
        {
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

    fn append(&mut self, batch: &AddBatch<'_>, plan: AddPlan) -> Result<()> {
        if self.prompt_ids.is_none() {
            self.prompt_ids = Some(Column::empty(batch.prompt_ids.dtype()));
            self.token_fields = plan
                .token_order
                .iter()
                .map(|&j| {
                    (
                        batch.token_fields[j].0.clone(),
                        Column::empty(batch.token_fields[j].1.dtype()),
                    )
                })
                .collect();
            self.seq_fields = plan
                .seq_order
                .iter()
                .map(|&j| {
                    (
                        batch.seq_fields[j].0.clone(),
                        Column::empty(batch.seq_fields[j].1.dtype()),
                    )
                })
                .collect();
        }
        grow(&mut self.prompt_offsets, plan.n);
        grow(&mut self.response_offsets, plan.n);
        let mut p = *self.prompt_offsets.last().unwrap_or(&0);
        for &(_, l) in &plan.prompt.segments {
            p += l as i64;
            self.prompt_offsets.push(p);
        }
        let mut r = *self.response_offsets.last().unwrap_or(&0);
        for &l in &plan.response_lengths {
            r += l as i64;
            self.response_offsets.push(r);
        }
        // The token columns are independent: copy them in parallel (one column per task) when
        // the batch is large. Copying gives the same bytes whatever the thread count.
        let mut jobs: Vec<(&mut Column, &TokenInput<'_>, &Resolved)> = Vec::new();
        if let Some(col) = &mut self.prompt_ids {
            jobs.push((col, &batch.prompt_ids, &plan.prompt));
        }
        for ((slot, &j), res) in self
            .token_fields
            .iter_mut()
            .zip(&plan.token_order)
            .zip(&plan.token_resolved)
        {
            jobs.push((&mut slot.1, &batch.token_fields[j].1, res));
        }
        // Grow every column here, on the calling thread: an allocation made on a worker
        // thread would come from that thread's malloc arena and fragment the heap.
        let mut work = 0usize;
        for (col, _, res) in jobs.iter_mut() {
            let add: usize = res.segments.iter().map(|&(_, l)| l).sum();
            col.reserve(add);
            work += add;
        }
        let mut results: Vec<Result<()>> = jobs.iter().map(|_| Ok(())).collect();
        let items: Vec<_> = jobs.into_iter().zip(results.iter_mut()).collect();
        for_each_item(work, items, |_, ((col, input, res), out)| {
            *out = extend_input(col, input, res);
        });
        results.into_iter().collect::<Result<Vec<()>>>()?;
        for (slot, &j) in self.seq_fields.iter_mut().zip(&plan.seq_order) {
            let v = batch.seq_fields[j].1;
            slot.1.extend_segments(v, &[(0, v.len())], true)?;
        }
        self.recycle_computed();
        self.version += 1;
        Ok(())
    }

    /// Store the results of an advantage estimator (checked: lengths and float dtype).
    pub fn set_advantages(
        &mut self,
        estimator: &str,
        advantages: Advantages,
        returns: Option<Column>,
    ) -> Result<()> {
        let (level, want) = match &advantages {
            Advantages::Token(_) => ("per-token", self.num_response_tokens()),
            Advantages::Sequence(_) => ("per-sequence", self.len()),
        };
        let col = advantages.column();
        if !col.dtype().is_float() {
            return Err(CoreError::dtype(format!(
                "advantages must be float32 or float64, got {}",
                col.dtype().name()
            )));
        }
        if col.len() != want {
            return Err(CoreError::shape(format!(
                "{level} advantages: expected {want} values, got {}",
                col.len()
            )));
        }
        if let Some(r) = &returns {
            if !r.dtype().is_float() {
                return Err(CoreError::dtype(format!(
                    "returns must be float32 or float64, got {}",
                    r.dtype().name()
                )));
            }
            if r.len() != self.num_response_tokens() {
                return Err(CoreError::shape(format!(
                    "returns are per token: expected {} values, got {}",
                    self.num_response_tokens(),
                    r.len()
                )));
            }
        }
        self.recycle_computed();
        self.computed = Some(Computed {
            estimator: estimator.to_string(),
            advantages,
            returns,
        });
        Ok(())
    }

    /// Forget computed advantages and returns.
    pub fn clear_advantages(&mut self) {
        self.recycle_computed();
    }

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
        check_offsets("prompt_offsets", &parts.prompt_offsets)
            .map_err(|e| st(e.message().to_string()))?;
        check_offsets("response_offsets", &parts.response_offsets)
            .map_err(|e| st(e.message().to_string()))?;
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
        let mut seen: Vec<&str> = Vec::new();
        let kind = |e: CoreError| st(e.message().to_string());
        for (name, col) in &parts.token_fields {
            check_field_kind(name, col.dtype(), true, &mut seen).map_err(kind)?;
            if col.len() != n_r {
                return Err(st(format!(
                    "{name} has {} values, response_offsets end at {n_r}",
                    col.len()
                )));
            }
        }
        for (name, col) in &parts.seq_fields {
            check_field_kind(name, col.dtype(), false, &mut seen).map_err(kind)?;
            if col.len() != n {
                return Err(st(format!(
                    "{name} has {} values, the buffer holds {n} sequences",
                    col.len()
                )));
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

    /// Summary statistics as (name, value) pairs; see [`crate::buffer_stats`] for the names.
    pub fn stats(&self) -> Vec<(String, f64)> {
        crate::buffer_stats::stats(self)
    }
}

/// Check a ragged offsets array: N+1 entries, starting at 0, non-decreasing.
pub fn check_offsets(name: &str, offsets: &[i64]) -> Result<()> {
    match offsets.first() {
        None => {
            return Err(CoreError::offsets(format!(
                "{name} is empty; it needs N+1 entries starting at 0"
            )))
        }
        Some(&f) if f != 0 => {
            return Err(CoreError::offsets(format!(
                "{name}[0] is {f}; it must be 0"
            )))
        }
        _ => {}
    }
    for i in 1..offsets.len() {
        if offsets[i] < offsets[i - 1] {
            return Err(CoreError::offsets(format!(
                "{name} decreases at index {i} ({} after {})",
                offsets[i],
                offsets[i - 1]
            )));
        }
    }
    Ok(())
}
