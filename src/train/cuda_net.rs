//! The training executor on the CUDA backend: the walk of [`super::net::TrainNet`] (the same
//! [`Plan`], the same ops in the same order; see there) over device buffers. Parameters, gradients,
//! optimizer state and BatchNorm running statistics stay on the device for the whole run;
//! [`CudaTrainNet::download`] copies parameters and running statistics back into the `TrainModel`
//! (to evaluate or save it).
//!
//! Where the CPU executor calls `ops::<op>::cpu`, this one calls the CUDA backend: conv fprop and dgrad
//! (the recover kernels with plain epilogues), `conv_wgrad`, `bn_fwd_train` / `bn_fwd_eval` /
//! `bn_bwd_train`, the pools, the fc, `linear_wgrad`, `sgd_step` / `adamw_step`. Two differences in form,
//! none in value: a block's input gradient comes out of the dgrad epilogue masked by (x > 0) (the block
//! input is a ReLU output, or the max pool of one, and the BN backward it flows into applies the same
//! mask), and the identity shortcut's gradient is added in that epilogue instead of a separate pass.

use super::model::TrainModel;
use super::net::{problem, Mode, Plan, Src};
use super::optim::OptimKind;
use crate::backend::cuda::runtime::CudaDevice;
use crate::backend::cuda::{CudaBackend, CudaBuf, CudaIntBuf};
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::ops::adamw::AdamWConfig;
use crate::ops::batchnorm::{BnProblem, BN_EPS, BN_MOMENTUM};
use crate::ops::conv::{BnAffine, DgradEpilogue, FpropEpilogue};
use crate::ops::pool::PoolProblem;
use crate::ops::sgd::SgdConfig;

/// What a trainable network updates with (None for a teacher that only runs forward).
#[derive(Clone, Copy, Debug)]
pub struct DeviceOptim {
    pub kind: OptimKind,
    pub weight_decay: f64,
}

pub struct CudaTrainNet<D: CudaDevice> {
    pub max_n: usize,
    pub h: usize,
    pub w: usize,
    plan: Plan,
    // The model: per parameter its data, gradient and optimizer state; per conv its running statistics.
    data: Vec<CudaBuf<D>>,
    grad: Vec<CudaBuf<D>>,
    state1: Vec<CudaBuf<D>>,
    state2: Vec<CudaBuf<D>>,
    decays: Vec<bool>,
    running_mean: Vec<CudaBuf<D>>,
    running_var: Vec<CudaBuf<D>>,
    optim: Option<DeviceOptim>,
    steps: u32,
    // Activations, as in TrainNet.
    y: Vec<CudaBuf<D>>,
    out: Vec<CudaBuf<D>>,
    save_mean: Vec<CudaBuf<D>>,
    save_invstd: Vec<CudaBuf<D>>,
    pool_out: CudaBuf<D>,
    argmax: CudaIntBuf<D>,
    feat: CudaBuf<D>,
    logits: CudaBuf<D>,
    g_feat: CudaBuf<D>,
    scratch: Vec<CudaBuf<D>>,
    /// Zeros and ones of the widest conv: the identity BN affine of a plain conv fprop.
    zeros: CudaBuf<D>,
    ones: CudaBuf<D>,
    n: usize,
    mode: Mode,
}

fn upload<D: CudaDevice>(g: &CudaBackend<D>, v: &[f32]) -> Result<CudaBuf<D>> {
    let mut b = g.alloc(v.len())?;
    g.upload(v, &mut b)?;
    Ok(b)
}

/// A shared reference to element `read` and a mutable one to element `write` (distinct) of `v`.
fn read_write<T>(v: &mut [T], read: usize, write: usize) -> (&T, &mut T) {
    assert!(read != write && read < v.len() && write < v.len(), "read_write({read}, {write})");
    if read < write {
        let (a, b) = v.split_at_mut(write);
        (&a[read], &mut b[0])
    } else {
        let (a, b) = v.split_at_mut(read);
        (&b[0], &mut a[write])
    }
}

