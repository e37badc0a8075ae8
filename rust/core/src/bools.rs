//! Bytes that claim to be booleans. A numpy bool array can hold bytes other than 0 and 1 (a
//! bool view of uint8 data, `numpy.empty`); read as Rust `bool`s those would be undefined
//! behaviour, and read as bytes they would count as `true` in one kernel and be refused in
//! another. [`check_bool_bytes`] is the one check the bindings run on every bool array before
//! it reaches the core.

use crate::error::{CoreError, Result};
use crate::parallel::for_each_item;
use crate::simd::vectorized;

/// Bytes per parallel chunk of [`check_bool_bytes`].
const CHUNK: usize = 1 << 18;

/// The OR of every byte of `bytes` (vectorised).
#[inline]
fn or_bytes(bytes: &[u8]) -> u8 {
    vectorized(
        #[inline(always)]
        || bytes.iter().fold(0u8, |acc, &b| acc | b),
    )
}

/// Check that every byte of `bytes` (the data of a bool array named `name`) is 0 or 1: a
/// `DtypeError` naming the array and the first other value otherwise. One vectorised pass,
/// chunks in parallel when large.
pub fn check_bool_bytes(bytes: &[u8], name: &str) -> Result<()> {
    let chunks: Vec<&[u8]> = bytes.chunks(CHUNK).collect();
    let mut ors = vec![0u8; chunks.len()];
    let items: Vec<_> = chunks.into_iter().zip(ors.iter_mut()).collect();
    for_each_item(bytes.len(), items, |_, (c, out)| *out = or_bytes(c));
    if ors.iter().all(|&o| o <= 1) {
        return Ok(());
    }
    let b = bytes.iter().copied().find(|&b| b > 1).unwrap_or(0);
    Err(CoreError::dtype(format!(
        "{name} is a bool array holding the byte value {b} (only 0 and 1 are booleans); pass \
         numpy.asarray(x) != 0 instead of a bool view of other data"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_zero_and_one_pass() {
        assert!(check_bool_bytes(&[], "m").is_ok());
        assert!(check_bool_bytes(&[0, 1, 1, 0], "m").is_ok());
        let mut big = vec![1u8; 3 * CHUNK + 5];
        assert!(check_bool_bytes(&big, "m").is_ok());
        big[2 * CHUNK + 3] = 2;
        let e = check_bool_bytes(&big, "loss_mask").unwrap_err();
        assert!(matches!(e, CoreError::Dtype(_)), "{e}");
        assert!(
            e.message()
                .starts_with("loss_mask is a bool array holding the byte value 2"),
            "{e}"
        );
    }
}
