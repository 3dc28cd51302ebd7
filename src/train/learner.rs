//! A model being trained (or a teacher labelling batches) on one device, as the training loops
//! (`squeeze`, `validate`, `relabel`) see it: a train-mode forward that returns the logits, a backward
//! plus optimizer step for a logit gradient the loop computes on the host, and eval-mode logits.
//! Losses and their gradients are n x classes values, negligible next to the network, so they stay
//! on the host for every device; the batch goes up once and the logits come down once per step.
//!
//! [`BackendLearner`] runs the one training executor ([`TrainNet`]) on a backend: the CPU, a GPU or
//! the host emulation of the kernels. Its weights stay in the backend's buffers until
//! [`Learner::model`] asks for them.

use super::executor::{Mode, TrainNet, TrainOptim};
use super::optim::OptimKind;
use super::trainable::TrainModel;
use crate::backend::cpu::CpuBackend;
use crate::backend::cuda::{EmulatedBackend, GpuBackend};
use crate::backend::TrainBackend;
use crate::error::Result;

/// Where a training loop runs its networks.
#[derive(Clone, Copy)]
pub enum TrainDevice<'a> {
    /// The CPU backend on the current rayon pool's thread count.
    Cpu,
    /// A GPU.
    Gpu(&'a GpuBackend),
    /// The host emulation of the kernels (for tests).
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
///
/// Errors: the executor's (sizes, allocation) and, on the CPU, a thread pool that cannot start.
pub fn learner<'a>(
    device: TrainDevice<'a>,
    model: &'a mut TrainModel,
    max_n: usize,
    size: usize,
    optim: Option<(OptimKind, f64)>,
) -> Result<Box<dyn Learner + 'a>> {
    Ok(match device {
        // The pool the command runs on decides the thread count, as it did for the CPU ops before.
        TrainDevice::Cpu => {
            let cpu = CpuBackend::on_current_pool().without_weight_cache();
            Box::new(BackendLearner::new(Held::Owned(cpu), model, max_n, size, optim)?)
        }
        TrainDevice::Gpu(g) => Box::new(BackendLearner::new(Held::Borrowed(g), model, max_n, size, optim)?),
        TrainDevice::Emulated(g) => Box::new(BackendLearner::new(Held::Borrowed(g), model, max_n, size, optim)?),
    })
}

/// A backend the learner owns (a CPU pool made for it) or borrows (a device the command opened).
pub enum Held<'a, B> {
    Owned(B),
    Borrowed(&'a B),
}

impl<B> std::ops::Deref for Held<'_, B> {
    type Target = B;
    fn deref(&self) -> &B {
        match self {
            Held::Owned(b) => b,
            Held::Borrowed(b) => b,
        }
    }
}

/// [`Learner`] over the training executor on backend `B`.
pub struct BackendLearner<'a, B: TrainBackend> {
    backend: Held<'a, B>,
    model: &'a mut TrainModel,
    net: TrainNet<B>,
    x: B::Buf,
    dlogits: B::Buf,
    /// The host copy of the model is current.
    synced: bool,
}

impl<'a, B: TrainBackend> BackendLearner<'a, B> {
    pub fn new(backend: Held<'a, B>, model: &'a mut TrainModel, max_n: usize, size: usize, optim: Option<(OptimKind, f64)>) -> Result<Self> {
        let net = TrainNet::new(&*backend, model, max_n, size, size, optim.map(|(kind, weight_decay)| TrainOptim { kind, weight_decay }))?;
        let x = backend.alloc(max_n * model.in_channels * size * size)?;
        let dlogits = backend.alloc(max_n * model.num_classes)?;
        Ok(BackendLearner { backend, model, net, x, dlogits, synced: true })
    }

    fn forward(&mut self, x: &[f32], n: usize, mode: Mode) -> Result<Vec<f32>> {
        let b = &*self.backend;
        let need = n * self.model.in_channels * self.net.h * self.net.w;
        if x.len() != need {
            return Err(crate::error::Error::input(
                "batch",
                format!("{} values for {n} images of {}x{}x{}", x.len(), self.model.in_channels, self.net.h, self.net.w),
            ));
        }
        b.upload(x, &mut self.x)?;
        self.net.forward(b, self.model, &self.x, n, mode)?;
        let mut logits = vec![0f32; n * self.model.num_classes];
        b.download(self.net.logits(), &mut logits)?;
        Ok(logits)
    }
}

impl<B: TrainBackend> Learner for BackendLearner<'_, B> {
    fn forward_train(&mut self, x: &[f32], n: usize) -> Result<Vec<f32>> {
        // Train mode updates the running statistics in the backend's buffers.
        self.synced = false;
        self.forward(x, n, Mode::Train)
    }

    /// `x` was uploaded by `forward_train`; the backend's copy is used.
    fn backward_step(&mut self, _x: &[f32], dlogits: &[f32], lr: f64) -> Result<()> {
        self.synced = false;
        let b = &*self.backend;
        b.upload(dlogits, &mut self.dlogits)?;
        self.net.backward(b, self.model, &self.x, &self.dlogits)?;
        self.net.step(b, lr)
    }

    fn forward_eval(&mut self, x: &[f32], n: usize) -> Result<Vec<f32>> {
        self.forward(x, n, Mode::Eval)
    }

    fn model(&mut self) -> Result<&mut TrainModel> {
        if !self.synced {
            self.net.download(&self.backend, self.model)?;
            self.synced = true;
        }
        Ok(self.model)
    }
}
