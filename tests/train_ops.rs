//! The training ops' CPU halves against PyTorch (tests/fixtures/make_train_fixtures.py, seeds inside).
//! References are float64 computed from the same float32 inputs, so each tolerance bounds the engine's
//! own fp32 rounding; every check prints max abs / rel error.

mod common;

use cda_engine::backend::cpu::CpuBackend;
use cda_engine::backend::Backend;
use cda_engine::model::ConvGeom;
use cda_engine::ops::adamw::{cpu as adamw, AdamWConfig};
use cda_engine::ops::batchnorm::{cpu as bn, BnProblem};
use cda_engine::ops::conv::cpu::im2col as conv;
use cda_engine::ops::conv::{BnAffine, ConvProblem, DgradEpilogue, FpropEpilogue};
use cda_engine::ops::kd_loss::cpu as kd;
use cda_engine::ops::linear::cpu as linear;
use cda_engine::ops::sgd::{cpu as sgd, SgdConfig};
use common::{assert_close, load, tensor};

/// Convolutions sum at most C*R*S = 147 (fprop), K*R*S = 54 (dgrad) or N*P*Q = 162 (wgrad) fp32
/// products of O(1) values: the fp32 rounding of such sums stays below ~1e-6 of the result's scale;
/// Winograd F(4x4,3x3) (the 3x3 stride-1 fprop/dgrad) adds its transforms' rounding, up to 6e-6 of
/// the scale; 2e-5 leaves room for that and still catches any wrong tap or index (O(1) errors).
#[test]
fn conv_fprop_dgrad_wgrad_match_pytorch() {
    // One thread puts every image of a case into one task, so the multi-image GEMM groups are used;
    // the default pool splits the images over its threads.
    rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap().install(check_convs);
    check_convs();
}

fn check_convs() {
    let f = load("train/conv.safetensors");
    for case in ["s1_3x3", "s2_3x3", "ds_1x1_s2", "pw_1x1", "stem_7x7"] {
        let g = &tensor(&f, &format!("{case}.geom")).data;
        let [n, c, h, w, k, r, stride, pad] = g[..] else { panic!("geom") };
        let geom = ConvGeom { c: c as usize, k: k as usize, r: r as usize, s: r as usize, stride: stride as usize, pad: pad as usize };
        let p = ConvProblem::new(n as usize, h as usize, w as usize, &geom);
        let t = |k: &str| &tensor(&f, &format!("{case}.{k}")).data;
        // The training executor's convs: the backend's fprop with an identity BN epilogue, its dgrad
        // with the plain store and (for a downsample shortcut) the accumulating masked epilogue.
        let b = CpuBackend::new(rayon::current_num_threads()).unwrap();
        let (zeros, ones) = (vec![0.0; p.k as usize], vec![1.0; p.k as usize]);
        let epi = FpropEpilogue { bn: BnAffine { mean: &zeros, scale: &ones, beta: &zeros }, residual: None, relu: false, y: None, stats: None };
        let mut y = vec![0.0; p.output_len()];
        b.conv_fprop(&p, t("x"), t("w"), epi, &mut y).unwrap();
        assert_close(&format!("conv {case} fprop"), &y, t("y"), 2e-5);
        let mut dx = vec![0.0; p.input_len()];
        b.conv_dgrad(&p, t("dy"), t("w"), t("x"), DgradEpilogue::Store, &mut dx).unwrap();
        assert_close(&format!("conv {case} dgrad"), &dx, t("dx"), 2e-5);
        // accumulate: dx += dgrad again gives twice the reference (the mask passes every value of
        // an all-positive input).
        let positive = vec![1.0; p.input_len()];
        b.conv_dgrad(&p, t("dy"), t("w"), &positive, DgradEpilogue::MaskInput { add: None, accumulate: true }, &mut dx).unwrap();
        let twice: Vec<f32> = t("dx").iter().map(|v| 2.0 * v).collect();
        assert_close(&format!("conv {case} dgrad accumulate"), &dx, &twice, 2e-5);
        let mut y2 = vec![0.0; p.output_len()];
        conv::fprop_im2col(&p, t("x"), t("w"), &mut y2);
        assert_close(&format!("conv {case} fprop (im2col)"), &y2, t("y"), 2e-5);
        let mut dx2 = vec![0.0; p.input_len()];
        conv::dgrad_im2col(&p, t("dy"), t("w"), &mut dx2, false);
        assert_close(&format!("conv {case} dgrad (im2col)"), &dx2, t("dx"), 2e-5);
        let mut dw = vec![1.0; p.weight_len()];
        conv::wgrad(&p, t("x"), t("dy"), &mut dw);
        assert_close(&format!("conv {case} wgrad"), &dw, t("dw"), 2e-5);
    }
}

