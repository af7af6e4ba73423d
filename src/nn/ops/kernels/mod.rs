//! Inner loops of the CPU kernels, written so LLVM vectorises them, and compiled
//! three times: for the build target, with AVX2+FMA, and with AVX-512, the best one
//! the CPU has picked at run time (the release binary stays portable).
//!
//! Reductions keep 16 independent lanes: a single `f32` accumulator is a serial
//! dependency chain that LLVM may not reorder, which made batch norm run at about
//! one element per 1.3 ns.

use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicU8, Ordering};

/// 0: not yet detected, 1: AVX-512 (and AVX2) paths on, 2: portable paths only,
/// 3: AVX2+FMA paths on, AVX-512 off.
static MODE: AtomicU8 = AtomicU8::new(0);

fn mode() -> u8 {
    match MODE.load(Ordering::Relaxed) {
        0 => {
            let m = detect();
            MODE.store(m, Ordering::Relaxed);
            m
        }
        m => m,
    }
}

/// Whether the AVX-512 paths are on: the CPU has AVX-512F (checked once), unless
/// `RECIPE_NO_AVX512=1`, [`use_avx2`] or [`use_portable`] turned them off.
pub(crate) fn avx512() -> bool {
    mode() == 1
}

/// Whether the AVX2+FMA paths are on and the AVX-512 ones off (the hand-written
/// AVX2 products serve every convolution then). `RECIPE_NO_AVX2=1` or
/// [`use_portable`] turns them off.
pub(crate) fn avx2() -> bool {
    mode() == 3
}

fn detect() -> u8 {
    let off = |var: &str| std::env::var_os(var).is_some_and(|v| v != "0");
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        let fma = has!("fma") && has!("avx2");
        if !off("RECIPE_NO_AVX512") && fma && has!("avx512f") && has!("avx512vl") {
            return 1;
        }
        if !off("RECIPE_NO_AVX2") && fma {
            return 3;
        }
    }
    let _ = off;
    2
}

/// Which product family serves one convolution (see `cpu::conv::ConvDims::own`):
/// one of the project's own (hand-written) ones, or the `gemm` crate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Own {
    /// The `gemm` crate (no hand-written product).
    Gemm,
    /// The AVX-512 products of [`x86`].
    Avx512,
    /// The AVX2 products of [`avx2`].
    Avx2,
}

impl Own {
    /// Whether a hand-written product serves the call.
    pub(crate) fn hand_written(self) -> bool {
        self != Own::Gemm
    }
}

/// Whether the AVX2 products serve the many-channel convolutions while the
/// AVX-512 paths are on: 0 not yet decided, 1 yes, 2 no.
static SPLIT: AtomicU8 = AtomicU8::new(0);

/// Whether the AVX2 products ([`avx2`]) may serve convolutions: with the AVX2
/// paths on, and with the AVX-512 ones on where the CPU executes a 512-bit
/// multiply-add as two 256-bit halves (AMD Zen 4). There AVX-512 brings no extra
/// flops, and the AVX2 products' compact form (no flop on a discarded grid
/// position) ran ResNet-18's convolutions at 83–87% of the matmul rate against the
/// `gemm` crate's 76–78% (`conv_speed`, 2 threads). `RECIPE_AVX2_PRODUCTS=1` or
/// `0` overrides the CPU check.
pub(crate) fn avx2_products() -> bool {
    match mode() {
        3 => true,
        1 => match SPLIT.load(Ordering::Relaxed) {
            0 => {
                let on = match std::env::var("RECIPE_AVX2_PRODUCTS") {
                    Ok(v) => v != "0",
                    Err(_) => half_width_avx512(),
                };
                SPLIT.store(if on { 1 } else { 2 }, Ordering::Relaxed);
                on
            }
            v => v == 1,
        },
        _ => false,
    }
}

/// AMD family 19h (Zen 3 and Zen 4; only Zen 4 has AVX-512), whose AVX-512
/// units are 256 bits wide.
fn half_width_avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::__cpuid;
        // SAFETY: every x86-64 CPU has `cpuid` with leaves 0 and 1.
        #[allow(unused_unsafe)]
        let (v, f) = unsafe { (__cpuid(0), __cpuid(1).eax) };
        // "AuthenticAMD" in ebx, edx, ecx.
        let amd = (v.ebx, v.edx, v.ecx) == (0x6874_7541, 0x6974_6e65, 0x444d_4163);
        let base = (f >> 8) & 0xf;
        let family = base + if base == 0xf { (f >> 20) & 0xff } else { 0 };
        amd && family == 0x19
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Keeps the AVX-512 paths on (where the CPU has them) and lets the AVX2 products
/// serve the many-channel convolutions (`split`, as on AMD Zen 4) or not (as on
/// other AVX-512 CPUs), whatever the CPU.
pub(crate) fn use_avx512(split: bool) {
    MODE.store(0, Ordering::Relaxed);
    SPLIT.store(if split { 1 } else { 2 }, Ordering::Relaxed);
}

