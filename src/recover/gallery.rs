//! Looking at distilled sets: teacher accuracy on the saved files and PNG grids.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::argmax;
use super::output::save_grid_png;
use crate::backend::Backend;
use crate::data::folder::{list_classes, load_image, load_image_described, ClassMap};
use crate::error::{Error, Result};
use crate::model::ResNet;
use crate::net::Net;

/// (class, sorted image files) of each class folder, in sorted folder order.
pub type ClassFiles = Vec<(usize, Vec<PathBuf>)>;

/// An ImageFolder: (class, sorted image files) per class folder in sorted folder order, and how the
/// classes were found (`new{class}` numbers, else sorted position; see [`ClassMap`]).
pub fn image_folder(root: &Path) -> Result<(ClassFiles, ClassMap)> {
    let listed = list_classes(root)?;
    let names: Vec<String> = listed.iter().map(|(n, _)| n.clone()).collect();
    let map = ClassMap::of(root, &names)?;
    let out: Vec<(usize, Vec<PathBuf>)> = map.classes.iter().copied().zip(listed.into_iter().map(|(_, files)| files)).collect();
    if out.iter().all(|(_, f)| f.is_empty()) {
        return Err(Error::input(root.display().to_string(), "no class folders with .jpg/.jpeg/.png images"));
    }
    Ok((out, map))
}

#[derive(Clone, Debug, Serialize)]
pub struct EvalReport {
    pub images: usize,
    pub classes: usize,
    pub top1: f64,
    pub per_class_top1: Vec<f64>,
}

/// Teacher top-1 on the image files under `root`. Classes: the number of `new{class}` folders, else
/// the sorted folder position, which must then cover all of the teacher's classes. Images are
/// scored as saved (no resize): every image of a batch must have one size.
///
/// `mean`/`std` override the teacher's normalisation, resolved by the rule every command shares
/// ([`super::cli::teacher_norm`]: the flags, the metadata, the teacher's preset, else an error).
///
/// Errors: `Error::Input` naming the file for an image of other channels or size; those of
/// [`image_folder`], [`ClassMap::check_teacher`] and the teacher's forward (non-finite logits).
pub fn evaluate<B: Backend>(backend: &B, model: &ResNet, root: &Path, mean: Option<Vec<f32>>, std: Option<Vec<f32>>) -> Result<EvalReport> {
    let clip = super::cli::teacher_norm(mean, std, model, None)?;
    let (mean, std) = super::run::norm_of(&clip, model.in_channels);
    let (folder, map) = image_folder(root)?;
    map.check_teacher(root, model.num_classes, true)?;
    // Scores are kept per folder: a numbered set may skip classes.
    let slot = |cls: usize| folder.iter().position(|(c, _)| *c == cls).unwrap_or(0);
    let mut items = Vec::new();
    for (cls, files) in &folder {
        for f in files {
            items.push((*cls, f.clone()));
        }
    }
    let c = model.in_channels;
    let mut scorer = Scorer::new(folder.len());
    for chunk in items.chunks(EVAL_BATCH) {
        let mut data = Vec::new();
        let mut size = None;
        for (_, path) in chunk {
            let (crate::data::Image { data: img, c: ic, h, w }, described) = load_image_described(path, None)?;
            if ic != c {
                return Err(Error::input(path.display().to_string(), format!("{described} image for a {c}-channel teacher")));
            }
            if *size.get_or_insert((h, w)) != (h, w) {
                return Err(Error::input(path.display().to_string(), "images of different sizes in one folder"));
            }
            data.extend(img);
        }
        let (h, w) = size.unwrap();
        // One plane per image and channel; plane i is channel i % c.
        crate::data::augment::normalize(&mut data, chunk.len() * c, &mean, &std);
        let labels: Vec<(usize, usize)> = chunk.iter().map(|(cls, _)| (*cls, slot(*cls))).collect();
        scorer.score(backend, model, &data, &labels, (h, w))?;
    }
    Ok(scorer.report())
}

