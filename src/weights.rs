//! Reading tensors from safetensors files as users have them (torchvision / timm state dicts,
//! `module.` prefixes from nn.DataParallel, dicts nested under `state_dict` or `model`), converting
//! f16 / bf16 / f64 to f32, and writing safetensors atomically.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};

use crate::error::{Error, Result};

/// A host tensor in f32 with its shape (row-major, PyTorch order).
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl Tensor {
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Tensor {
        assert_eq!(shape.iter().product::<usize>(), data.len(), "tensor shape and data disagree");
        Tensor { shape, data }
    }
    pub fn zeros(shape: Vec<usize>) -> Tensor {
        let n = shape.iter().product();
        Tensor { shape, data: vec![0.0; n] }
    }
}

/// Tensors of one file after name normalisation, plus its metadata.
#[derive(Debug)]
pub struct TensorFile {
    pub path: PathBuf,
    pub tensors: BTreeMap<String, Tensor>,
    /// Names of integer tensors that were skipped (`num_batches_tracked`).
    pub skipped: Vec<String>,
    pub metadata: HashMap<String, String>,
}

/// Prefixes that wrap a whole state dict: DataParallel's `module.`, training scripts' `state_dict.`
/// and `model.` (after flattening a nested dict). Stripped only when every tensor carries them.
const WRAPPER_PREFIXES: [&str; 3] = ["module.", "state_dict.", "model."];

pub fn read_tensor_file(path: &Path) -> Result<TensorFile> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    parse_tensor_file(path, &bytes)
}

pub fn parse_tensor_file(path: &Path, bytes: &[u8]) -> Result<TensorFile> {
    let st = SafeTensors::deserialize(bytes).map_err(|e| Error::Corrupt { path: path.to_path_buf(), reason: e.to_string() })?;
    let (_, meta) = SafeTensors::read_metadata(bytes).map_err(|e| Error::Corrupt { path: path.to_path_buf(), reason: e.to_string() })?;
    let metadata = meta.metadata().clone().unwrap_or_default();

    let mut names: Vec<String> = st.names().into_iter().map(String::from).collect();
    names.sort();
    // Strip wrapper prefixes while all names share one.
    let mut strip = 0usize;
    loop {
        let rest: Vec<&str> = names.iter().map(|n| &n[strip..]).collect();
        match WRAPPER_PREFIXES.iter().find(|p| !rest.is_empty() && rest.iter().all(|n| n.starts_with(*p))) {
            Some(p) => strip += p.len(),
            None => break,
        }
    }

    let mut tensors = BTreeMap::new();
    let mut skipped = Vec::new();
    for full in &names {
        let name = full[strip..].to_string();
        let view = st.tensor(full).map_err(|e| Error::Corrupt { path: path.to_path_buf(), reason: e.to_string() })?;
        let shape = view.shape().to_vec();
        let raw = view.data();
        let data: Vec<f32> = match view.dtype() {
            Dtype::F32 => raw.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
            Dtype::F16 => raw.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
            Dtype::BF16 => raw.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
            Dtype::F64 => raw.chunks_exact(8).map(|b| f64::from_le_bytes(b.try_into().unwrap()) as f32).collect(),
            Dtype::I64 | Dtype::I32 if name.ends_with("num_batches_tracked") => {
                skipped.push(name);
                continue;
            }
            other => return Err(Error::weights(path, format!("tensor `{name}` has dtype {other:?}; expected F32, F16, BF16 or F64"))),
        };
        if let Some(i) = data.iter().position(|v| !v.is_finite()) {
            return Err(Error::weights(path, format!("tensor `{name}` holds a non-finite value ({}) at flat index {i}", data[i])));
        }
        if tensors.insert(name.clone(), Tensor { shape, data }).is_some() {
            return Err(Error::weights(path, format!("tensor `{name}` appears twice after removing prefixes")));
        }
    }
    Ok(TensorFile { path: path.to_path_buf(), tensors, skipped, metadata })
}

/// Writes f32 tensors as safetensors to `path` atomically (temporary file in the same folder, then rename).
pub fn write_tensor_file(path: &Path, tensors: &[(String, &Tensor)], metadata: Option<HashMap<String, String>>) -> Result<()> {
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(name, t)| {
            let bytes: &[u8] = bytemuck::cast_slice(&t.data);
            (name.clone(), safetensors::tensor::TensorView::new(Dtype::F32, t.shape.clone(), bytes).expect("shape matches data"))
        })
        .collect();
    let bytes = safetensors::tensor::serialize(views, metadata).map_err(|e| Error::output(path, e))?;
    crate::io::write_atomic(path, &bytes)
}
