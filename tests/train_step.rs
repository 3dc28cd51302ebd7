//! Whole training steps of small ResNets against PyTorch (tests/fixtures/make_train_fixtures.py):
//! forward in train mode, loss, every parameter gradient, one optimizer step, BN running statistics.
//! References are float64 from the same float32 weights and inputs.

mod common;

use cda_engine::backend::cpu::CpuBackend;
use cda_engine::backend::Backend;
use cda_engine::model::ResNet;
use cda_engine::ops::kd_loss::cpu as kd;
use cda_engine::ops::softmax_ce::cpu::softmax_ce;
use cda_engine::train::executor::{Mode, TrainNet, TrainOptim};
use cda_engine::train::optim::OptimKind;
use cda_engine::train::trainable::TrainModel;
use common::{assert_close, fixture, load, tensor};

/// `data` in a new buffer of `b`.
fn buf(b: &CpuBackend, data: &[f32]) -> Vec<f32> {
    let mut v = b.alloc(data.len()).unwrap();
    b.upload(data, &mut v).unwrap();
    v
}

/// Tolerances (relative to each tensor's scale):
/// - logits and loss 1e-4: up to 17 fp32 convs and BatchNorms in sequence; BN renormalises each layer,
///   so fp32 rounding (~1e-7 per op) grows to a few 1e-6, far below any indexing error (O(1)).
/// - gradients 1e-4: the backward through train-mode BN subtracts nearly equal terms
///   (g - mean(g) - xhat * mean(g xhat)); on these batches of 2-4 images the deepest layers have
///   8..64 elements per channel, where that cancellation amplifies fp32 rounding. Measured: at most
///   3.3e-6 on every tensor of the three models; 1e-4 leaves room for other SIMD widths and summation
///   orders, while a wrong sign, mask or index shows as O(1).
/// - running statistics and parameters after the step: see the comments in the body.
fn check_step(name: &str) {
    let model = ResNet::load(&fixture(&format!("train/{name}.safetensors"))).unwrap();
    let r = load(&format!("train/{name}.ref.safetensors"));
    let x = &tensor(&r, "input");
    let (n, h, w) = (x.shape[0], x.shape[2], x.shape[3]);
    let mut tm = TrainModel::from_resnet(&model);
    let k = tm.num_classes;
    let lr = tensor(&r, "lr").data[0] as f64;
    let wd = tensor(&r, "weight_decay").data[0] as f64;
    let sgd = r.metadata.get("optimizer").map(String::as_str) == Some("sgd");
    let optim = Some(TrainOptim { kind: if sgd { OptimKind::Sgd { momentum: 0.9, nesterov: true } } else { OptimKind::ADAMW }, weight_decay: wd });
    let b = CpuBackend::new(2).unwrap();
    let xb = buf(&b, &x.data);
    let mut net = TrainNet::new(&b, &tm, n, h, w, optim).unwrap();
    net.forward(&b, &tm, &xb, n, Mode::Train).unwrap();
    // The forward's running statistics, into the model the steps below start from.
    net.download(&b, &mut tm).unwrap();
    let mut logits = vec![0.0; n * k];
    b.download(net.logits(), &mut logits).unwrap();
    assert_close(&format!("{name} logits"), &logits, &tensor(&r, "logits").data, 1e-4);
    let mut dlogits = vec![0.0; n * k];
    let loss = if let Some(t) = r.tensors.get("targets") {
        let targets: Vec<i32> = t.data.iter().map(|&v| v as i32).collect();
        softmax_ce(n, k, &logits, &targets, &mut dlogits)
    } else {
        let temp = tensor(&r, "temperature").data[0] as f64;
        kd::kl_div(n, k, &logits, &tensor(&r, "teacher_logits").data, temp, &mut dlogits)
    };
    assert_close(&format!("{name} loss"), &[loss], &tensor(&r, "loss").data, 1e-4);
    net.backward(&b, &tm, &xb, &buf(&b, &dlogits)).unwrap();
    net.download_grads(&b, &mut tm).unwrap();
    for p in &tm.params {
        assert_close(&format!("{name} grad {}", p.name), &p.grad, &tensor(&r, &format!("grad.{}", p.name)).data, 1e-4);
    }
    // The step on PyTorch's own gradients (rounded to f32) isolates the optimizer and its parameter
    // groups (decay on ndim > 1 only): one fp32 update of O(1) parameters, 1e-5 of the scale.
    let mut on_ref = tm.clone();
    for p in &mut on_ref.params {
        p.grad.copy_from_slice(&tensor(&r, &format!("grad.{}", p.name)).data);
    }
    let mut ref_net = TrainNet::new(&b, &on_ref, n, h, w, optim).unwrap();
    ref_net.upload_grads(&b, &on_ref).unwrap();
    ref_net.step(&b, lr).unwrap();
    ref_net.download(&b, &mut on_ref).unwrap();
    // The step on the engine's gradients: SGD is linear in the gradient, so the 1e-4 gradient tolerance
    // times lr = 0.1 leaves the parameters within 1e-5 of their scale. AdamW's first step is
    // lr * g / (|g| + 1e-8): for gradients near eps (KD gradients of 1e-9 exist here) fp32 rounding of
    // g moves the update anywhere in [-lr, lr], so those elements are only held to that bound; where
    // |g| >= 1e-6 the update's sensitivity lr * eps / |g|^2 * dg is below 1e-2 lr * (dg / |g|), and the
    // updated parameter must agree to 1e-5 of the tensor's scale.
    let mut on_own = tm.clone();
    net.step(&b, lr).unwrap();
    net.download(&b, &mut on_own).unwrap();
    let own = on_own.tensors();
    for (tname, t) in on_ref.tensors() {
        let want = &tensor(&r, &format!("after.{tname}")).data;
        assert_close(&format!("{name} step on reference grads: {tname}"), &t.data, want, 1e-5);
        let got = &own[&tname].data;
        if sgd || tname.contains("running") {
            assert_close(&format!("{name} step on own grads: {tname}"), got, want, 1e-5);
        } else {
            let g = &tensor(&r, &format!("grad.{tname}")).data;
            let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())) as f64;
            for i in 0..want.len() {
                let d = (got[i] - want[i]).abs() as f64;
                let bound = if g[i].abs() >= 1e-6 { 1e-5 * scale } else { 2.0 * lr };
                assert!(d <= bound, "{name} {tname}[{i}]: AdamW step on own gradients off by {d:.3e} (bound {bound:.1e}, grad {:.2e})", g[i]);
            }
        }
    }
}

