//! IDX files (the MNIST family's format), gzip-compressed or plain: a big-endian header
//! (magic 0x00 0x00 type dims, then one u32 per dimension) followed by the raw array. Images are
//! type 0x08 (u8) with 3 dims (N, H, W); labels 0x08 with 1 dim (N).

use std::io::Read;
use std::path::Path;

use super::{Dataset, Image, Split};
use crate::error::{Error, Result};

/// Where the Debian package `dataset-fashion-mnist` installs the files.
pub const FASHION_MNIST_DIR: &str = "/usr/share/datasets/fashion-mnist";

/// Reads an IDX file (transparently gunzipped when it starts with the gzip magic): dims and bytes.
///
/// A gzip stream is read header first: the array size its dimensions promise is checked against the
/// available memory and allocated fallibly, and the stream must hold exactly that many bytes, so a
/// corrupt or hostile file (dims of 4 billion, a gzip bomb) is an error, never an abort.
pub fn read_idx(path: &Path) -> Result<(Vec<usize>, Vec<u8>)> {
    let raw = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let what = path.display().to_string();
    if !raw.starts_with(&[0x1f, 0x8b]) {
        return parse_idx(&raw).map_err(|m| Error::input(what, m));
    }
    let corrupt = |e: std::io::Error| Error::input(path.display().to_string(), format!("corrupt gzip data: {e}"));
    let mut gz = flate2::read::GzDecoder::new(&raw[..]);
    let mut head = [0u8; 4];
    gz.read_exact(&mut head).map_err(corrupt)?;
    let ndim = check_magic(&head).map_err(|m| Error::input(what.clone(), m))?;
    let mut header = head.to_vec();
    header.resize(4 + 4 * ndim, 0);
    gz.read_exact(&mut header[4..]).map_err(|_| Error::input(what.clone(), format!("truncated IDX header ({ndim} dimensions)")))?;
    let (dims, len) = parse_dims(&header).map_err(|m| Error::input(what.clone(), m))?;
    crate::memory::ensure_fits(&format!("IDX file {what} (dims {dims:?})"), Some(len as u64))?;
    let mut data = Vec::new();
    data.try_reserve_exact(len).map_err(|_| Error::input(what.clone(), format!("cannot allocate {len} bytes for dims {dims:?}")))?;
    // One byte more than promised tells a longer stream from an exact one.
    (&mut gz).take(len as u64 + 1).read_to_end(&mut data).map_err(corrupt)?;
    if data.len() != len {
        let had = if data.len() > len { "more".to_string() } else { data.len().to_string() };
        return Err(Error::input(what, format!("IDX dims {dims:?} need {len} bytes of data; the file has {had}")));
    }
    Ok((dims, data))
}

/// The number of dimensions of an IDX header's first 4 bytes, or why they are not one.
fn check_magic(bytes: &[u8]) -> std::result::Result<usize, String> {
    if bytes.len() < 4 || bytes[0] != 0 || bytes[1] != 0 {
        return Err("not an IDX file (bad magic)".into());
    }
    if bytes[2] != 0x08 {
        return Err(format!("IDX element type 0x{:02x}; only unsigned bytes (0x08) are supported", bytes[2]));
    }
    match bytes[3] as usize {
        0 => Err("truncated IDX header (0 dimensions)".into()),
        n => Ok(n),
    }
}

/// Dims of a complete IDX header and the byte count they promise (checked for overflow).
fn parse_dims(bytes: &[u8]) -> std::result::Result<(Vec<usize>, usize), String> {
    let ndim = check_magic(bytes)?;
    if bytes.len() < 4 + 4 * ndim {
        return Err(format!("truncated IDX header ({ndim} dimensions)"));
    }
    let dims: Vec<usize> = (0..ndim).map(|d| u32::from_be_bytes([bytes[4 + 4 * d], bytes[5 + 4 * d], bytes[6 + 4 * d], bytes[7 + 4 * d]]) as usize).collect();
    let len = dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).ok_or("IDX dimensions overflow")?;
    Ok((dims, len))
}

/// Parses a whole (uncompressed) IDX file: dims and the array bytes.
pub fn parse_idx(bytes: &[u8]) -> std::result::Result<(Vec<usize>, Vec<u8>), String> {
    let (dims, len) = parse_dims(bytes)?;
    let header = 4 + 4 * dims.len();
    if bytes.len() - header != len {
        return Err(format!("IDX dims {dims:?} need {len} bytes of data; the file has {}", bytes.len() - header));
    }
    Ok((dims, bytes[header..].to_vec()))
}

