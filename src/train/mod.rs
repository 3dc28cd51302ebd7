//! Training inside the engine: the squeeze, relabel and validate phases of SRe2L / CDA
//! (docs/algorithm.md sections 1, 3 and 4) on the training ops (`crate::ops::{conv, batchnorm,
//! linear, sgd, adamw, kd_loss}`, each with a CPU half and a CUDA kernel).
//!
//! Map: `trainable` (the trainable ResNet, torchvision names) -> `executor` (the one training executor over
//! any `TrainBackend`: train/eval forward, backward to every parameter, SGD / AdamW steps with weight
//! decay on ndim > 1 tensors) and `schedule` (cosine with warm-up); `learner` is what the loops
//! (`squeeze`, `distill`) drive on any device.

pub mod cli;
pub mod distill;
pub mod eval;
pub mod executor;
pub mod labels;
pub mod learner;
pub mod optim;
pub mod progress;
pub mod squeeze;
pub mod trainable;
