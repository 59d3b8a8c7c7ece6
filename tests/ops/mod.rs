//! Op parity: every `Backend` op against its plain f64 reference (reference.rs), written once
//! over the public trait and instantiated per backend with [`op_parity_tests!`]:
//!
//! | test file             | backend                                    | runs                    |
//! |-----------------------|--------------------------------------------|-------------------------|
//! | tests/ops_cpu.rs      | `CpuBackend`, 1 and 2 threads              | always                  |
//! | tests/cuda_kernels.rs | `CudaBackend<SimDriver>` (PTX interpreter) | always                  |
//! | tests/cuda_gpu.rs     | `CudaBackend<CudarcDriver>` (a real GPU)   | `--features cuda` + GPU |
//!
//! Each case draws seeded random inputs of awkward sizes (1 row, 3, 17; widths that are not
//! multiples of any tile; K not a multiple of 16; GQA; sliding windows; histories that straddle
//! key blocks), puts them on the backend with `upload` + `embed` (an exact copy), runs the op
//! and reads the result back with `read`. Only trait methods are used, so a new backend gets
//! the whole suite by writing one constructor and one [`Numerics`].
//!
//! Tolerances sit next to the assertions with their justification. Where a backend's numerics
//! legitimately differ (the GPU rounds activations to bf16/f16 for its tensor cores and uses
//! hardware approximations of sin/cos/exp), the tolerance reads the backend's [`Numerics`]
//! instead of being loosened for everyone.
//!
//! Not here: the launch preconditions and helper methods of the CUDA backend alone
//! (cuda_only.rs, instantiated by the two CUDA test files); quantized weights (cuda_quant.rs
//! for the CUDA kernels; the CPU
//! backend's alone, tested per instruction set in tests/matmul.rs).

#![allow(dead_code)]

pub mod cuda_only;
pub mod cuda_quant;
pub mod reference;

use half::{bf16, f16};
use minfer::backend::{AttnParams, Backend, KvShape, MlpActivation, StepLayout};
use minfer::{DType, WeightTensor};

/// Test inputs come from the one shared generator.
pub use crate::common::Rng;

/// What a backend's numerics do differently from plain f32 arithmetic with accurate libm
/// functions, so that each tolerance can say which case it is in.
#[derive(Clone, Copy, Debug)]
pub struct Numerics {
    /// For messages.
    pub name: &'static str,
    /// The dtype `matmul` rounds the activations x to, for a weight of this dtype and a call
    /// of this many rows; None where x is used as f32.
    pub matmul_x: fn(DType, usize) -> Option<DType>,
    /// sin/cos/exp/rsqrt are hardware approximations (PTX `.approx`: ~2^-21 relative) rather
    /// than libm-accurate (within a few ulps of f32).
    pub approx_math: bool,
}

impl Numerics {
    /// The CUDA backend (interpreter and GPU alike): bf16 / f16 matmuls of more than 4 rows
    /// (`MATVEC_MAX_ROWS`) run on the tensor-core GEMM, which rounds x to the weight's dtype
    /// (f16 saturating at ±65504); every kernel uses the `.approx` transcendentals.
    pub const CUDA: Numerics = Numerics {
        name: "cuda",
        matmul_x: |dtype, rows| {
            (matches!(dtype, DType::BF16 | DType::F16) && rows > 4).then_some(dtype)
        },
        approx_math: true,
    };

    /// The CPU backend: f32 arithmetic throughout, libm-accurate sin/cos and an exp within 2
    /// ulps; bf16 weights widen exactly, unless the process opted in to AVX-512 BF16 dot
    /// products (`MINFER_BF16_DOT=1` on a CPU that has them), which round x to bf16 for calls
    /// of more than one row.
    pub fn cpu() -> Numerics {
        let bf16_dot = minfer::internals::simd::kernels().has_bf16_dot();
        Numerics {
            name: if bf16_dot { "cpu (bf16 dot)" } else { "cpu" },
            matmul_x: if bf16_dot {
                |dtype, rows| (dtype == DType::BF16 && rows > 1).then_some(DType::BF16)
            } else {
                |_, _| None
            },
            approx_math: false,
        }
    }
}

/// Instantiate every generic case as a `#[test]` in the calling module. `$make` is evaluated
/// per test and gives `Option<(backend, Numerics)>`; None means the backend is unavailable
/// here, and `$make` has printed why (never a silent pass).
macro_rules! op_parity_tests {
    ($make:expr) => {
        $crate::ops::op_parity_tests!(@cases $make;
            embed,
            rms_norm,
            add_rms_norm,
            head_rms_norm,
            rope,
            matvec,
            gemm,
            matmul_large,
            silu_mul_add,
            fused_outputs,
            copy_rows,
            argmax,
            attention,
            attention_splits,
            attention_blocks,
            bad_arguments,
        );
    };
    (@cases $make:expr; $($case:ident),* $(,)?) => {
        $(
            #[test]
            fn $case() {
                if let Some((backend, numerics)) = $make {
                    $crate::ops::$case(&backend, &numerics);
                }
            }
        )*
    };
}
pub(crate) use op_parity_tests;

// ---------------------------------------------------------------- moving values (exact)

/// `rows` rows of `width` host values in a fresh activation buffer: `embed` of a `rows`-row
/// f32 table, which every backend copies exactly.
pub fn upload_rows<B: Backend>(b: &B, v: &[f32], rows: usize, width: usize) -> B::Buf {
    assert_eq!(v.len(), rows * width);
    let table = b
        .upload(&WeightTensor::from_f32("values", vec![rows, width], v))
        .expect("upload table");
    let mut out = b.alloc(rows * width).expect("alloc");
    let ids: Vec<u32> = (0..rows as u32).collect();
    b.embed(&mut out, &table, &ids).expect("embed copy");
    out
}

