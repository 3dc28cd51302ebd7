//! ImageFolder (torchvision's layout): one subfolder per class, image files (.png/.jpg/.jpeg) sorted
//! within each. Class indices: when every folder is named `new{number}` (the layout `run`, `select`,
//! `sample` and the official recover scripts write) the number is the class, so a set with missing
//! classes still lines up with its teacher; otherwise the position in sorted order (torchvision's
//! rule). Only the paths are held; images are decoded on access, so a dataset of any size streams
//! from disk.

use std::path::{Path, PathBuf};

use super::{Dataset, Image};
use crate::error::{Error, Result};

pub struct ImageFolder {
    pub root: PathBuf,
    /// Folder names in sorted order.
    pub classes: Vec<String>,
    /// Which class each folder holds.
    pub map: ClassMap,
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
        check_channels(root, channels)?;
        let listed = list_classes(root)?;
        let classes: Vec<String> = listed.iter().map(|(n, _)| n.clone()).collect();
        let map = ClassMap::of(root, &classes)?;
        let mut items = Vec::new();
        for ((_, files), &class) in listed.into_iter().zip(&map.classes) {
            items.extend(files.into_iter().map(|f| (f, class)));
        }
        Self::with_items(root, classes, map, items, channels)
    }

    /// An ImageFolder over a listing made elsewhere, for layouts other than one folder per class
    /// (Tiny-ImageNet's): class i is `classes[i]`, `items` are (file, class) in item order. Errors as
    /// [`ImageFolder::open`]'s.
    pub fn from_listing(root: &Path, classes: Vec<String>, items: Vec<(PathBuf, usize)>, channels: usize) -> Result<ImageFolder> {
        check_channels(root, channels)?;
        let map = ClassMap { classes: (0..classes.len()).collect(), numbered: false };
        Self::with_items(root, classes, map, items, channels)
    }

    fn with_items(root: &Path, classes: Vec<String>, map: ClassMap, items: Vec<(PathBuf, usize)>, channels: usize) -> Result<ImageFolder> {
        if items.is_empty() {
            return Err(Error::input(root.display().to_string(), "no class subfolders with .png/.jpg/.jpeg images"));
        }
        let mut ds = ImageFolder { root: root.to_path_buf(), classes, map, items, channels, size: None };
        // The first image's size; `image_size` reports it only as a hint for building networks.
        let first = ds.image(0)?;
        ds.size = Some((first.h, first.w));
        Ok(ds)
    }
}

fn check_channels(root: &Path, channels: usize) -> Result<()> {
    if channels != 1 && channels != 3 {
        return Err(Error::input(root.display().to_string(), format!("image folders give 1 or 3 channels; the model takes {channels}")));
    }
    Ok(())
}

/// How the class folders of an ImageFolder map to class indices.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClassMap {
    /// The class of each folder, in sorted folder order.
    pub classes: Vec<usize>,
    /// True when every folder is named `new{number}` and the numbers are the classes.
    pub numbered: bool,
}

