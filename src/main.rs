//! The `cda-engine` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use cda_engine::backend::cpu::{cpu_features, CpuBackend};
use cda_engine::backend::cuda::probe as cuda_probe;
use cda_engine::backend::Backend;
use cda_engine::error::{Error, Result};
use cda_engine::kernels;
use cda_engine::model::{BlockKind, ResNet};
use cda_engine::net::Net;
use cda_engine::outln;
use cda_engine::recover::cli::RunArgs;
use cda_engine::weights::{read_tensor_file, write_tensor_file, Tensor};

#[derive(Parser)]
#[command(name = "cda-engine", version, about = "Dataset distillation with CDA on CPU and CUDA")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

use cda_engine::default_teacher::load_teacher;
use cda_engine::device::{with_backend, BackendTask, Device, DeviceSpec};

// Parsed once per process, so the size of the biggest variant (run's options) does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Describe a ResNet safetensors file: stem, blocks, widths, classes, parameters, BN layers.
    Inspect { weights: PathBuf },
    /// Eval-mode forward: logits and every BN layer's input mean and biased variance.
    Forward {
        /// Teacher ResNet (safetensors, as weights/export_resnet.py writes it).
        #[arg(long)]
        weights: PathBuf,
        /// safetensors with tensor `input` (N C H W, float32, normalised).
        #[arg(long)]
        input: PathBuf,
        /// safetensors to write: `logits`, `bn.{l}.mean`, `bn.{l}.var` (l in module order).
        #[arg(long)]
        output: PathBuf,
        #[arg(long, value_enum, default_value_t = Device::Cpu)]
        device: Device,
        /// CPU threads (0 = all cores).
        #[arg(long, default_value_t = 0)]
        threads: usize,
    },
    /// Distil a dataset: the CDA recover loop over classes and IPC, writing an ImageFolder.
    Run {
        #[command(flatten)]
        args: RunArgs,
        /// cpu, cuda, auto (a usable GPU, else the CPU), or several GPUs: cuda:all or cuda:0,1,...
        /// (each GPU takes the next batch from one queue; the set is the same as on one device).
        #[arg(long, default_value = "auto")]
        device: cda_engine::device::DeviceSpec,
        /// CPU threads (0 = all cores).
        #[arg(long, default_value_t = 0)]
        threads: usize,
        /// No progress bar (one line per batch instead).
        #[arg(long)]
        quiet: bool,
    },
    /// Teacher top-1 on an ImageFolder of images (e.g. the output of `run`), read back from the files, or on a real test set.
    Evaluate {
        /// Default: the shipped Fashion-MNIST teacher.
        #[arg(long)]
        weights: Option<PathBuf>,
        /// An ImageFolder of class folders (e.g. a distilled set) whose top-1 the teacher is scored on,
        /// images as saved; or a test set in a distributed layout (CIFAR-10/100, Tiny-ImageNet,
        /// ImageNet's val with its solution CSV), each image resized and centre-cropped to the
        /// teacher's image_size as the official validation does.
        #[arg(long)]
        images: PathBuf,
        /// Per-channel mean of the input normalisation, comma-separated (default: the weights'
        /// metadata).
        #[arg(long, value_delimiter = ',')]
        mean: Option<Vec<f32>>,
        /// Per-channel std of the input normalisation, comma-separated (default: the weights' metadata).
        #[arg(long, value_delimiter = ',')]
        std: Option<Vec<f32>>,
        /// CPU threads (0 = all cores).
        #[arg(long, default_value_t = 0)]
        threads: usize,
    },
    /// A PNG grid of distilled images: one row block per folder, one column per class.
    Grid {
        /// ImageFolder(s) written by `run`.
        #[arg(required = true)]
        folders: Vec<PathBuf>,
        /// PNG file to write.
        #[arg(long)]
        out: PathBuf,
        /// IPC rows per folder.
        #[arg(long, default_value_t = 1)]
        rows: usize,
        /// At most this many classes (columns).
        #[arg(long, default_value_t = 10)]
        classes: usize,
        /// Enlarge each image this many times (0 = at least 96 pixels per tile).
        #[arg(long, default_value_t = 0)]
        scale: usize,
    },
    /// Time whole recover iterations (forward, losses, backward, Adam) on a teacher or a random ResNet.
    /// The last stdout line is JSON: device, arch, res, batch, threads, ms_per_iter.
    Bench {
        #[command(flatten)]
        args: BenchArgs,
    },
    /// What a distilled set holds (one `run` or many `run --shard I/N`): complete, missing, damaged
    /// and unrecorded batches, the time left at the measured ms per iteration, and the commands that
    /// finish it. The last stdout line is JSON; the exit status is 1 while the set is incomplete.
    Status {
        /// The set's folder (`run --out`).
        out: PathBuf,
    },
    /// One self-contained HTML page for a distilled set (run, select or sample): settings, teacher
    /// accuracy, completeness, loss curves, the grid, images per class, per-batch teacher top-1 and
    /// timings, every picture inlined. The last stdout line is JSON with the page's path.
    Report {
        /// The set's folder.
        out: PathBuf,
        /// The HTML file to write (default OUT/report.html).
        #[arg(long)]
        html: Option<PathBuf>,
    },
    /// What this machine and binary can do: CPU features, embedded GPU kernels, CUDA driver and GPUs.
    Doctor,
    /// Train a teacher from scratch on a dataset (SRe2L's squeeze) and save it as safetensors.
    Squeeze {
        #[command(flatten)]
        args: cda_engine::train::cli::SqueezeArgs,
    },
    /// Store teacher soft labels on augmented, mixed views of a distilled set (SRe2L's relabel).
    Relabel {
        #[command(flatten)]
        args: cda_engine::train::cli::RelabelArgs,
    },
    /// Train a student on a distilled set by distillation and report its top-1 on the real test set.
    /// The last stdout line is JSON with top1, epochs, images.
    Validate {
        #[command(flatten)]
        args: cda_engine::train::cli::ValidateArgs,
    },
    /// Write a seeded, class-balanced random subset of a dataset as an ImageFolder (a baseline set).
    Sample {
        #[command(flatten)]
        args: cda_engine::train::cli::SampleArgs,
    },
    /// RDED's set with no optimisation: per class, random crops of real images scored by the teacher,
    /// the best stitched factor x factor into each image (an ImageFolder in `run`'s layout).
    Select {
        #[command(flatten)]
        args: cda_engine::recover::cli::SelectArgs,
        /// cpu, cuda, or auto (a usable GPU, else the CPU) for the teacher's scoring.
        #[arg(long, value_enum, default_value_t = Device::Auto)]
        device: Device,
        /// CPU threads (0 = all cores).
        #[arg(long, default_value_t = 0)]
        threads: usize,
    },
}

