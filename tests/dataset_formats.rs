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

mod common;

use std::path::Path;

use cda_engine::data::cifar::{detect, Cifar, CifarFormat};
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