/// Two distinct mutable elements of `v`, in the order asked for.
fn two_mut<T>(v: &mut [T], i: usize, j: usize) -> (&mut T, &mut T) {
    assert!(i != j && i < v.len() && j < v.len(), "two_mut({i}, {j})");
    if i < j {
        let (a, b) = v.split_at_mut(j);
        (&mut a[i], &mut b[0])
    } else {
        let (a, b) = v.split_at_mut(i);
        (&mut b[0], &mut a[j])
    }
}

impl<D: CudaDevice> CudaTrainNet<D> {
    /// Uploads `model` and allocates activations for batches of up to `max_n` images of h x w.
    /// With `optim`, gradients and optimizer state are allocated too.
    pub fn new(g: &CudaBackend<D>, model: &TrainModel, max_n: usize, h: usize, w: usize, optim: Option<DeviceOptim>) -> Result<CudaTrainNet<D>> {
        if max_n == 0 {
            return Err(Error::Option("batch size must be at least 1".into()));
        }
        let plan = Plan::new(model, h, w)?;
        let data = model.params.iter().map(|p| upload(g, &p.data)).collect::<Result<Vec<_>>>()?;
        let alloc_like = |on: bool| -> Result<Vec<CudaBuf<D>>> { model.params.iter().map(|p| g.alloc(if on { p.data.len() } else { 0 })).collect() };
        let (grad, state1, state2) = match optim.map(|o| o.kind) {
            None => (alloc_like(false)?, alloc_like(false)?, alloc_like(false)?),
            Some(OptimKind::Sgd { momentum, .. }) => (alloc_like(true)?, alloc_like(momentum != 0.0)?, alloc_like(false)?),
            Some(OptimKind::AdamW { .. }) => (alloc_like(true)?, alloc_like(true)?, alloc_like(true)?),
        };
        let running_mean = model.convs.iter().map(|c| upload(g, &c.running_mean)).collect::<Result<Vec<_>>>()?;
        let running_var = model.convs.iter().map(|c| upload(g, &c.running_var)).collect::<Result<Vec<_>>>()?;
        let mut max_act = max_n * model.in_channels * h * w;
        let (mut y, mut out, mut save_mean, mut save_invstd) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut max_k = 1;
        for (i, l) in plan.layers.iter().enumerate() {
            let k = model.convs[i].geom.k;
            max_k = max_k.max(k);
            let len = max_n * k * l.out_hw.0 * l.out_hw.1;
            max_act = max_act.max(len);
            y.push(g.alloc(len)?);
            out.push(g.alloc(len)?);
            save_mean.push(g.alloc(k)?);
            save_invstd.push(g.alloc(k)?);
        }
        let pool_len = plan.pool_hw.map_or(0, |(p, q)| max_n * model.convs[0].geom.k * p * q);
        Ok(CudaTrainNet {
            max_n,
            h,
            w,
            decays: model.params.iter().map(|p| p.decays()).collect(),
            plan,
            data,
            grad,
            state1,
            state2,
            running_mean,
            running_var,
            optim,
            steps: 0,
            y,
            out,
            save_mean,
            save_invstd,
            pool_out: g.alloc(pool_len)?,
            argmax: g.alloc_int(pool_len)?,
            feat: g.alloc(max_n * model.feat_dim)?,
            logits: g.alloc(max_n * model.num_classes)?,
            g_feat: g.alloc(max_n * model.feat_dim)?,
            scratch: (0..5).map(|_| g.alloc(max_act)).collect::<Result<Vec<_>>>()?,
            zeros: g.alloc(max_k)?,
            ones: upload(g, &vec![1.0; max_k])?,
            n: 0,
            mode: Mode::Eval,
        })
    }

