//! The training executor: one walk of a `TrainModel`'s plan over any [`TrainBackend`] (the CPU
//! backend, a GPU, or the host emulation of the kernels): forward in train mode (BatchNorm on batch
//! statistics, running statistics updated) or eval mode, the backward pass to every parameter (no
//! gradient to the input image), and the optimizer step. Parameters, gradients, optimizer state and
//! running statistics stay in the backend's buffers for the whole run; [`TrainNet::download`] copies
//! parameters and running statistics back into the `TrainModel` (to evaluate or save it).
//!
//! Forward, per conv in execution order (a block's downsample before its last conv):
//!   y_i = conv_fprop(input_i, w_i) (identity epilogue);  out_i = act(bn_i(y_i) [+ shortcut])
//! Backward, per block in reverse with g = the gradient of the block output:
//!   last conv:  (dy, dgamma, dbeta, dshortcut) = bn_bwd(g, ReLU mask);  dw = wgrad;  da = dgrad
//!   earlier:    (dy, ..) = bn_bwd(da, ReLU mask);  dw = wgrad;  da = dgrad (into the block input)
//!   shortcut:   downsample: bn_bwd(dshortcut) -> wgrad, dgrad accumulated; identity: added
//! A block's input gradient comes out of the dgrad epilogue masked by (x > 0): the block input is a
//! ReLU output (or the max pool of one) and the BN backward it flows into applies the same mask, so
//! masking twice changes no value. The identity shortcut's gradient is added in that epilogue. All
//! buffers are allocated once for the largest batch; smaller batches use prefixes.

use super::optim::OptimKind;
use super::trainable::TrainModel;
use crate::backend::{BnEvalFwd, BnTrainBwd, BnTrainFwd, LinearProblem, TrainBackend};
use crate::error::{Error, Result};
use crate::model::Stem;
use crate::ops::adamw::AdamWConfig;
use crate::ops::batchnorm::{BnProblem, BN_EPS, BN_MOMENTUM};
use crate::ops::conv::{BnAffine, ConvProblem, DgradEpilogue, FpropEpilogue};
use crate::ops::pool::PoolProblem;
use crate::ops::sgd::SgdConfig;

/// Where a conv reads its input from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Src {
    Input,
    Pool,
    Conv(usize),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// BatchNorm on batch statistics; running statistics updated (momentum 0.1).
    Train,
    /// BatchNorm on running statistics (no backward).
    Eval,
}

pub(super) struct Layer {
    pub in_hw: (usize, usize),
    pub out_hw: (usize, usize),
    pub input: Src,
    pub residual: Option<Src>,
    pub relu: bool,
}

/// One block of the backward walk: its input, its convs in order and its downsample conv.
#[derive(Clone, Debug)]
pub(super) struct BlockPlan {
    pub input: Src,
    pub convs: Vec<usize>,
    pub downsample: Option<usize>,
}

/// The execution plan of a network: each conv's input, shortcut and sizes, the order convs run in
/// and the blocks for the backward walk.
pub(super) struct Plan {
    pub layers: Vec<Layer>,
    pub schedule: Vec<usize>,
    pub blocks: Vec<BlockPlan>,
    pub pool_hw: Option<(usize, usize)>,
    /// Positions per channel of the last block's output (the average pool's input).
    pub last_hw: usize,
}

