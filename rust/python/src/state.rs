//! The checkpoint dicts of the core's stateful objects, key by key: [`BufferParts`],
//! [`SamplerState`], [`RunningMoments`] and [`RefillProgress`] ⇄ `dict`. Reading a dict checks
//! every key's presence and type (a `StateError` naming the key); the core then checks the
//! values' invariants (`RolloutBuffer::from_parts`, `Sampler::restore`,
//! `RunningMoments::from_parts`, `GroupRefill::restore`).
//!
//! Buffer (`_RolloutBuffer.state_parts()`): `float_dtype` (str), `prompt_offsets` and
//! `response_offsets` (int64 arrays), `prompt_ids` (array or None), `token_fields` and
//! `seq_fields` (lists of `(name, array)`), `computed` (None or a dict of `estimator`,
//! `level` ("token" / "sequence"), `advantages`, `returns` (array or None)).
//!
//! Sampler (`_Sampler.state_dict()`): `kind` ("minibatches" with `batch_size`, `drop_last`;
//! "micro_batches" with `token_budget`, `packed`, `pad_to_multiple_of`, `bucket`), `epochs`,
//! `seed`, `shuffle`, `num_sequences`, `fingerprint`, `epoch`, `step`.
//!
//! Running moments: `count`, `mean`, `m2`, `ddof`.
//!
//! Refill (`_GroupRefill.state_dict()`): `rounds`, `groups_dropped` (ints), `keep` (list of
//! bools) and `group_ids` (list of ints), one entry per row of the rounds so far.

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use rlhf_core::buffer::{Advantages, BufferParts, Column, Computed, DType, Level, RefillProgress};
use rlhf_core::kernels::running::RunningMoments;
use rlhf_core::plan::{Budget, PlanKind, SamplerConfig, SamplerState};
use rlhf_core::CoreError;

use crate::arrays::any_array;
use crate::convert::{column_to_numpy, vec_to_numpy};
use crate::errors::{to_py, IntoPyResult};

fn state_err(msg: String) -> PyErr {
    to_py(CoreError::state(msg))
}

/// A 1-D numpy array (any buffer dtype) copied into a column.
pub fn column_from(obj: &Bound<'_, PyAny>, name: &str) -> PyResult<Column> {
    let a = any_array(obj, name)?;
    a.ndim_is(name, 1, "1-D")?;
    Ok(Column::from_slice(a.slice(name)?))
}

// ---------------------------------------------------------------------------------------------
// Buffer
// ---------------------------------------------------------------------------------------------

/// Every piece of a buffer (a copy made by `RolloutBuffer::to_parts`) as a dict of numpy
/// arrays, moved without a further copy (the dict `BufferParts` is read back from).
pub fn parts_to_dict(py: Python<'_>, parts: BufferParts) -> PyResult<Bound<'_, PyDict>> {
    let d = PyDict::new(py);
    let array = |c: Column| {
        let n = c.len();
        column_to_numpy(py, c, &[n])
    };
    let offsets = |v: Vec<i64>| {
        let n = v.len();
        vec_to_numpy(py, v, &[n])
    };
    d.set_item("float_dtype", parts.float_dtype.name())?;
    d.set_item("prompt_offsets", offsets(parts.prompt_offsets)?)?;
    d.set_item("response_offsets", offsets(parts.response_offsets)?)?;
    d.set_item("prompt_ids", parts.prompt_ids.map(array).transpose()?)?;
    let named = |fields: Vec<(String, Column)>| -> PyResult<Bound<'_, PyList>> {
        let items = fields
            .into_iter()
            .map(|(n, c)| Ok((n, array(c)?)))
            .collect::<PyResult<Vec<_>>>()?;
        PyList::new(py, items)
    };
    d.set_item("token_fields", named(parts.token_fields)?)?;
    d.set_item("seq_fields", named(parts.seq_fields)?)?;
    match parts.computed {
        None => d.set_item("computed", py.None())?,
        Some(c) => {
            let cd = PyDict::new(py);
            cd.set_item("estimator", &c.estimator)?;
            cd.set_item("level", c.advantages.level().name())?;
            let Computed {
                advantages,
                returns,
                ..
            } = c;
            let adv = match advantages {
                Advantages::Token(col) | Advantages::Sequence(col) => col,
            };
            cd.set_item("advantages", array(adv)?)?;
            cd.set_item("returns", returns.map(array).transpose()?)?;
            d.set_item("computed", cd)?;
        }
    }
    Ok(d)
}

