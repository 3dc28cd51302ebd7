//! The ResNet description shared by both backends, inferred from torchvision state-dict names and shapes.
//!
//! Supported: BasicBlock (ResNet-18/34) and Bottleneck (ResNet-50/101/152, stride on the 3x3 conv as in
//! torchvision v1.5), ImageNet stem (7x7/2 conv + 3x3/2 max pool) or CIFAR stem (3x3/1 conv, no pool),
//! any number of stages and blocks, any widths, input channels and classes. BatchNorm is eval-mode and
//! stays unfolded in the weights: backends apply it in the conv epilogue, so the raw
//! conv output `y` (the BN input whose statistics recover matches) is available exactly.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use crate::error::{Error, Result};
use crate::weights::{read_tensor_file, Tensor, TensorFile};

/// torchvision's BatchNorm2d default.
pub const BN_EPS: f32 = 1e-5;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stem {
    /// 7x7 stride-2 conv, BN, ReLU, 3x3 stride-2 max pool (torchvision).
    ImageNet,
    /// 3x3 stride-1 conv, BN, ReLU, no pool (CIFAR / Tiny-ImageNet variants).
    Cifar,
}

impl Stem {
    pub fn name(self) -> &'static str {
        match self {
            Stem::ImageNet => "imagenet",
            Stem::Cifar => "cifar",
        }
    }
    pub fn parse(s: &str) -> Option<Stem> {
        match s {
            "imagenet" => Some(Stem::ImageNet),
            "cifar" => Some(Stem::Cifar),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockKind {
    Basic,
    Bottleneck,
}

/// Geometry of one convolution in CUTLASS letters: C input channels, K output channels, R x S filter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvGeom {
    pub c: usize,
    pub k: usize,
    pub r: usize,
    pub s: usize,
    pub stride: usize,
    pub pad: usize,
}

impl ConvGeom {
    /// Output size (P, Q) for input (H, W).
    pub fn out_hw(&self, h: usize, w: usize) -> (usize, usize) {
        ((h + 2 * self.pad - self.r) / self.stride + 1, (w + 2 * self.pad - self.s) / self.stride + 1)
    }
}

/// An eval-mode BatchNorm2d: y -> (y - running_mean) * scale + beta with scale = gamma / sqrt(var + eps),
/// PyTorch's own order of operations.
#[derive(Clone, Debug)]
pub struct BatchNorm {
    /// State-dict prefix, e.g. `layer1.0.bn1`.
    pub name: String,
    /// Position among all BN layers in module order (the stem's is 0).
    pub index: usize,
    pub gamma: Vec<f32>,
    pub beta: Vec<f32>,
    pub running_mean: Vec<f32>,
    pub running_var: Vec<f32>,
    pub scale: Vec<f32>,
}

impl BatchNorm {
    pub fn channels(&self) -> usize {
        self.gamma.len()
    }
}

/// A bias-free conv followed by its BatchNorm.
#[derive(Clone, Debug)]
pub struct ConvBn {
    /// State-dict prefix of the conv weight, e.g. `layer1.0.conv1` or `layer2.0.downsample.0`.
    pub name: String,
    pub geom: ConvGeom,
    /// K x C x R x S.
    pub weight: Vec<f32>,
    pub bn: BatchNorm,
}

#[derive(Clone, Debug)]
pub struct Block {
    /// State-dict prefix, e.g. `layer3.1`.
    pub name: String,
    /// conv1, conv2 (and conv3 for Bottleneck) in order.
    pub convs: Vec<ConvBn>,
    pub downsample: Option<ConvBn>,
}

#[derive(Clone, Debug)]
pub struct ResNet {
    pub stem: Stem,
    pub block: BlockKind,
    pub in_channels: usize,
    pub num_classes: usize,
    /// Blocks per stage, e.g. [2, 2, 2, 2] for ResNet-18.
    pub stage_blocks: Vec<usize>,
    /// Output channels of each stage.
    pub stage_widths: Vec<usize>,
    pub stem_conv: ConvBn,
    pub blocks: Vec<Block>,
    /// num_classes x feat_dim.
    pub fc_weight: Vec<f32>,
    pub fc_bias: Vec<f32>,
    pub feat_dim: usize,
    /// Per-channel normalisation the teacher was trained with, when the file says.
    pub mean: Option<Vec<f32>>,
    pub std: Option<Vec<f32>>,
    pub metadata: HashMap<String, String>,
}

impl ResNet {
    pub fn load(path: &Path) -> Result<ResNet> {
        let file = read_tensor_file(path)?;
        ResNet::from_tensors(file)
    }

    /// The architecture as numbers (see [`Layout`]).
    pub fn layout(&self) -> Layout {
        let expansion = if self.block == BlockKind::Bottleneck { 4 } else { 1 };
        Layout {
            stem: self.stem,
            block: self.block,
            stem_width: self.stem_conv.geom.k,
            stage_blocks: self.stage_blocks.clone(),
            planes: self.stage_widths.iter().map(|w| w / expansion).collect(),
            in_channels: self.in_channels,
            classes: self.num_classes,
        }
    }

    /// The smallest image side the network accepts (every stage must keep at least one pixel).
    pub fn min_side(&self) -> usize {
        if self.stem == Stem::ImageNet {
            32
        } else {
            8
        }
    }

    /// Depth in torchvision's sense (conv and fc layers on the main path).
    pub fn depth(&self) -> usize {
        let per_block = if self.block == BlockKind::Basic { 2 } else { 3 };
        per_block * self.stage_blocks.iter().sum::<usize>() + 2
    }

    /// `resnet18` etc. when depth and blocks match a torchvision model, else `resnet-custom-<depth>`.
    pub fn arch_name(&self) -> String {
        let known: [(&str, BlockKind, &[usize]); 5] = [
            ("resnet18", BlockKind::Basic, &[2, 2, 2, 2]),
            ("resnet34", BlockKind::Basic, &[3, 4, 6, 3]),
            ("resnet50", BlockKind::Bottleneck, &[3, 4, 6, 3]),
            ("resnet101", BlockKind::Bottleneck, &[3, 4, 23, 3]),
            ("resnet152", BlockKind::Bottleneck, &[3, 8, 36, 3]),
        ];
        known
            .iter()
            .find(|(_, k, b)| *k == self.block && *b == self.stage_blocks.as_slice())
            .map(|(n, _, _)| n.to_string())
            .unwrap_or_else(|| format!("resnet-custom-{}", self.depth()))
    }

    /// Every conv+BN in module order (stem, then per block conv1.., downsample): index i is BN layer i.
    pub fn conv_bns(&self) -> Vec<&ConvBn> {
        let mut v = vec![&self.stem_conv];
        for b in &self.blocks {
            v.extend(b.convs.iter());
            v.extend(b.downsample.iter());
        }
        v
    }

    pub fn num_bn_layers(&self) -> usize {
        self.conv_bns().len()
    }

    pub fn parameter_count(&self) -> usize {
        self.conv_bns().iter().map(|c| c.weight.len() + 2 * c.bn.channels()).sum::<usize>() + self.fc_weight.len() + self.fc_bias.len()
    }

    /// Multiply-accumulates of one forward pass for one image of size h x w.
    pub fn macs_per_image(&self, h: usize, w: usize) -> u64 {
        let mut total = 0u64;
        let mut visit = |c: &ConvBn, h: usize, w: usize| -> (usize, usize) {
            let (p, q) = c.geom.out_hw(h, w);
            total += (p * q * c.geom.k * c.geom.c * c.geom.r * c.geom.s) as u64;
            (p, q)
        };
        let (mut h, mut w) = visit(&self.stem_conv, h, w);
        if self.stem == Stem::ImageNet {
            (h, w) = maxpool_out_hw(h, w);
        }
        for b in &self.blocks {
            let (mut bh, mut bw) = (h, w);
            for c in &b.convs {
                (bh, bw) = visit(c, bh, bw);
            }
            if let Some(d) = &b.downsample {
                visit(d, h, w);
            }
            (h, w) = (bh, bw);
        }
        total + (self.fc_weight.len()) as u64
    }

    pub fn from_tensors(file: TensorFile) -> Result<ResNet> {
        let mut ld = Loader { file: &file, used: BTreeSet::new(), bn_index: 0 };
        // A zero-sized dimension (no channels, no classes) would reach the kernels as an empty
        // problem; no ResNet has one.
        if let Some((name, t)) = file.tensors.iter().find(|(_, t)| t.shape.contains(&0)) {
            return Err(ld.err(format!("tensor `{name}` has shape {:?}: a ResNet has no empty dimension", t.shape)));
        }
        let conv1 = ld.get("conv1.weight")?;
        if conv1.shape.len() != 4 {
            return Err(ld.err(format!("tensor `conv1.weight` has shape {:?}; expected 4 dims [K, C, R, S]", conv1.shape)));
        }
        let (k0, in_channels, r0) = (conv1.shape[0], conv1.shape[1], conv1.shape[2]);
        let stem = match file.metadata.get("stem") {
            Some(s) => Stem::parse(s).ok_or_else(|| ld.err(format!("metadata stem={s:?}; expected `imagenet` or `cifar`")))?,
            None => match r0 {
                7 => Stem::ImageNet,
                3 => Stem::Cifar,
                _ => return Err(ld.err(format!("tensor `conv1.weight` is {r0}x{r0}; expected 7x7 (ImageNet stem) or 3x3 (CIFAR stem)"))),
            },
        };
        let (stem_k, stem_stride, stem_pad) = match stem {
            Stem::ImageNet => (7, 2, 3),
            Stem::Cifar => (3, 1, 1),
        };
        let stem_geom = ConvGeom { c: in_channels, k: k0, r: stem_k, s: stem_k, stride: stem_stride, pad: stem_pad };
        let stem_conv = ld.conv_bn("conv1", "bn1", stem_geom)?;

        let bottleneck = file.tensors.contains_key("layer1.0.conv3.weight");
        let block = if bottleneck { BlockKind::Bottleneck } else { BlockKind::Basic };
        let mut blocks = Vec::new();
        let mut stage_blocks = Vec::new();
        let mut stage_widths = Vec::new();
        let mut channels = k0;
        let mut stage = 1;
        while file.tensors.contains_key(&format!("layer{stage}.0.conv1.weight")) {
            let mut i = 0;
            while file.tensors.contains_key(&format!("layer{stage}.{i}.conv1.weight")) {
                let prefix = format!("layer{stage}.{i}");
                // torchvision: the first block of every stage but the first has stride 2.
                let stride = if stage > 1 && i == 0 { 2 } else { 1 };
                let w1 = ld.shape(&format!("{prefix}.conv1.weight"))?;
                let planes = w1[0];
                let mut convs = Vec::new();
                let out_channels;
                if bottleneck {
                    convs.push(ld.conv_bn(
                        &format!("{prefix}.conv1"),
                        &format!("{prefix}.bn1"),
                        ConvGeom { c: channels, k: planes, r: 1, s: 1, stride: 1, pad: 0 },
                    )?);
                    convs.push(ld.conv_bn(
                        &format!("{prefix}.conv2"),
                        &format!("{prefix}.bn2"),
                        ConvGeom { c: planes, k: planes, r: 3, s: 3, stride, pad: 1 },
                    )?);
                    let w3 = ld.shape(&format!("{prefix}.conv3.weight"))?;
                    out_channels = w3[0];
                    convs.push(ld.conv_bn(
                        &format!("{prefix}.conv3"),
                        &format!("{prefix}.bn3"),
                        ConvGeom { c: planes, k: out_channels, r: 1, s: 1, stride: 1, pad: 0 },
                    )?);
                } else {
                    convs.push(ld.conv_bn(
                        &format!("{prefix}.conv1"),
                        &format!("{prefix}.bn1"),
                        ConvGeom { c: channels, k: planes, r: 3, s: 3, stride, pad: 1 },
                    )?);
                    out_channels = planes;
                    convs.push(ld.conv_bn(
                        &format!("{prefix}.conv2"),
                        &format!("{prefix}.bn2"),
                        ConvGeom { c: planes, k: planes, r: 3, s: 3, stride: 1, pad: 1 },
                    )?);
                }
                let ds_name = format!("{prefix}.downsample.0");
                let downsample = if file.tensors.contains_key(&format!("{ds_name}.weight")) {
                    Some(ld.conv_bn(&ds_name, &format!("{prefix}.downsample.1"), ConvGeom { c: channels, k: out_channels, r: 1, s: 1, stride, pad: 0 })?)
                } else {
                    if stride != 1 || channels != out_channels {
                        return Err(ld.err(format!(
                            "block `{prefix}` changes shape ({channels} -> {out_channels} channels, stride {stride}) but has no `{ds_name}.weight`"
                        )));
                    }
                    None
                };
                blocks.push(Block { name: prefix, convs, downsample });
                channels = out_channels;
                i += 1;
            }
            stage_blocks.push(i);
            stage_widths.push(channels);
            stage += 1;
        }
        if blocks.is_empty() {
            return Err(ld.err("no `layer1.0.conv1.weight`: not a torchvision-style ResNet".into()));
        }
        let fc_w = ld.get("fc.weight")?;
        if fc_w.shape.len() != 2 || fc_w.shape[1] != channels {
            return Err(ld.err(format!("tensor `fc.weight` has shape {:?}; expected [classes, {channels}]", fc_w.shape)));
        }
        let num_classes = fc_w.shape[0];
        let fc_weight = fc_w.data.clone();
        let fc_bias = ld.vector("fc.bias", num_classes)?;

        let unused: Vec<&String> = file.tensors.keys().filter(|k| !ld.used.contains(*k)).collect();
        if !unused.is_empty() {
            return Err(ld.err(format!(
                "unexpected tensor(s) for a {} ResNet: {}",
                if bottleneck { "Bottleneck" } else { "BasicBlock" },
                unused.iter().take(8).map(|s| format!("`{s}`")).collect::<Vec<_>>().join(", ")
            )));
        }

        let mean = parse_channel_list(&file, "mean", in_channels)?;
        let std = parse_channel_list(&file, "std", in_channels)?;
        if let Some(s) = &std {
            if s.iter().any(|v| *v <= 0.0) {
                return Err(Error::weights(&file.path, format!("metadata std={s:?} must be positive")));
            }
        }
        if let Some(c) = file.metadata.get("num_classes") {
            if c.parse::<usize>().ok() != Some(num_classes) {
                return Err(Error::weights(&file.path, format!("metadata num_classes={c} but fc.weight has {num_classes} rows")));
            }
        }
        // Metadata the commands take defaults from is checked here, once: a value nothing can use
        // is an error naming the file, not an option error later or a silent fallback.
        if let Some(c) = file.metadata.get("in_channels") {
            if c.parse::<usize>().ok() != Some(in_channels) {
                return Err(Error::weights(&file.path, format!("metadata in_channels={c} but conv1.weight takes {in_channels} input channels")));
            }
        }
        if let Some(s) = file.metadata.get("image_size") {
            if !s.parse::<usize>().is_ok_and(|v| v > 0) {
                return Err(Error::weights(&file.path, format!("metadata image_size={s:?} is not a positive whole number of pixels")));
            }
        }
        Ok(ResNet {
            stem,
            block,
            in_channels,
            num_classes,
            stage_blocks,
            stage_widths,
            stem_conv,
            blocks,
            fc_weight,
            fc_bias,
            feat_dim: channels,
            mean,
            std,
            metadata: file.metadata.clone(),
        })
    }
}

/// Sizes of a ResNet of a given layout, for estimating memory before any buffer is allocated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LayoutSizes {
    /// Weights, BN parameters and statistics, fc: floats.
    pub params: u64,
    /// Floats of every conv output and the stem pool output for one image (what a forward keeps).
    pub activations_per_image: u64,
    /// Elements of the largest single activation tensor for one image (the kernels index tensors
    /// of a batch with 32-bit integers).
    pub largest_per_image: u64,
}