    /// Forward of `n` images in `x` (n x C x H x W, normalised, on the device). Train mode updates the
    /// running statistics on the device. Logits in [`logits`](Self::logits).
    pub fn forward(&mut self, g: &CudaBackend<D>, model: &TrainModel, x: &CudaBuf<D>, n: usize, mode: Mode) -> Result<()> {
        if n == 0 || n > self.max_n {
            return Err(Error::Option(format!("batch of {n} images for a network built for at most {}", self.max_n)));
        }
        let need = n * model.in_channels * self.h * self.w;
        if x.len() < need {
            return Err(Error::input("batch", format!("{} values for {n} images of {}x{}x{}", x.len(), model.in_channels, self.h, self.w)));
        }
        self.n = n;
        self.mode = mode;
        for si in 0..self.plan.schedule.len() {
            let i = self.plan.schedule[si];
            let l = &self.plan.layers[i];
            let p = problem(model, l, i, n);
            let c = &model.convs[i];
            let identity = BnAffine { mean: &self.zeros, scale: &self.ones, beta: &self.zeros };
            let input = match l.input {
                Src::Input => x,
                Src::Pool => &self.pool_out,
                Src::Conv(j) => &self.out[j],
            };
            let epi = FpropEpilogue { bn: identity, residual: None, relu: false, y: None, stats: None };
            g.conv_fprop(&p, input, &self.data[c.weight], epi, &mut self.y[i])?;
            let bp = BnProblem { n, c: c.geom.k, hw: l.out_hw.0 * l.out_hw.1 };
            let (residual, out_i): (Option<&CudaBuf<D>>, &mut CudaBuf<D>) = match l.residual {
                None => (None, &mut self.out[i]),
                Some(Src::Input) => (Some(x), &mut self.out[i]),
                Some(Src::Pool) => (Some(&self.pool_out), &mut self.out[i]),
                Some(Src::Conv(j)) => {
                    let (r, o) = read_write(&mut self.out, j, i);
                    (Some(r), o)
                }
            };
            let (gamma, beta) = (&self.data[c.gamma], &self.data[c.beta]);
            match mode {
                Mode::Train => g.bn_fwd_train(
                    &bp,
                    &self.y[i],
                    gamma,
                    beta,
                    BN_MOMENTUM,
                    BN_EPS,
                    &mut self.running_mean[i],
                    &mut self.running_var[i],
                    residual,
                    l.relu,
                    out_i,
                    &mut self.save_mean[i],
                    &mut self.save_invstd[i],
                )?,
                Mode::Eval => g.bn_fwd_eval(&bp, &self.y[i], gamma, beta, &self.running_mean[i], &self.running_var[i], BN_EPS, residual, l.relu, out_i)?,
            }
            if i == 0 && self.plan.pool_hw.is_some() {
                let pp = PoolProblem::stem(n, c.geom.k, l.out_hw.0, l.out_hw.1);
                g.maxpool_fwd(&pp, &self.out[0], &mut self.pool_out, &mut self.argmax)?;
            }
        }
        let (f, k) = (model.feat_dim, model.num_classes);
        g.avgpool_fwd(n * f, self.plan.last_hw, &self.out[self.plan.last_conv()], &mut self.feat)?;
        g.linear_fwd(n, f, k, &self.feat, &self.data[model.fc_weight], &self.data[model.fc_bias], &mut self.logits)
    }

    /// Logits of the last forward: the first n x classes values.
    pub fn logits(&self) -> &CudaBuf<D> {
        &self.logits
    }

