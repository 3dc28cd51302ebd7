//! The relabel file: per epoch, for every image of the distilled set in the epoch's order, the view
//! (crop window + flip), the in-batch mix permutation, and the teacher's logits on the mixed view
//! (fp16, all classes or the top k); per batch the mix lambda and CutMix box (docs/algorithm.md section 3).
//!
//! Format: safetensors (any reader opens it), tensors laid out epoch by epoch so one epoch is read
//! with a seek and a few reads, never the whole file:
//!   e{E}.ids     I32 [M]          dataset indices in batch order (batch b = rows b*B .. b*B + n_b)
//!   e{E}.views   I16 [M, 5]       top, left, height, width, flip
//!   e{E}.perm    I16 [M]          mix partner of each row within its batch (identity without mix)
//!   e{E}.mix     F32 [nb, 5]      lam, box top, left, bottom, right (zeros without mix)
//!   e{E}.logits  F16 [M, C]       when topk = 0
//!   e{E}.topk_values F16 [M, k], e{E}.topk_indices I16 [M, k], e{E}.rest F16 [M]   when topk = k:
//!                the k largest logits, their classes, and the mean of the other logits, which
//!                stands in for every other class at replay.
//! Metadata: format, epochs, batch_size, images, classes, image_size, topk, mix kind, min_scale, flip,
//! mean/std, teacher and its weights' fingerprint, images folder, a hash of the sorted relative file
//! list (`images_hash`) and one of the files' content (`images_content_hash`), seed.
//!
//! A shard's file (`relabel --shard I/N`, metadata `shard` = `I/N`) has the same layout over only
//! the batches it holds: every N-th batch of each epoch from batch I on, rows and mix rows in batch
//! order. [`merge_shards`] interleaves the N files' bytes back into the file one process writes.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use half::f16;
use serde_json::{json, Value};

use crate::data::augment::{MixRecord, View};
use crate::error::{Error, Result};

pub const FORMAT: &str = "cda-engine relabel v1";

/// What the file holds besides the per-epoch tensors.
#[derive(Clone, Debug, PartialEq)]
pub struct LabelMeta {
    pub epochs: usize,
    pub batch_size: usize,
    pub images: usize,
    pub classes: usize,
    pub topk: usize,
    /// Any other metadata (teacher, folder, hash, mix, min_scale, seed, ...).
    pub extra: BTreeMap<String, String>,
    /// `Some((index, count))`: a shard's file, holding batches index, index + count, ... of every
    /// epoch (`relabel --shard`); `None`: every batch.
    pub shard: Option<(usize, usize)>,
}

/// One epoch's records.
#[derive(Clone, Debug, PartialEq)]
pub struct EpochLabels {
    pub ids: Vec<usize>,
    pub views: Vec<View>,
    /// Per batch: the mix (None when the batch was not mixed).
    pub mixes: Vec<Option<MixRecord>>,
    /// M x C teacher logits (reconstructed from the top k when the file stores only those).
    pub logits: Vec<f32>,
}

impl LabelMeta {
    /// The file's `__metadata__`: `extra` with the layout's numbers (and the shard) written over it.
    fn metadata(&self) -> BTreeMap<String, String> {
        let mut md = self.extra.clone();
        md.insert("format".into(), FORMAT.into());
        md.insert("epochs".into(), self.epochs.to_string());
        md.insert("batch_size".into(), self.batch_size.to_string());
        md.insert("images".into(), self.images.to_string());
        md.insert("classes".into(), self.classes.to_string());
        md.insert("topk".into(), self.topk.to_string());
        if let Some((i, n)) = self.shard {
            md.insert("shard".into(), format!("{i}/{n}"));
        }
        md
    }

