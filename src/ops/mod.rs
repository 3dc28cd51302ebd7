//! Every op of the recover iteration, one folder each (dfdx style): `mod.rs` holds the math, the
//! parameter struct shared with the kernel and the docs; `cpu.rs` the CPU twin. The CUDA kernel of op
//! `foo` lives in `kernels/foo.cu` and is launched from `src/backend/cuda.rs`.

pub mod adam;
pub mod adamw;
pub mod batchnorm;
pub mod bn_match;
pub mod conv2d;
pub mod conv_train;
pub mod crop_resize;
pub mod image_prior;
pub mod kd_loss;
pub mod linear;
pub mod linear_grad;
pub mod pool;
pub mod sgd;
pub mod softmax_ce;
