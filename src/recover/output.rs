//! Saving distilled images in the official ImageFolder layout, atomically.

use std::path::{Path, PathBuf};

use image::codecs::jpeg::JpegEncoder;
use image::codecs::png::PngEncoder;
use image::{ExtendedColorType, ImageEncoder};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::io::write_atomic_with;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ImageFormat {
    /// JPEG quality 75, as the official scripts save (PIL's default).
    Jpg,
    /// Lossless PNG.
    Png,
}

impl ImageFormat {
    pub fn extension(self) -> &'static str {
        match self {
            ImageFormat::Jpg => "jpg",
            ImageFormat::Png => "png",
        }
    }
}

/// The official conversion of a pixel in [0, 1]: `(x * 255).astype(np.uint8)` truncates.
#[inline]
pub fn quantize(unit: f32) -> u8 {
    (unit * 255.0) as u8
}

/// `{out}/new{cls:03}/class{cls:03}_id{ipc:03}.{ext}`; five class digits when there are more than 1000
/// classes (ImageNet-21K).
pub fn image_path(out: &Path, class: usize, ipc: usize, num_classes: usize, format: ImageFormat) -> PathBuf {
    let ext = format.extension();
    if num_classes > 1000 {
        out.join(format!("new{class:05}")).join(format!("class{class:05}_id{ipc:03}.{ext}"))
    } else {
        out.join(format!("new{class:03}")).join(format!("class{class:03}_id{ipc:03}.{ext}"))
    }
}

/// Writes one image (C x H x W bytes, C = 1 or 3) atomically.
pub fn save_image(path: &Path, pixels_chw: &[u8], c: usize, h: usize, w: usize, format: ImageFormat) -> Result<()> {
    let color = match c {
        1 => ExtendedColorType::L8,
        3 => ExtendedColorType::Rgb8,
        _ => return Err(Error::output(path, format!("images with {c} channels cannot be saved as JPEG or PNG (1 or 3 only)"))),
    };
    let mut hwc = vec![0u8; c * h * w];
    for ch in 0..c {
        for i in 0..h * w {
            hwc[i * c + ch] = pixels_chw[ch * h * w + i];
        }
    }
    write_atomic_with(path, |f| {
        let buf = std::io::BufWriter::new(f);
        let r = match format {
            ImageFormat::Jpg => JpegEncoder::new_with_quality(buf, 75).write_image(&hwc, w as u32, h as u32, color),
            ImageFormat::Png => PngEncoder::new(buf).write_image(&hwc, w as u32, h as u32, color),
        };
        r.map_err(std::io::Error::other)
    })
}

/// Writes a grid of images (rows x cols tiles of c x h x w bytes, 2-pixel white gutters) as PNG.
pub fn save_grid_png(path: &Path, tiles: &[Vec<u8>], cols: usize, c: usize, h: usize, w: usize) -> Result<()> {
    let rows = tiles.len().div_ceil(cols.max(1));
    let gap = 2;
    let (gw, gh) = (cols * (w + gap) + gap, rows * (h + gap) + gap);
    let mut canvas = vec![255u8; 3 * gw * gh];
    for (t, tile) in tiles.iter().enumerate() {
        let (r, col) = (t / cols, t % cols);
        for y in 0..h {
            for x in 0..w {
                for ch in 0..3 {
                    let v = tile[(ch.min(c - 1)) * h * w + y * w + x];
                    let (gy, gx) = (gap + r * (h + gap) + y, gap + col * (w + gap) + x);
                    canvas[(gy * gw + gx) * 3 + ch] = v;
                }
            }
        }
    }
    write_atomic_with(path, |f| {
        PngEncoder::new(std::io::BufWriter::new(f))
            .write_image(&canvas, gw as u32, gh as u32, ExtendedColorType::Rgb8)
            .map_err(std::io::Error::other)
    })
}
