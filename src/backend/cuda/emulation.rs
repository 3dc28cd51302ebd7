//! The emulated CUDA device: host memory, and kernels/*.cu compiled as C++ (kernels/host_shim.h) and
//! launched over the grid on the host. It sits under the same `CudaBackend` as the real GPU, so the
//! backend's grid computation, argument packing and epilogue selection are what the tests exercise.
//!
//! Besides running kernels it checks what it cheaply can:
//! - every allocation has 256 guard bytes on each side; after every launch the guards of all live
//!   allocations are checked, so a kernel writing past a buffer's end fails the launch;
//! - launches run to completion before `launch` returns, under one process-wide lock (static
//!   `__shared__` memory is process-wide in the emulation);
//! - graph capture records launches and memsets, and rejects host copies as the driver does.

use std::alloc::Layout;
use std::collections::BTreeMap;
use std::ptr::NonNull;
use std::sync::Mutex;

use super::runtime::{CudaDevice, KernelArgs, KernelId, LaunchConfig};
use crate::error::{Error, Result};

const GUARD: usize = 256;
const GUARD_BYTE: u8 = 0xcd;

/// Live allocations (user address -> user bytes), for the guard checks after each launch.
static LIVE: Mutex<BTreeMap<usize, usize>> = Mutex::new(BTreeMap::new());
/// Emulated launches run one at a time (shared memory is static in the emulation).
static LAUNCH: Mutex<()> = Mutex::new(());

/// One host allocation standing in for device memory.
pub struct EmuMem {
    base: NonNull<u8>,
    bytes: usize,
    layout: Layout,
}

// SAFETY: the memory is only touched through raw pointers by copies and by kernels that the device
// serialises; the handle itself is just an owned pointer.
unsafe impl Send for EmuMem {}
unsafe impl Sync for EmuMem {}

impl EmuMem {
    fn user(&self) -> *mut u8 {
        // SAFETY: the allocation is GUARD + bytes + GUARD long.
        unsafe { self.base.as_ptr().add(GUARD) }
    }
}

impl Drop for EmuMem {
    fn drop(&mut self) {
        LIVE.lock().unwrap_or_else(|e| e.into_inner()).remove(&(self.user() as usize));
        // SAFETY: `base` was allocated with `layout` and is freed once.
        unsafe { std::alloc::dealloc(self.base.as_ptr(), self.layout) };
    }
}

/// Checks the guard bytes around `bytes` at user address `addr`.
fn guards_intact(addr: usize, bytes: usize) -> bool {
    // SAFETY: `addr` is the user address of a live allocation (LIVE is locked by the caller or the
    // allocation is owned by the caller), so both guard ranges lie inside it.
    unsafe {
        let before = std::slice::from_raw_parts((addr - GUARD) as *const u8, GUARD);
        let after = std::slice::from_raw_parts((addr + bytes) as *const u8, GUARD);
        before.iter().chain(after).all(|&b| b == GUARD_BYTE)
    }
}

#[derive(Clone)]
enum Node {
    Launch { kernel: KernelId, cfg: LaunchConfig, args: Box<KernelArgs> },
    Memset { addr: usize, bytes: usize },
}

/// A captured sequence of emulated launches and memsets.
pub struct EmuGraph {
    nodes: Vec<Node>,
}

impl EmuGraph {
    pub fn len(&self) -> usize {
        self.nodes.len()
    }
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }
}

/// The host emulation of a CUDA device.
pub struct EmuDevice {
    capture: Mutex<Option<Vec<Node>>>,
    /// Launches and memsets run so far, and the count after which every one fails (a GPU that
    /// falls over mid-run, for the tests of what a multi-device run does then).
    runs: std::sync::atomic::AtomicUsize,
    fail_after: Option<usize>,
}

impl EmuDevice {
    /// Err when this binary was built without host emulation (no C++17 compiler at build time).
    pub fn new() -> Result<EmuDevice> {
        if !super::runtime::EMULATION_BUILT {
            return Err(Error::Cuda("this binary was built without host emulation of the CUDA kernels (build.rs found no C++17 compiler)".into()));
        }
        Ok(EmuDevice { capture: Mutex::new(None), runs: Default::default(), fail_after: None })
    }

    /// A device whose launches and memsets fail with `Error::Cuda` after the first `n` (for tests
    /// of a GPU failing mid-run). Errors as [`EmuDevice::new`]'s.
    pub fn failing_after(n: usize) -> Result<EmuDevice> {
        Ok(EmuDevice { fail_after: Some(n), ..EmuDevice::new()? })
    }