    /// Batches in one epoch of the whole set.
    pub fn epoch_batches(&self) -> usize {
        self.images.div_ceil(self.batch_size)
    }
    /// Length of each batch this file holds, in file order (the last batch of an epoch may be short).
    fn held_batches(&self) -> Vec<usize> {
        let (first, step) = self.shard.unwrap_or((0, 1));
        (first..self.epoch_batches()).step_by(step.max(1)).map(|b| self.batch_size.min(self.images - b * self.batch_size)).collect()
    }
    /// Rows (views) per epoch this file holds.
    fn rows(&self) -> usize {
        self.held_batches().iter().sum()
    }
    /// (name, dtype, shape) of epoch e's tensors in file order.
    fn tensors(&self, e: usize) -> Vec<(String, &'static str, Vec<usize>)> {
        let (m, c, k) = (self.rows(), self.classes, self.topk);
        let mut v = vec![
            (format!("e{e}.ids"), "I32", vec![m]),
            (format!("e{e}.views"), "I16", vec![m, 5]),
            (format!("e{e}.perm"), "I16", vec![m]),
            (format!("e{e}.mix"), "F32", vec![self.held_batches().len(), 5]),
        ];
        if k == 0 {
            v.push((format!("e{e}.logits"), "F16", vec![m, c]));
        } else {
            v.push((format!("e{e}.topk_values"), "F16", vec![m, k]));
            v.push((format!("e{e}.topk_indices"), "I16", vec![m, k]));
            v.push((format!("e{e}.rest"), "F16", vec![m]));
        }
        v
    }
}

fn dtype_size(d: &str) -> usize {
    match d {
        "F32" | "I32" => 4,
        _ => 2,
    }
}

/// Streams a relabel file: the header (all offsets are known up front) then one epoch at a time,
/// into a temporary file renamed into place by `finish` (atomic).
pub struct LabelWriter {
    meta: LabelMeta,
    path: PathBuf,
    tmp: PathBuf,
    file: std::io::BufWriter<File>,
    next_epoch: usize,
    /// Header and every epoch's tensors, in bytes: what the finished file must measure.
    expected_len: u64,
    /// Bytes of the current epoch written through `write_raw`.
    raw_written: u64,
}

