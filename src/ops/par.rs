//! Splitting batched CPU work over the threads of the current rayon pool.

use std::ops::Range;

/// Contiguous image ranges, one per task, plus how many threads each task's GEMM may use itself
/// (more than one only when there are fewer images than threads).
pub fn image_groups(n: usize) -> (Vec<Range<usize>>, usize) {
    let threads = rayon::current_num_threads().max(1);
    let groups = threads.min(n).max(1);
    let per = n.div_ceil(groups);
    let ranges = (0..groups).map(|g| g * per..((g + 1) * per).min(n)).filter(|r| !r.is_empty()).collect();
    (ranges, (threads / groups).max(1))
}

/// A raw pointer that tasks writing disjoint parts of one buffer may share.
#[derive(Clone, Copy)]
pub struct SyncPtr<T>(pub *mut T);
// SAFETY: users only form disjoint slices from it, one task each.
unsafe impl<T> Send for SyncPtr<T> {}
unsafe impl<T> Sync for SyncPtr<T> {}

impl<T> SyncPtr<T> {
    /// # Safety
    /// `offset..offset + len` must lie in the buffer and not be accessed by anyone else meanwhile.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn slice(&self, offset: usize, len: usize) -> &mut [T] {
        std::slice::from_raw_parts_mut(self.0.add(offset), len)
    }
}
