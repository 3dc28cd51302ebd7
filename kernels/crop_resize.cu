// crop_resize: the recover augmentation, RandomResizedCrop + horizontal flip + roll, as one gather.
//
// Forward (crop_resize_fwd): for output pixel (n, c, y, x) of an N C H W tensor,
//   (yr, xr) = ((y - shift_y) mod H, (x - shift_x) mod W)          roll by (shift_y, shift_x)
//   xr       = flip ? W - 1 - xr : xr                              horizontal flip
//   out      = bilinear(in[n, c, top : top + crop_h, left : left + crop_w], yr, xr)  resize to H x W
// with PyTorch's align_corners=False source coordinate src = (dst + 0.5) * crop / out - 0.5, clamped at
// 0, and the upper neighbour clamped to crop - 1 (upsample_bilinear2d's rule).
//
// Backward: the exact adjoint dx = A^T dout of the forward map A.
// Launch: one thread per element, 1-D grid of ceil(N*C*H*W / 256) blocks of 256 threads.
// Augmentation parameters: 8 int32 per image (CropParams) in `params`; a batch-shared crop is N copies.
// Versions:
//   1. crop_resize_bwd_f32: one thread per output element scatters its gradient to its four input taps
//      with atomicAdd (taps of neighbouring outputs overlap). Needs a zeroed dx; the summation order,
//      hence the last bits, varies from run to run.
//   2. crop_resize_bwd_gather_f32: one thread per input element gathers from the outputs whose taps
//      reach it. The bilinear map is separable and the source row index floor(sy) is monotone in the
//      (unrolled, unflipped) output row, so those outputs form one contiguous range of rows times one of
//      columns, found from the forward's own tap function; each candidate's weight is recomputed with
//      exactly the forward's arithmetic. Deterministic, no zero-fill; pixels outside the crop window get
//      0. Cost per input pixel ~ (2 / scale + 2)^2 candidate taps (scale = crop / size <= 1).
#include "common.cuh"

struct CropResizeProblem {
    int32_t n, c, h, w;  // input and output shape (the crop is resized back to h x w)
};
CDA_PARAMS_SIZE(CropResizeProblem, 16);
CDA_PARAMS_OFFSET(CropResizeProblem, n, 0);
CDA_PARAMS_OFFSET(CropResizeProblem, c, 4);
CDA_PARAMS_OFFSET(CropResizeProblem, h, 8);
CDA_PARAMS_OFFSET(CropResizeProblem, w, 12);

// Per-image parameters, mirrored by `CropParams` in src/ops/crop_resize/mod.rs.
struct CropParams {
    int32_t top, left, crop_h, crop_w, flip, shift_y, shift_x, pad_;
};
CDA_PARAMS_SIZE(CropParams, 32);
CDA_PARAMS_OFFSET(CropParams, top, 0);
CDA_PARAMS_OFFSET(CropParams, left, 4);
CDA_PARAMS_OFFSET(CropParams, crop_h, 8);
CDA_PARAMS_OFFSET(CropParams, crop_w, 12);
CDA_PARAMS_OFFSET(CropParams, flip, 16);
CDA_PARAMS_OFFSET(CropParams, shift_y, 20);
CDA_PARAMS_OFFSET(CropParams, shift_x, 24);
CDA_PARAMS_OFFSET(CropParams, pad_, 28);

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

CDA_GLOBAL void crop_resize_fwd_f32(CropResizeProblem p, const CropParams* __restrict__ params,
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
CDA_EXPORT(crop_resize_fwd_f32)

// grad_in must be zeroed by the caller.
CDA_GLOBAL void crop_resize_bwd_f32(CropResizeProblem p, const CropParams* __restrict__ params,
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
CDA_EXPORT(crop_resize_bwd_f32)

// Source row (or column) index of unrolled, unflipped output coordinate `o` (the forward's floor(sy)).
CDA_DEVICE int crop_src_index(int crop, int size, int o) {
    float scale = (float)crop / (float)size;
    float sv = scale * ((float)o + 0.5f) - 0.5f;
    if (sv < 0.f) sv = 0.f;
    return (int)sv;
}

// Output coordinates o in [lo, hi] whose taps (floor(s), min(floor(s) + 1, crop - 1)) include `rel`.
CDA_DEVICE void crop_tap_range(int crop, int size, int rel, int* lo, int* hi) {
    // Taps include rel iff floor(s) in {rel - 1, rel}; floor(s) is monotone in o.
    float scale = (float)crop / (float)size;
    int guess = (int)(((float)rel - 0.5f) / scale - 0.5f);
    if (guess < 0) guess = 0;
    if (guess > size - 1) guess = size - 1;
    int a = guess;
    while (a > 0 && crop_src_index(crop, size, a - 1) >= rel - 1) --a;
    while (a < size && crop_src_index(crop, size, a) < rel - 1) ++a;
    int b = a;
    while (b + 1 < size && crop_src_index(crop, size, b + 1) <= rel) ++b;
    *lo = a;
    *hi = (a < size && crop_src_index(crop, size, a) <= rel) ? b : a - 1;
}

// Weight of input offset `rel` in the 1-D tap pair of output coordinate o (0 if not a tap).
CDA_DEVICE float crop_tap_weight(int crop, int size, int o, int rel) {
    float scale = (float)crop / (float)size;
    float sv = scale * ((float)o + 0.5f) - 0.5f;
    if (sv < 0.f) sv = 0.f;
    int i0 = (int)sv;
    float l = sv - (float)i0;
    int i1 = i0 < crop - 1 ? i0 + 1 : i0;
    float wgt = 0.f;
    if (i0 == rel) wgt += 1.f - l;
    if (i1 == rel) wgt += l;
    return wgt;
}

CDA_GLOBAL void crop_resize_bwd_gather_f32(CropResizeProblem p, const CropParams* __restrict__ params,
                                           const float* __restrict__ grad_out, float* __restrict__ grad_in) {
    int64_t total = (int64_t)p.n * p.c * p.h * p.w;
    int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= total) return;
    int X = (int)(idx % p.w);
    int Y = (int)((idx / p.w) % p.h);
    int64_t plane = idx / ((int64_t)p.h * p.w);
    const CropParams cp = params[plane / p.c];
    int ry = Y - cp.top, rx = X - cp.left;
    if (ry < 0 || ry >= cp.crop_h || rx < 0 || rx >= cp.crop_w) {
        grad_in[idx] = 0.f;
        return;
    }
    int ylo, yhi, xlo, xhi;
    crop_tap_range(cp.crop_h, p.h, ry, &ylo, &yhi);
    crop_tap_range(cp.crop_w, p.w, rx, &xlo, &xhi);
    const float* g = grad_out + plane * p.h * p.w;
    float acc = 0.f;
    for (int yr = ylo; yr <= yhi; ++yr) {
        float wy = crop_tap_weight(cp.crop_h, p.h, yr, ry);
        if (wy == 0.f) continue;
        int y = cda_mod(yr + cp.shift_y, p.h);
        for (int xr = xlo; xr <= xhi; ++xr) {
            float wx = crop_tap_weight(cp.crop_w, p.w, xr, rx);
            if (wx == 0.f) continue;
            int xu = cp.flip ? p.w - 1 - xr : xr;  // unflipped, unrolled column
            int x = cda_mod(xu + cp.shift_x, p.w);
            acc += wy * wx * g[y * p.w + x];
        }
    }
    grad_in[idx] = acc;
}
CDA_EXPORT(crop_resize_bwd_gather_f32)
