//! The fast matmul against `matmul_reference`, for every instruction set this CPU has, every
//! stored dtype, with and without bias, over awkward shapes (not multiples of any tile, 1, odd).

mod common;
use common::Rng;

use half::{bf16, f16};
use minfer::internals::matmul::{matmul, matmul_reference, matmul_with, MATVEC_MAX_ROWS};
use minfer::internals::simd::{Isa, Kernels};
use minfer::Error;
use minfer::{DType, WeightTensor};

/// A weight tensor of `dtype` holding `vals` (rounded to the dtype), and the rounded values.
fn weight(dtype: DType, n_out: usize, n_in: usize, vals: &[f32]) -> (WeightTensor, Vec<f32>) {
    let (bytes, exact): (Vec<u8>, Vec<f32>) = match dtype {
        DType::F32 => (bytemuck::cast_slice(vals).to_vec(), vals.to_vec()),
        DType::BF16 => {
            let h: Vec<bf16> = vals.iter().map(|&v| bf16::from_f32(v)).collect();
            (
                bytemuck::cast_slice(&h).to_vec(),
                h.iter().map(|v| v.to_f32()).collect(),
            )
        }
        DType::F16 => {
            let h: Vec<f16> = vals.iter().map(|&v| f16::from_f32(v)).collect();
            (
                bytemuck::cast_slice(&h).to_vec(),
                h.iter().map(|v| v.to_f32()).collect(),
            )
        }
        _ => unreachable!("plain dtypes only"),
    };
    (
        WeightTensor::from_bytes("w", dtype, vec![n_out, n_in], &bytes).expect("sizes match"),
        exact,
    )
}

/// Every table this CPU supports, plus the AVX-512 table with the bf16 dot product switched
/// off, so both bf16 paths run, and with the integer prefill GEMM switched off, so both
/// quantized prefill paths run.
fn tables() -> Vec<Kernels> {
    let (mut v, mut not_run) = (Vec::new(), Vec::new());
    for isa in Isa::ALL {
        match Kernels::for_isa(isa) {
            Some(k) => {
                if k.has_bf16_dot() {
                    v.push(k.without_bf16_dot());
                }
                if k.has_int_gemm() {
                    v.push(k.without_bf16_dot().without_int_prefill());
                }
                v.push(k);
            }
            None => not_run.push(format!("{isa} (this CPU/architecture lacks it)")),
        }
    }
    let ran: Vec<String> = v.iter().map(|k| k.describe()).collect();
    common::report_isas("matmul", &ran, &not_run);
    v
}

const ROWS: [usize; 7] = [1, 2, 3, 7, 16, 17, 33];
const DIMS: [usize; 7] = [1, 3, 17, 63, 65, 130, 577];
/// Input widths: DIMS plus one past the prefill k-slice (640), so slices accumulate.
const IN_DIMS: [usize; 8] = [1, 3, 17, 63, 65, 130, 577, 1300];