/// `new{digits}` (the official distilled-set layout): the number.
fn official_number(name: &str) -> Option<usize> {
    let digits = name.strip_prefix("new")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

impl ClassMap {
    /// The classes of the folders `names` (sorted) under `root`. Warns (stderr) when the names are
    /// plain numbers whose text order is not their numeric order (`1, 10, 2`: torchvision's pitfall,
    /// class 1 would be folder `10`).
    ///
    /// Errors: two `new{number}` folders naming the same class (`new1` and `new001`), and folders
    /// that mix the `new{number}` layout with other names (matching the others by position would
    /// shift every class after them, silently).
    pub fn of(root: &Path, names: &[String]) -> Result<ClassMap> {
        let odd: Vec<&str> = names.iter().filter(|n| official_number(n).is_none()).map(String::as_str).collect();
        if !odd.is_empty() && odd.len() < names.len() {
            let shown: Vec<&str> = odd.iter().take(3).copied().collect();
            return Err(Error::input(
                root.display().to_string(),
                format!(
                    "{} of {} class folders are named new{{class}} but {} {} not ({}{}); move the others away or name every folder new{{class}}",
                    names.len() - odd.len(),
                    names.len(),
                    odd.len(),
                    if odd.len() == 1 { "is" } else { "are" },
                    shown.join(", "),
                    if odd.len() > 3 { ", ..." } else { "" }
                ),
            ));
        }
        let numbers: Option<Vec<usize>> = names.iter().map(|n| official_number(n)).collect();
        if let Some(classes) = numbers.filter(|v| !v.is_empty()) {
            let mut seen = std::collections::BTreeMap::new();
            for (name, &c) in names.iter().zip(&classes) {
                if let Some(other) = seen.insert(c, name) {
                    return Err(Error::input(root.display().to_string(), format!("class folders {other} and {name} both name class {c}")));
                }
            }
            return Ok(ClassMap { classes, numbered: true });
        }
        let plain: Option<Vec<u64>> = names.iter().map(|n| if n.bytes().all(|b| b.is_ascii_digit()) { n.parse().ok() } else { None }).collect();
        if let Some(nums) = plain {
            if nums.windows(2).any(|w| w[0] > w[1]) {
                let shown: Vec<&str> = names.iter().take(4).map(String::as_str).collect();
                eprintln!(
                    "warning: {}: the class folders are numbers sorted as text ({}, ...), so class 1 is folder {:?}, not \"1\"; \
                     classes follow the sorted position as in torchvision. Pad the names with zeros (or name them new{{class}}) if the numbers are the classes",
                    root.display(),
                    shown.join(", "),
                    names.get(1).map_or("", String::as_str)
                );
            }
        }
        Ok(ClassMap { classes: (0..names.len()).collect(), numbered: false })
    }

    /// One past the highest class.
    pub fn num_classes(&self) -> usize {
        self.classes.iter().max().map_or(0, |m| m + 1)
    }

    /// Checks the folders against a teacher with `teacher_classes` classes. A numbered layout must
    /// stay below it. Otherwise folders are matched by position, so a different folder count means
    /// some classes are shifted: an error when `strict` (a score would be wrong), else a warning.
    pub fn check_teacher(&self, root: &Path, teacher_classes: usize, strict: bool) -> Result<()> {
        let what = root.display().to_string();
        if self.numbered {
            if let Some(&c) = self.classes.iter().find(|&&c| c >= teacher_classes) {
                return Err(Error::input(what, format!("class folder for class {c} (new{c:03}) but the teacher has {teacher_classes} classes")));
            }
            return Ok(());
        }
        let n = self.classes.len();
        if n != teacher_classes {
            let message = format!(
                "{n} class folders but the teacher has {teacher_classes} classes; folders are matched to classes by sorted position, \
                 so a missing or extra folder shifts every later class (name them new{{class}}, as `run` does, to match by number)"
            );
            if strict || n > teacher_classes {
                return Err(Error::input(what, message));
            }
            eprintln!("warning: {what}: {message}");
        }
        Ok(())
    }
}

/// The class subfolders of `root` in sorted order (torchvision's class indices), each with its sorted
/// .png/.jpg/.jpeg files; hidden folders are skipped and an empty class folder is an error. Images in
/// sub-folders of a class folder are not read (as torchvision's ImageFolder); a warning names them.
pub fn list_classes(root: &Path) -> Result<Vec<(String, Vec<PathBuf>)>> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(root)
        .map_err(|e| Error::io(root, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        // Hidden folders (.ipynb_checkpoints, .git) are not classes.
        .filter(|p| p.is_dir() && !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')))
        .collect();
    dirs.sort();
    let mut out = Vec::new();
    // Files that are not read, for a warning: other formats in class folders, and images at the top
    // level (records and notes there are expected).
    // The engine's own pictures of a set (crate::plot, the report's grid) are not skipped data.
    let ours = |p: &Path| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("recover_") || n.to_string_lossy().starts_with("validate_"));
    let mut skipped: Vec<PathBuf> = std::fs::read_dir(root)
        .map_err(|e| Error::io(root, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && is_image(p) && !ours(p))
        .collect();
    for dir in dirs {
        let entries: Vec<PathBuf> = std::fs::read_dir(&dir).map_err(|e| Error::io(&dir, e))?.filter_map(|e| e.ok().map(|e| e.path())).collect();
        let mut files: Vec<PathBuf> = entries.iter().filter(|p| p.is_file() && is_image(p)).cloned().collect();
        skipped.extend(entries.iter().filter(|p| p.is_file() && !is_image(p) && !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.'))).cloned());
        let subdirs: Vec<&PathBuf> = entries.iter().filter(|p| p.is_dir() && !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.'))).collect();
        // An empty class folder would still take a class index and shift every later class, as
        // torchvision's ImageFolder refuses it too.
        if files.is_empty() {
            let hint = if subdirs.is_empty() {
                String::new()
            } else {
                format!(" (it has sub-folders such as {}: images must sit directly in the class folder; is the root one level too high?)", subdirs[0].display())
            };
            return Err(Error::input(dir.display().to_string(), format!("class folder has no .png/.jpg/.jpeg images (every class subfolder needs one){hint}")));
        }
        if !subdirs.is_empty() {
            eprintln!(
                "warning: {}: {} sub-folder(s) not read (such as {}); only images directly in a class folder belong to it",
                dir.display(),
                subdirs.len(),
                subdirs[0].display()
            );
        }
        files.sort();
        out.push((dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(), files));
    }
    if !skipped.is_empty() {
        skipped.sort();
        eprintln!(
            "warning: {}: {} file(s) not read (such as {}): only .png/.jpg/.jpeg files directly in a class folder belong to the set",
            root.display(),
            skipped.len(),
            skipped[0].display()
        );
    }
    Ok(out)
}

/// Decodes an image file as C x H x W floats in [0, 1]: with `channels` channels (1: luma, 3: RGB),
/// or None for the file's own (1 for grayscale files, else 3; alpha is dropped).
///
/// Errors: an unreadable file, an undecodable one, or one whose pixels would not fit in memory
/// (the decoder's limits and the available memory are checked before the pixels are allocated).
pub fn load_image(path: &Path, channels: Option<usize>) -> Result<Image> {
    load_image_described(path, channels).map(|(img, _)| img)
}

/// [`load_image`], also naming the file's own pixel layout (e.g. "RGBA (4 channels)"), for
/// messages about channel counts.
pub fn load_image_described(path: &Path, channels: Option<usize>) -> Result<(Image, String)> {
    let img = image::ImageReader::open(path)
        .map_err(|e| Error::io(path, e))?
        .with_guessed_format()
        .map_err(|e| Error::io(path, e))?
        .decode()
        .map_err(|e| Error::input(path.display().to_string(), format!("cannot decode image: {e}")))?;
    let (w, h) = (img.width() as usize, img.height() as usize);
    let color = img.color();
    let described = format!("{} ({} channel{})", colour_name(color), color.channel_count(), if color.channel_count() == 1 { "" } else { "s" });
    let c = channels.unwrap_or(if color.channel_count() <= 2 { 1 } else { 3 });
    crate::memory::ensure_fits(&format!("image {} ({w}x{h})", path.display()), crate::memory::bytes_of(&[c, h, w], 5))?;
    let raw = if c == 1 { img.into_luma8().into_raw() } else { img.into_rgb8().into_raw() };
    let mut data = crate::memory::try_filled(c * h * w, 0f32, &format!("image {} ({w}x{h})", path.display()))?;
    for i in 0..h * w {
        for ch in 0..c {
            data[ch * h * w + i] = raw[i * c + ch] as f32 / 255.0;
        }
    }
    Ok((Image { c, h, w, data }, described))
}

fn colour_name(c: image::ColorType) -> &'static str {
    use image::ColorType::*;
    match c {
        L8 | L16 => "grey",
        La8 | La16 => "grey with alpha",
        Rgb8 | Rgb16 | Rgb32F => "RGB",
        Rgba8 | Rgba16 | Rgba32F => "RGBA",
        _ => "colour",
    }
}

impl Dataset for ImageFolder {
    fn len(&self) -> usize {
        self.items.len()
    }
    fn num_classes(&self) -> usize {
        self.map.num_classes()
    }
    fn class_map(&self) -> Option<&ClassMap> {
        Some(&self.map)
    }
    fn files(&self) -> Option<Vec<PathBuf>> {
        Some(self.items.iter().map(|(p, _)| p.clone()).collect())
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
