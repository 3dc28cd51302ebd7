//! PNG pictures of a run's numbers, drawn with `plotters` (bitmap backend): a recover run's losses
//! over iterations (`recover_losses.png` beside `recover_record.json`), and a training's loss and
//! top-1 per epoch (`squeeze`, `validate --record`). Text uses DejaVu Sans embedded in the binary
//! (assets/fonts, Bitstream Vera licence), so nothing depends on the machine's fonts.
//!
//! Every picture is written atomically (`io::write_atomic`); the callers treat a failure as a
//! warning, so a picture never costs the images or the records.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Once;

use plotters::prelude::*;

use crate::error::{Error, Result};
use crate::recover::LossPoint;

/// The font every picture's text is drawn in.
const FONT: &[u8] = include_bytes!("../assets/fonts/DejaVuSans.ttf");
const WIDTH: u32 = 1000;
const HEIGHT: u32 = 560;

/// The losses picture beside a recover record: `recover_record.json` -> `recover_losses.png`,
/// `recover_record.shard-0-of-4.json` -> `recover_losses.shard-0-of-4.png`.
pub fn losses_path_for(record: &Path) -> PathBuf {
    let name = record.file_name().map(|n| n.to_string_lossy().replace("recover_record", "recover_losses")).unwrap_or_else(|| "recover_losses".into());
    record.with_file_name(Path::new(&name).with_extension("png"))
}

/// The per-epoch picture beside a training record: `x.json` -> `x.png`.
pub fn epochs_path_for(record: &Path) -> PathBuf {
    record.with_extension("png")
}

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The bytes are a valid TrueType font (checked by tests/report.rs drawing text).
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

fn plot_err(e: impl std::fmt::Debug) -> Error {
    Error::State(format!("drawing a plot: {e:?}"))
}

/// Draws with `draw` on a white WIDTH x HEIGHT canvas and writes it as PNG to `path`, atomically.
fn render(path: &Path, draw: impl FnOnce(&DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>) -> Result<()>) -> Result<()> {
    register_font();
    let mut rgb = vec![255u8; (WIDTH * HEIGHT * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        draw(&root)?;
        root.present().map_err(plot_err)?;
    }
    let img = image::RgbImage::from_raw(WIDTH, HEIGHT, rgb).ok_or_else(|| Error::State("plot canvas size".into()))?;
    let mut png = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png).map_err(|e| Error::State(format!("encoding {}: {e}", path.display())))?;
    crate::io::write_atomic(path, &png)
}

/// A loss curve: its name, colour and the value it reads from a point.
type Series = (&'static str, RGBColor, fn(&LossPoint) -> f64);

/// The positive range of `values` for a log axis, widened a little; (1e-3, 1) when there are none.
fn log_range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values.filter(|v| v.is_finite() && *v > 0.0).fold((f64::INFINITY, 0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if hi == 0.0 {
        (1e-3, 1.0)
    } else {
        (lo / 1.5, hi * 1.5)
    }
}

/// A recover run's losses: for each of `batches` (one trace each: the record's `trace`, every
/// `log_every` iterations) a faint line per loss, their mean over the batches bold: cross-entropy,
/// the total BN term (sum_l w_l r_l, before r_bn) and the first BN layer's own r_0, on a log
/// axis; on the right axis the learning rate (as a fraction of its largest value) and the crop
/// curriculum's lower bound on the crop scale. Errors: drawing or writing `path` (`Error::State`,
/// `Error::Io`).
pub fn recover_losses(batches: &[&[LossPoint]], title: &str, path: &Path) -> Result<()> {
    let points = || batches.iter().flat_map(|b| b.iter());
    let x_max = points().map(|p| p.iteration).max().unwrap_or(0).max(1) as f64;
    let (lo, hi) = log_range(points().flat_map(|p| [p.ce as f64, p.bn as f64, p.bn_first as f64]));
    // Headroom above the curves for the legend.
    let hi = hi * 8.0;
    let lr_max = points().map(|p| p.lr as f64).fold(0.0, f64::max).max(f64::MIN_POSITIVE);
    let faint = (0.6 / (batches.len() as f64).sqrt()).clamp(0.03, 0.35);
    render(path, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .right_y_label_area_size(70)
            .build_cartesian_2d(0f64..x_max, (lo..hi).log_scale())
            .map_err(plot_err)?
            .set_secondary_coord(0f64..x_max, 0f64..1.05f64);
        chart.configure_mesh().x_desc("iteration").y_desc("loss (log)").label_style(("sans-serif", 14)).draw().map_err(plot_err)?;
        chart.configure_secondary_axes().y_desc("lr / max lr, crop bound").label_style(("sans-serif", 14)).draw().map_err(plot_err)?;
        let series: [Series; 3] =
            [("cross-entropy", BLUE, |p| p.ce as f64), ("BN total (sum w_l r_l)", RED, |p| p.bn as f64), ("first BN layer r_0", GREEN, |p| p.bn_first as f64)];
        for (name, color, value) in series {
            let keep = |v: f64| v.is_finite() && v > 0.0;
            if batches.len() > 1 {
                for b in batches {
                    let line: Vec<(f64, f64)> = b.iter().map(|p| (p.iteration as f64, value(p))).filter(|&(_, v)| keep(v)).collect();
                    chart.draw_series(LineSeries::new(line, color.mix(faint))).map_err(plot_err)?;
                }
            }
            let mut mean: BTreeMap<usize, (f64, usize)> = BTreeMap::new();
            for p in points() {
                let e = mean.entry(p.iteration).or_insert((0.0, 0));
                *e = (e.0 + value(p), e.1 + 1);
            }
            let line: Vec<(f64, f64)> = mean.iter().map(|(&t, &(s, n))| (t as f64, s / n as f64)).filter(|&(_, v)| keep(v)).collect();
            let label = if batches.len() > 1 { format!("{name}, mean of {} batches", batches.len()) } else { name.to_string() };
            chart
                .draw_series(LineSeries::new(line, color.stroke_width(2)))
                .map_err(plot_err)?
                .label(label)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        }
        // The schedules are the same for every batch: the first batch's.
        if let Some(b) = batches.first() {
            let lr: Vec<(f64, f64)> = b.iter().map(|p| (p.iteration as f64, p.lr as f64 / lr_max)).collect();
            let crop: Vec<(f64, f64)> = b.iter().map(|p| (p.iteration as f64, p.min_crop as f64)).collect();
            let grey = RGBColor(90, 90, 90);
            let orange = RGBColor(230, 140, 0);
            chart
                .draw_secondary_series(LineSeries::new(lr, grey.stroke_width(1)))
                .map_err(plot_err)?
                .label(format!("learning rate / {lr_max:.3} (right)"))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], grey));
            chart
                .draw_secondary_series(LineSeries::new(crop, orange.stroke_width(1)))
                .map_err(plot_err)?
                .label("crop scale lower bound (right)")
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], orange));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .label_font(("sans-serif", 14))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(plot_err)?;
        Ok(())
    })
}

