//! `cda-engine status OUT`: what a distilled set in OUT holds, made by one `run` or by many
//! `run --shard I/N` processes. It reads the records (the set's `recover_record.json`, every shard's
//! `recover_record.shard-I-of-N.json`, the shards' `recover_settings.json`) and the image files, and
//! says which batches are complete, which are missing, which are damaged (a file that is not a whole
//! image of the set's size and channels) and which have images but no record; the time the rest will
//! take at the measured ms per iteration; and the commands that finish the set.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::output::{check_image, image_path};
use super::run::{load_record, plan, RunRecord, RunSettings, ShardedSet, RECORD_FILE, SHARDED_SET_FILE};
use super::shard::{parse_record_file, record_file};
use super::ClipMode;
use crate::error::{Error, Result};

/// One batch that is not complete, and why.
#[derive(Clone, Debug, Serialize)]
pub struct Incomplete {
    pub ipc: Vec<usize>,
    pub class_start: usize,
    pub class_end: usize,
    /// "missing" (no record, no image), "unrecorded" (images, no record: a run stopped between
    /// them) or "damaged: FILE: WHY".
    pub state: String,
    /// The shard that owns it, for a sharded set.
    pub shard: Option<usize>,
}

/// What `status` found.
#[derive(Clone, Debug, Serialize)]
pub struct SetStatus {
    pub out: PathBuf,
    /// The set's batches and how many are complete.
    pub batches: usize,
    pub complete: usize,
    pub incomplete: Vec<Incomplete>,
    /// Real images (hybrid sets) the records lack.
    pub real_missing: usize,
    /// Shards of the set (1 for a plain run).
    pub shards: usize,
    /// Mean ms per recover iteration over the recorded batches, and the seconds the rest take at it.
    pub ms_per_iter: Option<f64>,
    pub seconds_left: Option<f64>,
    /// Commands that finish the set (one per shard with work left).
    pub commands: Vec<String>,
}

impl SetStatus {
    pub fn is_complete(&self) -> bool {
        self.incomplete.is_empty() && self.real_missing == 0
    }
}

/// The status of the set in `out`. Errors: a folder without a run's records (`Error::Input`), an
/// unreadable record.
pub fn status(out: &Path) -> Result<SetStatus> {
    let main = load_record(&out.join(RECORD_FILE))?;
    let sharded: Option<ShardedSet> = match std::fs::read(out.join(SHARDED_SET_FILE)) {
        Ok(bytes) => {
            Some(serde_json::from_slice(&bytes).map_err(|e| Error::input(out.join(SHARDED_SET_FILE).display().to_string(), format!("unreadable ({e})")))?)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(Error::io(out.join(SHARDED_SET_FILE), e)),
    };
    let (settings, shards, command): (RunSettings, usize, Vec<String>) = match (&sharded, &main) {
        (Some(s), _) => (s.settings.clone(), s.shards, s.command.clone()),
        (None, Some(r)) => (r.settings.clone(), 1, r.command.clone()),
        (None, None) => {
            return Err(Error::input(out.display().to_string(), format!("no {RECORD_FILE} and no {SHARDED_SET_FILE}: not a set that `cda-engine run` wrote")));
        }
    };
    // Every record that says something about the set.
    let mut records: Vec<RunRecord> = main.into_iter().collect();
    if let Ok(entries) = std::fs::read_dir(out) {
        for e in entries.flatten() {
            if parse_record_file(&e.file_name().to_string_lossy()).is_some_and(|(_, n)| n == shards) {
                records.extend(load_record(&e.path())?);
            }
        }
    }
    let channels = match &settings.recover.clip {
        ClipMode::Normalized { mean, .. } => vec![mean.len()],
        ClipMode::Unit => vec![3, 1],
    };
    // The folder names' digits follow the teacher's class count, which the settings do not hold:
    // five digits where such folders exist.
    let wide = std::fs::read_dir(out)
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| e.file_name().to_string_lossy().len() == "new00000".len() && e.file_name().to_string_lossy().starts_with("new"));
    let naming_classes = if wide { 1001 } else { 1000 };
    let batches = plan(&settings);
    let mut incomplete = Vec::new();
    let mut ms = Vec::new();
    for (i, b) in batches.iter().enumerate() {
        let recorded = records.iter().flat_map(|r| &r.batches).find(|r| b.is_recorded_by(r));
        let files: Vec<PathBuf> = b.images().iter().map(|&(cls, ipc)| image_path(out, cls, ipc, naming_classes, settings.format)).collect();
        let damaged = files.iter().find_map(|p| {
            let whole = channels.iter().any(|&c| check_image(p, c, settings.res, settings.res, settings.format).is_ok());
            (!whole).then(|| (p, check_image(p, channels[0], settings.res, settings.res, settings.format).err().unwrap_or_default()))
        });
        let state = match (recorded, damaged) {
            (Some(r), None) => {
                ms.push(r.ms_per_iter);
                continue;
            }
            (Some(_), Some((p, why))) => format!("damaged: {}: {why}", p.display()),
            (None, _) if files.iter().any(|p| p.exists()) => "unrecorded".to_string(),
            (None, _) => "missing".to_string(),
        };
        incomplete.push(Incomplete {
            ipc: b.ipc.clone(),
            class_start: b.class_start,
            class_end: b.class_end,
            state,
            shard: (shards > 1).then_some(i % shards),
        });
    }
    let real_missing = match &settings.real {
        Some(real) => (0..settings.classes)
            .flat_map(|cls| (settings.ipc_start..real.ipc.min(settings.ipc_end)).map(move |ipc| (cls, ipc)))
            .filter(|&(cls, ipc)| {
                let in_record = records.iter().flat_map(|r| &r.real_images).any(|e| e.0 == cls && e.1 == ipc);
                let p = image_path(out, cls, ipc, naming_classes, settings.format);
                !in_record || !channels.iter().any(|&c| check_image(&p, c, settings.res, settings.res, settings.format).is_ok())
            })
            .count(),
        None => 0,
    };
    let ms_per_iter = (!ms.is_empty()).then(|| ms.iter().sum::<f64>() / ms.len() as f64);
    let seconds_left = ms_per_iter.map(|m| m * 1e-3 * settings.recover.iterations as f64 * incomplete.len() as f64 / shards as f64);
    let commands = finishing_commands(&command, shards, &incomplete, real_missing > 0);
    Ok(SetStatus {
        out: out.to_path_buf(),
        batches: batches.len(),
        complete: batches.len() - incomplete.len(),
        incomplete,
        real_missing,
        shards,
        ms_per_iter,
        seconds_left,
        commands,
    })
}

