// crop_resize: the recover augmentation, RandomResizedCrop + horizontal flip + roll, as one gather.
//
// Forward (crop_resize_fwd): for output pixel (n, c, y, x) of an N C H W tensor,
//   (yr, xr) = ((y - shift_y) mod H, (x - shift_x) mod W)          roll by (shift_y, shift_x)
//   xr       = flip ? W - 1 - xr : xr                              horizontal flip
//   out      = bilinear(in[n, c, top : top + crop_h, left : left + crop_w], yr, xr)  resize to H x W
// with PyTorch's align_corners=False source coordinate src = (dst + 0.5) * crop / out - 0.5, clamped at
// 0, and the upper neighbour clamped to crop - 1 (upsample_bilinear2d's rule).
//
// Backward (crop_resize_bwd): the exact adjoint, scattering each output gradient to its four input taps.
// Launch: one thread per output element, 1-D grid of ceil(N*C*H*W / 256) blocks of 256 threads.
// Augmentation parameters: 8 int32 per image (CropParams) in `params`; a batch-shared crop is N copies.
// Version 1 (this file): direct gather; backward uses atomicAdd (taps of neighbouring outputs overlap).
#include "common.cuh"

struct CropResizeParams {
    int32_t n, c, h, w;  // input and output shape (the crop is resized back to h x w)
};
CDA_PARAMS_SIZE(CropResizeParams, 16);

// Per-image parameters, mirrored by `CropParams` in src/ops/crop_resize/mod.rs.
struct CropParams {
    int32_t top, left, crop_h, crop_w, flip, shift_y, shift_x, pad_;
};
CDA_PARAMS_SIZE(CropParams, 32);

struct BilinearTaps {
    int y0, y1, x0, x1;
    float ly, lx;
};

// Source taps of output pixel (y, x) in input coordinates, following the forward definition above.
CDA_DEVICE BilinearTaps crop_taps(const CropParams& cp, int h, int w, int y, int x) {
    int yr = cda_mod(y - cp.shift_y, h);
    int xr = cda_mod(x - cp.shift_x, w);
    if (cp.flip) xr = w - 1 - xr;
    float scale_y = (float)cp.crop_h / (float)h;
    float scale_x = (float)cp.crop_w / (float)w;
    float sy = scale_y * ((float)yr + 0.5f) - 0.5f;
    float sx = scale_x * ((float)xr + 0.5f) - 0.5f;
    if (sy < 0.f) sy = 0.f;
    if (sx < 0.f) sx = 0.f;
    int iy = (int)sy;
    int ix = (int)sx;
    BilinearTaps t;
    t.ly = sy - (float)iy;
    t.lx = sx - (float)ix;
    t.y0 = cp.top + iy;
    t.x0 = cp.left + ix;
    t.y1 = cp.top + (iy < cp.crop_h - 1 ? iy + 1 : iy);
    t.x1 = cp.left + (ix < cp.crop_w - 1 ? ix + 1 : ix);
    return t;
}

CDA_GLOBAL void crop_resize_fwd_f32(CropResizeParams p, const CropParams* __restrict__ params,
                                    const float* __restrict__ in, float* __restrict__ out) {
    int64_t total = (int64_t)p.n * p.c * p.h * p.w;
    int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= total) return;
    int x = (int)(idx % p.w);
    int y = (int)((idx / p.w) % p.h);
    int64_t plane = idx / ((int64_t)p.h * p.w);  // n * C + c
    int n = (int)(plane / p.c);
    BilinearTaps t = crop_taps(params[n], p.h, p.w, y, x);
    const float* src = in + plane * p.h * p.w;
    float top = (1.f - t.lx) * src[t.y0 * p.w + t.x0] + t.lx * src[t.y0 * p.w + t.x1];
    float bot = (1.f - t.lx) * src[t.y1 * p.w + t.x0] + t.lx * src[t.y1 * p.w + t.x1];
    out[idx] = (1.f - t.ly) * top + t.ly * bot;
}

// grad_in must be zeroed by the caller.
CDA_GLOBAL void crop_resize_bwd_f32(CropResizeParams p, const CropParams* __restrict__ params,
                                    const float* __restrict__ grad_out, float* __restrict__ grad_in) {
    int64_t total = (int64_t)p.n * p.c * p.h * p.w;
    int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= total) return;
    int x = (int)(idx % p.w);
    int y = (int)((idx / p.w) % p.h);
    int64_t plane = idx / ((int64_t)p.h * p.w);
    int n = (int)(plane / p.c);
    BilinearTaps t = crop_taps(params[n], p.h, p.w, y, x);
    float g = grad_out[idx];
    float* dst = grad_in + plane * p.h * p.w;
    atomicAdd(&dst[t.y0 * p.w + t.x0], (1.f - t.ly) * (1.f - t.lx) * g);
    atomicAdd(&dst[t.y0 * p.w + t.x1], (1.f - t.ly) * t.lx * g);
    atomicAdd(&dst[t.y1 * p.w + t.x0], t.ly * (1.f - t.lx) * g);
    atomicAdd(&dst[t.y1 * p.w + t.x1], t.ly * t.lx * g);
}
