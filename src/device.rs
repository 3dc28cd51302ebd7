//! Choosing the backend a command runs on: `--device auto|cpu|cuda` (and, for `run`, several GPUs as
//! `cuda:all` or `cuda:0,1,...`), dispatched to code that is generic over [`Backend`].

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

/// `run`'s `--device`: one of [`Device`]'s choices, or several GPUs as `cuda:all` (every GPU the
/// driver reports) or `cuda:0,1,3` (those ordinals; `cuda:2` is one GPU other than the first).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeviceSpec {
    One(Device),
    /// GPU ordinals; `None` for `cuda:all`.
    Gpus(Option<Vec<usize>>),
}

impl std::str::FromStr for DeviceSpec {
    type Err = String;
    fn from_str(spec: &str) -> std::result::Result<Self, String> {
        let Some(list) = spec.strip_prefix("cuda:") else {
            return <Device as clap::ValueEnum>::from_str(spec, true)
                .map(DeviceSpec::One)
                .map_err(|_| format!("{spec:?} is not a device (give auto, cpu, cuda, cuda:all or cuda:0,1,...)"));
        };
        if list.trim() == "all" {
            return Ok(DeviceSpec::Gpus(None));
        }
        let ordinals = list
            .split(',')
            .map(|t| {
                let t = t.trim();
                // Digits only: usize's parser would also take "+1".
                t.bytes()
                    .all(|b| b.is_ascii_digit())
                    .then(|| t.parse::<usize>().ok())
                    .flatten()
                    .ok_or_else(|| format!("{t:?} in {spec:?} is not a GPU number (give e.g. cuda:0,1 or cuda:all)"))
            })
            .collect::<std::result::Result<Vec<_>, _>>()?;
        for (i, o) in ordinals.iter().enumerate() {
            if ordinals[..i].contains(o) {
                return Err(format!("GPU {o} is named twice in {spec:?}"));
            }
        }
        Ok(DeviceSpec::Gpus(Some(ordinals)))
    }
}

/// The usable GPU ordinals of `cuda:all` (`None`) or of a list. Errors ([`Error::Cuda`]) say why no
/// GPU can be used at all, or name an ordinal the driver does not report or a GPU older than sm_80.
pub fn gpu_ordinals(list: Option<&[usize]>) -> Result<Vec<usize>> {
    let shown = match list {
        None => "all".to_string(),
        Some(l) => l.iter().map(usize::to_string).collect::<Vec<_>>().join(","),
    };
    let bad = |m: String| Error::Cuda(format!("--device cuda:{shown}: {m}"));
    let info = cuda_probe::probe().map_err(bad)?;
    if !kernels::all_embedded() {
        return Err(bad(kernels::HOW_TO_GET_PTX.to_string()));
    }
    let ordinals: Vec<usize> = match list {
        None => info.gpus.iter().map(|g| g.ordinal).collect(),
        Some(l) => l.to_vec(),
    };
    if ordinals.is_empty() {
        return Err(bad("the driver reports no GPU (check CUDA_VISIBLE_DEVICES)".into()));
    }
    for &o in &ordinals {
        let gpu = info.gpus.iter().find(|g| g.ordinal == o).ok_or_else(|| bad(format!("there is no GPU {o}; the driver reports {}", info.gpus.len())))?;
        if gpu.compute_capability.0 < 8 {
            return Err(bad(format!(
                "GPU {o} ({}) is sm_{}{}; the kernels need sm_80 (Ampere) or newer",
                gpu.name, gpu.compute_capability.0, gpu.compute_capability.1
            )));
        }
    }
    Ok(ordinals)
}
