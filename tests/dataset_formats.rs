//! The readers of datasets in their distributed layouts.
//!
//! CIFAR-10/100 against torchvision's readers: tests/fixtures/make_cifar_fixtures.py (seed 0)
//! writes small folders in the four distributed layouts (python pickles as Python 2 wrote them, and
//! the binary version) and what torchvision.datasets.CIFAR10/CIFAR100 read from the pickles. Pixels
//! are bytes, so they must match exactly (scaled by 1/255); labels and class names too. Malformed
//! files are refused naming the file.
//!
//! Tiny-ImageNet: tests/fixtures/make_tiny_imagenet_fixtures.py writes the layout (wnids.txt in a
//! non-sorted order, train/<wnid>/images, the flat val/images with val_annotations.txt) and the
//! labels it defines file by file; the reader must give exactly those.
//!
//! ImageNet-1K: tests/fixtures/make_imagenet_fixtures.py writes Kaggle's download layout
//! (LOC_synset_mapping.txt, LOC_val_solution.csv, train/ wnid folders, the flat val/) and the labels
//! it defines; read from the root, from train/ and from the flat val/ alone, the reader must give
//! exactly those, and refuse malformed CSV and mapping files naming them.

mod common;

use std::path::Path;

use cda_engine::data::cifar::{detect, Cifar, CifarFormat};
use cda_engine::data::imagenet::{self, Layout};
use cda_engine::data::tiny_imagenet;
use cda_engine::data::{Dataset, Split};
use common::fixture;

fn expected(key: &str) -> (Vec<u8>, Vec<usize>) {
    let bytes = std::fs::read(fixture("cifar/expected.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let images = st.tensor(&format!("{key}.images")).unwrap().data().to_vec();
    let labels = st.tensor(&format!("{key}.labels")).unwrap().data().chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap()) as usize).collect();
    (images, labels)
}

fn names(key: &str) -> Vec<String> {
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(fixture("cifar/expected.json")).unwrap()).unwrap();
    v[key].as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_string()).collect()
}

fn check(ds: &Cifar, key: &str) {
    let (images, labels) = expected(key);
    assert_eq!(ds.len(), labels.len(), "{key}");
    assert_eq!(ds.channels(), 3);
    for i in 0..ds.len() {
        assert_eq!(ds.label(i), labels[i], "{key} label {i}");
        let img = ds.image(i).unwrap();
        assert_eq!((img.c, img.h, img.w), (3, 32, 32));
        let want = &images[i * 3072..(i + 1) * 3072];
        assert!(img.data.iter().zip(want).all(|(&g, &w)| g == w as f32 / 255.0), "{key} image {i} differs from torchvision's");
    }
}

#[test]
fn every_layout_reads_what_torchvision_reads() {
    let root = fixture("cifar");
    for (folder, format, key) in [
        ("cifar-10-batches-py", CifarFormat::Cifar10Python, "cifar10"),
        ("cifar-10-batches-bin", CifarFormat::Cifar10Binary, "cifar10"),
        ("cifar-100-python", CifarFormat::Cifar100Python, "cifar100"),
        ("cifar-100-binary", CifarFormat::Cifar100Binary, "cifar100"),
    ] {
        let dir = root.join(folder);
        // Recognised from the folder itself and (the python layouts' usual root) from above it.
        let (found, at) = detect(&dir).unwrap_or_else(|| panic!("{folder} not recognised"));
        assert_eq!((found, at.as_path()), (format, dir.as_path()));
        for (split, name) in [(Split::Train, "train"), (Split::Test, "test")] {
            let ds = Cifar::open(&dir, format, split).unwrap();
            check(&ds, &format!("{key}.{name}"));
            assert_eq!(ds.class_names, names(key), "{folder} class names");
            assert_eq!(ds.num_classes(), names(key).len());
        }
    }
    // torchvision's root holds the python folders: the first layout found there is CIFAR-10's.
    assert_eq!(detect(&root).map(|d| d.0), Some(CifarFormat::Cifar10Python));
    assert!(detect(&fixture("forward")).is_none());
}

