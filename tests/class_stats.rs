//! Class-wise BatchNorm statistics (`recover::class_stats`) against a PyTorch reference
//! (tests/fixtures/make_class_stats_fixtures.py: BN-input hooks on the shipped teacher over real
//! Fashion-MNIST images of classes 3 and 5, and over both sets in one forward), and a recover run
//! that aims its BN loss at them.

mod common;

use cda_engine::backend::cpu::CpuBackend;
use cda_engine::data::{self, Split};
use cda_engine::model::ResNet;
use cda_engine::recover::class_stats::{measure_views, ClassBnStats};
use common::{assert_close, fixture, load, tensor};

const MEAN: f32 = 0.2860;
const STD: f32 = 0.3530;

/// The training images at `ids`, each C x 28 x 28 in [0, 1].
fn views(ids: &[f32]) -> Vec<Vec<f32>> {
    let ds = data::open("fashion-mnist", Split::Train, 1).expect("the Fashion-MNIST training set (Debian package dataset-fashion-mnist)");
    ids.iter().map(|&i| ds.image(i as usize).unwrap().data).collect()
}

/// `name`_mean_l / `name`_var_l of every layer of the fixture.
fn reference(f: &cda_engine::weights::TensorFile, name: &str, layers: usize) -> Vec<(Vec<f32>, Vec<f32>)> {
    (0..layers).map(|l| (tensor(f, &format!("{name}_mean_{l}")).data.clone(), tensor(f, &format!("{name}_var_{l}")).data.clone())).collect()
}

// Tolerance: the engine's BN-input statistics come from its fp32 conv epilogue (per-channel sums of
// x and x^2 over a chunk of up to 100 x 784 positions, then pooled across chunks in f64); the
// reference reduces in float64 from PyTorch's fp32 conv outputs. Measured: at most 1.0e-6 of a
// tensor's scale on any layer (fp32 sums over ~1e5 terms). 1e-5 leaves 10x for other CPUs' SIMD
// widths and thread splits, and is far below what a wrong layer, class or pooling would give: the
// two classes' statistics differ by at least 24% of their scale on every layer.
const TOL: f64 = 1e-5;

#[test]
fn class_statistics_match_pytorch_and_pool_as_one_forward() {
    let f = load("class_stats/stats.safetensors");
    let layers: usize = f.metadata["layers"].parse().unwrap();
    let model = ResNet::load(&fixture("../../weights/fashion_mnist_resnet18_w16.safetensors")).unwrap();
    let backend = CpuBackend::new(2).unwrap();
    let mut per_class = vec![Vec::new(); 10];
    for (name, cls) in [("a", 3usize), ("b", 5usize)] {
        // 130 images: one chunk of 100 and one of 30, pooled.
        let got = measure_views(&backend, &model, &views(&tensor(&f, &format!("ids_{name}")).data), 28, &[MEAN], &[STD]).unwrap();
        let want = reference(&f, name, layers);
        assert_eq!(got.len(), layers);
        for l in 0..layers {
            assert_close(&format!("class {cls} layer {l} mean"), &got[l].0, &want[l].0, TOL);
            assert_close(&format!("class {cls} layer {l} var"), &got[l].1, &want[l].1, TOL);
        }
        per_class[cls] = got;
    }
    // A batch with as many images of class 3 as of class 5 aims at their pooled statistics: PyTorch's
    // one forward of all 260 images.
    let stats = ClassBnStats { per_class };
    let mix = stats.mixture(&[3, 5, 5, 3]).unwrap();
    let want = reference(&f, "ab", layers);
    for l in 0..layers {
        assert_close(&format!("classes 3+5 layer {l} mean"), &mix[l].0, &want[l].0, TOL);
        assert_close(&format!("classes 3+5 layer {l} var"), &mix[l].1, &want[l].1, TOL);
    }
    // A batch of one class aims at that class's own statistics, and an unmeasured class is an error.
    assert_eq!(stats.mixture(&[3, 3]).unwrap(), stats.per_class[3]);
    assert!(stats.mixture(&[4]).is_err());
    assert!(stats.mixture(&[]).is_err());
}

/// The matching loss aims at what `Net::set_bn_targets` gave: each layer's unweighted term equals
/// ||var - target var|| + ||mean - target mean|| of that forward's own BN-input statistics, first
/// against the running statistics, then against class 3's.
#[test]
fn bn_matching_loss_aims_at_the_set_targets() {
    use cda_engine::backend::Backend;
    use cda_engine::net::Net;
    let f = load("class_stats/stats.safetensors");
    let layers: usize = f.metadata["layers"].parse().unwrap();
    let model = ResNet::load(&fixture("../../weights/fashion_mnist_resnet18_w16.safetensors")).unwrap();
    let backend = CpuBackend::new(2).unwrap();
    let imgs = views(&tensor(&f, "ids_b").data[..4]);
    let x: Vec<f32> = imgs.concat().iter().map(|&u| (u - MEAN) / STD).collect();
    let mut net = Net::new(&backend, &model, 4, 28, 28).unwrap();
    let mut xb = backend.alloc(x.len()).unwrap();
    backend.upload(&x, &mut xb).unwrap();
    net.set_targets(&backend, &[5, 5, 5, 5]).unwrap();
    let running: Vec<(Vec<f32>, Vec<f32>)> = model.conv_bns().iter().map(|c| (c.bn.running_mean.clone(), c.bn.running_var.clone())).collect();
    let class3 = reference(&f, "a", layers);
    for (which, targets) in [("running statistics", &running), ("class 3", &class3)] {
        if which != "running statistics" {
            for (l, (m, v)) in targets.iter().enumerate() {
                net.set_bn_targets(&backend, l, m, v).unwrap();
            }
        }
        net.forward(&backend, &xb).unwrap();
        net.losses(&backend, &vec![1.0; layers]).unwrap();
        let mut losses = vec![0.0f32; 1 + layers];
        backend.download(&net.losses, &mut losses).unwrap();
        let want: Vec<f32> = (0..layers)
            .map(|l| {
                let k = net.bn_channels(l);
                let mut s = vec![0.0f32; 2 * k];
                backend.download(net.bn_stats(l), &mut s).unwrap();
                let norm = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum::<f64>().sqrt();
                (norm(&s[k..], &targets[l].1) + norm(&s[..k], &targets[l].0)) as f32
            })
            .collect();
        // Same fp32 statistics on both sides; only the norm's summation order differs (K <= 128 terms).
        assert_close(&format!("BN terms against {which}"), &losses[1..], &want, 1e-5);
    }
    assert!(net.set_bn_targets(&backend, 0, &[0.0; 3], &[1.0; 3]).is_err(), "a wrong channel count is refused");
}
