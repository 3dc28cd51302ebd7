//! CIFAR-10 and CIFAR-100 as distributed (<https://www.cs.toronto.edu/~kriz/cifar.html>) and as
//! torchvision downloads them, read whole into memory (CIFAR-10 is 180 MB as bytes):
//! - `cifar-10-batches-py/`: `data_batch_1` .. `data_batch_5` and `test_batch`, Python pickles of
//!   dicts holding `data` (a numpy uint8 array N x 3072: the R, G and B planes of a 32 x 32 image)
//!   and `labels`; `batches.meta` holds `label_names`;
//! - `cifar-100-python/`: `train` and `test` with `fine_labels` (the 100 classes torchvision uses);
//!   `meta` holds `fine_label_names`;
//! - `cifar-10-batches-bin/`: `data_batch_1.bin` .. `data_batch_5.bin` and `test_batch.bin`, records
//!   of one label byte and 3072 pixel bytes; `batches.meta.txt` names the classes;
//! - `cifar-100-binary/`: `train.bin` and `test.bin`, records of a coarse and a fine label byte and
//!   3072 pixel bytes; `fine_label_names.txt`.
//!
//! The pickles are read with serde-pickle (numpy's array is a reduce call whose state holds the raw
//! bytes; its globals are not resolved, only the state is read).

use std::path::{Path, PathBuf};

use serde_pickle::{HashableValue, Value};

use super::{Dataset, Image, Split};
use crate::error::{Error, Result};

const PIXELS: usize = 3 * 32 * 32;

/// The four layouts of CIFAR on disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CifarFormat {
    Cifar10Python,
    Cifar100Python,
    Cifar10Binary,
    Cifar100Binary,
}

impl CifarFormat {
    /// The folder name the archive unpacks to.
    fn folder(self) -> &'static str {
        match self {
            CifarFormat::Cifar10Python => "cifar-10-batches-py",
            CifarFormat::Cifar100Python => "cifar-100-python",
            CifarFormat::Cifar10Binary => "cifar-10-batches-bin",
            CifarFormat::Cifar100Binary => "cifar-100-binary",
        }
    }
    /// The file that marks the layout (every layout has its test split).
    fn marker(self) -> &'static str {
        match self {
            CifarFormat::Cifar10Python => "test_batch",
            CifarFormat::Cifar100Python => "test",
            CifarFormat::Cifar10Binary => "test_batch.bin",
            CifarFormat::Cifar100Binary => "test.bin",
        }
    }
    pub fn describe(self) -> &'static str {
        match self {
            CifarFormat::Cifar10Python => "CIFAR-10 (python pickles)",
            CifarFormat::Cifar100Python => "CIFAR-100 (python pickles)",
            CifarFormat::Cifar10Binary => "CIFAR-10 (binary version)",
            CifarFormat::Cifar100Binary => "CIFAR-100 (binary version)",
        }
    }
    fn classes(self) -> usize {
        match self {
            CifarFormat::Cifar10Python | CifarFormat::Cifar10Binary => 10,
            _ => 100,
        }
    }
    /// The files of a split, in the order their images are numbered.
    fn files(self, split: Split) -> Vec<&'static str> {
        match (self, split) {
            (CifarFormat::Cifar10Python, Split::Train) => vec!["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5"],
            (CifarFormat::Cifar10Python, Split::Test) => vec!["test_batch"],
            (CifarFormat::Cifar100Python, Split::Train) => vec!["train"],
            (CifarFormat::Cifar100Python, Split::Test) => vec!["test"],
            (CifarFormat::Cifar10Binary, Split::Train) => {
                vec!["data_batch_1.bin", "data_batch_2.bin", "data_batch_3.bin", "data_batch_4.bin", "data_batch_5.bin"]
            }
            (CifarFormat::Cifar10Binary, Split::Test) => vec!["test_batch.bin"],
            (CifarFormat::Cifar100Binary, Split::Train) => vec!["train.bin"],
            (CifarFormat::Cifar100Binary, Split::Test) => vec!["test.bin"],
        }
    }
}

