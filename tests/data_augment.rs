//! Data: the crop/resize/flip rendering against torchvision's tensor path
//! (tests/fixtures/make_train_fixtures.py, `augment_cases`), and the Fashion-MNIST IDX reader on the
//! Debian package's files (CI installs dataset-fashion-mnist; set FASHION_MNIST_DIR elsewhere). The
//! evaluation view against torchvision's PIL Resize + CenterCrop (tests/fixtures/make_eval_fixtures.py).

mod common;

use cda_engine::data::augment::{render, render_eval, View};
use cda_engine::data::{self, Dataset, Image, Split};
use common::{assert_close, diff, load, tensor};

/// Bilinear taps in f32 against a float64 reference of [0, 1] pixels: 1e-6 of the scale (a few ulps);
/// a wrong tap or flip index is off by O(0.1).
#[test]
fn views_match_torchvision_resized_crop_padded_crop_and_flip() {
    let f = load("train/augment.safetensors");
    let img_t = tensor(&f, "image");
    let img = Image { c: img_t.shape[0], h: img_t.shape[1], w: img_t.shape[2], data: img_t.data.clone() };
    for name in ["view.up", "view.down", "view.same", "view.tall", "padcrop"] {
        let p = &tensor(&f, &format!("{name}.params")).data;
        let v = View { top: p[0] as i32, left: p[1] as i32, h: p[2] as i32, w: p[3] as i32, flip: p[4] != 0.0 };
        let size = p[5] as usize;
        let mut out = vec![0.0; img.c * size * size];
        render(&img, &v, size, &mut out);
        assert_close(name, &out, &tensor(&f, name).data, 1e-6);
    }
}

/// The evaluation view against torchvision's Resize(size / 0.875) + CenterCrop(size) on PIL float
/// images (tests/fixtures/make_eval_fixtures.py): PIL resamples in double, we in f32 with a handful of
/// taps per pass, so 1e-6 (a few ulps of [0, 1] pixels; 1.8e-7 measured). A half-pixel shift, the
/// wrong crop offset or no antialiasing moves random pixels by tenths.
#[test]
fn evaluation_view_matches_torchvision_resize_and_center_crop() {
    let f = load("train/eval_resize.safetensors");
    for name in ["landscape_rgb", "portrait_grey", "upscale_rgb", "same_size"] {
        let src = tensor(&f, &format!("{name}.image"));
        let img = Image { c: src.shape[0], h: src.shape[1], w: src.shape[2], data: src.data.clone() };
        let size = tensor(&f, &format!("{name}.size")).data[0] as usize;
        let mut out = vec![0.0; img.c * size * size];
        render_eval(&img, size, &mut out);
        let d = diff(&out, &tensor(&f, &format!("{name}.out")).data);
        println!("{name:<16} max abs {:.3e}", d.max_abs);
        assert!(d.max_abs <= 1e-6, "{name}: max abs error {:.3e} exceeds 1e-6", d.max_abs);
    }
}

fn fashion_mnist(split: Split) -> std::sync::Arc<dyn Dataset> {
    data::open("fashion-mnist", split, 1).unwrap_or_else(|e| panic!("{e} (the data tests need the Debian package dataset-fashion-mnist)"))
}

#[test]
fn fashion_mnist_idx_files_read_as_the_known_dataset() {
    let train = fashion_mnist(Split::Train);
    let test = fashion_mnist(Split::Test);
    assert_eq!((train.len(), test.len(), train.num_classes(), train.image_size()), (60000, 10000, 10, Some((28, 28))));
    let mut per_class = [0usize; 10];
    for i in 0..train.len() {
        per_class[train.label(i)] += 1;
    }
    assert_eq!(per_class, [6000; 10]);
    // The first training image is an ankle boot (class 9), the first test image too.
    assert_eq!((train.label(0), test.label(0)), (9, 9));
    // Pixel mean and std over the training split: the normalisation every recipe here uses (0.2860, 0.3530).
    let (mut s1, mut s2, mut n) = (0f64, 0f64, 0f64);
    for i in (0..train.len()).step_by(7) {
        for &v in &train.image(i).unwrap().data {
            s1 += v as f64;
            s2 += (v as f64) * (v as f64);
            n += 1.0;
        }
    }
    let (mean, std) = (s1 / n, (s2 / n - (s1 / n).powi(2)).sqrt());
    assert!((mean - 0.2860).abs() < 0.002 && (std - 0.3530).abs() < 0.002, "mean {mean} std {std}");
}

#[test]
fn wrong_channel_count_and_missing_folders_are_errors() {
    let e = data::open("fashion-mnist", Split::Train, 3).err().unwrap().to_string();
    assert!(e.contains("1 channel"), "{e}");
    let e = data::open("/nonexistent/folder", Split::Train, 1).err().unwrap().to_string();
    assert!(e.contains("not a dataset name"), "{e}");
    let dir = tempfile::tempdir().unwrap();
    let e = data::open(dir.path().to_str().unwrap(), Split::Train, 1).err().unwrap().to_string();
    assert!(e.contains("no class subfolders"), "{e}");
    std::fs::create_dir(dir.path().join("empty_class")).unwrap();
    let e = data::open(dir.path().to_str().unwrap(), Split::Train, 1).err().unwrap().to_string();
    assert!(e.contains("empty_class: class folder has no"), "{e}");
}
