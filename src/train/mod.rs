//! Training inside the engine: the squeeze, relabel and validate phases of SRe2L / CDA
//! (algorithm.md sections 1, 3 and 4) on the CPU training ops (`crate::ops::{conv_train, batchnorm,
//! linear_grad, sgd, adamw, kd_loss}`).
//!
//! Map: `model` (trainable ResNet, torchvision names) -> `net` (train/eval forward, backward to every
//! parameter) -> `optim` (SGD / AdamW over the model with weight decay on ndim > 1 tensors) and
//! `schedule` (cosine with warm-up).

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
