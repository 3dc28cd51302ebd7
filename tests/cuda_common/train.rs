//! The training ops on the CUDA backend (src/backend/cuda/train.rs) against their CPU twins, which
//! tests/train_ops.rs checks against PyTorch. Shared by tests/cuda_emulated.rs and tests/cuda_gpu.rs.

use cda_engine::backend::cuda::runtime::CudaDevice;
use cda_engine::backend::cuda::CudaBackend;
use cda_engine::backend::{Backend, BnEvalFwd, BnTrainBwd, BnTrainFwd, LinearProblem, SoftmaxCeIo, TrainBackend};
use cda_engine::ops::adamw::{cpu as adamw_cpu, AdamWConfig};
use cda_engine::ops::batchnorm::{cpu as bn_cpu, BnProblem, BN_EPS, BN_MOMENTUM};
use cda_engine::ops::conv::cpu::im2col as conv_cpu;
use cda_engine::ops::conv::ConvProblem;
use cda_engine::ops::kd_loss::cpu as kd_cpu;
use cda_engine::ops::linear::cpu as linear_cpu;
use cda_engine::ops::sgd::{cpu as sgd_cpu, SgdConfig};

use super::{conv_problem, down, randn, rng, up};
use crate::common::assert_close;

/// Wgrad shapes: every geometry the ResNets have, and GEMM_K long enough to be split (N*P*Q > 512).
pub fn wgrad_shapes() -> Vec<(&'static str, ConvProblem)> {
    vec![
        ("3x3 s1 p1, 2 splits", conv_problem(4, 16, 12, 12, 24, 3, 1, 1)),
        ("3x3 s2 p1 odd size, 1 split", conv_problem(3, 8, 11, 9, 70, 3, 2, 1)),
        ("1x1 s2 downsample", conv_problem(2, 40, 10, 10, 72, 1, 2, 0)),
        ("7x7 s2 p3 stem, 1 channel", conv_problem(2, 1, 16, 16, 8, 7, 2, 3)),
        ("3x3 s1 p1, 4 splits, tail chunk", conv_problem(9, 4, 15, 15, 5, 3, 1, 1)),
    ]
}

/// conv wgrad against `conv::cpu::im2col::wgrad`.
pub fn check_conv_wgrad<D: CudaDevice>(g: &CudaBackend<D>, name: &str, p: &ConvProblem, seed: u64) {
    let mut r = rng(seed);
    let x = randn(&mut r, p.input_len(), 1.0);
    let dy = randn(&mut r, p.output_len(), 1.0);
    let mut want = vec![0.0; p.weight_len()];
    conv_cpu::wgrad(p, &x, &dy, &mut want);
    // A stale value in dw must be overwritten, not accumulated into.
    let mut dw = up(g, &vec![7.0; p.weight_len()]);
    g.conv_wgrad(p, &up(g, &x), &up(g, &dy), &mut dw).unwrap();
    // Both sides sum N*P*Q (at most 2025 here) fp32 products of O(1) terms in different orders
    // (GEMM blocking on the CPU, split tiles here); the sums are O(sqrt(NPQ)) ~ 45 and fp32 rounding
    // of such sums stays below ~1e-6 of that scale. 1e-5 leaves margin; an indexing error is O(1).
    assert_close(&format!("conv wgrad {name}"), &down(g, &dw, p.weight_len()), &want, 1e-5);
}