impl Plan {
    pub fn new(model: &TrainModel, h: usize, w: usize) -> Result<Plan> {
        let min_side = if model.stem == Stem::ImageNet { 32 } else { 8 };
        if h < min_side || w < min_side {
            return Err(Error::input("image size", format!("{h}x{w} is too small for this ResNet (at least {min_side}x{min_side})")));
        }
        let mut layers: Vec<Option<Layer>> = (0..model.convs.len()).map(|_| None).collect();
        let mut schedule = Vec::new();
        let mk = |i: usize, in_hw: (usize, usize), input: Src, relu: bool| -> Layer {
            let g = model.convs[i].geom;
            Layer { in_hw, out_hw: g.out_hw(in_hw.0, in_hw.1), input, residual: None, relu }
        };
        let stem = mk(0, (h, w), Src::Input, true);
        let (mut ch, mut cw) = stem.out_hw;
        layers[0] = Some(stem);
        schedule.push(0);
        let mut cur = Src::Conv(0);
        let mut pool_hw = None;
        if model.stem == Stem::ImageNet {
            (ch, cw) = crate::model::maxpool_out_hw(ch, cw);
            pool_hw = Some((ch, cw));
            cur = Src::Pool;
        }
        let mut blocks = Vec::new();
        for b in &model.blocks {
            let mut src = cur;
            let mut hw = (ch, cw);
            let last = *b.convs.last().expect("a block has convs");
            for &i in &b.convs {
                let l = mk(i, hw, src, true);
                hw = l.out_hw;
                layers[i] = Some(l);
                if i != last {
                    schedule.push(i);
                }
                src = Src::Conv(i);
            }
            if let Some(d) = b.downsample {
                layers[d] = Some(mk(d, (ch, cw), cur, false));
                schedule.push(d);
            }
            layers[last].as_mut().expect("placed above").residual = Some(b.downsample.map(Src::Conv).unwrap_or(cur));
            schedule.push(last);
            blocks.push(BlockPlan { input: cur, convs: b.convs.clone(), downsample: b.downsample });
            cur = Src::Conv(last);
            (ch, cw) = hw;
        }
        let layers: Vec<Layer> = layers.into_iter().map(|l| l.expect("every conv is placed")).collect();
        Ok(Plan { layers, schedule, blocks, pool_hw, last_hw: ch * cw })
    }

    pub fn last_conv(&self) -> usize {
        *self.blocks.last().expect("a ResNet has blocks").convs.last().expect("a block has convs")
    }

    fn problem(&self, model: &TrainModel, i: usize, n: usize) -> ConvProblem {
        ConvProblem::new(n, self.layers[i].in_hw.0, self.layers[i].in_hw.1, &model.convs[i].geom)
    }

    fn bn_problem(&self, model: &TrainModel, i: usize, n: usize) -> BnProblem {
        let hw = self.layers[i].out_hw;
        BnProblem { n, c: model.convs[i].geom.k, hw: hw.0 * hw.1 }
    }
}

/// What a trainable network updates with (None for a teacher that only runs forward).
#[derive(Clone, Copy, Debug)]
pub struct TrainOptim {
    pub kind: OptimKind,
    pub weight_decay: f64,
}

/// The model on the backend: per parameter its data, gradient and optimizer state (SGD: momentum
/// buffer in `state1`; AdamW: m, v), per conv its running statistics.
struct ParamBufs<T> {
    data: Vec<T>,
    grad: Vec<T>,
    state1: Vec<T>,
    state2: Vec<T>,
    running_mean: Vec<T>,
    running_var: Vec<T>,
}

/// The forward's activations, kept for the backward.
struct Activations<T, I> {
    /// Raw conv outputs (BN inputs) and the activated block outputs, per conv.
    y: Vec<T>,
    out: Vec<T>,
    save_mean: Vec<T>,
    save_invstd: Vec<T>,
    pool_out: T,
    argmax: I,
    feat: T,
    logits: T,
}

/// The tensor a conv reads: the network input `x`, the stem's pool output or an earlier conv's output.
fn src<'a, T>(s: Src, x: &'a T, pool_out: &'a T, out: &'a [T]) -> &'a T {
    match s {
        Src::Input => x,
        Src::Pool => pool_out,
        Src::Conv(j) => &out[j],
    }
}

pub struct TrainNet<B: TrainBackend> {
    pub max_n: usize,
    pub h: usize,
    pub w: usize,
    plan: Plan,
    params: ParamBufs<B::Buf>,
    decays: Vec<bool>,
    optim: Option<TrainOptim>,
    steps: u32,
    acts: Activations<B::Buf, B::IntBuf>,
    g_feat: B::Buf,
    /// Gradient scratch slots, each as large as the largest activation.
    scratch: Vec<B::Buf>,
    /// Zeros and ones of the widest conv: the identity BN affine of a plain conv fprop.
    zeros: B::Buf,
    ones: B::Buf,
    n: usize,
    mode: Mode,
}