/// Prints the error that ends the command; a closed stderr must not turn it into a panic.
fn report(e: &Error) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "error: {e}");
}

/// Progress and messages go to stderr with `eprintln!`, which panics when stderr is a closed pipe
/// (`cda-engine run 2>&1 | head -1`). That is not an engine failure to report as a panic (exit 101
/// and a backtrace nobody can read): the process ends quietly with status 1, since the work it was
/// doing did not finish. Every other panic keeps the default report.
fn quiet_on_closed_stderr() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let text = info.payload().downcast_ref::<String>().map(String::as_str).or_else(|| info.payload().downcast_ref::<&str>().copied()).unwrap_or("");
        if text.starts_with("failed printing to stderr") {
            std::process::exit(1);
        }
        default(info);
    }));
}

fn main() -> ExitCode {
    quiet_on_closed_stderr();
    // A file-size limit (`ulimit -f`) would kill the process by SIGXFSZ mid-write; ignored, the write
    // fails with EFBIG and the writers report it and clean up like any other failed write.
    // SAFETY: SIG_IGN installs no handler code; called once, before any other thread starts.
    #[cfg(unix)]
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
    let cli = Cli::parse();
    let threads = match &cli.command {
        Command::Forward { threads, .. }
        | Command::Run { threads, .. }
        | Command::Evaluate { threads, .. }
        | Command::Bench { args: BenchArgs { threads, .. } }
        | Command::Select { threads, .. } => *threads,
        _ => 0,
    };
    if let Err(e) = cda_engine::train::cli::check_threads(threads) {
        report(&e);
        return ExitCode::FAILURE;
    }
    let result = match cli.command {
        Command::Inspect { weights } => inspect(&weights),
        Command::Forward { weights, input, output, device, threads } => forward(&weights, &input, &output, device, threads),
        Command::Run { args, device, threads, quiet } => run(&args, device, threads, quiet),
        Command::Evaluate { weights, images, mean, std, threads } => evaluate(weights.as_deref(), &images, mean, std, threads),
        Command::Grid { folders, out, rows, classes, scale } => cda_engine::recover::gallery::grid(&folders, &out, rows, classes, scale),
        Command::Bench { args: BenchArgs { ceiling: true, threads, device, .. } } => cpu_for(device, threads).map(|b| {
            outln!("{}", serde_json::to_string(&cda_engine::bench::ceiling(&b, 1.0)).expect("result serialises"));
        }),
        Command::Bench { args } => bench(&args),
        Command::Status { out } => set_status(&out),
        Command::Report { out, html } => cda_engine::report::report(&out, html.as_deref()).map(|page| {
            eprintln!("wrote {}", page.display());
            outln!("{}", serde_json::json!({ "report": page }));
        }),
        Command::Doctor => {
            doctor();
            Ok(())
        }
        Command::Squeeze { args } => cda_engine::train::cli::squeeze(&args),
        Command::Relabel { args } => cda_engine::train::cli::relabel(&args),
        Command::Validate { args } => cda_engine::train::cli::validate(&args),
        Command::Sample { args } => cda_engine::train::cli::sample(&args),
        Command::Select { args, device, threads } => select(&args, device, threads),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            report(&e);
            ExitCode::FAILURE
        }
    }
}