#[test]
fn the_commands_read_a_cifar_folder_by_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("s");
    let data = fixture("cifar/cifar-10-batches-bin");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_cda-engine"))
        .args(["sample", "--data", data.to_str().unwrap(), "--ipc", "1", "--channels", "3", "--format", "png", "--out", out.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert!(stderr.contains("CIFAR-10 (binary version)"), "the format is not said: {stderr}");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

#[test]
fn malformed_files_are_refused_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    let py = dir.path().join("cifar-10-batches-py");
    copy_dir(&fixture("cifar/cifar-10-batches-py"), &py);
    let refused = |format, dir: &Path, split, says: &str, file: &str| {
        let e = Cifar::open(dir, format, split).err().expect("a malformed file was accepted").to_string();
        assert!(e.contains(says) && e.contains(file), "{e}");
    };
    // Truncated pickle, a pickle of something else, a missing batch.
    let b = std::fs::read(py.join("data_batch_2")).unwrap();
    std::fs::write(py.join("data_batch_2"), &b[..b.len() / 2]).unwrap();
    refused(CifarFormat::Cifar10Python, &py, Split::Train, "pickle", "data_batch_2");
    std::fs::write(py.join("data_batch_2"), b"\x80\x02K\x05.").unwrap();
    refused(CifarFormat::Cifar10Python, &py, Split::Train, "dict", "data_batch_2");
    std::fs::remove_file(py.join("data_batch_2")).unwrap();
    refused(CifarFormat::Cifar10Python, &py, Split::Train, "data_batch_2", "data_batch_2");
    // Binary: a partial record, and a label beyond the classes.
    let bin = dir.path().join("cifar-100-binary");
    copy_dir(&fixture("cifar/cifar-100-binary"), &bin);
    let mut b = std::fs::read(bin.join("test.bin")).unwrap();
    std::fs::write(bin.join("test.bin"), &b[..b.len() - 1]).unwrap();
    refused(CifarFormat::Cifar100Binary, &bin, Split::Test, "records", "test.bin");
    b[1] = 100;
    std::fs::write(bin.join("test.bin"), &b).unwrap();
    refused(CifarFormat::Cifar100Binary, &bin, Split::Test, "label 100", "test.bin");
}

#[test]
fn tiny_imagenet_takes_the_wnids_order_and_the_val_annotations() {
    let root = fixture("tiny_imagenet");
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(root.join("expected.json")).unwrap()).unwrap();
    let dir = tiny_imagenet::detect(&root).expect("torchvision-style root not recognised");
    assert_eq!(dir, root.join("tiny-imagenet-200"));
    assert_eq!(tiny_imagenet::detect(&dir), Some(dir.clone()));
    let wnids: Vec<&str> = v["wnids"].as_array().unwrap().iter().map(|w| w.as_str().unwrap()).collect();
    for (split, key) in [(Split::Train, "train"), (Split::Test, "val")] {
        let ds = tiny_imagenet::open(&dir, split, 3).unwrap();
        assert_eq!(ds.classes, wnids);
        assert_eq!(ds.num_classes(), 3);
        let want = v[key].as_array().unwrap();
        assert_eq!(ds.len(), want.len(), "{key}");
        for (i, w) in want.iter().enumerate() {
            assert_eq!(ds.items[i].0, dir.join(w[0].as_str().unwrap()), "{key} file {i}");
            assert_eq!(ds.label(i), w[1].as_u64().unwrap() as usize, "{key} label {i}");
        }
        let img = ds.image(0).unwrap();
        assert_eq!((img.c, img.h, img.w), (3, 64, 64));
    }
}

