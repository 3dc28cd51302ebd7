//! The network executor: a ResNet's weights and activations on one backend for a fixed batch shape,
//! running the eval-mode forward (with BN-input statistics), the recover losses and the backward pass
//! to the input image. Everything is allocated once in [`Net::new`]; the passes allocate nothing.
//!
//! Backward, per block with pre-ReLU-sum gradient g (from the next block or the head):
//!   dy_last = bn_backward(g)                                   (BN scale + BN-matching term)
//!   dy_prev = dgrad(conv_j, dy) with epilogue BnRelu           (ReLU mask, BN scale, BN matching)
//!   g_in    = dgrad(conv_1, dy) + shortcut(g), masked by (block input > 0)
//! The mask on the block input is the ReLU of whatever produced it (the previous block, or the stem,
//! where masking the max-pool output equals masking the pooled ReLU at each argmax).

use crate::backend::{Backend, BnBackwardIo, BnMatchIo, LinearProblem, SoftmaxCeIo};
use crate::error::{Error, Result};
use crate::model::{ResNet, Stem};
use crate::ops::batchnorm::BnProblem;
use crate::ops::conv::{BnAffine, ConvProblem, DgradEpilogue, FpropEpilogue};
use crate::ops::pool::PoolProblem;

/// Where a conv reads its input from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Src {
    /// The network input.
    Input,
    /// The stem's max-pool output.
    Pool,
    /// `out` of conv i (module order).
    Conv(usize),
}

/// One conv + BN's weights on the backend.
struct ConvParams<B: Backend> {
    problem: ConvProblem,
    input: Src,
    residual: Option<Src>,
    relu: bool,
    w: B::Buf,
    bn_mean: B::Buf,
    bn_scale: B::Buf,
    bn_beta: B::Buf,
    /// What the BN-matching loss pulls the batch's input statistics toward: the running mean and
    /// variance (the official loss) unless [`Net::set_bn_targets`] replaced them (class-wise
    /// statistics, `recover::class_stats`).
    target_mean: B::Buf,
    target_var: B::Buf,
}

struct BlockIds {
    input: Src,
    convs: Vec<usize>,
    downsample: Option<usize>,
}

pub struct Net<B: Backend> {
    pub n: usize,
    pub h: usize,
    pub w: usize,
    pub in_channels: usize,
    pub classes: usize,
    pub feat_dim: usize,
    convs: Vec<ConvParams<B>>,
    /// Execution order of the convs (a downsample runs before the conv that adds it).
    schedule: Vec<usize>,
    blocks: Vec<BlockIds>,
    pool: Option<(PoolProblem, B::Buf, B::IntBuf)>,
    /// Raw conv outputs (BN inputs), activated outputs, [mean, var] stats and BN-matching coefficients.
    y: Vec<B::Buf>,
    out: Vec<B::Buf>,
    stats: Vec<B::Buf>,
    coef: Vec<B::Buf>,
    fc_w: B::Buf,
    fc_b: B::Buf,
    /// Global-average-pooled features of the last block (n x feat_dim), the fc layer's input.
    pub feat: B::Buf,
    pub logits: B::Buf,
    g_logits: B::Buf,
    g_feat: B::Buf,
    /// Gradient scratch, each as large as the largest activation.
    g: Vec<B::Buf>,
    /// [cross-entropy, r_0, r_1, ...]: unweighted per-BN-layer matching losses.
    pub losses: B::Buf,
    targets: B::IntBuf,
    last_hw: usize,
}

/// `v[r]` shared and `v[w]` mutable (distinct scratch slots).
fn split<T>(v: &mut [T], r: usize, w: usize) -> (&T, &mut T) {
    let [r, w] = v.get_disjoint_mut([r, w]).expect("distinct scratch slots");
    (r, w)
}