const FORMATS: [CifarFormat; 4] = [CifarFormat::Cifar10Python, CifarFormat::Cifar100Python, CifarFormat::Cifar10Binary, CifarFormat::Cifar100Binary];

/// Which CIFAR layout `root` holds: the unpacked folder itself (`.../cifar-10-batches-py`) or the
/// folder torchvision is given as `root` (holding `cifar-10-batches-py/`). None for anything else.
pub fn detect(root: &Path) -> Option<(CifarFormat, PathBuf)> {
    for f in FORMATS {
        let name_fits = root.file_name().is_some_and(|n| n == f.folder());
        if root.join(f.marker()).is_file() && (name_fits || root.join(if f.classes() == 10 { "batches.meta" } else { "meta" }).is_file()) {
            return Some((f, root.to_path_buf()));
        }
        let inner = root.join(f.folder());
        if inner.join(f.marker()).is_file() {
            return Some((f, inner));
        }
    }
    None
}

/// A CIFAR split in memory: N x 3 x 32 x 32 bytes (CHW, as stored) and a label per image.
pub struct Cifar {
    name: String,
    format: CifarFormat,
    pixels: Vec<u8>,
    labels: Vec<usize>,
    /// Class names from the meta file (empty when it is missing).
    pub class_names: Vec<String>,
}

impl Cifar {
    /// Reads the `split` of the CIFAR folder `dir` (see [`detect`]).
    ///
    /// Errors: `Error::Io` for a missing or unreadable file, `Error::Input` naming the file for
    /// anything malformed (not a pickle, no `data`/labels, data not N x 3072 bytes, a label out of
    /// range, a binary file whose length is not a whole number of records).
    pub fn open(dir: &Path, format: CifarFormat, split: Split) -> Result<Cifar> {
        let (mut pixels, mut labels) = (Vec::new(), Vec::new());
        for f in format.files(split) {
            let path = dir.join(f);
            let (p, l) = match format {
                CifarFormat::Cifar10Python => read_pickle(&path, "labels")?,
                CifarFormat::Cifar100Python => read_pickle(&path, "fine_labels")?,
                CifarFormat::Cifar10Binary => read_binary(&path, 1)?,
                CifarFormat::Cifar100Binary => read_binary(&path, 2)?,
            };
            if let Some(bad) = l.iter().find(|&&c| c >= format.classes()) {
                return Err(Error::input(path.display().to_string(), format!("label {bad} is out of range for {}", format.describe())));
            }
            pixels.extend(p);
            labels.extend(l);
        }
        let class_names = read_names(dir, format).unwrap_or_default();
        let split_name = if split == Split::Train { "train" } else { "test" };
        Ok(Cifar { name: format!("{} {split_name} at {}", format.describe(), dir.display()), format, pixels, labels, class_names })
    }

    pub fn format(&self) -> CifarFormat {
        self.format
    }
}

fn key<'a>(dict: &'a std::collections::BTreeMap<HashableValue, Value>, name: &str) -> Option<&'a Value> {
    // Python 2's pickles (the originals) have byte-string keys; Python 3's have text keys.
    dict.get(&HashableValue::Bytes(name.as_bytes().to_vec())).or_else(|| dict.get(&HashableValue::String(name.to_string())))
}

/// The first byte string of exactly `len` bytes inside `v` (numpy's array state is a tuple
/// (version, shape, dtype, fortran, raw bytes)).
fn find_bytes(v: &Value, len: usize) -> Option<&[u8]> {
    match v {
        Value::Bytes(b) if b.len() == len => Some(b),
        Value::Tuple(items) | Value::List(items) => items.iter().find_map(|x| find_bytes(x, len)),
        _ => None,
    }
}

fn load_pickle(path: &Path) -> Result<std::collections::BTreeMap<HashableValue, Value>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let bad = |m: String| Error::input(path.display().to_string(), m);
    let v = serde_pickle::value_from_slice(&bytes, serde_pickle::DeOptions::new().replace_unresolved_globals())
        .map_err(|e| bad(format!("not a readable Python pickle: {e}")))?;
    match v {
        Value::Dict(d) => Ok(d),
        _ => Err(bad("the pickle does not hold a dict (CIFAR batches are dicts)".into())),
    }
}

