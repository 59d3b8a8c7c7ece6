//! Parity cases for every CUDA kernel, written once over any `GpuDriver`: run by
//! tests/cuda_kernels.rs on the PTX interpreter and by tests/cuda_gpu.rs on a real GPU.
//!
//! Each case draws seeded random inputs of awkward sizes (1 row, 3, 17; widths that are not
//! multiples of the tiles; K not a multiple of 16; GQA; sliding windows), runs the op through
//! `CudaBackend`, and compares with a plain reference written here in f64. Tolerances sit next
//! to the assertions with their justification.

#![allow(dead_code)]

use half::{bf16, f16};
use minfer::backend::{AttnParams, Backend, KvShape};
use minfer::internals::cuda::driver::GpuDriver;
use minfer::internals::cuda::{CudaBackend, CudaBuf};
use minfer::{DType, WeightTensor};

/// Test inputs come from the one shared generator.
pub use crate::common::Rng;

/// Put host values into a device activation buffer (exact): embed a one-row f32 table.
pub fn upload_buf<D: GpuDriver + 'static>(b: &CudaBackend<D>, v: &[f32]) -> CudaBuf<D> {
    let table = b
        .upload(&WeightTensor::from_f32("values", vec![1, v.len()], v))
        .expect("upload table");
    let mut out = b.alloc(v.len()).expect("alloc");
    b.embed(&mut out, &table, &[0]).expect("embed copy");
    out
}

/// Like `upload_buf` for `rows` rows of `width` (one embed of a `rows`-row table).
pub fn upload_rows<D: GpuDriver + 'static>(
    b: &CudaBackend<D>,
    v: &[f32],
    rows: usize,
    width: usize,
) -> CudaBuf<D> {
    assert_eq!(v.len(), rows * width);
    let table = b
        .upload(&WeightTensor::from_f32("values", vec![rows, width], v))
        .expect("upload table");
    let mut out = b.alloc(rows * width).expect("alloc");
    let ids: Vec<u32> = (0..rows as u32).collect();
    b.embed(&mut out, &table, &ids).expect("embed copy");
    out
}

pub fn download<D: GpuDriver + 'static>(b: &CudaBackend<D>, x: &CudaBuf<D>, n: usize) -> Vec<f32> {
    let mut v = vec![f32::NAN; n];
    b.read(x, 0, &mut v).expect("read");
    v
}

fn vec_weight(name: &str, v: &[f32]) -> WeightTensor {
    WeightTensor::from_f32(name, vec![v.len()], v)
}

fn bf16_weight(name: &str, shape: Vec<usize>, v: &[f32]) -> (WeightTensor, Vec<f32>) {
    let h: Vec<bf16> = v.iter().map(|&x| bf16::from_f32(x)).collect();
    let rounded = h.iter().map(|x| x.to_f32()).collect();
    (
        WeightTensor::from_bytes(name, DType::BF16, shape, bytemuck::cast_slice(&h))
            .expect("bf16 tensor"),
        rounded,
    )
}

fn f16_weight(name: &str, shape: Vec<usize>, v: &[f32]) -> (WeightTensor, Vec<f32>) {
    let h: Vec<f16> = v.iter().map(|&x| f16::from_f32(x)).collect();
    let rounded = h.iter().map(|x| x.to_f32()).collect();
    (
        WeightTensor::from_bytes(name, DType::F16, shape, bytemuck::cast_slice(&h))
            .expect("f16 tensor"),
        rounded,
    )
}

