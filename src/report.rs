//! `cda-engine report OUT`: one self-contained HTML page for a distilled set (default
//! OUT/report.html): where it came from (the record's settings and command), the teacher and its
//! test top-1, completeness (`recover::status`), the loss curves, the grid, a row of images per
//! class, and per batch the teacher's top-1 on the final images and the timings. Every picture is
//! inlined as a base64 data URI and there is no external CSS or script, so the file can be mailed
//! or attached as it is. Names and paths from the set are HTML-escaped.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use html_escape::encode_text as esc;

use crate::error::{Error, Result};
use crate::recover::gallery::image_folder;
use crate::recover::run::{load_record, RunRecord, GRID_FILE, RECORD_FILE};
use crate::recover::select::SELECT_RECORD_FILE;

/// Images per class shown in the per-class rows.
const PER_CLASS: usize = 8;
/// Classes shown in the per-class rows (a 1000-class set would make a page of megabytes).
const MAX_CLASSES: usize = 100;

/// What made the set, as far as its folder says.
enum Source {
    Run(Box<RunRecord>),
    Select(serde_json::Value),
    /// No record: `sample`, or images put there by hand.
    Folder,
}

fn data_uri(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let mime = match path.extension().map(|e| e.to_string_lossy().to_ascii_lowercase()).as_deref() {
        Some("jpg") | Some("jpeg") => "image/jpeg",
        _ => "image/png",
    };
    Ok(format!("data:{mime};base64,{}", base64::engine::general_purpose::STANDARD.encode(bytes)))
}

/// The teacher's test top-1 from its metadata, when the file (or the embedded default) has it.
fn teacher_top1(teacher: &str) -> Option<String> {
    let model = match crate::model::ResNet::load(Path::new(teacher)) {
        Ok(m) => m,
        Err(_) if teacher == crate::default_teacher::DEFAULT_TEACHER_NAME => crate::default_teacher::load().ok()?,
        Err(_) => return None,
    };
    model.metadata.get("test_top1").cloned()
}

fn row(html: &mut String, key: &str, value: &str) {
    let _ = writeln!(html, "<tr><th>{}</th><td>{}</td></tr>", esc(key), esc(value));
}

