//! Looking at distilled sets: teacher accuracy on the saved files and PNG grids.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::argmax;
use super::output::save_grid_png;
use crate::data::folder::{list_classes, load_image};
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::model::ResNet;
use crate::net::Net;

/// An ImageFolder: class folders in sorted order (torchvision's class indices), image files sorted.
pub fn image_folder(root: &Path) -> Result<Vec<(usize, Vec<PathBuf>)>> {
    let out: Vec<(usize, Vec<PathBuf>)> = list_classes(root)?.into_iter().map(|(_, files)| files).enumerate().collect();
    if out.iter().all(|(_, f)| f.is_empty()) {
        return Err(Error::input(root.display().to_string(), "no class folders with .jpg/.jpeg/.png images"));
    }
    Ok(out)
}

#[derive(Clone, Debug, Serialize)]
pub struct EvalReport {
    pub images: usize,
    pub classes: usize,
    pub top1: f64,
    pub per_class_top1: Vec<f64>,
}

/// Teacher top-1 on the image files under `root` (class index = sorted folder position).
pub fn evaluate<B: Backend>(backend: &B, model: &ResNet, root: &Path, mean: Option<Vec<f32>>, std: Option<Vec<f32>>) -> Result<EvalReport> {
    let mean = mean.or_else(|| model.mean.clone());
    let std = std.or_else(|| model.std.clone());
    let folder = image_folder(root)?;
    if folder.len() > model.num_classes {
        return Err(Error::input(root.display().to_string(), format!("{} class folders but the teacher has {} classes", folder.len(), model.num_classes)));
    }
    let mut items = Vec::new();
    for (cls, files) in &folder {
        for f in files {
            items.push((*cls, f.clone()));
        }
    }
    let c = model.in_channels;
    let batch = 100;
    let mut net: Option<(usize, usize, Net<B>)> = None;
    let mut correct = vec![0usize; folder.len()];
    let mut count = vec![0usize; folder.len()];
    let mut xb = None;
    for chunk in items.chunks(batch) {
        let mut data = Vec::new();
        let mut size = None;
        for (_, path) in chunk {
            let crate::data::Image { data: img, c: ic, h, w } = load_image(path, None)?;
            if ic != c {
                return Err(Error::input(path.display().to_string(), format!("{ic}-channel image for a {c}-channel teacher")));
            }
            if *size.get_or_insert((h, w)) != (h, w) {
                return Err(Error::input(path.display().to_string(), "images of different sizes in one folder"));
            }
            for ch in 0..c {
                let (m, s) = (mean.as_ref().map_or(0.0, |m| m[ch]), std.as_ref().map_or(1.0, |s| s[ch]));
                data.extend(img[ch * h * w..(ch + 1) * h * w].iter().map(|&u| (u - m) / s));
            }
        }
        let (h, w) = size.unwrap();
        let n = chunk.len();
        if net.as_ref().map(|(nn, hw, _)| (*nn, *hw)) != Some((n, h * 10000 + w)) {
            net = Some((n, h * 10000 + w, Net::new(backend, model, n, h, w)?));
            xb = Some(backend.alloc(n * c * h * w)?);
        }
        let (_, _, net) = net.as_mut().unwrap();
        let xb = xb.as_mut().unwrap();
        backend.upload(&data, xb)?;
        net.forward(backend, xb)?;
        let mut logits = vec![0.0; n * model.num_classes];
        backend.download(&net.logits, &mut logits)?;
        for ((cls, _), row) in chunk.iter().zip(logits.chunks(model.num_classes)) {
            count[*cls] += 1;
            correct[*cls] += (argmax(row) == *cls) as usize;
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
    for root in folders {
        let folder = image_folder(root)?;
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
    let (c, h, w) = shape.ok_or_else(|| Error::Option("no images to draw".into()))?;
    let scale = if scale == 0 { 96usize.div_ceil(h.min(w)).max(1) } else { scale };
    let (sh, sw) = (h * scale, w * scale);
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