#[test]
fn tiny_imagenet_annotations_that_do_not_fit_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path().join("tiny-imagenet-200");
    let src = fixture("tiny_imagenet/tiny-imagenet-200");
    for sub in ["", "val", "val/images", "train", "train/n099", "train/n099/images", "train/n015", "train/n015/images", "train/n020", "train/n020/images"] {
        std::fs::create_dir_all(t.join(sub)).unwrap();
        for e in std::fs::read_dir(src.join(sub)).unwrap().flatten().filter(|e| e.path().is_file()) {
            std::fs::copy(e.path(), t.join(sub).join(e.file_name())).unwrap();
        }
    }
    let ann = t.join("val/val_annotations.txt");
    let good = std::fs::read_to_string(&ann).unwrap();
    for (text, says) in [
        (good.replace("n015", "n777"), "n777 is not in wnids.txt"),
        (good.replace("val_3.JPEG", "val_9.JPEG"), "is missing"),
        (good.replace('\t', " "), "is not file<TAB>wnid"),
    ] {
        std::fs::write(&ann, text).unwrap();
        let e = tiny_imagenet::open(&t, Split::Test, 3).err().expect("bad annotations accepted").to_string();
        assert!(e.contains(says) && e.contains("val_annotations.txt"), "{e}");
    }
    std::fs::write(t.join("wnids.txt"), "n099\nn015\nn099\n").unwrap();
    let e = tiny_imagenet::open(&t, Split::Train, 3).err().unwrap().to_string();
    assert!(e.contains("n099 is listed twice") && e.contains("wnids.txt"), "{e}");
}

/// (file relative to the download's root, label) of `ds`, for comparison with expected.json.
fn listing(ds: &cda_engine::data::folder::ImageFolder, root: &Path) -> Vec<(String, usize)> {
    let root = root.canonicalize().unwrap();
    (0..ds.len()).map(|i| (ds.items[i].0.canonicalize().unwrap().strip_prefix(&root).unwrap().to_string_lossy().into_owned(), ds.label(i))).collect()
}

fn want(v: &serde_json::Value, key: &str) -> Vec<(String, usize)> {
    v[key].as_array().unwrap().iter().map(|w| (w[0].as_str().unwrap().to_string(), w[1].as_u64().unwrap() as usize)).collect()
}

#[test]
fn imagenet_layouts_give_torchvision_order_and_the_solution_csv_labels() {
    let root = fixture("imagenet/imagenet-object-localization-challenge");
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(fixture("imagenet/expected.json")).unwrap()).unwrap();
    let wnids: Vec<String> = v["wnids"].as_array().unwrap().iter().map(|w| w.as_str().unwrap().to_string()).collect();
    let cls_loc = root.join("ILSVRC/Data/CLS-LOC");

    // The download's root: train/ for training, the flat val/ labelled by the CSV for testing.
    let layout = imagenet::detect(&root).expect("the download's root not recognised");
    assert!(matches!(&layout, Layout::Root { solution: Some(_), .. }), "{layout:?}");
    for (split, key) in [(Split::Train, "train"), (Split::Test, "val")] {
        let ds = imagenet::open(&layout, split, 3).unwrap();
        assert_eq!(ds.classes, wnids, "{key}");
        assert_eq!(listing(&ds, &root), want(&v, key), "{key}");
    }
    // CLS-LOC/ itself (train/ and val/ side by side; the CSV found four folders up).
    let ds = imagenet::open(&imagenet::detect(&cls_loc).unwrap(), Split::Test, 3).unwrap();
    assert_eq!(listing(&ds, &root), want(&v, "val"));
    // train/ alone is an ImageFolder of wnids; the flat val/ alone finds its CSV above it.
    let train = imagenet::detect(&cls_loc.join("train")).unwrap();
    assert_eq!(train, Layout::WnidFolders(cls_loc.join("train")));
    assert_eq!(listing(&imagenet::open(&train, Split::Train, 3).unwrap(), &root), want(&v, "train"));
    let val = imagenet::detect(&cls_loc.join("val")).unwrap();
    assert!(matches!(&val, Layout::FlatVal { .. }), "{val:?}");
    let ds = imagenet::open(&val, Split::Test, 1).unwrap();
    assert_eq!(listing(&ds, &root), want(&v, "val"));
    let img = ds.image(0).unwrap();
    assert_eq!((img.c, img.h, img.w), (1, 20, 20));
    // What commands call: the same labels through data::open.
    let ds = cda_engine::data::open(root.to_str().unwrap(), Split::Test, 3).unwrap();
    assert_eq!((0..ds.len()).map(|i| ds.label(i)).collect::<Vec<_>>(), want(&v, "val").iter().map(|w| w.1).collect::<Vec<_>>());
}

