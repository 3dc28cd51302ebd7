//! The device under the CUDA backend: a small trait with two implementations, the real GPU
//! ([`GpuDevice`], cudarc over the driver API, kernels from the PTX embedded by build.rs) and the
//! host emulation ([`crate::backend::cuda::emulation::EmuDevice`], the same kernels compiled as C++). The backend
//! (`crate::backend::cuda`) computes grids and packs kernel arguments once, for both.

use std::ffi::c_void;
use std::sync::Arc;

use cudarc::driver::{result, sys, CudaContext, CudaGraph, CudaModule, CudaStream, DriverError};

use crate::error::{Error, Result};
use crate::kernels;

/// Index of a kernel in [`KERNELS`] (see [`ids`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct KernelId(pub usize);

/// One `CDA_EXPORT`ed entry point of kernels/<module>.cu.
#[derive(Clone, Copy, Debug)]
pub struct KernelEntry {
    pub module: &'static str,
    pub name: &'static str,
}

/// The host launcher of an emulated kernel: grid[3], block[3], dynamic shared bytes, argument pointers.
pub type EmuLauncher = unsafe extern "C" fn(*const u32, *const u32, u32, *mut *mut c_void) -> i32;

include!(concat!(env!("OUT_DIR"), "/kernel_table.rs"));

impl KernelId {
    pub fn entry(self) -> &'static KernelEntry {
        &KERNELS[self.0]
    }
    pub fn name(self) -> &'static str {
        KERNELS[self.0].name
    }
}

/// Grid and block dimensions and dynamic shared memory of one launch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LaunchConfig {
    pub grid: [u32; 3],
    pub block: [u32; 3],
    pub shared_bytes: u32,
}

impl LaunchConfig {
    /// Checks the limits every CUDA device since sm_30 enforces, so both devices reject the same launches.
    pub fn validate(&self, kernel: KernelId) -> Result<()> {
        let threads = self.block.iter().map(|&b| b as u64).product::<u64>();
        let ok = self.grid.iter().all(|&g| g >= 1)
            && self.block.iter().all(|&b| b >= 1)
            && threads <= 1024
            && self.grid[0] <= i32::MAX as u32
            && self.grid[1] <= 65535
            && self.grid[2] <= 65535
            && self.block[2] <= 64
            && self.shared_bytes <= 48 * 1024;
        if ok {
            Ok(())
        } else {
            Err(Error::Cuda(format!("{}: launch configuration {self:?} exceeds the CUDA limits", kernel.name())))
        }
    }
}

/// Kernel arguments packed as `cuLaunchKernel` expects them: each parameter's bytes in its own
/// 8-byte-aligned slot, and an array of pointers to the slots.
#[derive(Clone)]
pub struct KernelArgs {
    words: [u64; Self::MAX_WORDS],
    offsets: [usize; Self::MAX_ARGS],
    count: usize,
    used: usize,
}

impl Default for KernelArgs {
    fn default() -> Self {
        Self::new()
    }
}

impl KernelArgs {
    pub const MAX_ARGS: usize = 16;
    pub const MAX_WORDS: usize = 64;

    pub fn new() -> KernelArgs {
        KernelArgs { words: [0; Self::MAX_WORDS], offsets: [0; Self::MAX_ARGS], count: 0, used: 0 }
    }

    /// Appends one parameter (by value). Panics past 16 parameters or 512 bytes: a fixed property of
    /// the kernels, not of the input.
    pub fn push<T: super::params::KernelParam>(&mut self, v: T) -> &mut Self {
        let size = std::mem::size_of::<T>();
        let words = size.div_ceil(8);
        assert!(std::mem::align_of::<T>() <= 8, "kernel parameter alignment above 8");
        assert!(self.count < Self::MAX_ARGS && self.used + words <= Self::MAX_WORDS, "too many kernel parameters");
        // SAFETY: `v` is plain data (KernelParam) of `size` bytes and the destination slots hold
        // `words * 8 >= size` bytes inside `self.words`.
        unsafe {
            std::ptr::copy_nonoverlapping(&v as *const T as *const u8, self.words.as_mut_ptr().add(self.used) as *mut u8, size);
        }
        self.offsets[self.count] = self.used;
        self.count += 1;
        self.used += words;
        self
    }

