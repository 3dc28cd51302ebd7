//! sgd: torch.optim.SGD (momentum, dampening 0, optional Nesterov, L2 weight decay) on one tensor.
//!
//! PyTorch's update, with the momentum buffer created on the first step:
//!   g = grad + weight_decay * param
//!   buf = g                          (first step)
//!   buf = momentum * buf + g         (later steps)
//!   d = g + momentum * buf  (nesterov)  or  d = buf
//!   param = param - lr * d
//! Plain SGD (momentum 0) skips the buffer. The caller gives tensors with ndim <= 1 (BN, biases)
//! weight_decay 0 when the recipe says so.
//!
//! CPU half: [`cpu`].
//! CUDA half: kernels/sgd.cu, launched by `CudaBackend::sgd_step` (src/backend/cuda/train.rs);
//! bit-identical to the CPU half (tests/cuda_common/train.rs).

pub mod cpu;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SgdConfig {
    pub lr: f32,
    pub momentum: f32,
    pub weight_decay: f32,
    pub nesterov: bool,
}

// ---- The CUDA kernels' argument structs (device pointers as 64-bit addresses, 0 when absent). ----

/// Mirrors `SgdArgs` in kernels/sgd.cu. `buf` is 0 when momentum is 0.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SgdArgs {
    pub param: u64,
    pub grad: u64,
    pub buf: u64,
    pub len: i64,
    pub lr: f32,
    pub momentum: f32,
    pub weight_decay: f32,
    pub nesterov: i32,
    pub first: i32,
    pub reserved: i32,
}
crate::assert_kernel_layout!(SgdArgs, size 56, { param: 0, grad: 8, buf: 16, len: 24, lr: 32, momentum: 36, weight_decay: 40, nesterov: 44, first: 48, reserved: 52 });
