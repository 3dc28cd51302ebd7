//! The training executor: forward in train mode (BatchNorm on batch statistics, running statistics
//! updated) or eval mode, and the backward pass to every parameter of a `TrainModel` (no gradient to
//! the input image). Activations are kept per conv; gradients go through five scratch buffers.
//!
//! Forward, per conv in execution order (a block's downsample before its last conv):
//!   y_i = conv(input_i, w_i);  out_i = act(bn_i(y_i) [+ shortcut])
//! Backward, per block in reverse with g = gradient of the block output:
//!   last conv:  (dy, dgamma, dbeta, dshortcut) = bn_bwd(g, relu mask);  dw = wgrad; da = dgrad
//!   earlier:    (dy, ..) = bn_bwd(da, relu mask);  dw = wgrad;  da = dgrad  (into the block input)
//!   shortcut:   downsample: bn_bwd(dshortcut) -> wgrad, dgrad accumulated; identity: added
//! All buffers are allocated once for the largest batch; smaller batches use prefixes.

use crate::error::{Error, Result};
use crate::model::Stem;
use crate::ops::batchnorm::{cpu as bn, BnProblem, BN_EPS, BN_MOMENTUM};
use crate::ops::conv::cpu::im2col as conv;
use crate::ops::conv::ConvProblem;
use crate::ops::linear::cpu as linear;
use crate::ops::pool::{cpu as pool, PoolProblem};

use super::model::TrainModel;

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

/// The execution plan of a network: each conv's input, shortcut and sizes, the order convs run in
/// and the blocks for the backward walk. Shared by [`TrainNet`] and the CUDA executor
/// (`super::cuda_net`).
pub(super) struct Plan {
    pub layers: Vec<Layer>,
    pub schedule: Vec<usize>,
    /// (block input, conv ids, downsample id) per block.
    pub blocks: Vec<(Src, Vec<usize>, Option<usize>)>,
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
            let last = *b.convs.last().unwrap();
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
            layers[last].as_mut().unwrap().residual = Some(b.downsample.map(Src::Conv).unwrap_or(cur));
            schedule.push(last);
            blocks.push((cur, b.convs.clone(), b.downsample));
            cur = Src::Conv(last);
            (ch, cw) = hw;
        }
        let layers: Vec<Layer> = layers.into_iter().map(|l| l.expect("every conv is placed")).collect();
        Ok(Plan { layers, schedule, blocks, pool_hw, last_hw: ch * cw })
    }

    pub fn last_conv(&self) -> usize {
        *self.blocks.last().unwrap().1.last().unwrap()
    }
}

pub struct TrainNet {
    pub max_n: usize,
    pub h: usize,
    pub w: usize,
    plan: Plan,
    y: Vec<Vec<f32>>,
    out: Vec<Vec<f32>>,
    save_mean: Vec<Vec<f32>>,
    save_invstd: Vec<Vec<f32>>,
    pool_out: Vec<f32>,
    argmax: Vec<i32>,
    feat: Vec<f32>,
    /// Logits of the last forward (n x classes prefix).
    pub logits: Vec<f32>,
    g_feat: Vec<f32>,
    scratch: Vec<Vec<f32>>,
    /// Batch size of the last forward.
    n: usize,
    mode: Mode,
}

pub(super) fn problem(model: &TrainModel, l: &Layer, i: usize, n: usize) -> ConvProblem {
    ConvProblem::new(n, l.in_hw.0, l.in_hw.1, &model.convs[i].geom)
}

impl TrainNet {
    pub fn new(model: &TrainModel, max_n: usize, h: usize, w: usize) -> Result<TrainNet> {
        if max_n == 0 {
            return Err(Error::Option("batch size must be at least 1".into()));
        }
        let plan = Plan::new(model, h, w)?;
        let mut max_act = max_n * model.in_channels * h * w;
        let mut y = Vec::new();
        let mut out = Vec::new();
        let mut save_mean = Vec::new();
        let mut save_invstd = Vec::new();
        for (i, l) in plan.layers.iter().enumerate() {
            let k = model.convs[i].geom.k;
            let len = max_n * k * l.out_hw.0 * l.out_hw.1;
            max_act = max_act.max(len);
            y.push(vec![0.0; len]);
            out.push(vec![0.0; len]);
            save_mean.push(vec![0.0; k]);
            save_invstd.push(vec![0.0; k]);
        }
        let pool_len = plan.pool_hw.map_or(0, |(p, q)| max_n * model.convs[0].geom.k * p * q);
        Ok(TrainNet {
            max_n,
            h,
            w,
            plan,
            y,
            out,
            save_mean,
            save_invstd,
            pool_out: vec![0.0; pool_len],
            argmax: vec![0; pool_len],
            feat: vec![0.0; max_n * model.feat_dim],
            logits: vec![0.0; max_n * model.num_classes],
            g_feat: vec![0.0; max_n * model.feat_dim],
            scratch: (0..5).map(|_| vec![0.0; max_act]).collect(),
            n: 0,
            mode: Mode::Eval,
        })
    }