    pub fn len(&self) -> usize {
        self.count
    }
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The `void**` array for `cuLaunchKernel` (first `len()` entries), pointing into `self`.
    pub fn pointers(&self) -> [*mut c_void; Self::MAX_ARGS] {
        let mut p = [std::ptr::null_mut(); Self::MAX_ARGS];
        for (i, slot) in p.iter_mut().enumerate().take(self.count) {
            // The driver and the emulator only read through these pointers.
            *slot = self.words[self.offsets[i]..].as_ptr() as *mut c_void;
        }
        p
    }
}

/// What the CUDA backend needs from a device. Memory is untyped bytes addressed by 64-bit device
/// addresses; all operations are ordered on the device's one stream.
pub trait CudaDevice: Send + Sync + 'static {
    /// One device allocation; freed on drop.
    type Mem: Send + Sync;
    /// A captured sequence of launches that can be replayed.
    type Graph;

    fn describe(&self) -> String;
    /// `bytes` (at least 1) of zero-filled device memory.
    fn alloc_zeroed(&self, bytes: usize) -> Result<Self::Mem>;
    fn address(&self, mem: &Self::Mem) -> u64;
    /// Copies host bytes to the start of `dst` (stream-ordered; `src` may be reused on return).
    fn htod(&self, src: &[u8], dst: &Self::Mem) -> Result<()>;
    /// Copies the first `dst.len()` bytes of `src` to the host after all queued work.
    fn dtoh(&self, src: &Self::Mem, dst: &mut [u8]) -> Result<()>;
    /// Zeroes the first `bytes` of `dst` (stream-ordered; allowed while capturing).
    fn memset_zero(&self, dst: &Self::Mem, bytes: usize) -> Result<()>;
    /// Queues one kernel launch.
    ///
    /// # Safety
    /// `args` must match the kernel's parameter list in number, order and C type, and every device
    /// address in them must point into live allocations of this device large enough for the launch.
    unsafe fn launch(&self, kernel: KernelId, cfg: &LaunchConfig, args: &KernelArgs) -> Result<()>;
    fn synchronize(&self) -> Result<()>;
    /// From now until `end_capture`, launches and memsets are recorded instead of run; host copies fail.
    fn begin_capture(&self) -> Result<()>;
    fn end_capture(&self) -> Result<Self::Graph>;
    /// Runs a captured graph (stream-ordered).
    fn replay(&self, graph: &Self::Graph) -> Result<()>;
}

fn driver_err(what: impl std::fmt::Display, e: DriverError) -> Error {
    Error::Cuda(format!("{what}: {e}"))
}

/// A loaded kernel; driver function handles may be used from any thread.
#[derive(Clone, Copy)]
struct Function(sys::CUfunction);
// SAFETY: a CUfunction is an immutable handle into a loaded module; the driver API is thread-safe.
unsafe impl Send for Function {}
unsafe impl Sync for Function {}

/// Modules and functions loaded once per context and shared by every stream's device.
struct Loaded {
    _modules: Vec<Arc<CudaModule>>,
    functions: Vec<Function>,
}

/// A real GPU through the CUDA driver: one context (the device's primary one) and one stream.
pub struct GpuDevice {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    loaded: Arc<Loaded>,
    /// The driver's number for the GPU (CUDA_VISIBLE_DEVICES applied), named in `describe`.
    ordinal: usize,
    name: String,
    compute_capability: (i32, i32),
    total_mem: usize,
}

/// One `cuMemAlloc` allocation.
pub struct GpuMem {
    ptr: sys::CUdeviceptr,
    bytes: usize,
    ctx: Arc<CudaContext>,
}