/// One row of values (see [`upload_rows`]).
pub fn upload_buf<B: Backend>(b: &B, v: &[f32]) -> B::Buf {
    upload_rows(b, v, 1, v.len())
}

/// The first `n` values of a buffer.
pub fn download<B: Backend>(b: &B, x: &B::Buf, n: usize) -> Vec<f32> {
    let mut v = vec![f32::NAN; n];
    b.read(x, 0, &mut v).expect("read");
    v
}

pub fn vec_weight(name: &str, v: &[f32]) -> WeightTensor {
    WeightTensor::from_f32(name, vec![v.len()], v)
}

/// A weight stored as `dtype` (f32, bf16 or f16) and the values it holds after rounding.
pub fn weight(dtype: DType, name: &str, shape: Vec<usize>, v: &[f32]) -> (WeightTensor, Vec<f32>) {
    match dtype {
        DType::BF16 => {
            let h: Vec<bf16> = v.iter().map(|&x| bf16::from_f32(x)).collect();
            let rounded = h.iter().map(|x| x.to_f32()).collect();
            let w = WeightTensor::from_bytes(name, dtype, shape, bytemuck::cast_slice(&h));
            (w.expect("bf16 tensor"), rounded)
        }
        DType::F16 => {
            let h: Vec<f16> = v.iter().map(|&x| f16::from_f32(x)).collect();
            let rounded = h.iter().map(|x| x.to_f32()).collect();
            let w = WeightTensor::from_bytes(name, dtype, shape, bytemuck::cast_slice(&h));
            (w.expect("f16 tensor"), rounded)
        }
        DType::F32 => (WeightTensor::from_f32(name, shape, v), v.to_vec()),
        other => panic!("no test weights of {other}"),
    }
}

/// `v` rounded to `dtype` (bf16 / f16 round to nearest even; f16 saturates at ±65504 as the
/// GPU's `cvt.rn.satfinite` does) and back to f32.
pub fn round_to(dtype: DType, v: &[f32]) -> Vec<f32> {
    match dtype {
        DType::BF16 => v.iter().map(|&x| bf16::from_f32(x).to_f32()).collect(),
        DType::F16 => v
            .iter()
            .map(|&x| f16::from_f32(x.clamp(-65504.0, 65504.0)).to_f32())
            .collect(),
        DType::F32 => v.to_vec(),
        other => panic!("no rounding to {other}"),
    }
}

#[track_caller]
pub fn assert_close(what: &str, got: &[f32], want: &[f64], tol: impl Fn(usize) -> f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let t = tol(i);
        assert!(
            g.is_finite() && (g as f64 - w).abs() <= t,
            "{what}[{i}]: got {g}, want {w} (|diff| {} > tol {t})",
            (g as f64 - w).abs()
        );
    }
}

#[track_caller]
fn assert_exact(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(
            g.to_bits() == w.to_bits(),
            "{what}[{i}]: got {g}, want {w} (bit-exact)"
        );
    }
}

// ---------------------------------------------------------------- cases

pub fn embed<B: Backend>(b: &B, _: &Numerics) {
    let mut rng = Rng::new(1);
    for &(vocab, dim) in &[(37usize, 19usize), (5, 300), (1, 1)] {
        let v = rng.vec(vocab * dim);
        let tokens: Vec<u32> = (0..3).map(|_| rng.below(vocab as u32)).collect();
        for dtype in [DType::F32, DType::BF16, DType::F16] {
            let (w, vals) = weight(dtype, "table", vec![vocab, dim], &v);
            let t = b.upload(&w).expect("upload");
            let mut out = b.alloc(3 * dim).expect("alloc");
            b.embed(&mut out, &t, &tokens).expect("embed");
            let got = download(b, &out, 3 * dim);
            let want = reference::embed(&vals, dim, &tokens);
            // A gather, and bf16/f16 -> f32 is exact: bit-equal.
            assert_close(&format!("embed {dtype} {vocab}x{dim}"), &got, &want, |_| {
                0.0
            });
        }
        let t = b
            .upload(&WeightTensor::from_f32("t", vec![vocab, dim], &v))
            .expect("upload");
        let mut out = b.alloc(dim).expect("alloc");
        assert!(
            b.embed(&mut out, &t, &[vocab as u32]).is_err(),
            "token id = vocab must be an error"
        );
    }
}

pub fn rms_norm<B: Backend>(b: &B, _: &Numerics) {
    let mut rng = Rng::new(2);
    for &(rows, dim) in &[(1usize, 17usize), (3, 300), (17, 64), (2, 1)] {
        let x = rng.vec(rows * dim);
        let w = rng.vec(dim);
        let eps = 1e-6;
        let xb = upload_rows(b, &x, rows, dim);
        let wm = b.upload(&vec_weight("w", &w)).expect("upload");
        let mut out = b.alloc(rows * dim).expect("alloc");
        b.rms_norm(&mut out, &xb, &wm, rows, eps).expect("rms_norm");
        let got = download(b, &out, rows * dim);
        let want = reference::rms_norm_rows(&x, &w, eps);
        // f32 sum of squares (relative error ~dim * 2^-24) and, on the GPU, rsqrt.approx
        // (2^-22.9): 1e-5 relative to the output's scale (|x| * inv * |w| <= ~sqrt(dim)).
        assert_close(&format!("rms_norm {rows}x{dim}"), &got, &want, |i| {
            1e-5 * (1.0 + want[i].abs())
        });
    }
}