/// Turns the AVX-512 and AVX2 paths off for the rest of the process.
pub(crate) fn use_portable() {
    MODE.store(2, Ordering::Relaxed);
}

/// Turns the AVX-512 paths off for the rest of the process, keeping the AVX2 ones
/// where the CPU has AVX2+FMA (else the portable ones).
pub(crate) fn use_avx2() {
    #[cfg(target_arch = "x86_64")]
    let fma =
        std::arch::is_x86_feature_detected!("fma") && std::arch::is_x86_feature_detected!("avx2");
    #[cfg(not(target_arch = "x86_64"))]
    let fma = false;
    MODE.store(if fma { 3 } else { 2 }, Ordering::Relaxed);
}

/// Defines `fn name(args) -> ret` whose body is compiled for the target and, on
/// x86-64, again with AVX2+FMA and with AVX-512; the call picks the best one on.
macro_rules! multiversion {
    ($(#[$m:meta])* $vis:vis fn $name:ident($($arg:ident : $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$m])*
        #[allow(clippy::too_many_arguments)]
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            #[allow(clippy::too_many_arguments)]
            fn inner($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn v4($($arg: $ty),*) $(-> $ret)? {
                    inner($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn v3($($arg: $ty),*) $(-> $ret)? {
                    inner($($arg),*)
                }
                if $crate::nn::ops::kernels::avx512() {
                    // SAFETY: `avx512()` checked that the CPU has these features.
                    return unsafe { v4($($arg),*) };
                }
                if $crate::nn::ops::kernels::avx2() {
                    // SAFETY: `avx2()` checked that the CPU has these features.
                    return unsafe { v3($($arg),*) };
                }
            }
            inner($($arg),*)
        }
    };
}
#[allow(unused_imports)]
pub(crate) use multiversion;

/// Lanes of the vectorised reductions (one AVX-512 register of `f32`).
const L: usize = 16;

fn hsum(v: &[f32; L]) -> f32 {
    // Pairwise, so the result does not depend on summation order quirks.
    let mut w = *v;
    let mut n = L;
    while n > 1 {
        n /= 2;
        for i in 0..n {
            w[i] += w[i + n];
        }
    }
    w[0]
}

multiversion! {
    /// `(Σ (x − k), Σ (x − k)²)` over one plane; the shift `k` keeps the one-pass
    /// variance accurate when the mean is large against the spread.
    pub(crate) fn moments(p: &[f32], k: f32) -> (f32, f32) {
        #[cfg(target_arch = "x86_64")]
        if avx512() {
            // SAFETY: AVX-512 is present.
            return unsafe { x86::moments(p, k) };
        }
        #[cfg(target_arch = "x86_64")]
        if avx2() {
            // SAFETY: AVX2 and FMA are present.
            return unsafe { avx2::moments(p, k) };
        }
        let (mut s, mut q) = ([0.0f32; L], [0.0f32; L]);
        let mut it = p.chunks_exact(L);
        for ch in &mut it {
            let ch: &[f32; L] = ch.try_into().expect("chunk of L");
            for j in 0..L {
                let d = ch[j] - k;
                s[j] += d;
                q[j] += d * d;
            }
        }
        let (mut ss, mut qq) = (hsum(&s), hsum(&q));
        for &v in it.remainder() {
            let d = v - k;
            ss += d;
            qq += d * d;
        }
        (ss, qq)
    }
}

/// `g` where the fused ReLU passed its input (`x·s + t > 0`), else 0; without a
/// ReLU, `g`. A select, not a branch, so loops over it vectorise.
#[inline(always)]
fn relu_gate<const RELU: bool>(g: f32, x: f32, s: f32, t: f32) -> f32 {
    if RELU && x * s + t <= 0.0 { 0.0 } else { g }
}

#[inline(always)]
fn grad_sums<const RELU: bool>(x: &[f32], gy: &[f32], mean: f32, s: f32, t: f32) -> (f32, f32) {
    let (mut a, mut b) = ([0.0f32; L], [0.0f32; L]);
    let mut xi = x.chunks_exact(L);
    let mut gi = gy.chunks_exact(L);
    for (xc, gc) in (&mut xi).zip(&mut gi) {
        let xc: &[f32; L] = xc.try_into().expect("chunk of L");
        let gc: &[f32; L] = gc.try_into().expect("chunk of L");
        for j in 0..L {
            let g = relu_gate::<RELU>(gc[j], xc[j], s, t);
            a[j] += g;
            b[j] += g * (xc[j] - mean);
        }
    }
    let (mut sa, mut sb) = (hsum(&a), hsum(&b));
    for (&x, &g) in xi.remainder().iter().zip(gi.remainder()) {
        let g = relu_gate::<RELU>(g, x, s, t);
        sa += g;
        sb += g * (x - mean);
    }
    (sa, sb)
}

multiversion! {
    /// Batch-norm backward sums over one plane: `(Σ g, Σ g·(x − mean))`, where `g`
    /// is the output gradient, zeroed where a fused ReLU clipped (`x·s + t ≤ 0`).
    pub(crate) fn bn_grad_sums(x: &[f32], gy: &[f32], mean: f32, s: f32, t: f32, relu: bool) -> (f32, f32) {
        #[cfg(target_arch = "x86_64")]
        if avx512() {
            // SAFETY: AVX-512 is present.
            return unsafe { x86::grad_sums(x, gy, mean, s, t, relu) };
        }
        #[cfg(target_arch = "x86_64")]
        if avx2() {
            // SAFETY: AVX2 and FMA are present.
            return unsafe { avx2::grad_sums(x, gy, mean, s, t, relu) };
        }
        if relu {
            grad_sums::<true>(x, gy, mean, s, t)
        } else {
            grad_sums::<false>(x, gy, mean, s, t)
        }
    }
}

#[inline(always)]
fn grad_input<const RELU: bool>(
    gx: &mut [f32],
    x: &[f32],
    gy: &[f32],
    (c0, c1): (f32, f32),
    s: f32,
    t: f32,
) {
    for ((o, &x), &g) in gx.iter_mut().zip(x).zip(gy) {
        *o += s * relu_gate::<RELU>(g, x, s, t) + c0 + c1 * x;
    }
}

multiversion! {
    /// `gx += s·g + c0 + c1·x`, with `g` masked as in [`bn_grad_sums`] and `s` the
    /// channel's forward scale.
    pub(crate) fn bn_grad_input(gx: &mut [f32], x: &[f32], gy: &[f32], c: (f32, f32), s: f32, t: f32, relu: bool) {
        if relu {
            grad_input::<true>(gx, x, gy, c, s, t);
        } else {
            grad_input::<false>(gx, x, gy, c, s, t);
        }
    }
}

multiversion! {
    /// `y = x·s + t` (then `max(·, 0)` when `relu`) into uninitialised storage;
    /// writes every element of `y` (panics when the lengths differ).
    pub(crate) fn affine_into(x: &[f32], y: &mut [MaybeUninit<f32>], s: f32, t: f32, relu: bool) {
        assert_eq!(x.len(), y.len());
        if relu {
            for (y, x) in y.iter_mut().zip(x) {
                y.write((x * s + t).max(0.0));
            }
        } else {
            for (y, x) in y.iter_mut().zip(x) {
                y.write(x * s + t);
            }
        }
    }
}

multiversion! {
    /// `y = max(a + b, 0)` into uninitialised storage, recording where the result is
    /// positive; writes every element of `y` (panics when the lengths differ).
    pub(crate) fn add_relu_into(a: &[f32], b: &[f32], y: &mut [MaybeUninit<f32>], mask: &mut [bool]) {
        assert!(a.len() == y.len() && b.len() == y.len() && mask.len() == y.len());
        for (((y, a), b), m) in y.iter_mut().zip(a).zip(b).zip(mask) {
            let v = (a + b).max(0.0);
            y.write(v);
            *m = v > 0.0;
        }
    }
}

multiversion! {
    /// `ga += g`, `gb += g` where `mask`, for the residual join's backward.
    pub(crate) fn add_relu_bwd(ga: &mut [f32], gb: &mut [f32], gy: &[f32], mask: &[bool]) {
        for (((a, b), &g), &m) in ga.iter_mut().zip(gb.iter_mut()).zip(gy).zip(mask) {
            let g = if m { g } else { 0.0 };
            // (a select: the loop vectorises)
            *a += g;
            *b += g;
        }
    }
}

multiversion! {
    /// `dst += src`.
    pub(crate) fn add_to(dst: &mut [f32], src: &[f32]) {
        for (d, s) in dst.iter_mut().zip(src) {
            *d += s;
        }
    }
}

multiversion! {
    /// Sum of a slice in 16 lanes.
    pub(crate) fn sum(p: &[f32]) -> f32 {
        #[cfg(target_arch = "x86_64")]
        if avx512() {
            // SAFETY: AVX-512 is present.
            return unsafe { x86::moments(p, 0.0).0 };
        }
        #[cfg(target_arch = "x86_64")]
        if avx2() {
            // SAFETY: AVX2 and FMA are present.
            return unsafe { avx2::moments(p, 0.0).0 };
        }
        let mut s = [0.0f32; L];
        let mut it = p.chunks_exact(L);
        for ch in &mut it {
            let ch: &[f32; L] = ch.try_into().expect("chunk of L");
            for j in 0..L {
                s[j] += ch[j];
            }
        }
        hsum(&s) + it.remainder().iter().sum::<f32>()
    }
}

/// Hand-written AVX-512 products and reductions.
#[cfg(target_arch = "x86_64")]
pub(crate) mod x86;

/// Hand-written AVX2+FMA product and reductions.
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2;