/// BatchNorm statistics are accumulated in f64 and the affine is applied in fp32: outputs agree to a
/// few fp32 ulps of their O(1) scale (1e-5). The backward's two reductions are in f64 as well; 2e-5.
/// Running statistics are a single f64 blend rounded to f32 (1e-6).
#[test]
fn batchnorm_train_and_eval_match_pytorch() {
    let f = load("train/batchnorm.safetensors");
    for case in ["relu_res", "plain", "relu"] {
        let t = |k: &str| tensor(&f, &format!("{case}.{k}")).data.clone();
        let s = t("shape");
        let p = BnProblem { n: s[0] as usize, c: s[1] as usize, hw: s[2] as usize };
        let (relu, res) = (s[3] != 0.0, s[4] != 0.0);
        let residual = t("residual");
        let (mut rm, mut rv) = (t("running_mean"), t("running_var"));
        let mut out = vec![0.0; p.len()];
        let (mut sm, mut si) = (vec![0.0; p.c], vec![0.0; p.c]);
        let resid = if res { Some(&residual[..]) } else { None };
        bn::fwd_train(&p, &t("y"), &t("gamma"), &t("beta"), 0.1, 1e-5, &mut rm, &mut rv, resid, relu, &mut out, &mut sm, &mut si);
        assert_close(&format!("bn {case} train out"), &out, &t("out"), 1e-5);
        assert_close(&format!("bn {case} running_mean"), &rm, &t("running_mean_after"), 1e-6);
        assert_close(&format!("bn {case} running_var"), &rv, &t("running_var_after"), 1e-6);
        let mut dy = vec![0.0; p.len()];
        let (mut dg, mut db) = (vec![0.0; p.c], vec![0.0; p.c]);
        let mut dres = vec![0.0; p.len()];
        bn::bwd_train(&p, &t("dout"), &out, relu, &t("y"), &t("gamma"), &sm, &si, &mut dy, &mut dg, &mut db, Some(&mut dres));
        assert_close(&format!("bn {case} dy"), &dy, &t("dy"), 2e-5);
        assert_close(&format!("bn {case} dgamma"), &dg, &t("dgamma"), 2e-5);
        assert_close(&format!("bn {case} dbeta"), &db, &t("dbeta"), 2e-5);
        if res {
            assert_close(&format!("bn {case} dresidual"), &dres, &t("dresidual"), 1e-6);
        }
        let mut ev = vec![0.0; p.len()];
        bn::fwd_eval(&p, &t("y"), &t("gamma"), &t("beta"), &t("running_mean"), &t("running_var"), 1e-5, resid, relu, &mut ev);
        assert_close(&format!("bn {case} eval out"), &ev, &t("eval_out"), 1e-5);
    }
}