fn upload<B: TrainBackend>(b: &B, v: &[f32]) -> Result<B::Buf> {
    let mut buf = b.alloc(v.len())?;
    b.upload(v, &mut buf)?;
    Ok(buf)
}

/// A shared reference to `v[read]` and a mutable one to `v[write]` (distinct indices).
fn read_write<T>(v: &mut [T], read: usize, write: usize) -> (&T, &mut T) {
    let [r, w] = v.get_disjoint_mut([read, write]).expect("distinct scratch slots");
    (r, w)
}

impl<B: TrainBackend> TrainNet<B> {
    /// Uploads `model` and allocates activations for batches of up to `max_n` images of h x w.
    /// With `optim`, gradients and optimizer state are allocated too.
    ///
    /// Errors: a batch of 0, an image size the stem cannot take (`Error::Input`), allocation failures.
    pub fn new(b: &B, model: &TrainModel, max_n: usize, h: usize, w: usize, optim: Option<TrainOptim>) -> Result<TrainNet<B>> {
        if max_n == 0 {
            return Err(Error::Option("batch size must be at least 1".into()));
        }
        let plan = Plan::new(model, h, w)?;
        let alloc_like = |on: bool| -> Result<Vec<B::Buf>> { model.params.iter().map(|p| b.alloc(if on { p.data.len() } else { 0 })).collect() };
        let (grad, state1, state2) = match optim.map(|o| o.kind) {
            None => (alloc_like(false)?, alloc_like(false)?, alloc_like(false)?),
            Some(OptimKind::Sgd { momentum, .. }) => (alloc_like(true)?, alloc_like(momentum != 0.0)?, alloc_like(false)?),
            Some(OptimKind::AdamW { .. }) => (alloc_like(true)?, alloc_like(true)?, alloc_like(true)?),
        };
        let params = ParamBufs {
            data: model.params.iter().map(|p| upload(b, &p.data)).collect::<Result<Vec<_>>>()?,
            grad,
            state1,
            state2,
            running_mean: model.convs.iter().map(|c| upload(b, &c.running_mean)).collect::<Result<Vec<_>>>()?,
            running_var: model.convs.iter().map(|c| upload(b, &c.running_var)).collect::<Result<Vec<_>>>()?,
        };
        let mut max_act = max_n * model.in_channels * h * w;
        let (mut y, mut out, mut save_mean, mut save_invstd) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut max_k = 1;
        for (i, l) in plan.layers.iter().enumerate() {
            let k = model.convs[i].geom.k;
            max_k = max_k.max(k);
            let len = max_n * k * l.out_hw.0 * l.out_hw.1;
            max_act = max_act.max(len);
            y.push(b.alloc(len)?);
            out.push(b.alloc(len)?);
            save_mean.push(b.alloc(k)?);
            save_invstd.push(b.alloc(k)?);
        }
        let pool_len = plan.pool_hw.map_or(0, |(p, q)| max_n * model.convs[0].geom.k * p * q);
        let acts = Activations {
            y,
            out,
            save_mean,
            save_invstd,
            pool_out: b.alloc(pool_len)?,
            argmax: b.alloc_int(pool_len)?,
            feat: b.alloc(max_n * model.feat_dim)?,
            logits: b.alloc(max_n * model.num_classes)?,
        };
        Ok(TrainNet {
            max_n,
            h,
            w,
            decays: model.params.iter().map(|p| p.decays()).collect(),
            plan,
            params,
            optim,
            steps: 0,
            acts,
            g_feat: b.alloc(max_n * model.feat_dim)?,
            scratch: (0..5).map(|_| b.alloc(max_act)).collect::<Result<Vec<_>>>()?,
            zeros: b.alloc(max_k)?,
            ones: upload(b, &vec![1.0; max_k])?,
            n: 0,
            mode: Mode::Eval,
        })
    }