fn inspect(path: &std::path::Path) -> Result<()> {
    let m = ResNet::load(path)?;
    outln!("file        {}", path.display());
    outln!("arch        {} ({} blocks, {} stem)", m.arch_name(), if m.block == BlockKind::Basic { "BasicBlock" } else { "Bottleneck" }, m.stem.name());
    outln!("input       {} channels", m.in_channels);
    outln!("classes     {}", m.num_classes);
    outln!(
        "stem        conv {}x{} stride {} -> {} channels{}",
        m.stem_conv.geom.r,
        m.stem_conv.geom.s,
        m.stem_conv.geom.stride,
        m.stem_conv.geom.k,
        if m.stem == cda_engine::model::Stem::ImageNet { ", max pool 3x3/2" } else { "" }
    );
    outln!("stages      blocks {:?}, widths {:?}", m.stage_blocks, m.stage_widths);
    outln!("features    {}", m.feat_dim);
    outln!("parameters  {}", m.parameter_count());
    outln!("bn layers   {}", m.num_bn_layers());
    let fmt = |v: &Option<Vec<f32>>| v.as_ref().map(|v| format!("{v:?}")).unwrap_or_else(|| "not in file".into());
    outln!("mean        {}", fmt(&m.mean));
    outln!("std         {}", fmt(&m.std));
    for c in m.conv_bns() {
        outln!(
            "  bn {:>3}  {:<24} {:>5} channels  (conv {}: {}x{}x{}x{}, stride {})",
            c.bn.index,
            c.bn.name,
            c.bn.channels(),
            c.name,
            c.geom.k,
            c.geom.c,
            c.geom.r,
            c.geom.s,
            c.geom.stride
        );
    }
    let mut keys: Vec<_> = m.metadata.iter().collect();
    keys.sort();
    for (k, v) in keys {
        outln!("meta        {k} = {v}");
    }
    Ok(())
}

