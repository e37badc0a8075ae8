//! Output buffers for the kernels, with a small cache of large blocks.
//!
//! Every kernel returns freshly allocated arrays. A large fresh allocation costs one page
//! fault per 4 KiB on first touch (glibc hands blocks of 32 MiB and more straight to `mmap`
//! and returns smaller ones to the OS when two are freed together); measured on the 2-core
//! CI machine that is about 2.5 µs per page, i.e. a 16 MiB output costs ~10 ms of faults,
//! five times an `np.copyto` of it. Training loops call the same kernels with the same sizes
//! every step, so blocks of at least [`MIN_CACHED`] bytes are kept when their numpy array is
//! freed and handed to the next output of a similar size, already faulted in.
//!
//! The cache holds at most `RLHF_CORE_OUTPUT_CACHE_MB` MiB (default 512; 0 disables it) and
//! drops the oldest blocks beyond that; `rlhf_core.ops.empty_cache()` frees it. Reused blocks
//! hold stale data: every kernel writes every slot of its outputs (tested).

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::marker::PhantomData;
use std::ptr::NonNull;
use std::sync::Mutex;

use numpy::ndarray::{ArrayD, ArrayViewD, IxDyn};
use numpy::{Element, PyArrayDyn};
use pyo3::prelude::*;
use rlhf_core::Float;

use crate::errors::{internal_error, to_py};

/// Outputs smaller than this use a plain `Vec` (the allocator serves them without faults).
pub const MIN_CACHED: usize = 1 << 20;
const ALIGN: usize = 64;

/// A heap block of `bytes` bytes, aligned to [`ALIGN`], zero-initialised when first made.
pub struct Block {
    ptr: NonNull<u8>,
    bytes: usize,
}

// SAFETY: a Block is a uniquely owned heap allocation; moving it across threads is fine.
unsafe impl Send for Block {}
// SAFETY: a shared `&Block` exposes only the pointer value and size, never the memory behind it.
unsafe impl Sync for Block {}

impl Block {
    fn layout(bytes: usize) -> Option<Layout> {
        Layout::from_size_align(bytes, ALIGN).ok()
    }

    fn new(bytes: usize) -> Option<Block> {
        let layout = Block::layout(bytes)?;
        // SAFETY: `bytes >= MIN_CACHED > 0`, so the layout has a non-zero size.
        let ptr = unsafe { alloc_zeroed(layout) };
        NonNull::new(ptr).map(|ptr| Block { ptr, bytes })
    }
}

impl Drop for Block {
    fn drop(&mut self) {
        if let Some(layout) = Block::layout(self.bytes) {
            // SAFETY: allocated in `Block::new` with exactly this layout, freed once.
            unsafe { dealloc(self.ptr.as_ptr(), layout) }
        }
    }
}

struct Cache {
    blocks: Vec<Block>,
    bytes: usize,
    cap: Option<usize>,
}

static CACHE: Mutex<Cache> = Mutex::new(Cache {
    blocks: Vec::new(),
    bytes: 0,
    cap: None,
});

fn with_cache<R>(f: impl FnOnce(&mut Cache) -> R) -> R {
    let mut guard = CACHE.lock().unwrap_or_else(|p| p.into_inner());
    if guard.cap.is_none() {
        let mb = std::env::var("RLHF_CORE_OUTPUT_CACHE_MB")
            .ok()
            .and_then(|v| v.trim().parse::<usize>().ok())
            .unwrap_or(512);
        guard.cap = Some(mb.saturating_mul(1 << 20));
    }
    f(&mut guard)
}

/// A cached block of at least `bytes` (and at most twice that), or a new one.
fn take(bytes: usize) -> Option<Block> {
    let cached = with_cache(|c| {
        let best = c
            .blocks
            .iter()
            .enumerate()
            .filter(|(_, b)| b.bytes >= bytes && b.bytes <= 2 * bytes)
            .min_by_key(|(_, b)| b.bytes)
            .map(|(i, _)| i)?;
        let b = c.blocks.remove(best);
        c.bytes -= b.bytes;
        Some(b)
    });
    cached.or_else(|| Block::new(bytes))
}

