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
/// the sorted folder position, which must then cover all of the teacher's classes.
///
/// `mean`/`std` override the teacher's normalisation, resolved by the rule every command shares
/// ([`super::cli::teacher_norm`]: the flags, the metadata, the teacher's preset, else an error).
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
    let batch = 100;
    let mut net: Option<(usize, (usize, usize), Net<B>)> = None;
    let mut correct = vec![0usize; folder.len()];
    let mut count = vec![0usize; folder.len()];
    let mut xb = None;
    for chunk in items.chunks(batch) {
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
            for ch in 0..c {
                let (m, s) = (mean[ch], std[ch]);
                data.extend(img[ch * h * w..(ch + 1) * h * w].iter().map(|&u| (u - m) / s));
            }
        }
        let (h, w) = size.unwrap();
        let n = chunk.len();
        if net.as_ref().map(|(nn, hw, _)| (*nn, *hw)) != Some((n, (h, w))) {
            // Large image files make large batches: sized before the network is built.
            crate::model::ensure_batch_fits(&format!("evaluating batches of {n} images of {h}x{w}"), model.layout().recover_bytes(n, h, w))?;
            net = Some((n, (h, w), Net::new(backend, model, n, h, w)?));
            xb = Some(backend.alloc(n * c * h * w)?);
        }
        let (_, _, net) = net.as_mut().unwrap();
        let xb = xb.as_mut().unwrap();
        backend.upload(&data, xb)?;
        net.forward(backend, xb)?;
        let mut logits = vec![0.0; n * model.num_classes];
        backend.download(&net.logits, &mut logits)?;
        if let Some(v) = logits.iter().find(|v| !v.is_finite()) {
            return Err(Error::Numeric(format!(
                "the teacher's logits hold {v} on these images: its weights or BN statistics are not usable (a diverged training?)"
            )));
        }
        for ((cls, _), row) in chunk.iter().zip(logits.chunks(model.num_classes)) {
            count[slot(*cls)] += 1;
            correct[slot(*cls)] += (argmax(row) == *cls) as usize;
        }
    }
    let total: usize = count.iter().sum();
    Ok(EvalReport {
        images: total,
        classes: folder.len(),
        top1: 100.0 * correct.iter().sum::<usize>() as f64 / total.max(1) as f64,
        per_class_top1: correct.iter().zip(&count).map(|(&a, &b)| 100.0 * a as f64 / b.max(1) as f64).collect(),
    })
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
