//! Saving distilled images in the official ImageFolder layout, atomically.

use std::path::{Path, PathBuf};

use image::codecs::jpeg::JpegEncoder;
use image::codecs::png::PngEncoder;
use image::{ExtendedColorType, ImageEncoder};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::io::write_atomic;

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

/// A real image's pixel in [0, 1] to 8 bits, rounded (real pixels are k / 255 and come back as k;
/// the truncating `quantize` is only for recovered images, as the official code saves them).
#[inline]
pub fn round_to_u8(unit: f32) -> u8 {
    (unit * 255.0).round().clamp(0.0, 255.0) as u8
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

/// Writes one image (C x H x W bytes, C = 1 or 3) atomically: encoded in memory, then written,
/// synced and length-checked by [`write_atomic`] before it takes its name, so a full disk leaves
/// nothing under `path`.
///
/// Errors: `Error::Output` naming `path` (another channel count, a buffer of the wrong size, an
/// encoder failure, or any write failure).
pub fn save_image(path: &Path, pixels_chw: &[u8], c: usize, h: usize, w: usize, format: ImageFormat) -> Result<()> {
    let color = match c {
        1 => ExtendedColorType::L8,
        3 => ExtendedColorType::Rgb8,
        _ => return Err(Error::output(path, format!("images with {c} channels cannot be saved as JPEG or PNG (1 or 3 only)"))),
    };
    if pixels_chw.len() != c * h * w {
        return Err(Error::output(path, format!("{} pixel values for a {c} x {h} x {w} image", pixels_chw.len())));
    }
    let mut hwc = vec![0u8; c * h * w];
    for ch in 0..c {
        for i in 0..h * w {
            hwc[i * c + ch] = pixels_chw[ch * h * w + i];
        }
    }
    let mut bytes = Vec::new();
    let r = match format {
        ImageFormat::Jpg => JpegEncoder::new_with_quality(&mut bytes, 75).write_image(&hwc, w as u32, h as u32, color),
        ImageFormat::Png => PngEncoder::new(&mut bytes).write_image(&hwc, w as u32, h as u32, color),
    };
    r.map_err(|e| Error::output(path, format!("cannot encode the image: {e}")))?;
    write_atomic(path, &bytes)
}

/// Why `path` is not a whole image as [`save_image`] writes it: `format` (by its content and its end
/// marker, so a truncated file is caught even where a decoder would pad it), `w` x `h` pixels and `c`
/// channels (1: grey, 3: RGB). Ok when it is.
///
/// A resumed run checks every file it would skip with this: a file cut short by a full disk or a
/// crash, or one replaced by hand with another size, makes its batch run again.
pub fn check_image(path: &Path, c: usize, h: usize, w: usize, format: ImageFormat) -> std::result::Result<(), String> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    if bytes.is_empty() {
        return Err("empty file".into());
    }
    let (kind, ends_whole) = match format {
        // JPEG ends with the EOI marker; PNG with the IEND chunk (length 0, type, CRC).
        ImageFormat::Jpg => (image::ImageFormat::Jpeg, bytes.ends_with(&[0xFF, 0xD9])),
        ImageFormat::Png => (image::ImageFormat::Png, bytes.ends_with(&[0, 0, 0, 0, b'I', b'E', b'N', b'D', 0xAE, 0x42, 0x60, 0x82])),
    };
    if !ends_whole {
        return Err(format!("cut short ({} bytes, no {} end marker)", bytes.len(), format.extension().to_uppercase()));
    }
    let img = image::load_from_memory_with_format(&bytes, kind).map_err(|e| format!("not a readable {}: {e}", format.extension().to_uppercase()))?;
    let want = if c == 1 { image::ColorType::L8 } else { image::ColorType::Rgb8 };
    if (img.width() as usize, img.height() as usize) != (w, h) || img.color() != want {
        return Err(format!("{}x{} {:?}, expected {w}x{h} {want:?}", img.width(), img.height(), img.color()));
    }
    Ok(())
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
    let mut bytes = Vec::new();
    PngEncoder::new(&mut bytes)
        .write_image(&canvas, gw as u32, gh as u32, ExtendedColorType::Rgb8)
        .map_err(|e| Error::output(path, format!("cannot encode the image: {e}")))?;
    write_atomic(path, &bytes)
}