fn forward(weights: &std::path::Path, input: &std::path::Path, output: &std::path::Path, device: Device, threads: usize) -> Result<()> {
    let model = ResNet::load(weights)?;
    // The input is data, not weights: its errors name it as the --input file.
    let file = read_tensor_file(input).map_err(|e| match e {
        Error::Weights { path, message } => Error::input(format!("--input {}", path.display()), message),
        Error::Corrupt { path, reason } => Error::input(format!("--input {}", path.display()), format!("not a valid safetensors file: {reason}")),
        other => other,
    })?;
    let x = file.tensors.get("input").ok_or_else(|| Error::input(input.display().to_string(), "no tensor named `input`"))?;
    if x.shape.len() != 4 || x.shape[1] != model.in_channels {
        return Err(Error::input(input.display().to_string(), format!("tensor `input` has shape {:?}; expected [N, {}, H, W]", x.shape, model.in_channels)));
    }
    struct Forward<'a> {
        model: &'a ResNet,
        x: &'a Tensor,
    }
    impl BackendTask for Forward<'_> {
        type Output = Vec<(String, Tensor)>;
        fn run<B: Backend>(self, backend: &B) -> Result<Self::Output> {
            let (model, x) = (self.model, self.x);
            let (n, h, w) = (x.shape[0], x.shape[2], x.shape[3]);
            let mut net = Net::new(backend, model, n, h, w)?;
            let mut xb = backend.alloc(x.data.len())?;
            backend.upload(&x.data, &mut xb)?;
            net.forward(backend, &xb)?;
            let mut logits = vec![0.0; n * model.num_classes];
            backend.download(&net.logits, &mut logits)?;
            let mut out: Vec<(String, Tensor)> = vec![("logits".into(), Tensor::new(vec![n, model.num_classes], logits))];
            for l in 0..net.num_bn_layers() {
                let k = net.bn_channels(l);
                let mut s = vec![0.0; 2 * k];
                backend.download(net.bn_stats(l), &mut s)?;
                out.push((format!("bn.{l}.mean"), Tensor::new(vec![k], s[..k].to_vec())));
                out.push((format!("bn.{l}.var"), Tensor::new(vec![k], s[k..].to_vec())));
            }
            eprintln!("{} images on {}", n, backend.describe());
            Ok(out)
        }
    }
    let out = with_backend(device, threads, Forward { model: &model, x })?;
    let refs: Vec<(String, &Tensor)> = out.iter().map(|(k, t)| (k.clone(), t)).collect();
    write_tensor_file(output, &refs, None)?;
    eprintln!("wrote {} ({} BN layers)", output.display(), model.num_bn_layers());
    Ok(())
}

/// The CPU backend, or an explanation of why a GPU cannot be used here.
fn cpu_for(device: Device, threads: usize) -> Result<CpuBackend> {
    match device {
        Device::Cpu | Device::Auto => CpuBackend::new(threads),
        Device::Cuda => Err(Error::Cuda(match cda_engine::device::gpu_usable() {
            Err(why) => format!("--device cuda: {why}"),
            Ok(()) => "--device cuda: this command runs on the CPU only; use --device cpu".into(),
        })),
    }
}

/// Writes RDED's selection (`select`, `run --method rded`) and prints its JSON summary.
fn write_selection(model: &ResNet, s: &cda_engine::recover::select::SelectSettings, out: &std::path::Path, device: Device, threads: usize) -> Result<()> {
    struct Select<'a> {
        model: &'a ResNet,
        s: &'a cda_engine::recover::select::SelectSettings,
        out: &'a std::path::Path,
    }
    impl BackendTask for Select<'_> {
        type Output = cda_engine::recover::select::SelectRecord;
        fn run<B: Backend>(self, backend: &B) -> Result<Self::Output> {
            cda_engine::recover::select::select(backend, self.model, self.s, self.out)
        }
    }
    let r = with_backend(device, threads, Select { model, s, out })?;
    let line = serde_json::json!({"out": out, "images": r.images.len(), "factor": r.init.factor, "seconds": r.seconds});
    outln!("{line}");
    Ok(())
}

fn select(args: &cda_engine::recover::cli::SelectArgs, device: Device, threads: usize) -> Result<()> {
    let (model, teacher) = load_teacher(args.weights.as_deref())?;
    let s = cda_engine::recover::cli::select_settings(args, &model, &teacher)?;
    write_selection(&model, &s, &args.out, device, threads)
}

