//! Layers built at run time: torchvision names and shapes, seeded initialisation,
//! train/eval forward, running statistics, shape errors, the summary.

use dfdx::prelude::*;
use recipe::nn::init::Init;
use recipe::nn::params::{ParamStore, Role};
use recipe::nn::{
    BackboneConfig, BackboneKind, EngineDevice, HeadConfig, Model, ModelConfig, ModelError,
    PrototypesConfig, ResNetSpec, Stem,
};

/// `torchvision.models.resnet18().state_dict()` without `fc.*`: names and shapes in
/// order (`num_batches_tracked` is a 0-d tensor).
const RESNET18: &[(&str, &[usize])] = &[
    ("conv1.weight", &[64, 3, 7, 7]),
    ("bn1.weight", &[64]),
    ("bn1.bias", &[64]),
    ("bn1.running_mean", &[64]),
    ("bn1.running_var", &[64]),
    ("bn1.num_batches_tracked", &[]),
    ("layer1.0.conv1.weight", &[64, 64, 3, 3]),
    ("layer1.0.bn1.weight", &[64]),
    ("layer1.0.bn1.bias", &[64]),
    ("layer1.0.bn1.running_mean", &[64]),
    ("layer1.0.bn1.running_var", &[64]),
    ("layer1.0.bn1.num_batches_tracked", &[]),
    ("layer1.0.conv2.weight", &[64, 64, 3, 3]),
    ("layer1.0.bn2.weight", &[64]),
    ("layer1.0.bn2.bias", &[64]),
    ("layer1.0.bn2.running_mean", &[64]),
    ("layer1.0.bn2.running_var", &[64]),
    ("layer1.0.bn2.num_batches_tracked", &[]),
    ("layer1.1.conv1.weight", &[64, 64, 3, 3]),
    ("layer1.1.bn1.weight", &[64]),
    ("layer1.1.bn1.bias", &[64]),
    ("layer1.1.bn1.running_mean", &[64]),
    ("layer1.1.bn1.running_var", &[64]),
    ("layer1.1.bn1.num_batches_tracked", &[]),
    ("layer1.1.conv2.weight", &[64, 64, 3, 3]),
    ("layer1.1.bn2.weight", &[64]),
    ("layer1.1.bn2.bias", &[64]),
    ("layer1.1.bn2.running_mean", &[64]),
    ("layer1.1.bn2.running_var", &[64]),
    ("layer1.1.bn2.num_batches_tracked", &[]),
    ("layer2.0.conv1.weight", &[128, 64, 3, 3]),
    ("layer2.0.bn1.weight", &[128]),
    ("layer2.0.bn1.bias", &[128]),
    ("layer2.0.bn1.running_mean", &[128]),
    ("layer2.0.bn1.running_var", &[128]),
    ("layer2.0.bn1.num_batches_tracked", &[]),
    ("layer2.0.conv2.weight", &[128, 128, 3, 3]),
    ("layer2.0.bn2.weight", &[128]),
    ("layer2.0.bn2.bias", &[128]),
    ("layer2.0.bn2.running_mean", &[128]),
    ("layer2.0.bn2.running_var", &[128]),
    ("layer2.0.bn2.num_batches_tracked", &[]),
    ("layer2.0.downsample.0.weight", &[128, 64, 1, 1]),
    ("layer2.0.downsample.1.weight", &[128]),
    ("layer2.0.downsample.1.bias", &[128]),
    ("layer2.0.downsample.1.running_mean", &[128]),
    ("layer2.0.downsample.1.running_var", &[128]),
    ("layer2.0.downsample.1.num_batches_tracked", &[]),
    ("layer2.1.conv1.weight", &[128, 128, 3, 3]),
    ("layer2.1.bn1.weight", &[128]),
    ("layer2.1.bn1.bias", &[128]),
    ("layer2.1.bn1.running_mean", &[128]),
    ("layer2.1.bn1.running_var", &[128]),
    ("layer2.1.bn1.num_batches_tracked", &[]),
    ("layer2.1.conv2.weight", &[128, 128, 3, 3]),
    ("layer2.1.bn2.weight", &[128]),
    ("layer2.1.bn2.bias", &[128]),
    ("layer2.1.bn2.running_mean", &[128]),
    ("layer2.1.bn2.running_var", &[128]),
    ("layer2.1.bn2.num_batches_tracked", &[]),
    ("layer3.0.conv1.weight", &[256, 128, 3, 3]),
    ("layer3.0.bn1.weight", &[256]),
    ("layer3.0.bn1.bias", &[256]),
    ("layer3.0.bn1.running_mean", &[256]),
    ("layer3.0.bn1.running_var", &[256]),
    ("layer3.0.bn1.num_batches_tracked", &[]),
    ("layer3.0.conv2.weight", &[256, 256, 3, 3]),
    ("layer3.0.bn2.weight", &[256]),
    ("layer3.0.bn2.bias", &[256]),
    ("layer3.0.bn2.running_mean", &[256]),
    ("layer3.0.bn2.running_var", &[256]),
    ("layer3.0.bn2.num_batches_tracked", &[]),
    ("layer3.0.downsample.0.weight", &[256, 128, 1, 1]),
    ("layer3.0.downsample.1.weight", &[256]),
    ("layer3.0.downsample.1.bias", &[256]),
    ("layer3.0.downsample.1.running_mean", &[256]),
    ("layer3.0.downsample.1.running_var", &[256]),
    ("layer3.0.downsample.1.num_batches_tracked", &[]),
    ("layer3.1.conv1.weight", &[256, 256, 3, 3]),
    ("layer3.1.bn1.weight", &[256]),
    ("layer3.1.bn1.bias", &[256]),
    ("layer3.1.bn1.running_mean", &[256]),
    ("layer3.1.bn1.running_var", &[256]),
    ("layer3.1.bn1.num_batches_tracked", &[]),
    ("layer3.1.conv2.weight", &[256, 256, 3, 3]),
    ("layer3.1.bn2.weight", &[256]),
    ("layer3.1.bn2.bias", &[256]),
    ("layer3.1.bn2.running_mean", &[256]),
    ("layer3.1.bn2.running_var", &[256]),
    ("layer3.1.bn2.num_batches_tracked", &[]),
    ("layer4.0.conv1.weight", &[512, 256, 3, 3]),
    ("layer4.0.bn1.weight", &[512]),
    ("layer4.0.bn1.bias", &[512]),
    ("layer4.0.bn1.running_mean", &[512]),
    ("layer4.0.bn1.running_var", &[512]),
    ("layer4.0.bn1.num_batches_tracked", &[]),
    ("layer4.0.conv2.weight", &[512, 512, 3, 3]),
    ("layer4.0.bn2.weight", &[512]),
    ("layer4.0.bn2.bias", &[512]),
    ("layer4.0.bn2.running_mean", &[512]),
    ("layer4.0.bn2.running_var", &[512]),
    ("layer4.0.bn2.num_batches_tracked", &[]),
    ("layer4.0.downsample.0.weight", &[512, 256, 1, 1]),
    ("layer4.0.downsample.1.weight", &[512]),
    ("layer4.0.downsample.1.bias", &[512]),
    ("layer4.0.downsample.1.running_mean", &[512]),
    ("layer4.0.downsample.1.running_var", &[512]),
    ("layer4.0.downsample.1.num_batches_tracked", &[]),
    ("layer4.1.conv1.weight", &[512, 512, 3, 3]),
    ("layer4.1.bn1.weight", &[512]),
    ("layer4.1.bn1.bias", &[512]),
    ("layer4.1.bn1.running_mean", &[512]),
    ("layer4.1.bn1.running_var", &[512]),
    ("layer4.1.bn1.num_batches_tracked", &[]),
    ("layer4.1.conv2.weight", &[512, 512, 3, 3]),
    ("layer4.1.bn2.weight", &[512]),
    ("layer4.1.bn2.bias", &[512]),
    ("layer4.1.bn2.running_mean", &[512]),
    ("layer4.1.bn2.running_var", &[512]),
    ("layer4.1.bn2.num_batches_tracked", &[]),
];

