//! conv_train: the convolution passes training needs, without the recover epilogues.
//!
//! Layouts as in [`crate::ops::conv2d`]: x N C H W, w K C R S, y N K P Q (row-major, PyTorch order).
//! - fprop: y = conv(x, w) (raw output, no bias: torchvision ResNet convs have none).
//! - dgrad: dx (=|+=) conv_transpose(dy, w); GEMM_M = C*R*S, GEMM_N = P*Q, GEMM_K = K, then col2im.
//! - wgrad: dw = sum_n dy_n * im2col(x_n)^T; GEMM_M = K, GEMM_N = C*R*S, GEMM_K = P*Q per image,
//!   accumulated over the images of a task, then the per-task partials are summed.
//!
//! PyTorch equivalent: `torch.nn.grad.conv2d_weight(x, w.shape, dy, stride, padding)` for wgrad and
//! `torch.nn.grad.conv2d_input` for dgrad. Accumulation is fp32 inside the GEMM (as PyTorch's CPU
//! convolution), so results agree with PyTorch to fp32 summation-order rounding.
//!
//! CPU half: [`cpu`]: fprop and dgrad run on the recover convolution (`conv2d::cpu`, Winograd or
//! implicit GEMM) with plain epilogues; wgrad is im2col + the `gemm` crate; the im2col versions of
//! fprop and dgrad are kept as references.
//! CUDA half: the recover kernels run fprop and dgrad (kernels/conv2d.cu with plain epilogues);
//! wgrad is kernels/conv_train.cu (split-GEMM_K tiles, deterministic reduction), launched by
//! `CudaBackend::conv_wgrad` (src/backend/cuda/train.rs); checked in tests/cuda_common/train.rs.

pub mod cpu;
