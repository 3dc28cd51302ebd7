//! Every op of recover and training, one folder each with all its passes (dfdx style): `mod.rs`
//! holds the math, the docs and the `#[repr(C)]` structs shared with its kernels (size and field
//! offsets asserted on both sides); `cpu.rs` (or `cpu/`) the CPU twin. The CUDA kernels of op `foo`
//! live in `kernels/foo*.cu` and are launched from `src/backend/cuda/` (`mod.rs` for the recover
//! ops, `train.rs` for the training ops). docs/architecture.md indexes every op's CPU code, kernel,
//! launcher, test and benchmark.

pub mod adam;
pub mod adamw;
pub mod batchnorm;
pub mod bn_match;
pub mod conv;
pub mod crop_resize;
pub mod image_prior;
pub mod kd_loss;
pub mod linear;
pub mod pool;
pub mod sgd;
pub mod softmax_ce;