#[test]
fn matmul_matches_reference() {
    let mut rng = Rng::new(1234);
    let tabs = tables();
    for dtype in [DType::F32, DType::BF16, DType::F16] {
        for &n_in in &IN_DIMS {
            for &n_out in &DIMS {
                let (w, wf) = weight(dtype, n_out, n_in, &rng.vec(n_out * n_in));
                let bias_v = rng.vec(n_out);
                let rows_max = *ROWS.last().unwrap_or(&1);
                let x_all = rng.vec(rows_max * n_in);
                for &rows in &ROWS {
                    let x = &x_all[..rows * n_in];
                    for bias in [None, Some(&bias_v[..])] {
                        let mut want = vec![0.0f32; rows * n_out];
                        matmul_reference(&mut want, x, rows, &w, bias).expect("reference");
                        for k in &tabs {
                            // Sentinel past the end: the kernel must not write there.
                            let mut got = vec![f32::NAN; rows * n_out + 1];
                            got[rows * n_out] = 7.0;
                            matmul_with(k, &mut got, x, rows, &w, bias).expect("matmul");
                            assert_eq!(got[rows * n_out], 7.0, "wrote past the end");
                            let bf16_acts = dtype == DType::BF16 && rows > 1 && k.has_bf16_dot();
                            for r in 0..rows {
                                for o in 0..n_out {
                                    let abs: f32 = (0..n_in)
                                        .map(|i| (x[r * n_in + i] * wf[o * n_in + i]).abs())
                                        .sum::<f32>()
                                        + bias.map_or(0.0, |b| b[o].abs());
                                    // Both sides sum n_in + 1 terms in f32 in different orders:
                                    // each is within (n+2)·EPSILON/2·Σ|terms| of the exact value,
                                    // so they differ by at most (n+2)·EPSILON·Σ|terms|. With bf16
                                    // activations each x is rounded by up to 2⁻⁹ relative,
                                    // adding at most 2⁻⁹·Σ|x·w|; we allow 2⁻⁸.
                                    let mut tol = (n_in as f32 + 2.0) * f32::EPSILON * abs;
                                    if bf16_acts {
                                        tol += abs / 256.0;
                                    }
                                    let (g, e) = (got[r * n_out + o], want[r * n_out + o]);
                                    assert!(
                                        (g - e).abs() <= tol + 1e-30,
                                        "{} {dtype} rows={rows} in={n_in} out={n_out} bias={} at ({r},{o}): got {g}, want {e}, tol {tol}",
                                        k.describe(),
                                        bias.is_some()
                                    );
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn many_rows_cross_row_blocks() {
    // 300 rows of 1300: more than one L2 row block on every path, and three k-slices.
    let mut rng = Rng::new(99);
    let (rows, n_in, n_out) = (300, 1300, 9);
    let x = rng.vec(rows * n_in);
    let bias = rng.vec(n_out);
    for dtype in [DType::F32, DType::BF16, DType::F16] {
        let (w, wf) = weight(dtype, n_out, n_in, &rng.vec(n_out * n_in));
        let mut want = vec![0.0f32; rows * n_out];
        matmul_reference(&mut want, &x, rows, &w, Some(&bias)).expect("reference");
        for k in tables() {
            let mut got = vec![f32::NAN; rows * n_out];
            matmul_with(&k, &mut got, &x, rows, &w, Some(&bias)).expect("matmul");
            for r in 0..rows {
                for o in 0..n_out {
                    let abs: f32 = (0..n_in)
                        .map(|i| (x[r * n_in + i] * wf[o * n_in + i]).abs())
                        .sum::<f32>()
                        + bias[o].abs();
                    // As in matmul_matches_reference.
                    let mut tol = (n_in as f32 + 2.0) * f32::EPSILON * abs;
                    if dtype == DType::BF16 && k.has_bf16_dot() {
                        tol += abs / 256.0;
                    }
                    let (g, e) = (got[r * n_out + o], want[r * n_out + o]);
                    assert!(
                        (g - e).abs() <= tol,
                        "{} {dtype} at ({r},{o}): got {g}, want {e}, tol {tol}",
                        k.describe()
                    );
                }
            }
        }
    }
}

#[test]
fn default_entry_point_and_empty_shapes() {
    let mut rng = Rng::new(5);
    let (w, _) = weight(DType::F32, 5, 3, &rng.vec(15));
    let x = rng.vec(6);
    let mut a = vec![0.0; 10];
    let mut b = vec![0.0; 10];
    matmul(&mut a, &x, 2, &w, None).expect("matmul");
    matmul_reference(&mut b, &x, 2, &w, None).expect("reference");
    for (p, q) in a.iter().zip(&b) {
        // Three products: (3+2)·EPSILON relative to Σ|x·w| ≤ 3 here (|x|, |w| < 1).
        assert!((p - q).abs() <= 5.0 * f32::EPSILON * 3.0);
    }
    // rows == 0 touches nothing.
    let mut c = vec![9.0f32; 4];
    matmul(&mut c, &[], 0, &w, None).expect("zero rows");
    assert_eq!(c, vec![9.0; 4]);
    // in == 0: the output is the bias.
    let w0 = WeightTensor::from_bytes("w0", DType::F32, vec![3, 0], &[]).expect("empty");
    let mut d = vec![1.0f32; 6];
    matmul(&mut d, &[], 2, &w0, Some(&[1.0, 2.0, 3.0])).expect("in = 0");
    assert_eq!(d, vec![1.0, 2.0, 3.0, 1.0, 2.0, 3.0]);
}

#[test]
fn bad_arguments_are_errors() {
    let (w, _) = weight(DType::F32, 4, 8, &[0.5; 32]);
    let mut out = vec![0.0; 8];
    let short_x = matmul(&mut out, &[0.0; 15], 2, &w, None);
    assert!(
        matches!(short_x, Err(Error::InvalidArgument(ref m)) if m.contains("matmul w")),
        "{short_x:?}"
    );
    let short_out = matmul(&mut out[..7], &[0.0; 16], 2, &w, None);
    assert!(
        matches!(short_out, Err(Error::InvalidArgument(_))),
        "{short_out:?}"
    );
    let short_bias = matmul(&mut out, &[0.0; 16], 2, &w, Some(&[0.0; 3]));
    assert!(
        matches!(short_bias, Err(Error::InvalidArgument(ref m)) if m.contains("bias")),
        "{short_bias:?}"
    );
    let w3 = WeightTensor::from_f32("w3", vec![2, 2, 2], &[0.0; 8]);
    assert!(matches!(
        matmul(&mut out, &[0.0; 16], 2, &w3, None),
        Err(Error::ShapeMismatch { .. })
    ));
}

// ---- block-quantized weights ------------------------------------------------------------

use minfer::internals::matmul::dequantize_row;
use minfer::internals::quant::{dequantize_to_vec, quantize_q8_0_reference};
use minfer::internals::quant_kernels::quantize_q8_0;

/// Random blocks of `dtype` with finite, moderate f16 scales (random bytes everywhere else:
/// every nibble, high bit and 6-bit scale pattern is fair game).
fn random_blocks(rng: &mut Rng, dtype: DType, n_blocks: usize) -> Vec<u8> {
    let (_, bb) = dtype.block();
    let f16_fields: &[usize] = match dtype {
        DType::Q8_0 | DType::Q4_0 => &[0],
        DType::Q4_1 | DType::Q4K | DType::Q5K => &[0, 2],
        DType::Q6K => &[208],
        _ => unreachable!("quantized types only"),
    };
    let mut out = Vec::with_capacity(n_blocks * bb);
    for _ in 0..n_blocks {
        let mut b: Vec<u8> = (0..bb).map(|_| rng.next() as u8).collect();
        for &off in f16_fields {
            // Scales of either sign, 1e-3..2e-2: weights of order 0.1 like real checkpoints.
            let v = (0.001 + 0.019 * (rng.f32() * 0.5 + 0.5))
                * if rng.next() & 1 == 0 { 1.0 } else { -1.0 };
            b[off..off + 2].copy_from_slice(&f16::from_f32(v).to_le_bytes());
        }
        out.extend_from_slice(&b);
    }
    out
}

#[test]
fn quantized_matmul_matches_dequantized() {
    let mut rng = Rng::new(77);
    let quant = [
        DType::Q8_0,
        DType::Q4_0,
        DType::Q4_1,
        DType::Q4K,
        DType::Q5K,
        DType::Q6K,
    ];
    for k in tables() {
        for dtype in quant {
            let be = dtype.block().0;
            let ins: Vec<usize> = if be == 32 {
                vec![32, 96, 576]
            } else {
                vec![256, 768]
            };
            for n_in in ins {
                for n_out in [1usize, 3, 17, 66] {
                    let bytes = random_blocks(&mut rng, dtype, n_out * n_in / be);
                    let w = WeightTensor::from_bytes("wq", dtype, vec![n_out, n_in], &bytes)
                        .expect("sizes match");
                    let wf = dequantize_to_vec(dtype, &bytes, n_out * n_in).expect("dequantize");
                    let bias_v = rng.vec(n_out);
                    for rows in [1usize, 2, 3, 5, 9, 16, 17, 40] {
                        // Activations with a spread of magnitudes, so block scales differ.
                        let x: Vec<f32> = (0..rows * n_in)
                            .map(|i| rng.f32() * if i % 7 == 0 { 4.0 } else { 1.0 })
                            .collect();
                        for bias in [None, Some(&bias_v[..])] {
                            let mut got = vec![f32::NAN; rows * n_out];
                            matmul_with(&k, &mut got, &x, rows, &w, bias)
                                .expect("quantized matmul");
                            for r in 0..rows {
                                let xr = &x[r * n_in..(r + 1) * n_in];
                                for o in 0..n_out {
                                    let wr = &wf[o * n_in..(o + 1) * n_in];
                                    let exact: f64 = xr
                                        .iter()
                                        .zip(wr)
                                        .map(|(a, b)| *a as f64 * *b as f64)
                                        .sum::<f64>()
                                        + bias.map_or(0.0, |b| b[o] as f64);
                                    // Activation rounding: each x moves by at most dx/2, dx =
                                    // max|x| over its block of 32 / 127, so the sum moves by at
                                    // most Σ |w|·dx/2 (exactly what the kernels approximate:
                                    // every integer sum is exact). On top, f32 rounding of
                                    // scales, products and the running sum: (n+8)·EPSILON
                                    // relative to Σ|w·x| plus that rounding slack.
                                    let mut act = 0.0f64;
                                    let mut abs = bias.map_or(0.0, |b| b[o].abs() as f64);
                                    for (xb, wb) in xr.chunks(32).zip(wr.chunks(32)) {
                                        let dx = xb.iter().fold(0.0f32, |m, v| m.max(v.abs()))
                                            as f64
                                            / 127.0;
                                        act += wb.iter().map(|v| v.abs() as f64).sum::<f64>() * dx
                                            / 2.0;
                                        abs += xb
                                            .iter()
                                            .zip(wb)
                                            .map(|(a, b)| (*a as f64 * *b as f64).abs())
                                            .sum::<f64>();
                                    }
                                    let tol = act * 1.001
                                        + (n_in as f64 + 8.0) * f32::EPSILON as f64 * (abs + act);
                                    let g = got[r * n_out + o] as f64;
                                    assert!(
                                        (g - exact).abs() <= tol,
                                        "{} {dtype} rows={rows} in={n_in} out={n_out} at ({r},{o}): got {g}, exact {exact}, tol {tol}",
                                        k.describe()
                                    );
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn quantized_reference_and_rows() {
    let mut rng = Rng::new(8);
    for dtype in [DType::Q8_0, DType::Q4_1, DType::Q4K, DType::Q6K] {
        let be = dtype.block().0;
        let (n_out, n_in) = (5, 2 * be);
        let bytes = random_blocks(&mut rng, dtype, n_out * n_in / be);
        let w = WeightTensor::from_bytes("wq", dtype, vec![n_out, n_in], &bytes).expect("sizes");
        let wf = dequantize_to_vec(dtype, &bytes, n_out * n_in).expect("dequantize");
        // dequantize_row is exactly the reference dequantization of that row.
        let mut row = vec![0.0; n_in];
        dequantize_row(&w, 3, &mut row).expect("row");
        assert_eq!(row, wf[3 * n_in..4 * n_in]);
        assert!(dequantize_row(&w, 5, &mut row).is_err(), "row past the end");
        // matmul_reference handles quantized weights through the same dequantization.
        let x = rng.vec(n_in);
        let mut out = vec![0.0; n_out];
        matmul_reference(&mut out, &x, 1, &w, None).expect("reference");
        for o in 0..n_out {
            let want: f32 = (0..n_in).map(|i| x[i] * wf[o * n_in + i]).sum();
            assert_eq!(out[o], want, "same order of operations");
        }
    }
    // A row that is not whole blocks is a typed error, not a panic.
    let bytes = random_blocks(&mut rng, DType::Q4K, 3);
    let w =
        WeightTensor::from_bytes("odd", DType::Q4K, vec![2, 384], &bytes).expect("768 elements");
    let mut out = vec![0.0; 2];
    let e = matmul(&mut out, &[0.0; 384], 1, &w, None);
    assert!(
        matches!(e, Err(Error::UnsupportedDtype { ref name, .. }) if name == "odd"),
        "{e:?}"
    );
}

#[test]
fn quantize_q8_0_matches_reference() {
    let mut rng = Rng::new(21);
    for n in [0usize, 32, 64, 32 * 1000, 32 * 2049] {
        let mut x = rng.vec(n);
        if n >= 64 {
            x[32..64].fill(0.0); // an all-zero block: d = 0, every q = 0
        }
        assert_eq!(
            quantize_q8_0(&x).expect("fast"),
            quantize_q8_0_reference(&x).expect("reference"),
            "n={n}"
        );
    }
    assert!(quantize_q8_0(&[0.0; 33]).is_err());
}

/// Prefill results are batch-invariant: a row's output is bit-identical whether it is computed
/// in a batch of 17 rows (the smallest prefill; up to 16 rows is the decode matvec, see
/// `decode_batches_are_bit_identical_to_one_row`), inside a larger batch, at any offset, and
/// with any number of threads. Decode sums in another order and is not compared.
#[test]
fn prefill_is_batch_invariant() {
    let mut rng = Rng::new(4242);
    let (n_in, n_out, rows) = (96, 37, 41);
    let x = rng.vec(rows * n_in);
    let one = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .expect("pool");
    for k in tables() {
        for dtype in [
            DType::F32,
            DType::BF16,
            DType::F16,
            DType::Q8_0,
            DType::Q4_1,
        ] {
            let w = if dtype.is_quantized() {
                let bytes = random_blocks(&mut rng, dtype, n_out * n_in / 32);
                WeightTensor::from_bytes("wq", dtype, vec![n_out, n_in], &bytes).expect("sizes")
            } else {
                weight(dtype, n_out, n_in, &rng.vec(n_out * n_in)).0
            };
            let mut full = vec![0.0f32; rows * n_out];
            matmul_with(&k, &mut full, &x, rows, &w, None).expect("matmul");
            let mut single = vec![0.0f32; rows * n_out];
            one.install(|| matmul_with(&k, &mut single, &x, rows, &w, None))
                .expect("matmul, one thread");
            assert_eq!(full, single, "{} {dtype}: 1 vs 2 threads", k.describe());
            let min = MATVEC_MAX_ROWS + 1;
            for (start, len) in [(0, min), (3, min + 1), (5, 19), (7, 33), (0, rows - 1)] {
                let mut part = vec![0.0f32; len * n_out];
                matmul_with(
                    &k,
                    &mut part,
                    &x[start * n_in..(start + len) * n_in],
                    len,
                    &w,
                    None,
                )
                .expect("matmul");
                assert_eq!(
                    part,
                    full[start * n_out..(start + len) * n_out],
                    "{} {dtype}: rows {start}..{} alone vs in a batch of {rows}",
                    k.describe(),
                    start + len
                );
            }
        }
    }
}

/// Decode batches (2..=16 rows, the server's decode steps) compute every row bit-identically
/// to a one-row call on that row, for every weight type and instruction set, at widths that are
/// not multiples of any vector or block tile, with and without bias, on one thread and on the
/// pool: a request's greedy output must not depend on how many others share its step. The
/// same products are checked against the reference by `matmul_matches_reference` and
/// `quantized_matmul_matches_dequantized` (rows 1..=17).
#[test]
fn decode_batches_are_bit_identical_to_one_row() {
    let mut rng = Rng::new(1616);
    let one = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .expect("pool");
    let plain_ins = [1usize, 15, 17, 63, 64, 65, 130, 577];
    let types = [
        DType::F32,
        DType::BF16,
        DType::F16,
        DType::Q8_0,
        DType::Q4_0,
        DType::Q4_1,
        DType::Q4K,
        DType::Q5K,
        DType::Q6K,
    ];
    let mut checked = 0usize;
    for k in tables() {
        for dtype in types {
            let ins: Vec<usize> = match dtype.block().0 {
                1 => plain_ins.to_vec(),
                32 => vec![32, 96, 576],
                _ => vec![256, 768],
            };
            for n_in in ins {
                // 1 output, a few, and enough (with 576 inputs) to split over the pool.
                for n_out in [1usize, 7, 261] {
                    let w = if dtype.is_quantized() {
                        let bytes = random_blocks(&mut rng, dtype, n_out * n_in / dtype.block().0);
                        WeightTensor::from_bytes("wq", dtype, vec![n_out, n_in], &bytes)
                            .expect("sizes")
                    } else {
                        weight(dtype, n_out, n_in, &rng.vec(n_out * n_in)).0
                    };
                    let bias_v = rng.vec(n_out);
                    let x: Vec<f32> = (0..MATVEC_MAX_ROWS * n_in)
                        .map(|i| rng.f32() * if i % 5 == 0 { 3.0 } else { 1.0 })
                        .collect();
                    for bias in [None, Some(&bias_v[..])] {
                        // Each row alone (the decode of one sequence).
                        let mut alone = vec![0.0f32; MATVEC_MAX_ROWS * n_out];
                        for r in 0..MATVEC_MAX_ROWS {
                            matmul_with(
                                &k,
                                &mut alone[r * n_out..(r + 1) * n_out],
                                &x[r * n_in..(r + 1) * n_in],
                                1,
                                &w,
                                bias,
                            )
                            .expect("one row");
                        }
                        for rows in 2..=MATVEC_MAX_ROWS {
                            // Batches start at different rows, so each row meets several
                            // batch sizes and positions inside the batch.
                            let start = (rows * 7) % (MATVEC_MAX_ROWS - rows + 1);
                            let xs = &x[start * n_in..(start + rows) * n_in];
                            let want = &alone[start * n_out..(start + rows) * n_out];
                            let mut got = vec![f32::NAN; rows * n_out];
                            matmul_with(&k, &mut got, xs, rows, &w, bias).expect("batch");
                            let mut got1 = vec![f32::NAN; rows * n_out];
                            one.install(|| matmul_with(&k, &mut got1, xs, rows, &w, bias))
                                .expect("batch, one thread");
                            for (g, which) in [(&got, "pool"), (&got1, "one thread")] {
                                for (i, (a, b)) in g.iter().zip(want).enumerate() {
                                    assert!(
                                        a.to_bits() == b.to_bits(),
                                        "{} {dtype} in={n_in} out={n_out} bias={} rows={rows} ({which}): row {} col {} got {a:e}, alone {b:e}",
                                        k.describe(),
                                        bias.is_some(),
                                        start + i / n_out,
                                        i % n_out
                                    );
                                }
                            }
                            checked += 1;
                        }
                    }
                }
            }
        }
    }
    assert!(checked > 0);
}
