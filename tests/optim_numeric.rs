//! Optimiser updates and schedules checked against values worked out by hand.

use dfdx::prelude::*;
use recipe::nn::params::{ParamStore, Role};
use recipe::optim::schedule::{
    Decay, LrScaling, Schedule, ScheduleConfig, ScheduleError, Warmup, WarmupLength,
};
use recipe::optim::{
    AdamWConfig, LarsConfig, OptimError, Optimizer, OptimizerConfig, SgdConfig, StateTensor,
};

type Store = ParamStore<Cpu>;

/// Gradients in which entry `name` has gradient `g`, produced by a real backward pass of
/// `loss = Σ_name Σ_i p_i · g_i` (so ∂loss/∂p = g).
fn grads_for(store: &Store, wanted: &[(&str, Vec<f32>)]) -> Gradients<f32, Cpu> {
    let dev = store.device().clone();
    let mut grads = Gradients::leaky();
    for (name, g) in wanted {
        let e = store.get(store.id(name).unwrap());
        let c = dev.tensor_from_vec(g.clone(), (g.len(),));
        let loss = (e.tensor.clone().traced(grads) * c).sum::<Rank0, _>();
        grads = loss.backward();
    }
    grads
}

fn values(store: &Store, name: &str) -> Vec<f32> {
    store.data(store.id(name).unwrap())
}

#[track_caller]
fn close(got: &[f32], want: &[f64]) {
    assert_eq!(got.len(), want.len(), "got {got:?}, want {want:?}");
    for (g, w) in got.iter().zip(want) {
        assert!(
            (*g as f64 - w).abs() <= 1e-6 * (1.0 + w.abs()),
            "got {got:?}, want {want:?}"
        );
    }
}

/// A weight (decayed), a bias (not decayed), a frozen weight and a buffer.
fn store() -> Store {
    let mut s = ParamStore::new(Cpu::default());
    s.add("fc.weight", &[1, 2], vec![1.0, 2.0], Role::Weight)
        .unwrap();
    s.add("fc.bias", &[1], vec![0.5], Role::Bias).unwrap();
    let f = s
        .add("frozen.weight", &[1], vec![7.0], Role::Weight)
        .unwrap();
    s.get_mut(f).trainable = false;
    s.add("bn.running_mean", &[1], vec![3.0], Role::Buffer)
        .unwrap();
    s
}

/// A fresh optimiser; `fused` picks the fused CPU kernel or the device-generic
/// tensor-op form, and every hand-computed case below runs in both.
fn make(cfg: OptimizerConfig, fused: bool) -> Optimizer<Cpu> {
    let mut opt = Optimizer::new(cfg).unwrap();
    opt.set_fused(fused);
    opt
}

