//! ImageNet-1K (ILSVRC 2012 classification) in the layouts people have on disk:
//!
//! - ImageFolders of wnid folders (`train/n01440764/*.JPEG`, and `val/` once reorganised into wnid
//!   folders): the classes are the sorted wnids, torchvision's `ImageFolder` order, which is also
//!   the class order of torchvision's and timm's pretrained ImageNet models;
//! - the flat validation folder (`ILSVRC2012_val_00000001.JPEG` ... with no class folders) with the
//!   official solution CSV of the Kaggle "ImageNet Object Localization Challenge" download,
//!   `LOC_val_solution.csv` (`ImageId,PredictionString`; the first wnid of PredictionString is
//!   the class), and `LOC_synset_mapping.txt` beside it (`wnid names...` per line, in class order);
//! - a root holding `train/` and `val/` (either of the above), such as that download's
//!   `ILSVRC/Data/CLS-LOC/` or the download's own root (which has the CSV): `Split::Train` reads
//!   `train/`, `Split::Test` reads `val/`.
//!
//! Read as an ImageFolder, the flat val folder has no classes at all; this reader labels it from
//! the CSV. Only paths are held; images are decoded on access.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use super::folder::ImageFolder;
use super::Split;
use crate::error::{Error, Result};

/// The name of the official validation solution file.
pub const SOLUTION_CSV: &str = "LOC_val_solution.csv";
/// The name of the class list that comes with it (wnids in class order, sorted).
pub const SYNSET_MAPPING: &str = "LOC_synset_mapping.txt";
/// How many folders above a flat val folder the solution CSV is looked for: the Kaggle download
/// keeps it four levels up (`<root>/ILSVRC/Data/CLS-LOC/val`).
const CSV_SEARCH_DEPTH: usize = 4;

/// What [`detect`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Layout {
    /// A root with `train/` and `val/` folders (`val` may be flat; then `solution` is its CSV).
    Root { train: PathBuf, val: PathBuf, solution: Option<PathBuf> },
    /// A flat folder of validation images labelled by the solution CSV.
    FlatVal { dir: PathBuf, solution: PathBuf },
    /// A flat folder of validation images whose solution CSV was not found.
    FlatValWithoutSolution(PathBuf),
    /// An ImageFolder whose class folders are all wnids.
    WnidFolders(PathBuf),
}

impl Layout {
    /// One line for stderr saying what the folder was read as.
    pub fn describe(&self, split: Split) -> String {
        match self {
            Layout::Root { train, val, solution } => match (split, solution) {
                (Split::Train, _) => format!("ImageNet train/ ({}, wnid folders in sorted order, as torchvision)", train.display()),
                (Split::Test, Some(csv)) => format!("ImageNet val/ ({}, flat, labelled by {})", val.display(), csv.display()),
                (Split::Test, None) => format!("ImageNet val/ ({}, wnid folders in sorted order, as torchvision)", val.display()),
            },
            Layout::FlatVal { dir, solution } => format!("the flat ImageNet val folder {}, labelled by {}", dir.display(), solution.display()),
            Layout::FlatValWithoutSolution(dir) => format!("the flat ImageNet val folder {}", dir.display()),
            Layout::WnidFolders(dir) => format!("an ImageNet-style ImageFolder ({}, wnid folders in sorted order, as torchvision)", dir.display()),
        }
    }
}

/// `n` and eight digits: a WordNet id as ImageNet names its classes.
pub fn is_wnid(s: &str) -> bool {
    s.len() == 9 && s.starts_with('n') && s[1..].bytes().all(|b| b.is_ascii_digit())
}

fn subdirs(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir() && !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')))
        .collect();
    v.sort();
    v
}

fn all_wnids(dirs: &[PathBuf]) -> bool {
    !dirs.is_empty() && dirs.iter().all(|d| d.file_name().is_some_and(|n| is_wnid(&n.to_string_lossy())))
}

/// The validation images directly in `dir` (`ILSVRC2012_val_*.JPEG`), sorted.
fn val_images(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file() && p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("ILSVRC2012_val_")))
        .collect();
    v.sort();
    v
}

/// `LOC_val_solution.csv` in `dir` or in one of the [`CSV_SEARCH_DEPTH`] folders above it.
fn find_solution(dir: &Path) -> Option<PathBuf> {
    let dir = dir.canonicalize().ok()?;
    dir.ancestors().take(CSV_SEARCH_DEPTH + 1).map(|d| d.join(SOLUTION_CSV)).find(|p| p.is_file())
}

