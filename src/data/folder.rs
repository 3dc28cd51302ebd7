//! ImageFolder (torchvision's layout): one subfolder per class, sorted by name (class index = position),
//! image files (.png/.jpg/.jpeg) sorted within each. Only the paths are held; images are decoded on
//! access, so a dataset of any size streams from disk.

use std::path::{Path, PathBuf};

use super::{Dataset, Image};
use crate::error::{Error, Result};

pub struct ImageFolder {
    pub root: PathBuf,
    pub classes: Vec<String>,
    pub items: Vec<(PathBuf, usize)>,
    channels: usize,
    size: Option<(usize, usize)>,
}

fn is_image(p: &Path) -> bool {
    p.extension().is_some_and(|e| matches!(e.to_ascii_lowercase().to_str(), Some("jpg" | "jpeg" | "png")))
}

impl ImageFolder {
    /// Lists `root`; images will be returned with `channels` channels (1: luma, 3: RGB).
    pub fn open(root: &Path, channels: usize) -> Result<ImageFolder> {
        if channels != 1 && channels != 3 {
            return Err(Error::input(root.display().to_string(), format!("image folders give 1 or 3 channels; the model takes {channels}")));
        }
        let mut items = Vec::new();
        let mut classes = Vec::new();
        for (idx, (name, files)) in list_classes(root)?.into_iter().enumerate() {
            classes.push(name);
            items.extend(files.into_iter().map(|f| (f, idx)));
        }
        if items.is_empty() {
            return Err(Error::input(root.display().to_string(), "no class subfolders with .png/.jpg/.jpeg images"));
        }
        let mut ds = ImageFolder { root: root.to_path_buf(), classes, items, channels, size: None };
        // The first image's size; `image_size` reports it only as a hint for building networks.
        let first = ds.image(0)?;
        ds.size = Some((first.h, first.w));
        Ok(ds)
    }
}

/// The class subfolders of `root` in sorted order (torchvision's class indices), each with its sorted
/// .png/.jpg/.jpeg files; hidden folders are skipped and an empty class folder is an error.
pub fn list_classes(root: &Path) -> Result<Vec<(String, Vec<PathBuf>)>> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(root)
        .map_err(|e| Error::io(root, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        // Hidden folders (.ipynb_checkpoints, .git) are not classes.
        .filter(|p| p.is_dir() && !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')))
        .collect();
    dirs.sort();
    let mut out = Vec::new();
    for dir in dirs {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map_err(|e| Error::io(&dir, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file() && is_image(p))
            .collect();
        // An empty class folder would still take a class index and shift every later class, as
        // torchvision's ImageFolder refuses it too.
        if files.is_empty() {
            return Err(Error::input(dir.display().to_string(), "class folder has no .png/.jpg/.jpeg images (every class subfolder needs one)"));
        }
        files.sort();
        out.push((dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(), files));
    }
    Ok(out)
}

/// Decodes an image file as C x H x W floats in [0, 1]: with `channels` channels (1: luma, 3: RGB),
/// or None for the file's own (1 for grayscale files, else 3).
pub fn load_image(path: &Path, channels: Option<usize>) -> Result<Image> {
    let img = image::ImageReader::open(path)
        .map_err(|e| Error::io(path, e))?
        .with_guessed_format()
        .map_err(|e| Error::io(path, e))?
        .decode()
        .map_err(|e| Error::input(path.display().to_string(), format!("cannot decode image: {e}")))?;
    let (w, h) = (img.width() as usize, img.height() as usize);
    let c = channels.unwrap_or(if img.color().channel_count() <= 2 { 1 } else { 3 });
    let raw = if c == 1 { img.into_luma8().into_raw() } else { img.into_rgb8().into_raw() };
    let mut data = vec![0f32; c * h * w];
    for i in 0..h * w {
        for ch in 0..c {
            data[ch * h * w + i] = raw[i * c + ch] as f32 / 255.0;
        }
    }
    Ok(Image { c, h, w, data })
}

impl Dataset for ImageFolder {
    fn len(&self) -> usize {
        self.items.len()
    }
    fn num_classes(&self) -> usize {
        self.classes.len()
    }
    fn channels(&self) -> usize {
        self.channels
    }
    fn label(&self, i: usize) -> usize {
        self.items[i].1
    }
    fn image(&self, i: usize) -> Result<Image> {
        load_image(&self.items[i].0, Some(self.channels))
    }
    fn describe(&self) -> String {
        format!("{} ({} images in {} classes)", self.root.display(), self.items.len(), self.classes.len())
    }
    fn image_size(&self) -> Option<(usize, usize)> {
        self.size
    }
}
