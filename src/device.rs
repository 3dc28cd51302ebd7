//! Choosing the backend a command runs on: `--device auto|cpu|cuda`, dispatched to code that is
//! generic over [`Backend`].

use crate::backend::cpu::CpuBackend;
use crate::backend::cuda::probe as cuda_probe;
use crate::backend::cuda::GpuBackend;
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::kernels;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Device {
    /// A GPU when one is usable (driver, sm_80 or newer, kernels embedded), else the CPU.
    Auto,
    Cpu,
    Cuda,
}

/// Work that runs on whichever backend was chosen.
pub trait BackendTask {
    type Output;
    fn run<B: Backend>(self, backend: &B) -> Result<Self::Output>;
}

/// Why no GPU can be used, or Ok when GPU 0 looks usable.
pub fn gpu_usable() -> std::result::Result<(), String> {
    let info = cuda_probe::probe()?;
    let gpu = info.gpus.first().ok_or("the driver reports no GPU (check CUDA_VISIBLE_DEVICES)")?;
    if gpu.compute_capability.0 < 8 {
        return Err(format!("{} is sm_{}{}; the kernels need sm_80 (Ampere) or newer", gpu.name, gpu.compute_capability.0, gpu.compute_capability.1));
    }
    if !kernels::all_embedded() {
        return Err(kernels::HOW_TO_GET_PTX.to_string());
    }
    Ok(())
}

/// Whether `device` means GPU 0: an error for `cuda` when no GPU is usable (saying why).
pub fn use_gpu(device: Device) -> Result<bool> {
    Ok(match device {
        Device::Cpu => false,
        Device::Cuda => {
            gpu_usable().map_err(|why| Error::Cuda(format!("--device cuda: {why}")))?;
            true
        }
        Device::Auto => gpu_usable().is_ok(),
    })
}

/// Runs `task` on the CPU (with `threads` threads, 0 = all cores) or on GPU 0.
pub fn with_backend<T: BackendTask>(device: Device, threads: usize, task: T) -> Result<T::Output> {
    if use_gpu(device)? {
        task.run(&GpuBackend::new(0)?)
    } else {
        task.run(&CpuBackend::new(threads)?)
    }
}