macro_rules! both_forms {
    ($($name:ident),*) => {
        mod fused {
            $(#[test] fn $name() { super::$name(true) })*
        }
        mod generic {
            $(#[test] fn $name() { super::$name(false) })*
        }
    };
}

both_forms!(
    sgd_momentum_with_coupled_weight_decay,
    sgd_nesterov,
    sgd_without_momentum_and_missing_gradient_is_zero,
    lars_trust_ratio_decay_and_exclusion,
    lars_clip_and_zero_norm,
    adamw_bias_correction_and_decoupled_decay
);

fn step(opt: &mut Optimizer<Cpu>, s: &mut Store, g: &[(&str, Vec<f32>)], lr: f64) {
    let mut grads = grads_for(s, g);
    opt.step(s, &mut grads, lr).unwrap();
}

fn sgd_momentum_with_coupled_weight_decay(fused: bool) {
    let mut s = store();
    let mut opt = make(
        OptimizerConfig::Sgd(SgdConfig {
            momentum: 0.9,
            nesterov: false,
            weight_decay: 0.01,
        }),
        fused,
    );
    let g = [("fc.weight", vec![0.5, -1.0]), ("fc.bias", vec![0.2])];
    // Step 1, lr 0.1. Weight: g' = g + 0.01·w = [0.51, -0.98]; buf = g';
    // w = [1, 2] - 0.1·g' = [0.949, 2.098]. Bias (no decay): buf = 0.2; b = 0.5 - 0.02.
    step(&mut opt, &mut s, &g, 0.1);
    close(&values(&s, "fc.weight"), &[0.949, 2.098]);
    close(&values(&s, "fc.bias"), &[0.48]);
    // Step 2. Weight: g' = [0.5 + 0.00949, -1 + 0.02098] = [0.50949, -0.97902];
    // buf = 0.9·[0.51, -0.98] + g' = [0.96849, -1.86102]; w = [0.949 - 0.096849,
    // 2.098 + 0.186102]. Bias: buf = 0.9·0.2 + 0.2 = 0.38; b = 0.48 - 0.038.
    step(&mut opt, &mut s, &g, 0.1);
    close(&values(&s, "fc.weight"), &[0.852151, 2.284102]);
    close(&values(&s, "fc.bias"), &[0.442]);
    // Frozen weights and buffers never move.
    close(&values(&s, "frozen.weight"), &[7.0]);
    close(&values(&s, "bn.running_mean"), &[3.0]);
    assert_eq!(opt.steps_taken(), 2);
}

fn sgd_nesterov(fused: bool) {
    let mut s = store();
    let mut opt = make(
        OptimizerConfig::Sgd(SgdConfig {
            momentum: 0.9,
            nesterov: true,
            weight_decay: 0.0,
        }),
        fused,
    );
    let g = [("fc.bias", vec![1.0])];
    // Step 1: buf = 1; d = g + 0.9·buf = 1.9; b = 0.5 - 0.1·1.9 = 0.31.
    step(&mut opt, &mut s, &g, 0.1);
    close(&values(&s, "fc.bias"), &[0.31]);
    // Step 2: buf = 0.9·1 + 1 = 1.9; d = 1 + 0.9·1.9 = 2.71; b = 0.31 - 0.271 = 0.039.
    step(&mut opt, &mut s, &g, 0.1);
    close(&values(&s, "fc.bias"), &[0.039]);
}

fn sgd_without_momentum_and_missing_gradient_is_zero(fused: bool) {
    let mut s = store();
    let mut opt = make(
        OptimizerConfig::Sgd(SgdConfig {
            momentum: 0.0,
            nesterov: false,
            weight_decay: 0.5,
        }),
        fused,
    );
    // Only the bias has a gradient; the weight's is zero, so only decay moves it:
    // w = w - 0.1·(0 + 0.5·w) = 0.95·w. Bias: b = 0.5 - 0.1·2 = 0.3.
    step(&mut opt, &mut s, &[("fc.bias", vec![2.0])], 0.1);
    close(&values(&s, "fc.weight"), &[0.95, 1.9]);
    close(&values(&s, "fc.bias"), &[0.3]);
    assert!(opt.state(&s).tensors.is_empty(), "no momentum, no state");
}

fn lars_trust_ratio_decay_and_exclusion(fused: bool) {
    let mut s = ParamStore::new(Cpu::default());
    s.add("conv.weight", &[2], vec![3.0, 4.0], Role::Weight)
        .unwrap();
    s.add("bn.bias", &[1], vec![2.0], Role::NormBias).unwrap();
    let mut opt = make(
        OptimizerConfig::Lars(LarsConfig {
            momentum: 0.9,
            nesterov: false,
            weight_decay: 0.1,
            eta: 1e-3,
            eps: 1e-8,
            clip_lr: false,
        }),
        fused,
    );
    let g = [("conv.weight", vec![0.6, 0.8]), ("bn.bias", vec![0.5])];
    // Step 1, lr 1. ‖w‖ = 5, ‖g‖ = 1: t = 1e-3·5 / (1 + 0.1·5 + 1e-8) = 0.00333333;
    // d = t·(g + 0.1·w) = t·[0.9, 1.2] = [0.003, 0.004]; buf = d; w = [2.997, 3.996].
    // bn.bias is excluded (decay flag clear): d = g = 0.5, b = 2 - 0.5 = 1.5.
    step(&mut opt, &mut s, &g, 1.0);
    close(&values(&s, "conv.weight"), &[2.997, 3.996]);
    close(&values(&s, "bn.bias"), &[1.5]);
    // Step 2: ‖w‖ = 4.995, t = 1e-3·4.995 / (1 + 0.4995) = 0.00333111;
    // d = t·[0.6 + 0.2997, 0.8 + 0.3996] = [0.00299701, 0.00399601];
    // buf = 0.9·[0.003, 0.004] + d = [0.00569701, 0.00759601]; w = w - buf.
    // Bias: buf = 0.9·0.5 + 0.5 = 0.95; b = 1.5 - 0.95 = 0.55.
    step(&mut opt, &mut s, &g, 1.0);
    close(&values(&s, "conv.weight"), &[2.991303, 3.988404]);
    close(&values(&s, "bn.bias"), &[0.55]);
}

fn lars_clip_and_zero_norm(fused: bool) {
    let mut s = ParamStore::new(Cpu::default());
    s.add("a.weight", &[2], vec![3.0, 4.0], Role::Weight)
        .unwrap();
    s.add("z.weight", &[2], vec![0.0, 0.0], Role::Weight)
        .unwrap();
    let mut opt = make(
        OptimizerConfig::Lars(LarsConfig {
            momentum: 0.0,
            nesterov: false,
            weight_decay: 0.1,
            eta: 1e-3,
            eps: 0.0,
            clip_lr: true,
        }),
        fused,
    );
    let g = [("a.weight", vec![0.6, 0.8]), ("z.weight", vec![1.0, -2.0])];
    // a: t = 1e-3·5 / 1.5 = 0.0033333; clipped: min(t / 0.001, 1) = 1;
    // d = g + 0.1·w = [0.9, 1.2]; w = [3 - 0.0009, 4 - 0.0012].
    // z: ‖w‖ = 0, so no adaptation and no decay: w = 0 - 0.001·g.
    step(&mut opt, &mut s, &g, 0.001);
    close(&values(&s, "a.weight"), &[2.9991, 3.9988]);
    close(&values(&s, "z.weight"), &[-0.001, 0.002]);
    // With lr 1 the clipped ratio is t / 1 = 1e-3·‖w‖/(‖g‖ + 0.1‖w‖) < 1, i.e. unclipped:
    // ‖w‖ = 4.99850, t = 0.004998500/1.4998500 = 0.00333267;
    // d = t·[0.6 + 0.29991, 0.8 + 0.39988] = [0.0029991, 0.0039988].
    step(&mut opt, &mut s, &g[..1], 1.0);
    close(&values(&s, "a.weight"), &[2.9961009, 3.9948012]);
}

fn adamw_bias_correction_and_decoupled_decay(fused: bool) {
    let mut s = store();
    let mut opt = make(
        OptimizerConfig::AdamW(AdamWConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.1,
        }),
        fused,
    );
    // Step 1, lr 0.1, weight[0] = 1, g = 0.5: decay p = 1·(1 - 0.1·0.1) = 0.99;
    // m = 0.05, v = 0.001·0.25 = 0.00025; m̂ = 0.05/0.1 = 0.5, v̂ = 0.00025/0.001 = 0.25;
    // p = 0.99 - 0.1·0.5/(0.5 + 1e-8) = 0.89. (Without bias correction the step would
    // be 0.1·0.05/√0.00025 = 0.316.) Bias (no decay), g = 0.5: b = 0.5 - 0.1 = 0.4.
    step(
        &mut opt,
        &mut s,
        &[("fc.weight", vec![0.5, 0.0]), ("fc.bias", vec![0.5])],
        0.1,
    );
    // weight[1] has g = 0: only the decay moves it, 2·0.99 = 1.98 (m = v = 0, 0/(0+ε)).
    close(&values(&s, "fc.weight"), &[0.89, 1.98]);
    close(&values(&s, "fc.bias"), &[0.4]);
    // Step 2, g = -1: p = 0.89·0.99 = 0.8811; m = 0.045 - 0.1 = -0.055;
    // v = 0.999·0.00025 + 0.001 = 0.00124975; bc1 = 1 - 0.81 = 0.19,
    // bc2 = 1 - 0.999² = 0.001999; m̂ = -0.289474, √v̂ = √0.625188 = 0.790688;
    // p = 0.8811 + 0.1·0.289474/0.790688 = 0.917710.
    step(
        &mut opt,
        &mut s,
        &[("fc.weight", vec![-1.0, 0.0]), ("fc.bias", vec![0.5])],
        0.1,
    );
    close(&values(&s, "fc.weight"), &[0.9177104, 1.9602]);
    // Bias: constant gradient gives m̂/√v̂ = 1, b = 0.4 - 0.1 = 0.3.
    close(&values(&s, "fc.bias"), &[0.3]);
    close(&values(&s, "frozen.weight"), &[7.0]);
    close(&values(&s, "bn.running_mean"), &[3.0]);
}

#[test]
fn state_round_trip_resumes_exactly() {
    let cfg = OptimizerConfig::AdamW(AdamWConfig::default());
    let g = [("fc.weight", vec![0.3, -0.7]), ("fc.bias", vec![0.1])];
    let mut s1 = store();
    let mut a = Optimizer::new(cfg).unwrap();
    step(&mut a, &mut s1, &g, 0.01);
    let saved = a.state(&s1);
    let names: Vec<_> = saved.tensors.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "fc.weight.exp_avg",
            "fc.weight.exp_avg_sq",
            "fc.bias.exp_avg",
            "fc.bias.exp_avg_sq"
        ]
    );
    assert_eq!(saved.step, 1);
    assert_eq!(saved.tensors[0].shape, vec![1, 2]);

    let mut s2 = s1.clone();
    let mut b = Optimizer::new(cfg).unwrap();
    b.load_state(&s2, &saved).unwrap();
    step(&mut a, &mut s1, &g, 0.01);
    step(&mut b, &mut s2, &g, 0.01);
    assert_eq!(values(&s1, "fc.weight"), values(&s2, "fc.weight"));
    assert_eq!(a.state(&s1), b.state(&s2));
}