fn resnet(depth: usize, stem: Stem, wm: f32, in_channels: usize, hw: usize) -> ModelConfig {
    ModelConfig {
        backbone: BackboneConfig {
            kind: BackboneKind::ResNet(ResNetSpec::standard(depth, stem, wm).unwrap()),
            in_channels,
        },
        head: None,
        prototypes: None,
        predictor: None,
        last_layer: None,
        input_hw: (hw, hw),
    }
}

#[test]
fn resnet18_backbone_has_torchvision_names_and_shapes() {
    let mut store = ParamStore::new(Cpu::default());
    let model = Model::new(&mut store, &resnet(18, Stem::ImageNet, 1.0, 3, 64), 0).unwrap();
    let got: Vec<(String, Vec<usize>)> = store
        .entries()
        .iter()
        .map(|e| (e.name.clone(), e.shape.clone()))
        .collect();
    let want: Vec<(String, Vec<usize>)> = RESNET18
        .iter()
        .map(|(n, s)| (n.to_string(), s.to_vec()))
        .collect();
    assert_eq!(got, want);
    assert_eq!(model.backbone.out_dim, 512);
    // torchvision: 11,689,512 parameters with fc (512*1000 + 1000).
    assert_eq!(store.num_params(), 11_689_512 - 513_000);
    let nbt = store.get(store.id("bn1.num_batches_tracked").unwrap());
    assert_eq!(nbt.role, Role::Buffer);
    assert!(!nbt.trainable);
}