    fn capturing(&self) -> bool {
        self.capture.lock().unwrap_or_else(|e| e.into_inner()).is_some()
    }

    fn run(&self, node: &Node) -> Result<()> {
        let done = self.runs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if self.fail_after.is_some_and(|n| done >= n) {
            return Err(Error::Cuda(format!("emulated device fault: it was set to fail after {done} launches and memsets")));
        }
        match node {
            Node::Memset { addr, bytes } => {
                // SAFETY: the range was checked against its allocation when the memset was issued.
                unsafe { std::ptr::write_bytes(*addr as *mut u8, 0, *bytes) };
                Ok(())
            }
            Node::Launch { kernel, cfg, args } => run_kernel(*kernel, cfg, args),
        }
    }
}

#[cfg(cda_emu)]
fn run_kernel(kernel: KernelId, cfg: &LaunchConfig, args: &KernelArgs) -> Result<()> {
    let _serial = LAUNCH.lock().unwrap_or_else(|e| e.into_inner());
    let launcher = super::runtime::EMU_LAUNCHERS[kernel.0];
    let mut ptrs = args.pointers();
    // SAFETY: the backend packed `args` for this kernel (CudaDevice::launch's contract) and every address
    // in them points into a live EmuMem; the launcher reads exactly the kernel's parameters.
    let rc = unsafe { launcher(cfg.grid.as_ptr(), cfg.block.as_ptr(), cfg.shared_bytes, ptrs.as_mut_ptr()) };
    if rc != 0 {
        // SAFETY: returns a NUL-terminated string owned by the emulation library (thread-local).
        let msg = unsafe { std::ffi::CStr::from_ptr(super::runtime::cda_emu_last_error()) };
        return Err(Error::Cuda(format!("emulated {}: {}", kernel.name(), msg.to_string_lossy())));
    }
    let live = LIVE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((&addr, &bytes)) = live.iter().find(|(&a, &b)| !guards_intact(a, b)) {
        return Err(Error::Cuda(format!("emulated {} ({cfg:?}) wrote outside a {bytes}-byte buffer at {addr:#x}", kernel.name())));
    }
    Ok(())
}

#[cfg(not(cda_emu))]
fn run_kernel(kernel: KernelId, _cfg: &LaunchConfig, _args: &KernelArgs) -> Result<()> {
    let _ = &LAUNCH;
    Err(Error::Cuda(format!("{}: this binary was built without host emulation", kernel.name())))
}

const CAPTURE_COPY: &str = "host-device copies are not allowed while capturing a graph (upload before capture or between replays)";

impl CudaDevice for EmuDevice {
    type Mem = EmuMem;
    type Graph = EmuGraph;

    fn describe(&self) -> String {
        "emulated CUDA device (kernels compiled for the host)".into()
    }

    fn alloc_zeroed(&self, bytes: usize) -> Result<EmuMem> {
        let bytes = bytes.max(4);
        let layout = Layout::from_size_align(bytes + 2 * GUARD, GUARD).map_err(|e| Error::Cuda(format!("cannot allocate {bytes} bytes: {e}")))?;
        // SAFETY: the layout has a non-zero size.
        let base =
            NonNull::new(unsafe { std::alloc::alloc_zeroed(layout) }).ok_or_else(|| Error::Cuda(format!("out of host memory allocating {bytes} bytes")))?;
        // SAFETY: both guard ranges lie inside the fresh allocation.
        unsafe {
            std::ptr::write_bytes(base.as_ptr(), GUARD_BYTE, GUARD);
            std::ptr::write_bytes(base.as_ptr().add(GUARD + bytes), GUARD_BYTE, GUARD);
        }
        let mem = EmuMem { base, bytes, layout };
        LIVE.lock().unwrap_or_else(|e| e.into_inner()).insert(mem.user() as usize, bytes);
        Ok(mem)
    }

    fn address(&self, mem: &EmuMem) -> u64 {
        mem.user() as u64
    }

    fn htod(&self, src: &[u8], dst: &EmuMem) -> Result<()> {
        if self.capturing() {
            return Err(Error::Cuda(CAPTURE_COPY.into()));
        }
        if src.len() > dst.bytes {
            return Err(Error::Cuda(format!("host-to-device copy of {} bytes into a {}-byte buffer", src.len(), dst.bytes)));
        }
        // SAFETY: the destination holds at least src.len() bytes; no kernel runs concurrently.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst.user(), src.len()) };
        Ok(())
    }