#[test]
fn basic_cifar_cross_entropy_sgd_step_matches_pytorch() {
    check_step("basic_cifar_ce_sgd");
}

#[test]
fn bottleneck_imagenet_stem_kd_adamw_step_matches_pytorch() {
    check_step("bottleneck_imagenet_kd_adamw");
}

#[test]
fn resnet18_narrow_cross_entropy_sgd_step_matches_pytorch() {
    check_step("basic_resnet18_w4_ce_sgd");
}

/// Eval mode uses the running statistics: the trained model's eval forward equals the recover
/// executor's (crate::net) on the same weights.
#[test]
fn eval_forward_matches_the_recover_executor() {
    use cda_engine::net::Net;
    let model = ResNet::load(&fixture("train/bottleneck_imagenet_kd_adamw.safetensors")).unwrap();
    let r = load("train/bottleneck_imagenet_kd_adamw.ref.safetensors");
    let x = tensor(&r, "input");
    let (n, h, w) = (x.shape[0], x.shape[2], x.shape[3]);
    let tm = TrainModel::from_resnet(&model);
    let backend = CpuBackend::new(1).unwrap();
    let mut net = TrainNet::new(&backend, &tm, n + 2, h, w, None).unwrap();
    net.forward(&backend, &tm, &buf(&backend, &x.data), n, Mode::Eval).unwrap();
    let mut got = vec![0.0; n * model.num_classes];
    backend.download(net.logits(), &mut got).unwrap();
    let mut reference = Net::new(&backend, &model, n, h, w).unwrap();
    let mut xb = backend.alloc(x.data.len()).unwrap();
    backend.upload(&x.data, &mut xb).unwrap();
    reference.forward(&backend, &xb).unwrap();
    let mut want = vec![0.0; n * model.num_classes];
    backend.download(&reference.logits, &mut want).unwrap();
    assert_close("eval logits vs recover executor", &got, &want, 1e-5);
}