    /// Forward of `n` images `x` (n x C x H x W, normalised). Train mode updates the model's running
    /// statistics. Logits in `self.logits[..n * classes]`.
    pub fn forward(&mut self, model: &mut TrainModel, x: &[f32], n: usize, mode: Mode) -> Result<()> {
        if n == 0 || n > self.max_n {
            return Err(Error::Option(format!("batch of {n} images for a network built for at most {}", self.max_n)));
        }
        let need = n * model.in_channels * self.h * self.w;
        if x.len() != need {
            return Err(Error::input("batch", format!("{} values for {n} images of {}x{}x{}", x.len(), model.in_channels, self.h, self.w)));
        }
        self.n = n;
        self.mode = mode;
        for si in 0..self.plan.schedule.len() {
            let i = self.plan.schedule[si];
            let l = &self.plan.layers[i];
            let p = problem(model, l, i, n);
            let out_len = p.output_len();
            let resolve = |s: Src, out: &[Vec<f32>], pool_out: &[f32]| -> *const [f32] {
                match s {
                    Src::Input => x as *const [f32],
                    Src::Pool => &pool_out[..n * model.convs[0].geom.k * self.plan.pool_hw.unwrap().0 * self.plan.pool_hw.unwrap().1] as *const [f32],
                    Src::Conv(j) => {
                        let len = n * model.convs[j].geom.k * self.plan.layers[j].out_hw.0 * self.plan.layers[j].out_hw.1;
                        &out[j][..len] as *const [f32]
                    }
                }
            };
            let input = resolve(l.input, &self.out, &self.pool_out);
            let residual = l.residual.map(|r| resolve(r, &self.out, &self.pool_out));
            // SAFETY: a conv reads only the network input, the pool output or earlier convs' outputs,
            // never its own `y[i]` / `out[i]`, which are the only buffers written here.
            let (input, residual) = unsafe { (&*input, residual.map(|r| &*r)) };
            debug_assert!(l.input != Src::Conv(i) && l.residual != Some(Src::Conv(i)));
            let (k, wi, gi, bi) = (model.convs[i].geom.k, model.convs[i].weight, model.convs[i].gamma, model.convs[i].beta);
            let yi = &mut self.y[i][..out_len];
            conv::fprop(&p, input, &model.params[wi].data, yi);
            let bp = BnProblem { n, c: k, hw: l.out_hw.0 * l.out_hw.1 };
            let (gamma, beta) = (&model.params[gi].data, &model.params[bi].data);
            let oi = &mut self.out[i][..out_len];
            match mode {
                Mode::Train => {
                    let c = &mut model.convs[i];
                    bn::fwd_train(
                        &bp,
                        yi,
                        gamma,
                        beta,
                        BN_MOMENTUM,
                        BN_EPS,
                        &mut c.running_mean,
                        &mut c.running_var,
                        residual,
                        l.relu,
                        oi,
                        &mut self.save_mean[i],
                        &mut self.save_invstd[i],
                    );
                }
                Mode::Eval => {
                    let c = &model.convs[i];
                    bn::fwd_eval(&bp, yi, gamma, beta, &c.running_mean, &c.running_var, BN_EPS, residual, l.relu, oi)
                }
            }
            if i == 0 {
                if let Some((pq, qq)) = self.plan.pool_hw {
                    let pp = PoolProblem::stem(n, k, l.out_hw.0, l.out_hw.1);
                    let len = n * k * pq * qq;
                    pool::maxpool_fwd(&pp, &self.out[0][..out_len], &mut self.pool_out[..len], &mut self.argmax[..len]);
                }
            }
        }
        let last = self.plan.last_conv();
        let f = model.feat_dim;
        let last_len = n * f * self.plan.last_hw;
        pool::avgpool_fwd(self.plan.last_hw, &self.out[last][..last_len], &mut self.feat[..n * f]);
        let k = model.num_classes;
        linear::fwd(n, f, k, &self.feat[..n * f], &model.params[model.fc_weight].data, &model.params[model.fc_bias].data, &mut self.logits[..n * k]);
        Ok(())
    }