impl LabelWriter {
    pub fn create(path: &Path, meta: LabelMeta) -> Result<LabelWriter> {
        if meta.images == 0 || meta.batch_size == 0 || meta.classes == 0 || meta.epochs == 0 {
            return Err(Error::Option("a relabel file needs images, classes, batch size and epochs".into()));
        }
        if let Some((i, n)) = meta.shard {
            if i >= n || n > meta.epoch_batches() {
                return Err(Error::Option(format!("shard {i} of {n}: an epoch has {} batches; give at most that many shards", meta.epoch_batches())));
            }
        }
        if meta.images > i32::MAX as usize || meta.classes > i16::MAX as usize || meta.batch_size > i16::MAX as usize {
            return Err(Error::Option(format!(
                "{} images, {} classes, batch {}: too large for the relabel format",
                meta.images, meta.classes, meta.batch_size
            )));
        }
        let mut header = serde_json::Map::new();
        header.insert("__metadata__".into(), json!(meta.metadata()));
        let mut offset = 0usize;
        for e in 0..meta.epochs {
            for (name, dtype, shape) in meta.tensors(e) {
                let bytes = shape.iter().product::<usize>() * dtype_size(dtype);
                header.insert(name, json!({"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + bytes]}));
                offset += bytes;
            }
        }
        let mut text = serde_json::to_vec(&Value::Object(header)).expect("header serialises");
        while !text.len().is_multiple_of(8) {
            text.push(b' ');
        }
        // A folder or unwritable place fails here, before any epoch, not at the final rename.
        crate::io::check_writable(path)?;
        crate::io::remove_stale_temps(path);
        let tmp = crate::io::temp_sibling(path);
        let f = File::create(&tmp).map_err(|e| Error::output(path, e))?;
        crate::io::lock_temp(&f, path)?;
        let mut file = std::io::BufWriter::new(f);
        let w = |file: &mut std::io::BufWriter<File>, b: &[u8]| file.write_all(b).map_err(|e| Error::output(path, e));
        w(&mut file, &(text.len() as u64).to_le_bytes())?;
        w(&mut file, &text)?;
        let expected_len = 8 + text.len() as u64 + offset as u64;
        Ok(LabelWriter { meta, path: path.to_path_buf(), tmp, file, next_epoch: 0, expected_len, raw_written: 0 })
    }

    /// Appends the next epoch (epochs must come in order): for a shard's file, only its batches.
    pub fn write_epoch(&mut self, e: &EpochLabels) -> Result<()> {
        let m = &self.meta;
        let (n, c, k) = (m.rows(), m.classes, m.topk);
        let held = m.held_batches();
        if self.next_epoch >= m.epochs || e.ids.len() != n || e.views.len() != n || e.logits.len() != n * c || e.mixes.len() != held.len() {
            return Err(Error::State(format!("relabel epoch {} does not match the file layout", self.next_epoch)));
        }
        let mut buf: Vec<u8> = Vec::new();
        for &id in &e.ids {
            buf.extend((id as i32).to_le_bytes());
        }
        for v in &e.views {
            for x in [v.top, v.left, v.h, v.w, v.flip as i32] {
                buf.extend((x as i16).to_le_bytes());
            }
        }
        for (mix, &len) in e.mixes.iter().zip(&held) {
            for r in 0..len {
                let p = mix.as_ref().map_or(r as u32, |mx| mx.perm[r]);
                buf.extend((p as i16).to_le_bytes());
            }
        }
        for mix in &e.mixes {
            let row = match mix {
                Some(mx) => [mx.lam, mx.bbox[0] as f32, mx.bbox[1] as f32, mx.bbox[2] as f32, mx.bbox[3] as f32],
                None => [0.0; 5],
            };
            for v in row {
                buf.extend(v.to_le_bytes());
            }
        }
        if k == 0 {
            for &v in &e.logits {
                buf.extend(f16::from_f32(v).to_le_bytes());
            }
        } else {
            let mut idx_bytes = Vec::new();
            let mut rest = Vec::new();
            for row in e.logits.chunks(c) {
                let mut order: Vec<usize> = (0..c).collect();
                order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
                for &j in &order[..k] {
                    buf.extend(f16::from_f32(row[j]).to_le_bytes());
                    idx_bytes.extend((j as i16).to_le_bytes());
                }
                let others = &order[k..];
                let mean = if others.is_empty() { 0.0 } else { others.iter().map(|&j| row[j] as f64).sum::<f64>() / others.len() as f64 };
                rest.extend(f16::from_f32(mean as f32).to_le_bytes());
            }
            buf.extend(idx_bytes);
            buf.extend(rest);
        }
        self.file.write_all(&buf).map_err(|err| Error::output(&self.path, err))?;
        self.next_epoch += 1;
        Ok(())
    }

    /// Appends raw bytes of the next epoch's tensors, in file order (what [`merge_shards`]
    /// assembles piece by piece); [`LabelWriter::end_raw_epoch`] then checks the epoch is whole.
    fn write_raw(&mut self, bytes: &[u8]) -> Result<()> {
        self.raw_written += bytes.len() as u64;
        self.file.write_all(bytes).map_err(|err| Error::output(&self.path, err))
    }

    /// Ends an epoch written by [`LabelWriter::write_raw`]. Errors (`Error::State`) when the bytes
    /// written are not exactly the epoch's tensors.
    fn end_raw_epoch(&mut self) -> Result<()> {
        let want: usize = self.meta.tensors(self.next_epoch).iter().map(|(_, d, s)| s.iter().product::<usize>() * dtype_size(d)).sum();
        if self.next_epoch >= self.meta.epochs || self.raw_written != want as u64 {
            return Err(Error::State(format!("relabel epoch {}: {} bytes written, the layout holds {want}", self.next_epoch, self.raw_written)));
        }
        self.raw_written = 0;
        self.next_epoch += 1;
        Ok(())
    }

    pub fn finish(mut self) -> Result<()> {
        if self.next_epoch != self.meta.epochs {
            return Err(Error::State(format!("relabel file closed after {} of {} epochs", self.next_epoch, self.meta.epochs)));
        }
        self.file.flush().map_err(|e| Error::output(&self.path, e))?;
        self.file.get_ref().sync_all().map_err(|e| Error::output(&self.path, e))?;
        // A short file must never take the final name, whatever the writes reported.
        let on_disk = self.file.get_ref().metadata().map_err(|e| Error::output(&self.path, e))?.len();
        if on_disk != self.expected_len {
            return Err(Error::output(&self.path, format!("only {on_disk} of {} bytes reached the disk", self.expected_len)));
        }
        std::fs::rename(&self.tmp, &self.path).map_err(|e| Error::output(&self.path, e))?;
        crate::io::sync_parent(&self.path);
        Ok(())
    }
}

impl Drop for LabelWriter {
    /// An unfinished or unrenamed file is removed (after a successful rename there is nothing left).
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.tmp);
    }
}

/// A relabel file opened for reading epoch by epoch.
#[derive(Debug)]
pub struct LabelFile {
    pub path: PathBuf,
    pub meta: LabelMeta,
    data_start: u64,
    offsets: HashMap<String, (String, Vec<usize>, usize, usize)>,
}

impl LabelFile {
    pub fn open(path: &Path) -> Result<LabelFile> {
        let bad = |m: String| Error::Corrupt { path: path.to_path_buf(), reason: m };
        let mut f = File::open(path).map_err(|e| Error::io(path, e))?;
        let file_len = f.metadata().map_err(|e| Error::io(path, e))?.len();
        let mut len8 = [0u8; 8];
        f.read_exact(&mut len8).map_err(|_| bad("shorter than a safetensors header".into()))?;
        let hlen = u64::from_le_bytes(len8);
        if hlen > 100 << 20 || 8 + hlen > file_len {
            return Err(bad(format!("header length {hlen} does not fit the file ({file_len} bytes)")));
        }
        let mut text = vec![0u8; hlen as usize];
        f.read_exact(&mut text).map_err(|e| Error::io(path, e))?;
        let header: serde_json::Map<String, Value> = serde_json::from_slice(&text).map_err(|e| bad(format!("header is not JSON: {e}")))?;
        let md: BTreeMap<String, String> =
            header.get("__metadata__").and_then(|m| serde_json::from_value(m.clone()).ok()).ok_or_else(|| bad("no metadata: not a relabel file".into()))?;
        if md.get("format").map(String::as_str) != Some(FORMAT) {
            return Err(Error::input(
                path.display().to_string(),
                format!("not a relabel file of this engine (format {:?}; expected {FORMAT:?})", md.get("format")),
            ));
        }
        let num = |k: &str| -> Result<usize> { md.get(k).and_then(|v| v.parse().ok()).ok_or_else(|| bad(format!("metadata {k} missing or not a number"))) };
        let meta = LabelMeta {
            epochs: num("epochs")?,
            batch_size: num("batch_size")?,
            images: num("images")?,
            classes: num("classes")?,
            topk: num("topk")?,
            extra: md.clone(),
            shard: None,
        };
        if meta.batch_size == 0 || meta.images == 0 || meta.classes == 0 || meta.topk > meta.classes {
            return Err(bad("metadata describes an empty layout".into()));
        }
        let meta = match md.get("shard") {
            None => meta,
            Some(t) => {
                let parsed = t.split_once('/').and_then(|(i, n)| Some((i.parse::<usize>().ok()?, n.parse::<usize>().ok()?)));
                match parsed {
                    Some((i, n)) if i < n && n <= meta.epoch_batches() => LabelMeta { shard: Some((i, n)), ..meta },
                    _ => return Err(bad(format!("metadata shard {t:?} is not I/N with I < N <= the batches of an epoch"))),
                }
            }
        };
        let data_start = 8 + hlen;
        let mut offsets = HashMap::new();
        for e in 0..meta.epochs {
            for (name, dtype, shape) in meta.tensors(e) {
                let t = header.get(&name).ok_or_else(|| bad(format!("tensor {name} missing")))?;
                let (d, s, o): (String, Vec<usize>, Vec<usize>) = (
                    serde_json::from_value(t["dtype"].clone()).map_err(|_| bad(format!("{name}: bad dtype")))?,
                    serde_json::from_value(t["shape"].clone()).map_err(|_| bad(format!("{name}: bad shape")))?,
                    serde_json::from_value(t["data_offsets"].clone()).map_err(|_| bad(format!("{name}: bad offsets")))?,
                );
                if d != dtype
                    || s != shape
                    || o.len() != 2
                    || o[1] < o[0]
                    || o[1] - o[0] != shape.iter().product::<usize>() * dtype_size(dtype)
                    || data_start + o[1] as u64 > file_len
                {
                    return Err(bad(format!("tensor {name}: {d} {s:?} at {o:?} does not match the layout ({dtype} {shape:?}) or the file size")));
                }
                offsets.insert(name, (d, s, o[0], o[1]));
            }
        }
        Ok(LabelFile { path: path.to_path_buf(), meta, data_start, offsets })
    }