/// The architecture of a ResNet as plain numbers: enough to size it without building it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    pub stem: Stem,
    pub block: BlockKind,
    /// Output channels of the stem conv.
    pub stem_width: usize,
    pub stage_blocks: Vec<usize>,
    /// Planes of each stage (the stage's output is 4x for Bottleneck).
    pub planes: Vec<usize>,
    pub in_channels: usize,
    pub classes: usize,
}

impl Layout {
    /// The layout of an architecture spec (`--arch resnet18-w16`, `--student`). Errors: widths
    /// whose doubling per stage overflows (a width no machine could hold).
    pub fn of_arch(spec: &crate::train::trainable::ArchSpec) -> Result<Layout> {
        let base = spec.widths.first().copied().unwrap_or(0);
        let stages = spec.widths.len() as u32;
        let widest = 1usize.checked_shl(stages).and_then(|f| base.checked_mul(f)).and_then(|w| w.checked_mul(4));
        if widest.is_none_or(|w| w > u32::MAX as usize) {
            return Err(Error::Option(format!("architecture width {base} is too large")));
        }
        Ok(Layout {
            stem: spec.stem,
            block: spec.block,
            stem_width: base,
            stage_blocks: spec.layers.clone(),
            planes: spec.widths.clone(),
            in_channels: spec.in_channels,
            classes: spec.num_classes,
        })
    }

