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