pub fn add_rms_norm<B: Backend>(b: &B, _: &Numerics) {
    let mut rng = Rng::new(3);
    for &(rows, dim) in &[(1usize, 17usize), (3, 300), (17, 40)] {
        let x = rng.vec(rows * dim);
        let res = rng.vec(rows * dim);
        let w = rng.vec(dim);
        let eps = 1e-5;
        let xb = upload_rows(b, &x, rows, dim);
        let mut rb = upload_rows(b, &res, rows, dim);
        let wm = b.upload(&vec_weight("w", &w)).expect("upload");
        let mut out = b.alloc(rows * dim).expect("alloc");
        b.add_rms_norm(&mut out, &mut rb, &xb, &wm, rows, eps)
            .expect("add_rms_norm");
        let sum = reference::add_f32(&res, &x);
        // The residual is one f32 add per element: exact against the same f32 add.
        assert_exact(
            &format!("add_rms_norm {rows}x{dim} residual"),
            &download(b, &rb, rows * dim),
            &sum,
        );
        let want = reference::rms_norm_rows(&sum, &w, eps);
        // As rms_norm.
        assert_close(
            &format!("add_rms_norm {rows}x{dim}"),
            &download(b, &out, rows * dim),
            &want,
            |i| 1e-5 * (1.0 + want[i].abs()),
        );
    }
}

pub fn head_rms_norm<B: Backend>(b: &B, _: &Numerics) {
    let mut rng = Rng::new(4);
    for &(rows, heads, hd) in &[(1usize, 1usize, 8usize), (3, 5, 12), (2, 3, 64), (1, 7, 40)] {
        let x = rng.vec(rows * heads * hd);
        let w = rng.vec(hd);
        let mut xb = upload_rows(b, &x, rows, heads * hd);
        let wm = b.upload(&vec_weight("qn", &w)).expect("upload");
        b.head_rms_norm(&mut xb, &wm, rows, heads, 1e-6)
            .expect("head_rms_norm");
        let want = reference::rms_norm_rows(&x, &w, 1e-6);
        // As rms_norm.
        assert_close(
            &format!("head_rms_norm {rows}x{heads}x{hd}"),
            &download(b, &xb, x.len()),
            &want,
            |i| 1e-5 * (1.0 + want[i].abs()),
        );
    }
}

pub fn rope<B: Backend>(b: &B, num: &Numerics) {
    let mut rng = Rng::new(5);
    for &(rows, heads, hd, pos0) in &[
        (1usize, 1usize, 2usize, 0usize),
        (3, 2, 8, 5),
        (17, 3, 64, 0),
        (2, 2, 128, 30_000),
    ] {
        let inv: Vec<f32> = (0..hd / 2)
            .map(|i| 1.0 / 10000f32.powf(2.0 * i as f32 / hd as f32))
            .collect();
        let x = rng.vec(rows * heads * hd);
        let mut xb = upload_rows(b, &x, rows, heads * hd);
        let im = b.upload(&vec_weight("inv_freq", &inv)).expect("upload");
        let layout = b
            .layout_of(&StepLayout::contiguous(pos0, rows, 1))
            .expect("layout");
        b.rope(&mut xb, rows, heads, hd, &layout, &im)
            .expect("rope");
        let want = reference::rope(&x, heads, hd, pos0, &inv);
        let tol = if num.approx_math {
            // sin/cos.approx after range reduction: absolute error ~2^-20.9 on each of cos and
            // sin, times |x| <= 1, plus f32 rounding of the products: 4e-6 absolute.
            4e-6
        } else {
            // sin/cos rounded to f32 (2^-25 each), two f32 products and a sum (2^-24 each) of
            // values <= 1 in magnitude: ~2.4e-7; 1e-6 absolute.
            1e-6
        };
        assert_close(
            &format!("rope {rows}x{heads}x{hd}@{pos0}"),
            &download(b, &xb, x.len()),
            &want,
            |_| tol,
        );
    }
}

#[allow(clippy::too_many_arguments)]
fn matmul_case<B: Backend>(
    b: &B,
    num: &Numerics,
    rng: &mut Rng,
    dtype: DType,
    rows: usize,
    n: usize,
    k: usize,
    with_bias: bool,
) {
    let x = rng.vec(rows * k);
    let wv = rng.vec(n * k);
    let bias = rng.vec(n);
    let (wt, wr) = weight(dtype, "w", vec![n, k], &wv);
    let wm = b.upload(&wt).expect("upload w");
    let bm = b.upload(&vec_weight("b", &bias)).expect("upload bias");
    let xb = upload_rows(b, &x, rows, k);
    let mut out = b.alloc(rows * n).expect("alloc");
    b.matmul(&mut out, &xb, &wm, with_bias.then_some(&bm), rows)
        .expect("matmul");
    let got = download(b, &out, rows * n);
    let bias = with_bias.then_some(&bias[..]);
    let rounded_x = (num.matmul_x)(dtype, rows);
    let what = format!(
        "matmul {dtype} {rows}x{n}x{k} bias={with_bias} ({} x on {})",
        rounded_x.map_or("f32".to_string(), |d| d.to_string()),
        num.name
    );
    // f32 accumulation in an order of the backend's choosing: K * 2^-24 * Σ|x||w|, bounded by
    // 1e-5 * Σ|x||w| for K <= ~160, and 1e-4 relative beyond.
    let rel = if k > 160 { 1e-4 } else { 1e-5 };
    if let Some(xd) = rounded_x {
        // A backend that rounds x to bf16 / f16 first (relative error 2^-9 / 2^-12 per
        // element) must match the reference on rounded x up to f32 accumulation ...
        let (want, mag) = reference::matmul(&round_to(xd, &x), &wr, bias, rows, n, k);
        assert_close(&what, &got, &want, |i| rel * (1.0 + mag[i]));
        // ... and the exact-x reference within the bf16 rounding bound 2^-8 * Σ|x||w| (f16's
        // 2^-11 is inside it).
        let (want, mag) = reference::matmul(&x, &wr, bias, rows, n, k);
        assert_close(&what, &got, &want, |i| 2f64.powi(-8) * mag[i] + 1e-6);
    } else {
        // Exact weights and x: only the accumulation.
        let (want, mag) = reference::matmul(&x, &wr, bias, rows, n, k);
        assert_close(&what, &got, &want, |i| rel * (1.0 + mag[i]));
    }
}