/// `v[a]`, `v[b]` shared and `v[w]` mutable (distinct scratch slots).
fn split2<T>(v: &mut [T], a: usize, b: usize, w: usize) -> (&T, &T, &mut T) {
    let [a, b, w] = v.get_disjoint_mut([a, b, w]).expect("distinct scratch slots");
    (a, b, w)
}

fn upload<B: Backend>(backend: &B, data: &[f32]) -> Result<B::Buf> {
    let mut b = backend.alloc(data.len())?;
    backend.upload(data, &mut b)?;
    Ok(b)
}

/// Uploads one conv + BN; returns its index and output size (P, Q).
#[allow(clippy::too_many_arguments)]
fn push_conv<B: Backend>(
    backend: &B,
    convs: &mut Vec<ConvParams<B>>,
    c: &crate::model::ConvBn,
    n: usize,
    h: usize,
    w: usize,
    input: Src,
    relu: bool,
) -> Result<(usize, usize, usize)> {
    let problem = ConvProblem::new(n, h, w, &c.geom);
    convs.push(ConvParams {
        problem,
        input,
        residual: None,
        relu,
        w: upload(backend, &c.weight)?,
        bn_mean: upload(backend, &c.bn.running_mean)?,
        bn_scale: upload(backend, &c.bn.scale)?,
        bn_beta: upload(backend, &c.bn.beta)?,
        target_mean: upload(backend, &c.bn.running_mean)?,
        target_var: upload(backend, &c.bn.running_var)?,
    });
    Ok((convs.len() - 1, problem.p as usize, problem.q as usize))
}

impl<B: Backend> Net<B> {
    pub fn new(backend: &B, model: &ResNet, n: usize, h: usize, w: usize) -> Result<Net<B>> {
        if n == 0 {
            return Err(Error::Option("batch size must be at least 1".into()));
        }
        let min_side = model.min_side();
        if h < min_side || w < min_side {
            return Err(Error::input("image size", format!("{h}x{w} is too small for this ResNet (at least {min_side}x{min_side})")));
        }
        let mut convs = Vec::new();
        let mut schedule = Vec::new();
        let mut blocks = Vec::new();
        let (stem_id, mut ch, mut cw) = push_conv(backend, &mut convs, &model.stem_conv, n, h, w, Src::Input, true)?;
        schedule.push(stem_id);
        let mut pool = None;
        let mut cur = Src::Conv(stem_id);
        if model.stem == Stem::ImageNet {
            let pp = PoolProblem::stem(n, model.stem_conv.geom.k, ch, cw);
            pool = Some((pp, backend.alloc(pp.output_len())?, backend.alloc_int(pp.output_len())?));
            (ch, cw) = (pp.p as usize, pp.q as usize);
            cur = Src::Pool;
        }
        for b in &model.blocks {
            let mut ids = Vec::new();
            let mut src = cur;
            let (mut bh, mut bw) = (ch, cw);
            let last = b.convs.len() - 1;
            // Convs are pushed in module order (their BN index); the downsample is scheduled before the last conv.
            let mut pending_last = None;
            for (j, c) in b.convs.iter().enumerate() {
                let (id, p, q) = push_conv(backend, &mut convs, c, n, bh, bw, src, true)?;
                ids.push(id);
                if j == last {
                    pending_last = Some(id);
                } else {
                    schedule.push(id);
                }
                src = Src::Conv(id);
                (bh, bw) = (p, q);
            }
            let last_id = pending_last.unwrap();
            let ds = match &b.downsample {
                Some(d) => {
                    let (id, _, _) = push_conv(backend, &mut convs, d, n, ch, cw, cur, false)?;
                    schedule.push(id);
                    Some(id)
                }
                None => None,
            };
            convs[last_id].residual = Some(ds.map(Src::Conv).unwrap_or(cur));
            schedule.push(last_id);
            blocks.push(BlockIds { input: cur, convs: ids, downsample: ds });
            cur = Src::Conv(last_id);
            (ch, cw) = (bh, bw);
        }
        debug_assert_eq!(schedule.len(), convs.len());

        let mut y = Vec::new();
        let mut out = Vec::new();
        let mut stats = Vec::new();
        let mut coef = Vec::new();
        let mut max_act = n * model.in_channels * h * w;
        for c in &convs {
            let len = c.problem.output_len();
            max_act = max_act.max(len);
            y.push(backend.alloc(len)?);
            out.push(backend.alloc(len)?);
            stats.push(backend.alloc(2 * c.problem.k as usize)?);
            coef.push(backend.alloc(3 * c.problem.k as usize)?);
        }
        let g = (0..6).map(|_| backend.alloc(max_act)).collect::<Result<Vec<_>>>()?;
        let num_bn = convs.len();
        Ok(Net {
            n,
            h,
            w,
            in_channels: model.in_channels,
            classes: model.num_classes,
            feat_dim: model.feat_dim,
            convs,
            schedule,
            blocks,
            pool,
            y,
            out,
            stats,
            coef,
            fc_w: upload(backend, &model.fc_weight)?,
            fc_b: upload(backend, &model.fc_bias)?,
            feat: backend.alloc(n * model.feat_dim)?,
            logits: backend.alloc(n * model.num_classes)?,
            g_logits: backend.alloc(n * model.num_classes)?,
            g_feat: backend.alloc(n * model.feat_dim)?,
            g,
            losses: backend.alloc(1 + num_bn)?,
            targets: backend.alloc_int(n)?,
            last_hw: ch * cw,
        })
    }