    fn read(&self, f: &mut File, name: &str) -> Result<Vec<u8>> {
        let (_, _, a, b) = &self.offsets[name];
        let mut buf = vec![0u8; b - a];
        f.seek(SeekFrom::Start(self.data_start + *a as u64)).map_err(|e| Error::io(&self.path, e))?;
        f.read_exact(&mut buf).map_err(|e| Error::io(&self.path, e))?;
        Ok(buf)
    }

    /// Reads epoch e (0-based), checking every index against the layout.
    pub fn epoch(&self, e: usize) -> Result<EpochLabels> {
        let m = &self.meta;
        if e >= m.epochs {
            return Err(Error::Option(format!("{} holds {} epochs; epoch {} was asked for", self.path.display(), m.epochs, e + 1)));
        }
        let bad = |what: String| Error::Corrupt { path: self.path.clone(), reason: format!("epoch {e}: {what}") };
        let mut f = File::open(&self.path).map_err(|err| Error::io(&self.path, err))?;
        let i16s = |b: Vec<u8>| b.chunks_exact(2).map(|c| i16::from_le_bytes([c[0], c[1]])).collect::<Vec<_>>();
        let f16s = |b: Vec<u8>| b.chunks_exact(2).map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32()).collect::<Vec<_>>();
        let (n, c, k) = (m.rows(), m.classes, m.topk);
        let ids: Vec<usize> = self.read(&mut f, &format!("e{e}.ids"))?.chunks_exact(4).map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as usize).collect();
        if ids.iter().any(|&i| i >= m.images) {
            return Err(bad("image index out of range".into()));
        }
        let v = i16s(self.read(&mut f, &format!("e{e}.views"))?);
        let views: Vec<View> =
            v.chunks_exact(5).map(|r| View { top: r[0] as i32, left: r[1] as i32, h: r[2] as i32, w: r[3] as i32, flip: r[4] != 0 }).collect();
        let perm = i16s(self.read(&mut f, &format!("e{e}.perm"))?);
        let mix: Vec<f32> = self.read(&mut f, &format!("e{e}.mix"))?.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        let kind_cutmix = m.extra.get("mix").map(String::as_str) == Some("cutmix");
        let mixed = m.extra.get("mix").is_some_and(|k| k != "none");
        let mut mixes = Vec::new();
        let mut start = 0;
        for ((b, row), len) in mix.chunks_exact(5).enumerate().zip(m.held_batches()) {
            let rows = start..start + len;
            start += len;
            let p: Vec<u32> = perm[rows.clone()].iter().map(|&x| x as u32).collect();
            if p.iter().any(|&x| x as usize >= rows.len()) {
                return Err(bad(format!("mix permutation of batch {b} out of range")));
            }
            let is_mixed = mixed && rows.len() >= 2;
            mixes.push(is_mixed.then(|| MixRecord {
                cutmix: kind_cutmix,
                perm: p,
                lam: row[0],
                bbox: [row[1] as u32, row[2] as u32, row[3] as u32, row[4] as u32],
            }));
        }
        let logits = if k == 0 {
            f16s(self.read(&mut f, &format!("e{e}.logits"))?)
        } else {
            let vals = f16s(self.read(&mut f, &format!("e{e}.topk_values"))?);
            let idx = i16s(self.read(&mut f, &format!("e{e}.topk_indices"))?);
            let rest = f16s(self.read(&mut f, &format!("e{e}.rest"))?);
            let mut out = vec![0f32; n * c];
            for i in 0..n {
                out[i * c..(i + 1) * c].fill(rest[i]);
                for j in 0..k {
                    let cls = idx[i * k + j];
                    if cls < 0 || cls as usize >= c {
                        return Err(bad(format!("top-k class {cls} out of range")));
                    }
                    out[i * c + cls as usize] = vals[i * k + j];
                }
            }
            out
        };
        Ok(EpochLabels { ids, views, mixes, logits })
    }
}