    /// Gradients of every parameter (overwritten) for the loss gradient `dlogits` (n x classes, on the
    /// device) of the last train-mode forward of `x`.
    pub fn backward(&mut self, g: &CudaBackend<D>, model: &TrainModel, x: &CudaBuf<D>, dlogits: &CudaBuf<D>) -> Result<()> {
        let n = self.n;
        if self.mode != Mode::Train || n == 0 {
            return Err(Error::Option("backward needs a train-mode forward first".into()));
        }
        if self.optim.is_none() {
            return Err(Error::Option("backward on a network built without an optimizer (a teacher)".into()));
        }
        let (f, k) = (model.feat_dim, model.num_classes);
        {
            let (dw, db) = two_mut(&mut self.grad, model.fc_weight, model.fc_bias);
            g.linear_wgrad(n, f, k, &self.feat, dlogits, dw, db)?;
        }
        g.linear_bwd_data(n, f, k, dlogits, &self.data[model.fc_weight], &mut self.g_feat)?;
        // Scratch slots as in TrainNet: g (block output gradient), a/b (ping-pong), r (shortcut), gin.
        let (mut sg, mut sgin) = (0usize, 1usize);
        let (sa, sb, sr) = (2usize, 3usize, 4usize);
        let last = self.plan.last_conv();
        g.avgpool_bwd(n * f, self.plan.last_hw, &self.g_feat, &self.out[last], &mut self.scratch[sg])?;
        for bi in (0..self.plan.blocks.len()).rev() {
            let (input, ids, ds) = self.plan.blocks[bi].clone();
            let input_buf: &CudaBuf<D> = match input {
                Src::Input => x,
                Src::Pool => &self.pool_out,
                Src::Conv(j) => &self.out[j],
            };
            let lastc = *ids.last().unwrap();
            // Last conv: BN backward with the ReLU mask, the shortcut's gradient into r.
            {
                let (dout, dy, dres) = pick3(&mut self.scratch, sg, sa, sr);
                bn_backward(
                    g,
                    model,
                    &self.plan,
                    &self.y,
                    &self.out,
                    &self.save_mean,
                    &self.save_invstd,
                    &self.data,
                    &mut self.grad,
                    lastc,
                    n,
                    dout,
                    dy,
                    Some(dres),
                )?;
            }
            for j in (0..ids.len()).rev() {
                let i = ids[j];
                let p = problem(model, &self.plan.layers[i], i, n);
                let cin: &CudaBuf<D> = if j == 0 { input_buf } else { &self.out[ids[j - 1]] };
                g.conv_wgrad(&p, cin, &self.scratch[sa], &mut self.grad[model.convs[i].weight])?;
                if j == 0 {
                    let (dy, dr, gin) = pick3(&mut self.scratch, sa, sr, sgin);
                    let epi = match ds {
                        None => DgradEpilogue::MaskInput { add: Some(&*dr), accumulate: false },
                        Some(_) => DgradEpilogue::Store,
                    };
                    g.conv_dgrad(&p, dy, &self.data[model.convs[i].weight], cin, epi, gin)?;
                } else {
                    let (dy, db) = read_write(&mut self.scratch, sa, sb);
                    g.conv_dgrad(&p, dy, &self.data[model.convs[i].weight], cin, DgradEpilogue::Store, db)?;
                    let (dout, dy) = read_write(&mut self.scratch, sb, sa);
                    bn_backward(
                        g,
                        model,
                        &self.plan,
                        &self.y,
                        &self.out,
                        &self.save_mean,
                        &self.save_invstd,
                        &self.data,
                        &mut self.grad,
                        ids[j - 1],
                        n,
                        dout,
                        dy,
                        None,
                    )?;
                }
            }
            if let Some(d) = ds {
                let p = problem(model, &self.plan.layers[d], d, n);
                {
                    let (dout, dy) = read_write(&mut self.scratch, sr, sa);
                    bn_backward(
                        g,
                        model,
                        &self.plan,
                        &self.y,
                        &self.out,
                        &self.save_mean,
                        &self.save_invstd,
                        &self.data,
                        &mut self.grad,
                        d,
                        n,
                        dout,
                        dy,
                        None,
                    )?;
                }
                g.conv_wgrad(&p, input_buf, &self.scratch[sa], &mut self.grad[model.convs[d].weight])?;
                let (dy, gin) = read_write(&mut self.scratch, sa, sgin);
                g.conv_dgrad(&p, dy, &self.data[model.convs[d].weight], input_buf, DgradEpilogue::MaskInput { add: None, accumulate: true }, gin)?;
            }
            std::mem::swap(&mut sg, &mut sgin);
        }
        // Stem: (max pool backward) -> BN backward with the ReLU mask -> wgrad (no input gradient).
        let l0 = &self.plan.layers[0];
        let k0 = model.convs[0].geom.k;
        if self.plan.pool_hw.is_some() {
            let pp = PoolProblem::stem(n, k0, l0.out_hw.0, l0.out_hw.1);
            let (dout, dx) = read_write(&mut self.scratch, sg, sgin);
            g.maxpool_bwd(&pp, dout, &self.argmax, dx)?;
            std::mem::swap(&mut sg, &mut sgin);
        }
        {
            let (dout, dy) = read_write(&mut self.scratch, sg, sa);
            bn_backward(g, model, &self.plan, &self.y, &self.out, &self.save_mean, &self.save_invstd, &self.data, &mut self.grad, 0, n, dout, dy, None)?;
        }
        let p = problem(model, &self.plan.layers[0], 0, n);
        g.conv_wgrad(&p, x, &self.scratch[sa], &mut self.grad[model.convs[0].weight])
    }