    /// The fc head's shape for this batch.
    fn fc_problem(&self) -> LinearProblem {
        LinearProblem { n: self.n, in_f: self.feat_dim, out_f: self.classes }
    }

    pub fn num_bn_layers(&self) -> usize {
        self.convs.len()
    }

    pub fn input_len(&self) -> usize {
        self.n * self.in_channels * self.h * self.w
    }

    /// Channels of BN layer l.
    pub fn bn_channels(&self, l: usize) -> usize {
        self.convs[l].problem.k as usize
    }

    /// Elements each BN layer's statistics average over (N * P * Q).
    pub fn bn_count(&self, l: usize) -> usize {
        let p = &self.convs[l].problem;
        (p.n * p.p * p.q) as usize
    }

    /// [mean (K), biased var (K)] of BN layer l's input from the last forward.
    pub fn bn_stats(&self, l: usize) -> &B::Buf {
        &self.stats[l]
    }

    /// Replaces what BN layer l's matching loss aims at (K means and K biased variances; initially
    /// the running statistics). The normalisation itself keeps the running statistics.
    /// Errors: `Error::Input` when a length is not the layer's channel count.
    pub fn set_bn_targets(&mut self, backend: &B, l: usize, mean: &[f32], var: &[f32]) -> Result<()> {
        let k = self.bn_channels(l);
        if mean.len() != k || var.len() != k {
            return Err(Error::input("BN targets", format!("{}/{} values for BN layer {l} of {k} channels", mean.len(), var.len())));
        }
        let c = &mut self.convs[l];
        backend.upload(mean, &mut c.target_mean)?;
        backend.upload(var, &mut c.target_var)
    }

    pub fn set_targets(&mut self, backend: &B, targets: &[i32]) -> Result<()> {
        if targets.len() != self.n {
            return Err(Error::input("targets", format!("{} targets for a batch of {}", targets.len(), self.n)));
        }
        if let Some(t) = targets.iter().find(|&&t| t < 0 || t as usize >= self.classes) {
            return Err(Error::input("targets", format!("class {t} is outside 0..{}", self.classes)));
        }
        backend.upload_int(targets, &mut self.targets)
    }

