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

/// Which grow-only scratch buffer of the current thread to use: an op keeps `Shared` across its
/// parallel loops (and hands parts of it to tasks), while each task uses `Task` for itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scratch {
    Shared,
    Task,
    /// Transformed or packed weights, kept while `Shared` is in use.
    Weights,
}

thread_local! {
    static SHARED: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    static TASK: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    static WEIGHTS: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs `f` on `len` floats of this thread's scratch (64-byte aligned, contents unspecified). The
/// buffer only grows, so steady-state calls do not allocate; if it is already in use on this thread
/// (an op started while another waits on the same pool), a temporary buffer is used instead.
pub fn with_scratch<R>(which: Scratch, len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    const ALIGN: usize = 16; // floats = 64 bytes
    let run = |v: &mut Vec<f32>| {
        if v.len() < len + ALIGN {
            v.resize(len + ALIGN, 0.0);
        }
        let off = v.as_ptr().align_offset(64).min(ALIGN);
        f(&mut v[off..off + len])
    };
    let cell = match which {
        Scratch::Shared => &SHARED,
        Scratch::Task => &TASK,
        Scratch::Weights => &WEIGHTS,
    };
    cell.with(|c| match c.try_borrow_mut() {
        Ok(mut v) => run(&mut v),
        Err(_) => run(&mut Vec::new()),
    })
}