impl Drop for GpuMem {
    fn drop(&mut self) {
        if self.ctx.bind_to_thread().is_ok() {
            // SAFETY: `ptr` came from malloc_sync in this context and is freed exactly once; work that
            // may still use it was ordered before by the owner (buffers live as long as their users).
            let _ = unsafe { result::free_sync(self.ptr) };
        }
    }
}

impl GpuDevice {
    /// Opens GPU `ordinal`, checks it can run the embedded kernels and loads them.
    pub fn new(ordinal: usize) -> Result<GpuDevice> {
        if !kernels::all_embedded() {
            return Err(Error::Cuda(kernels::HOW_TO_GET_PTX.to_string()));
        }
        // SAFETY: only tries to open libcuda; nothing else in cudarc may be called if this fails.
        if !unsafe { sys::is_culib_present() } {
            return Err(Error::Cuda("no NVIDIA driver: libcuda.so could not be loaded (install the NVIDIA driver; the CUDA toolkit is not needed)".into()));
        }
        let count = CudaContext::device_count().map_err(|e| driver_err("the NVIDIA driver is installed but reports no usable GPU", e))?;
        if count <= 0 {
            return Err(Error::Cuda("the NVIDIA driver reports no GPU".into()));
        }
        if ordinal >= count as usize {
            return Err(Error::Cuda(format!("there is no GPU {ordinal}: the driver reports {count} (0..{})", count - 1)));
        }
        let ctx = CudaContext::new(ordinal).map_err(|e| driver_err(format!("GPU {ordinal}: cannot create a context"), e))?;
        let name = ctx.name().unwrap_or_else(|_| "?".into());
        let compute_capability = ctx.compute_capability().map_err(|e| driver_err("compute capability", e))?;
        if compute_capability.0 < 8 {
            return Err(Error::Cuda(format!(
                "GPU {ordinal} ({name}) is sm_{}{}; the kernels need sm_80 or newer (TF32 tensor cores, mma.sync.m16n8k8)",
                compute_capability.0, compute_capability.1
            )));
        }
        let total_mem = ctx.total_mem().unwrap_or(0);
        let stream = ctx.new_stream().map_err(|e| driver_err("cannot create a stream", e))?;
        let mut modules = Vec::new();
        let mut by_name = std::collections::HashMap::new();
        for m in kernels::KERNEL_MODULES {
            let ptx = m.ptx.ok_or_else(|| Error::Cuda(kernels::HOW_TO_GET_PTX.to_string()))?;
            let module = ctx.load_module(cudarc::nvrtc::Ptx::from_src(ptx)).map_err(|e| {
                if e.0 == sys::CUresult::CUDA_ERROR_UNSUPPORTED_PTX_VERSION {
                    Error::Cuda(format!(
                        "kernels/{}.cu: the NVIDIA driver is too old for PTX from NVRTC {:?} (update the driver to one for CUDA 12.9 or newer): {e}",
                        m.name,
                        kernels::NVRTC_VERSION
                    ))
                } else {
                    driver_err(format!("kernels/{}.cu: cannot load the PTX", m.name), e)
                }
            })?;
            by_name.insert(m.name, module.clone());
            modules.push(module);
        }
        let mut functions = Vec::new();
        for k in KERNELS {
            let module = by_name.get(k.module).ok_or_else(|| Error::Cuda(format!("no module kernels/{}.cu for kernel {}", k.module, k.name)))?;
            let f = module.load_function(k.name).map_err(|e| driver_err(format!("kernels/{}.cu has no kernel {}", k.module, k.name), e))?;
            functions.push(Function(f.cu_function()));
        }
        Ok(GpuDevice { ctx, stream, loaded: Arc::new(Loaded { _modules: modules, functions }), ordinal, name, compute_capability, total_mem })
    }

