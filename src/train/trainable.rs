//! A ResNet whose parameters can be trained: the same description as `crate::model` (torchvision
//! names, BasicBlock/Bottleneck, ImageNet/CIFAR stem) with every learnable tensor, its gradient and
//! the BatchNorm running statistics as flat f32 arrays. Built fresh (PyTorch's initialisation) or from
//! a loaded `ResNet`; saved as safetensors exactly as weights/export_resnet.py writes them.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, StandardNormal};

use crate::error::{Error, Result};
use crate::model::{BlockKind, ConvBn, ConvGeom, ResNet, Stem};
use crate::weights::{write_tensor_file, Tensor, TensorFile};

/// One learnable tensor with its gradient (same length).
#[derive(Clone, Debug)]
pub struct Param {
    /// torchvision name, e.g. `layer1.0.conv1.weight`.
    pub name: String,
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
    pub grad: Vec<f32>,
}

impl Param {
    fn new(name: String, shape: Vec<usize>, data: Vec<f32>) -> Param {
        assert_eq!(shape.iter().product::<usize>(), data.len());
        let grad = vec![0.0; data.len()];
        Param { name, shape, data, grad }
    }
    /// Tensors with more than one dimension (conv and fc weights) get weight decay in the recipes here.
    pub fn decays(&self) -> bool {
        self.shape.len() > 1
    }
}

/// A conv + BatchNorm pair: indices of its weight, gamma and beta in `TrainModel::params`.
#[derive(Clone, Debug)]
pub struct ConvLayer {
    /// Prefix of the conv (e.g. `layer2.0.downsample.0`) and of its BN (`layer2.0.downsample.1`).
    pub conv_name: String,
    pub bn_name: String,
    pub geom: ConvGeom,
    pub weight: usize,
    pub gamma: usize,
    pub beta: usize,
    pub running_mean: Vec<f32>,
    pub running_var: Vec<f32>,
}

/// Indices into `TrainModel::convs` of a block's convs (module order) and its downsample.
#[derive(Clone, Debug)]
pub struct BlockLayout {
    pub convs: Vec<usize>,
    pub downsample: Option<usize>,
}

#[derive(Clone, Debug)]
pub struct TrainModel {
    pub stem: Stem,
    pub block: BlockKind,
    pub in_channels: usize,
    pub num_classes: usize,
    pub stage_blocks: Vec<usize>,
    pub stage_widths: Vec<usize>,
    pub feat_dim: usize,
    pub params: Vec<Param>,
    /// Every conv + BN in module order (index = BN layer index).
    pub convs: Vec<ConvLayer>,
    pub blocks: Vec<BlockLayout>,
    pub fc_weight: usize,
    pub fc_bias: usize,
    pub mean: Option<Vec<f32>>,
    pub std: Option<Vec<f32>>,
}

/// Architecture of a model to build: torchvision layer counts, block kind, widths, stem, channels.
#[derive(Clone, Debug, PartialEq)]
pub struct ArchSpec {
    pub block: BlockKind,
    pub layers: Vec<usize>,
    /// Planes of each stage (the output width is 4x for Bottleneck).
    pub widths: Vec<usize>,
    pub stem: Stem,
    pub in_channels: usize,
    pub num_classes: usize,
}

impl ArchSpec {
    /// `resnet18`, `resnet34`, `resnet50`, `resnet101`, `resnet152`, optionally with a base width:
    /// `resnet18-w16` (widths 16/32/64/128; torchvision's is 64).
    pub fn parse(text: &str, stem: Stem, in_channels: usize, num_classes: usize) -> Result<ArchSpec> {
        let (name, width) = match text.split_once("-w") {
            Some((n, w)) => {
                (n, Some(w.parse::<usize>().map_err(|_| Error::Option(format!("architecture {text:?}: width after -w must be a number, e.g. resnet18-w16")))?))
            }
            None => (text, None),
        };
        let (bottleneck, layers) = crate::bench::arch_layout(name)
            .ok_or_else(|| Error::Option(format!("unknown architecture {text:?}: expected resnet18/34/50/101/152, optionally with -w<width>")))?;
        let width = width.unwrap_or(64);
        if width == 0 {
            return Err(Error::Option(format!("architecture {text:?}: width must be at least 1")));
        }
        Ok(ArchSpec {
            block: if bottleneck { BlockKind::Bottleneck } else { BlockKind::Basic },
            layers: layers.to_vec(),
            widths: (0..4).map(|s| width << s).collect(),
            stem,
            in_channels,
            num_classes,
        })
    }