/// BatchNorm train forward (with and without residual / ReLU), eval forward and train backward
/// against `batchnorm::cpu`.
pub fn check_batchnorm<D: CudaDevice>(g: &CudaBackend<D>) {
    for (case, (p, residual, relu)) in [
        (BnProblem { n: 3, c: 5, hw: 37 }, true, true),
        (BnProblem { n: 2, c: 3, hw: 64 }, false, true),
        (BnProblem { n: 4, c: 2, hw: 9 }, false, false),
        (BnProblem { n: 1, c: 4, hw: 1 }, true, true),
    ]
    .into_iter()
    .enumerate()
    {
        let mut r = rng(40 + case as u64);
        let len = p.len();
        // A channel offset so the mean matters (the variance pass subtracts it).
        let y: Vec<f32> = randn(&mut r, len, 1.5).iter().enumerate().map(|(i, v)| v + ((i / p.hw) % p.c) as f32 * 0.7).collect();
        let gamma: Vec<f32> = randn(&mut r, p.c, 0.5).iter().map(|v| v + 1.0).collect();
        let beta = randn(&mut r, p.c, 0.3);
        let res = residual.then(|| randn(&mut r, len, 1.0));
        let rm0 = randn(&mut r, p.c, 0.2);
        let rv0: Vec<f32> = randn(&mut r, p.c, 0.2).iter().map(|v| v + 1.0).collect();
        let what = |s: &str| format!("batchnorm {s} n{} c{} hw{} residual {residual} relu {relu}", p.n, p.c, p.hw);

        let (mut rm, mut rv) = (rm0.clone(), rv0.clone());
        let (mut out, mut sm, mut si) = (vec![0.0; len], vec![0.0; p.c], vec![0.0; p.c]);
        bn_cpu::fwd_train(&p, &y, &gamma, &beta, BN_MOMENTUM, BN_EPS, &mut rm, &mut rv, res.as_deref(), relu, &mut out, &mut sm, &mut si);
        let (yb, gb, bb) = (up(g, &y), up(g, &gamma), up(g, &beta));
        let resb = res.as_ref().map(|v| up(g, v));
        let (mut rmb, mut rvb) = (up(g, &rm0), up(g, &rv0));
        let (mut outb, mut smb, mut sib) = (g.alloc(len).unwrap(), g.alloc(p.c).unwrap(), g.alloc(p.c).unwrap());
        let t = BnTrainFwd {
            y: &yb,
            gamma: &gb,
            beta: &bb,
            running_mean: &mut rmb,
            running_var: &mut rvb,
            residual: resb.as_ref(),
            relu,
            out: &mut outb,
            save_mean: &mut smb,
            save_invstd: &mut sib,
        };
        g.bn_fwd_train(&p, BN_MOMENTUM, BN_EPS, t).unwrap();
        // Statistics: float64 sums on both sides (8 fp32 lanes per plane on the CPU), so they agree to
        // a few fp32 ulps; the outputs inherit that through one affine.
        assert_close(&what("saved mean"), &down(g, &smb, p.c), &sm, 1e-6);
        assert_close(&what("saved invstd"), &down(g, &sib, p.c), &si, 1e-6);
        assert_close(&what("running mean"), &down(g, &rmb, p.c), &rm, 1e-6);
        assert_close(&what("running var"), &down(g, &rvb, p.c), &rv, 1e-6);
        assert_close(&what("train out"), &down(g, &outb, len), &out, 1e-5);

        let mut eval_out = vec![0.0; len];
        bn_cpu::fwd_eval(&p, &y, &gamma, &beta, &rm, &rv, BN_EPS, res.as_deref(), relu, &mut eval_out);
        let mut eval_b = g.alloc(len).unwrap();
        let (rmu, rvu) = (up(g, &rm), up(g, &rv));
        let t = BnEvalFwd { y: &yb, gamma: &gb, beta: &bb, running_mean: &rmu, running_var: &rvu, residual: resb.as_ref(), relu, out: &mut eval_b };
        g.bn_fwd_eval(&p, BN_EPS, t).unwrap();
        // Same inputs, same fp32 operations in the same order (no contraction on either side).
        assert_close(&what("eval out"), &down(g, &eval_b, len), &eval_out, 0.0);

        // Backward from the CPU's forward results, so both sides mask with the same signs.
        let dout = randn(&mut r, len, 1.0);
        let (mut dy, mut dgamma, mut dbeta) = (vec![0.0; len], vec![0.0; p.c], vec![0.0; p.c]);
        let mut dres = vec![0.0; len];
        bn_cpu::bwd_train(&p, &dout, &out, relu, &y, &gamma, &sm, &si, &mut dy, &mut dgamma, &mut dbeta, residual.then_some(&mut dres[..]));
        let (mut dyb, mut dgb, mut dbb) = (g.alloc(len).unwrap(), g.alloc(p.c).unwrap(), g.alloc(p.c).unwrap());
        let mut dresb = g.alloc(len).unwrap();
        let (doutb, outu, smu, siu) = (up(g, &dout), up(g, &out), up(g, &sm), up(g, &si));
        let t = BnTrainBwd {
            dout: &doutb,
            out: &outu,
            relu,
            y: &yb,
            gamma: &gb,
            save_mean: &smu,
            save_invstd: &siu,
            dy: &mut dyb,
            dgamma: &mut dgb,
            dbeta: &mut dbb,
            dresidual: residual.then_some(&mut dresb),
        };
        g.bn_bwd_train(&p, t).unwrap();
        // dgamma / dbeta are sums of M = N*HW terms with cancellation; the scale of the tensor bounds
        // the absolute error of both float64-accumulated sums well below 1e-5 of it. dy subtracts two
        // such per-channel terms from g: the same bound.
        assert_close(&what("dbeta"), &down(g, &dbb, p.c), &dbeta, 1e-5);
        assert_close(&what("dgamma"), &down(g, &dgb, p.c), &dgamma, 1e-5);
        assert_close(&what("dy"), &down(g, &dyb, len), &dy, 1e-5);
        if residual {
            // The masked gradient itself: a copy.
            assert_close(&what("dresidual"), &down(g, &dresb, len), &dres, 0.0);
        }
    }
}

