//! CPU compute helpers that the ops' CPU halves share, not ops themselves: the GEMMs (`gemm`: the
//! `gemm` crate's blocked SGEMM and the register-tile microkernels the convolutions drive) and the
//! splitting of batched work over the threads of the current rayon pool (`par`).

pub mod gemm;
pub mod par;