    /// The architecture of an existing model (same blocks, widths, stem, channels and classes).
    pub fn of(m: &ResNet) -> ArchSpec {
        let expansion = if m.block == BlockKind::Bottleneck { 4 } else { 1 };
        ArchSpec {
            block: m.block,
            layers: m.stage_blocks.clone(),
            widths: m.stage_widths.iter().map(|w| w / expansion).collect(),
            stem: m.stem,
            in_channels: m.in_channels,
            num_classes: m.num_classes,
        }
    }

    /// `resnet18-w16` style name.
    pub fn describe(&self) -> String {
        let kind = if self.block == BlockKind::Bottleneck { "bottleneck" } else { "basic" };
        let name = match (kind, self.layers.as_slice()) {
            ("basic", [2, 2, 2, 2]) => "resnet18".to_string(),
            ("basic", [3, 4, 6, 3]) => "resnet34".to_string(),
            ("bottleneck", [3, 4, 6, 3]) => "resnet50".to_string(),
            ("bottleneck", [3, 4, 23, 3]) => "resnet101".to_string(),
            ("bottleneck", [3, 8, 36, 3]) => "resnet152".to_string(),
            _ => format!("resnet-custom-{kind}-{}", self.layers.iter().map(|l| l.to_string()).collect::<Vec<_>>().join("-")),
        };
        format!("{name}-w{} ({} stem)", self.widths[0], self.stem.name())
    }
}

/// Python's `json.dumps` of a list of floats: `[0.286]`, `[0.485, 0.456, 0.406]`, `[1.0]`.
pub fn json_float_list(v: &[f32]) -> String {
    let items: Vec<String> = v.iter().map(|x| serde_json::to_string(x).unwrap_or_else(|_| "NaN".into())).collect();
    format!("[{}]", items.join(", "))
}

/// How a fresh network's conv weights are drawn.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum InitScheme {
    /// torchvision's ResNet: kaiming_normal_(mode = fan_out, relu), std sqrt(2 / (K R S)).
    Torchvision,
    /// PyTorch's nn.Conv2d default: kaiming_uniform_(a = sqrt(5)), U(+-1 / sqrt(C R S)).
    Pytorch,
}

impl TrainModel {
    /// A fresh model with torchvision's ResNet initialisation (see [`InitScheme::Torchvision`]).
    pub fn init(spec: &ArchSpec, seed: u64) -> Result<TrainModel> {
        Self::init_with(spec, seed, InitScheme::Torchvision)
    }

