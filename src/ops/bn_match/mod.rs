//! bn_match: the recover loss's BatchNorm-statistic term for one BN layer, and its gradient.
//!
//! Given the batch mean and biased variance of the BN input y over (N, H, W) and the layer's running
//! statistics rm, rv:
//!   r = ||rv - var||_2 + ||rm - mean||_2                         (plain L2 norms over channels)
//!   dr/dy[n,c,h,w] = gm_c / M + gv_c * 2 (y - mean_c) / M          M = N*H*W
//!   gm = (mean - rm) / ||mean - rm||,  gv = (var - rv) / ||var - rv||
//! With a layer weight `wt` (r_bn times the first-BN multiplier where it applies) the op writes
//! `coef` = [a (K), b (K), mean (K)] with a = wt*gm/M and b = 2*wt*gv/M, so the gradient is
//! `a + b * (y - mean)`; consumers apply it in the dgrad epilogue or in `bn_backward`. The unweighted
//! r goes to `losses[slot]`. A norm of exactly 0 contributes no gradient (PyTorch would give NaN).
//!
//! bn_backward: dy = scale * dz + a + b * (y - mean) for a BN whose output feeds a residual sum.
//!
//! CPU half: [`cpu`]. CUDA half: `kernels/bn_match.cu`.

pub mod cpu;

// ---- The CUDA kernels' argument structs (device pointers as 64-bit addresses, 0 when absent). ----

/// Mirrors `BnMatchArgs` in kernels/bn_match.cu.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct BnMatchArgs {
    pub stats: u64,
    pub running_mean: u64,
    pub running_var: u64,
    pub coef: u64,
    pub losses: u64,
    pub count: f64,
    pub weight: f64,
    pub k: i32,
    pub slot: i32,
}
crate::assert_kernel_layout!(BnMatchArgs, size 64, { stats: 0, running_mean: 8, running_var: 16, coef: 24, losses: 32, count: 40, weight: 48, k: 56, slot: 60 });

/// Mirrors `BnBackwardArgs` in kernels/bn_match.cu.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct BnBackwardArgs {
    pub dz: u64,
    pub y: u64,
    pub scale: u64,
    pub coef: u64,
    pub dy: u64,
    pub n: i32,
    pub c: i32,
    pub hw: i32,
    pub reserved: i32,
}
crate::assert_kernel_layout!(BnBackwardArgs, size 56, { dz: 0, y: 8, scale: 16, coef: 24, dy: 32, n: 40, c: 44, hw: 48, reserved: 52 });