    /// Eval-mode forward of `x` (N C H W): logits, and every BN input's mean and variance.
    pub fn forward(&mut self, backend: &B, x: &B::Buf) -> Result<()> {
        for &i in &self.schedule {
            let c = &self.convs[i];
            let pool_out = self.pool.as_ref().map(|p| &p.1);
            let resolve = |s: Src, out: &[B::Buf]| -> *const B::Buf {
                match s {
                    Src::Input => x as *const _,
                    Src::Pool => pool_out.expect("pool") as *const _,
                    Src::Conv(j) => &out[j] as *const _,
                }
            };
            let input_ptr = resolve(c.input, &self.out);
            let res_ptr = c.residual.map(|r| resolve(r, &self.out));
            let out_i: *mut B::Buf = &mut self.out[i];
            // SAFETY: a conv never reads its own output buffer (inputs and residuals are earlier
            // convs, the pool output or the network input), so these borrows do not alias.
            let (input, residual, out_i) = unsafe {
                assert!(c.input != Src::Conv(i) && c.residual != Some(Src::Conv(i)));
                (&*input_ptr, res_ptr.map(|r| &*r), &mut *out_i)
            };
            let epi = FpropEpilogue {
                bn: BnAffine { mean: &c.bn_mean, scale: &c.bn_scale, beta: &c.bn_beta },
                residual,
                relu: c.relu,
                y: Some(&mut self.y[i]),
                stats: Some(&mut self.stats[i]),
            };
            backend.conv_fprop(&c.problem, input, &c.w, epi, out_i)?;
            if i == 0 {
                if let Some((pp, pout, argmax)) = &mut self.pool {
                    backend.maxpool_fwd(pp, &self.out[0], pout, argmax)?;
                }
            }
        }
        let last = self.blocks.last().map(|b| *b.convs.last().unwrap()).unwrap_or(0);
        backend.avgpool_fwd(self.n * self.feat_dim, self.last_hw, &self.out[last], &mut self.feat)?;
        backend.linear_fwd(&self.fc_problem(), &self.feat, &self.fc_w, &self.fc_b, &mut self.logits)
    }

    /// Cross-entropy against the targets and every layer's BN-matching term; `bn_weights[l]` is the
    /// factor on layer l's term in the total loss (r_bn times the first-BN multiplier for l = 0).
    pub fn losses(&mut self, backend: &B, bn_weights: &[f64]) -> Result<()> {
        assert_eq!(bn_weights.len(), self.convs.len());
        backend.softmax_ce(SoftmaxCeIo {
            n: self.n,
            classes: self.classes,
            logits: &self.logits,
            targets: &self.targets,
            dlogits: &mut self.g_logits,
            losses: &mut self.losses,
            slot: 0,
        })?;
        for (l, c) in self.convs.iter().enumerate() {
            let count = self.bn_count(l);
            backend.bn_match(BnMatchIo {
                stats: &self.stats[l],
                target_mean: &c.target_mean,
                target_var: &c.target_var,
                count,
                weight: bn_weights[l],
                coef: &mut self.coef[l],
                losses: &mut self.losses,
                slot: 1 + l,
            })?;
        }
        Ok(())
    }