#[test]
fn resnet50_and_34_have_torchvision_parameter_counts() {
    // torchvision counts minus fc: resnet50 25,557,032 - 2,049,000; resnet34 21,797,672 - 513,000.
    for (depth, want) in [(50, 25_557_032 - 2_049_000), (34, 21_797_672 - 513_000)] {
        let mut store = ParamStore::new(Cpu::default());
        Model::new(&mut store, &resnet(depth, Stem::ImageNet, 1.0, 3, 64), 0).unwrap();
        assert_eq!(store.num_params(), want, "resnet{depth}");
    }
    let mut store = ParamStore::new(Cpu::default());
    Model::new(&mut store, &resnet(50, Stem::ImageNet, 1.0, 3, 64), 0).unwrap();
    let shape = |n: &str| store.get(store.id(n).unwrap()).shape.clone();
    assert_eq!(shape("layer1.0.conv3.weight"), vec![256, 64, 1, 1]);
    assert_eq!(shape("layer2.0.conv2.weight"), vec![128, 128, 3, 3]);
    assert_eq!(shape("layer4.2.bn3.running_var"), vec![2048]);
}

#[test]
fn same_seed_same_parameters_and_init_statistics() {
    let cfg = resnet(18, Stem::Cifar, 0.25, 1, 16);
    let build = |seed| {
        let mut s = ParamStore::new(Cpu::default());
        Model::new(&mut s, &cfg, seed).unwrap();
        s.entries()
            .iter()
            .map(|e| e.tensor.as_vec())
            .collect::<Vec<_>>()
    };
    assert_eq!(build(7), build(7));
    assert_ne!(build(7), build(8));
    let mut s = ParamStore::new(Cpu::default());
    Model::new(&mut s, &cfg, 7).unwrap();
    // Kaiming normal, fan_out: std = sqrt(2 / (out * k * k)).
    let e = s.get(s.id("layer3.0.conv2.weight").unwrap());
    let v = e.tensor.as_vec();
    let std = (v.iter().map(|x| x * x).sum::<f32>() / v.len() as f32).sqrt();
    let want = (2.0 / (e.shape[0] * 9) as f32).sqrt();
    assert!((std / want - 1.0).abs() < 0.1, "{std} vs {want}");
    assert!(
        s.data(s.id("bn1.weight").unwrap())
            .iter()
            .all(|v| *v == 1.0)
    );
    assert!(
        s.data(s.id("bn1.running_var").unwrap())
            .iter()
            .all(|v| *v == 1.0)
    );
    assert!(s.data(s.id("bn1.bias").unwrap()).iter().all(|v| *v == 0.0));
}

