//! `cda-engine bench`: whole recover iterations on a teacher or a random-weight torchvision ResNet,
//! timed after warm-up. The last stdout line is one JSON object (see [`BenchResult`]).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Instant;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, StandardNormal};
use serde::Serialize;

use crate::backend::cpu::CpuBackend;
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::model::{ResNet, Stem};
use crate::recover::batch_augment::{sample_batch, AugmentSpec};
use crate::recover::curriculum::Curriculum;
use crate::recover::{ClipMode, RecoverConfig, Recoverer};
use crate::weights::{Tensor, TensorFile};

/// torchvision layer counts and block kind of the supported architectures.
pub fn arch_layout(arch: &str) -> Option<(bool, [usize; 4])> {
    match arch {
        "resnet18" => Some((false, [2, 2, 2, 2])),
        "resnet34" => Some((false, [3, 4, 6, 3])),
        "resnet50" => Some((true, [3, 4, 6, 3])),
        "resnet101" => Some((true, [3, 4, 23, 3])),
        "resnet152" => Some((true, [3, 8, 36, 3])),
        _ => None,
    }
}

/// A torchvision-named ResNet with random weights (He-normal convs) and plausible BN statistics.
pub fn random_resnet(arch: &str, stem: Stem, in_channels: usize, classes: usize, width: usize, seed: u64) -> Result<ResNet> {
    let (bottleneck, layers) = arch_layout(arch).ok_or_else(|| Error::Option(format!("unknown --arch {arch} (resnet18/34/50/101/152)")))?;
    if classes == 0 || in_channels == 0 || width == 0 {
        return Err(Error::Option(format!("a random {arch} needs at least 1 class, input channel and width (got {classes}, {in_channels}, {width})")));
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let mut t: BTreeMap<String, Tensor> = BTreeMap::new();
    let conv = |t: &mut BTreeMap<String, Tensor>, rng: &mut StdRng, name: &str, k: usize, c: usize, r: usize| {
        let std = (2.0 / (k * r * r) as f32).sqrt();
        let data = (0..k * c * r * r)
            .map(|_| {
                let z: f32 = StandardNormal.sample(&mut *rng);
                std * z
            })
            .collect();
        t.insert(format!("{name}.weight"), Tensor::new(vec![k, c, r, r], data));
    };
    let bn = |t: &mut BTreeMap<String, Tensor>, rng: &mut StdRng, name: &str, k: usize| {
        let v = |rng: &mut StdRng, lo: f32, hi: f32| (0..k).map(|_| rng.random_range(lo..hi)).collect::<Vec<f32>>();
        t.insert(format!("{name}.weight"), Tensor::new(vec![k], v(rng, 0.5, 1.5)));
        t.insert(format!("{name}.bias"), Tensor::new(vec![k], v(rng, -0.2, 0.2)));
        t.insert(format!("{name}.running_mean"), Tensor::new(vec![k], v(rng, -0.5, 0.5)));
        t.insert(format!("{name}.running_var"), Tensor::new(vec![k], v(rng, 0.5, 2.0)));
    };
    let stem_k = if stem == Stem::ImageNet { 7 } else { 3 };
    conv(&mut t, &mut rng, "conv1", width, in_channels, stem_k);
    bn(&mut t, &mut rng, "bn1", width);
    let expansion = if bottleneck { 4 } else { 1 };
    let mut inplanes = width;
    for (s, &blocks) in layers.iter().enumerate() {
        let planes = width << s;
        for b in 0..blocks {
            let p = format!("layer{}.{b}", s + 1);
            if bottleneck {
                conv(&mut t, &mut rng, &format!("{p}.conv1"), planes, inplanes, 1);
                conv(&mut t, &mut rng, &format!("{p}.conv2"), planes, planes, 3);
                conv(&mut t, &mut rng, &format!("{p}.conv3"), planes * 4, planes, 1);
                bn(&mut t, &mut rng, &format!("{p}.bn3"), planes * 4);
            } else {
                conv(&mut t, &mut rng, &format!("{p}.conv1"), planes, inplanes, 3);
                conv(&mut t, &mut rng, &format!("{p}.conv2"), planes, planes, 3);
            }
            bn(&mut t, &mut rng, &format!("{p}.bn1"), planes);
            bn(&mut t, &mut rng, &format!("{p}.bn2"), planes);
            if b == 0 && (s > 0 || inplanes != planes * expansion) {
                conv(&mut t, &mut rng, &format!("{p}.downsample.0"), planes * expansion, inplanes, 1);
                bn(&mut t, &mut rng, &format!("{p}.downsample.1"), planes * expansion);
            }
            inplanes = planes * expansion;
        }
    }
    let fc_std = (1.0 / inplanes as f32).sqrt();
    t.insert(
        "fc.weight".into(),
        Tensor::new(
            vec![classes, inplanes],
            (0..classes * inplanes)
                .map(|_| {
                    let z: f32 = StandardNormal.sample(&mut rng);
                    fc_std * z
                })
                .collect(),
        ),
    );
    t.insert("fc.bias".into(), Tensor::zeros(vec![classes]));
    let mut metadata = HashMap::new();
    metadata.insert("stem".to_string(), stem.name().to_string());
    ResNet::from_tensors(TensorFile { path: format!("<random {arch}>").into(), tensors: t, skipped: vec![], metadata })
}

#[derive(Clone, Debug, Serialize)]
pub struct BenchResult {
    pub device: String,
    /// torchvision's name (`resnet18`), as the PyTorch peers name their models.
    pub arch: String,
    /// The first stage's width (torchvision's 64; `--arch resnet18-w8` gives 8).
    pub width: usize,
    pub stem: String,
    pub res: usize,
    pub batch: usize,
    pub threads: usize,
    pub iters: usize,
    pub ms_per_iter: f64,
    /// Forward multiply-accumulates x 2 x 3 (forward, dgrad and the fused rest), per iteration, / time.
    pub gflops: f64,
    /// Convolution FLOPs one iteration executes: 2 * MACs for the forward plus as many for dgrad
    /// (every conv, the stem included, since the gradient goes back to the images), in GFLOP.
    pub conv_gflop_per_iter: f64,
    /// The process's peak resident memory (VmHWM) in MiB, where the OS reports it.
    pub peak_rss_mib: Option<f64>,
    /// The memory the engine estimated for the iteration before allocating (MiB), which a
    /// request larger than the available memory is refused on; compare with `peak_rss_mib`.
    pub estimated_mib: f64,
    /// CPU time of the process (all threads) per timed iteration, where the OS reports it: on a
    /// loaded machine, wall time includes waiting for cores and this does not.
    pub cpu_ms_per_iter: Option<f64>,
}

/// CPU time this process has run so far, all threads, in seconds (Linux: the sum of
/// /proc/self/task/*/schedstat, nanosecond resolution). Unlike wall time it leaves out time spent
/// waiting for a core, so it stays comparable when other processes load the machine.
pub fn process_cpu_secs() -> Option<f64> {
    let mut total = 0u64;
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let path = task.ok()?.path().join("schedstat");
        let text = std::fs::read_to_string(path).ok()?;
        total += text.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(total as f64 * 1e-9)
}

/// Peak resident set size of this process in MiB (Linux: VmHWM of /proc/self/status).
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Refuses a recover batch of n images of h x w that cannot fit in memory (or whose tensors the
/// kernels cannot index) before anything is allocated; returns the estimate in bytes.
pub fn check_recover_fits(model: &ResNet, n: usize, h: usize, w: usize) -> Result<u64> {
    if h < model.min_side() || w < model.min_side() {
        return Err(Error::Option(format!(
            "image size {h}x{w} is too small for this teacher's {} stem (at least {}x{})",
            model.stem.name(),
            model.min_side(),
            model.min_side()
        )));
    }
    let estimate = model.layout().recover_bytes(n, h, w);
    crate::model::ensure_batch_fits(&format!("a recover batch of {n} images of {h}x{w} on {}", model.arch_name()), estimate)?;
    Ok(estimate.map_or(0, |e| e.0))
}

/// What [`bench`] times: `iters` recover iterations, after `warmup` untimed ones, of a batch of
/// `batch` images of `res` x `res`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BenchSpec {
    pub res: usize,
    pub batch: usize,
    pub iters: usize,
    pub warmup: usize,
    /// Replay the iteration as a recorded graph where the backend has graphs (CUDA); false times
    /// every iteration's launches eagerly.
    pub graphs: bool,
}

/// Times recover iterations of `model` on `backend` (see [`BenchSpec`]); `threads` is reported.
/// Errors: a batch that does not fit in memory, and the recover loop's own.
pub fn bench<B: Backend>(backend: &B, model: &ResNet, spec: &BenchSpec, threads: usize) -> Result<BenchResult> {
    bench_with(backend, model, spec, threads, &mut || {})
}

/// [`bench`] on the CPU backend; with `profile`, also a per-op table of the timed iterations.
pub fn bench_cpu(backend: &CpuBackend, model: &ResNet, spec: &BenchSpec, profile: bool) -> Result<(BenchResult, Option<String>)> {
    let r = bench_with(backend, model, spec, backend.threads(), &mut || backend.set_profiling(profile))?;
    let table = backend.profile().map(|p| p.table(spec.iters));
    backend.set_profiling(false);
    Ok((r, table))
}

/// [`bench`], calling `on_warm` when the warm-up iterations are done.
pub fn bench_with<B: Backend>(backend: &B, model: &ResNet, spec: &BenchSpec, threads: usize, on_warm: &mut dyn FnMut()) -> Result<BenchResult> {
    let BenchSpec { res, batch, iters, warmup, graphs } = *spec;
    let c = model.in_channels;
    let cfg = RecoverConfig {
        iterations: warmup + iters,
        lr: 0.25,
        r_bn: 0.01,
        first_bn_multiplier: 10.0,
        jitter: (res / 8).clamp(1, 32),
        crop: true,
        flip: true,
        easy2hard_mode: Curriculum::Cosine,
        milestone: 1.0,
        reverse_curriculum: false,
        crop_min_scale: 0.08,
        per_image_augment: false,
        tv_l2: 0.0,
        l2_scale: 0.0,
        clip: ClipMode::Normalized { mean: vec![0.5; c], std: vec![0.25; c] },
        adam_betas: (0.5, 0.9),
        adam_eps: 1e-8,
    };
    let estimate = check_recover_fits(model, batch, res, res)?;
    let mut rec = Recoverer::new(backend, model, &cfg, batch, res, res)?;
    rec.use_graphs = graphs;
    let mut rng = StdRng::seed_from_u64(0);
    let init: Vec<f32> = (0..batch * c * res * res).map(|_| StandardNormal.sample(&mut rng)).collect();
    let targets: Vec<i32> = (0..batch).map(|i| (i % model.num_classes) as i32).collect();
    rec.reset(&init, &targets)?;
    let aug_spec = AugmentSpec { crop: true, flip: true, jitter: cfg.jitter };
    let mut t0 = Instant::now();
    let mut cpu0 = None;
    for t in 0..warmup + iters {
        if t == warmup {
            backend.synchronize()?;
            on_warm();
            cpu0 = process_cpu_secs();
            t0 = Instant::now();
        }
        let aug = sample_batch(&mut rng, &aug_spec, batch, res, res, 0.5, false);
        rec.step(t, &aug, t + 1 == warmup + iters)?;
    }
    backend.synchronize()?;
    let secs = t0.elapsed().as_secs_f64();
    let cpu_ms_per_iter = cpu0.zip(process_cpu_secs()).map(|(a, b)| 1e3 * (b - a) / iters as f64);
    let ms = 1e3 * secs / iters as f64;
    let flops = 6.0 * model.macs_per_image(res, res) as f64 * batch as f64;
    Ok(BenchResult {
        device: backend.describe(),
        arch: model.arch_name(),
        width: crate::train::trainable::ArchSpec::of(model).widths[0],
        stem: model.stem.name().into(),
        res,
        batch,
        threads,
        iters,
        ms_per_iter: ms,
        gflops: flops / (ms * 1e-3) / 1e9,
        conv_gflop_per_iter: 4.0 * model.macs_per_image(res, res) as f64 * batch as f64 / 1e9,
        peak_rss_mib: peak_rss_mib(),
        estimated_mib: estimate as f64 / (1u64 << 20) as f64,
        cpu_ms_per_iter,
    })
}

/// Loads a teacher or builds a random one for the benchmark. `arch` is spelled as `squeeze --arch`
/// spells it (`resnet18`, `resnet50-w32`: one parser for both).
///
/// Errors: zero classes or input channels, an unknown architecture, or weights that would not fit
/// in memory.
pub fn bench_model(weights: Option<&Path>, arch: &str, stem: Stem, in_channels: usize, classes: usize) -> Result<ResNet> {
    match weights {
        Some(p) => ResNet::load(p),
        None => {
            if classes == 0 || in_channels == 0 {
                return Err(Error::Option(format!("--classes {classes} and --in-channels {in_channels} must be at least 1")));
            }
            let spec = crate::train::trainable::ArchSpec::parse(arch, stem, in_channels, classes)?;
            let layout = crate::model::Layout::of_arch(&spec)?;
            // The random weights exist twice while the model is built (tensors, then the model).
            let params = layout.sizes(64, 64).and_then(|s| s.params.checked_mul(8));
            crate::memory::ensure_fits(&format!("the weights of a random {arch}"), params)?;
            let name = arch.split_once("-w").map_or(arch, |(n, _)| n);
            random_resnet(name, stem, in_channels, classes, spec.widths[0], 0)
        }
    }
}

/// Measured ceilings of this CPU: the FMA peak and the GEMM microkernel on cache-resident panels, on
/// one thread and on `threads` threads at once (GFLOP/s).
#[derive(Clone, Debug, Serialize)]
pub struct Ceiling {
    pub device: String,
    pub isa: String,
    pub kernel: String,
    pub threads: usize,
    pub fma_gflops_1t: f64,
    pub fma_gflops: f64,
    pub kernel_gflops_1t: f64,
    pub kernel_gflops: f64,
}

pub fn ceiling(backend: &CpuBackend, secs: f64) -> Ceiling {
    use crate::cpu::gemm::microkernel::{ceiling as c, Kernel};
    let k = *Kernel::get();
    let threads = backend.threads();
    let all = |f: &(dyn Fn() -> f64 + Sync)| -> f64 { backend.install(|| rayon::broadcast(|_| f()).iter().sum()) };
    let fma_1t = c::fma_flops(k.isa, secs);
    let fma_nt = all(&|| c::fma_flops(k.isa, secs));
    let ker_1t = c::kernel_flops(&k, 256, secs);
    let ker_nt = all(&|| c::kernel_flops(&k, 256, secs));
    Ceiling {
        device: backend.describe(),
        isa: k.isa.name().into(),
        kernel: format!("{}x{}", k.mr, k.nr),
        threads,
        fma_gflops_1t: fma_1t / 1e9,
        fma_gflops: fma_nt / 1e9,
        kernel_gflops_1t: ker_1t / 1e9,
        kernel_gflops: ker_nt / 1e9,
    }
}

/// The distinct conv problems of `model` on batches of `n` images of `res` x `res`, in module order:
/// (the first conv's name, its problem, how many convs share it). What the per-op benchmark times.
pub fn conv_layer_table(model: &ResNet, n: usize, res: usize) -> Vec<(String, crate::ops::conv::ConvProblem, usize)> {
    use crate::ops::conv::ConvProblem;
    let mut out: Vec<(String, ConvProblem, usize)> = Vec::new();
    let mut add = |name: &str, p: ConvProblem| match out.iter_mut().find(|(_, q, _)| *q == p) {
        Some(e) => e.2 += 1,
        None => out.push((name.to_string(), p, 1)),
    };
    let stem = ConvProblem::new(n, res, res, &model.stem_conv.geom);
    add(&model.stem_conv.name, stem);
    let (mut h, mut w) = (stem.p as usize, stem.q as usize);
    if model.stem == Stem::ImageNet {
        (h, w) = crate::model::maxpool_out_hw(h, w);
    }
    for b in &model.blocks {
        let (bh, bw) = (h, w);
        for c in &b.convs {
            let p = ConvProblem::new(n, h, w, &c.geom);
            add(&c.name, p);
            (h, w) = (p.p as usize, p.q as usize);
        }
        if let Some(d) = &b.downsample {
            add(&d.name, ConvProblem::new(n, bh, bw, &d.geom));
        }
    }
    out
}
