//! linear: the fc head, y[N x J] = x[N x F] * W^T + b with W stored J x F (PyTorch), and its data
//! gradient dx = dy * W. Recover needs no weight gradient.
//!
//! CPU half: [`cpu`]. CUDA half: `kernels/linear.cu`.

pub mod cpu;
