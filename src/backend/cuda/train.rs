//! The training ops on the CUDA backend: conv wgrad, BatchNorm in train and eval mode (fused residual
//! and ReLU) forward and backward, fc parameter gradients, the distillation loss, SGD and AdamW.
//! Each launches `kernels/<op>.cu` and has its CPU twin in `crate::ops::<op>::cpu`; the tests
//! (tests/cuda_common/train.rs) compare the two on the host emulation and, where there is one, a GPU.
//!
//! They implement [`TrainBackend`], which the one training executor (`crate::train::executor`) runs
//! on; the distillation loss (`kd_kl_div`) is an inherent method, as the training loops compute their
//! n x classes losses on the host.

use super::*;
use crate::backend::{BnEvalFwd, BnTrainBwd, BnTrainFwd, LinearProblem, TrainBackend};
use crate::ops::adamw::{AdamScalars, AdamWArgs, AdamWConfig};
use crate::ops::batchnorm::{BnProblem, BnTrainArgs, BnTrainBwdArgs};
use crate::ops::kd_loss::KdLossArgs;
use crate::ops::sgd::{SgdArgs, SgdConfig};

/// Minimum GEMM_K terms per wgrad split (32 chunks of 16), so a split's fixed costs stay small.
const WGRAD_MIN_PER_SPLIT: usize = 512;
/// Rows and columns of a wgrad CTA tile (kernels/conv_wgrad.cu).
const WGRAD_TILE: usize = 64;
/// CTAs a wgrad launch aims for (about two per SM on the largest GPUs).
const WGRAD_TARGET_CTAS: usize = 264;

impl<D: CudaDevice> TrainBackend for CudaBackend<D> {
    /// dw = the weight gradient of conv `p` for input x and output gradient dy (overwrites dw).
    fn conv_wgrad(&self, p: &ConvProblem, x: &CudaBuf<D>, dy: &CudaBuf<D>, dw: &mut CudaBuf<D>) -> Result<()> {
        check_len("conv wgrad x", x.len, p.input_len())?;
        check_len("conv wgrad dy", dy.len, p.output_len())?;
        check_len("conv wgrad dw", dw.len, p.weight_len())?;
        let (k, crs) = (p.k as usize, (p.c * p.r * p.s) as usize);
        let npq = p.n as usize * (p.p * p.q) as usize;
        let tiles = crs.div_ceil(WGRAD_TILE) * k.div_ceil(WGRAD_TILE);
        if tiles == 0 {
            return Ok(());
        }
        let splits = WGRAD_TARGET_CTAS.div_ceil(tiles).min(npq.div_ceil(WGRAD_MIN_PER_SPLIT)).clamp(1, 65535);
        let per_split = npq.div_ceil(splits).next_multiple_of(16).max(16);
        let splits = npq.div_ceil(per_split).max(1);
        let len = k * crs;
        let partial = if splits == 1 { self.addr(dw) } else { self.workspace((splits * len).div_ceil(2))? };
        let mut args = KernelArgs::new();
        args.push(*p).push(self.addr(x)).push(self.addr(dy)).push(partial).push(per_split as i64);
        let cfg = LaunchConfig { grid: [crs.div_ceil(WGRAD_TILE) as u32, k.div_ceil(WGRAD_TILE) as u32, splits as u32], block: [256, 1, 1], shared_bytes: 0 };
        self.launch(ids::CONV_WGRAD_F32, cfg, &args)?;
        if splits > 1 {
            let mut args = KernelArgs::new();
            args.push(partial).push(self.addr(dw)).push(len as i64).push(splits as i32);
            self.launch(ids::CONV_WGRAD_REDUCE_F32, grid_1d(len, THREADS)?, &args)?;
        }
        Ok(())
    }

