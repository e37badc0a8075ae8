//! The ragged rollout buffer itself: its storage, the operations that change it (add, clear,
//! reset, set advantages) and the lookups the estimators, the summary and the bindings share
//! (fields by name, valid tokens).

use super::column::{grow, Column, DType};
use super::input::{extend_input, AddBatch, AddPlan, Held, Resolved, TokenInput};
use super::schema::Level;
use crate::error::{CoreError, Result};
use crate::parallel::for_each_item;

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

    /// One value per response token, or one per sequence.
    pub fn level(&self) -> Level {
        match self {
            Advantages::Token(_) => Level::Token,
            Advantages::Sequence(_) => Level::Sequence,
        }
    }

    /// Wrap `column` as advantages of `level`.
    pub fn new(level: Level, column: Column) -> Advantages {
        match level {
            Level::Token => Advantages::Token(column),
            Level::Sequence => Advantages::Sequence(column),
        }
    }
}

/// Results of an advantage estimator, valid until the next add / clear.
#[derive(Debug, Clone)]
pub struct Computed {
    pub estimator: String,
    pub advantages: Advantages,
    pub returns: Option<Column>,
}

/// The ragged rollout buffer. See the module documentation for the layout.
#[derive(Debug, Clone)]
pub struct RolloutBuffer {
    pub(super) float_dtype: DType,
    pub(super) prompt_offsets: Vec<i64>,
    pub(super) response_offsets: Vec<i64>,
    pub(super) prompt_ids: Option<Column>,
    pub(super) token_fields: Vec<(String, Column)>,
    pub(super) seq_fields: Vec<(String, Column)>,
    pub(super) computed: Option<Computed>,
    /// Token-sized float storage of earlier advantages / returns, kept by `clear` and reused
    /// by the next estimator (fewer fresh pages to fault in every step). At most
    /// [`MAX_SPARE`], so a cleared buffer holds no more than it held before.
    pub(super) spare: Vec<Column>,
    pub(super) version: u64,
}

/// Float columns kept for reuse by the advantage estimators: the advantages and returns of
/// the last estimator (what the buffer held before `clear`).
const MAX_SPARE: usize = 2;

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
    /// more tokens in every column (avoids regrowth when the final size is known). A size that
    /// cannot be allocated is [`CoreError::Memory`] naming the argument; the values held never
    /// change (columns reserved before the failure keep their extra capacity).
    pub fn reserve(
        &mut self,
        sequences: usize,
        prompt_tokens: usize,
        response_tokens: usize,
    ) -> Result<()> {
        let seqs = format!("the offsets of sequences={sequences} more sequences");
        grow(&mut self.prompt_offsets, sequences, &seqs)?;
        grow(&mut self.response_offsets, sequences, &seqs)?;
        if let Some(p) = &mut self.prompt_ids {
            p.reserve(
                prompt_tokens,
                &format!("prompt_tokens={prompt_tokens} more prompt_ids"),
            )?;
        }
        for (name, c) in &mut self.token_fields {
            c.reserve(
                response_tokens,
                &format!("response_tokens={response_tokens} more values of {name}"),
            )?;
        }
        for (name, c) in &mut self.seq_fields {
            c.reserve(
                sequences,
                &format!("sequences={sequences} more values of {name}"),
            )?;
        }
        Ok(())
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
        // Contents kept: reused outputs are overwritten, not re-zeroed. Keep the largest ones.
        self.spare.push(col);
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
        let held = Held {
            prompt_ids: self.prompt_ids.as_ref(),
            token_fields: &self.token_fields,
            seq_fields: &self.seq_fields,
            sequences: self.len(),
            prompt_tokens: self.num_prompt_tokens(),
            response_tokens: self.num_response_tokens(),
        };
        let plan = held.plan_add(batch)?;
        self.append(batch, plan)
    }

    /// Room for everything `batch` adds, in every column (fallible; the values held do not
    /// change). Allocating here, on the calling thread, also keeps the parallel copy below from
    /// growing columns on rayon's workers, whose allocations would come from per-thread malloc
    /// arenas and fragment the heap.
    fn reserve_for(&mut self, plan: &AddPlan) -> Result<usize> {
        let total = |res: &Resolved| res.segments.iter().map(|&(_, l)| l).sum::<usize>();
        grow(&mut self.prompt_offsets, plan.n, "the offsets of an add")?;
        grow(&mut self.response_offsets, plan.n, "the offsets of an add")?;
        let mut work = 0usize;
        if let Some(col) = &mut self.prompt_ids {
            let add = total(&plan.prompt);
            col.reserve(add, "the prompt_ids of an add")?;
            work += add;
        }
        for ((name, col), res) in self.token_fields.iter_mut().zip(&plan.token_resolved) {
            let add = total(res);
            col.reserve(add, &format!("the {name} of an add"))?;
            work += add;
        }
        for (name, col) in &mut self.seq_fields {
            col.reserve(plan.n, &format!("the {name} of an add"))?;
        }
        Ok(work)
    }

    /// Write a batch that [`Held::plan_add`] accepted. Memory is reserved first; when it cannot
    /// be had, the buffer is left as it was (a first add forgets the schema it was fixing).
    fn append(&mut self, batch: &AddBatch<'_>, plan: AddPlan) -> Result<()> {
        let had_schema = self.prompt_ids.is_some();
        if !had_schema {
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
        let work = match self.reserve_for(&plan) {
            Ok(work) => work,
            Err(e) => {
                if !had_schema {
                    self.prompt_ids = None;
                    self.token_fields = Vec::new();
                    self.seq_fields = Vec::new();
                }
                return Err(e);
            }
        };
        // Every column has room now: nothing below allocates.
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
        let level = advantages.level();
        let want = match level {
            Level::Token => self.num_response_tokens(),
            Level::Sequence => self.len(),
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
                "{} advantages: expected {want} values, got {}",
                level.describe(),
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

    /// The stored array named `name`, looked up in this order: `prompt_ids`, a per-token
    /// field, a per-sequence field, the computed `advantages`, the computed `returns`.
    pub fn column(&self, name: &str) -> Result<&Column> {
        if name == "prompt_ids" {
            if let Some(c) = &self.prompt_ids {
                return Ok(c);
            }
        }
        if let Some(c) = self.token_field(name).or_else(|| self.seq_field(name)) {
            return Ok(c);
        }
        if let Some(c) = &self.computed {
            match name {
                "advantages" => return Ok(c.advantages.column()),
                "returns" if c.returns.is_some() => {
                    return Ok(c.returns.as_ref().expect("checked"))
                }
                _ => {}
            }
        }
        let held: Vec<&str> = std::iter::once("prompt_ids")
            .chain(self.token_fields.iter().map(|(n, _)| n.as_str()))
            .chain(self.seq_fields.iter().map(|(n, _)| n.as_str()))
            .collect();
        Err(CoreError::field(format!(
            "no field {name:?} in the buffer; it holds {held:?}"
        )))
    }

    /// The response tokens of sequence `i` (a range into every per-token field).
    #[inline]
    pub fn response_range(&self, i: usize) -> std::ops::Range<usize> {
        self.response_offsets[i] as usize..self.response_offsets[i + 1] as usize
    }
}