fn small_model(prototypes: bool) -> (ParamStore<Cpu>, Model) {
    let cfg = ModelConfig {
        backbone: BackboneConfig {
            kind: BackboneKind::ResNet(ResNetSpec::small(4)),
            in_channels: 3,
        },
        head: Some(HeadConfig {
            in_dim: Some(8),
            hidden: vec![6],
            out_dim: 5,
            batch_norm: true,
            last_bn: false,
        }),
        prototypes: prototypes.then_some(PrototypesConfig {
            count: 7,
            dim: None,
        }),
        predictor: None,
        last_layer: None,
        input_hw: (8, 8),
    };
    let mut store = ParamStore::new(Cpu::default());
    let model = Model::new(&mut store, &cfg, 1).unwrap();
    (store, model)
}

#[test]
fn train_forward_updates_running_stats_and_gives_gradients() {
    let (mut store, model) = small_model(false);
    let dev = Cpu::default();
    let x = dev.tensor_from_vec(Init::new(3).normal(4 * 3 * 64, 1.0), (4, 3, 8, 8));
    let z = model
        .project(&mut store, x.trace(Gradients::leaky()), true)
        .unwrap();
    assert_eq!(*z.shape(), (4, 5));
    let grads = z.square().sum::<(), _>().backward();
    for e in store.entries().iter().filter(|e| e.trainable) {
        let g = grads.get(&e.tensor).as_vec();
        assert!(g.iter().any(|v| *v != 0.0), "no gradient for {}", e.name);
    }
    let rm = store.data(store.id("layer1.0.bn1.running_mean").unwrap());
    assert!(rm.iter().any(|v| *v != 0.0));
    assert_eq!(
        store.data(store.id("bn1.num_batches_tracked").unwrap()),
        vec![1.0]
    );
    assert_eq!(
        store.data(store.id("projector.1.num_batches_tracked").unwrap()),
        vec![1.0]
    );

    // Eval mode: deterministic, leaves the buffers alone, per-sample independent.
    let before = store.data(store.id("bn1.running_var").unwrap());
    let a = model
        .project(&mut store, x.clone(), false)
        .unwrap()
        .as_vec();
    let b = model
        .project(&mut store, x.clone(), false)
        .unwrap()
        .as_vec();
    assert_eq!(a, b);
    assert_eq!(store.data(store.id("bn1.running_var").unwrap()), before);
    let first: Tensor<(usize, usize, usize, usize), f32, Cpu> =
        dev.tensor_from_vec(x.as_vec()[..3 * 64].to_vec(), (1, 3, 8, 8));
    let one = model.project(&mut store, first, false).unwrap().as_vec();
    for (p, q) in one.iter().zip(&a[..5]) {
        assert!((p - q).abs() < 1e-5);
    }
}

#[test]
fn prototypes_score_against_unit_norm_weights() {
    let (mut store, model) = small_model(true);
    let dev = Cpu::default();
    let x = dev.tensor_from_vec(Init::new(4).normal(2 * 3 * 64, 1.0), (2, 3, 8, 8));
    let p = model.prototypes.as_ref().unwrap();
    let z = model.project(&mut store, x.clone(), false).unwrap();
    let scores = p.forward(&store, z.clone()).unwrap();
    assert_eq!(*scores.shape(), (2, 7));
    // Scores are dot products with unit-norm prototypes.
    p.normalize_weights(&mut store);
    let w = store.data(store.id("prototypes.weight").unwrap());
    for row in w.chunks(5) {
        let n: f32 = row.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((n - 1.0).abs() < 1e-5);
    }
    let zv = z.as_vec();
    let sv = scores.as_vec();
    for i in 0..2 {
        for k in 0..7 {
            let dot: f32 = (0..5).map(|j| zv[i * 5 + j] * w[k * 5 + j]).sum();
            assert!((dot - sv[i * 7 + k]).abs() < 1e-4);
        }
    }
}