#[track_caller]
fn assert_close(what: &str, got: &[f32], want: &[f64], tol: impl Fn(usize) -> f64) {
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

// ---------------------------------------------------------------- references (plain f64)

fn ref_rms(x: &[f32], w: &[f32], eps: f32) -> Vec<f64> {
    let n = x.len() as f64;
    let ss: f64 = x.iter().map(|&v| v as f64 * v as f64).sum();
    let inv = 1.0 / (ss / n + eps as f64).sqrt();
    x.iter()
        .zip(w)
        .map(|(&v, &w)| v as f64 * inv * w as f64)
        .collect()
}

/// `out[r, o] = Σ_i x[r, i] w[o, i] + bias[o]`, and Σ |x||w| per output for tolerances.
fn ref_matmul(
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    rows: usize,
    n: usize,
    k: usize,
) -> (Vec<f64>, Vec<f64>) {
    let mut out = vec![0.0; rows * n];
    let mut mag = vec![0.0; rows * n];
    for r in 0..rows {
        for o in 0..n {
            let mut s = bias.map_or(0.0, |b| b[o] as f64);
            let mut m = 0.0;
            for i in 0..k {
                let p = x[r * k + i] as f64 * w[o * k + i] as f64;
                s += p;
                m += p.abs();
            }
            out[r * n + o] = s;
            mag[r * n + o] = m;
        }
    }
    (out, mag)
}

/// Causal (windowed) GQA attention of query rows at positions pos0.. over keys 0..=pos.
#[allow(clippy::too_many_arguments)]
fn ref_attention(
    q: &[f32],
    keys: &[f32],
    vals: &[f32],
    rows: usize,
    pos0: usize,
    nh: usize,
    nkv: usize,
    hd: usize,
    scale: f32,
    window: Option<usize>,
) -> Vec<f64> {
    let group = nh / nkv;
    let kvdim = nkv * hd;
    let mut out = vec![0.0; rows * nh * hd];
    for r in 0..rows {
        let p = pos0 + r;
        let lo = window.map_or(0, |w| (p + 1).saturating_sub(w));
        for h in 0..nh {
            let g = h / group;
            let qh = &q[(r * nh + h) * hd..(r * nh + h + 1) * hd];
            let s: Vec<f64> = (lo..=p)
                .map(|j| {
                    let kj = &keys[j * kvdim + g * hd..j * kvdim + (g + 1) * hd];
                    scale as f64
                        * qh.iter()
                            .zip(kj)
                            .map(|(&a, &b)| a as f64 * b as f64)
                            .sum::<f64>()
                })
                .collect();
            let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = s.iter().map(|&x| (x - m).exp()).collect();
            let l: f64 = e.iter().sum();
            for d in 0..hd {
                let mut acc = 0.0;
                for (t, j) in (lo..=p).enumerate() {
                    acc += e[t] * vals[j * kvdim + g * hd + d] as f64;
                }
                out[(r * nh + h) * hd + d] = acc / l;
            }
        }
    }
    out
}

// ---------------------------------------------------------------- cases

pub fn embed<D: GpuDriver + 'static>(b: &CudaBackend<D>) {
    let mut rng = Rng::new(1);
    for &(vocab, dim) in &[(37usize, 19usize), (5, 300), (1, 1)] {
        let v = rng.vec(vocab * dim);
        let tokens: Vec<u32> = (0..3).map(|_| rng.below(vocab as u32)).collect();
        let (w16, r16) = bf16_weight("t16", vec![vocab, dim], &v);
        let (wh, rh) = f16_weight("th", vec![vocab, dim], &v);
        for (w, vals) in [
            (WeightTensor::from_f32("t32", vec![vocab, dim], &v), &v),
            (w16, &r16),
            (wh, &rh),
        ] {
            let t = b.upload(&w).expect("upload");
            let mut out = b.alloc(3 * dim).expect("alloc");
            b.embed(&mut out, &t, &tokens).expect("embed");
            let got = download(b, &out, 3 * dim);
            let want: Vec<f64> = tokens
                .iter()
                .flat_map(|&t| {
                    vals[t as usize * dim..(t as usize + 1) * dim]
                        .iter()
                        .map(|&x| x as f64)
                })
                .collect();
            // A gather, and bf16/f16 -> f32 is exact: bit-equal.
            assert_close(
                &format!("embed {} {vocab}x{dim}", w.dtype),
                &got,
                &want,
                |_| 0.0,
            );
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

pub fn rms_norm<D: GpuDriver + 'static>(b: &CudaBackend<D>) {
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
        let want: Vec<f64> = (0..rows)
            .flat_map(|r| ref_rms(&x[r * dim..(r + 1) * dim], &w, eps))
            .collect();
        // f32 sum of squares (relative error ~dim * 2^-24) and rsqrt.approx (2^-22.9): 1e-5
        // relative to the output's scale (|x| * inv * |w| <= ~sqrt(dim)).
        assert_close(&format!("rms_norm {rows}x{dim}"), &got, &want, |i| {
            1e-5 * (1.0 + want[i].abs())
        });
    }
}

pub fn add_rms_norm<D: GpuDriver + 'static>(b: &CudaBackend<D>) {
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
        let sum: Vec<f32> = x.iter().zip(&res).map(|(a, c)| a + c).collect();
        // The residual is one f32 add per element: exact against the same f32 add.
        assert_close(
            "add_rms_norm residual",
            &download(b, &rb, rows * dim),
            &sum.iter().map(|&v| v as f64).collect::<Vec<_>>(),
            |_| 0.0,
        );
        let want: Vec<f64> = (0..rows)
            .flat_map(|r| ref_rms(&sum[r * dim..(r + 1) * dim], &w, eps))
            .collect();
        // As rms_norm.
        assert_close(
            &format!("add_rms_norm {rows}x{dim}"),
            &download(b, &out, rows * dim),
            &want,
            |i| 1e-5 * (1.0 + want[i].abs()),
        );
    }
}