#[test]
fn load_state_lists_every_mismatch_and_changes_nothing() {
    let s = store();
    let mut opt = Optimizer::new(OptimizerConfig::Sgd(SgdConfig::default())).unwrap();
    let mut bad = opt.state(&s);
    bad.step = 9;
    bad.tensors[0].shape = vec![2];
    bad.tensors.remove(1);
    bad.tensors.push(StateTensor {
        name: "ghost.momentum_buffer".into(),
        shape: vec![1],
        data: vec![0.0],
    });
    let err = opt.load_state(&s, &bad).unwrap_err();
    let OptimError::State(p) = &err else {
        panic!("{err}")
    };
    assert_eq!(p.len(), 3, "{p:?}");
    let msg = err.to_string();
    assert!(msg.contains("fc.weight.momentum_buffer` has shape [2], expected [1, 2]"));
    assert!(msg.contains("missing `fc.bias.momentum_buffer`"));
    assert!(msg.contains("unexpected `ghost.momentum_buffer`"));
    assert_eq!(opt.steps_taken(), 0);

    bad = opt.state(&s);
    bad.kind = "adamw".into();
    assert!(matches!(
        opt.load_state(&s, &bad),
        Err(OptimError::Kind { .. })
    ));
}

#[test]
fn bad_hyper_parameters_and_lr_are_errors() {
    let err = Optimizer::<Cpu>::new(OptimizerConfig::Sgd(SgdConfig {
        momentum: 0.0,
        nesterov: true,
        weight_decay: -1.0,
    }))
    .unwrap_err();
    let OptimError::Config { problems, .. } = &err else {
        panic!("{err}")
    };
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(
        Optimizer::<Cpu>::new(OptimizerConfig::AdamW(AdamWConfig {
            beta1: 1.0,
            ..AdamWConfig::default()
        }))
        .is_err()
    );
    let mut s = store();
    let mut opt = Optimizer::new(OptimizerConfig::Sgd(SgdConfig::default())).unwrap();
    let mut grads = grads_for(&s, &[]);
    assert!(matches!(
        opt.step(&mut s, &mut grads, f64::NAN),
        Err(OptimError::LearningRate(x)) if x.is_nan()
    ));
    assert_eq!(
        opt.step(&mut s, &mut grads, -0.1),
        Err(OptimError::LearningRate(-0.1))
    );
    assert_eq!(opt.steps_taken(), 0, "a rejected step is not counted");
}

