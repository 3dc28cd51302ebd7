//! crop_resize: RandomResizedCrop's crop + bilinear resize (align_corners=False), horizontal flip and
//! roll, fused into one gather (forward) and its exact adjoint (backward).
//!
//! out[n, c, y, x] = bilinear(in[n, c, top.., left..] resized to H x W)[yr, xr'] where
//! (yr, xr) = ((y - shift_y) mod H, (x - shift_x) mod W) and xr' = W - 1 - xr when flipped.
//! This is torchvision's `RandomResizedCrop` then `RandomHorizontalFlip` then `torch.roll(shifts=(shift_y, shift_x), dims=(2, 3))`.
//!
//! CPU half: [`cpu`]. CUDA half: `kernels/crop_resize.cu`.

pub mod cpu;

/// Shape passed by value to the kernels (mirrors `CropResizeProblem` in kernels/crop_resize.cu).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct CropResizeProblem {
    pub n: i32,
    pub c: i32,
    pub h: i32,
    pub w: i32,
}
crate::assert_kernel_layout!(CropResizeProblem, size 16, { n: 0, c: 4, h: 8, w: 12 });

impl CropResizeProblem {
    pub fn len(&self) -> usize {
        (self.n * self.c * self.h * self.w) as usize
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One image's augmentation (mirrors `CropParams` in kernels/crop_resize.cu; 8 int32 per image).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct CropParams {
    /// Crop window in input pixels: rows top..top+crop_h, columns left..left+crop_w.
    pub top: i32,
    pub left: i32,
    pub crop_h: i32,
    pub crop_w: i32,
    /// 1 to flip horizontally after resizing.
    pub flip: i32,
    /// torch.roll shifts along H and W, applied last.
    pub shift_y: i32,
    pub shift_x: i32,
    pub _pad: i32,
}
crate::assert_kernel_layout!(CropParams, size 32, { top: 0, left: 4, crop_h: 8, crop_w: 12, flip: 16, shift_y: 20, shift_x: 24, _pad: 28 });

impl CropParams {
    /// No crop, no flip, no roll.
    pub fn identity(h: usize, w: usize) -> CropParams {
        CropParams { top: 0, left: 0, crop_h: h as i32, crop_w: w as i32, ..Default::default() }
    }
    /// The whole batch's parameters as the flat int32 array the ops take.
    pub fn flatten(params: &[CropParams]) -> Vec<i32> {
        bytemuck::cast_slice(params).to_vec()
    }
}

/// Bilinear source taps of output pixel (y, x): rows y0/y1, columns x0/x1 of the input, weights ly/lx
/// of the second row/column. Same arithmetic as `crop_taps` in kernels/crop_resize.cu.
#[derive(Clone, Copy, Debug)]
pub struct Taps {
    pub y0: usize,
    pub y1: usize,
    pub x0: usize,
    pub x1: usize,
    pub ly: f32,
    pub lx: f32,
}

#[inline]
pub fn taps(cp: &CropParams, h: usize, w: usize, y: usize, x: usize) -> Taps {
    let yr = (y as i32 - cp.shift_y).rem_euclid(h as i32);
    let mut xr = (x as i32 - cp.shift_x).rem_euclid(w as i32);
    if cp.flip != 0 {
        xr = w as i32 - 1 - xr;
    }
    let scale_y = cp.crop_h as f32 / h as f32;
    let scale_x = cp.crop_w as f32 / w as f32;
    let sy = (scale_y * (yr as f32 + 0.5) - 0.5).max(0.0);
    let sx = (scale_x * (xr as f32 + 0.5) - 0.5).max(0.0);
    let (iy, ix) = (sy as i32, sx as i32);
    Taps {
        ly: sy - iy as f32,
        lx: sx - ix as f32,
        y0: (cp.top + iy) as usize,
        x0: (cp.left + ix) as usize,
        y1: (cp.top + if iy < cp.crop_h - 1 { iy + 1 } else { iy }) as usize,
        x1: (cp.left + if ix < cp.crop_w - 1 { ix + 1 } else { ix }) as usize,
    }
}

/// Checks a parameter set against the image size; the ops assume valid windows.
pub fn validate(cp: &CropParams, h: usize, w: usize) -> Result<(), String> {
    let ok = cp.crop_h > 0 && cp.crop_w > 0 && cp.top >= 0 && cp.left >= 0 && (cp.top + cp.crop_h) as usize <= h && (cp.left + cp.crop_w) as usize <= w;
    if ok {
        Ok(())
    } else {
        Err(format!("crop window {cp:?} does not fit a {h}x{w} image"))
    }
}
