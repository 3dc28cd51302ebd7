//! cda-engine: dataset distillation with CDA (curriculum data synthesis on SRe2L's recover) on a
//! native CPU backend and hand-written CUDA kernels, without a deep-learning framework.
//!
//! Map: `model` (ResNet from safetensors) -> `net` (executor over a `backend`) -> `ops` (one folder per
//! op, CPU halves; CUDA halves in kernels/*.cu) -> `recover` (the CDA loop).

pub mod backend;
pub mod bench;
pub mod cpu;
pub mod data;
pub mod default_teacher;
pub mod device;
pub mod error;
pub mod io;
pub mod kernels;
pub mod memory;
pub mod model;
pub mod net;
pub mod ops;
pub mod plot;
pub mod recover;
pub mod report;
pub mod schedule;
pub mod train;
pub mod weights;

pub use error::{Error, Result};