/// fc parameter gradients against `linear::cpu::wgrad`.
pub fn check_linear_wgrad<D: CudaDevice>(g: &CudaBackend<D>) {
    let mut r = rng(51);
    let (n, in_f, out_f) = (13usize, 37usize, 11usize);
    let x = randn(&mut r, n * in_f, 1.0);
    let dy = randn(&mut r, n * out_f, 1.0);
    let (mut dw, mut db) = (vec![0.0; out_f * in_f], vec![0.0; out_f]);
    linear_cpu::wgrad(n, in_f, out_f, &x, &dy, &mut dw, &mut db);
    let (mut dwb, mut dbb) = (up(g, &vec![3.0; out_f * in_f]), up(g, &vec![3.0; out_f]));
    g.linear_wgrad(&LinearProblem { n, in_f, out_f }, &up(g, &x), &up(g, &dy), (&mut dwb, &mut dbb)).unwrap();
    // fp32 sums of 13 products in different orders: a few ulps of the O(sqrt 13) scale.
    assert_close("linear wgrad dw", &down(g, &dwb, out_f * in_f), &dw, 1e-6);
    assert_close("linear wgrad db", &down(g, &dbb, out_f), &db, 1e-6);
}

/// The distillation loss and its gradient against `kd_loss::cpu::kl_div`.
pub fn check_kd_loss<D: CudaDevice>(g: &CudaBackend<D>) {
    for (n, classes, t, seed) in [(5usize, 10usize, 4.0f64, 61u64), (3, 300, 20.0, 62), (2, 7, 1.0, 63)] {
        let mut r = rng(seed);
        let student = randn(&mut r, n * classes, 8.0);
        let teacher = randn(&mut r, n * classes, 8.0);
        let mut d = vec![0.0; n * classes];
        let loss = kd_cpu::kl_div(n, classes, &student, &teacher, t, &mut d);
        let mut db = g.alloc(n * classes).unwrap();
        let mut losses = g.alloc(3).unwrap();
        g.kd_kl_div(n, classes, &up(g, &student), &up(g, &teacher), t, &mut db, &mut losses, 2).unwrap();
        // All float64 on both sides, summed in different orders, rounded once to fp32.
        let what = format!("kd loss n{n} classes {classes} T {t}");
        assert_close(&format!("{what} gradient"), &down(g, &db, n * classes), &d, 1e-6);
        assert_close(&format!("{what} value"), &down(g, &losses, 3)[2..], &[loss], 1e-6);
    }
}

/// SGD (plain, momentum, Nesterov, weight decay) and AdamW (with and without decay) over three steps
/// against the CPU twins: the same correctly rounded IEEE operations in the same order, so the bits
/// must be identical.
pub fn check_optimizers<D: CudaDevice>(g: &CudaBackend<D>) {
    let len = 1000usize;
    let mut r = rng(71);
    let grads: Vec<Vec<f32>> = (0..3).map(|_| randn(&mut r, len, 0.5)).collect();
    let p0 = randn(&mut r, len, 1.0);
    for cfg in [
        SgdConfig { lr: 0.1, momentum: 0.0, weight_decay: 0.0, nesterov: false },
        SgdConfig { lr: 0.05, momentum: 0.9, weight_decay: 5e-4, nesterov: false },
        SgdConfig { lr: 0.2, momentum: 0.9, weight_decay: 1e-4, nesterov: true },
    ] {
        let (mut p, mut buf) = (p0.clone(), vec![0.0; len]);
        let (mut pb, mut bufb) = (up(g, &p0), g.alloc(len).unwrap());
        for (t, grad) in grads.iter().enumerate() {
            sgd_cpu::step(&cfg, &mut p, grad, &mut buf, t == 0);
            g.sgd_step(&cfg, &mut pb, &up(g, grad), Some(&mut bufb), t == 0).unwrap();
        }
        assert_close(&format!("sgd {cfg:?} param"), &down(g, &pb, len), &p, 0.0);
        if cfg.momentum != 0.0 {
            assert_close(&format!("sgd {cfg:?} buffer"), &down(g, &bufb, len), &buf, 0.0);
        }
    }
    for wd in [0.0, 0.01] {
        let cfg = AdamWConfig::new(1e-3, wd);
        let (mut p, mut m, mut v) = (p0.clone(), vec![0.0; len], vec![0.0; len]);
        let (mut pb, mut mb, mut vb) = (up(g, &p0), g.alloc(len).unwrap(), g.alloc(len).unwrap());
        for (t, grad) in grads.iter().enumerate() {
            adamw_cpu::step(&cfg, wd, t as u32 + 1, &mut p, grad, &mut m, &mut v);
            g.adamw_step(&cfg, t as u32 + 1, &mut pb, &up(g, grad), (&mut mb, &mut vb)).unwrap();
        }
        assert_close(&format!("adamw wd {wd} param"), &down(g, &pb, len), &p, 0.0);
        assert_close(&format!("adamw wd {wd} m"), &down(g, &mb, len), &m, 0.0);
        assert_close(&format!("adamw wd {wd} v"), &down(g, &vb, len), &v, 0.0);
    }
}

