//! The kernel registry: PTX of every `kernels/*.cu`, compiled by build.rs through NVRTC and embedded
//! here (candle-kernels style). A module is `None` when the binary was built without NVRTC.

/// One `kernels/<name>.cu` translation unit.
#[derive(Clone, Copy, Debug)]
pub struct KernelModule {
    pub name: &'static str,
    pub ptx: Option<&'static str>,
}

include!(concat!(env!("OUT_DIR"), "/kernels_ptx.rs"));

/// The embedded PTX of `kernels/<name>.cu`, if this binary was built with NVRTC.
pub fn ptx(name: &str) -> Option<&'static str> {
    KERNEL_MODULES.iter().find(|m| m.name == name).and_then(|m| m.ptx)
}

/// True when every kernel module was compiled to PTX at build time.
pub fn all_embedded() -> bool {
    KERNEL_MODULES.iter().all(|m| m.ptx.is_some())
}

/// What to do when this binary has no PTX.
pub const HOW_TO_GET_PTX: &str = "this binary was built without NVRTC, so it has no GPU kernels. Install NVRTC \
(`pip install \"nvidia-cuda-nvrtc-cu12==12.9.*\"`, or a CUDA toolkit with CUDA_PATH set) and rebuild with \
`cargo build --release` (CDA_REQUIRE_NVRTC=1 makes a missing NVRTC a build error)";