/// A copy of the fixture download, to break.
fn imagenet_copy() -> (tempfile::TempDir, std::path::PathBuf) {
    fn copy(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap().flatten() {
            if e.path().is_dir() {
                copy(&e.path(), &to.join(e.file_name()));
            } else {
                std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
            }
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("imagenet-object-localization-challenge");
    copy(&fixture("imagenet/imagenet-object-localization-challenge"), &root);
    (dir, root)
}

#[test]
fn imagenet_flat_val_without_mapping_takes_the_sorted_csv_wnids() {
    let (_dir, root) = imagenet_copy();
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(fixture("imagenet/expected.json")).unwrap()).unwrap();
    std::fs::remove_file(root.join(imagenet::SYNSET_MAPPING)).unwrap();
    let val = root.join("ILSVRC/Data/CLS-LOC/val");
    let ds = imagenet::open(&imagenet::detect(&val).unwrap(), Split::Test, 3).unwrap();
    let csv_wnids: Vec<String> = v["csv_wnids"].as_array().unwrap().iter().map(|w| w.as_str().unwrap().to_string()).collect();
    assert_eq!(ds.classes, csv_wnids);
    assert_eq!(listing(&ds, &root), want(&v, "val_without_mapping"));
    // With train/ beside val/, its wnid folders are the classes, as with the mapping.
    let ds = imagenet::open(&imagenet::detect(&root).unwrap(), Split::Test, 3).unwrap();
    assert_eq!(listing(&ds, &root), want(&v, "val"));
}

#[test]
fn imagenet_files_that_do_not_fit_are_refused() {
    let (_dir, root) = imagenet_copy();
    let val = root.join("ILSVRC/Data/CLS-LOC/val");
    let csv = root.join(imagenet::SOLUTION_CSV);
    let good = std::fs::read_to_string(&csv).unwrap();
    let open = || imagenet::open(&imagenet::detect(&val).unwrap(), Split::Test, 3).err().expect("a bad download accepted").to_string();
    for (text, says) in [
        (good.replace("ImageId,PredictionString", "id,label"), "not ImageId,PredictionString"),
        (good.replace("00000005,n01484850", "00000005,shark"), "does not start with a wnid"),
        (good.replace("n01484850", "n09999999"), "n09999999, which is not one of the 3 classes"),
        (good.replace("ILSVRC2012_val_00000005", "ILSVRC2012_val_00000004"), "ILSVRC2012_val_00000004 is given twice"),
        (good.replace("00000003,n01484850 1 2 15 16", "00000003,n01484850,1"), "LOC_val_solution.csv line"),
        (good.lines().filter(|l| !l.contains("00000003")).map(|l| format!("{l}\n")).collect(), "has no row in"),
        (format!("{good}ILSVRC2012_val_00000009,n01440764 1 2 3 4\n"), "such as ILSVRC2012_val_00000009.JPEG is missing"),
    ] {
        std::fs::write(&csv, text).unwrap();
        let e = open();
        assert!(e.contains(says) && e.contains("LOC_val_solution.csv"), "{says}: {e}");
    }
    std::fs::write(&csv, &good).unwrap();
    let mapping = root.join(imagenet::SYNSET_MAPPING);
    std::fs::write(&mapping, "n01440764 tench\ngoldfish n01443537\n").unwrap();
    let e = open();
    assert!(e.contains("LOC_synset_mapping.txt line 2") && e.contains("does not start with a wnid"), "{e}");
    std::fs::write(&mapping, "n01440764 tench\nn01440764 tench\n").unwrap();
    assert!(open().contains("n01440764 is listed twice"));
    // No CSV anywhere above the flat folder: a refusal that says what is missing.
    std::fs::remove_file(&csv).unwrap();
    let layout = imagenet::detect(&val).unwrap();
    assert_eq!(layout, Layout::FlatValWithoutSolution(val.clone()));
    let e = imagenet::open(&layout, Split::Test, 3).err().unwrap().to_string();
    assert!(e.contains("LOC_val_solution.csv was not found"), "{e}");
}

/// `evaluate --images <a CIFAR folder>` scores the teacher on the test split read by the reader.
/// Reference: the pixels torchvision read (expected.safetensors), normalised here, put through
/// `cda-engine forward` (itself checked against PyTorch in tests/forward.rs), argmax against the
/// labels torchvision read. The small random teacher gets 2 of the 6 right, so a wrong label or
/// image order changes the numbers.
#[test]
fn evaluate_scores_the_teacher_on_a_distributed_test_set() {
    let dir = tempfile::tempdir().unwrap();
    let teacher = fixture("forward/basic_cifar_batch1.safetensors");
    let (pixels, labels) = expected("cifar10.test");
    // The teacher's metadata normalisation (mean 0.5, std 0.25 per channel).
    let x: Vec<f32> = pixels.iter().map(|&p| (p as f32 / 255.0 - 0.5) / 0.25).collect();
    let n = labels.len();
    let bytes: Vec<u8> = x.iter().flat_map(|v| v.to_le_bytes()).collect();
    let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![n, 3, 32, 32], &bytes).unwrap();
    let (xin, yout) = (dir.path().join("x.safetensors"), dir.path().join("y.safetensors"));
    std::fs::write(&xin, safetensors::serialize([("input", view)], None).unwrap()).unwrap();
    let cli = |args: &[&str]| {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_cda-engine")).args(args).output().unwrap();
        assert!(o.status.success(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
        o
    };
    cli(&["forward", "--weights", teacher.to_str().unwrap(), "--input", xin.to_str().unwrap(), "--output", yout.to_str().unwrap()]);
    let y = std::fs::read(&yout).unwrap();
    let st = safetensors::SafeTensors::deserialize(&y).unwrap();
    let logits: Vec<f32> = st.tensor("logits").unwrap().data().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
    let mut correct = [0usize; 10];
    let mut count = [0usize; 10];
    for (row, &l) in logits.chunks(10).zip(&labels) {
        let best = (0..10).fold(0, |b, i| if row[i] > row[b] { i } else { b });
        count[l] += 1;
        correct[l] += (best == l) as usize;
    }
    let want_top1 = 100.0 * correct.iter().sum::<usize>() as f64 / n as f64;
    assert!(want_top1 > 0.0 && want_top1 < 100.0, "the reference should tell orders apart: {want_top1}");
    let o = cli(&["evaluate", "--weights", teacher.to_str().unwrap(), "--images", fixture("cifar/cifar-10-batches-py").to_str().unwrap()]);
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(report["images"], n);
    assert!((report["top1"].as_f64().unwrap() - want_top1).abs() < 1e-9, "{report}");
    for c in 0..10 {
        let want = 100.0 * correct[c] as f64 / count[c].max(1) as f64;
        assert!((report["per_class_top1"][c].as_f64().unwrap() - want).abs() < 1e-9, "class {c}: {report}");
    }
    assert!(String::from_utf8_lossy(&o.stderr).contains("CIFAR-10 (python pickles)"));
}