pub fn matvec<B: Backend>(b: &B, num: &Numerics) {
    let mut rng = Rng::new(6);
    // K = 24, 40: multiples of 8 but not of 16; K = 1032 / 516 run the GPU's 4-loads-in-flight
    // main loop and the tail; N = 9, 37 leave a partial block of 8 warps (and, for rows > 1, a
    // partial 4-row weight tile on the CPU).
    for &(dtype, rows, n, k) in &[
        (DType::BF16, 1usize, 37usize, 24usize),
        (DType::BF16, 3, 9, 40),
        (DType::BF16, 1, 9, 1032),
        (DType::F16, 1, 37, 24),
        (DType::F16, 3, 9, 1032),
        (DType::F32, 1, 13, 20),
        (DType::F32, 3, 9, 516),
        (DType::F32, 17, 5, 12),
        // 198 chunks of 16 B per row: the GPU's main loop, then a tail trip with all three
        // of its predicated chunks live for some lanes, one or two for others
        (DType::BF16, 1, 9, 1584),
        (DType::F16, 2, 5, 1584),
        (DType::F32, 1, 9, 792),
    ] {
        matmul_case(b, num, &mut rng, dtype, rows, n, k, true);
        matmul_case(b, num, &mut rng, dtype, rows, n, k, false);
    }
}

pub fn gemm<B: Backend>(b: &B, num: &Numerics) {
    let mut rng = Rng::new(7);
    // M, N not multiples of 64 (and one M over two block rows), K = 40 not a multiple of 16
    // or of the GPU's 32-wide k-tile, K = 8 the smallest the GPU allows.
    for &(rows, n, k) in &[
        (17usize, 70usize, 40usize),
        (5, 3, 8),
        (70, 65, 72),
        (33, 128, 96),
        (16, 256, 64),
        (7, 128, 64),
    ] {
        matmul_case(b, num, &mut rng, DType::BF16, rows, n, k, true);
    }
    matmul_case(b, num, &mut rng, DType::BF16, 17, 9, 24, false);
    for &(rows, n, k) in &[(17usize, 70usize, 40usize), (70, 65, 72)] {
        matmul_case(b, num, &mut rng, DType::F16, rows, n, k, true);
    }
    // Activations far outside f16's range: where the backend rounds x to f16, it saturates at
    // +-65504 instead of becoming inf; where it keeps x in f32, they pass through.
    let (rows, n, k) = (5usize, 2usize, 8usize);
    let mut x = rng.vec(rows * k);
    x[0] = 1e6;
    x[k + 1] = -3e5;
    let wv: Vec<f32> = (0..n * k)
        .map(|i| if i % k < 2 { 1.0 } else { 0.0 })
        .collect();
    let (wt, _) = weight(DType::F16, "w", vec![n, k], &wv);
    let wm = b.upload(&wt).expect("upload");
    let xb = upload_rows(b, &x, rows, k);
    let mut out = b.alloc(rows * n).expect("alloc");
    b.matmul(&mut out, &xb, &wm, None, rows)
        .expect("matmul f16");
    let got = download(b, &out, rows * n);
    let xr = round_to((num.matmul_x)(DType::F16, rows).unwrap_or(DType::F32), &x);
    for r in 0..rows {
        let want = xr[r * k] + xr[r * k + 1];
        for o in 0..n {
            // exact: two values (times 1.0) summed in f32, the rest times 0
            assert_eq!(
                got[r * n + o],
                want,
                "saturating f16 row {r} ({})",
                num.name
            );
        }
    }
}

/// Products big enough to be split across threads (the CPU runs products under 2^17
/// multiply-adds on the calling thread), with K over the CPU's 640-long k-slices and N not a
/// multiple of its 4-row tiles.
pub fn matmul_large<B: Backend>(b: &B, num: &Numerics) {
    let mut rng = Rng::new(13);
    for dtype in [DType::BF16, DType::F16, DType::F32] {
        // decode: 300 x 520 = 156k multiply-adds
        matmul_case(b, num, &mut rng, dtype, 1, 300, 520, true);
        // prefill: 19 rows, not a multiple of any row tile (the GPU's GEMM for bf16 / f16)
        matmul_case(b, num, &mut rng, dtype, 19, 70, 1000, false);
    }
}

pub fn silu_mul_add<B: Backend>(b: &B, _: &Numerics) {
    let mut rng = Rng::new(8);
    for &len in &[1usize, 255, 1000] {
        let g: Vec<f32> = rng.vec(len).iter().map(|v| v * 8.0).collect();
        let u = rng.vec(len);
        let mut gb = upload_buf(b, &g);
        let ub = upload_buf(b, &u);
        b.silu_mul(&mut gb, &ub, len).expect("silu_mul");
        let want = reference::silu_mul(&g, &u);
        // The GPU's ex2.approx (2^-22) or the CPU's exp (2 ulp), and three f32 roundings: 1e-6
        // relative.
        assert_close(
            &format!("silu_mul {len}"),
            &download(b, &gb, len),
            &want,
            |i| 1e-6 * (1e-3 + want[i].abs()),
        );
        let mut xb = upload_buf(b, &g);
        b.add(&mut xb, &ub, len).expect("add");
        // one f32 add, compared with the same f32 add: exact
        assert_exact(
            &format!("add {len}"),
            &download(b, &xb, len),
            &reference::add_f32(&g, &u),
        );
    }
}