fn run(args: &RunArgs, device: DeviceSpec, threads: usize, quiet: bool) -> Result<()> {
    let (model, teacher) = load_teacher(args.weights.first().map(PathBuf::as_path))?;
    let extras = args.weights.iter().skip(1).map(|p| ResNet::load(p)).collect::<Result<Vec<_>>>()?;
    let (settings, out) = cda_engine::recover::cli::settings(args, &model, &teacher)?;
    let shard = args.shard.as_deref().map(|t| cda_engine::recover::shard::Shard::parse(t, &|k| std::env::var(k).ok())).transpose()?;
    if args.method == cda_engine::recover::cli::Method::Rded {
        if shard.is_some() {
            return Err(Error::Option("--shard splits recover batches; --method rded (select) runs in one process".into()));
        }
        let DeviceSpec::One(device) = device else {
            return Err(Error::Option("--method rded (select) runs on one device; give --device cuda instead of a list".into()));
        };
        let s = cda_engine::recover::select::SelectSettings::from_run(&settings, model.in_channels);
        return write_selection(&model, &s, &out, device, threads);
    }
    // Everything is checked before the banner: a refused run prints no plan and creates no folder
    // (and the plan below could not even be counted with a zero batch).
    cda_engine::recover::cli::check_run(&settings, &model)?;
    struct Run<'a> {
        models: Vec<&'a ResNet>,
        teacher: &'a str,
        settings: &'a cda_engine::recover::run::RunSettings,
        out: &'a std::path::Path,
        opts: cda_engine::recover::run::RunOptions,
    }
    impl Run<'_> {
        fn on_devices<B: Backend>(self, backends: &[&B]) -> Result<cda_engine::recover::run::RunSummary> {
            let s = self.settings;
            let on = backends.iter().map(|b| b.describe()).collect::<Vec<_>>().join(", ");
            eprintln!(
                "teacher {} ({}, {} classes), {} on {on}: {} batches of {} images, {} iterations each -> {}",
                self.teacher,
                self.models[0].arch_name(),
                self.models[0].num_classes,
                s.preset.as_deref().unwrap_or("custom"),
                cda_engine::recover::run::plan(s).len(),
                cda_engine::recover::cli::batch_images(s),
                s.recover.iterations,
                self.out.display()
            );
            if self.models.len() > 1 {
                let schedule = match s.teacher_schedule {
                    cda_engine::recover::TeacherSchedule::Rotate => "in turn (EDC)".to_string(),
                    cda_engine::recover::TeacherSchedule::Committee { per_step } => format!("{per_step} per iteration (CV-DD)"),
                };
                eprintln!("{} teachers, {schedule}", self.models.len());
            }
            if let Some(sh) = &self.opts.shard {
                let mine = (0..cda_engine::recover::run::plan(s).len()).filter(|&i| sh.owns(i)).count();
                eprintln!("shard {} of {} ({}): {mine} of these batches", sh.index, sh.count, sh.source);
            }
            cda_engine::recover::run::run_on_devices(backends, &self.models, s, self.out, &self.opts)
        }
    }
    impl BackendTask for Run<'_> {
        type Output = cda_engine::recover::run::RunSummary;
        fn run<B: Backend>(self, backend: &B) -> Result<Self::Output> {
            self.on_devices(&[backend])
        }
    }
    let show = !quiet && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let models: Vec<&ResNet> = std::iter::once(&model).chain(&extras).collect();
    let opts = cda_engine::recover::run::RunOptions { show_progress: show, log_every: args.log_every, shard, command: std::env::args().collect() };
    let task = Run { models, teacher: &teacher, settings: &settings, out: &out, opts };
    let summary = match device {
        DeviceSpec::Gpus(list) => {
            let ordinals = cda_engine::device::gpu_ordinals(list.as_deref())?;
            let backends = ordinals.into_iter().map(cda_engine::backend::cuda::GpuBackend::new).collect::<Result<Vec<_>>>()?;
            task.on_devices(&backends.iter().collect::<Vec<_>>())?
        }
        DeviceSpec::One(device) => with_backend(device, threads, task)?,
    };
    outln!("{}", serde_json::to_string(&summary).expect("summary serialises"));
    Ok(())
}