pub fn head_rms_norm<D: GpuDriver + 'static>(b: &CudaBackend<D>) {
    let mut rng = Rng::new(4);
    for &(rows, heads, hd) in &[(1usize, 1usize, 8usize), (3, 5, 12), (2, 3, 64), (1, 7, 40)] {
        let x = rng.vec(rows * heads * hd);
        let w = rng.vec(hd);
        let mut xb = upload_rows(b, &x, rows, heads * hd);
        let wm = b.upload(&vec_weight("qn", &w)).expect("upload");
        b.head_rms_norm(&mut xb, &wm, rows, heads, 1e-6)
            .expect("head_rms_norm");
        let want: Vec<f64> = (0..rows * heads)
            .flat_map(|v| ref_rms(&x[v * hd..(v + 1) * hd], &w, 1e-6))
            .collect();
        // As rms_norm.
        assert_close(
            &format!("head_rms_norm {rows}x{heads}x{hd}"),
            &download(b, &xb, x.len()),
            &want,
            |i| 1e-5 * (1.0 + want[i].abs()),
        );
    }
}

pub fn rope<D: GpuDriver + 'static>(b: &CudaBackend<D>) {
    let mut rng = Rng::new(5);
    for &(rows, heads, hd, pos0) in &[
        (1usize, 1usize, 2usize, 0usize),
        (3, 2, 8, 5),
        (17, 3, 64, 0),
        (2, 2, 128, 30_000),
    ] {
        let half = hd / 2;
        let inv: Vec<f32> = (0..half)
            .map(|i| 1.0 / 10000f32.powf(2.0 * i as f32 / hd as f32))
            .collect();
        let x = rng.vec(rows * heads * hd);
        let mut xb = upload_rows(b, &x, rows, heads * hd);
        let im = b.upload(&vec_weight("inv_freq", &inv)).expect("upload");
        b.rope(&mut xb, rows, heads, hd, pos0, &im).expect("rope");
        let mut want = vec![0.0f64; x.len()];
        for r in 0..rows {
            for h in 0..heads {
                for i in 0..half {
                    // the angle is rounded to f32 once, as Hugging Face computes it
                    let ang = ((pos0 + r) as f32 * inv[i]) as f64;
                    let (s, c) = ang.sin_cos();
                    let base = (r * heads + h) * hd;
                    let (a, bb) = (x[base + i] as f64, x[base + i + half] as f64);
                    want[base + i] = a * c - bb * s;
                    want[base + i + half] = bb * c + a * s;
                }
            }
        }
        // sin/cos.approx after range reduction: absolute error ~2^-20.9 on each of cos and sin,
        // times |x| <= 1, plus f32 rounding of the products: 4e-6 absolute.
        assert_close(
            &format!("rope {rows}x{heads}x{hd}@{pos0}"),
            &download(b, &xb, x.len()),
            &want,
            |_| 4e-6,
        );
    }
}