/// What follows a fused projection: `split_columns` (q/k/v) is a copy, exact; `gated_act`
/// (gate/up) computes exactly what `silu_mul` / `gelu_tanh_mul` compute on the halves apart.
pub fn fused_outputs<B: Backend>(b: &B, _: &Numerics) {
    let mut rng = Rng::new(15);
    for &(rows, widths) in &[
        (1usize, [7usize, 3, 3]),
        (3, [128, 32, 32]),
        (5, [1, 300, 0]),
        (2, [257, 0, 0]),
    ] {
        let total: usize = widths.iter().sum();
        let x = rng.vec(rows * total);
        let xb = upload_rows(b, &x, rows, total);
        let mut outs: Vec<B::Buf> = widths
            .iter()
            .map(|&w| upload_buf(b, &rng.vec((rows * w).max(1))))
            .collect();
        let parts = widths.iter().filter(|&&w| w > 0).count().max(1);
        {
            let mut args: Vec<(&mut B::Buf, usize)> =
                outs.iter_mut().zip(widths).take(parts).collect();
            b.split_columns(&xb, rows, &mut args)
                .expect("split_columns");
        }
        let mut col = 0;
        for (j, &w) in widths.iter().enumerate().take(parts) {
            let want: Vec<f32> = (0..rows)
                .flat_map(|r| x[r * total + col..r * total + col + w].to_vec())
                .collect();
            assert_exact(
                &format!("split_columns part {j} of {widths:?} x {rows}"),
                &download(b, &outs[j], rows * w),
                &want,
            );
            col += w;
        }
    }
    for &(rows, width) in &[(1usize, 1usize), (1, 300), (3, 257), (4, 64)] {
        for act in [MlpActivation::Silu, MlpActivation::GeluTanh] {
            let gu: Vec<f32> = rng.vec(rows * 2 * width).iter().map(|v| v * 8.0).collect();
            let gate: Vec<f32> = (0..rows)
                .flat_map(|r| gu[r * 2 * width..r * 2 * width + width].to_vec())
                .collect();
            let up: Vec<f32> = (0..rows)
                .flat_map(|r| gu[r * 2 * width + width..(r + 1) * 2 * width].to_vec())
                .collect();
            let mut gub = upload_rows(b, &gu, rows, 2 * width);
            let mut out = upload_buf(b, &rng.vec(rows * width));
            b.gated_act(&mut out, &mut gub, rows, width, act)
                .expect("gated_act");
            let mut gb = upload_buf(b, &gate);
            let ub = upload_buf(b, &up);
            match act {
                MlpActivation::Silu => b.silu_mul(&mut gb, &ub, rows * width),
                MlpActivation::GeluTanh => b.gelu_tanh_mul(&mut gb, &ub, rows * width),
            }
            .expect("gated op apart");
            let apart = download(b, &gb, rows * width);
            assert_exact(
                &format!("gated_act {act:?} {rows}x{width} vs the op on the halves"),
                &download(b, &out, rows * width),
                &apart,
            );
            if act == MlpActivation::Silu {
                let r = reference::silu_mul(&gate, &up);
                // as silu_mul_add: 1e-6 relative
                assert_close(&format!("gated_act silu {rows}x{width}"), &apart, &r, |i| {
                    1e-6 * (1e-3 + r[i].abs())
                });
            }
        }
    }
}

pub fn copy_rows<B: Backend>(b: &B, _: &Numerics) {
    let mut rng = Rng::new(14);
    for &(src_rows, width, src_row, rows) in &[
        (7usize, 13usize, 2usize, 3usize),
        (1, 1, 0, 1),
        (20, 300, 19, 1),
        (5, 40, 0, 5),
    ] {
        let src = rng.vec(src_rows * width);
        let before = rng.vec(src_rows * width);
        let sb = upload_rows(b, &src, src_rows, width);
        let mut db = upload_rows(b, &before, src_rows, width);
        b.copy_rows(&mut db, &sb, src_row, rows, width)
            .expect("copy_rows");
        // a copy: exact; the rest of dst untouched
        let mut want = reference::copy_rows(&src, src_row, rows, width);
        want.extend_from_slice(&before[rows * width..]);
        assert_exact(
            &format!("copy_rows {rows} of {src_rows}x{width} from row {src_row}"),
            &download(b, &db, src_rows * width),
            &want,
        );
    }
}

