//! Tiny-ImageNet as distributed (`tiny-imagenet-200/`, <http://cs231n.stanford.edu/tiny-imagenet-200.zip>):
//! `wnids.txt` (the 200 class ids, one per line: their order is the class order), the training
//! images in `train/<wnid>/images/*.JPEG`, and the validation images flat in `val/images/` with
//! their classes in `val/val_annotations.txt` (file, wnid, box, tab-separated). Read as an
//! ImageFolder, `val/` would be one class and every label wrong; this reader takes the labels from
//! the annotations. Only paths are held; images are decoded on access.

use std::path::{Path, PathBuf};

use super::folder::ImageFolder;
use super::Split;
use crate::error::{Error, Result};

/// The folder `root` holds Tiny-ImageNet in: `root` itself (it has `wnids.txt` and `train/`) or
/// `root/tiny-imagenet-200`. None for anything else.
pub fn detect(root: &Path) -> Option<PathBuf> {
    [root.to_path_buf(), root.join("tiny-imagenet-200")].into_iter().find(|d| d.join("wnids.txt").is_file() && d.join("train").is_dir())
}

/// Lists `split` of the Tiny-ImageNet folder `root` (see [`detect`]) as an ImageFolder whose class i
/// is line i of `wnids.txt`, images to be returned with `channels` channels: `Split::Train` is
/// `train/` (classes in `wnids.txt` order, files sorted within a class), `Split::Test` is `val/`
/// (in `val_annotations.txt` order; the test images have no labels).
///
/// Errors: `Error::Io` for an unreadable file, `Error::Input` naming the file for a wnid listed
/// twice, a class folder without images, an annotation line that is not `file<TAB>wnid...`, a
/// wnid not in `wnids.txt`, or an annotated file that is missing; those of
/// [`ImageFolder::from_listing`].
pub fn open(root: &Path, split: Split, channels: usize) -> Result<ImageFolder> {
    let list = root.join("wnids.txt");
    let text = std::fs::read_to_string(&list).map_err(|e| Error::io(&list, e))?;
    let wnids: Vec<String> = text.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_string).collect();
    let index = |w: &str| wnids.iter().position(|x| x == w);
    for (i, w) in wnids.iter().enumerate() {
        if wnids[..i].contains(w) {
            return Err(Error::input(list.display().to_string(), format!("{w} is listed twice")));
        }
    }
    if wnids.is_empty() {
        return Err(Error::input(list.display().to_string(), "lists no class"));
    }
    let mut items = Vec::new();
    match split {
        Split::Train => {
            for (class, w) in wnids.iter().enumerate() {
                let dir = root.join("train").join(w).join("images");
                let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
                    .map_err(|e| Error::io(&dir, e))?
                    .flatten()
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|x| matches!(x.to_ascii_lowercase().to_str(), Some("jpeg" | "jpg" | "png"))))
                    .collect();
                if files.is_empty() {
                    return Err(Error::input(dir.display().to_string(), format!("no images for class {w}")));
                }
                files.sort();
                items.extend(files.into_iter().map(|f| (f, class)));
            }
        }
        Split::Test => {
            let ann = root.join("val").join("val_annotations.txt");
            let text = std::fs::read_to_string(&ann).map_err(|e| Error::io(&ann, e))?;
            for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
                let bad = |m: String| Error::input(format!("{} line {}", ann.display(), n + 1), m);
                let mut fields = line.split('\t');
                let (Some(file), Some(wnid)) = (fields.next(), fields.next()) else {
                    return Err(bad(format!("{line:?} is not file<TAB>wnid<TAB>box")));
                };
                let class = index(wnid.trim()).ok_or_else(|| bad(format!("{wnid} is not in wnids.txt")))?;
                let path = root.join("val").join("images").join(file.trim());
                if !path.is_file() {
                    return Err(bad(format!("{} is missing", path.display())));
                }
                items.push((path, class));
            }
            if items.is_empty() {
                return Err(Error::input(ann.display().to_string(), "annotates no image"));
            }
        }
    }
    ImageFolder::from_listing(root, wnids, items, channels)
}