    /// One optimizer step of every parameter at learning rate `lr` (weight decay on ndim > 1 tensors),
    /// as [`super::optim::Optimizer::step`].
    pub fn step(&mut self, g: &CudaBackend<D>, lr: f64) -> Result<()> {
        let o = self.optim.ok_or_else(|| Error::Option("optimizer step on a network built without an optimizer".into()))?;
        let first = self.steps == 0;
        self.steps += 1;
        for pi in 0..self.data.len() {
            let wd = if self.decays[pi] { o.weight_decay } else { 0.0 };
            match o.kind {
                OptimKind::Sgd { momentum, nesterov } => {
                    let cfg = SgdConfig { lr: lr as f32, momentum: momentum as f32, weight_decay: wd as f32, nesterov };
                    let buf = if momentum != 0.0 { Some(&mut self.state1[pi]) } else { None };
                    g.sgd_step(&cfg, &mut self.data[pi], &self.grad[pi], buf, first)?;
                }
                OptimKind::AdamW { beta1, beta2, eps } => {
                    let cfg = AdamWConfig { lr, beta1, beta2, eps, weight_decay: wd };
                    g.adamw_step(&cfg, wd, self.steps, &mut self.data[pi], &self.grad[pi], &mut self.state1[pi], &mut self.state2[pi])?;
                }
            }
        }
        Ok(())
    }

    /// Copies the parameters and running statistics into `model` (waits for the device).
    pub fn download(&self, g: &CudaBackend<D>, model: &mut TrainModel) -> Result<()> {
        for (p, b) in model.params.iter_mut().zip(&self.data) {
            g.download(b, &mut p.data)?;
        }
        for ((c, m), v) in model.convs.iter_mut().zip(&self.running_mean).zip(&self.running_var) {
            g.download(m, &mut c.running_mean)?;
            g.download(v, &mut c.running_var)?;
        }
        Ok(())
    }

    /// Copies the gradients of the last backward into `model`'s `Param::grad` (for tests).
    pub fn download_grads(&self, g: &CudaBackend<D>, model: &mut TrainModel) -> Result<()> {
        for (p, b) in model.params.iter_mut().zip(&self.grad) {
            if b.len() == p.grad.len() {
                g.download(b, &mut p.grad)?;
            }
        }
        Ok(())
    }
}

/// BN backward of conv i: dout (gradient of its fused output) -> dy; dgamma, dbeta; the shortcut's
/// gradient into `dres` when given.
#[allow(clippy::too_many_arguments)]
fn bn_backward<D: CudaDevice>(
    g: &CudaBackend<D>,
    model: &TrainModel,
    plan: &Plan,
    y: &[CudaBuf<D>],
    out: &[CudaBuf<D>],
    save_mean: &[CudaBuf<D>],
    save_invstd: &[CudaBuf<D>],
    data: &[CudaBuf<D>],
    grad: &mut [CudaBuf<D>],
    i: usize,
    n: usize,
    dout: &CudaBuf<D>,
    dy: &mut CudaBuf<D>,
    dres: Option<&mut CudaBuf<D>>,
) -> Result<()> {
    let l = &plan.layers[i];
    let c = &model.convs[i];
    let bp = BnProblem { n, c: c.geom.k, hw: l.out_hw.0 * l.out_hw.1 };
    let (dgamma, dbeta) = two_mut(grad, c.gamma, c.beta);
    g.bn_bwd_train(&bp, dout, &out[i], l.relu, &y[i], &data[c.gamma], &save_mean[i], &save_invstd[i], dy, dgamma, dbeta, dres)
}

/// Three distinct elements of `v`: shared, mutable, mutable.
fn pick3<T>(v: &mut [T], read: usize, w1: usize, w2: usize) -> (&T, &mut T, &mut T) {
    assert!(read != w1 && read != w2 && w1 != w2 && read < v.len() && w1 < v.len() && w2 < v.len(), "pick3({read}, {w1}, {w2})");
    let base = v.as_mut_ptr();
    // SAFETY: the indices are in bounds and pairwise distinct, so the references do not alias.
    unsafe { (&*base.add(read), &mut *base.add(w1), &mut *base.add(w2)) }
}