    fn dtoh(&self, src: &EmuMem, dst: &mut [u8]) -> Result<()> {
        if self.capturing() {
            return Err(Error::Cuda(CAPTURE_COPY.into()));
        }
        if dst.len() > src.bytes {
            return Err(Error::Cuda(format!("device-to-host copy of {} bytes from a {}-byte buffer", dst.len(), src.bytes)));
        }
        if !guards_intact(src.user() as usize, src.bytes) {
            return Err(Error::Cuda(format!("a kernel wrote outside this {}-byte buffer", src.bytes)));
        }
        // SAFETY: the source holds at least dst.len() bytes.
        unsafe { std::ptr::copy_nonoverlapping(src.user(), dst.as_mut_ptr(), dst.len()) };
        Ok(())
    }

    fn memset_zero(&self, dst: &EmuMem, bytes: usize) -> Result<()> {
        if bytes > dst.bytes {
            return Err(Error::Cuda(format!("memset of {bytes} bytes on a {}-byte buffer", dst.bytes)));
        }
        let node = Node::Memset { addr: dst.user() as usize, bytes };
        if let Some(nodes) = self.capture.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
            nodes.push(node);
            return Ok(());
        }
        self.run(&node)
    }

    unsafe fn launch(&self, kernel: KernelId, cfg: &LaunchConfig, args: &KernelArgs) -> Result<()> {
        let node = Node::Launch { kernel, cfg: *cfg, args: Box::new(args.clone()) };
        if let Some(nodes) = self.capture.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
            nodes.push(node);
            return Ok(());
        }
        self.run(&node)
    }

    fn synchronize(&self) -> Result<()> {
        Ok(())
    }

    fn begin_capture(&self) -> Result<()> {
        let mut c = self.capture.lock().unwrap_or_else(|e| e.into_inner());
        if c.is_some() {
            return Err(Error::Cuda("a graph capture is already in progress".into()));
        }
        *c = Some(Vec::new());
        Ok(())
    }

    fn end_capture(&self) -> Result<EmuGraph> {
        let nodes = self.capture.lock().unwrap_or_else(|e| e.into_inner()).take().ok_or_else(|| Error::Cuda("end_capture without begin_capture".into()))?;
        if nodes.is_empty() {
            return Err(Error::Cuda("stream capture recorded nothing".into()));
        }
        Ok(EmuGraph { nodes })
    }

    fn replay(&self, graph: &EmuGraph) -> Result<()> {
        if self.capturing() {
            return Err(Error::Cuda("cannot replay a graph while capturing".into()));
        }
        graph.nodes.iter().try_for_each(|n| self.run(n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_past_a_buffer_are_detected() {
        let Ok(dev) = EmuDevice::new() else { return };
        let mem = dev.alloc_zeroed(40).unwrap();
        let mut host = [1u8; 40];
        dev.dtoh(&mem, &mut host).unwrap();
        assert!(host.iter().all(|&b| b == 0), "zero-filled");
        // SAFETY: the byte written lies in the guard area after the 40 user bytes (inside the allocation).
        unsafe { *(dev.address(&mem) as *mut u8).add(40) = 1 };
        assert!(dev.dtoh(&mem, &mut host).unwrap_err().to_string().contains("outside"));
        // SAFETY: restore the guard byte so dropping the buffer stays quiet.
        unsafe { *(dev.address(&mem) as *mut u8).add(40) = GUARD_BYTE };
    }

    #[test]
    fn capture_records_and_refuses_host_copies() {
        let Ok(dev) = EmuDevice::new() else { return };
        let mem = dev.alloc_zeroed(16).unwrap();
        dev.htod(&[7u8; 16], &mem).unwrap();
        dev.begin_capture().unwrap();
        assert!(dev.begin_capture().is_err(), "no nested capture");
        assert!(dev.htod(&[1u8; 4], &mem).is_err());
        dev.memset_zero(&mem, 8).unwrap();
        let graph = dev.end_capture().unwrap();
        assert_eq!(graph.len(), 1);
        let mut host = [0u8; 16];
        dev.dtoh(&mem, &mut host).unwrap();
        assert_eq!(host, [7u8; 16], "captured work did not run");
        dev.replay(&graph).unwrap();
        dev.dtoh(&mem, &mut host).unwrap();
        assert_eq!(&host[..8], &[0u8; 8]);
        assert_eq!(&host[8..], &[7u8; 8]);
        assert!(dev.begin_capture().and_then(|_| dev.end_capture()).is_err(), "an empty capture is an error");
    }
}
