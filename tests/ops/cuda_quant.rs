//! Block-quantized weights on the CUDA backend (interpreter and GPU): `matmul` on Q8_0, Q4_0,
//! Q4_1, Q4_K and Q6_K matrices as stored (kernels/matvec_q.ptx) and `embed` from quantized
//! tables (kernels/embed_q.ptx), against the reference dequantization of src/quant.rs (ggml's
//! `dequantize_row_*`) and an f64 dot product. Written over the `Backend` trait; instantiated
//! by tests/cuda_kernels.rs and tests/cuda_gpu.rs with [`cuda_quant_tests!`].
//!
//! Blocks are random bytes with sane f16 scales (random quants, random 6-bit K-quant scales and
//! mins, random signed Q6_K scales), so every nibble, high bit and scale field is exercised.

use half::f16;
use minfer::backend::Backend;
use minfer::internals::quant;
use minfer::{DType, WeightTensor};

use super::{assert_close, download, upload_rows, Rng};

/// Instantiate the quantized cases as `#[test]`s. `$make` gives `Option<backend>`; None means
/// no device here, and `$make` has printed why.
#[allow(unused_macros)]
macro_rules! cuda_quant_tests {
    ($make:expr) => {
        $crate::ops::cuda_quant::cuda_quant_tests!(@cases $make;
            quant_matvec,
            quant_embed,
            quant_preconditions,
        );
    };
    (@cases $make:expr; $($case:ident),* $(,)?) => {
        $(
            #[test]
            fn $case() {
                if let Some(backend) = $make {
                    $crate::ops::cuda_quant::$case(&backend);
                }
            }
        )*
    };
}
#[allow(unused_imports)]
pub(crate) use cuda_quant_tests;

/// The block types with GPU kernels.
pub const TYPES: [DType; 5] = [
    DType::Q8_0,
    DType::Q4_0,
    DType::Q4_1,
    DType::Q4K,
    DType::Q6K,
];

fn put_f16(b: &mut [u8], at: usize, v: f32) {
    b[at..at + 2].copy_from_slice(&f16::from_f32(v).to_le_bytes());
}

/// `n` random elements of `dtype` (whole blocks) and their dequantized values.
pub fn random_blocks(rng: &mut Rng, dtype: DType, n: usize) -> (Vec<u8>, Vec<f32>) {
    let (be, bb) = dtype.block();
    assert_eq!(n % be, 0, "{n} elements of {dtype}");
    let mut bytes = vec![0u8; n / be * bb];
    for b in bytes.iter_mut() {
        *b = rng.next() as u8;
    }
    // scales in 2^-8 .. 2^-5 (either sign for Q4_1's min): finite, and products stay O(1)
    let scale = |rng: &mut Rng| 0.004 + 0.03 * (rng.f32() + 1.0) / 2.0;
    for blk in bytes.chunks_exact_mut(bb) {
        match dtype {
            DType::Q8_0 | DType::Q4_0 => put_f16(blk, 0, scale(rng)),
            DType::Q4_1 => {
                put_f16(blk, 0, scale(rng));
                put_f16(blk, 2, rng.f32() * 0.1);
            }
            DType::Q4K => {
                put_f16(blk, 0, scale(rng) / 8.0);
                put_f16(blk, 2, scale(rng) / 8.0);
            }
            DType::Q6K => put_f16(blk, 208, scale(rng) / 16.0),
            other => panic!("no random blocks of {other}"),
        }
    }
    let vals = quant::dequantize_to_vec(dtype, &bytes, n).expect("dequantize");
    assert!(vals.iter().all(|v| v.is_finite()));
    (bytes, vals)
}

