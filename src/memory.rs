//! Memory a command will need, checked before it allocates: sizes that come from options or files
//! (image size, batch, grid scale, IDX dimensions) are turned into a byte count with checked
//! arithmetic and compared with the memory the system has available, so a request that cannot fit
//! is refused with both numbers instead of aborting with "memory allocation failed" or being
//! OOM-killed without a word.

use crate::error::{Error, Result};

/// Bytes in one GiB, for messages.
const GIB: f64 = (1u64 << 30) as f64;

/// The memory the system can give this process now without swapping, in bytes: `MemAvailable` of
/// /proc/meminfo (Linux), lowered by an address-space limit (`ulimit -v`) when one is set. None
/// where neither is known; then only sizes that overflow are refused.
pub fn available_bytes() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok().and_then(|text| {
        let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        kib.checked_mul(1024)
    });
    // An address-space limit (ulimit -v, as test harnesses and batch schedulers set) caps what an
    // allocation can get whatever the free memory is; the virtual size already used counts against it.
    let limit = std::fs::read_to_string("/proc/self/limits").ok().and_then(|text| {
        let line = text.lines().find(|l| l.starts_with("Max address space"))?;
        let soft: u64 = line.split_whitespace().nth(3)?.parse().ok()?;
        let used_kib: u64 =
            std::fs::read_to_string("/proc/self/status").ok()?.lines().find(|l| l.starts_with("VmSize:"))?.split_whitespace().nth(1)?.parse().ok()?;
        Some(soft.saturating_sub(used_kib.saturating_mul(1024)))
    });
    match (meminfo, limit) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// `n` GiB with two decimals, for messages.
pub fn gib(bytes: u64) -> String {
    format!("{:.2} GiB", bytes as f64 / GIB)
}

/// Refuses `what` when it needs more than the memory available. `bytes` None means the size does
/// not even fit in a 64-bit count (an overflow while multiplying the requested dimensions).
///
/// Errors: [`Error::Option`] naming `what`, the bytes asked for and the bytes available.
pub fn ensure_fits(what: &str, bytes: Option<u64>) -> Result<()> {
    let Some(bytes) = bytes else {
        return Err(Error::Option(format!("{what} is too large: its size overflows a 64-bit byte count")));
    };
    // A Vec cannot hold more than isize::MAX bytes, whatever the machine.
    if bytes > isize::MAX as u64 {
        return Err(Error::Option(format!("{what} needs {} of memory, more than any buffer can hold", gib(bytes))));
    }
    match available_bytes() {
        Some(avail) if bytes > avail => Err(Error::Option(format!(
            "{what} needs about {} of memory; {} are available (MemAvailable in /proc/meminfo, or the address-space limit of ulimit -v when lower); use a smaller size",
            gib(bytes),
            gib(avail)
        ))),
        _ => Ok(()),
    }
}

/// Product of `dims` times `elem_bytes`, None on overflow.
pub fn bytes_of(dims: &[usize], elem_bytes: usize) -> Option<u64> {
    dims.iter().try_fold(elem_bytes as u64, |a, &d| a.checked_mul(d as u64))
}

/// A vector of `len` copies of `value`, allocated fallibly: a length from a file or an option that
/// the allocator cannot serve is an error naming `what`, not an abort.
pub fn try_filled<T: Clone>(len: usize, value: T, what: &str) -> Result<Vec<T>> {
    let mut v = Vec::new();
    v.try_reserve_exact(len).map_err(|_| {
        Error::Option(format!(
            "{what} needs {} of memory, which could not be allocated ({} available)",
            gib((len as u64).saturating_mul(std::mem::size_of::<T>() as u64)),
            available_bytes().map_or("unknown".into(), gib)
        ))
    })?;
    v.resize(len, value);
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overflowing_and_huge_sizes_are_refused() {
        assert!(ensure_fits("x", None).unwrap_err().to_string().contains("overflows"));
        assert!(ensure_fits("x", Some(u64::MAX / 2)).is_err());
        assert!(ensure_fits("x", Some(1024)).is_ok());
        assert_eq!(bytes_of(&[usize::MAX, 2], 4), None);
        assert_eq!(bytes_of(&[3, 5], 4), Some(60));
        assert!(try_filled(usize::MAX / 8, 0f32, "x").is_err());
    }
}
