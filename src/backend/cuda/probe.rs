//! What the CUDA driver says about this machine, without starting a backend (for `doctor` and errors).

use cudarc::driver::{sys, CudaContext};

#[derive(Clone, Debug)]
pub struct GpuInfo {
    pub ordinal: usize,
    pub name: String,
    pub compute_capability: (i32, i32),
    pub memory_bytes: usize,
}

#[derive(Clone, Debug)]
pub struct DriverInfo {
    /// e.g. (12, 9) from cuDriverGetVersion.
    pub cuda_version: (i32, i32),
    pub gpus: Vec<GpuInfo>,
}

/// Err explains in plain words why no CUDA device can be used.
pub fn probe() -> Result<DriverInfo, String> {
    // SAFETY: only checks whether libcuda can be opened.
    if !unsafe { sys::is_culib_present() } {
        return Err("no NVIDIA driver: libcuda.so could not be loaded (install the NVIDIA driver; the CUDA toolkit is not needed)".into());
    }
    let mut v = 0i32;
    // SAFETY: valid out-pointer; the library is present.
    let rc = unsafe { sys::cuDriverGetVersion(&mut v) };
    if rc != sys::CUresult::CUDA_SUCCESS {
        return Err(format!("cuDriverGetVersion failed: {rc:?}"));
    }
    let count = CudaContext::device_count().map_err(|e| format!("the driver is installed but reports no usable GPU ({e})"))?;
    let mut gpus = Vec::new();
    for ordinal in 0..count.max(0) as usize {
        let ctx = CudaContext::new(ordinal).map_err(|e| format!("GPU {ordinal}: cannot create a context ({e})"))?;
        gpus.push(GpuInfo {
            ordinal,
            name: ctx.name().unwrap_or_else(|_| "?".into()),
            compute_capability: ctx.compute_capability().unwrap_or((0, 0)),
            memory_bytes: ctx.total_mem().unwrap_or(0),
        });
    }
    Ok(DriverInfo { cuda_version: (v / 1000, (v % 1000) / 10), gpus })
}
