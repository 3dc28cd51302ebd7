//! Training inside the engine: the squeeze, relabel and validate phases of SRe2L / CDA
//! (algorithm.md sections 1, 3 and 4) on the training ops (`crate::ops::{conv, batchnorm,
//! linear, sgd, adamw, kd_loss}`, each with a CPU half and a CUDA kernel).
//!
//! Map: `model` (trainable ResNet, torchvision names) -> `net` (the CPU executor: train/eval forward,
//! backward to every parameter) or `cuda_net` (the same plan on the CUDA backend) -> `optim` (SGD /
//! AdamW over the model with weight decay on ndim > 1 tensors) and `schedule` (cosine with warm-up);
//! `learner` is what the loops (`squeeze`, `distill`) drive on either device.

pub mod cli;
pub mod cuda_net;
pub mod distill;
pub mod eval;
pub mod labels;
pub mod learner;
pub mod model;
pub mod net;
pub mod optim;
pub mod progress;
pub mod schedule;
pub mod squeeze;