pub fn argmax<B: Backend>(b: &B, _: &Numerics) {
    let mut rng = Rng::new(9);
    for &len in &[1usize, 3, 1000, 5000] {
        let mut v = rng.vec(len + 7);
        let at = rng.below(len as u32) as usize;
        v[7 + at] = 2.0;
        // a tie later in the range: the first index must win
        if at + 1 < len {
            let later = at + 1 + rng.below((len - at - 1) as u32) as usize;
            v[7 + later] = 2.0;
        }
        // a larger value outside the range must be ignored
        v[0] = 5.0;
        assert_eq!(reference::argmax(&v[7..]), Some(at), "the reference itself");
        let xb = upload_buf(b, &v);
        assert_eq!(
            b.argmax(&xb, 7, len).expect("argmax"),
            at as u32,
            "argmax len {len}"
        );
    }
    // ties at every distance the GPU's reductions combine: lanes 1..16 apart (shuffle steps),
    // warps apart (shared-memory step), and the same thread (stride 1024)
    for &d in &[1usize, 2, 4, 8, 16, 32, 64, 512, 1024, 1500] {
        for &at in &[0usize, 5, 17, 40, 1000] {
            let mut v = rng.vec(3000);
            v[at] = 2.0;
            v[at + d] = 2.0;
            assert_eq!(reference::argmax(&v), Some(at), "the reference itself");
            let xb = upload_buf(b, &v);
            assert_eq!(
                b.argmax(&xb, 0, 3000).expect("argmax"),
                at as u32,
                "tie at {at} and {}",
                at + d
            );
        }
    }
    let v = [1.0, f32::NAN, 3.0, 3.0];
    assert_eq!(reference::argmax(&v), Some(2), "the reference itself");
    let xb = upload_buf(b, &v);
    assert_eq!(
        b.argmax(&xb, 0, 4).expect("argmax"),
        2,
        "NaN is skipped, first of a tie wins"
    );
    // negative maxima and infinities: the GPU compares order-preserving integer keys of the
    // f32 bits, whose negative half is flipped
    for (v, want) in [
        (vec![-3.0, -0.5, f32::NEG_INFINITY, -0.5, -2.0], 1u32),
        (vec![f32::NEG_INFINITY, f32::NEG_INFINITY], 0),
        (vec![-1e-30, -0.0, 0.0, -1e30], 1),
        (vec![-7.0, f32::INFINITY, f32::NAN, f32::INFINITY], 1),
    ] {
        assert_eq!(
            reference::argmax(&v),
            Some(want as usize),
            "the reference itself {v:?}"
        );
        let xb = upload_buf(b, &v);
        assert_eq!(b.argmax(&xb, 0, v.len()).expect("argmax"), want, "{v:?}");
    }
}

/// Run attention over a history fed in `chunks` of rows (a prefill, then single-row decode
/// steps, or several prefill chunks), checking every chunk's output against the reference over
/// the whole history.
#[allow(clippy::too_many_arguments)]
fn attention_case<B: Backend>(
    b: &B,
    rng: &mut Rng,
    nh: usize,
    nkv: usize,
    hd: usize,
    window: Option<usize>,
    chunks: &[usize],
    layers: usize,
) {
    let ctx = chunks.iter().sum::<usize>() + 1;
    let kvdim = nkv * hd;
    let scale = 1.0 / (hd as f32).sqrt();
    let p = AttnParams {
        n_heads: nh,
        n_kv_heads: nkv,
        head_dim: hd,
        scale,
        window,
    };
    let shape = KvShape::contiguous(layers, ctx, 32, nkv, hd);
    let mut kv = b.alloc_kv(shape).expect("alloc_kv");
    let layer = layers - 1;
    let mut keys = Vec::new();
    let mut vals = Vec::new();
    let mut pos = 0;
    for (step, &rows) in chunks.iter().enumerate() {
        let q = rng.vec(rows * nh * hd);
        let k: Vec<f32> = rng.vec(rows * kvdim).iter().map(|v| v * 3.0).collect();
        let v = rng.vec(rows * kvdim);
        keys.extend_from_slice(&k);
        vals.extend_from_slice(&v);
        let qb = upload_rows(b, &q, rows, nh * hd);
        let kb = upload_rows(b, &k, rows, kvdim);
        let vb = upload_rows(b, &v, rows, kvdim);
        let mut out = b.alloc(rows * nh * hd).expect("alloc");
        let layout = b
            .layout_of(&StepLayout::contiguous(pos, rows, shape.blocks))
            .expect("layout");
        b.attention(&mut out, &qb, &kb, &vb, &mut kv, layer, rows, &layout, &p)
            .expect("attention");
        let want = reference::attention(&q, &keys, &vals, rows, pos, nh, nkv, hd, scale, window);
        // Scores |s| <= ~3*sqrt(hd)*scale; f32 dot products, ex2.approx (2^-22 relative) or the
        // CPU's exp (2 ulp), and the f32 softmax sums over <= ~210 keys: outputs (|v| <= 1)
        // within 2e-5 absolute.
        assert_close(
            &format!("attention nh={nh} nkv={nkv} hd={hd} window={window:?} step {step} rows {rows} pos {pos}"),
            &download(b, &out, rows * nh * hd),
            &want,
            |_| 2e-5,
        );
        pos += rows;
    }
}

/// A prefill of `rows0` rows, then `steps` single-row decode steps.
fn prefill_then_decode(rows0: usize, steps: usize) -> Vec<usize> {
    std::iter::once(rows0)
        .chain(std::iter::repeat_n(1, steps))
        .collect()
}

pub fn attention<B: Backend>(b: &B, _: &Numerics) {
    let mut rng = Rng::new(11);
    // GQA group 2, head_dim 12 (not a multiple of 32); prefill 3 then decode
    attention_case(b, &mut rng, 4, 2, 12, None, &prefill_then_decode(3, 3), 2);
    // MHA, one row
    attention_case(b, &mut rng, 2, 2, 8, None, &prefill_then_decode(1, 2), 1);
    // sliding window shorter than the history
    attention_case(
        b,
        &mut rng,
        4,
        1,
        16,
        Some(3),
        &prefill_then_decode(5, 3),
        1,
    );
    // head_dim > 128: the second half of each GPU lane's K registers (split kernels for
    // prefill too)
    attention_case(b, &mut rng, 2, 1, 132, None, &prefill_then_decode(4, 1), 1);
    // head_dim 128: every accumulator lane of the GPU's prefill kernel; 9 rows = a full block
    // of 8 query rows and a block with one (on the GPU and in the CPU's tiled prefill alike)
    attention_case(b, &mut rng, 4, 2, 128, None, &prefill_then_decode(9, 1), 1);
}