/// Metadata keys that differ between two relabel files meant to be shards of one run (the shard
/// key itself excepted): empty when they agree.
fn differing_keys(a: &LabelMeta, b: &LabelMeta) -> Vec<String> {
    let keys: std::collections::BTreeSet<&String> = a.extra.keys().chain(b.extra.keys()).filter(|k| *k != "shard").collect();
    let shown = |m: &LabelMeta, k: &str| m.extra.get(k).cloned().unwrap_or_else(|| "absent".into());
    keys.into_iter().filter(|k| a.extra.get(*k) != b.extra.get(*k)).map(|k| format!("{k} {} vs {}", shown(a, k), shown(b, k))).collect()
}

/// Whether the finished file at `path` is the shard `meta` describes (same settings, same images):
/// a rerun of that shard can keep it. Unreadable or other files are not.
pub fn holds_shard(path: &Path, meta: &LabelMeta) -> bool {
    let Ok(f) = LabelFile::open(path) else { return false };
    // What the file would hold if this process wrote it (the shard key is compared separately).
    f.meta.shard == meta.shard && differing_keys(&f.meta, &LabelMeta { extra: meta.metadata(), ..meta.clone() }).is_empty()
}

/// Writes `out`, the relabel file one process writes, from the files of shards 0..N in order
/// (`shards[i]` holds shard i of N): per epoch and tensor, batch b's rows are copied from shard
/// b mod N, byte for byte. The shard files are left in place.
///
/// Errors: `Error::Input` naming a file that is not shard i of N or whose settings differ from
/// shard 0's (the keys that differ are listed); I/O and output errors as [`LabelWriter`]'s.
pub fn merge_shards(shards: &[PathBuf], out: &Path) -> Result<LabelMeta> {
    let files = shards.iter().map(|p| LabelFile::open(p)).collect::<Result<Vec<_>>>()?;
    let count = files.len();
    let first = files.first().ok_or_else(|| Error::State("no relabel shards to merge".into()))?;
    for (i, f) in files.iter().enumerate() {
        if f.meta.shard != Some((i, count)) {
            let is = f.meta.shard.map_or("a whole labels file".to_string(), |(j, n)| format!("shard {j} of {n}"));
            return Err(Error::input(f.path.display().to_string(), format!("expected shard {i} of {count}, found {is}")));
        }
        let differ = differing_keys(&first.meta, &f.meta);
        if !differ.is_empty() {
            return Err(Error::input(
                f.path.display().to_string(),
                format!(
                    "shard {i} and shard 0 ({}) were made with other settings or images: {} (shard 0's first); rerun whichever shard had other flags with the flags of the rest",
                    first.path.display(),
                    differ.join(", ")
                ),
            ));
        }
    }
    let mut extra = first.meta.extra.clone();
    extra.remove("shard");
    let meta = LabelMeta { extra, shard: None, ..first.meta.clone() };
    let mut writer = LabelWriter::create(out, meta.clone())?;
    let mut handles = files.iter().map(|f| File::open(&f.path).map_err(|e| Error::io(&f.path, e))).collect::<Result<Vec<_>>>()?;
    // Batch by batch, so the merge holds one batch's rows at a time, not an epoch.
    let mut buf = Vec::new();
    for e in 0..meta.epochs {
        for (name, dtype, shape) in meta.tensors(e) {
            // Bytes per row (per batch for the mix tensor, whose rows are batches).
            let unit = shape[1..].iter().product::<usize>() * dtype_size(dtype);
            let per_batch = name.ends_with(".mix");
            for b in 0..meta.epoch_batches() {
                let (s, j) = (b % count, b / count);
                let len = meta.batch_size.min(meta.images - b * meta.batch_size);
                // Every batch a shard holds before its last is whole, so batch j starts at row j * B.
                let (at, units) = if per_batch { (j, 1) } else { (j * meta.batch_size, len) };
                let f = &files[s];
                let (_, _, start, end) = &f.offsets[&name];
                let (from, bytes) = (start + at * unit, units * unit);
                if from + bytes > *end {
                    return Err(Error::Corrupt { path: f.path.clone(), reason: format!("tensor {name} is shorter than its batches") });
                }
                buf.resize(bytes, 0);
                handles[s].seek(SeekFrom::Start(f.data_start + from as u64)).map_err(|err| Error::io(&f.path, err))?;
                handles[s].read_exact(&mut buf).map_err(|err| Error::io(&f.path, err))?;
                writer.write_raw(&buf)?;
            }
        }
        writer.end_raw_epoch()?;
    }
    writer.finish()?;
    Ok(meta)
}