#[test]
fn shape_errors_are_errors() {
    // A 3-channel model fed 1 channel.
    let (mut store, model) = small_model(false);
    let dev = Cpu::default();
    let x: Tensor<(usize, usize, usize, usize), f32, Cpu> = dev.zeros_like(&(2, 1, 8, 8));
    assert!(matches!(
        model.project(&mut store, x, true),
        Err(ModelError::InputShape { .. })
    ));
    // A head whose declared input does not match the backbone.
    let mut cfg = resnet(18, Stem::Cifar, 0.125, 3, 32);
    cfg.head = Some(HeadConfig {
        in_dim: Some(512),
        hidden: vec![],
        out_dim: 16,
        batch_norm: false,
        last_bn: false,
    });
    let err = Model::new(&mut ParamStore::new(Cpu::default()), &cfg, 0).unwrap_err();
    assert_eq!(
        err,
        ModelError::DimMismatch {
            part: "projection head".into(),
            expected: 512,
            found: 64
        }
    );
    // Prototypes declared for another size.
    let mut cfg = resnet(18, Stem::Cifar, 0.125, 3, 32);
    cfg.prototypes = Some(PrototypesConfig {
        count: 3,
        dim: Some(10),
    });
    assert!(matches!(
        Model::new(&mut ParamStore::new(Cpu::default()), &cfg, 0),
        Err(ModelError::DimMismatch { .. })
    ));
    // CIFAR ResNet-18 halves the map three times: 4x4 reaches layer4 at 1x1.
    let err = Model::new(
        &mut ParamStore::new(Cpu::default()),
        &resnet(18, Stem::Cifar, 0.125, 3, 4),
        0,
    )
    .unwrap_err();
    assert!(
        matches!(&err, ModelError::InputTooSmall { layer, .. } if layer == "layer4.0.conv1"),
        "{err}"
    );
    assert!(
        Model::new(
            &mut ParamStore::new(Cpu::default()),
            &resnet(18, Stem::Cifar, 0.125, 3, 8),
            0
        )
        .is_ok()
    );
    let cfg = ModelConfig {
        backbone: BackboneConfig {
            kind: BackboneKind::ResNet(ResNetSpec {
                stem: Stem::Cifar,
                stem_width: 4,
                stages: vec![recipe::nn::Stage {
                    width: 4,
                    stride: 2,
                    blocks: 1,
                }],
                bottleneck: false,
            }),
            in_channels: 3,
        },
        head: None,
        prototypes: None,
        predictor: None,
        last_layer: None,
        input_hw: (0, 0),
    };
    let err = Model::new(&mut ParamStore::new(Cpu::default()), &cfg, 0).unwrap_err();
    assert!(matches!(err, ModelError::InputTooSmall { .. }), "{err}");
    assert!(err.to_string().contains("input too small"));
    assert!(matches!(
        ResNetSpec::standard(20, Stem::Cifar, 1.0),
        Err(ModelError::Config(_))
    ));
}