/// Writes the report of the set in `out` to `html` (default `out/report.html`) and returns its path.
/// Errors: `out` is not a set (no class folders with images: `Error::Input`), an unreadable record,
/// an unwritable `html`.
pub fn report(out: &Path, html_path: Option<&Path>) -> Result<PathBuf> {
    let (classes, _) = image_folder(out)?;
    let source = if let Some(r) = load_record(&out.join(RECORD_FILE))? {
        Source::Run(Box::new(r))
    } else if out.join(SELECT_RECORD_FILE).is_file() {
        let p = out.join(SELECT_RECORD_FILE);
        let bytes = std::fs::read(&p).map_err(|e| Error::io(&p, e))?;
        Source::Select(serde_json::from_slice(&bytes).map_err(|e| Error::input(p.display().to_string(), format!("not a select record: {e}")))?)
    } else {
        Source::Folder
    };
    let dest = html_path.map(Path::to_path_buf).unwrap_or_else(|| out.join("report.html"));
    let name = out.canonicalize().ok().and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned())).unwrap_or_else(|| out.display().to_string());
    let images: usize = classes.iter().map(|(_, f)| f.len()).sum();

    let mut h = String::new();
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{t}: distilled set</title>\n<style>\n\
         body{{font-family:sans-serif;margin:24px;max-width:1150px;color:#222}} h1{{font-size:24px}} h2{{font-size:18px;margin-top:28px;border-bottom:1px solid #ccc}}\n\
         table{{border-collapse:collapse;font-size:13px}} th,td{{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}} th{{background:#f4f4f4}}\n\
         img.plot{{max-width:100%}} img.tile{{width:56px;height:56px;image-rendering:pixelated;margin:1px;border:1px solid #eee}}\n\
         .ok{{color:#060;font-weight:bold}} .bad{{color:#a00;font-weight:bold}} pre{{background:#f7f7f7;padding:8px;font-size:12px;overflow-x:auto}}\n\
         </style></head><body>\n<h1>{t}</h1>\n<p>{images} images in {c} classes, in {o}.</p>\n",
        t = esc(&name),
        c = classes.len(),
        o = esc(&out.display().to_string())
    );

    h.push_str("<h2>Settings</h2>\n<table>\n");
    match &source {
        Source::Run(r) => {
            let s = &r.settings;
            row(&mut h, "made by", &format!("cda-engine run ({})", r.engine));
            if !r.command.is_empty() {
                row(&mut h, "command", &r.command.join(" "));
            }
            row(&mut h, "method", s.method.as_deref().unwrap_or("cda"));
            row(&mut h, "teacher", &format!("{} ({})", s.teacher, s.teacher_arch));
            if !s.extra_teachers.is_empty() {
                row(&mut h, "more teachers", &s.extra_teachers.join(", "));
            }
            row(&mut h, "teacher test top-1", &teacher_top1(&s.teacher).map_or("not in the teacher's metadata".into(), |t| format!("{t}%")));
            row(&mut h, "images", &format!("{} px, IPC {}..{}, {} classes, {:?}", s.res, s.ipc_start, s.ipc_end, s.classes, s.format));
            let c = &s.recover;
            row(
                &mut h,
                "optimisation",
                &format!("{} iterations, lr {}, r_bn {}, first BN x{}, jitter {}", c.iterations, c.lr, c.r_bn, c.first_bn_multiplier, c.jitter),
            );
            row(&mut h, "start", &format!("{:?}", s.init.kind));
            if let Some(res) = &s.residual {
                row(&mut h, "data residual", &format!("every {} iterations, alpha {}, stages {:?}", res.every, res.alpha, res.resolutions));
            }
            if let Some(real) = &s.real {
                row(&mut h, "real part", &format!("IPC 0..{} selected real images ({:?})", real.ipc, real.select.rank));
            }
            row(&mut h, "seed", &s.seed.to_string());
        }
        Source::Select(v) => {
            row(&mut h, "made by", "cda-engine select (RDED's selection, no optimisation)");
            if let Some(t) = v.pointer("/settings/teacher").or_else(|| v.get("teacher")).and_then(|t| t.as_str()) {
                row(&mut h, "teacher", t);
                row(&mut h, "teacher test top-1", &teacher_top1(t).map_or("not in the teacher's metadata".into(), |t| format!("{t}%")));
            }
        }
        Source::Folder => row(&mut h, "made by", "no record in the folder (cda-engine sample, or images put there otherwise)"),
    }
    h.push_str("</table>\n");
    if let Source::Run(r) = &source {
        let _ = writeln!(
            h,
            "<details><summary>all settings (the record's JSON)</summary><pre>{}</pre></details>",
            esc(&serde_json::to_string_pretty(&r.settings).unwrap_or_default())
        );
    }

    h.push_str("<h2>Completeness</h2>\n");
    match &source {
        Source::Run(_) => {
            let st = crate::recover::status::status(out)?;
            let (class, word) = if st.is_complete() { ("ok", "complete") } else { ("bad", "incomplete") };
            let _ = writeln!(h, "<p class=\"{class}\">{}: {} of {} batches</p>", word, st.complete, st.batches);
            let _ = writeln!(h, "<pre>{}</pre>", esc(&crate::recover::status::describe(&st)));
        }
        _ => {
            let counts: Vec<usize> = classes.iter().map(|(_, f)| f.len()).collect();
            let (lo, hi) = (counts.iter().min().copied().unwrap_or(0), counts.iter().max().copied().unwrap_or(0));
            let _ = writeln!(h, "<p>no run record: {} classes with {lo} to {hi} images each</p>", counts.len());
        }
    }

    h.push_str("<h2>Loss curves</h2>\n");
    let losses = crate::plot::losses_path_for(&out.join(RECORD_FILE));
    match &source {
        Source::Run(r) if !r.batches.iter().all(|b| b.trace.is_empty()) => {
            if !losses.is_file() {
                let traces: Vec<&[crate::recover::LossPoint]> = r.batches.iter().map(|b| b.trace.as_slice()).collect();
                crate::plot::recover_losses(&traces, "recover losses", &losses)?;
            }
            let _ = writeln!(h, "<img class=\"plot\" alt=\"losses per iteration\" src=\"{}\">", data_uri(&losses)?);
        }
        _ => h.push_str("<p>no loss trace: these images were not optimised by <code>run</code> (a <code>select</code> or <code>sample</code> set).</p>\n"),
    }

    h.push_str("<h2>Grid</h2>\n");
    let grid = out.join(GRID_FILE);
    if !grid.is_file() {
        let rows = classes.iter().map(|(_, f)| f.len()).min().unwrap_or(1).clamp(1, 10);
        crate::recover::gallery::grid(&[out.to_path_buf()], &grid, rows, 20, 0)?;
    }
    let _ = writeln!(h, "<img class=\"plot\" alt=\"image grid: IPC rows, class columns\" src=\"{}\">", data_uri(&grid)?);

    let _ = writeln!(h, "<h2>Images per class</h2>\n<table>");
    for (k, (cls, files)) in classes.iter().take(MAX_CLASSES).enumerate() {
        let folder = files.first().and_then(|f| f.parent()).and_then(|p| p.file_name()).map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let _ = write!(h, "<tr><th>class {cls}<br>{}<br>{} images</th><td>", esc(&folder), files.len());
        for f in files.iter().take(PER_CLASS) {
            let _ =
                write!(h, "<img class=\"tile\" alt=\"{}\" src=\"{}\">", html_escape::encode_double_quoted_attribute(&f.display().to_string()), data_uri(f)?);
        }
        h.push_str("</td></tr>\n");
        if k + 1 == MAX_CLASSES && classes.len() > MAX_CLASSES {
            let _ = writeln!(h, "<tr><td colspan=\"2\">{} more classes not shown</td></tr>", classes.len() - MAX_CLASSES);
        }
    }
    h.push_str("</table>\n");

    if let Source::Run(r) = &source {
        let secs: f64 = r.batches.iter().map(|b| b.seconds).sum();
        let _ = writeln!(
            h,
            "<h2>Batches</h2>\n<p>{} batches, {:.1} s of optimisation in all.</p>\n<table>\n<tr><th>IPC</th><th>classes</th><th>device</th><th>seconds</th><th>ms / iteration</th><th>teacher top-1 on the final images</th><th>CE first &rarr; last</th><th>BN first &rarr; last</th></tr>",
            r.batches.len(),
            secs
        );
        for b in &r.batches {
            let _ = writeln!(
                h,
                "<tr><td>{:?}</td><td>{}..{}</td><td>{}</td><td>{:.2}</td><td>{:.2}</td><td>{:.1}%</td><td>{:.3} &rarr; {:.3}</td><td>{:.3} &rarr; {:.3}</td></tr>",
                b.ipc,
                b.class_start,
                b.class_end,
                esc(&b.device),
                b.seconds,
                b.ms_per_iter,
                b.teacher_top1,
                b.first.ce,
                b.last.ce,
                b.first.bn,
                b.last.bn
            );
        }
        h.push_str("</table>\n");
    }
    h.push_str("</body></html>\n");
    crate::io::write_atomic(&dest, h.as_bytes())?;
    Ok(dest)
}