/// The recorded command line with `--shard` set to each shard that has work left (the command
/// itself for a plain run: rerunning it resumes).
fn finishing_commands(command: &[String], shards: usize, incomplete: &[Incomplete], real_left: bool) -> Vec<String> {
    if command.is_empty() || (incomplete.is_empty() && !real_left) {
        return Vec::new();
    }
    let quote =
        |a: &String| if a.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:,+".contains(c)) { a.clone() } else { format!("'{}'", a.replace('\'', "'\\''")) };
    if shards <= 1 {
        return vec![command.iter().map(quote).collect::<Vec<_>>().join(" ")];
    }
    let mut left: Vec<usize> = incomplete.iter().filter_map(|b| b.shard).collect();
    if real_left {
        left.extend(0..shards);
    }
    left.sort_unstable();
    left.dedup();
    left.iter()
        .map(|&i| {
            let mut args: Vec<String> = Vec::with_capacity(command.len() + 2);
            let mut it = command.iter();
            while let Some(a) = it.next() {
                if a == "--shard" {
                    it.next();
                } else if !a.starts_with("--shard=") {
                    args.push(a.clone());
                }
            }
            args.push("--shard".into());
            args.push(format!("{i}/{shards}"));
            args.iter().map(quote).collect::<Vec<_>>().join(" ")
        })
        .collect()
}

/// A few lines for people: the counts, the first incomplete batches, the time left, the commands.
pub fn describe(s: &SetStatus) -> String {
    let mut t = format!("{}: {} of {} batches complete", s.out.display(), s.complete, s.batches);
    if s.shards > 1 {
        t += &format!(" ({} shards; records: {})", s.shards, record_file(0, s.shards).replace("-0-of-", "-I-of-"));
    }
    if s.real_missing > 0 {
        t += &format!("; {} real images missing", s.real_missing);
    }
    t.push('\n');
    for b in s.incomplete.iter().take(10) {
        let shard = b.shard.map(|i| format!(" (shard {i})")).unwrap_or_default();
        t += &format!("  batch ipc {:?}, classes {}..{}{shard}: {}\n", b.ipc, b.class_start, b.class_end, b.state);
    }
    if s.incomplete.len() > 10 {
        t += &format!("  ... and {} more\n", s.incomplete.len() - 10);
    }
    if let (Some(ms), Some(left)) = (s.ms_per_iter, s.seconds_left) {
        if left > 0.0 {
            t += &format!("time left: about {} at {ms:.1} ms per iteration (measured), the shards running at once\n", hms(left));
        }
    }
    for c in &s.commands {
        t += &format!("to finish: {c}\n");
    }
    if s.is_complete() {
        t += "the set is complete\n";
    }
    t
}

fn hms(secs: f64) -> String {
    let s = secs.round() as u64;
    format!("{}h{:02}m{:02}s", s / 3600, s / 60 % 60, s % 60)
}