/// Keep `block` for reuse, dropping the oldest blocks beyond the cap.
fn give(block: Block) {
    let evicted = with_cache(|c| {
        c.bytes += block.bytes;
        c.blocks.push(block);
        let cap = c.cap.unwrap_or(0);
        let mut out = Vec::new();
        while c.bytes > cap && !c.blocks.is_empty() {
            let b = c.blocks.remove(0);
            c.bytes -= b.bytes;
            out.push(b);
        }
        out
    });
    drop(evicted); // freed outside the lock
}

/// Free every cached block; returns the number of bytes released.
pub fn clear() -> usize {
    let blocks = with_cache(|c| {
        c.bytes = 0;
        std::mem::take(&mut c.blocks)
    });
    blocks.iter().map(|b| b.bytes).sum()
}

/// The Python object that owns a cached block while a numpy array views it (the array's
/// `base`); dropping it returns the block to the cache.
#[pyclass(name = "_OutputBlock", module = "rlhf_core._core")]
pub struct OutputBlock {
    block: Option<Block>,
}

impl Drop for OutputBlock {
    fn drop(&mut self) {
        if let Some(b) = self.block.take() {
            give(b);
        }
    }
}

/// A kernel output of `n` elements of `F`.
pub enum OutBuf<F> {
    Small(Vec<F>),
    Cached {
        block: Block,
        len: usize,
        _t: PhantomData<F>,
    },
}

/// The core's allocation error (`AllocationError`, a `MemoryError`) for an output of `n` values.
fn too_big<F: Float>(n: usize) -> PyErr {
    to_py(rlhf_core::memory::too_big::<F>(
        &format!("an output of {} values", F::NAME),
        n,
    ))
}

impl<F: Float + Element> OutBuf<F> {
    /// Zero-filled (new) or stale-but-initialised (cached) storage for `n` values;
    /// `MemoryError` when it cannot be allocated (output sizes can come from user offsets).
    pub fn new(n: usize) -> PyResult<Self> {
        let bytes = n
            .checked_mul(std::mem::size_of::<F>())
            .ok_or_else(|| too_big::<F>(n))?;
        if bytes < MIN_CACHED {
            return Ok(OutBuf::Small(vec![F::ZERO; n]));
        }
        let block = take(bytes).ok_or_else(|| too_big::<F>(n))?;
        Ok(OutBuf::Cached {
            block,
            len: n,
            _t: PhantomData,
        })
    }

    pub fn as_mut_slice(&mut self) -> &mut [F] {
        match self {
            OutBuf::Small(v) => v,
            // SAFETY: the block holds at least `len * size_of::<F>()` initialised bytes
            // (zeroed when made, kernel outputs after), aligned to 64 >= align_of::<F>();
            // any bit pattern is a valid f32/f64; the slice borrows `self` mutably.
            OutBuf::Cached { block, len, .. } => unsafe {
                std::slice::from_raw_parts_mut(block.ptr.as_ptr() as *mut F, *len)
            },
        }
    }

    /// Hand the buffer to numpy as an array of `shape` (no copy).
    pub fn into_numpy<'py>(self, py: Python<'py>, shape: &[usize]) -> PyResult<Bound<'py, PyAny>> {
        match self {
            OutBuf::Small(v) => {
                let arr = ArrayD::from_shape_vec(IxDyn(shape), v)
                    .map_err(|e| internal_error(format!("output shape {shape:?}: {e}")))?;
                Ok(PyArrayDyn::from_owned_array(py, arr).into_any())
            }
            OutBuf::Cached { block, len, .. } => {
                if shape.iter().product::<usize>() != len {
                    return Err(internal_error(format!(
                        "output shape {shape:?} for {len} values"
                    )));
                }
                let ptr = block.ptr.as_ptr() as *const F;
                let owner = Bound::new(py, OutputBlock { block: Some(block) })?;
                // SAFETY: `ptr` points to `len` initialised, aligned values owned by `owner`,
                // which becomes the array's base object and frees (returns) the block only
                // when the array and every view of it are gone; the block never moves.
                unsafe {
                    let view = ArrayViewD::from_shape_ptr(IxDyn(shape), ptr);
                    Ok(PyArrayDyn::borrow_from_array(&view, owner.into_any()).into_any())
                }
            }
        }
    }
}