/// Long histories. On the GPU: a decode step over 150 positions -> 5 splits of 32 (the combine
/// kernel), window 100 cutting into the first split; prefill of head_dim <= 128 through the
/// tiled kernel (5 key tiles of 32, causal masks inside tiles, a window that starts inside a
/// tile); prefill of head_dim > 128 through the split kernels (70 rows over 3 splits of 32, so
/// rows before position 32 / 64 leave later splits empty). On the CPU: prefill over 3 key
/// blocks of 64 in row blocks of 8, and decode over several blocks.
pub fn attention_splits<B: Backend>(b: &B, _: &Numerics) {
    let mut rng = Rng::new(12);
    attention_case(b, &mut rng, 3, 1, 8, None, &prefill_then_decode(149, 1), 1);
    attention_case(
        b,
        &mut rng,
        2,
        1,
        4,
        Some(100),
        &prefill_then_decode(140, 1),
        1,
    );
    attention_case(b, &mut rng, 2, 1, 136, None, &prefill_then_decode(70, 1), 1);
    // 300 positions: 10 splits of 32 on the GPU, so the combine kernel's 8 warps each take
    // more than one split
    attention_case(b, &mut rng, 2, 1, 8, None, &prefill_then_decode(299, 1), 1);
}

/// Prefill chunks that start mid-history (pos0 > 0) and straddle the CPU's 64-key blocks and
/// 8-row blocks, GQA groups of 3, 4, 6 and one over the CPU's 16-head tiled limit, windows
/// inside a block and across blocks.
pub fn attention_blocks<B: Backend>(b: &B, _: &Numerics) {
    let mut rng = Rng::new(15);
    // (nh, nkv, hd, window, chunks)
    for (nh, nkv, hd, window, chunks) in [
        (6usize, 2usize, 16usize, None, vec![9usize]),
        (6, 3, 12, None, vec![57, 13]),
        (4, 1, 32, Some(70usize), vec![120, 8, 1]),
        (2, 2, 8, Some(3), vec![5, 17]),
        (12, 2, 64, None, vec![200, 3]),
        (17, 1, 8, None, vec![9, 1]),
    ] {
        attention_case(b, &mut rng, nh, nkv, hd, window, &chunks, 1);
    }
}

/// The paged cache: several sequences in one pool through shuffled block tables, steps that
/// mix prefill chunks of some sequences with decode rows of others, a prompt reused through a
/// copied block (copy-on-write), block sizes below and above the CPU's key tile, a window.
pub fn attention_paged<B: Backend>(b: &B, _: &Numerics) {
    let mut rng = Rng::new(21);
    for (bs, nh, nkv, hd, window) in [
        (4usize, 4usize, 2usize, 16usize, None),
        (16, 2, 1, 32, Some(20usize)),
        (64, 3, 3, 8, None),
    ] {
        let kvdim = nkv * hd;
        let scale = 1.0 / (hd as f32).sqrt();
        let p = AttnParams {
            n_heads: nh,
            n_kv_heads: nkv,
            head_dim: hd,
            scale,
            window,
        };
        let max_blocks = 64usize.div_ceil(bs);
        let seqs = 4;
        let shape = KvShape {
            layers: 2,
            blocks: seqs * max_blocks,
            block_size: bs,
            n_kv_heads: nkv,
            head_dim: hd,
        };
        let mut kv = b.alloc_kv(shape).expect("alloc_kv");
        // Shuffled block tables: sequence s owns a scattered set of pool blocks.
        let mut pool: Vec<u32> = (0..shape.blocks as u32).collect();
        for i in (1..pool.len()).rev() {
            let j = rng.below(i as u32 + 1) as usize;
            pool.swap(i, j);
        }
        let tables: Vec<Vec<u32>> = pool.chunks(max_blocks).map(|c| c.to_vec()).collect();
        let mut hist: Vec<(Vec<f32>, Vec<f32>)> = vec![(Vec::new(), Vec::new()); seqs];
        // Steps: (sequence, rows) pairs; one step may hold several sequences.
        let steps: Vec<Vec<(usize, usize)>> = vec![
            vec![(0, 20), (1, 5)],
            vec![(0, 1), (1, 1), (2, 9)],
            vec![(2, 1), (0, 1), (1, 1)],
            vec![(1, 13), (0, 1)],
            vec![(0, 1), (1, 1), (2, 1)],
        ];
        for (si, step) in steps.iter().enumerate() {
            let rows: usize = step.iter().map(|&(_, n)| n).sum();
            let mut layout = StepLayout {
                max_blocks,
                ..Default::default()
            };
            for (t, &(s, n)) in step.iter().enumerate() {
                let pos0 = hist[s].0.len() / kvdim;
                layout.positions.extend((pos0..pos0 + n).map(|x| x as u32));
                layout.seq_of_row.extend(std::iter::repeat_n(t as u32, n));
                layout.tables.extend_from_slice(&tables[s]);
            }
            let q = rng.vec(rows * nh * hd);
            let k: Vec<f32> = rng.vec(rows * kvdim).iter().map(|v| v * 3.0).collect();
            let v = rng.vec(rows * kvdim);
            let lay = b.layout_of(&layout).expect("layout");
            let (qb, kb, vb) = (
                upload_rows(b, &q, rows, nh * hd),
                upload_rows(b, &k, rows, kvdim),
                upload_rows(b, &v, rows, kvdim),
            );
            let mut out = b.alloc(rows * nh * hd).expect("alloc");
            b.attention(&mut out, &qb, &kb, &vb, &mut kv, 1, rows, &lay, &p)
                .expect("attention");
            let got = download(b, &out, rows * nh * hd);
            let mut r0 = 0;
            for &(s, n) in step {
                let pos0 = hist[s].0.len() / kvdim;
                hist[s]
                    .0
                    .extend_from_slice(&k[r0 * kvdim..(r0 + n) * kvdim]);
                hist[s]
                    .1
                    .extend_from_slice(&v[r0 * kvdim..(r0 + n) * kvdim]);
                let qs = &q[r0 * nh * hd..(r0 + n) * nh * hd];
                let want = reference::attention(
                    qs, &hist[s].0, &hist[s].1, n, pos0, nh, nkv, hd, scale, window,
                );
                assert_close(
                    &format!("paged attention bs={bs} step {si} seq {s} rows {n} at {pos0}"),
                    &got[r0 * nh * hd..(r0 + n) * nh * hd],
                    &want,
                    |_| 2e-5,
                );
                r0 += n;
            }
        }
        // Copy-on-write: sequence 3 starts from a copy of sequence 1's first block (bs
        // positions of history) and continues from there.
        b.copy_kv_blocks(&mut kv, &[(tables[1][0], tables[3][0])])
            .expect("copy_kv_blocks");
        let base = bs.min(hist[1].0.len() / kvdim);
        let n = 3;
        let layout = StepLayout {
            positions: (base..base + n).map(|x| x as u32).collect(),
            seq_of_row: vec![0; n],
            tables: tables[3].clone(),
            max_blocks,
        };
        let q = rng.vec(n * nh * hd);
        let k = rng.vec(n * kvdim);
        let v = rng.vec(n * kvdim);
        let lay = b.layout_of(&layout).expect("layout");
        let mut out = b.alloc(n * nh * hd).expect("alloc");
        b.attention(
            &mut out,
            &upload_rows(b, &q, n, nh * hd),
            &upload_rows(b, &k, n, kvdim),
            &upload_rows(b, &v, n, kvdim),
            &mut kv,
            1,
            n,
            &lay,
            &p,
        )
        .expect("attention after copy");
        let mut keys = hist[1].0[..base * kvdim].to_vec();
        let mut vals = hist[1].1[..base * kvdim].to_vec();
        keys.extend_from_slice(&k);
        vals.extend_from_slice(&v);
        let want = reference::attention(&q, &keys, &vals, n, base, nh, nkv, hd, scale, window);
        assert_close(
            &format!("paged attention bs={bs} after copy-on-write"),
            &download(b, &out, n * nh * hd),
            &want,
            |_| 2e-5,
        );
    }
}

