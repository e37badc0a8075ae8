//! When the core runs on several threads, and how work is split so that it never matters.
//!
//! One process-wide switch ([`set_parallel`]) and a fork flag ([`mark_forked_child`]) decide
//! whether rayon may be used at all; [`for_each_item`] runs independent items (rows, groups,
//! fixed-size blocks) in parallel only when the work is large enough to pay for the fork/join.
//! Items are never split inside a reduction, so results are bit-identical for any number of
//! threads (and with parallelism off).

use std::sync::atomic::{AtomicBool, Ordering};

use rayon::prelude::*;

use crate::layout::Layout;

/// Below this many slots a kernel runs serially on the calling thread: rayon's fork/join costs
/// a few microseconds, more than small inputs take in total.
pub const PAR_MIN_SLOTS: usize = 1 << 15;

/// Target number of slots per parallel task.
const PAR_GRAIN: usize = 1 << 14;

static PARALLEL: AtomicBool = AtomicBool::new(true);
static FORKED: AtomicBool = AtomicBool::new(false);

/// Enable or disable rayon parallelism process-wide (results are the same either way).
pub fn set_parallel(enabled: bool) {
    PARALLEL.store(enabled, Ordering::SeqCst);
}

/// Mark this process as a forked child: rayon stays off for good, since the parent's worker
/// threads do not exist here and the global pool would hang. Called by the Python glue's
/// `os.register_at_fork(after_in_child=...)` hook.
pub fn mark_forked_child() {
    FORKED.store(true, Ordering::SeqCst);
}

/// Whether kernels may use rayon.
pub fn parallel_enabled() -> bool {
    PARALLEL.load(Ordering::Relaxed) && !FORKED.load(Ordering::Relaxed)
}

/// Whether `work` slots spread over `items` independent items are worth running in parallel.
#[inline]
pub(crate) fn go_parallel(work: usize, items: usize) -> bool {
    items >= 2 && work >= PAR_MIN_SLOTS && parallel_enabled()
}

/// Run `f(i, item_i)` for every item, in parallel when `work` (slots touched) is large enough.
/// Items are independent (one per row, group or fixed-size chunk), so the result never depends
/// on the number of threads.
pub(crate) fn for_each_item<X, Fun>(work: usize, items: Vec<X>, f: Fun)
where
    X: Send,
    Fun: Fn(usize, X) + Sync + Send,
{
    let n = items.len();
    if go_parallel(work, n) {
        let min_len = (PAR_GRAIN * n / work.max(1)).max(1);
        items
            .into_par_iter()
            .enumerate()
            .with_min_len(min_len)
            .for_each(|(i, x)| f(i, x));
    } else {
        items.into_iter().enumerate().for_each(|(i, x)| f(i, x));
    }
}

/// Split a flat output buffer into one mutable slice per row.
pub(crate) fn split_rows<'s, T>(layout: &Layout, out: &'s mut [T]) -> Vec<&'s mut [T]> {
    debug_assert_eq!(out.len(), layout.n_slots());
    match layout {
        Layout::Padded { rows, cols } => {
            if *cols == 0 {
                (0..*rows).map(|_| <&mut [T]>::default()).collect()
            } else {
                out.chunks_mut(*cols).collect()
            }
        }
        Layout::Ragged { offsets } => {
            let mut rest = out;
            let mut rows = Vec::with_capacity(offsets.len() - 1);
            for w in offsets.windows(2) {
                let (head, tail) = rest.split_at_mut((w[1] - w[0]) as usize);
                rows.push(head);
                rest = tail;
            }
            rows
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_rows_follows_the_layout() {
        let l = Layout::ragged(&[0, 2, 2, 5], 5).unwrap();
        let mut buf = [0u8; 5];
        let rows = split_rows(&l, &mut buf);
        assert_eq!(
            rows.iter().map(|r| r.len()).collect::<Vec<_>>(),
            vec![2, 0, 3]
        );
        let p = Layout::padded(3, 0);
        let mut empty: [u8; 0] = [];
        assert_eq!(split_rows(&p, &mut empty).len(), 3);
    }
}