    /// Logits of the last forward, n x classes.
    pub fn logits(&self, classes: usize) -> &[f32] {
        &self.logits[..self.n * classes]
    }

    /// Gradients of every parameter (overwriting `Param::grad`) for the loss gradient `dlogits`
    /// (n x classes) of the last train-mode forward of `x`.
    pub fn backward(&mut self, model: &mut TrainModel, x: &[f32], dlogits: &[f32]) -> Result<()> {
        let n = self.n;
        if self.mode != Mode::Train || n == 0 {
            return Err(Error::Option("backward needs a train-mode forward first".into()));
        }
        let (f, k) = (model.feat_dim, model.num_classes);
        if dlogits.len() != n * k {
            return Err(Error::input("logit gradient", format!("{} values for {n} x {k} logits", dlogits.len())));
        }
        {
            let (fw, rest) = model.params.split_at_mut(model.fc_bias);
            linear::wgrad(n, f, k, &self.feat[..n * f], dlogits, &mut fw[model.fc_weight].grad, &mut rest[0].grad);
        }
        linear::bwd_data(n, f, k, dlogits, &model.params[model.fc_weight].data, &mut self.g_feat[..n * f]);
        // Scratch slots: g (block output gradient), a/b (ping-pong), r (shortcut), gin (block input).
        let (mut g, mut gin) = (0usize, 1usize);
        let (a, b, r) = (2usize, 3usize, 4usize);
        pool::avgpool_bwd_unmasked(self.plan.last_hw, &self.g_feat[..n * f], &mut self.scratch[g][..n * f * self.plan.last_hw]);
        let mut scratch = std::mem::take(&mut self.scratch);
        let out_lens: Vec<usize> =
            (0..self.plan.layers.len()).map(|i| n * model.convs[i].geom.k * self.plan.layers[i].out_hw.0 * self.plan.layers[i].out_hw.1).collect();
        for bi in (0..self.plan.blocks.len()).rev() {
            let (input, ids, ds) = self.plan.blocks[bi].clone();
            let in_len = self.src_len(model, input, n);
            let input_buf: &[f32] = self.src_buf(input, x, in_len);
            let lastc = *ids.last().unwrap();
            let out_len = |i: usize| out_lens[i];
            // Last conv: BN backward with the ReLU mask, shortcut gradient into r.
            {
                let len = out_len(lastc);
                let [sg, sa, sr] = pick(&mut scratch, [g, a, r]);
                self.bn_backward(model, lastc, n, &sg[..len], &mut sa[..len], Some(&mut sr[..len]));
            }
            // Walk the main path back: dy in a; wgrad; dgrad into b (or gin for the first conv).
            for j in (0..ids.len()).rev() {
                let i = ids[j];
                let p = problem(model, &self.plan.layers[i], i, n);
                let cin: &[f32] = if j == 0 { input_buf } else { &self.out[ids[j - 1]][..out_len(ids[j - 1])] };
                let [sa, sb, sgin] = pick(&mut scratch, [a, b, gin]);
                conv::wgrad(&p, cin, &sa[..p.output_len()], &mut model.params[model.convs[i].weight].grad);
                if j == 0 {
                    conv::dgrad(&p, &sa[..p.output_len()], &model.params[model.convs[i].weight].data, &mut sgin[..in_len], false);
                } else {
                    conv::dgrad(&p, &sa[..p.output_len()], &model.params[model.convs[i].weight].data, &mut sb[..p.input_len()], false);
                    let prev = ids[j - 1];
                    let len = out_len(prev);
                    let [sa, sb] = pick(&mut scratch, [a, b]);
                    self.bn_backward(model, prev, n, &sb[..len], &mut sa[..len], None);
                }
            }
            match ds {
                Some(d) => {
                    let p = problem(model, &self.plan.layers[d], d, n);
                    let len = p.output_len();
                    let [sr, sa, sgin] = pick(&mut scratch, [r, a, gin]);
                    self.bn_backward(model, d, n, &sr[..len], &mut sa[..len], None);
                    conv::wgrad(&p, input_buf, &sa[..len], &mut model.params[model.convs[d].weight].grad);
                    conv::dgrad(&p, &sa[..len], &model.params[model.convs[d].weight].data, &mut sgin[..in_len], true);
                }
                None => {
                    let [sr, sgin] = pick(&mut scratch, [r, gin]);
                    sgin[..in_len].iter_mut().zip(&sr[..in_len]).for_each(|(d, s)| *d += s);
                }
            }
            std::mem::swap(&mut g, &mut gin);
        }
        // Stem: (max pool backward) -> BN backward with the ReLU mask -> wgrad (no input gradient).
        let stem_len = n * model.convs[0].geom.k * self.plan.layers[0].out_hw.0 * self.plan.layers[0].out_hw.1;
        if let Some((pq, qq)) = self.plan.pool_hw {
            let pp = PoolProblem::stem(n, model.convs[0].geom.k, self.plan.layers[0].out_hw.0, self.plan.layers[0].out_hw.1);
            let len = n * model.convs[0].geom.k * pq * qq;
            let [sg, sgin] = pick(&mut scratch, [g, gin]);
            pool::maxpool_bwd(&pp, &sg[..len], &self.argmax[..len], &mut sgin[..stem_len]);
            std::mem::swap(&mut g, &mut gin);
        }
        {
            let [sg, sa] = pick(&mut scratch, [g, a]);
            self.bn_backward(model, 0, n, &sg[..stem_len], &mut sa[..stem_len], None);
            let p = problem(model, &self.plan.layers[0], 0, n);
            conv::wgrad(&p, x, &sa[..stem_len], &mut model.params[model.convs[0].weight].grad);
        }
        self.scratch = scratch;
        Ok(())
    }