/// Arguments every backend must refuse with an error (not a panic, not an out-of-bounds
/// access): a token past the vocabulary, buffers shorter than the op needs, attention past the
/// cache's context or layers or with parameters that disagree with it, a copy past the source.
pub fn bad_arguments<B: Backend>(b: &B, _: &Numerics) {
    let (wt, _) = weight(DType::BF16, "w", vec![4, 16], &[0.5; 64]);
    let wm = b.upload(&wt).expect("upload");
    let x = b.alloc(16 * 8).expect("alloc");
    let mut out = b.alloc(4 * 8).expect("alloc");
    b.matmul(&mut out, &x, &wm, None, 8).expect("8 rows fit");
    assert!(
        b.matmul(&mut out, &x, &wm, None, 9).is_err(),
        "x and out too short for 9 rows must be an error"
    );

    let shape = KvShape::contiguous(1, 4, 4, 1, 8);
    let mut kv = b.alloc_kv(shape).expect("alloc_kv");
    let at = |pos0: usize, rows: usize, blocks: usize| {
        b.layout_of(&StepLayout::contiguous(pos0, rows, blocks))
            .expect("layout")
    };
    let p = AttnParams {
        n_heads: 2,
        n_kv_heads: 1,
        head_dim: 8,
        scale: 0.3,
        window: None,
    };
    let q = b.alloc(16 * 8).expect("alloc");
    let k = b.alloc(8 * 8).expect("alloc");
    let mut out = b.alloc(16 * 8).expect("alloc");
    assert!(
        b.attention(&mut out, &q, &k, &k, &mut kv, 0, 2, &at(3, 2, 2), &p)
            .is_err(),
        "past the context"
    );
    assert!(
        b.attention(&mut out, &q, &k, &k, &mut kv, 0, 2, &at(0, 1, 1), &p)
            .is_err(),
        "a layout with fewer rows than the step"
    );
    let mut stray = StepLayout::contiguous(0, 1, 1);
    stray.tables = vec![7];
    assert!(
        b.attention(&mut out, &q, &k, &k, &mut kv, 0, 1, &at(0, 1, 1), &p)
            .is_ok()
            && b.layout_of(&stray).map_or(true, |l| b
                .attention(&mut out, &q, &k, &k, &mut kv, 0, 1, &l, &p)
                .is_err()),
        "a block outside the pool"
    );
    assert!(
        b.attention(&mut out, &q, &k, &k, &mut kv, 1, 1, &at(0, 1, 1), &p)
            .is_err(),
        "layer out of range"
    );
    let p3 = AttnParams {
        n_heads: 3,
        n_kv_heads: 2,
        ..p
    };
    assert!(
        b.attention(&mut out, &q, &k, &k, &mut kv, 0, 1, &at(0, 1, 1), &p3)
            .is_err(),
        "params disagree with the cache"
    );

    let src = b.alloc(7 * 13).expect("alloc");
    let mut dst = b.alloc(7 * 13).expect("alloc");
    assert!(
        b.copy_rows(&mut dst, &src, 5, 3, 13).is_err(),
        "rows 5..8 of a 7-row source"
    );
}
