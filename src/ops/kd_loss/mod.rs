//! kd_loss: the distillation and classification losses of training, each returning the mean loss and
//! writing the gradient with respect to the logits.
//!
//! - `kl_div`: SRe2L/CDA's knowledge-distillation loss (docs/algorithm.md section 4), PyTorch
//!   `KLDivLoss(reduction='batchmean')(log_softmax(s / T), softmax(t / T))` with no T^2 factor:
//!   loss = (1/N) sum_i sum_j p_ij (log p_ij - log q_ij),  p = softmax(t/T), q = softmax(s/T);
//!   dloss/ds_ij = (q_ij - p_ij) / (N T)
//!   (terms with p_ij = 0 contribute 0, as PyTorch's xlogy).
//! - `soft_cross_entropy`: `F.cross_entropy(s, target_probs)` with class-probability targets (rows
//!   summing to 1; CutMix/MixUp of hard labels): loss = -(1/N) sum_ij p_ij log q_ij, grad (q - p)/N.
//!   Hard labels are `crate::ops::softmax_ce`.
//!
//! Softmaxes are max-subtracted and accumulated in f64.
//!
//! CPU half: [`cpu`].
//! CUDA half of `kl_div`: kernels/kd_loss.cu, launched by `CudaBackend::kd_kl_div`
//! (src/backend/cuda/train.rs); checked in tests/cuda_common/train.rs. The training loops compute
//! these n x classes losses on the host for every device (src/train/learner.rs).

pub mod cpu;

// ---- The CUDA kernels' argument structs (device pointers as 64-bit addresses, 0 when absent). ----

/// Mirrors `KdLossArgs` in kernels/kd_loss.cu.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct KdLossArgs {
    pub student: u64,
    pub teacher: u64,
    pub dstudent: u64,
    /// float64 workspace, one loss per row.
    pub row_loss: u64,
    pub losses: u64,
    pub temperature: f64,
    pub n: i32,
    pub classes: i32,
    pub slot: i32,
    pub reserved: i32,
}
crate::assert_kernel_layout!(KdLossArgs, size 64, { student: 0, teacher: 8, dstudent: 16, row_loss: 24, losses: 32, temperature: 40, n: 48, classes: 52, slot: 56, reserved: 60 });