    /// Forward of `n` images in `x` (n x C x H x W, normalised, in the backend's buffer). Train mode
    /// updates the running statistics. Logits in [`logits`](Self::logits).
    pub fn forward(&mut self, b: &B, model: &TrainModel, x: &B::Buf, n: usize, mode: Mode) -> Result<()> {
        if n == 0 || n > self.max_n {
            return Err(Error::State(format!("batch of {n} images for a network built for at most {}", self.max_n)));
        }
        self.n = n;
        self.mode = mode;
        let (plan, p, a) = (&self.plan, &mut self.params, &mut self.acts);
        for &i in &plan.schedule {
            let l = &plan.layers[i];
            let c = &model.convs[i];
            let identity = BnAffine { mean: &self.zeros, scale: &self.ones, beta: &self.zeros };
            let epi = FpropEpilogue { bn: identity, residual: None, relu: false, y: None, stats: None };
            b.conv_fprop(&plan.problem(model, i, n), src(l.input, x, &a.pool_out, &a.out), &p.data[c.weight], epi, &mut a.y[i])?;
            let bp = plan.bn_problem(model, i, n);
            // The block output and its shortcut (an earlier conv's output, the pool's or the input).
            let (residual, out): (Option<&B::Buf>, &mut B::Buf) = match l.residual {
                None => (None, &mut a.out[i]),
                Some(Src::Input) => (Some(x), &mut a.out[i]),
                Some(Src::Pool) => (Some(&a.pool_out), &mut a.out[i]),
                Some(Src::Conv(j)) => {
                    let (r, o) = read_write(&mut a.out, j, i);
                    (Some(r), o)
                }
            };
            let (gamma, beta) = (&p.data[c.gamma], &p.data[c.beta]);
            match mode {
                Mode::Train => {
                    let (running_mean, running_var) = (&mut p.running_mean[i], &mut p.running_var[i]);
                    let (save_mean, save_invstd) = (&mut a.save_mean[i], &mut a.save_invstd[i]);
                    let t = BnTrainFwd { y: &a.y[i], gamma, beta, running_mean, running_var, residual, relu: l.relu, out, save_mean, save_invstd };
                    b.bn_fwd_train(&bp, BN_MOMENTUM, BN_EPS, t)?
                }
                Mode::Eval => {
                    let t =
                        BnEvalFwd { y: &a.y[i], gamma, beta, running_mean: &p.running_mean[i], running_var: &p.running_var[i], residual, relu: l.relu, out };
                    b.bn_fwd_eval(&bp, BN_EPS, t)?
                }
            }
            if i == 0 && plan.pool_hw.is_some() {
                let pp = PoolProblem::stem(n, c.geom.k, l.out_hw.0, l.out_hw.1);
                b.maxpool_fwd(&pp, &a.out[0], &mut a.pool_out, &mut a.argmax)?;
            }
        }
        let (f, k) = (model.feat_dim, model.num_classes);
        b.avgpool_fwd(n * f, plan.last_hw, &a.out[plan.last_conv()], &mut a.feat)?;
        b.linear_fwd(&LinearProblem { n, in_f: f, out_f: k }, &a.feat, &p.data[model.fc_weight], &p.data[model.fc_bias], &mut a.logits)
    }

    /// Logits of the last forward: the first n x classes values.
    pub fn logits(&self) -> &B::Buf {
        &self.acts.logits
    }