/// Wrong buffer sizes and options are errors, not launches.
pub fn check_train_errors<D: CudaDevice>(g: &CudaBackend<D>) {
    let p = conv_problem(2, 3, 8, 8, 4, 3, 1, 1);
    let (x, dy) = (g.alloc(p.input_len()).unwrap(), g.alloc(p.output_len()).unwrap());
    let mut small = g.alloc(p.weight_len() - 1).unwrap();
    let e = g.conv_wgrad(&p, &x, &dy, &mut small).unwrap_err().to_string();
    assert!(e.contains("conv wgrad dw"), "{e}");
    let mut l = g.alloc(1).unwrap();
    let mut d = g.alloc(4).unwrap();
    let e = g.kd_kl_div(2, 2, &up(g, &[0.0; 4]), &up(g, &[0.0; 4]), 0.0, &mut d, &mut l, 0).unwrap_err().to_string();
    assert!(e.contains("temperature"), "{e}");
    let cfg = SgdConfig { lr: 0.1, momentum: 0.9, weight_decay: 0.0, nesterov: false };
    let mut pb = g.alloc(4).unwrap();
    let e = g.sgd_step(&cfg, &mut pb, &up(g, &[0.0; 4]), None, true).unwrap_err().to_string();
    assert!(e.contains("momentum buffer"), "{e}");
}