fn set_status(out: &std::path::Path) -> Result<()> {
    let s = cda_engine::recover::status::status(out)?;
    eprint!("{}", cda_engine::recover::status::describe(&s));
    outln!("{}", serde_json::to_string(&s).expect("status serialises"));
    if s.is_complete() {
        Ok(())
    } else {
        Err(Error::Input {
            what: out.display().to_string(),
            message: format!("the set is incomplete: {} of {} batches left", s.batches - s.complete, s.batches),
        })
    }
}

fn evaluate(weights: Option<&std::path::Path>, images: &std::path::Path, mean: Option<Vec<f32>>, std: Option<Vec<f32>>, threads: usize) -> Result<()> {
    let (model, _) = load_teacher(weights)?;
    let backend = CpuBackend::new(threads)?;
    let report = if cda_engine::data::is_distributed_layout(images) {
        let ds = cda_engine::data::open(&images.to_string_lossy(), cda_engine::data::Split::Test, model.in_channels)?;
        let size = model.metadata.get("image_size").and_then(|s| s.parse::<usize>().ok()).filter(|&s| s > 0).or(ds.image_size().map(|(h, _)| h));
        let size = size.ok_or_else(|| {
            cda_engine::error::Error::input(
                images.display().to_string(),
                "its images differ in size and the teacher's metadata has no image_size to crop them to",
            )
        })?;
        cda_engine::recover::gallery::evaluate_dataset(&backend, &model, ds.as_ref(), size, mean, std)?
    } else {
        cda_engine::recover::gallery::evaluate(&backend, &model, images, mean, std)?
    };
    eprintln!("{} images in {} classes: teacher top-1 {:.2}%", report.images, report.classes, report.top1);
    outln!("{}", serde_json::to_string(&report).expect("report serialises"));
    Ok(())
}

#[allow(clippy::too_many_arguments)]
/// Flags of `cda-engine bench`.
#[derive(clap::Args, Clone, Debug)]
struct BenchArgs {
    /// A teacher file; default: a random-weight model from --arch/--stem/--in-channels/--classes.
    #[arg(long)]
    weights: Option<PathBuf>,
    /// Architecture of the random model, as `squeeze --arch` (resnet18, resnet50, resnet18-w8, ...).
    #[arg(long, default_value = "resnet18")]
    arch: String,
    /// Stem of the random model: imagenet (7x7 stride 2 + max pool) or cifar (3x3 stride 1).
    #[arg(long, default_value = "imagenet")]
    stem: String,
    /// Input channels of the random model.
    #[arg(long, default_value_t = 3)]
    in_channels: usize,
    /// Classes of the random model.
    #[arg(long, default_value_t = 1000)]
    classes: usize,
    /// Image size (pixels per side).
    #[arg(long, default_value_t = 224)]
    res: usize,
    /// Images per batch.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Timed iterations (after 2 warm-up iterations).
    #[arg(long, default_value_t = 5)]
    iters: usize,
    /// CPU threads (0 = all cores).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// cpu, cuda, or auto (a usable GPU, else the CPU).
    #[arg(long, value_enum, default_value_t = Device::Cpu)]
    device: Device,
    /// Print a per-op time table (op, shape, algorithm) of the timed iterations to stderr (CPU).
    #[arg(long)]
    profile: bool,
    /// Instead of iterations, measure the CPU's FMA peak and the GEMM microkernel (GFLOP/s).
    #[arg(long)]
    ceiling: bool,
    /// CPU: never Winograd F(4x4, 3x3) for 3x3 stride-1 convs (to measure what it gives).
    #[arg(long)]
    no_winograd: bool,
    /// CPU: never the `gemm` crate for 1x1 convs (to measure what it gives).
    #[arg(long)]
    no_pointwise_gemm: bool,
    /// CPU: the dgrad of other convs: auto (per problem), phased (implicit GEMM by output phases) or
    /// col2im (GEMM, then col2im).
    #[arg(long, value_enum, default_value_t = cda_engine::ops::conv::cpu::DgradPath::Auto)]
    dgrad: cda_engine::ops::conv::cpu::DgradPath,
    /// GPU: the convolution kernels, tf32 (version 2, tensor cores; the default) or fp32 (version 1).
    #[arg(long, value_enum, default_value_t = cda_engine::backend::cuda::ConvVersion::Tf32)]
    conv_version: cda_engine::backend::cuda::ConvVersion,
    /// GPU: launch every iteration eagerly instead of replaying it as a CUDA graph.
    #[arg(long)]
    no_graph: bool,
}