    /// Gradients of every parameter (overwritten) for the loss gradient `dlogits` (n x classes, in the
    /// backend's buffer) of the last train-mode forward of `x`.
    ///
    /// Errors: no train-mode forward before, a network built without an optimizer (a teacher).
    pub fn backward(&mut self, b: &B, model: &TrainModel, x: &B::Buf, dlogits: &B::Buf) -> Result<()> {
        let n = self.n;
        if self.mode != Mode::Train || n == 0 {
            return Err(Error::State("backward needs a train-mode forward first".into()));
        }
        if self.optim.is_none() {
            return Err(Error::State("backward on a network built without an optimizer (a teacher)".into()));
        }
        let (plan, p, a, s) = (&self.plan, &mut self.params, &self.acts, &mut self.scratch);
        let (f, k) = (model.feat_dim, model.num_classes);
        {
            let [dw, db] = p.grad.get_disjoint_mut([model.fc_weight, model.fc_bias]).expect("fc weight and bias are distinct");
            b.linear_wgrad(&LinearProblem { n, in_f: f, out_f: k }, &a.feat, dlogits, (dw, db))?;
        }
        b.linear_bwd_data(&LinearProblem { n, in_f: f, out_f: k }, dlogits, &p.data[model.fc_weight], &mut self.g_feat)?;
        // Scratch slots: g (block output gradient), a/b (ping-pong), r (shortcut), gin (block input).
        let (mut sg, mut sgin) = (0usize, 1usize);
        let (sa, sb, sr) = (2usize, 3usize, 4usize);
        b.avgpool_bwd(n * f, plan.last_hw, &self.g_feat, &a.out[plan.last_conv()], &mut s[sg])?;
        let bn_bwd = |p: &mut ParamBufs<B::Buf>, i: usize, dout: &B::Buf, dy: &mut B::Buf, dresidual: Option<&mut B::Buf>| -> Result<()> {
            let c = &model.convs[i];
            let [dgamma, dbeta] = p.grad.get_disjoint_mut([c.gamma, c.beta]).expect("gamma and beta are distinct");
            let l = &plan.layers[i];
            let t = BnTrainBwd {
                dout,
                out: &a.out[i],
                relu: l.relu,
                y: &a.y[i],
                gamma: &p.data[c.gamma],
                save_mean: &a.save_mean[i],
                save_invstd: &a.save_invstd[i],
                dy,
                dgamma,
                dbeta,
                dresidual,
            };
            b.bn_bwd_train(&plan.bn_problem(model, i, n), t)
        };
        for blk in plan.blocks.iter().rev() {
            let input = src(blk.input, x, &a.pool_out, &a.out);
            let ids = &blk.convs;
            // Last conv: BN backward with the ReLU mask, the shortcut's gradient into r.
            {
                let [dout, dy, dres] = s.get_disjoint_mut([sg, sa, sr]).expect("distinct scratch slots");
                bn_bwd(p, *ids.last().expect("a block has convs"), dout, dy, Some(dres))?;
            }
            // The main path back: dy in a; wgrad; dgrad into b (or gin for the first conv).
            for j in (0..ids.len()).rev() {
                let i = ids[j];
                let pr = plan.problem(model, i, n);
                let cin = if j == 0 { input } else { &a.out[ids[j - 1]] };
                b.conv_wgrad(&pr, cin, &s[sa], &mut p.grad[model.convs[i].weight])?;
                if j == 0 {
                    let [dy, dr, gin] = s.get_disjoint_mut([sa, sr, sgin]).expect("distinct scratch slots");
                    let epi = match blk.downsample {
                        None => DgradEpilogue::MaskInput { add: Some(&*dr), accumulate: false },
                        Some(_) => DgradEpilogue::Store,
                    };
                    b.conv_dgrad(&pr, dy, &p.data[model.convs[i].weight], cin, epi, gin)?;
                } else {
                    let (dy, db) = read_write(s, sa, sb);
                    b.conv_dgrad(&pr, dy, &p.data[model.convs[i].weight], cin, DgradEpilogue::Store, db)?;
                    let (dout, dy) = read_write(s, sb, sa);
                    bn_bwd(p, ids[j - 1], dout, dy, None)?;
                }
            }
            if let Some(d) = blk.downsample {
                let pr = plan.problem(model, d, n);
                {
                    let (dout, dy) = read_write(s, sr, sa);
                    bn_bwd(p, d, dout, dy, None)?;
                }
                b.conv_wgrad(&pr, input, &s[sa], &mut p.grad[model.convs[d].weight])?;
                let (dy, gin) = read_write(s, sa, sgin);
                b.conv_dgrad(&pr, dy, &p.data[model.convs[d].weight], input, DgradEpilogue::MaskInput { add: None, accumulate: true }, gin)?;
            }
            std::mem::swap(&mut sg, &mut sgin);
        }
        // Stem: (max pool backward) -> BN backward with the ReLU mask -> wgrad (no input gradient).
        let l0 = &plan.layers[0];
        if plan.pool_hw.is_some() {
            let pp = PoolProblem::stem(n, model.convs[0].geom.k, l0.out_hw.0, l0.out_hw.1);
            let (dout, dx) = read_write(s, sg, sgin);
            b.maxpool_bwd(&pp, dout, &a.argmax, dx)?;
            std::mem::swap(&mut sg, &mut sgin);
        }
        {
            let (dout, dy) = read_write(s, sg, sa);
            bn_bwd(p, 0, dout, dy, None)?;
        }
        b.conv_wgrad(&plan.problem(model, 0, n), x, &s[sa], &mut p.grad[model.convs[0].weight])
    }