    /// Train-mode BatchNorm forward: batch statistics, running-statistics update (momentum),
    /// `out = act(bn(y) [+ residual])`, the batch mean and invstd saved for the backward.
    fn bn_fwd_train(&self, p: &BnProblem, momentum: f64, eps: f64, t: BnTrainFwd<'_, CudaBuf<D>>) -> Result<()> {
        let BnTrainFwd { y, gamma, beta, running_mean, running_var, residual, relu, out, save_mean, save_invstd } = t;
        self.check_bn(p, y, gamma, beta, residual, out)?;
        check_len("batchnorm running mean", running_mean.len, p.c)?;
        check_len("batchnorm running var", running_var.len, p.c)?;
        check_len("batchnorm saved mean", save_mean.len, p.c)?;
        check_len("batchnorm saved invstd", save_invstd.len, p.c)?;
        if p.is_empty() {
            return Ok(());
        }
        let coef = self.workspace(p.c)?;
        let args = BnTrainArgs {
            y: self.addr(y),
            gamma: self.addr(gamma),
            beta: self.addr(beta),
            running_mean: self.addr(running_mean),
            running_var: self.addr(running_var),
            save_mean: self.addr(save_mean),
            save_invstd: self.addr(save_invstd),
            coef,
            momentum,
            eps,
            n: to_i32("batchnorm n", p.n)?,
            c: to_i32("batchnorm c", p.c)?,
            hw: to_i32("batchnorm hw", p.hw)?,
            reserved: 0,
        };
        let mut a = KernelArgs::new();
        a.push(args);
        self.launch(ids::BN_TRAIN_STATS_F32, LaunchConfig { grid: [p.c as u32, 1, 1], block: [256, 1, 1], shared_bytes: 0 }, &a)?;
        self.bn_apply(p, y, coef, residual, relu, out)
    }

    /// Eval-mode BatchNorm forward with the running statistics.
    fn bn_fwd_eval(&self, p: &BnProblem, eps: f64, t: BnEvalFwd<'_, CudaBuf<D>>) -> Result<()> {
        let BnEvalFwd { y, gamma, beta, running_mean, running_var, residual, relu, out } = t;
        self.check_bn(p, y, gamma, beta, residual, out)?;
        check_len("batchnorm running mean", running_mean.len, p.c)?;
        check_len("batchnorm running var", running_var.len, p.c)?;
        if p.is_empty() {
            return Ok(());
        }
        let coef = self.workspace(p.c)?;
        let args = BnTrainArgs {
            gamma: self.addr(gamma),
            beta: self.addr(beta),
            running_mean: self.addr(running_mean),
            running_var: self.addr(running_var),
            coef,
            eps,
            c: to_i32("batchnorm c", p.c)?,
            ..Default::default()
        };
        let mut a = KernelArgs::new();
        a.push(args);
        self.launch(ids::BN_EVAL_COEF_F32, grid_1d(p.c, THREADS)?, &a)?;
        self.bn_apply(p, y, coef, residual, relu, out)
    }

    /// Train-mode BatchNorm backward of the fused op: dout (gradient of `out`) -> dy, dgamma, dbeta
    /// (overwritten) and, when given, dresidual (the ReLU-masked gradient). `out` is the forward's
    /// output (its sign is the ReLU mask, ignored when `relu` is false).
    fn bn_bwd_train(&self, p: &BnProblem, t: BnTrainBwd<'_, CudaBuf<D>>) -> Result<()> {
        let BnTrainBwd { dout, out, relu, y, gamma, save_mean, save_invstd, dy, dgamma, dbeta, dresidual } = t;
        for (what, b) in [("batchnorm dout", dout), ("batchnorm out", out), ("batchnorm y", y)] {
            check_len(what, b.len, p.len())?;
        }
        check_len("batchnorm dy", dy.len, p.len())?;
        for (what, b) in [("batchnorm gamma", gamma), ("batchnorm saved mean", save_mean), ("batchnorm saved invstd", save_invstd)] {
            check_len(what, b.len, p.c)?;
        }
        check_len("batchnorm dgamma", dgamma.len, p.c)?;
        check_len("batchnorm dbeta", dbeta.len, p.c)?;
        if let Some(r) = dresidual.as_ref() {
            check_len("batchnorm dresidual", r.len, p.len())?;
        }
        if p.is_empty() {
            return Ok(());
        }
        let args = BnTrainBwdArgs {
            dout: self.addr(dout),
            out: self.addr(out),
            y: self.addr(y),
            gamma: self.addr(gamma),
            save_mean: self.addr(save_mean),
            save_invstd: self.addr(save_invstd),
            dy: self.addr(dy),
            dgamma: self.addr(dgamma),
            dbeta: self.addr(dbeta),
            dresidual: dresidual.map_or(0, |r| self.addr(r)),
            coef3: self.workspace((3 * p.c).div_ceil(2))?,
            n: to_i32("batchnorm n", p.n)?,
            c: to_i32("batchnorm c", p.c)?,
            hw: to_i32("batchnorm hw", p.hw)?,
            relu: relu as i32,
        };
        let mut a = KernelArgs::new();
        a.push(args);
        self.launch(ids::BN_TRAIN_BWD_REDUCE_F32, LaunchConfig { grid: [p.c as u32, 1, 1], block: [256, 1, 1], shared_bytes: 0 }, &a)?;
        self.launch(ids::BN_TRAIN_BWD_APPLY_F32, grid_1d(p.len(), THREADS)?, &a)
    }

