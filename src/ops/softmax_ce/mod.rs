//! softmax_ce: mean cross-entropy of logits against integer targets and its gradient
//! dlogits = (softmax(logits) - onehot(target)) / N, as torch.nn.CrossEntropyLoss (reduction mean).
//!
//! CPU half: [`cpu`]. CUDA half: `kernels/softmax_ce.cu`.

pub mod cpu;

// ---- The CUDA kernels' argument structs (device pointers as 64-bit addresses, 0 when absent). ----

/// Mirrors `SoftmaxCeArgs` in kernels/softmax_ce.cu.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SoftmaxCeArgs {
    pub logits: u64,
    pub targets: u64,
    pub dlogits: u64,
    /// float64 workspace, one loss per row.
    pub row_loss: u64,
    pub losses: u64,
    pub n: i32,
    pub classes: i32,
    pub slot: i32,
    pub reserved: i32,
}
crate::assert_kernel_layout!(SoftmaxCeArgs, size 56, { logits: 0, targets: 8, dlogits: 16, row_loss: 24, losses: 32, n: 40, classes: 44, slot: 48, reserved: 52 });