    fn src_len(&self, model: &TrainModel, s: Src, n: usize) -> usize {
        match s {
            Src::Input => n * model.in_channels * self.h * self.w,
            Src::Pool => {
                let (p, q) = self.plan.pool_hw.unwrap();
                n * model.convs[0].geom.k * p * q
            }
            Src::Conv(j) => n * model.convs[j].geom.k * self.plan.layers[j].out_hw.0 * self.plan.layers[j].out_hw.1,
        }
    }

    fn src_buf<'a>(&'a self, s: Src, x: &'a [f32], len: usize) -> &'a [f32] {
        match s {
            Src::Input => &x[..len],
            Src::Pool => &self.pool_out[..len],
            Src::Conv(j) => &self.out[j][..len],
        }
    }

    /// BN backward of conv i: dout (gradient of its fused output) -> dy; parameter gradients; shortcut.
    fn bn_backward(&self, model: &mut TrainModel, i: usize, n: usize, dout: &[f32], dy: &mut [f32], dres: Option<&mut [f32]>) {
        let l = &self.plan.layers[i];
        let c = &model.convs[i];
        let (gi, bi, k) = (c.gamma, c.beta, c.geom.k);
        let bp = BnProblem { n, c: k, hw: l.out_hw.0 * l.out_hw.1 };
        let len = bp.len();
        let mut dgamma = std::mem::take(&mut model.params[gi].grad);
        let mut dbeta = std::mem::take(&mut model.params[bi].grad);
        bn::bwd_train(
            &bp,
            dout,
            &self.out[i][..len],
            l.relu,
            &self.y[i][..len],
            &model.params[gi].data,
            &self.save_mean[i],
            &self.save_invstd[i],
            dy,
            &mut dgamma,
            &mut dbeta,
            dres,
        );
        model.params[gi].grad = dgamma;
        model.params[bi].grad = dbeta;
    }
}

/// Distinct mutable borrows of scratch slots; panics if two indices coincide.
fn pick<const K: usize>(v: &mut [Vec<f32>], idx: [usize; K]) -> [&mut Vec<f32>; K] {
    for (i, a) in idx.iter().enumerate() {
        assert!(*a < v.len() && idx[i + 1..].iter().all(|b| b != a), "scratch slots {idx:?} must be distinct");
    }
    let base = v.as_mut_ptr();
    // SAFETY: the indices are in bounds and pairwise distinct, so the borrows do not alias.
    idx.map(|i| unsafe { &mut *base.add(i) })
}
