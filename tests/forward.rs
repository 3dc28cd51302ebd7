//! Eval-mode forward on the CPU against PyTorch (fixtures: tests/fixtures/make_forward_fixtures.py).

mod common;

use cda_engine::backend::cpu::CpuBackend;
use cda_engine::backend::Backend;
use cda_engine::model::ResNet;
use cda_engine::net::Net;
use common::{assert_close, fixture, load, tensor};

/// fp32 against fp32 with different summation orders (PyTorch's oneDNN vs our im2col GEMM, f64
/// statistics): each conv's dot products of up to C*R*S = 1152 terms carry ~1e-6 relative rounding,
/// which BN and 20 layers amplify; the largest error seen is 2.1e-6 of a tensor's scale. 1e-4 (the
/// product's promise) leaves room for other GEMM blockings and still catches any real error (a wrong
/// tap, stride, BN order or statistic is off by 1e-2 or more).
const TOL: f64 = 1e-4;

fn check(weights: &str, io: &str) {
    let model = ResNet::load(&fixture(weights)).unwrap();
    let io = load(io);
    let x = tensor(&io, "input");
    let (n, h, w) = (x.shape[0], x.shape[2], x.shape[3]);
    let backend = CpuBackend::new(2).unwrap();
    let mut net = Net::new(&backend, &model, n, h, w).unwrap();
    let xb = x.data.clone();
    net.forward(&backend, &xb).unwrap();
    let mut logits = vec![0.0; n * model.num_classes];
    backend.download(&net.logits, &mut logits).unwrap();
    assert_close(&format!("{weights} logits"), &logits, &tensor(&io, "logits").data, TOL);
    for l in 0..net.num_bn_layers() {
        let k = net.bn_channels(l);
        let mut s = vec![0.0; 2 * k];
        backend.download(net.bn_stats(l), &mut s).unwrap();
        assert_close(&format!("{weights} bn.{l}.mean"), &s[..k], &tensor(&io, &format!("bn.{l}.mean")).data, TOL);
        assert_close(&format!("{weights} bn.{l}.var"), &s[k..], &tensor(&io, &format!("bn.{l}.var")).data, TOL);
    }
}

#[test]
fn basic_imagenet_stem() {
    check("forward/basic_imagenet_w8.safetensors", "forward/basic_imagenet_w8.io.safetensors");
}

#[test]
fn basic_imagenet_stem_resnet18_layout_odd_size() {
    check("forward/basic_imagenet_w16_33px.safetensors", "forward/basic_imagenet_w16_33px.io.safetensors");
}

#[test]
fn basic_cifar_stem_one_channel_seven_classes() {
    check("forward/basic_cifar_1ch_7cls_30px.safetensors", "forward/basic_cifar_1ch_7cls_30px.io.safetensors");
}

#[test]
fn bottleneck_imagenet_stem() {
    check("forward/bottleneck_imagenet_33px.safetensors", "forward/bottleneck_imagenet_33px.io.safetensors");
}

#[test]
fn bottleneck_cifar_stem() {
    check("forward/bottleneck_cifar_w8.safetensors", "forward/bottleneck_cifar_w8.io.safetensors");
}

#[test]
fn three_stages_batch_one() {
    check("forward/basic_cifar_batch1.safetensors", "forward/basic_cifar_batch1.io.safetensors");
}

#[test]
fn dataparallel_prefix_and_num_batches_tracked() {
    check("forward/basic_imagenet_w8_module_prefix.safetensors", "forward/basic_imagenet_w8.io.safetensors");
}

#[test]
fn f16_weights_are_converted() {
    check("forward/basic_imagenet_w8_f16.safetensors", "forward/basic_imagenet_w8_f16.io.safetensors");
}