fn sched(warmup: Option<Warmup>, decay: Decay, epochs: u64, spe: u64) -> Schedule {
    Schedule::new(&ScheduleConfig { warmup, decay }, 1.0, epochs, spe).unwrap()
}

#[track_caller]
fn lr_close(got: f64, want: f64) {
    assert!((got - want).abs() < 1e-12, "got {got}, want {want}");
}

#[test]
fn warmup_then_cosine() {
    // 12 epochs × 10 steps: T = 120; warmup 2 epochs = 20 steps from 0.1 to 1.
    let s = sched(
        Some(Warmup {
            length: WarmupLength::Epochs(2.0),
            start_lr: 0.1,
        }),
        Decay::Cosine { final_lr: 0.0 },
        12,
        10,
    );
    assert_eq!((s.warmup_steps(), s.total_steps()), (20, 120));
    lr_close(s.lr(0), 0.1);
    lr_close(s.lr(10), 0.55); // 0.1 + 0.9·10/20
    lr_close(s.lr(19), 0.955); // last warmup step: 0.1 + 0.9·19/20
    lr_close(s.lr(20), 1.0); // end of warmup: the peak
    lr_close(s.lr(70), 0.5); // halfway through the cosine: ½(1 + cos(π/2))
    // last step: ½(1 + cos(0.99π)) = 0.000246719817
    lr_close(s.lr(119), 0.0002467198171342);
    lr_close(s.lr(120), 0.0);
    lr_close(s.lr(10_000), 0.0);
}