    /// A device on a new stream of the same context, sharing the loaded kernels: independent work
    /// (another batch) can run concurrently with this one's.
    pub fn fork(&self) -> Result<GpuDevice> {
        let stream = self.ctx.new_stream().map_err(|e| driver_err("cannot create a stream", e))?;
        Ok(GpuDevice {
            ctx: self.ctx.clone(),
            stream,
            loaded: self.loaded.clone(),
            ordinal: self.ordinal,
            name: self.name.clone(),
            compute_capability: self.compute_capability,
            total_mem: self.total_mem,
        })
    }

    pub fn compute_capability(&self) -> (i32, i32) {
        self.compute_capability
    }

    fn bind(&self) -> Result<()> {
        self.ctx.bind_to_thread().map_err(|e| driver_err("cannot bind the CUDA context", e))
    }
}

impl CudaDevice for GpuDevice {
    type Mem = GpuMem;
    type Graph = CudaGraph;

    fn describe(&self) -> String {
        format!(
            "GPU {}: {} (sm_{}{}, {:.1} GiB)",
            self.ordinal,
            self.name,
            self.compute_capability.0,
            self.compute_capability.1,
            self.total_mem as f64 / (1u64 << 30) as f64
        )
    }

    fn alloc_zeroed(&self, bytes: usize) -> Result<GpuMem> {
        self.bind()?;
        let bytes = bytes.max(4);
        // SAFETY: the context is bound; the allocation is owned by the returned GpuMem.
        let ptr = unsafe { result::malloc_sync(bytes) }.map_err(|e| {
            if e.0 == sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY {
                let (free, total) = result::mem_get_info().unwrap_or((0, 0));
                Error::Cuda(format!(
                    "out of GPU memory allocating {:.1} MiB ({:.1} MiB free of {:.1} MiB)",
                    bytes as f64 / 1048576.0,
                    free as f64 / 1048576.0,
                    total as f64 / 1048576.0
                ))
            } else {
                driver_err(format!("cannot allocate {bytes} bytes"), e)
            }
        })?;
        let mem = GpuMem { ptr, bytes, ctx: self.ctx.clone() };
        // SAFETY: `ptr` is a fresh allocation of `bytes` bytes.
        unsafe { result::memset_d8_async(ptr, 0, bytes, self.stream.cu_stream()) }.map_err(|e| driver_err("memset", e))?;
        Ok(mem)
    }

    fn address(&self, mem: &GpuMem) -> u64 {
        mem.ptr
    }

    fn htod(&self, src: &[u8], dst: &GpuMem) -> Result<()> {
        if src.len() > dst.bytes {
            return Err(Error::Cuda(format!("host-to-device copy of {} bytes into a {}-byte buffer", src.len(), dst.bytes)));
        }
        self.bind()?;
        // SAFETY: the destination holds at least src.len() bytes. From pageable memory the driver stages
        // the source before returning, so `src` may be reused afterwards.
        unsafe { result::memcpy_htod_async(dst.ptr, src, self.stream.cu_stream()) }.map_err(|e| driver_err("host-to-device copy", e))
    }

    fn dtoh(&self, src: &GpuMem, dst: &mut [u8]) -> Result<()> {
        if dst.len() > src.bytes {
            return Err(Error::Cuda(format!("device-to-host copy of {} bytes from a {}-byte buffer", dst.len(), src.bytes)));
        }
        self.bind()?;
        // SAFETY: the source holds at least dst.len() bytes; the stream is synchronised before `dst` is read.
        unsafe { result::memcpy_dtoh_async(dst, src.ptr, self.stream.cu_stream()) }.map_err(|e| driver_err("device-to-host copy", e))?;
        self.synchronize()
    }

    fn memset_zero(&self, dst: &GpuMem, bytes: usize) -> Result<()> {
        if bytes > dst.bytes {
            return Err(Error::Cuda(format!("memset of {bytes} bytes on a {}-byte buffer", dst.bytes)));
        }
        self.bind()?;
        // SAFETY: the range lies in the allocation.
        unsafe { result::memset_d8_async(dst.ptr, 0, bytes, self.stream.cu_stream()) }.map_err(|e| driver_err("memset", e))
    }