/// The pieces of a buffer from `parts_to_dict` output (checked by `RolloutBuffer::from_parts`).
pub fn parts_from_dict(parts: &Bound<'_, PyDict>) -> PyResult<BufferParts> {
    let get = |k: &str| -> PyResult<Bound<'_, PyAny>> {
        parts
            .get_item(k)?
            .ok_or_else(|| state_err(format!("buffer state lacks the key {k:?}")))
    };
    let float_dtype = DType::parse(&get("float_dtype")?.extract::<String>()?)
        .map_err(|e| state_err(e.message().into()))?;
    let offsets = |k: &str| -> PyResult<Vec<i64>> {
        match column_from(&get(k)?, k)? {
            Column::I64(v) => Ok(v),
            other => Err(state_err(format!(
                "{k} must be int64, got {}",
                other.dtype().name()
            ))),
        }
    };
    let optional = |obj: Bound<'_, PyAny>, name: &str| -> PyResult<Option<Column>> {
        if obj.is_none() {
            Ok(None)
        } else {
            column_from(&obj, name).map(Some)
        }
    };
    let named = |k: &str| -> PyResult<Vec<(String, Column)>> {
        let items: Vec<(String, Bound<'_, PyAny>)> = get(k)?.extract()?;
        items
            .into_iter()
            .map(|(n, a)| Ok((n.clone(), column_from(&a, &n)?)))
            .collect()
    };
    let prompt_offsets = offsets("prompt_offsets")?;
    let response_offsets = offsets("response_offsets")?;
    let prompt_ids = optional(get("prompt_ids")?, "prompt_ids")?;
    let token_fields = named("token_fields")?;
    let seq_fields = named("seq_fields")?;
    let c = get("computed")?;
    let computed = if c.is_none() {
        None
    } else {
        let c = c
            .cast::<PyDict>()
            .map_err(|_| state_err("computed must be a dict or None".into()))?;
        let cget = |k: &str| -> PyResult<Bound<'_, PyAny>> {
            c.get_item(k)?
                .ok_or_else(|| state_err(format!("computed state lacks the key {k:?}")))
        };
        let advantages = column_from(&cget("advantages")?, "advantages")?;
        let level: Level = cget("level")?
            .extract::<String>()?
            .parse()
            .map_err(|e: CoreError| state_err(format!("computed {}", e.message())))?;
        Some(Computed {
            advantages: Advantages::new(level, advantages),
            returns: optional(cget("returns")?, "returns")?,
            estimator: cget("estimator")?.extract()?,
        })
    };
    Ok(BufferParts {
        float_dtype,
        prompt_offsets,
        response_offsets,
        prompt_ids,
        token_fields,
        seq_fields,
        computed,
    })
}

// ---------------------------------------------------------------------------------------------
// Sampler
// ---------------------------------------------------------------------------------------------

/// The budget of a micro-batch plan from its three Python arguments.
pub fn budget_of(token_budget: u64, packed: bool, pad_to_multiple_of: u64) -> Budget {
    if packed {
        Budget::Packed {
            tokens: token_budget,
        }
    } else {
        Budget::Padded {
            tokens: token_budget,
            pad_to_multiple_of,
        }
    }
}

pub fn sampler_to_dict<'py>(py: Python<'py>, s: &SamplerState) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    match s.config.kind {
        PlanKind::Minibatches {
            batch_size,
            drop_last,
        } => {
            d.set_item("kind", "minibatches")?;
            d.set_item("batch_size", batch_size)?;
            d.set_item("drop_last", drop_last)?;
        }
        PlanKind::MicroBatches { budget, bucket } => {
            d.set_item("kind", "micro_batches")?;
            d.set_item("token_budget", budget.tokens())?;
            let (packed, multiple) = match budget {
                Budget::Packed { .. } => (true, 1),
                Budget::Padded {
                    pad_to_multiple_of, ..
                } => (false, pad_to_multiple_of),
            };
            d.set_item("packed", packed)?;
            d.set_item("pad_to_multiple_of", multiple)?;
            d.set_item("bucket", bucket)?;
        }
    }
    d.set_item("epochs", s.config.epochs)?;
    d.set_item("seed", s.config.seed)?;
    d.set_item("shuffle", s.config.shuffle)?;
    d.set_item("num_sequences", s.num_sequences)?;
    d.set_item("fingerprint", s.fingerprint)?;
    d.set_item("epoch", s.epoch)?;
    d.set_item("step", s.step)?;
    Ok(d)
}