/// One epoch of a training for [`epochs`]: its mean training loss and, where measured, the
/// training and test top-1 (%).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EpochPoint {
    pub epoch: usize,
    pub loss: f64,
    pub train_top1: Option<f64>,
    pub test_top1: Option<f64>,
}

/// A training's loss per epoch (left, log axis) and top-1 (right, %). Errors: drawing or writing
/// `path`.
pub fn epochs(points: &[EpochPoint], loss_name: &str, title: &str, path: &Path) -> Result<()> {
    let x_max = points.iter().map(|p| p.epoch).max().unwrap_or(1).max(1) as f64;
    let (lo, hi) = log_range(points.iter().map(|p| p.loss));
    let tops = || points.iter().flat_map(|p| [p.train_top1, p.test_top1]).flatten();
    let top_lo = tops().fold(100.0f64, f64::min).min(90.0);
    let top_lo = (top_lo / 10.0).floor() * 10.0;
    render(path, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .right_y_label_area_size(60)
            .build_cartesian_2d(0f64..x_max, (lo..hi).log_scale())
            .map_err(plot_err)?
            .set_secondary_coord(0f64..x_max, top_lo..100f64);
        chart.configure_mesh().x_desc("epoch").y_desc(format!("{loss_name} (log)")).label_style(("sans-serif", 14)).draw().map_err(plot_err)?;
        chart.configure_secondary_axes().y_desc("top-1 %").label_style(("sans-serif", 14)).draw().map_err(plot_err)?;
        let loss: Vec<(f64, f64)> = points.iter().filter(|p| p.loss.is_finite() && p.loss > 0.0).map(|p| (p.epoch as f64, p.loss)).collect();
        chart
            .draw_series(LineSeries::new(loss, BLUE.stroke_width(2)))
            .map_err(plot_err)?
            .label(loss_name.to_string())
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE.stroke_width(2)));
        let nudge = x_max * 0.07;
        for (name, color, get) in
            [("train top-1 (right)", GREEN, (|p: &EpochPoint| p.train_top1) as fn(&EpochPoint) -> Option<f64>), ("test top-1 (right)", RED, |p| p.test_top1)]
        {
            let line: Vec<(f64, f64)> = points.iter().filter_map(|p| get(p).map(|v| (p.epoch as f64, v))).collect();
            if line.is_empty() {
                continue;
            }
            let marks = line.len() <= 40;
            chart
                .draw_secondary_series(LineSeries::new(line.clone(), color.stroke_width(2)))
                .map_err(plot_err)?
                .label(name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
            if marks {
                chart.draw_secondary_series(line.iter().map(|&(x, y)| Circle::new((x, y), 3, color.filled()))).map_err(plot_err)?;
                if let Some(&(x, y)) = line.last() {
                    chart.draw_secondary_series(std::iter::once(Text::new(format!("{y:.2}%"), (x - nudge, y + 2.0), ("sans-serif", 14)))).map_err(plot_err)?;
                }
            }
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::MiddleRight)
            .label_font(("sans-serif", 14))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(plot_err)?;
        Ok(())
    })
}

/// Writes `what` with `write`, printing a warning instead of failing: pictures never cost a run its
/// images or records.
pub fn or_warn(what: &Path, write: impl FnOnce() -> Result<()>) {
    match write() {
        Ok(()) => {}
        Err(e) => eprintln!("warning: could not write the picture {}: {e}", what.display()),
    }
}