/// Teacher top-1 on a labelled dataset (a test set as `--test-data` reads it: CIFAR, Tiny-ImageNet's
/// val, ImageNet's val, an ImageFolder of real images), each image put through the official test
/// transform ([`crate::data::augment::render_eval`]: resize and centre crop) to `size` x `size`.
///
/// Errors: `Error::Input` when the dataset's classes are not the teacher's or its channels differ;
/// those of reading the images and of the teacher's forward (non-finite logits).
pub fn evaluate_dataset<B: Backend>(
    backend: &B,
    model: &ResNet,
    ds: &dyn crate::data::Dataset,
    size: usize,
    mean: Option<Vec<f32>>,
    std: Option<Vec<f32>>,
) -> Result<EvalReport> {
    let clip = super::cli::teacher_norm(mean, std, model, None)?;
    let (mean, std) = super::run::norm_of(&clip, model.in_channels);
    if ds.num_classes() != model.num_classes {
        return Err(Error::input(ds.describe(), format!("has {} classes; the teacher has {}", ds.num_classes(), model.num_classes)));
    }
    let c = model.in_channels;
    if ds.channels() != c {
        return Err(Error::input(ds.describe(), format!("gives {}-channel images to a {c}-channel teacher", ds.channels())));
    }
    let mut scorer = Scorer::new(ds.num_classes());
    let indices: Vec<usize> = (0..ds.len()).collect();
    for chunk in indices.chunks(EVAL_BATCH) {
        let mut data = vec![0f32; chunk.len() * c * size * size];
        for (&i, out) in chunk.iter().zip(data.chunks_mut(c * size * size)) {
            crate::data::augment::render_eval(&ds.image(i)?, size, out);
        }
        crate::data::augment::normalize(&mut data, chunk.len() * c, &mean, &std);
        let labels: Vec<(usize, usize)> = chunk.iter().map(|&i| (ds.label(i), ds.label(i))).collect();
        scorer.score(backend, model, &data, &labels, (size, size))?;
    }
    Ok(scorer.report())
}

/// Images per teacher forward when scoring.
const EVAL_BATCH: usize = 100;

/// A network built for one batch shape (N, H, W) and its input buffer.
struct ShapedNet<B: Backend> {
    shape: (usize, usize, usize),
    net: Net<B>,
    input: B::Buf,
}

/// Correct and total counts per slot, over batches scored with one network per batch shape.
struct Scorer<B: Backend> {
    net: Option<ShapedNet<B>>,
    correct: Vec<usize>,
    count: Vec<usize>,
}

impl<B: Backend> Scorer<B> {
    fn new(slots: usize) -> Self {
        Scorer { net: None, correct: vec![0; slots], count: vec![0; slots] }
    }

    /// Scores one normalised batch (N x C x H x W) whose item i has (class, slot) `labels[i]`.
    fn score(&mut self, backend: &B, model: &ResNet, data: &[f32], labels: &[(usize, usize)], (h, w): (usize, usize)) -> Result<()> {
        let n = labels.len();
        if self.net.as_ref().map(|s| s.shape) != Some((n, h, w)) {
            // Large image files make large batches: sized before the network is built.
            crate::model::ensure_batch_fits(&format!("evaluating batches of {n} images of {h}x{w}"), model.layout().recover_bytes(n, h, w))?;
            self.net = Some(ShapedNet { shape: (n, h, w), net: Net::new(backend, model, n, h, w)?, input: backend.alloc(n * model.in_channels * h * w)? });
        }
        let ShapedNet { net, input, .. } = self.net.as_mut().unwrap();
        backend.upload(data, input)?;
        net.forward(backend, input)?;
        let mut logits = vec![0.0; n * model.num_classes];
        backend.download(&net.logits, &mut logits)?;
        if let Some(v) = logits.iter().find(|v| !v.is_finite()) {
            return Err(Error::Numeric(format!(
                "the teacher's logits hold {v} on these images: its weights or BN statistics are not usable (a diverged training?)"
            )));
        }
        for (&(cls, slot), row) in labels.iter().zip(logits.chunks(model.num_classes)) {
            self.count[slot] += 1;
            self.correct[slot] += (argmax(row) == cls) as usize;
        }
        Ok(())
    }