    /// fc parameter gradients: dw[J x F] = dy^T x, db = column sums of dy (both overwritten).
    fn linear_wgrad(&self, p: &LinearProblem, x: &CudaBuf<D>, dy: &CudaBuf<D>, grads: (&mut CudaBuf<D>, &mut CudaBuf<D>)) -> Result<()> {
        let LinearProblem { n, in_f, out_f } = *p;
        let (dw, db) = grads;
        check_len("linear wgrad x", x.len, n * in_f)?;
        check_len("linear wgrad dy", dy.len, n * out_f)?;
        check_len("linear wgrad dw", dw.len, out_f * in_f)?;
        check_len("linear wgrad db", db.len, out_f)?;
        if out_f == 0 {
            return Ok(());
        }
        let mut a = KernelArgs::new();
        a.push(to_i32("n", n)?).push(to_i32("in_f", in_f)?).push(to_i32("out_f", out_f)?);
        a.push(self.addr(x)).push(self.addr(dy)).push(self.addr(dw)).push(self.addr(db));
        self.launch(ids::LINEAR_WGRAD_F32, grid_1d(out_f * in_f + out_f, THREADS)?, &a)
    }

    /// One SGD step on one tensor. `first`: the momentum buffer is uninitialised (PyTorch creates it
    /// from the gradient); `buf` may be None when momentum is 0.
    fn sgd_step(&self, cfg: &SgdConfig, param: &mut CudaBuf<D>, grad: &CudaBuf<D>, buf: Option<&mut CudaBuf<D>>, first: bool) -> Result<()> {
        let len = param.len;
        check_len("sgd grad", grad.len, len)?;
        let buf = match (cfg.momentum != 0.0, buf) {
            (false, _) => 0,
            (true, Some(b)) => {
                check_len("sgd momentum buffer", b.len, len)?;
                self.addr(b)
            }
            (true, None) => return Err(Error::State("SGD with momentum needs a momentum buffer".into())),
        };
        if len == 0 {
            return Ok(());
        }
        let args = SgdArgs {
            param: self.addr(param),
            grad: self.addr(grad),
            buf,
            len: len as i64,
            lr: cfg.lr,
            momentum: cfg.momentum,
            weight_decay: cfg.weight_decay,
            nesterov: cfg.nesterov as i32,
            first: first as i32,
            reserved: 0,
        };
        let mut a = KernelArgs::new();
        a.push(args);
        self.launch(ids::SGD_STEP_F32, grid_1d(len, THREADS)?, &a)
    }

    /// One AdamW step number `step` (1-based) on one tensor with weight decay `cfg.weight_decay` (0
    /// for tensors the recipe excludes).
    fn adamw_step(&self, cfg: &AdamWConfig, step: u32, param: &mut CudaBuf<D>, grad: &CudaBuf<D>, moments: (&mut CudaBuf<D>, &mut CudaBuf<D>)) -> Result<()> {
        let (m, v) = moments;
        let weight_decay = cfg.weight_decay;
        let len = param.len;
        check_len("adamw grad", grad.len, len)?;
        check_len("adamw m", m.len, len)?;
        check_len("adamw v", v.len, len)?;
        if step == 0 {
            return Err(Error::State("AdamW steps are numbered from 1".into()));
        }
        if len == 0 {
            return Ok(());
        }
        let s = AdamScalars::new(cfg.lr, cfg.beta1, cfg.beta2, cfg.eps, step);
        let args = AdamWArgs {
            param: self.addr(param),
            grad: self.addr(grad),
            m: self.addr(m),
            v: self.addr(v),
            len: len as i64,
            beta1: s.beta1,
            beta2: s.beta2,
            step_size: s.step_size,
            bias_correction2_sqrt: s.bias_correction2_sqrt,
            eps: s.eps,
            decay: (1.0 - cfg.lr * weight_decay) as f32,
            apply_decay: (weight_decay != 0.0) as i32,
            reserved: 0,
        };
        let mut a = KernelArgs::new();
        a.push(args);
        self.launch(ids::ADAMW_STEP_F32, grid_1d(len, THREADS)?, &a)
    }
}