/// (pixels, labels) of one pickled batch.
fn read_pickle(path: &Path, labels_key: &str) -> Result<(Vec<u8>, Vec<usize>)> {
    let bad = |m: String| Error::input(path.display().to_string(), m);
    let d = load_pickle(path)?;
    let labels: Vec<usize> = match key(&d, labels_key) {
        Some(Value::List(l)) => l
            .iter()
            .map(|x| match x {
                Value::I64(i) if *i >= 0 => Ok(*i as usize),
                other => Err(bad(format!("{labels_key} holds {other:?}, not a class number"))),
            })
            .collect::<Result<_>>()?,
        Some(other) => return Err(bad(format!("{labels_key} is not a list ({})", kind(other)))),
        None => return Err(bad(format!("no {labels_key} in the batch"))),
    };
    let data = key(&d, "data").ok_or_else(|| bad("no data in the batch".into()))?;
    let n = labels.len();
    let raw = find_bytes(data, n * PIXELS).ok_or_else(|| bad(format!("data is not a uint8 array of {n} x {PIXELS} bytes (one row per label)")))?;
    Ok((raw.to_vec(), labels))
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Dict(_) => "a dict",
        Value::Tuple(_) => "a tuple",
        Value::Bytes(_) => "bytes",
        Value::String(_) => "a string",
        _ => "another value",
    }
}

/// (pixels, labels) of one binary file: records of `label_bytes` label bytes (the last is the
/// class: CIFAR-100 stores coarse then fine) and 3072 pixel bytes.
fn read_binary(path: &Path, label_bytes: usize) -> Result<(Vec<u8>, Vec<usize>)> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let record = label_bytes + PIXELS;
    if bytes.is_empty() || !bytes.len().is_multiple_of(record) {
        return Err(Error::input(path.display().to_string(), format!("{} bytes is not a whole number of {record}-byte records", bytes.len())));
    }
    let mut pixels = Vec::with_capacity(bytes.len() / record * PIXELS);
    let mut labels = Vec::with_capacity(bytes.len() / record);
    for r in bytes.chunks_exact(record) {
        labels.push(r[label_bytes - 1] as usize);
        pixels.extend_from_slice(&r[label_bytes..]);
    }
    Ok((pixels, labels))
}

fn read_names(dir: &Path, format: CifarFormat) -> Option<Vec<String>> {
    let text = |v: &Value| match v {
        Value::Bytes(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::String(s) => Some(s.clone()),
        _ => None,
    };
    let list = |file: &str, k: &str| -> Option<Vec<String>> {
        let d = load_pickle(&dir.join(file)).ok()?;
        match key(&d, k)? {
            Value::List(l) => l.iter().map(text).collect(),
            _ => None,
        }
    };
    let lines = |file: &str| -> Option<Vec<String>> {
        let t = std::fs::read_to_string(dir.join(file)).ok()?;
        Some(t.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_string).collect())
    };
    match format {
        CifarFormat::Cifar10Python => list("batches.meta", "label_names"),
        CifarFormat::Cifar100Python => list("meta", "fine_label_names"),
        CifarFormat::Cifar10Binary => lines("batches.meta.txt"),
        CifarFormat::Cifar100Binary => lines("fine_label_names.txt"),
    }
}

impl Dataset for Cifar {
    fn len(&self) -> usize {
        self.labels.len()
    }
    fn num_classes(&self) -> usize {
        self.format.classes()
    }
    fn channels(&self) -> usize {
        3
    }
    fn label(&self, i: usize) -> usize {
        self.labels[i]
    }
    fn image(&self, i: usize) -> Result<Image> {
        let px = self.pixels.get(i * PIXELS..(i + 1) * PIXELS).ok_or_else(|| Error::input(self.name.clone(), format!("image {i} is out of range")))?;
        Ok(Image { c: 3, h: 32, w: 32, data: px.iter().map(|&b| b as f32 / 255.0).collect() })
    }
    fn describe(&self) -> String {
        format!("{} ({} images)", self.name, self.len())
    }
    fn image_size(&self) -> Option<(usize, usize)> {
        Some((32, 32))
    }
}