    /// One optimizer step of every parameter at learning rate `lr`, weight decay on the tensors with
    /// more than one dimension only (conv and fc weights; BN parameters and biases excluded), as the
    /// official recipes (docs/algorithm.md section 4). Errors: a network built without an optimizer.
    pub fn step(&mut self, b: &B, lr: f64) -> Result<()> {
        let o = self.optim.ok_or_else(|| Error::State("optimizer step on a network built without an optimizer".into()))?;
        let first = self.steps == 0;
        self.steps += 1;
        let p = &mut self.params;
        for pi in 0..p.data.len() {
            let wd = if self.decays[pi] { o.weight_decay } else { 0.0 };
            match o.kind {
                OptimKind::Sgd { momentum, nesterov } => {
                    let cfg = SgdConfig { lr: lr as f32, momentum: momentum as f32, weight_decay: wd as f32, nesterov };
                    let buf = if momentum != 0.0 { Some(&mut p.state1[pi]) } else { None };
                    b.sgd_step(&cfg, &mut p.data[pi], &p.grad[pi], buf, first)?;
                }
                OptimKind::AdamW { beta1, beta2, eps } => {
                    let cfg = AdamWConfig { lr, beta1, beta2, eps, weight_decay: wd };
                    b.adamw_step(&cfg, self.steps, &mut p.data[pi], &p.grad[pi], (&mut p.state1[pi], &mut p.state2[pi]))?;
                }
            }
        }
        Ok(())
    }

    /// Copies the parameters and running statistics into `model` (waits for the backend).
    pub fn download(&self, b: &B, model: &mut TrainModel) -> Result<()> {
        for (param, buf) in model.params.iter_mut().zip(&self.params.data) {
            b.download(buf, &mut param.data)?;
        }
        for ((c, m), v) in model.convs.iter_mut().zip(&self.params.running_mean).zip(&self.params.running_var) {
            b.download(m, &mut c.running_mean)?;
            b.download(v, &mut c.running_var)?;
        }
        Ok(())
    }

    /// Replaces the gradients with `model`'s `Param::grad` (tests step on reference gradients).
    /// Errors: a network without an optimizer, and the backend's transfer errors.
    pub fn upload_grads(&mut self, b: &B, model: &TrainModel) -> Result<()> {
        if self.optim.is_none() {
            return Err(Error::State("a network built without an optimizer keeps no gradients".into()));
        }
        for (param, buf) in model.params.iter().zip(&mut self.params.grad) {
            b.upload(&param.grad, buf)?;
        }
        Ok(())
    }

    /// Copies the gradients of the last backward into `model`'s `Param::grad` (for tests; a network
    /// without an optimizer has none and leaves them as they are).
    pub fn download_grads(&self, b: &B, model: &mut TrainModel) -> Result<()> {
        if self.optim.is_none() {
            return Ok(());
        }
        for (param, buf) in model.params.iter_mut().zip(&self.params.grad) {
            b.download(buf, &mut param.grad)?;
        }
        Ok(())
    }
}
