//! RDED's selection and stitching (`recover::init`) against a PyTorch reference
//! (tests/fixtures/make_select_fixtures.py: the shipped teacher scores real Fashion-MNIST crops).

mod common;

use cda_engine::backend::cpu::CpuBackend;
use cda_engine::model::ResNet;
use cda_engine::recover::init::{select_views, shrink, stitch, Rank};
use common::{assert_close, fixture, load, tensor};

fn check(name: &str) {
    let f = load(&format!("select/{name}.safetensors"));
    let meta = |k: &str| f.metadata[k].parse::<usize>().unwrap();
    let (class, crops, count, factor) = (meta("class"), meta("crops"), meta("count"), meta("factor"));
    let model = ResNet::load(&fixture("../../weights/fashion_mnist_resnet18_w16.safetensors")).unwrap();
    let views: Vec<Vec<f32>> = tensor(&f, "views").data.chunks(28 * 28).map(<[f32]>::to_vec).collect();
    let backend = CpuBackend::new(2).unwrap();
    let picked = select_views(&backend, &model, &views, crops, class, count, factor, 28, &[0.2860], &[0.3530], Rank::Easy).unwrap();
    // The ranking is exact: the reference's neighbouring losses differ by at least 1e-4 (printed by
    // the script), far above the forward's fp32 differences (about 1e-6 of the logits, tests/forward.rs).
    let chosen: Vec<usize> = picked.iter().flat_map(|(_, used)| used.clone()).collect();
    let want: Vec<usize> = tensor(&f, "chosen").data.iter().map(|&v| v as usize).collect();
    assert_eq!(chosen, want, "{name}: selected views");
    // Stitched pixels: means of factor^2 values in fp32, summed in another order than avg_pool2d:
    // within a few ulps of values <= 1.
    let got: Vec<f32> = picked.iter().flat_map(|(px, _)| px.clone()).collect();
    assert_close(&format!("{name}: images"), &got, &tensor(&f, "images").data, 1e-6);
}

#[test]
fn rded_select_and_stitch_2x2() {
    check("rded_f2");
}

#[test]
fn rded_select_whole_crops() {
    check("rded_f1");
}

/// The other selection orders (k-center over centred logits, k-means medoids over centred logits
/// or over pooled features) against their transcription in the fixture script: the same views in
/// the same order. Exact, since they are discrete choices; the script's points come from PyTorch's
/// forward (about 1e-6 of the engine's, tests/forward.rs) and the fixture's distances are far from
/// ties at that scale (a wrong space, start, round count or group order picks other views).
#[test]
fn select_ranks_follow_reference() {
    for (name, rank) in [("diverse", Rank::Diverse), ("kmeans", Rank::Kmeans), ("kmeans-features", Rank::KmeansFeatures)] {
        let f = load(&format!("select/rank_{name}.safetensors"));
        let meta = |k: &str| f.metadata[k].parse::<usize>().unwrap();
        let model = ResNet::load(&fixture("../../weights/fashion_mnist_resnet18_w16.safetensors")).unwrap();
        let views: Vec<Vec<f32>> = tensor(&f, "views").data.chunks(28 * 28).map(<[f32]>::to_vec).collect();
        let backend = CpuBackend::new(2).unwrap();
        let picked = select_views(&backend, &model, &views, meta("crops"), meta("class"), meta("count"), 1, 28, &[0.2860], &[0.3530], rank).unwrap();
        let chosen: Vec<usize> = picked.iter().flat_map(|(_, used)| used.clone()).collect();
        let want: Vec<usize> = tensor(&f, "chosen").data.iter().map(|&v| v as usize).collect();
        assert_eq!(chosen, want, "--select-rank {name}");
    }
}

/// shrink + stitch on a hand-checkable case: a 1 x 4 x 4 image of 0..16 shrinks by 2 to the means
/// of its 2 x 2 blocks; four 1 x 1 patches land row-major.
#[test]
fn shrink_and_stitch_layout() {
    let img: Vec<f32> = (0..16).map(|v| v as f32).collect();
    assert_eq!(shrink(&img, 1, 4, 2), vec![2.5, 4.5, 10.5, 12.5]);
    let patches = vec![vec![1.0], vec![2.0], vec![3.0], vec![4.0]];
    assert_eq!(stitch(&patches, 1, 2, 2), vec![1.0, 2.0, 3.0, 4.0]);
}
