//! A model being trained (or a teacher labelling batches) on one device, as the training loops
//! (`squeeze`, `validate`, `relabel`) see it: a train-mode forward that returns the logits, a backward
//! plus optimizer step for a logit gradient the loop computes on the host, and eval-mode logits.
//! Losses and their gradients are n x classes values, negligible next to the network, so they stay
//! on the host for every device; the batch goes up once and the logits come down once per step.
//!
//! [`CpuLearner`] runs [`TrainNet`] and [`Optimizer`]; [`CudaLearner`] runs the CUDA executor
//! ([`CudaTrainNet`]), whose weights stay on the device until [`Learner::model`] asks for them.

use super::cuda_net::{CudaTrainNet, DeviceOptim};
use super::model::TrainModel;
use super::net::{Mode, TrainNet};
use super::optim::{OptimKind, Optimizer};
use crate::backend::cuda::runtime::CudaDevice;
use crate::backend::cuda::{CudaBackend, CudaBuf, EmulatedBackend, GpuBackend};
use crate::backend::Backend;
use crate::error::{Error, Result};

/// Where a training loop runs its networks.
#[derive(Clone, Copy)]
pub enum TrainDevice<'a> {
    Cpu,
    /// The CUDA training executor on a GPU.
    Gpu(&'a GpuBackend),
    /// The same executor on the host emulation of the kernels (for tests).
    Emulated(&'a EmulatedBackend),
}

pub trait Learner {
    /// Train-mode forward of `n` images `x` (normalised, n x C x H x W); the logits (n x classes).
    fn forward_train(&mut self, x: &[f32], n: usize) -> Result<Vec<f32>>;
    /// Backward of the last train-mode forward (of the same `x`) for `dlogits`, then one optimizer step
    /// at learning rate `lr`.
    fn backward_step(&mut self, x: &[f32], dlogits: &[f32], lr: f64) -> Result<()>;
    /// Eval-mode logits of `n` images.
    fn forward_eval(&mut self, x: &[f32], n: usize) -> Result<Vec<f32>>;
    /// The model with its current weights and running statistics.
    fn model(&mut self) -> Result<&mut TrainModel>;
}

/// A learner on `device` for batches of up to `max_n` images of `size` x `size`; `optim` None for a
/// network that only runs forward (a teacher).
pub fn learner<'a>(
    device: TrainDevice<'a>,
    model: &'a mut TrainModel,
    max_n: usize,
    size: usize,
    optim: Option<(OptimKind, f64)>,
) -> Result<Box<dyn Learner + 'a>> {
    Ok(match device {
        TrainDevice::Cpu => Box::new(CpuLearner::new(model, max_n, size, optim)?),
        TrainDevice::Gpu(g) => Box::new(CudaLearner::new(g, model, max_n, size, optim)?),
        TrainDevice::Emulated(g) => Box::new(CudaLearner::new(g, model, max_n, size, optim)?),
    })
}

pub struct CpuLearner<'a> {
    model: &'a mut TrainModel,
    net: TrainNet,
    opt: Option<Optimizer>,
}

impl<'a> CpuLearner<'a> {
    pub fn new(model: &'a mut TrainModel, max_n: usize, size: usize, optim: Option<(OptimKind, f64)>) -> Result<Self> {
        let net = TrainNet::new(model, max_n, size, size)?;
        let opt = optim.map(|(kind, wd)| Optimizer::new(model, kind, wd));
        Ok(CpuLearner { model, net, opt })
    }
}

impl Learner for CpuLearner<'_> {
    fn forward_train(&mut self, x: &[f32], n: usize) -> Result<Vec<f32>> {
        self.net.forward(self.model, x, n, Mode::Train)?;
        Ok(self.net.logits(self.model.num_classes).to_vec())
    }

    fn backward_step(&mut self, x: &[f32], dlogits: &[f32], lr: f64) -> Result<()> {
        let opt = self.opt.as_mut().ok_or_else(|| Error::Option("a network built without an optimizer cannot train".into()))?;
        self.net.backward(self.model, x, dlogits)?;
        opt.step(self.model, lr);
        Ok(())
    }

    fn forward_eval(&mut self, x: &[f32], n: usize) -> Result<Vec<f32>> {
        self.net.forward(self.model, x, n, Mode::Eval)?;
        Ok(self.net.logits(self.model.num_classes).to_vec())
    }

    fn model(&mut self) -> Result<&mut TrainModel> {
        Ok(self.model)
    }
}

pub struct CudaLearner<'a, D: CudaDevice> {
    g: &'a CudaBackend<D>,
    model: &'a mut TrainModel,
    net: CudaTrainNet<D>,
    x: CudaBuf<D>,
    dlogits: CudaBuf<D>,
    /// The host copy of the model is current.
    synced: bool,
}

impl<'a, D: CudaDevice> CudaLearner<'a, D> {
    pub fn new(g: &'a CudaBackend<D>, model: &'a mut TrainModel, max_n: usize, size: usize, optim: Option<(OptimKind, f64)>) -> Result<Self> {
        let net = CudaTrainNet::new(g, model, max_n, size, size, optim.map(|(kind, weight_decay)| DeviceOptim { kind, weight_decay }))?;
        Ok(CudaLearner { x: g.alloc(max_n * model.in_channels * size * size)?, dlogits: g.alloc(max_n * model.num_classes)?, g, model, net, synced: true })
    }

    fn forward(&mut self, x: &[f32], n: usize, mode: Mode) -> Result<Vec<f32>> {
        self.g.upload(x, &mut self.x)?;
        self.net.forward(self.g, self.model, &self.x, n, mode)?;
        let mut logits = vec![0f32; n * self.model.num_classes];
        self.g.download(self.net.logits(), &mut logits)?;
        Ok(logits)
    }
}

impl<D: CudaDevice> Learner for CudaLearner<'_, D> {
    fn forward_train(&mut self, x: &[f32], n: usize) -> Result<Vec<f32>> {
        // Train mode updates the running statistics on the device.
        self.synced = false;
        self.forward(x, n, Mode::Train)
    }

    /// `x` was uploaded by `forward_train`; the device copy is used.
    fn backward_step(&mut self, _x: &[f32], dlogits: &[f32], lr: f64) -> Result<()> {
        self.synced = false;
        self.g.upload(dlogits, &mut self.dlogits)?;
        self.net.backward(self.g, self.model, &self.x, &self.dlogits)?;
        self.net.step(self.g, lr)
    }

    fn forward_eval(&mut self, x: &[f32], n: usize) -> Result<Vec<f32>> {
        self.forward(x, n, Mode::Eval)
    }

    fn model(&mut self) -> Result<&mut TrainModel> {
        if !self.synced {
            self.net.download(self.g, self.model)?;
            self.synced = true;
        }
        Ok(self.model)
    }
}