fn matmul_case<D: GpuDriver + 'static>(
    b: &CudaBackend<D>,
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
    let (wt, wr) = match dtype {
        DType::BF16 => bf16_weight("w", vec![n, k], &wv),
        DType::F16 => f16_weight("w", vec![n, k], &wv),
        _ => (WeightTensor::from_f32("w", vec![n, k], &wv), wv.clone()),
    };
    let wm = b.upload(&wt).expect("upload w");
    let bm = b.upload(&vec_weight("b", &bias)).expect("upload bias");
    let xb = upload_rows(b, &x, rows, k);
    let mut out = b.alloc(rows * n).expect("alloc");
    b.matmul(&mut out, &xb, &wm, with_bias.then_some(&bm), rows)
        .expect("matmul");
    let got = download(b, &out, rows * n);
    let gemm = matches!(dtype, DType::BF16 | DType::F16) && rows > 4;
    let what = format!(
        "matmul {dtype} {rows}x{n}x{k} bias={with_bias} ({})",
        if gemm { "gemm" } else { "matvec" }
    );
    if gemm {
        // The tensor-core path rounds x to bf16 / f16 first (relative error 2^-9 / 2^-12 per
        // element), so it must match the reference on rounded x up to f32 accumulation
        // (1e-5 * Σ|x||w|) ...
        let xr: Vec<f32> = if dtype == DType::BF16 {
            x.iter().map(|&v| bf16::from_f32(v).to_f32()).collect()
        } else {
            x.iter().map(|&v| f16::from_f32(v).to_f32()).collect()
        };
        let (want, mag) = ref_matmul(&xr, &wr, with_bias.then_some(&bias[..]), rows, n, k);
        assert_close(&what, &got, &want, |i| 1e-5 * (1.0 + mag[i]));
        // ... and the exact-x reference within the bf16 rounding bound 2^-8 * Σ|x||w| (f16's
        // 2^-11 is inside it).
        let (want, mag) = ref_matmul(&x, &wr, with_bias.then_some(&bias[..]), rows, n, k);
        assert_close(&what, &got, &want, |i| 2f64.powi(-8) * mag[i] + 1e-6);
    } else {
        // Exact weights and x, f32 accumulation in a different order: K * 2^-24 * Σ|x||w|,
        // bounded by 1e-5 * Σ|x||w| for K <= ~160, and 1e-4 relative beyond.
        let (want, mag) = ref_matmul(&x, &wr, with_bias.then_some(&bias[..]), rows, n, k);
        let rel = if k > 160 { 1e-4 } else { 1e-5 };
        assert_close(&what, &got, &want, |i| rel * (1.0 + mag[i]));
    }
}

pub fn matvec<D: GpuDriver + 'static>(b: &CudaBackend<D>) {
    let mut rng = Rng::new(6);
    // K = 24, 40: multiples of 8 but not of 16; K = 1032 / 516 run the 4-loads-in-flight main
    // loop and the tail; N = 9, 37 leave a partial block of 8 warps.
    for &(dtype, rows, n, k) in &[
        (DType::BF16, 1usize, 37usize, 24usize),
        (DType::BF16, 3, 9, 40),
        (DType::BF16, 1, 9, 1032),
        (DType::F16, 1, 37, 24),
        (DType::F16, 3, 9, 1032),
        (DType::F32, 1, 13, 20),
        (DType::F32, 3, 9, 516),
        (DType::F32, 17, 5, 12),
    ] {
        matmul_case(b, &mut rng, dtype, rows, n, k, true);
        matmul_case(b, &mut rng, dtype, rows, n, k, false);
    }
}