    /// A fresh model: convs as `scheme` says, BN weight 1 / bias 0 / running mean 0 / var 1, fc as
    /// nn.Linear (U(+-1/sqrt(fan_in)) for weight and bias). Errors: an empty or inconsistent `spec`.
    pub fn init_with(spec: &ArchSpec, seed: u64, scheme: InitScheme) -> Result<TrainModel> {
        if spec.layers.is_empty() || spec.layers.len() != spec.widths.len() || spec.layers.contains(&0) {
            return Err(Error::Option(format!("architecture: {} stages with widths {:?}", spec.layers.len(), spec.widths)));
        }
        if spec.in_channels == 0 || spec.num_classes == 0 {
            return Err(Error::Option("architecture: input channels and classes must be at least 1".into()));
        }
        let mut rng = StdRng::seed_from_u64(seed);
        let mut t: BTreeMap<String, Tensor> = BTreeMap::new();
        let conv = |t: &mut BTreeMap<String, Tensor>, name: &str, k: usize, c: usize, r: usize, rng: &mut StdRng| {
            let data = match scheme {
                InitScheme::Torchvision => {
                    let std = (2.0 / (k * r * r) as f64).sqrt() as f32;
                    (0..k * c * r * r).map(|_| std * <StandardNormal as Distribution<f32>>::sample(&StandardNormal, rng)).collect()
                }
                InitScheme::Pytorch => {
                    let bound = 1.0 / ((c * r * r) as f32).sqrt();
                    (0..k * c * r * r).map(|_| rng.random_range(-bound..bound)).collect()
                }
            };
            t.insert(format!("{name}.weight"), Tensor::new(vec![k, c, r, r], data));
        };
        let bn = |t: &mut BTreeMap<String, Tensor>, name: &str, k: usize| {
            t.insert(format!("{name}.weight"), Tensor::new(vec![k], vec![1.0; k]));
            t.insert(format!("{name}.bias"), Tensor::zeros(vec![k]));
            t.insert(format!("{name}.running_mean"), Tensor::zeros(vec![k]));
            t.insert(format!("{name}.running_var"), Tensor::new(vec![k], vec![1.0; k]));
        };
        let bottleneck = spec.block == BlockKind::Bottleneck;
        let expansion = if bottleneck { 4 } else { 1 };
        let stem_k = if spec.stem == Stem::ImageNet { 7 } else { 3 };
        conv(&mut t, "conv1", spec.widths[0], spec.in_channels, stem_k, &mut rng);
        bn(&mut t, "bn1", spec.widths[0]);
        let mut inplanes = spec.widths[0];
        for (s, (&blocks, &planes)) in spec.layers.iter().zip(&spec.widths).enumerate() {
            let stride = if s == 0 { 1 } else { 2 };
            for b in 0..blocks {
                let p = format!("layer{}.{b}", s + 1);
                if b == 0 && (stride != 1 || inplanes != planes * expansion) {
                    conv(&mut t, &format!("{p}.downsample.0"), planes * expansion, inplanes, 1, &mut rng);
                    bn(&mut t, &format!("{p}.downsample.1"), planes * expansion);
                }
                if bottleneck {
                    conv(&mut t, &format!("{p}.conv1"), planes, inplanes, 1, &mut rng);
                    conv(&mut t, &format!("{p}.conv2"), planes, planes, 3, &mut rng);
                    conv(&mut t, &format!("{p}.conv3"), planes * 4, planes, 1, &mut rng);
                    bn(&mut t, &format!("{p}.bn3"), planes * 4);
                } else {
                    conv(&mut t, &format!("{p}.conv1"), planes, inplanes, 3, &mut rng);
                    conv(&mut t, &format!("{p}.conv2"), planes, planes, 3, &mut rng);
                }
                bn(&mut t, &format!("{p}.bn1"), planes);
                bn(&mut t, &format!("{p}.bn2"), planes);
                inplanes = planes * expansion;
            }
        }
        let bound = 1.0 / (inplanes as f32).sqrt();
        let fc_w = (0..spec.num_classes * inplanes).map(|_| rng.random_range(-bound..bound)).collect();
        let fc_b = (0..spec.num_classes).map(|_| rng.random_range(-bound..bound)).collect();
        t.insert("fc.weight".into(), Tensor::new(vec![spec.num_classes, inplanes], fc_w));
        t.insert("fc.bias".into(), Tensor::new(vec![spec.num_classes], fc_b));
        let mut metadata = HashMap::new();
        metadata.insert("stem".to_string(), spec.stem.name().to_string());
        let file = TensorFile { path: "<initialised model>".into(), tensors: t, skipped: vec![], metadata };
        Ok(TrainModel::from_resnet(&ResNet::from_tensors(file)?))
    }

    /// A trainable copy of a loaded model (weights, BN parameters and running statistics).
    pub fn from_resnet(m: &ResNet) -> TrainModel {
        let mut params = Vec::new();
        let mut convs = Vec::new();
        let mut push_conv = |c: &ConvBn, params: &mut Vec<Param>| {
            let g = c.geom;
            params.push(Param::new(format!("{}.weight", c.name), vec![g.k, g.c, g.r, g.s], c.weight.clone()));
            params.push(Param::new(format!("{}.weight", c.bn.name), vec![g.k], c.bn.gamma.clone()));
            params.push(Param::new(format!("{}.bias", c.bn.name), vec![g.k], c.bn.beta.clone()));
            let n = params.len();
            convs.push(ConvLayer {
                conv_name: c.name.clone(),
                bn_name: c.bn.name.clone(),
                geom: g,
                weight: n - 3,
                gamma: n - 2,
                beta: n - 1,
                running_mean: c.bn.running_mean.clone(),
                running_var: c.bn.running_var.clone(),
            });
            convs.len() - 1
        };
        // Module order, as ResNet::conv_bns (stem, then per block conv1.., downsample).
        push_conv(&m.stem_conv, &mut params);
        let mut blocks = Vec::new();
        for b in &m.blocks {
            let ids: Vec<usize> = b.convs.iter().map(|c| push_conv(c, &mut params)).collect();
            let downsample = b.downsample.as_ref().map(|d| push_conv(d, &mut params));
            blocks.push(BlockLayout { convs: ids, downsample });
        }
        params.push(Param::new("fc.weight".into(), vec![m.num_classes, m.feat_dim], m.fc_weight.clone()));
        params.push(Param::new("fc.bias".into(), vec![m.num_classes], m.fc_bias.clone()));
        let n = params.len();
        TrainModel {
            stem: m.stem,
            block: m.block,
            in_channels: m.in_channels,
            num_classes: m.num_classes,
            stage_blocks: m.stage_blocks.clone(),
            stage_widths: m.stage_widths.clone(),
            feat_dim: m.feat_dim,
            params,
            convs,
            blocks,
            fc_weight: n - 2,
            fc_bias: n - 1,
            mean: m.mean.clone(),
            std: m.std.clone(),
        }
    }