    /// Parameters and activation sizes for h x w images, walking the torchvision geometry. None
    /// when a count overflows 64 bits (sizes that cannot be allocated anyway).
    pub fn sizes(&self, h: usize, w: usize) -> Option<LayoutSizes> {
        let mut params = 0u64;
        let mut acts = 0u64;
        let mut largest = 0u64;
        // The stem pool's output and its argmax indices.
        let mut pool = 0u64;
        let mul = |a: usize, b: usize| (a as u64).checked_mul(b as u64);
        let mut conv = |c: usize, k: usize, r: usize, stride: usize, pad: usize, h: usize, w: usize| -> Option<(usize, usize)> {
            let (p, q) = ((h + 2 * pad).saturating_sub(r) / stride + 1, (w + 2 * pad).saturating_sub(r) / stride + 1);
            params = params.checked_add(mul(k, c)?.checked_mul((r * r) as u64)?.checked_add(4 * k as u64)?)?;
            let out = mul(p, q)?.checked_mul(k as u64)?;
            acts = acts.checked_add(out)?;
            largest = largest.max(out);
            Some((p, q))
        };
        let (r0, s0, p0) = if self.stem == Stem::ImageNet { (7, 2, 3) } else { (3, 1, 1) };
        let (mut h, mut w) = conv(self.in_channels, self.stem_width, r0, s0, p0, h, w)?;
        if self.stem == Stem::ImageNet {
            (h, w) = maxpool_out_hw(h, w);
            pool = mul(h, w)?.checked_mul(self.stem_width as u64)?.checked_mul(2)?;
        }
        let expansion = if self.block == BlockKind::Bottleneck { 4 } else { 1 };
        let mut ch = self.stem_width;
        for (s, (&blocks, &planes)) in self.stage_blocks.iter().zip(&self.planes).enumerate() {
            let out = planes.checked_mul(expansion)?;
            for b in 0..blocks {
                let stride = if s > 0 && b == 0 { 2 } else { 1 };
                let (bh, bw) = if self.block == BlockKind::Bottleneck {
                    let (a, bb) = conv(ch, planes, 1, 1, 0, h, w)?;
                    let (a, bb) = conv(planes, planes, 3, stride, 1, a, bb)?;
                    conv(planes, out, 1, 1, 0, a, bb)?
                } else {
                    let (a, bb) = conv(ch, planes, 3, stride, 1, h, w)?;
                    conv(planes, planes, 3, 1, 1, a, bb)?
                };
                if stride != 1 || ch != out {
                    conv(ch, out, 1, stride, 0, h, w)?;
                }
                (h, w, ch) = (bh, bw, out);
            }
        }
        params = params.checked_add(mul(self.classes, ch)?.checked_add(self.classes as u64)?)?;
        Some(LayoutSizes { params, activations_per_image: acts.checked_add(pool)?, largest_per_image: largest })
    }