#[test]
fn cosine_to_final_lr_with_warmup_in_steps() {
    // T = 4·5 = 20, W = 5 steps from 0; cosine from 1 to 0.2 over 15 steps.
    let s = sched(
        Some(Warmup {
            length: WarmupLength::Steps(5),
            start_lr: 0.0,
        }),
        Decay::Cosine { final_lr: 0.2 },
        4,
        5,
    );
    lr_close(s.lr(0), 0.0);
    lr_close(s.lr(1), 0.2);
    lr_close(s.lr(5), 1.0);
    // s = 10: progress 5/15 = 1/3: 0.2 + 0.8·½(1 + cos(π/3)) = 0.2 + 0.8·0.75 = 0.8
    lr_close(s.lr(10), 0.8);
    lr_close(s.lr(20), 0.2);
}

#[test]
fn constant_and_step() {
    let c = sched(None, Decay::Constant, 3, 7);
    lr_close(c.lr(0), 1.0);
    lr_close(c.lr(20), 1.0);
    // Milestones at epochs 3 and 6 with 4 steps per epoch: ×0.1 from step 12, ×0.01 from 24.
    let s = sched(
        None,
        Decay::Step {
            milestones: vec![3, 6],
            gamma: 0.1,
        },
        8,
        4,
    );
    lr_close(s.lr(0), 1.0);
    lr_close(s.lr(11), 1.0);
    lr_close(s.lr(12), 0.1);
    lr_close(s.lr(23), 0.1);
    lr_close(s.lr(24), 0.01);
    lr_close(s.lr(31), 0.01);
    // Warmup before a step schedule: linear for 2 steps, then the step decay.
    let w = sched(
        Some(Warmup {
            length: WarmupLength::Steps(2),
            start_lr: 0.5,
        }),
        Decay::Step {
            milestones: vec![1],
            gamma: 0.5,
        },
        2,
        4,
    );
    lr_close(w.lr(0), 0.5);
    lr_close(w.lr(1), 0.75);
    lr_close(w.lr(2), 1.0);
    lr_close(w.lr(4), 0.5);
}