pub fn quant_matvec<B: Backend>(b: &B) {
    let mut rng = Rng::new(140);
    for dtype in TYPES {
        let be = dtype.block().0;
        // K: one block, one block short of a lane's second trip / just past it (lanes loop),
        // for 32-weight blocks also an odd count; N: 1, 3, 17 (not a multiple of 8 warps).
        let ks: Vec<usize> = if be == 32 {
            vec![32, 96, 33 * 32, 70 * 32]
        } else {
            vec![256, 768, 9 * 256, 11 * 256]
        };
        for (i, &k) in ks.iter().enumerate() {
            for &(n, rows) in &[(1usize, 1usize), (17, 3), (3, 2), (9, 1)] {
                if i >= 2 && n > 9 {
                    continue; // keep the interpreter's time bounded
                }
                let (bytes, w) = random_blocks(&mut rng, dtype, n * k);
                let wt = WeightTensor::from_bytes("wq", dtype, vec![n, k], &bytes).expect("tensor");
                let wm = b.upload(&wt).expect("upload");
                let x = rng.vec(rows * k);
                let xb = upload_rows(b, &x, rows, k);
                let bias = rng.vec(n);
                let bm = b
                    .upload(&WeightTensor::from_f32("bias", vec![n], &bias))
                    .expect("upload bias");
                let with_bias = n % 2 == 1;
                let mut out = b.alloc(rows * n).expect("alloc");
                b.matmul(&mut out, &xb, &wm, with_bias.then_some(&bm), rows)
                    .expect("matmul");
                let got = download(b, &out, rows * n);
                let mut want = vec![0f64; rows * n];
                let mut mag = vec![0f64; rows * n];
                for r in 0..rows {
                    for o in 0..n {
                        let (mut s, mut m) = (0f64, 0f64);
                        for i in 0..k {
                            let p = w[o * k + i] as f64 * x[r * k + i] as f64;
                            s += p;
                            m += p.abs();
                        }
                        if with_bias {
                            s += bias[o] as f64;
                            m += (bias[o] as f64).abs();
                        }
                        want[r * n + o] = s;
                        mag[r * n + o] = m;
                    }
                }
                // f32 sums in the kernel's order: per block the integer dot (exact products of
                // small integers by f32 x, rounded per add) is scaled once; error a few ulps of
                // the sum of |w x| per block, summed over K/32 blocks: 1e-5 of sum |w x|.
                // A wrong nibble, high bit or scale is off by a whole weight's |w x|.
                assert_close(
                    &format!("matmul {dtype} {rows}x{n}x{k}"),
                    &got,
                    &want,
                    |i| 1e-5 * mag[i] + 1e-6,
                );
            }
        }
    }
}

pub fn quant_embed<B: Backend>(b: &B) {
    let mut rng = Rng::new(141);
    for dtype in TYPES {
        let be = dtype.block().0;
        for &(vocab, dim) in &[(1usize, be), (7, 3 * be), (3, 11 * be)] {
            let (bytes, vals) = random_blocks(&mut rng, dtype, vocab * dim);
            let wt =
                WeightTensor::from_bytes("table", dtype, vec![vocab, dim], &bytes).expect("tensor");
            let t = b.upload(&wt).expect("upload");
            let tokens: Vec<u32> = (0..3).map(|_| rng.below(vocab as u32)).collect();
            let mut out = b.alloc(3 * dim).expect("alloc");
            b.embed(&mut out, &t, &tokens).expect("embed");
            let got = download(b, &out, 3 * dim);
            let want: Vec<f64> = tokens
                .iter()
                .flat_map(|&t| vals[t as usize * dim..(t as usize + 1) * dim].iter())
                .map(|&v| v as f64)
                .collect();
            // The same f32 operations as the reference dequantization, unfused: bit-equal.
            assert_close(&format!("embed {dtype} {vocab}x{dim}"), &got, &want, |_| {
                0.0
            });
            assert!(
                b.embed(&mut out, &t, &[vocab as u32]).is_err(),
                "token id = vocab must be an error"
            );
        }
    }
}

pub fn quant_preconditions<B: Backend>(b: &B) {
    // A Q4_K matrix whose rows are not whole super-blocks cannot exist in a GGUF file; the
    // upload refuses it with the tensor's name rather than launching a kernel that would read
    // past each row.
    let bytes = vec![0u8; 144 * 3];
    let wt = WeightTensor::from_bytes("odd_q4k", DType::Q4K, vec![6, 128], &bytes);
    if let Ok(wt) = wt {
        let e = match b.upload(&wt) {
            Ok(_) => panic!("rows of 128 Q4_K weights must be refused"),
            Err(e) => e,
        };
        assert!(e.to_string().contains("odd_q4k"), "{e}");
    }
    // Q5_K has no kernel: uploaded as f32 values, the product still matches.
    let mut rng = Rng::new(142);
    let (n, k) = (3usize, 256usize);
    let mut bytes = vec![0u8; n * 176];
    for x in bytes.iter_mut() {
        *x = rng.next() as u8;
    }
    for blk in bytes.chunks_exact_mut(176) {
        put_f16(blk, 0, 0.002);
        put_f16(blk, 2, 0.001);
    }
    let w = quant::dequantize_to_vec(DType::Q5K, &bytes, n * k).expect("dequantize");
    let wt = WeightTensor::from_bytes("q5k", DType::Q5K, vec![n, k], &bytes).expect("tensor");
    let wm = b.upload(&wt).expect("upload Q5_K");
    let x = rng.vec(k);
    let xb = upload_rows(b, &x, 1, k);
    let mut out = b.alloc(n).expect("alloc");
    b.matmul(&mut out, &xb, &wm, None, 1).expect("matmul");
    let want: Vec<f64> = (0..n)
        .map(|o| {
            (0..k)
                .map(|i| w[o * k + i] as f64 * x[i] as f64)
                .sum::<f64>()
        })
        .collect();
    assert_close(
        "matmul Q5_K (f32 fallback)",
        &download(b, &out, n),
        &want,
        |_| 1e-4,
    );
}
