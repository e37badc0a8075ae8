//! The one error type of the core. Every fallible function returns `Result<_, CoreError>`;
//! the Python glue maps each variant to one typed exception (see `rust/python/src/errors.rs`).
//!
//! Messages name the argument and say what was expected and what came, e.g.
//! `"values has 6 columns, rewards has 5"`. User input never reaches a panic.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CoreError {
    /// Lengths or shapes of arguments disagree (`ShapeError` in Python).
    Shape(String),
    /// An array has the wrong element type (`DtypeError` in Python).
    Dtype(String),
    /// `offsets` are not a valid ragged layout (`OffsetsError` in Python).
    Offsets(String),
    /// An option string or scalar outside its allowed set or range (`InvalidOptionError`).
    InvalidOption(String),
    /// A value that breaks a capacity limit: token budget, pack row size (`CapacityError`).
    Capacity(String),
    /// Unknown or conflicting named field in a buffer (`FieldError`).
    Field(String),
    /// Serialized state that cannot be restored (`StateError`).
    State(String),
    /// A size computed from the arguments that cannot be allocated or does not fit the
    /// address space (`AllocationError`, also `MemoryError`); see [`crate::memory`].
    Memory(String),
}

impl CoreError {
    pub fn shape(msg: impl Into<String>) -> Self {
        CoreError::Shape(msg.into())
    }
    pub fn dtype(msg: impl Into<String>) -> Self {
        CoreError::Dtype(msg.into())
    }
    pub fn offsets(msg: impl Into<String>) -> Self {
        CoreError::Offsets(msg.into())
    }
    pub fn option(msg: impl Into<String>) -> Self {
        CoreError::InvalidOption(msg.into())
    }
    pub fn capacity(msg: impl Into<String>) -> Self {
        CoreError::Capacity(msg.into())
    }
    pub fn field(msg: impl Into<String>) -> Self {
        CoreError::Field(msg.into())
    }
    pub fn state(msg: impl Into<String>) -> Self {
        CoreError::State(msg.into())
    }
    pub fn memory(msg: impl Into<String>) -> Self {
        CoreError::Memory(msg.into())
    }

    /// The message without the variant name.
    pub fn message(&self) -> &str {
        match self {
            CoreError::Shape(m)
            | CoreError::Dtype(m)
            | CoreError::Offsets(m)
            | CoreError::InvalidOption(m)
            | CoreError::Capacity(m)
            | CoreError::Field(m)
            | CoreError::State(m)
            | CoreError::Memory(m) => m,
        }
    }
}

impl fmt::Display for CoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message())
    }
}

impl std::error::Error for CoreError {}

pub type Result<T> = std::result::Result<T, CoreError>;