fn bench(a: &BenchArgs) -> Result<()> {
    let stem = cda_engine::model::Stem::parse(&a.stem).ok_or_else(|| Error::Option(format!("--stem {}: expected imagenet or cifar", a.stem)))?;
    if a.iters == 0 || a.batch == 0 || a.res == 0 {
        return Err(Error::Option("--iters, --batch and --res must be at least 1".into()));
    }
    let model = cda_engine::bench::bench_model(a.weights.as_deref(), &a.arch, stem, a.in_channels, a.classes)?;
    let spec = cda_engine::bench::BenchSpec { res: a.res, batch: a.batch, iters: a.iters, warmup: 2, graphs: !a.no_graph };
    let (res, batch) = (a.res, a.batch);
    let on_cpu = a.device == Device::Cpu || (a.device == Device::Auto && cda_engine::device::gpu_usable().is_err());
    let r = if on_cpu {
        let choice = cda_engine::ops::conv::cpu::ConvChoice { no_winograd: a.no_winograd, no_pointwise_gemm: a.no_pointwise_gemm, dgrad: a.dgrad };
        let backend = cpu_for(a.device, a.threads)?.with_conv_choice(choice);
        let (r, table) = cda_engine::bench::bench_cpu(&backend, &model, &spec, a.profile)?;
        if let Some(t) = table {
            eprint!("{t}");
        }
        r
    } else {
        if a.profile {
            return Err(Error::Option("--profile times CPU ops; on a GPU use nsys or benches/gpu/run_checks.sh".into()));
        }
        cda_engine::device::use_gpu(Device::Cuda)?;
        let g = cda_engine::backend::cuda::GpuBackend::new(0)?;
        g.set_conv_version(a.conv_version);
        cda_engine::bench::bench(&g, &model, &spec, 0)?
    };
    eprintln!("{} {} {}x{} batch {} on {}: {:.1} ms/iter ({:.1} GFLOP/s)", r.arch, r.stem, res, res, batch, r.device, r.ms_per_iter, r.gflops);
    outln!("{}", serde_json::to_string(&r).expect("result serialises"));
    Ok(())
}

fn doctor() {
    outln!("cda-engine {}", env!("CARGO_PKG_VERSION"));
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    outln!("cpu         {cores} threads; SIMD: {}", cpu_features().join(", "));
    outln!("            the CPU backend always works (`--device cpu`)");
    match kernels::NVRTC_VERSION {
        Some((major, minor)) => outln!(
            "kernels     {} modules compiled at build time by NVRTC {major}.{minor} to PTX {} ({})",
            kernels::KERNEL_MODULES.len(),
            kernels::PTX_ARCH,
            kernels::KERNEL_MODULES.iter().map(|m| format!("{}{}", m.name, if m.ptx.is_some() { "" } else { " MISSING" })).collect::<Vec<_>>().join(", ")
        ),
        None => outln!("kernels     none: {}", kernels::HOW_TO_GET_PTX),
    }
    match cuda_probe::probe() {
        Ok(info) => {
            outln!("driver      CUDA {}.{}", info.cuda_version.0, info.cuda_version.1);
            if info.gpus.is_empty() {
                outln!("gpus        none visible (check CUDA_VISIBLE_DEVICES)");
            }
            for g in info.gpus {
                let ok = g.compute_capability.0 >= 8;
                outln!(
                    "gpu {}       {} (sm_{}{}, {:.1} GiB){}",
                    g.ordinal,
                    g.name,
                    g.compute_capability.0,
                    g.compute_capability.1,
                    g.memory_bytes as f64 / (1u64 << 30) as f64,
                    if ok { "" } else { ": unsupported, the kernels need sm_80 (Ampere) or newer" }
                );
            }
        }
        Err(why) => outln!("gpu         none: {why}"),
    }
}
