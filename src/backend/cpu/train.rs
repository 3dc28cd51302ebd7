//! The training ops on the CPU backend ([`TrainBackend`]): each calls its op's CPU half on the
//! prefixes of the buffers it needs, on this backend's thread pool, timed when profiling.

use super::{pre, pre_mut, CpuBackend};
use crate::backend::{BnEvalFwd, BnTrainBwd, BnTrainFwd, LinearProblem, TrainBackend};
use crate::error::{Error, Result};
use crate::ops::adamw::AdamWConfig;
use crate::ops::batchnorm::BnProblem;
use crate::ops::conv::ConvProblem;
use crate::ops::sgd::SgdConfig;
use crate::ops::{adamw, batchnorm, conv, linear, sgd};

/// Refuses a buffer shorter than what an op reads or writes (a slice would panic instead).
fn need(what: &str, have: usize, want: usize) -> Result<()> {
    if have < want {
        return Err(Error::input(what, format!("a buffer of {have} values where {want} are needed")));
    }
    Ok(())
}

impl TrainBackend for CpuBackend {
    fn conv_wgrad(&self, p: &ConvProblem, x: &Vec<f32>, dy: &Vec<f32>, dw: &mut Vec<f32>) -> Result<()> {
        let (il, ol, wl) = (p.input_len(), p.output_len(), p.weight_len());
        need("conv wgrad x", x.len(), il)?;
        need("conv wgrad dy", dy.len(), ol)?;
        need("conv wgrad dw", dw.len(), wl)?;
        self.op(
            || format!("conv_wgrad {}", super::conv_key(p, false, self.conv_choice)),
            p.flops(),
            || conv::cpu::im2col::wgrad(p, pre(x, il), pre(dy, ol), pre_mut(dw, wl)),
        );
        Ok(())
    }

    fn bn_fwd_train(&self, p: &BnProblem, momentum: f64, eps: f64, t: BnTrainFwd<'_, Vec<f32>>) -> Result<()> {
        let (len, c) = (p.len(), p.c);
        for (what, b) in [("batchnorm y", t.y.len()), ("batchnorm out", t.out.len())] {
            need(what, b, len)?;
        }
        if let Some(r) = t.residual {
            need("batchnorm residual", r.len(), len)?;
        }
        for (what, b) in [
            ("batchnorm gamma", t.gamma.len()),
            ("batchnorm beta", t.beta.len()),
            ("batchnorm running mean", t.running_mean.len()),
            ("batchnorm running var", t.running_var.len()),
        ] {
            need(what, b, c)?;
        }
        need("batchnorm saved mean", t.save_mean.len(), c)?;
        need("batchnorm saved invstd", t.save_invstd.len(), c)?;
        let BnTrainFwd { y, gamma, beta, running_mean, running_var, residual, relu, out, save_mean, save_invstd } = t;
        self.op(
            || format!("bn_fwd_train {}x{}x{}", p.n, p.c, p.hw),
            0.0,
            || {
                batchnorm::cpu::fwd_train(
                    p,
                    pre(y, len),
                    pre(gamma, c),
                    pre(beta, c),
                    momentum,
                    eps,
                    pre_mut(running_mean, c),
                    pre_mut(running_var, c),
                    residual.map(|r| pre(r, len)),
                    relu,
                    pre_mut(out, len),
                    pre_mut(save_mean, c),
                    pre_mut(save_invstd, c),
                )
            },
        );
        Ok(())
    }

    fn bn_fwd_eval(&self, p: &BnProblem, eps: f64, t: BnEvalFwd<'_, Vec<f32>>) -> Result<()> {
        let (len, c) = (p.len(), p.c);
        need("batchnorm y", t.y.len(), len)?;
        need("batchnorm out", t.out.len(), len)?;
        if let Some(r) = t.residual {
            need("batchnorm residual", r.len(), len)?;
        }
        for (what, b) in
            [("batchnorm gamma", t.gamma), ("batchnorm beta", t.beta), ("batchnorm running mean", t.running_mean), ("batchnorm running var", t.running_var)]
        {
            need(what, b.len(), c)?;
        }
        let BnEvalFwd { y, gamma, beta, running_mean, running_var, residual, relu, out } = t;
        self.op(
            || format!("bn_fwd_eval {}x{}x{}", p.n, p.c, p.hw),
            0.0,
            || {
                batchnorm::cpu::fwd_eval(
                    p,
                    pre(y, len),
                    pre(gamma, c),
                    pre(beta, c),
                    pre(running_mean, c),
                    pre(running_var, c),
                    eps,
                    residual.map(|r| pre(r, len)),
                    relu,
                    pre_mut(out, len),
                )
            },
        );
        Ok(())
    }