    fn report(&self) -> EvalReport {
        let total: usize = self.count.iter().sum();
        EvalReport {
            images: total,
            classes: self.count.len(),
            top1: 100.0 * self.correct.iter().sum::<usize>() as f64 / total.max(1) as f64,
            per_class_top1: self.correct.iter().zip(&self.count).map(|(&a, &b)| 100.0 * a as f64 / b.max(1) as f64).collect(),
        }
    }
}

/// Writes a PNG grid: for each folder, `rows` rows (IPC 0..rows), one column per class; tiles are
/// enlarged `scale` times (nearest neighbour; 0 = enough for small images to be seen, at least 96 px).
pub fn grid(folders: &[PathBuf], out: &Path, rows: usize, max_classes: usize, scale: usize) -> Result<()> {
    let mut tiles = Vec::new();
    let mut shape = None;
    let mut cols = 0;
    // The grid is always PNG; a .jpg name would hold PNG bytes under a JPEG name.
    if !out.extension().is_some_and(|e| e.eq_ignore_ascii_case("png")) {
        return Err(Error::Option(format!("--out {}: the grid is written as PNG; give a .png file name", out.display())));
    }
    for root in folders {
        let (folder, _) = image_folder(root)?;
        let classes: Vec<_> = folder.iter().take(max_classes).collect();
        cols = cols.max(classes.len());
        for r in 0..rows {
            for (_, files) in &classes {
                let Some(f) = files.get(r) else {
                    return Err(Error::input(root.display().to_string(), format!("a class folder has fewer than {rows} images")));
                };
                let crate::data::Image { data: img, c, h, w } = load_image(f, None)?;
                if *shape.get_or_insert((c, h, w)) != (c, h, w) {
                    return Err(Error::input(f.display().to_string(), "images of different sizes or channels"));
                }
                tiles.push(img.iter().map(|&u| (u * 255.0).round() as u8).collect::<Vec<u8>>());
            }
        }
    }
    let (c, h, w) = shape.ok_or_else(|| Error::input("grid", "no images to draw"))?;
    let scale = if scale == 0 { 96usize.div_ceil(h.min(w)).max(1) } else { scale };
    // The enlarged tiles and the RGB canvas, sized before anything is allocated: a large --scale
    // would otherwise abort in the allocator. The PNG encoder takes 32-bit sides.
    let (sh, sw) = (h.checked_mul(scale), w.checked_mul(scale));
    let rows_total = tiles.len().div_ceil(cols.max(1));
    let side_ok =
        |side: Option<usize>, count: usize| side.and_then(|s| s.checked_add(2)).and_then(|s| s.checked_mul(count)).is_some_and(|s| s < u32::MAX as usize);
    if !side_ok(sh, rows_total) || !side_ok(sw, cols) {
        return Err(Error::Option(format!(
            "--scale {scale}: a grid of {rows_total}x{cols} tiles of {h}x{w} pixels enlarged {scale} times is larger than a PNG can be"
        )));
    }
    let (sh, sw) = (sh.unwrap_or(0), sw.unwrap_or(0));
    let tile_bytes = crate::memory::bytes_of(&[c, sh, sw, tiles.len()], 1);
    let canvas_bytes = crate::memory::bytes_of(&[3, (sh + 2) * rows_total + 2, (sw + 2) * cols + 2], 1);
    crate::memory::ensure_fits(
        &format!("a grid of {} tiles enlarged {scale} times ({sh}x{sw} pixels each)", tiles.len()),
        tile_bytes.zip(canvas_bytes).and_then(|(a, b)| a.checked_add(b)),
    )?;
    let tiles: Vec<Vec<u8>> = tiles
        .iter()
        .map(|t| {
            let mut big = vec![0u8; c * sh * sw];
            for ch in 0..c {
                for y in 0..sh {
                    for x in 0..sw {
                        big[(ch * sh + y) * sw + x] = t[(ch * h + y / scale) * w + x / scale];
                    }
                }
            }
            big
        })
        .collect();
    save_grid_png(out, &tiles, cols, c, sh, sw)?;
    eprintln!("wrote {} ({} images, {} columns)", out.display(), tiles.len(), cols);
    Ok(())
}