    pub fn spec(&self) -> ArchSpec {
        let expansion = if self.block == BlockKind::Bottleneck { 4 } else { 1 };
        ArchSpec {
            block: self.block,
            layers: self.stage_blocks.clone(),
            widths: self.stage_widths.iter().map(|w| w / expansion).collect(),
            stem: self.stem,
            in_channels: self.in_channels,
            num_classes: self.num_classes,
        }
    }

    /// FNV-1a over every parameter, running statistic and the normalisation: tells one set of
    /// weights from another (a relabel file records its teacher's, validate checks it).
    pub fn fingerprint(&self) -> String {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let floats = self.params.iter().flat_map(|p| &p.data).chain(self.convs.iter().flat_map(|c| c.running_mean.iter().chain(&c.running_var)));
        let norm = self.mean.iter().chain(&self.std).flatten();
        for v in floats.chain(norm) {
            for b in v.to_bits().to_le_bytes() {
                h ^= b as u64;
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
        }
        format!("{h:016x}")
    }

    pub fn parameter_count(&self) -> usize {
        self.params.iter().map(|p| p.data.len()).sum()
    }

    pub fn zero_grad(&mut self) {
        for p in &mut self.params {
            p.grad.fill(0.0);
        }
    }

    /// All tensors under torchvision names (parameters and running statistics), sorted by name.
    pub fn tensors(&self) -> BTreeMap<String, Tensor> {
        let mut t = BTreeMap::new();
        for p in &self.params {
            t.insert(p.name.clone(), Tensor::new(p.shape.clone(), p.data.clone()));
        }
        for c in &self.convs {
            t.insert(format!("{}.running_mean", c.bn_name), Tensor::new(vec![c.running_mean.len()], c.running_mean.clone()));
            t.insert(format!("{}.running_var", c.bn_name), Tensor::new(vec![c.running_var.len()], c.running_var.clone()));
        }
        t
    }

    /// The eval-mode `ResNet` of the current weights (what `ResNet::load` would read from a saved file).
    pub fn to_resnet(&self) -> Result<ResNet> {
        let file = TensorFile { path: "<trained model>".into(), tensors: self.tensors(), skipped: vec![], metadata: self.metadata(&[]) };
        ResNet::from_tensors(file)
    }

    /// weights/export_resnet.py's metadata: arch, stem, num_classes, in_channels, mean/std (JSON lists),
    /// then `extra` (dataset, image_size, test_top1, recipe, ...).
    pub fn metadata(&self, extra: &[(&str, String)]) -> HashMap<String, String> {
        let mut meta = HashMap::new();
        let kind = if self.block == BlockKind::Bottleneck { "bottleneck" } else { "basic" };
        let known = match (kind, self.stage_blocks.as_slice()) {
            ("basic", [2, 2, 2, 2]) => Some("resnet18"),
            ("basic", [3, 4, 6, 3]) => Some("resnet34"),
            ("bottleneck", [3, 4, 6, 3]) => Some("resnet50"),
            ("bottleneck", [3, 4, 23, 3]) => Some("resnet101"),
            ("bottleneck", [3, 8, 36, 3]) => Some("resnet152"),
            _ => None,
        };
        let arch = known
            .map(String::from)
            .unwrap_or_else(|| format!("resnet-custom-{kind}-{}", self.stage_blocks.iter().map(|b| b.to_string()).collect::<Vec<_>>().join("-")));
        meta.insert("arch".into(), arch);
        meta.insert("stem".into(), self.stem.name().into());
        meta.insert("num_classes".into(), self.num_classes.to_string());
        meta.insert("in_channels".into(), self.in_channels.to_string());
        if let Some(m) = &self.mean {
            meta.insert("mean".into(), json_float_list(m));
        }
        if let Some(s) = &self.std {
            meta.insert("std".into(), json_float_list(s));
        }
        for (k, v) in extra {
            meta.insert(k.to_string(), v.clone());
        }
        meta
    }

    /// Writes the model atomically as weights/export_resnet.py does (float32, torchvision names).
    pub fn save(&self, path: &Path, extra: &[(&str, String)]) -> Result<()> {
        let tensors = self.tensors();
        let refs: Vec<(String, &Tensor)> = tensors.iter().map(|(k, v)| (k.clone(), v)).collect();
        write_tensor_file(path, &refs, Some(self.metadata(extra)))
    }
}