    /// Gradient of the total loss (after `forward` and `losses`) with respect to the input `x`, into `dx`.
    pub fn backward(&mut self, backend: &B, x: &B::Buf, dx: &mut B::Buf) -> Result<()> {
        let n = self.n;
        backend.linear_bwd_data(&self.fc_problem(), &self.g_logits, &self.fc_w, &mut self.g_feat)?;
        let mut g_pre = 0usize; // index into self.g holding the current block's pre-ReLU-sum gradient
        let last = *self.blocks.last().unwrap().convs.last().unwrap();
        backend.avgpool_bwd(n * self.feat_dim, self.last_hw, &self.g_feat, &self.out[last], &mut self.g[g_pre])?;
        let pool_out = self.pool.as_ref().map(|p| &p.1);
        for b in self.blocks.iter().rev() {
            let input: &B::Buf = match b.input {
                Src::Input => x,
                Src::Pool => pool_out.unwrap(),
                Src::Conv(j) => &self.out[j],
            };
            // Free scratch slots other than g_pre.
            let free: Vec<usize> = (0..self.g.len()).filter(|&s| s != g_pre).collect();
            let (s_cur, s_alt, s_ds, s_in) = (free[0], free[1], free[2], free[3]);
            let lastc = *b.convs.last().unwrap();
            let (hw_last, k_last) = ((self.convs[lastc].problem.p * self.convs[lastc].problem.q) as usize, self.convs[lastc].problem.k as usize);
            {
                let (gp, dst) = split(&mut self.g, g_pre, s_cur);
                backend.bn_backward(
                    &BnProblem { n, c: k_last, hw: hw_last },
                    BnBackwardIo { dz: gp, y: &self.y[lastc], scale: &self.convs[lastc].bn_scale, coef: &self.coef[lastc], dy: dst },
                )?;
            }
            let mut cur = s_cur;
            let mut next = s_alt;
            for j in (1..b.convs.len()).rev() {
                let (cj, prev) = (b.convs[j], b.convs[j - 1]);
                let (dy, dst) = split(&mut self.g, cur, next);
                let epi = DgradEpilogue::BnRelu { y_prev: &self.y[prev], scale: &self.convs[prev].bn_scale, coef: &self.coef[prev] };
                backend.conv_dgrad(&self.convs[cj].problem, dy, &self.convs[cj].w, &self.out[prev], epi, dst)?;
                std::mem::swap(&mut cur, &mut next);
            }
            let first = b.convs[0];
            match b.downsample {
                Some(ds) => {
                    let p = &self.convs[ds].problem;
                    let (hw, k) = ((p.p * p.q) as usize, p.k as usize);
                    {
                        let (gp, dst) = split(&mut self.g, g_pre, s_ds);
                        backend.bn_backward(
                            &BnProblem { n, c: k, hw },
                            BnBackwardIo { dz: gp, y: &self.y[ds], scale: &self.convs[ds].bn_scale, coef: &self.coef[ds], dy: dst },
                        )?;
                    }
                    {
                        let (dy, dst) = split(&mut self.g, s_ds, s_in);
                        backend.conv_dgrad(p, dy, &self.convs[ds].w, input, DgradEpilogue::Store, dst)?;
                    }
                    let (dy, dst) = split(&mut self.g, cur, s_in);
                    let epi = DgradEpilogue::MaskInput { add: None, accumulate: true };
                    backend.conv_dgrad(&self.convs[first].problem, dy, &self.convs[first].w, input, epi, dst)?;
                }
                None => {
                    let (dy, gp, dst) = split2(&mut self.g, cur, g_pre, s_in);
                    let epi = DgradEpilogue::MaskInput { add: Some(gp), accumulate: false };
                    backend.conv_dgrad(&self.convs[first].problem, dy, &self.convs[first].w, input, epi, dst)?;
                }
            }
            g_pre = s_in;
        }
        // Stem: (max pool) -> BN + matching -> dgrad to the input image.
        let stem = &self.convs[0];
        let (hw0, k0) = ((stem.problem.p * stem.problem.q) as usize, stem.problem.k as usize);
        let mut g_act = g_pre;
        if let Some((pp, _, argmax)) = &self.pool {
            let dst_slot = (0..self.g.len()).find(|&s| s != g_pre).unwrap();
            let (gp, dst) = split(&mut self.g, g_pre, dst_slot);
            backend.maxpool_bwd(pp, gp, argmax, dst)?;
            g_act = dst_slot;
        }
        let dy_slot = (0..self.g.len()).find(|&s| s != g_act).unwrap();
        {
            let (ga, dst) = split(&mut self.g, g_act, dy_slot);
            backend
                .bn_backward(&BnProblem { n, c: k0, hw: hw0 }, BnBackwardIo { dz: ga, y: &self.y[0], scale: &stem.bn_scale, coef: &self.coef[0], dy: dst })?;
        }
        backend.conv_dgrad(&stem.problem, &self.g[dy_slot], &stem.w, x, DgradEpilogue::Store, dx)
    }
}