/// Images (N x H x W u8) and labels of one split, held in memory.
pub struct IdxDataset {
    pub name: String,
    pub n: usize,
    pub h: usize,
    pub w: usize,
    pub pixels: Vec<u8>,
    pub labels: Vec<u8>,
    pub classes: usize,
}

impl IdxDataset {
    pub fn from_files(name: &str, images: &Path, labels: &Path) -> Result<IdxDataset> {
        let (idims, pixels) = read_idx(images)?;
        let (ldims, labels_raw) = read_idx(labels)?;
        if idims.len() != 3 {
            return Err(Error::input(images.display().to_string(), format!("image file has dims {idims:?}; expected [N, H, W]")));
        }
        if ldims.len() != 1 || ldims[0] != idims[0] {
            return Err(Error::input(labels.display().to_string(), format!("label file has dims {ldims:?}; expected [{}]", idims[0])));
        }
        if idims[1] == 0 || idims[2] == 0 {
            return Err(Error::input(images.display().to_string(), format!("image file has dims {idims:?}: images of no pixels")));
        }
        let classes = labels_raw.iter().copied().max().map_or(0, |m| m as usize + 1);
        Ok(IdxDataset { name: name.to_string(), n: idims[0], h: idims[1], w: idims[2], pixels, labels: labels_raw, classes })
    }

    /// `train-images-idx3-ubyte.gz` / `t10k-...` (also without `.gz`) in `dir`.
    pub fn fashion_mnist(dir: &Path, split: Split) -> Result<IdxDataset> {
        let (images, labels) = fashion_mnist_files(dir, split)?;
        let mut ds = IdxDataset::from_files(&format!("fashion-mnist {}", if split == Split::Train { "train" } else { "test" }), &images, &labels)?;
        // Fashion-MNIST has 10 classes whatever the file says; a label beyond them is corruption.
        if ds.classes > 10 {
            return Err(Error::input(labels.display().to_string(), format!("label {} is outside Fashion-MNIST's 10 classes", ds.classes - 1)));
        }
        ds.classes = 10;
        Ok(ds)
    }
}

/// The (images, labels) files of one Fashion-MNIST split in `dir`, gzip'd or plain.
///
/// Errors: a file not found, naming where it was looked for and how to get it.
pub fn fashion_mnist_files(dir: &Path, split: Split) -> Result<(std::path::PathBuf, std::path::PathBuf)> {
    let prefix = if split == Split::Train { "train" } else { "t10k" };
    let find = |kind: &str| {
        let base = format!("{prefix}-{kind}-ubyte");
        let gz = dir.join(format!("{base}.gz"));
        if gz.exists() {
            Ok(gz)
        } else if dir.join(&base).exists() {
            Ok(dir.join(base))
        } else {
            Err(Error::input(
                "fashion-mnist",
                format!("{} not found (install the Debian package dataset-fashion-mnist, or set FASHION_MNIST_DIR)", gz.display()),
            ))
        }
    };
    Ok((find("images-idx3")?, find("labels-idx1")?))
}

impl Dataset for IdxDataset {
    fn len(&self) -> usize {
        self.n
    }
    fn num_classes(&self) -> usize {
        self.classes
    }
    fn channels(&self) -> usize {
        1
    }
    fn label(&self, i: usize) -> usize {
        self.labels[i] as usize
    }
    fn image(&self, i: usize) -> Result<Image> {
        let px = &self.pixels[i * self.h * self.w..(i + 1) * self.h * self.w];
        Ok(Image { c: 1, h: self.h, w: self.w, data: px.iter().map(|&v| v as f32 / 255.0).collect() })
    }
    fn describe(&self) -> String {
        format!("{} ({} images, {}x{})", self.name, self.n, self.h, self.w)
    }
    fn image_size(&self) -> Option<(usize, usize)> {
        Some((self.h, self.w))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_small_idx_and_rejects_bad_ones() {
        let mut b = vec![0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0, 2];
        b.extend([1, 2, 3, 4]);
        let (dims, data) = parse_idx(&b).unwrap();
        assert_eq!(dims, vec![2, 1, 2]);
        assert_eq!(data, vec![1, 2, 3, 4]);
        assert!(parse_idx(&b[..18]).unwrap_err().contains("need 4 bytes"));
        let mut f = b.clone();
        f[2] = 0x0d;
        assert!(parse_idx(&f).unwrap_err().contains("element type"));
        assert!(parse_idx(&[1, 2]).unwrap_err().contains("magic"));
    }
}