    unsafe fn launch(&self, kernel: KernelId, cfg: &LaunchConfig, args: &KernelArgs) -> Result<()> {
        self.bind()?;
        let f = self.loaded.functions[kernel.0].0;
        let mut ptrs = args.pointers();
        // SAFETY: the caller guarantees the arguments match the kernel; `ptrs` points into `args`,
        // which outlives the call (the driver copies parameters at launch).
        result::launch_kernel(
            f,
            (cfg.grid[0], cfg.grid[1], cfg.grid[2]),
            (cfg.block[0], cfg.block[1], cfg.block[2]),
            cfg.shared_bytes,
            self.stream.cu_stream(),
            &mut ptrs[..args.len()],
        )
        .map_err(|e| driver_err(format!("launch of {}", kernel.name()), e))
    }

    fn synchronize(&self) -> Result<()> {
        self.stream.synchronize().map_err(|e| driver_err("kernel execution failed (reported at synchronisation)", e))
    }

    fn begin_capture(&self) -> Result<()> {
        self.stream.begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL).map_err(|e| driver_err("cannot begin stream capture", e))
    }

    fn end_capture(&self) -> Result<CudaGraph> {
        self.stream
            .end_capture(sys::CUgraphInstantiate_flags(0))
            .map_err(|e| driver_err("stream capture failed", e))?
            .ok_or_else(|| Error::Cuda("stream capture recorded nothing".into()))
    }

    fn replay(&self, graph: &CudaGraph) -> Result<()> {
        graph.launch().map_err(|e| driver_err("graph launch", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::conv::ConvFpropArgs;

    #[test]
    fn kernel_args_are_packed_in_8_byte_slots() {
        let mut a = KernelArgs::new();
        let conv = ConvFpropArgs { x: 0x1000, relu: 1, tiles_m: 7, ..Default::default() };
        a.push(3i32).push(2.5f64).push(conv).push(0xdead_beef_u64);
        assert_eq!(a.len(), 4);
        let p = a.pointers();
        // SAFETY: each pointer addresses the bytes of the value pushed at that position.
        unsafe {
            assert_eq!(*(p[0] as *const i32), 3);
            assert_eq!(*(p[1] as *const f64), 2.5);
            let c = *(p[2] as *const ConvFpropArgs);
            assert_eq!((c.x, c.relu, c.tiles_m), (0x1000, 1, 7));
            assert_eq!(*(p[3] as *const u64), 0xdead_beef);
            // The struct takes 80 / 8 = 10 slots after the two scalars.
            assert_eq!((p[3] as usize - p[0] as usize) / 8, 12);
        }
        assert!(p[4].is_null());
    }

    #[test]
    fn launch_limits_match_cuda() {
        let k = ids::ADAM_CLIP_F32;
        let ok = LaunchConfig { grid: [70_000, 1, 1], block: [256, 1, 1], shared_bytes: 0 };
        assert!(ok.validate(k).is_ok());
        for bad in [
            LaunchConfig { grid: [0, 1, 1], ..ok },
            LaunchConfig { grid: [1, 70_000, 1], ..ok },
            LaunchConfig { block: [1025, 1, 1], ..ok },
            LaunchConfig { block: [32, 32, 2], ..ok },
            LaunchConfig { shared_bytes: 64 * 1024, ..ok },
        ] {
            let e = bad.validate(k).unwrap_err().to_string();
            assert!(e.contains("adam_clip_f32"), "{e}");
        }
    }

    #[test]
    fn kernel_table_matches_the_kernel_modules() {
        let mut names: Vec<_> = KERNELS.iter().map(|k| k.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), KERNELS.len(), "kernel names are unique");
        for k in KERNELS {
            assert!(kernels::KERNEL_MODULES.iter().any(|m| m.name == k.module), "kernels/{}.cu is a module", k.module);
        }
        assert_eq!(ids::CONV_FPROP_V2_TF32.name(), "conv_fprop_v2_tf32");
    }
}