#[test]
fn summary_counts_params_and_flops() {
    let mut store = ParamStore::new(Cpu::default());
    let model = Model::new(&mut store, &resnet(18, Stem::Cifar, 1.0, 3, 32), 0).unwrap();
    let s = model.summary(64).unwrap();
    assert_eq!(s.total_params, store.num_params());
    let conv1 = &s.layers[0];
    assert_eq!(conv1.name, "conv1");
    assert_eq!(conv1.out_shape, vec![64, 32, 32]);
    assert_eq!(conv1.flops, 2 * 27 * 64 * 32 * 32);
    // CIFAR ResNet-18 forward is ~0.56 GMACs per 32x32 image.
    let per_image = s.forward_flops as f64 / 64.0;
    assert!((1.0e9..1.2e9).contains(&per_image), "{per_image}");
    assert_eq!(s.train_step_flops, 3 * s.forward_flops);
    assert_eq!(s.layers.last().unwrap().out_shape, vec![512]);
    let text = s.to_string();
    assert!(text.contains("layer4.1.conv2") && text.contains("peak activation memory"));
}

#[test]
fn summary_names_head_layers_by_their_sequential_slot() {
    let (store, model) = small_model(false);
    let s = model.summary(2).unwrap();
    let head: Vec<(&str, &str)> = s
        .layers
        .iter()
        .filter(|l| l.name.starts_with("projector"))
        .map(|l| (l.name.as_str(), l.kind))
        .collect();
    assert_eq!(
        head,
        [
            ("projector.0", "linear"),
            ("projector.1", "batch_norm"),
            ("projector.2", "relu"),
            ("projector.3", "linear"),
        ]
    );
    // The parameters use the same slots.
    assert!(store.id("projector.3.weight").is_some());
}

/// The feature-map picture and the features come from the same walk: each family
/// names its stages, and the last stage's maps averaged are exactly the features.
#[test]
fn stage_outputs_are_the_walk_that_gives_the_features() {
    type Stages = &'static [(&'static str, [usize; 3])];
    let cases: [(BackboneKind, usize, Stages, &str); 3] = [
        (
            BackboneKind::ResNet(ResNetSpec::standard(18, Stem::ImageNet, 0.125).unwrap()),
            32,
            &[
                ("stem", [8, 8, 8]),
                ("layer1", [8, 8, 8]),
                ("layer2", [16, 4, 4]),
                ("layer3", [32, 2, 2]),
                ("layer4", [64, 1, 1]),
            ],
            "conv1.weight",
        ),
        (
            BackboneKind::ResNet(ResNetSpec::small(4)),
            8,
            &[
                ("stem", [4, 8, 8]),
                ("layer1", [4, 8, 8]),
                ("layer2", [8, 4, 4]),
            ],
            "conv1.weight",
        ),
        (
            BackboneKind::SmallCnn {
                channels: vec![4, 6],
            },
            8,
            &[("layer1", [4, 8, 8]), ("layer2", [6, 4, 4])],
            "features.0.weight",
        ),
    ];
    let dev = Cpu::default();
    for (kind, hw, stages, first) in cases {
        let cfg = ModelConfig {
            backbone: BackboneConfig {
                kind,
                in_channels: 3,
            },
            head: None,
            prototypes: None,
            predictor: None,
            last_layer: None,
            input_hw: (hw, hw),
        };
        let mut store = ParamStore::new(dev.clone());
        let model = Model::new(&mut store, &cfg, 2).unwrap();
        assert_eq!(model.backbone.first_conv_weight_name(), first);
        let x = dev.tensor_from_vec(Init::new(6).normal(2 * 3 * hw * hw, 1.0), (2, 3, hw, hw));
        let out = model.backbone.stage_outputs(&mut store, x.clone()).unwrap();
        let got: Vec<(&str, [usize; 3])> = out
            .iter()
            .map(|(n, t)| {
                let s = *t.shape();
                assert_eq!(s.0, 2);
                (n.as_str(), [s.1, s.2, s.3])
            })
            .collect();
        assert_eq!(got, stages);
        let last = out.last().unwrap().1.clone();
        let pooled = <Cpu as EngineDevice>::global_avg_pool(last).as_vec();
        let features = model.features(&mut store, x, false).unwrap().as_vec();
        assert_eq!(pooled, features);
    }
}
