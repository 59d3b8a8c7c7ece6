//! CPU matrix products over weights in their stored dtype.
//!
//! `out[r, o] = Σ_i x[r, i] · w[o, i] (+ bias[o])`, w stored `[out, in]` (Hugging Face layout).
//! Decode (rows == 1) is a matrix-vector product bound by reading the weights once; prefill is
//! a matrix-matrix product that should reuse each weight row across many activation rows.

use half::{bf16, f16};
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::loader::{DType, WeightTensor};

/// Plain reference: one output at a time, f32 accumulation, no SIMD, no threads.
pub fn matmul_reference(out: &mut [f32], x: &[f32], rows: usize, w: &WeightTensor, bias: Option<&[f32]>) -> Result<()> {
    let (n_out, n_in) = dims(w)?;
    let wf = w.to_f32_vec()?;
    for r in 0..rows {
        for o in 0..n_out {
            let mut acc = 0.0f32;
            for i in 0..n_in {
                acc += x[r * n_in + i] * wf[o * n_in + i];
            }
            out[r * n_out + o] = acc + bias.map_or(0.0, |b| b[o]);
        }
    }
    Ok(())
}

fn dims(w: &WeightTensor) -> Result<(usize, usize)> {
    match w.shape[..] {
        [o, i] => Ok((o, i)),
        _ => Err(Error::ShapeMismatch { name: w.name.clone(), expected: vec![0, 0], got: w.shape.clone() }),
    }
}

/// The product, parallel over output features.
pub fn matmul(out: &mut [f32], x: &[f32], rows: usize, w: &WeightTensor, bias: Option<&[f32]>) -> Result<()> {
    let (n_out, n_in) = dims(w)?;
    if x.len() < rows * n_in || out.len() < rows * n_out {
        return Err(Error::arg(format!("matmul {}: buffers too small for {rows} rows", w.name)));
    }
    let row_dot = |o: usize, xr: &[f32]| -> f32 {
        match w.dtype {
            DType::F32 => dot_f32(xr, &w.as_f32().expect("aligned at upload")[o * n_in..(o + 1) * n_in]),
            DType::BF16 => dot_bf16(xr, &w.as_bf16().expect("aligned at upload")[o * n_in..(o + 1) * n_in]),
            DType::F16 => dot_f16(xr, &w.as_f16().expect("aligned at upload")[o * n_in..(o + 1) * n_in]),
            _ => f32::NAN,
        }
    };
    if w.dtype.is_quantized() {
        return Err(Error::UnsupportedDtype { name: w.name.clone(), dtype: w.dtype.to_string() });
    }
    // out is [rows, n_out]; compute column blocks in parallel, all rows per weight row.
    let mut cols: Vec<Vec<f32>> = Vec::new();
    let _ = &mut cols;
    let results: Vec<(usize, Vec<f32>)> = (0..n_out)
        .into_par_iter()
        .with_min_len(16)
        .map(|o| (o, (0..rows).map(|r| row_dot(o, &x[r * n_in..(r + 1) * n_in]) + bias.map_or(0.0, |b| b[o])).collect()))
        .collect();
    for (o, vals) in results {
        for (r, v) in vals.into_iter().enumerate() {
            out[r * n_out + o] = v;
        }
    }
    Ok(())
}

fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}
fn dot_bf16(a: &[f32], b: &[bf16]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y.to_f32()).sum()
}
fn dot_f16(a: &[f32], b: &[f16]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y.to_f32()).sum()
}

/// Row `row` of a (possibly quantized) matrix as f32, for embedding lookups.
pub fn dequantize_row(w: &WeightTensor, row: usize, out: &mut [f32]) -> Result<()> {
    Err(Error::UnsupportedDtype { name: w.name.clone(), dtype: format!("{} (row {row}, {} values)", w.dtype, out.len()) })
}
