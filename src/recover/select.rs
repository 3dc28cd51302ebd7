//! `cda-engine select` (and `run --method rded`): RDED's set with no optimisation, the teacher-selected
//! real patches of `init` written as an ImageFolder in `run`'s layout, with a record naming each
//! image's sources.

use std::path::Path;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::init::{class_images, InitKind, InitSpec, RealData};
use super::output::{image_path, save_image, ImageFormat};
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::io::{folder_entries, lock_folder, write_atomic};
use crate::model::ResNet;

/// What `select` writes; `select_record.json` beside the class folders.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SelectRecord {
    pub engine: String,
    pub teacher: String,
    /// `TrainModel::fingerprint` of the teacher that scored the patches.
    pub teacher_fingerprint: String,
    pub init: InitSpec,
    pub classes: usize,
    pub ipc_start: usize,
    pub ipc_end: usize,
    pub res: usize,
    pub seed: u64,
    /// One entry per image, class-major: (class, ipc, the sources of its patches in row-major order).
    pub images: Vec<(usize, usize, Vec<String>)>,
    pub seconds: f64,
}

pub const SELECT_RECORD_FILE: &str = "select_record.json";

/// Everything `select` needs besides the teacher.
#[derive(Clone, Debug)]
pub struct SelectSettings {
    pub teacher: String,
    pub init: InitSpec,
    pub classes: usize,
    pub ipc_start: usize,
    pub ipc_end: usize,
    pub res: usize,
    pub seed: u64,
    pub format: ImageFormat,
    /// The teacher's input normalisation per channel (identity for a unit-range teacher).
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

impl SelectSettings {
    /// The selection part of `run` settings (`run --method rded`).
    pub fn from_run(r: &super::run::RunSettings, channels: usize) -> SelectSettings {
        let (mean, std) = super::run::norm_of(&r.recover.clip, channels);
        SelectSettings {
            teacher: r.teacher.clone(),
            init: r.init.clone(),
            classes: r.classes,
            ipc_start: r.ipc_start,
            ipc_end: r.ipc_end,
            res: r.res,
            seed: r.seed,
            format: r.format,
            mean,
            std,
        }
    }
}

/// Writes the selected images of classes 0..classes, IPC ipc_start..ipc_end, into `out` (which must
/// be new or empty: a set is never mixed with another). Pixels are rounded to 8 bits.
///
/// `out` is this process's while it writes ([`crate::io::lock_folder`]); every image and the record
/// are written atomically, so a failure (a full disk) leaves no partial file and ends in an error.
///
/// Errors: options out of range (`Error::Option`), a dataset that cannot start this teacher's images
/// (`Error::Input`), an `out` that holds files, is being written by another process or cannot be
/// written (`Error::Output`).
pub fn select<B: Backend>(backend: &B, model: &ResNet, s: &SelectSettings, out: &Path) -> Result<SelectRecord> {
    if s.init.kind != InitKind::Patches {
        return Err(Error::Option("select writes RDED's patches (--init patches)".into()));
    }
    s.init.validate(s.res, s.ipc_end)?;
    if let Some(data) = &s.init.data {
        crate::data::check_source(data, crate::data::Split::Train)?;
    }
    if s.classes == 0 || s.classes > model.num_classes {
        return Err(Error::Option(format!("--classes {} must be in 1..={} (the teacher's classes)", s.classes, model.num_classes)));
    }
    if s.ipc_start >= s.ipc_end || s.ipc_end > 1000 {
        return Err(Error::Option(format!("--ipc-start {} must be below --ipc-end {} (at most 1000)", s.ipc_start, s.ipc_end)));
    }
    if !matches!(model.in_channels, 1 | 3) {
        return Err(Error::Option(format!("the teacher takes {} input channels; images can be saved for 1 or 3 only", model.in_channels)));
    }
    // Owned for the whole selection, and empty once owned: a set is never mixed with another.
    let _lock = lock_folder(out)?;
    if let Some(name) = folder_entries(out).next() {
        return Err(Error::output(out, format!("the folder is not empty (it holds {name}); give a new --out")));
    }
    let written = write_selection(backend, model, s, out);
    if written.is_err() {
        crate::io::clear_partial_set(out);
    }
    written
}

/// `select`'s work once the folder is owned and empty: the images, then the record.
fn write_selection<B: Backend>(backend: &B, model: &ResNet, s: &SelectSettings, out: &Path) -> Result<SelectRecord> {
    let data = s.init.data.as_deref().ok_or_else(|| Error::Option("select needs --init-data".into()))?;
    let real = RealData::open(data, model.in_channels)?;
    let t0 = Instant::now();
    let c = model.in_channels;
    let mut images = Vec::new();
    for cls in 0..s.classes {
        let chosen = class_images(backend, model, &real, &s.init, cls, s.ipc_end, s.res, s.seed, &s.mean, &s.std)?;
        for (ipc, img) in chosen.into_iter().enumerate().skip(s.ipc_start) {
            let px: Vec<u8> = img.pixels.iter().map(|&u| super::output::round_to_u8(u)).collect();
            save_image(&image_path(out, cls, ipc, model.num_classes, s.format), &px, c, s.res, s.res, s.format)?;
            images.push((cls, ipc, img.sources));
        }
    }
    let record = SelectRecord {
        engine: format!("cda-engine {}", env!("CARGO_PKG_VERSION")),
        teacher: s.teacher.clone(),
        teacher_fingerprint: crate::train::trainable::TrainModel::from_resnet(model).fingerprint(),
        init: s.init.clone(),
        classes: s.classes,
        ipc_start: s.ipc_start,
        ipc_end: s.ipc_end,
        res: s.res,
        seed: s.seed,
        images,
        seconds: t0.elapsed().as_secs_f64(),
    };
    write_atomic(&out.join(SELECT_RECORD_FILE), &serde_json::to_vec_pretty(&record).expect("record serialises"))?;
    eprintln!("selected {} images from {} into {} in {:.1}s", record.images.len(), real.ds.describe(), out.display(), record.seconds);
    Ok(record)
}