/// Sums of 5-7 fp32 products: 1e-5 of the scale.
#[test]
fn linear_gradients_and_avgpool_backward_match_pytorch() {
    let f = load("train/linear.safetensors");
    let t = |k: &str| tensor(&f, k).data.clone();
    let (n, fin, fout) = (5, 7, 3);
    let (mut dw, mut db, mut dx) = (vec![0.0; fout * fin], vec![0.0; fout], vec![0.0; n * fin]);
    linear::wgrad(n, fin, fout, &t("x"), &t("dy"), &mut dw, &mut db);
    linear::bwd_data(n, fin, fout, &t("dy"), &t("w"), &mut dx);
    assert_close("linear dw", &dw, &t("dw"), 1e-5);
    assert_close("linear db", &db, &t("db"), 1e-5);
    assert_close("linear dx", &dx, &t("dx"), 1e-5);
    let mut pdx = vec![0.0; n * 4 * 9];
    cda_engine::ops::pool::cpu::avgpool_bwd_unmasked(9, &t("pool_dout"), &mut pdx);
    assert_close("avgpool backward", &pdx, &t("pool_dx"), 1e-6);
}

/// Both sides run in fp32 with the same operation order; 1e-6 of the scale allows an fma here or there.
#[test]
fn sgd_and_adamw_steps_match_pytorch() {
    let f = load("train/optim.safetensors");
    let lr_factor = [1.0, 0.5, 0.25];
    for (case, base_lr, momentum, nesterov, wd) in
        [("sgd", 0.1, 0.9, true, 5e-4), ("sgd_plain_momentum", 0.05, 0.9, false, 5e-4), ("adamw", 1e-3, 0.0, false, 0.01)]
    {
        let t = |k: &str| tensor(&f, &format!("{case}.{k}")).data.clone();
        let (mut w, mut b) = (t("w0"), t("b0"));
        let (mut mw, mut vw, mut mb, mut vb) = (vec![0.0; 12], vec![0.0; 12], vec![0.0; 4], vec![0.0; 4]);
        for (step, factor) in lr_factor.iter().enumerate() {
            let lr = base_lr * factor;
            let (gw, gb) = (t(&format!("gw{step}")), t(&format!("gb{step}")));
            if case == "adamw" {
                let cfg = AdamWConfig::new(lr, wd);
                adamw::step(&cfg, wd, step as u32 + 1, &mut w, &gw, &mut mw, &mut vw);
                adamw::step(&cfg, 0.0, step as u32 + 1, &mut b, &gb, &mut mb, &mut vb);
            } else {
                let cfg = SgdConfig { lr: lr as f32, momentum, weight_decay: wd as f32, nesterov };
                sgd::step(&cfg, &mut w, &gw, &mut mw, step == 0);
                sgd::step(&SgdConfig { weight_decay: 0.0, ..cfg }, &mut b, &gb, &mut mb, step == 0);
            }
            assert_close(&format!("{case} step {} weight (decayed)", step + 1), &w, &t(&format!("w{}", step + 1)), 1e-6);
            assert_close(&format!("{case} step {} bias (no decay)", step + 1), &b, &t(&format!("b{}", step + 1)), 1e-6);
        }
    }
}

/// Losses and gradients in f64 from f32 logits: 1e-6 relative.
#[test]
fn kd_and_soft_ce_losses_match_pytorch() {
    let f = load("train/loss.safetensors");
    let t = |k: &str| tensor(&f, k).data.clone();
    let (n, k) = (4, 10);
    let (s, te) = (t("student"), t("teacher"));
    for temp in [1.0, 4.0, 20.0] {
        let mut d = vec![0.0; n * k];
        let loss = kd::kl_div(n, k, &s, &te, temp, &mut d);
        assert_close(&format!("kl_div T={temp} loss"), &[loss], &t(&format!("kl_T{temp}.loss")), 1e-6);
        assert_close(&format!("kl_div T={temp} grad"), &d, &t(&format!("kl_T{temp}.grad")), 1e-6);
    }
    let mut d = vec![0.0; n * k];
    let loss = kd::soft_cross_entropy(n, k, &s, &t("soft_ce.target"), &mut d);
    assert_close("soft cross-entropy loss", &[loss], &t("soft_ce.loss"), 1e-6);
    assert_close("soft cross-entropy grad", &d, &t("soft_ce.grad"), 1e-6);
}
