//! softmax_ce: mean cross-entropy of logits against integer targets and its gradient
//! dlogits = (softmax(logits) - onehot(target)) / N, as torch.nn.CrossEntropyLoss (reduction mean).
//!
//! CPU half: [`cpu`]. CUDA half: `kernels/softmax_ce.cu`.

pub mod cpu;