    fn bn_bwd_train(&self, p: &BnProblem, t: BnTrainBwd<'_, Vec<f32>>) -> Result<()> {
        let (len, c) = (p.len(), p.c);
        for (what, b) in [("batchnorm dout", t.dout), ("batchnorm out", t.out), ("batchnorm y", t.y)] {
            need(what, b.len(), len)?;
        }
        need("batchnorm dy", t.dy.len(), len)?;
        for (what, b) in [("batchnorm gamma", t.gamma), ("batchnorm saved mean", t.save_mean), ("batchnorm saved invstd", t.save_invstd)] {
            need(what, b.len(), c)?;
        }
        need("batchnorm dgamma", t.dgamma.len(), c)?;
        need("batchnorm dbeta", t.dbeta.len(), c)?;
        if let Some(r) = t.dresidual.as_ref() {
            need("batchnorm dresidual", r.len(), len)?;
        }
        let BnTrainBwd { dout, out, relu, y, gamma, save_mean, save_invstd, dy, dgamma, dbeta, dresidual } = t;
        self.op(
            || format!("bn_bwd_train {}x{}x{}", p.n, p.c, p.hw),
            0.0,
            || {
                batchnorm::cpu::bwd_train(
                    p,
                    pre(dout, len),
                    pre(out, len),
                    relu,
                    pre(y, len),
                    pre(gamma, c),
                    pre(save_mean, c),
                    pre(save_invstd, c),
                    pre_mut(dy, len),
                    pre_mut(dgamma, c),
                    pre_mut(dbeta, c),
                    dresidual.map(|r| pre_mut(r, len)),
                )
            },
        );
        Ok(())
    }

    fn linear_wgrad(&self, p: &LinearProblem, x: &Vec<f32>, dy: &Vec<f32>, grads: (&mut Vec<f32>, &mut Vec<f32>)) -> Result<()> {
        let LinearProblem { n, in_f, out_f } = *p;
        let (dw, db) = grads;
        need("linear wgrad x", x.len(), n * in_f)?;
        need("linear wgrad dy", dy.len(), n * out_f)?;
        need("linear wgrad dw", dw.len(), out_f * in_f)?;
        need("linear wgrad db", db.len(), out_f)?;
        self.op(
            || format!("linear_wgrad {n}x{in_f}x{out_f}"),
            2.0 * (n * in_f * out_f) as f64,
            || linear::cpu::wgrad(n, in_f, out_f, pre(x, n * in_f), pre(dy, n * out_f), pre_mut(dw, out_f * in_f), pre_mut(db, out_f)),
        );
        Ok(())
    }

    fn sgd_step(&self, cfg: &SgdConfig, param: &mut Vec<f32>, grad: &Vec<f32>, buf: Option<&mut Vec<f32>>, first: bool) -> Result<()> {
        let len = param.len();
        need("sgd grad", grad.len(), len)?;
        let mut none = Vec::new();
        let buf = match (cfg.momentum != 0.0, buf) {
            (false, _) => &mut none,
            (true, Some(b)) => {
                need("sgd momentum buffer", b.len(), len)?;
                b
            }
            (true, None) => return Err(Error::State("SGD with momentum needs a momentum buffer".into())),
        };
        self.op(
            || format!("sgd_step {len}"),
            0.0,
            || sgd::cpu::step(cfg, param, pre(grad, len), if cfg.momentum != 0.0 { pre_mut(buf, len) } else { buf }, first),
        );
        Ok(())
    }

    fn adamw_step(&self, cfg: &AdamWConfig, step: u32, param: &mut Vec<f32>, grad: &Vec<f32>, moments: (&mut Vec<f32>, &mut Vec<f32>)) -> Result<()> {
        let (m, v) = moments;
        let len = param.len();
        need("adamw grad", grad.len(), len)?;
        need("adamw m", m.len(), len)?;
        need("adamw v", v.len(), len)?;
        if step == 0 {
            return Err(Error::State("AdamW steps are numbered from 1".into()));
        }
        self.op(|| format!("adamw_step {len}"), 0.0, || adamw::cpu::step(cfg, cfg.weight_decay, step, param, pre(grad, len), pre_mut(m, len), pre_mut(v, len)));
        Ok(())
    }
}