/// Which ImageNet layout `root` holds, if any (see the module docs); None for anything else,
/// including ImageFolders whose folders are not all wnids.
pub fn detect(root: &Path) -> Option<Layout> {
    // The Kaggle download's root: the CSV here, the images under ILSVRC/Data/CLS-LOC.
    let cls_loc = root.join("ILSVRC/Data/CLS-LOC");
    let base = if root.join(SOLUTION_CSV).is_file() && cls_loc.is_dir() { cls_loc } else { root.to_path_buf() };
    let (train, val) = (base.join("train"), base.join("val"));
    if train.is_dir() && val.is_dir() && all_wnids(&subdirs(&train)) {
        let solution = if subdirs(&val).is_empty() && !val_images(&val).is_empty() { find_solution(&val) } else { None };
        return Some(Layout::Root { train, val, solution });
    }
    let dirs = subdirs(root);
    if dirs.is_empty() && !val_images(root).is_empty() {
        return Some(match find_solution(root) {
            Some(solution) => Layout::FlatVal { dir: root.to_path_buf(), solution },
            None => Layout::FlatValWithoutSolution(root.to_path_buf()),
        });
    }
    if all_wnids(&dirs) {
        return Some(Layout::WnidFolders(root.to_path_buf()));
    }
    None
}

/// Opens `split` of what [`detect`] found, images returned with `channels` channels.
///
/// Errors: `Error::Input` for a flat val folder without its solution CSV (naming where it was
/// looked for); those of [`open_flat_val`] and [`ImageFolder::open`].
pub fn open(layout: &Layout, split: Split, channels: usize) -> Result<ImageFolder> {
    match layout {
        Layout::Root { train, .. } if split == Split::Train => ImageFolder::open(train, channels),
        Layout::Root { val, solution: Some(csv), train } => open_flat_val(val, csv, Some(train), channels),
        Layout::Root { val, solution: None, .. } if subdirs(val).is_empty() => Err(no_solution(val)),
        Layout::Root { val, solution: None, .. } => ImageFolder::open(val, channels),
        Layout::FlatVal { dir, solution } => open_flat_val(dir, solution, None, channels),
        Layout::FlatValWithoutSolution(dir) => Err(no_solution(dir)),
        Layout::WnidFolders(dir) => ImageFolder::open(dir, channels),
    }
}

fn no_solution(dir: &Path) -> Error {
    Error::input(
        dir.display().to_string(),
        format!(
            "a flat ImageNet val folder (ILSVRC2012_val_*.JPEG, no class folders) needs its labels: {SOLUTION_CSV} was not found in it nor in the \
             {CSV_SEARCH_DEPTH} folders above it (put it beside the images, or reorganise val/ into wnid folders)"
        ),
    )
}

/// The wnids of a `LOC_synset_mapping.txt` (`n01440764 tench, Tinca tinca` per line), in order.
///
/// Errors: `Error::Io` when unreadable; `Error::Input` naming the file and line for a line that
/// does not start with a wnid or a wnid listed twice, and for a file with no line.
pub fn read_synset_mapping(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let mut wnids: Vec<String> = Vec::new();
    for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let bad = |m: String| Error::input(format!("{} line {}", path.display(), n + 1), m);
        let w = line.split_whitespace().next().unwrap_or("");
        if !is_wnid(w) {
            return Err(bad(format!("{line:?} does not start with a wnid (n and 8 digits)")));
        }
        if wnids.iter().any(|x| x == w) {
            return Err(bad(format!("{w} is listed twice")));
        }
        wnids.push(w.to_string());
    }
    if wnids.is_empty() {
        return Err(Error::input(path.display().to_string(), "lists no class"));
    }
    Ok(wnids)
}

