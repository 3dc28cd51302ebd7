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