pub fn gemm<D: GpuDriver + 'static>(b: &CudaBackend<D>) {
    let mut rng = Rng::new(7);
    // M, N not multiples of 64 (and one M over two block rows), K = 40 not a multiple of 16
    // or of the 32-wide k-tile, K = 8 the smallest legal.
    for &(rows, n, k) in &[
        (17usize, 70usize, 40usize),
        (5, 3, 8),
        (70, 65, 72),
        (33, 128, 96),
        (16, 256, 64),
        (7, 128, 64),
    ] {
        matmul_case(b, &mut rng, DType::BF16, rows, n, k, true);
    }
    matmul_case(b, &mut rng, DType::BF16, 17, 9, 24, false);
    for &(rows, n, k) in &[(17usize, 70usize, 40usize), (70, 65, 72)] {
        matmul_case(b, &mut rng, DType::F16, rows, n, k, true);
    }
    // f16 activations saturate at +-65504 instead of becoming inf
    let (rows, n, k) = (5usize, 2usize, 8usize);
    let mut x = rng.vec(rows * k);
    x[0] = 1e6;
    x[k + 1] = -3e5;
    let wv: Vec<f32> = (0..n * k)
        .map(|i| if i % k < 2 { 1.0 } else { 0.0 })
        .collect();
    let (wt, _) = f16_weight("w", vec![n, k], &wv);
    let wm = b.upload(&wt).expect("upload");
    let xb = upload_rows(b, &x, rows, k);
    let mut out = b.alloc(rows * n).expect("alloc");
    b.matmul(&mut out, &xb, &wm, None, rows).expect("gemm_f16");
    let got = download(b, &out, rows * n);
    let clamp = |v: f32| f16::from_f32(v.clamp(-65504.0, 65504.0)).to_f32();
    for r in 0..rows {
        let want = (clamp(x[r * k]) + clamp(x[r * k + 1])) as f64;
        for o in 0..n {
            // exact: two f16 values (times 1.0) summed in f32, the rest times 0
            assert_eq!(got[r * n + o] as f64, want, "saturating f16 row {r}");
        }
    }
}

pub fn matmul_preconditions<D: GpuDriver + 'static>(b: &CudaBackend<D>) {
    let (wt, _) = bf16_weight("odd", vec![4, 12], &[0.5; 48]);
    let wm = b.upload(&wt).expect("upload");
    let x = b.alloc(12 * 8).expect("alloc");
    let mut out = b.alloc(4 * 8).expect("alloc");
    let e = b
        .matmul(&mut out, &x, &wm, None, 1)
        .expect_err("K = 12 is not a multiple of 8");
    assert!(e.to_string().contains("odd"), "{e}");
    assert!(
        b.matmul(&mut out, &x, &wm, None, 100).is_err(),
        "x too short must be an error"
    );
}

pub fn silu_mul_add<D: GpuDriver + 'static>(b: &CudaBackend<D>) {
    let mut rng = Rng::new(8);
    for &len in &[1usize, 255, 1000] {
        let g: Vec<f32> = rng.vec(len).iter().map(|v| v * 8.0).collect();
        let u = rng.vec(len);
        let mut gb = upload_buf(b, &g);
        let ub = upload_buf(b, &u);
        b.silu_mul(&mut gb, &ub, len).expect("silu_mul");
        let want: Vec<f64> = g
            .iter()
            .zip(&u)
            .map(|(&g, &u)| g as f64 / (1.0 + (-g as f64).exp()) * u as f64)
            .collect();
        // ex2.approx (2^-22) and three f32 roundings: 1e-6 relative.
        assert_close(
            &format!("silu_mul {len}"),
            &download(b, &gb, len),
            &want,
            |i| 1e-6 * (1e-3 + want[i].abs()),
        );
        let mut xb = upload_buf(b, &g);
        b.add(&mut xb, &ub, len).expect("add");
        let want: Vec<f64> = g.iter().zip(&u).map(|(&g, &u)| (g + u) as f64).collect();
        // one f32 add, compared with the same f32 add: exact
        assert_close(&format!("add {len}"), &download(b, &xb, len), &want, |_| {
            0.0
        });
    }
}