impl<D: CudaDevice> CudaBackend<D> {
    fn check_bn(&self, p: &BnProblem, y: &CudaBuf<D>, gamma: &CudaBuf<D>, beta: &CudaBuf<D>, residual: Option<&CudaBuf<D>>, out: &CudaBuf<D>) -> Result<()> {
        check_len("batchnorm y", y.len, p.len())?;
        check_len("batchnorm gamma", gamma.len, p.c)?;
        check_len("batchnorm beta", beta.len, p.c)?;
        check_len("batchnorm out", out.len, p.len())?;
        if let Some(r) = residual {
            check_len("batchnorm residual", r.len, p.len())?;
        }
        Ok(())
    }

    /// out = act(y * coef[c] + coef[C + c] [+ residual]) with the affine in the workspace at `coef`.
    fn bn_apply(&self, p: &BnProblem, y: &CudaBuf<D>, coef: u64, residual: Option<&CudaBuf<D>>, relu: bool, out: &mut CudaBuf<D>) -> Result<()> {
        let mut a = KernelArgs::new();
        a.push(self.addr(y)).push(coef).push(residual.map_or(0, |r| self.addr(r))).push(self.addr(out));
        a.push(to_i32("batchnorm n", p.n)?).push(to_i32("batchnorm c", p.c)?).push(to_i32("batchnorm hw", p.hw)?).push(relu as i32);
        self.launch(ids::BN_APPLY_F32, grid_1d(p.len(), THREADS)?, &a)
    }

    /// Batchmean KL(softmax(teacher / T) || softmax(student / T)) into losses[slot] (not scaled by T^2)
    /// and its gradient with respect to the student logits.
    #[allow(clippy::too_many_arguments)]
    pub fn kd_kl_div(
        &self,
        n: usize,
        classes: usize,
        student: &CudaBuf<D>,
        teacher: &CudaBuf<D>,
        temperature: f64,
        dstudent: &mut CudaBuf<D>,
        losses: &mut CudaBuf<D>,
        slot: usize,
    ) -> Result<()> {
        check_len("kd student logits", student.len, n * classes)?;
        check_len("kd teacher logits", teacher.len, n * classes)?;
        check_len("kd student gradient", dstudent.len, n * classes)?;
        check_len("kd losses", losses.len, slot + 1)?;
        if !(temperature.is_finite() && temperature > 0.0) {
            return Err(Error::Option(format!("distillation temperature must be a positive number, not {temperature}")));
        }
        if n == 0 || classes == 0 {
            return Ok(());
        }
        let args = KdLossArgs {
            student: self.addr(student),
            teacher: self.addr(teacher),
            dstudent: self.addr(dstudent),
            row_loss: self.workspace(n)?,
            losses: self.addr(losses),
            temperature,
            n: to_i32("kd rows", n)?,
            classes: to_i32("kd classes", classes)?,
            slot: to_i32("kd slot", slot)?,
            reserved: 0,
        };
        let mut a = KernelArgs::new();
        a.push(args);
        self.launch(ids::KD_KL_DIV_ROWS_F32, LaunchConfig { grid: [n as u32, 1, 1], block: [256, 1, 1], shared_bytes: 0 }, &a)?;
        self.launch(ids::KD_KL_DIV_FINALIZE_F32, LaunchConfig { grid: [1, 1, 1], block: [256, 1, 1], shared_bytes: 0 }, &a)
    }
}