/// The rows of a `LOC_val_solution.csv`: (ImageId, the first wnid of PredictionString), in file
/// order. Read with the `csv` crate.
///
/// Errors: `Error::Io` when unreadable; `Error::Input` naming the file and line for a header that
/// is not `ImageId,PredictionString`, a row without both fields, a PredictionString that does not
/// start with a wnid, or an ImageId given twice.
pub fn read_solution(path: &Path) -> Result<Vec<(String, String)>> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut reader = csv::ReaderBuilder::new().has_headers(true).flexible(false).from_reader(file);
    let at = |line: Option<u64>| format!("{} line {}", path.display(), line.unwrap_or(1));
    let header = reader.headers().map_err(|e| Error::input(at(e.position().map(|p| p.line())), e.to_string()))?.clone();
    if header.len() != 2 || header.get(0).map(str::trim) != Some("ImageId") || header.get(1).map(str::trim) != Some("PredictionString") {
        return Err(Error::input(at(Some(1)), format!("the header is {:?}, not ImageId,PredictionString", header.iter().collect::<Vec<_>>().join(","))));
    }
    let mut rows = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for rec in reader.records() {
        let rec = rec.map_err(|e| Error::input(at(e.position().map(|p| p.line())), e.to_string()))?;
        let line = rec.position().map(|p| p.line());
        let id = rec.get(0).unwrap_or("").trim();
        let wnid = rec.get(1).unwrap_or("").split_whitespace().next().unwrap_or("");
        if id.is_empty() {
            return Err(Error::input(at(line), "a row with an empty ImageId"));
        }
        if !is_wnid(wnid) {
            return Err(Error::input(
                at(line),
                format!("the PredictionString of {id} does not start with a wnid (n and 8 digits): {:?}", rec.get(1).unwrap_or("")),
            ));
        }
        if !seen.insert(id.to_string()) {
            return Err(Error::input(at(line), format!("{id} is given twice")));
        }
        rows.push((id.to_string(), wnid.to_string()));
    }
    if rows.is_empty() {
        return Err(Error::input(path.display().to_string(), "has no rows"));
    }
    Ok(rows)
}

/// The flat val folder `dir` labelled by the solution CSV `solution`, images sorted by file name
/// (as torchvision's `ImageNet` dataset orders val). The class order is, first found:
/// `LOC_synset_mapping.txt` beside the CSV; the sorted wnid folders of `train` (the training
/// folder beside it); the sorted wnids the CSV names (with a warning, since a CSV that misses a
/// class would shift every later index).
///
/// Errors: `Error::Input` naming the file (and line) for an image the CSV does not list, a row
/// whose image is missing, a wnid outside the class list; those of [`read_solution`] and
/// [`read_synset_mapping`].
pub fn open_flat_val(dir: &Path, solution: &Path, train: Option<&Path>, channels: usize) -> Result<ImageFolder> {
    let rows = read_solution(solution)?;
    let mapping = solution.parent().map(|p| p.join(SYNSET_MAPPING)).filter(|p| p.is_file());
    let classes: Vec<String> = if let Some(m) = &mapping {
        read_synset_mapping(m)?
    } else if let Some(t) = train.filter(|t| all_wnids(&subdirs(t))) {
        subdirs(t).iter().map(|d| d.file_name().unwrap().to_string_lossy().into_owned()).collect()
    } else {
        let set: BTreeSet<&str> = rows.iter().map(|(_, w)| w.as_str()).collect();
        eprintln!(
            "warning: {}: no {SYNSET_MAPPING} beside it: the classes are the {} wnids it names, sorted; a teacher of other classes needs the mapping file",
            solution.display(),
            set.len()
        );
        set.into_iter().map(str::to_string).collect()
    };
    let index: HashMap<&str, usize> = classes.iter().enumerate().map(|(i, w)| (w.as_str(), i)).collect();
    let label: HashMap<&str, &str> = rows.iter().map(|(id, w)| (id.as_str(), w.as_str())).collect();
    let images = val_images(dir);
    let mut items = Vec::with_capacity(images.len());
    for p in &images {
        let stem = p.file_stem().unwrap().to_string_lossy();
        let wnid = label.get(stem.as_ref()).ok_or_else(|| Error::input(p.display().to_string(), format!("has no row in {}", solution.display())))?;
        let class = *index.get(wnid).ok_or_else(|| {
            Error::input(solution.display().to_string(), format!("{stem} is labelled {wnid}, which is not one of the {} classes", classes.len()))
        })?;
        items.push((p.clone(), class));
    }
    if items.len() != rows.len() {
        let have: std::collections::HashSet<String> = images.iter().map(|p| p.file_stem().unwrap().to_string_lossy().into_owned()).collect();
        let missing = rows.iter().find(|(id, _)| !have.contains(id)).map(|(id, _)| id.as_str()).unwrap_or("?");
        return Err(Error::input(
            solution.display().to_string(),
            format!(
                "lists {} images but {} holds {} (such as {missing}.JPEG is missing): a partial copy would give a wrong accuracy",
                rows.len(),
                dir.display(),
                items.len()
            ),
        ));
    }
    ImageFolder::from_listing(dir, classes, items, channels)
}