pub fn argmax<D: GpuDriver + 'static>(b: &CudaBackend<D>) {
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
        let xb = upload_buf(b, &v);
        assert_eq!(
            b.argmax(&xb, 7, len).expect("argmax"),
            at as u32,
            "argmax len {len}"
        );
    }
    // ties at every distance the reductions combine: lanes 1..16 apart (shuffle steps), warps
    // apart (shared-memory step), and the same thread (stride 1024)
    for &d in &[1usize, 2, 4, 8, 16, 32, 64, 512, 1024, 1500] {
        for &at in &[0usize, 5, 17, 40, 1000] {
            let mut v = rng.vec(3000);
            v[at] = 2.0;
            v[at + d] = 2.0;
            let xb = upload_buf(b, &v);
            assert_eq!(
                b.argmax(&xb, 0, 3000).expect("argmax"),
                at as u32,
                "tie at {at} and {}",
                at + d
            );
        }
    }
    let xb = upload_buf(b, &[1.0, f32::NAN, 3.0, 3.0]);
    assert_eq!(
        b.argmax(&xb, 0, 4).expect("argmax"),
        2,
        "NaN is skipped, first of a tie wins"
    );
}

pub fn casts<D: GpuDriver + 'static>(b: &CudaBackend<D>) {
    let mut rng = Rng::new(10);
    let mut v: Vec<f32> = rng.vec(777).iter().map(|x| x * 1000.0).collect();
    // halfway cases: round to nearest even
    v[0] = f32::from_bits(0x3f80_8000);
    v[1] = f32::from_bits(0x3f81_8000);
    v[2] = -0.0;
    let m = b
        .upload_f32_as_bf16("v", vec![777], &v)
        .expect("upload as bf16");
    let back = b.download_bf16_as_f32(&m).expect("download");
    for (i, (&x, &y)) in v.iter().zip(&back).enumerate() {
        // cvt.rn.bf16.f32 is IEEE round-to-nearest-even, as half::bf16::from_f32: bit-equal
        assert_eq!(
            bf16::from_f32(x).to_f32().to_bits(),
            y.to_bits(),
            "cast [{i}] {x}"
        );
    }
}

/// Prefill `rows0` rows, then decode `steps` single rows, checking every output against the
/// reference over the whole history.
#[allow(clippy::too_many_arguments)]
fn attention_case<D: GpuDriver + 'static>(
    b: &CudaBackend<D>,
    rng: &mut Rng,
    nh: usize,
    nkv: usize,
    hd: usize,
    window: Option<usize>,
    rows0: usize,
    steps: usize,
    layers: usize,
) {
    let ctx = rows0 + steps + 1;
    let kvdim = nkv * hd;
    let scale = 1.0 / (hd as f32).sqrt();
    let p = AttnParams {
        n_heads: nh,
        n_kv_heads: nkv,
        head_dim: hd,
        scale,
        window,
    };
    let mut kv = b
        .alloc_kv(KvShape {
            layers,
            ctx,
            n_kv_heads: nkv,
            head_dim: hd,
        })
        .expect("alloc_kv");
    let layer = layers - 1;
    let mut keys = Vec::new();
    let mut vals = Vec::new();
    let mut pos = 0;
    for (step, rows) in std::iter::once(rows0)
        .chain(std::iter::repeat_n(1, steps))
        .enumerate()
    {
        let q = rng.vec(rows * nh * hd);
        let k: Vec<f32> = rng.vec(rows * kvdim).iter().map(|v| v * 3.0).collect();
        let v = rng.vec(rows * kvdim);
        keys.extend_from_slice(&k);
        vals.extend_from_slice(&v);
        let qb = upload_rows(b, &q, rows, nh * hd);
        let kb = upload_rows(b, &k, rows, kvdim);
        let vb = upload_rows(b, &v, rows, kvdim);
        let mut out = b.alloc(rows * nh * hd).expect("alloc");
        b.attention(&mut out, &qb, &kb, &vb, &mut kv, layer, rows, pos, &p)
            .expect("attention");
        let want = ref_attention(&q, &keys, &vals, rows, pos, nh, nkv, hd, scale, window);
        // Scores |s| <= ~3*sqrt(hd)*scale; f32 dot products, ex2.approx (2^-22 relative) and the
        // f32 softmax sums over <= ~150 keys: outputs (|v| <= 1) within 2e-5 absolute.
        assert_close(
            &format!("attention nh={nh} nkv={nkv} hd={hd} window={window:?} step {step} rows {rows} pos {pos}"),
            &download(b, &out, rows * nh * hd),
            &want,
            |_| 2e-5,
        );
        pos += rows;
    }
}