    /// Bytes a recover batch of n images of h x w needs (the network's activations, gradients and
    /// workspace, the images with their Adam state, the weights), and the largest tensor's element
    /// count for the batch. Calibrated against the peak resident memory `bench` measures
    /// (ResNet-18, CPU backend); None on overflow.
    pub fn recover_bytes(&self, n: usize, h: usize, w: usize) -> Option<(u64, u64)> {
        let s = self.sizes(h, w)?;
        let images = (n as u64).checked_mul(self.in_channels as u64)?.checked_mul(h as u64)?.checked_mul(w as u64)?;
        let floats = s
            .activations_per_image
            .checked_mul(n as u64)?
            .checked_mul(RECOVER_FLOATS_PER_ACTIVATION)?
            .checked_add(images.checked_mul(8)?)?
            .checked_add(s.params.checked_mul(RECOVER_FLOATS_PER_PARAM)?)?;
        Some((floats.checked_mul(4)?, s.largest_per_image.checked_mul(n as u64)?.max(images)))
    }

    /// Bytes training (squeeze, relabel's teacher, validate's student) needs for batches of n
    /// images of size x size, with an optimiser's state; None on overflow.
    pub fn train_bytes(&self, n: usize, size: usize) -> Option<(u64, u64)> {
        let s = self.sizes(size, size)?;
        let images = (n as u64).checked_mul(self.in_channels as u64)?.checked_mul(size as u64)?.checked_mul(size as u64)?;
        let floats = s
            .activations_per_image
            .checked_mul(n as u64)?
            .checked_mul(TRAIN_FLOATS_PER_ACTIVATION)?
            .checked_add(images.checked_mul(4)?)?
            .checked_add(s.params.checked_mul(TRAIN_FLOATS_PER_PARAM)?)?;
        Some((floats.checked_mul(4)?, s.largest_per_image.checked_mul(n as u64)?.max(images)))
    }
}