/// FNV-1a over the relative file names of a folder's images: which files a set has, not what they
/// hold (see [`folder_content_hash`] for that). Kept to tell "other names" from "other pixels".
pub fn folder_hash(root: &Path, files: &[PathBuf]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for f in files {
        let rel = f.strip_prefix(root).unwrap_or(f).to_string_lossy().replace('\\', "/");
        for b in rel.bytes().chain(std::iter::once(0u8)) {
            h ^= b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{h:016x}")
}

/// SHA-256 over every image of a folder: for each file in `files`' order, its relative name (with
/// `/` separators), a zero byte, its length (u64 little-endian) and its bytes. Two sets with the same
/// names but other pixels differ here, so soft labels stay tied to the images they were made for.
/// Returned as `sha256:<64 hex digits>`.
///
/// Errors: `Error::Io` naming a file that cannot be read.
pub fn folder_content_hash(root: &Path, files: &[PathBuf]) -> Result<String> {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for f in files {
        let rel = f.strip_prefix(root).unwrap_or(f).to_string_lossy().replace('\\', "/");
        let bytes = std::fs::read(f).map_err(|e| Error::io(f, e))?;
        h.update(rel.as_bytes());
        h.update([0u8]);
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(&bytes);
    }
    let digest = h.finalize();
    Ok(format!("sha256:{}", digest.iter().map(|b| format!("{b:02x}")).collect::<String>()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn epoch(seed: usize, n: usize, c: usize, bs: usize) -> EpochLabels {
        let ids: Vec<usize> = (0..n).map(|i| (i * 7 + seed) % n).collect();
        let views = (0..n).map(|i| View { top: i as i32 % 3, left: -(i as i32 % 2), h: 5 + i as i32, w: 6, flip: i % 2 == 0 }).collect();
        let mixes = (0..n.div_ceil(bs))
            .map(|b| {
                let len = bs.min(n - b * bs);
                (len >= 2).then(|| MixRecord { cutmix: true, perm: (0..len as u32).rev().collect(), lam: 0.25 + b as f32 / 8.0, bbox: [1, 2, 3 + b as u32, 4] })
            })
            .collect();
        let logits = (0..n * c).map(|i| ((i * 37 + seed) % 101) as f32 / 10.0 - 5.0).collect();
        EpochLabels { ids, views, mixes, logits }
    }

    #[test]
    fn writes_and_reads_back_every_epoch_full_and_topk() {
        let dir = tempfile::tempdir().unwrap();
        let (n, c, bs) = (11, 6, 4);
        for topk in [0, 3] {
            let path = dir.path().join(format!("labels{topk}.safetensors"));
            let mut extra = BTreeMap::new();
            extra.insert("mix".to_string(), "cutmix".to_string());
            let meta = LabelMeta { epochs: 3, batch_size: bs, images: n, classes: c, topk, extra, shard: None };
            let mut w = LabelWriter::create(&path, meta.clone()).unwrap();
            let eps: Vec<EpochLabels> = (0..3).map(|e| epoch(e, n, c, bs)).collect();
            for e in &eps {
                w.write_epoch(e).unwrap();
            }
            w.finish().unwrap();
            // The file is a valid safetensors file for any reader.
            let bytes = std::fs::read(&path).unwrap();
            assert!(safetensors::SafeTensors::deserialize(&bytes).is_ok());
            let f = LabelFile::open(&path).unwrap();
            assert_eq!((f.meta.epochs, f.meta.topk), (3, topk));
            for (i, want) in eps.iter().enumerate() {
                let got = f.epoch(i).unwrap();
                assert_eq!((&got.ids, &got.views, &got.mixes), (&want.ids, &want.views, &want.mixes));
                for (r, (g, w)) in got.logits.chunks(c).zip(want.logits.chunks(c)).enumerate() {
                    let mut order: Vec<usize> = (0..c).collect();
                    order.sort_by(|&a, &b| w[b].total_cmp(&w[a]).then(a.cmp(&b)));
                    let kept = if topk == 0 { c } else { topk };
                    for &j in &order[..kept] {
                        // fp16 keeps 11 significant bits: 5e-3 absolute on logits up to 5.
                        assert!((g[j] - w[j]).abs() < 5e-3, "row {r} class {j}: {} vs {}", g[j], w[j]);
                    }
                }
            }
            assert!(f.epoch(3).is_err());
        }
    }

    #[test]
    fn the_content_hash_follows_the_bytes_and_the_names_hash_only_the_names() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir(root.join("c0")).unwrap();
        let files = vec![root.join("c0/a.png"), root.join("c0/b.png")];
        std::fs::write(&files[0], b"one").unwrap();
        std::fs::write(&files[1], b"two").unwrap();
        let (names, content) = (folder_hash(root, &files), folder_content_hash(root, &files).unwrap());
        assert!(content.starts_with("sha256:") && content.len() == 7 + 64, "{content}");
        assert_eq!(folder_content_hash(root, &files).unwrap(), content);
        // Other bytes under the same names; and the same bytes moved between names.
        std::fs::write(&files[1], b"twO").unwrap();
        assert_eq!(folder_hash(root, &files), names);
        assert_ne!(folder_content_hash(root, &files).unwrap(), content);
        std::fs::write(&files[0], b"two").unwrap();
        std::fs::write(&files[1], b"one").unwrap();
        assert_ne!(folder_content_hash(root, &files).unwrap(), content);
        std::fs::remove_file(&files[1]).unwrap();
        assert!(folder_content_hash(root, &files).unwrap_err().to_string().contains("b.png"));
    }

    #[test]
    fn rejects_files_that_are_not_relabel_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.safetensors");
        std::fs::write(&p, b"\x02\x00\x00\x00\x00\x00\x00\x00{}").unwrap();
        assert!(LabelFile::open(&p).unwrap_err().to_string().contains("relabel"));
        std::fs::write(&p, b"abc").unwrap();
        assert!(LabelFile::open(&p).is_err());
    }
}