pub fn attention<D: GpuDriver + 'static>(b: &CudaBackend<D>) {
    let mut rng = Rng::new(11);
    // GQA group 2, head_dim 12 (not a multiple of 32); prefill 3 then decode
    attention_case(b, &mut rng, 4, 2, 12, None, 3, 3, 2);
    // MHA, one row
    attention_case(b, &mut rng, 2, 2, 8, None, 1, 2, 1);
    // sliding window shorter than the history
    attention_case(b, &mut rng, 4, 1, 16, Some(3), 5, 3, 1);
    // head_dim > 128: the second half of each lane's K registers (split kernels for prefill too)
    attention_case(b, &mut rng, 2, 1, 132, None, 4, 1, 1);
    // head_dim 128: every accumulator lane of the prefill kernel; 9 rows = a full block of 8
    // query rows and a block with one
    attention_case(b, &mut rng, 4, 2, 128, None, 9, 1, 1);
}

pub fn attention_splits<D: GpuDriver + 'static>(b: &CudaBackend<D>) {
    let mut rng = Rng::new(12);
    // a decode step over 150 positions -> 5 splits of 32 (the combine kernel); window 100 cuts
    // into the first split.
    // (prefill of head_dim <= 128 takes the tiled kernel: 5 key tiles of 32, causal masks
    // inside tiles, a window that starts inside a tile)
    attention_case(b, &mut rng, 3, 1, 8, None, 149, 1, 1);
    attention_case(b, &mut rng, 2, 1, 4, Some(100), 140, 1, 1);
    // prefill through the split kernels (head_dim > 128): 70 rows over 3 splits of 32, so
    // rows before position 32 / 64 leave later splits empty
    attention_case(b, &mut rng, 2, 1, 136, None, 70, 1, 1);
}

pub fn attention_preconditions<D: GpuDriver + 'static>(b: &CudaBackend<D>) {
    let mut kv = b
        .alloc_kv(KvShape {
            layers: 1,
            ctx: 4,
            n_kv_heads: 1,
            head_dim: 8,
        })
        .expect("alloc_kv");
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
        b.attention(&mut out, &q, &k, &k, &mut kv, 0, 2, 3, &p)
            .is_err(),
        "past the context"
    );
    assert!(
        b.attention(&mut out, &q, &k, &k, &mut kv, 1, 1, 0, &p)
            .is_err(),
        "layer out of range"
    );
    let mut kv6 = b
        .alloc_kv(KvShape {
            layers: 1,
            ctx: 4,
            n_kv_heads: 1,
            head_dim: 6,
        })
        .expect("alloc_kv");
    let p6 = AttnParams { head_dim: 6, ..p };
    let e = b
        .attention(&mut out, &q, &k, &k, &mut kv6, 0, 1, 0, &p6)
        .expect_err("head_dim 6 is not a multiple of 4");
    assert!(e.to_string().contains("head_dim"), "{e}");
    let p3 = AttnParams {
        n_heads: 3,
        n_kv_heads: 2,
        ..p
    };
    assert!(
        b.attention(&mut out, &q, &k, &k, &mut kv, 0, 1, 0, &p3)
            .is_err(),
        "params disagree with the cache"
    );
}