/// `state[k]` as a `T`; a `StateError` naming `what` state and the key when it is missing or
/// of another type.
fn key<'py, T: for<'a> FromPyObject<'a, 'py>>(
    state: &Bound<'py, PyAny>,
    what: &str,
    k: &str,
) -> PyResult<T> {
    let v = state
        .get_item(k)
        .map_err(|_| state_err(format!("{what} state lacks the key {k:?}")))?;
    v.extract::<T>()
        .map_err(|_| state_err(format!("{what} state key {k:?} has the wrong type")))
}

pub fn sampler_from_dict(d: &Bound<'_, PyDict>) -> PyResult<SamplerState> {
    fn get<'py, T: for<'a> FromPyObject<'a, 'py>>(d: &Bound<'py, PyDict>, k: &str) -> PyResult<T> {
        key(d.as_any(), "sampler", k)
    }
    let kind: String = get(d, "kind")?;
    let kind = match kind.as_str() {
        "minibatches" => PlanKind::Minibatches {
            batch_size: get(d, "batch_size")?,
            drop_last: get(d, "drop_last")?,
        },
        "micro_batches" => PlanKind::MicroBatches {
            budget: budget_of(
                get(d, "token_budget")?,
                get(d, "packed")?,
                get(d, "pad_to_multiple_of")?,
            ),
            bucket: get(d, "bucket")?,
        },
        other => {
            return Err(state_err(format!(
                "sampler kind must be 'minibatches' or 'micro_batches', got {other:?}"
            )))
        }
    };
    Ok(SamplerState {
        config: SamplerConfig {
            kind,
            epochs: get(d, "epochs")?,
            seed: get(d, "seed")?,
            shuffle: get(d, "shuffle")?,
        },
        num_sequences: get(d, "num_sequences")?,
        fingerprint: get(d, "fingerprint")?,
        epoch: get(d, "epoch")?,
        step: get(d, "step")?,
    })
}

// ---------------------------------------------------------------------------------------------
// Running moments
// ---------------------------------------------------------------------------------------------

/// `{"count": int, "mean": float, "m2": float, "ddof": int}`.
pub fn running_to_dict<'py>(py: Python<'py>, r: &RunningMoments) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("count", r.count())?;
    d.set_item("mean", r.mean())?;
    d.set_item("m2", r.moments.m2)?;
    d.set_item("ddof", r.ddof)?;
    Ok(d)
}

pub fn running_from_dict(state: &Bound<'_, PyAny>) -> PyResult<RunningMoments> {
    let get = |k: &str| -> PyResult<Bound<'_, PyAny>> {
        state.get_item(k).map_err(|_| {
            state_err(format!(
                "RunningMoments state is missing '{k}'; expected keys count, mean, m2, ddof"
            ))
        })
    };
    let bad = |k: &str, e: PyErr| state_err(format!("RunningMoments state['{k}'] is invalid: {e}"));
    let count: u64 = get("count")?.extract().map_err(|e| bad("count", e))?;
    let mean: f64 = get("mean")?.extract().map_err(|e| bad("mean", e))?;
    let m2: f64 = get("m2")?.extract().map_err(|e| bad("m2", e))?;
    let ddof: i64 = get("ddof")?.extract().map_err(|e| bad("ddof", e))?;
    RunningMoments::from_parts(count, mean, m2, ddof).py()
}

// ---------------------------------------------------------------------------------------------
// Refill progress
// ---------------------------------------------------------------------------------------------

/// `{"rounds": int, "groups_dropped": int, "keep": [bool], "group_ids": [int]}`.
pub fn refill_to_dict<'py>(py: Python<'py>, p: &RefillProgress) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("rounds", p.rounds)?;
    d.set_item("groups_dropped", p.groups_dropped)?;
    d.set_item("keep", PyList::new(py, &p.keep)?)?;
    d.set_item("group_ids", PyList::new(py, &p.group_ids)?)?;
    Ok(d)
}

/// The progress of `refill_to_dict` output (checked by `GroupRefill::restore`).
pub fn refill_from_dict(state: &Bound<'_, PyAny>) -> PyResult<RefillProgress> {
    let what = "refill";
    Ok(RefillProgress {
        rounds: key(state, what, "rounds")?,
        groups_dropped: key(state, what, "groups_dropped")?,
        keep: key(state, what, "keep")?,
        group_ids: key(state, what, "group_ids")?,
    })
}