#[test]
fn impossible_schedules_list_every_problem() {
    let cfg = ScheduleConfig {
        warmup: Some(Warmup {
            length: WarmupLength::Epochs(5.0),
            start_lr: -1.0,
        }),
        decay: Decay::Step {
            milestones: vec![4, 2, 9],
            gamma: 0.0,
        },
    };
    let Err(ScheduleError::Invalid(p)) = Schedule::new(&cfg, 1.0, 5, 10) else {
        panic!("accepted")
    };
    // start lr, warmup ≥ training, gamma, order, milestone 9 outside 1..5.
    assert_eq!(p.len(), 5, "{p:?}");
    assert!(Schedule::new(&cfg, 1.0, 0, 10).is_err());
}

#[test]
fn lr_scaling_rules() {
    let lin = LrScaling::Linear.apply(0.3, 512).unwrap();
    lr_close(lin.lr, 0.6); // 0.3 × 512/256
    assert_eq!(
        lin.to_string(),
        "lr 0.6 = 0.3 × 512/256 (linear batch-size scaling)"
    );
    lr_close(LrScaling::Sqrt.apply(0.075, 4096).unwrap().lr, 0.3); // 0.075 × √16
    lr_close(LrScaling::Sqrt.apply(1.0, 64).unwrap().lr, 0.5); // √(1/4)
    lr_close(LrScaling::None.apply(0.3, 4096).unwrap().lr, 0.3);
    assert!(LrScaling::Linear.apply(0.3, 0).is_err());
    assert!(LrScaling::Linear.apply(f64::INFINITY, 8).is_err());
}

/// The fused CPU kernel and the device-generic tensor-op form agree over several steps
/// on varied data, for every optimiser and option that changes the arithmetic.
#[test]
fn fused_kernel_matches_tensor_op_form() {
    let configs = [
        OptimizerConfig::Sgd(SgdConfig {
            momentum: 0.9,
            nesterov: true,
            weight_decay: 1e-2,
        }),
        OptimizerConfig::Sgd(SgdConfig {
            momentum: 0.0,
            nesterov: false,
            weight_decay: 1e-2,
        }),
        OptimizerConfig::Lars(LarsConfig {
            weight_decay: 1e-2,
            ..LarsConfig::default()
        }),
        OptimizerConfig::Lars(LarsConfig {
            momentum: 0.5,
            nesterov: true,
            weight_decay: 0.0,
            clip_lr: true,
            ..LarsConfig::default()
        }),
        OptimizerConfig::AdamW(AdamWConfig::default()),
    ];
    // Sizes around the kernel's chunk (2^15) so the parallel split is exercised.
    let n = 40_000;
    let init: Vec<f32> = (0..n)
        .map(|i| ((i * 37 % 101) as f32 - 50.0) / 40.0)
        .collect();
    let grad = |k: usize| -> Vec<f32> {
        (0..n)
            .map(|i| (((i + 7 * k) * 13 % 29) as f32 - 14.0) / 9.0)
            .collect()
    };
    for cfg in configs {
        let mut stores = [0, 1].map(|_| {
            let mut s = ParamStore::new(Cpu::default());
            s.add("big.weight", &[n], init.clone(), Role::Weight)
                .unwrap();
            s.add("big.bias", &[3], vec![0.1, -0.2, 0.3], Role::Bias)
                .unwrap();
            s
        });
        let mut opts = [make(cfg, true), make(cfg, false)];
        for k in 0..4 {
            let lr = 0.05 * (k + 1) as f64;
            for (s, o) in stores.iter_mut().zip(opts.iter_mut()) {
                let g = [("big.weight", grad(k)), ("big.bias", vec![0.5, -1.0, 0.25])];
                step(o, s, &g, lr);
            }
        }
        for name in ["big.weight", "big.bias"] {
            let (a, b) = (values(&stores[0], name), values(&stores[1], name));
            let worst = a
                .iter()
                .zip(&b)
                .map(|(x, y)| (x - y).abs() / (1.0 + y.abs()))
                .fold(0.0f32, f32::max);
            assert!(worst < 1e-5, "{cfg:?} {name}: worst relative gap {worst}");
        }
        assert_eq!(
            opts[0].state(&stores[0]).tensors.len(),
            opts[1].state(&stores[1]).tensors.len()
        );
    }
}