// Floats held per activation element and per parameter, fitted to the peak resident memory `bench`
// reports next to its estimate (ResNet-18 ImageNet stem at 112 and 224 px, ResNet-50 at 96 px,
// ResNet-18 CIFAR stem at 32 px, the Fashion-MNIST teacher at 28 px: the estimate is within 40% of
// the peak). Per activation: conv output, BN/ReLU output, their
// gradients. Per parameter: the file's tensors, the model's copy, the backends' packed and
// transformed (Winograd) weights.
const RECOVER_FLOATS_PER_ACTIVATION: u64 = 4;
const RECOVER_FLOATS_PER_PARAM: u64 = 9;
// Training keeps more per activation (saved inputs and normalised outputs for the backward pass)
// and per parameter (gradients, momentum).
const TRAIN_FLOATS_PER_ACTIVATION: u64 = 5;
const TRAIN_FLOATS_PER_PARAM: u64 = 8;

/// The largest element count a batch tensor may have: the kernels index with 32-bit integers.
pub const MAX_TENSOR_ELEMENTS: u64 = i32::MAX as u64;

/// Refuses a batch whose memory estimate `(bytes, largest tensor)` does not fit: `what` names the
/// request in the user's terms (e.g. "a recover batch of 100 images of 3000x3000").
pub fn ensure_batch_fits(what: &str, estimate: Option<(u64, u64)>) -> Result<()> {
    if let Some((bytes, largest)) = estimate {
        if largest > MAX_TENSOR_ELEMENTS {
            return Err(Error::Option(format!(
                "{what} is too large: it needs about {} of memory ({} available) and one activation tensor would hold {largest} values, \
                 more than the {MAX_TENSOR_ELEMENTS} the kernels can index",
                crate::memory::gib(bytes),
                crate::memory::available_bytes().map_or("unknown".into(), crate::memory::gib)
            )));
        }
    }
    crate::memory::ensure_fits(what, estimate.map(|e| e.0))
}