/// One whole training step of the training executor (`train::executor`) on the CUDA backend, on the
/// PyTorch fixtures that tests/train_step.rs checks the CPU backend with (tests/fixtures/make_train_fixtures.py): train-mode
/// logits, loss, every parameter gradient, and the parameters and running statistics after the
/// optimizer step, against PyTorch; then an eval-mode forward against the CPU executor.
/// `tf32`: the convolutions on TF32 tensor cores (10-bit mantissas): the forward only (see the body).
pub fn check_train_step_fixture<D: CudaDevice>(g: &CudaBackend<D>, name: &str, tf32: bool) {
    use cda_engine::backend::cpu::CpuBackend;
    use cda_engine::backend::cuda::ConvVersion;
    use cda_engine::model::ResNet;
    use cda_engine::train::executor::{Mode, TrainNet, TrainOptim};
    use cda_engine::train::optim::OptimKind;
    use cda_engine::train::trainable::TrainModel;

    g.set_conv_version(if tf32 { ConvVersion::Tf32 } else { ConvVersion::Fp32 });
    let model = ResNet::load(&super::fixture(&format!("train/{name}.safetensors"))).unwrap();
    let r = super::load(&format!("train/{name}.ref.safetensors"));
    let x = &crate::common::tensor(&r, "input");
    let t = |s: &str| crate::common::tensor(&r, s).data.clone();
    let (n, h, w) = (x.shape[0], x.shape[2], x.shape[3]);
    let mut tm = TrainModel::from_resnet(&model);
    let k = tm.num_classes;
    let sgd = r.metadata.get("optimizer").map(String::as_str) == Some("sgd");
    let (lr, wd) = (t("lr")[0] as f64, t("weight_decay")[0] as f64);
    let kind = if sgd { OptimKind::Sgd { momentum: 0.9, nesterov: true } } else { OptimKind::ADAMW };
    let mut net = TrainNet::new(g, &tm, n, h, w, Some(TrainOptim { kind, weight_decay: wd })).unwrap();
    let xb = up(g, &x.data);
    net.forward(g, &tm, &xb, n, Mode::Train).unwrap();
    // Tolerances as tests/train_step.rs (fp32: 1e-4 of each tensor's scale, measured there at most
    // 3.3e-6 on the CPU; the GPU kernels sum in other orders, the same order of error).
    // TF32 rounds every conv operand to 10 bits (2^-11 relative): the logits land within 6.7e-4 of
    // their scale on the three fixtures (measured; checked at 2e-3). Gradients are not compared under TF32 here: the fixtures' batches
    // of 2 images leave the deepest BatchNorms 8 values per channel, where the train-mode BN backward
    // (g - mean(g) - xhat * mean(g xhat)) cancels most of the signal, and the TF32 rounding of the
    // convs around it shows as up to 0.18 of a gradient's scale (measured) -- no bound that tight
    // would also catch a bug. The fp32 run checks the executor; the TF32 kernels have their own checks.
    let tol = if tf32 { 2e-3 } else { 1e-4 };
    let what = |s: &str| format!("cuda train step {name}{}: {s}", if tf32 { " (tf32)" } else { "" });
    assert_close(&what("logits"), &down(g, net.logits(), n * k), &t("logits"), tol);
    let mut dlogits = g.alloc(n * k).unwrap();
    let mut losses = g.alloc(1).unwrap();
    if let Some(tg) = r.tensors.get("targets") {
        let targets: Vec<i32> = tg.data.iter().map(|&v| v as i32).collect();
        let mut tb = g.alloc_int(n).unwrap();
        g.upload_int(&targets, &mut tb).unwrap();
        g.softmax_ce(SoftmaxCeIo { n, classes: k, logits: net.logits(), targets: &tb, dlogits: &mut dlogits, losses: &mut losses, slot: 0 }).unwrap();
    } else {
        g.kd_kl_div(n, k, net.logits(), &up(g, &t("teacher_logits")), t("temperature")[0] as f64, &mut dlogits, &mut losses, 0).unwrap();
    }
    assert_close(&what("loss"), &down(g, &losses, 1), &t("loss"), tol);
    if tf32 {
        return;
    }
    net.backward(g, &tm, &xb, &dlogits).unwrap();
    net.download_grads(g, &mut tm).unwrap();
    for p in &tm.params {
        assert_close(&what(&format!("grad {}", p.name)), &p.grad, &t(&format!("grad.{}", p.name)), tol);
    }
    net.step(g, lr).unwrap();
    net.download(g, &mut tm).unwrap();
    // After the step (see tests/train_step.rs): SGD is linear in the gradient (lr * gradient error);
    // AdamW's first step is lr * g / (|g| + eps), held to 1e-5 of the scale where |g| >= 1e-6 and to
    // 2 lr elsewhere.
    let step_tol = 1e-5;
    for (tname, tensor) in tm.tensors() {
        let want = t(&format!("after.{tname}"));
        if sgd || tname.contains("running") {
            assert_close(&what(&format!("after step {tname}")), &tensor.data, &want, step_tol);
        } else {
            let grad = t(&format!("grad.{tname}"));
            let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())) as f64;
            for i in 0..want.len() {
                let d = (tensor.data[i] - want[i]).abs() as f64;
                let bound = if grad[i].abs() >= 1e-6 { step_tol * scale } else { 2.0 * lr };
                assert!(d <= bound, "{}[{i}]: off by {d:.3e} (bound {bound:.1e}, grad {:.2e})", what(&format!("after step {tname}")), grad[i]);
            }
        }
    }
    // Eval mode with the updated weights and running statistics, against the CPU backend.
    net.forward(g, &tm, &xb, n, Mode::Eval).unwrap();
    let cpu = CpuBackend::new(2).unwrap();
    let mut cpu_net = TrainNet::new(&cpu, &tm, n, h, w, None).unwrap();
    let mut cx = cpu.alloc(x.data.len()).unwrap();
    cpu.upload(&x.data, &mut cx).unwrap();
    cpu_net.forward(&cpu, &tm, &cx, n, Mode::Eval).unwrap();
    let mut want = vec![0.0; n * k];
    cpu.download(cpu_net.logits(), &mut want).unwrap();
    assert_close(&what("eval logits vs the CPU backend"), &down(g, net.logits(), n * k), &want, tol);
}