/// Output size of the ImageNet stem's 3x3 stride-2 pad-1 max pool.
pub fn maxpool_out_hw(h: usize, w: usize) -> (usize, usize) {
    ((h + 2 - 3) / 2 + 1, (w + 2 - 3) / 2 + 1)
}

fn parse_channel_list(file: &TensorFile, key: &str, channels: usize) -> Result<Option<Vec<f32>>> {
    let Some(text) = file.metadata.get(key) else { return Ok(None) };
    let v: Vec<f32> =
        serde_json::from_str(text).map_err(|e| Error::weights(&file.path, format!("metadata {key}={text:?} is not a JSON list of numbers: {e}")))?;
    if v.len() != channels {
        return Err(Error::weights(&file.path, format!("metadata {key} has {} values; the model has {channels} input channels", v.len())));
    }
    Ok(Some(v))
}

struct Loader<'a> {
    file: &'a TensorFile,
    used: BTreeSet<String>,
    bn_index: usize,
}

impl<'a> Loader<'a> {
    fn err(&self, message: String) -> Error {
        Error::weights(&self.file.path, message)
    }

    fn get(&mut self, name: &str) -> Result<&'a Tensor> {
        let t = self.file.tensors.get(name).ok_or_else(|| self.err(format!("missing tensor `{name}`")))?;
        self.used.insert(name.to_string());
        Ok(t)
    }

    fn shape(&mut self, name: &str) -> Result<Vec<usize>> {
        Ok(self.get(name)?.shape.clone())
    }

    fn vector(&mut self, name: &str, len: usize) -> Result<Vec<f32>> {
        let t = self.get(name)?;
        if t.shape != [len] {
            return Err(self.err(format!("tensor `{name}` has shape {:?}; expected [{len}]", t.shape)));
        }
        Ok(t.data.clone())
    }

    fn conv_bn(&mut self, conv: &str, bn: &str, geom: ConvGeom) -> Result<ConvBn> {
        let wname = format!("{conv}.weight");
        let w = self.get(&wname)?;
        let expected = [geom.k, geom.c, geom.r, geom.s];
        if w.shape != expected {
            return Err(self.err(format!("tensor `{wname}` has shape {:?}; expected {expected:?}", w.shape)));
        }
        let weight = w.data.clone();
        if self.file.tensors.contains_key(&format!("{conv}.bias")) {
            return Err(self.err(format!("unexpected tensor `{conv}.bias`: torchvision ResNet convs have no bias")));
        }
        let k = geom.k;
        let gamma = self.vector(&format!("{bn}.weight"), k)?;
        let beta = self.vector(&format!("{bn}.bias"), k)?;
        let running_mean = self.vector(&format!("{bn}.running_mean"), k)?;
        let running_var = self.vector(&format!("{bn}.running_var"), k)?;
        if let Some(c) = running_var.iter().position(|v| *v < 0.0) {
            return Err(self.err(format!("tensor `{bn}.running_var` is negative ({}) at channel {c}", running_var[c])));
        }
        let scale: Vec<f32> = gamma.iter().zip(&running_var).map(|(g, v)| g / (v + BN_EPS).sqrt()).collect();
        let index = self.bn_index;
        self.bn_index += 1;
        Ok(ConvBn { name: conv.to_string(), geom, weight, bn: BatchNorm { name: bn.to_string(), index, gamma, beta, running_mean, running_var, scale } })
    }
}
