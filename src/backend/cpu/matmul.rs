//! CPU matrix products over weights in their stored dtype.
//!
//! `out[r, o] = Σ_i x[r, i] · w[o, i] (+ bias[o])`, w stored `[out, in]` (Hugging Face layout),
//! x and out row-major f32.
//!
//! How the work is laid out:
//! - The output features are cut into one contiguous chunk per rayon thread (a multiple of 4
//!   rows each), so at decode both cores stream the same number of weight bytes and finish
//!   together; tiny products run on the calling thread.
//! - Inside a chunk, activation rows are taken in blocks that fit in L2; for each block, every
//!   4-row weight tile is swept across the block by a register-blocked micro-kernel (4 weight
//!   rows × up to 4 activation rows, see `simd::vector::tile`), so a weight tile is loaded from
//!   memory once per block and reused from L1. Decode is the same loop with one activation row:
//!   four independent weight streams per step.
//! - bf16 weights at prefill (rows > 1) on CPUs with AVX-512 BF16 use `vdpbf16ps`: the
//!   activations are rounded to bf16 once per call (into a reusable thread-local buffer), which
//!   adds a relative error of up to 2⁻⁹ per product (~4e-3 of Σ|x·w| at worst, typically far
//!   less since the roundings are independent). Decode keeps f32 activations: it is bound by
//!   memory, not arithmetic. Off by default (it breaks 1e-4 parity with transformers); `MINFER_BF16_DOT=1` turns it on. f32 and f16 weights always
//!   use f32 arithmetic (f16 is widened in registers).
//!
//! Nothing here allocates per call after the first call on a thread (the bf16 buffer grows to
//! the largest activation seen and is kept).

use std::cell::RefCell;

use half::bf16;
use rayon::prelude::*;

use super::simd::vector::{Elem, TileTable, NW_WIDE as NW, NX_MAX as NX};
use super::simd::{self, Bf16DotTable, Kernels};
use crate::error::{Error, Result};
use crate::loader::{DType, WeightTensor};

/// Plain reference: one output at a time, f32 accumulation, no SIMD, no threads.
pub fn matmul_reference(
    out: &mut [f32],
    x: &[f32],
    rows: usize,
    w: &WeightTensor,
    bias: Option<&[f32]>,
) -> Result<()> {
    let (n_out, n_in) = dims(w)?;
    check_sizes(w, out.len(), x.len(), rows, n_out, n_in, bias)?;
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
        _ => Err(Error::ShapeMismatch {
            name: w.name.clone(),
            expected: vec![0, 0],
            got: w.shape.clone(),
        }),
    }
}

fn check_sizes(
    w: &WeightTensor,
    out_len: usize,
    x_len: usize,
    rows: usize,
    n_out: usize,
    n_in: usize,
    bias: Option<&[f32]>,
) -> Result<()> {
    let need_x = rows.checked_mul(n_in);
    let need_out = rows.checked_mul(n_out);
    if need_x.is_none_or(|n| x_len < n) || need_out.is_none_or(|n| out_len < n) {
        return Err(Error::arg(format!(
            "matmul {}: {rows} rows need x of {rows}×{n_in} and out of {rows}×{n_out}, got {x_len} and {out_len} elements",
            w.name
        )));
    }
    if let Some(b) = bias {
        if b.len() < n_out {
            return Err(Error::arg(format!(
                "matmul {}: bias has {} elements, need {n_out}",
                w.name,
                b.len()
            )));
        }
    }
    Ok(())
}

fn misaligned(w: &WeightTensor) -> Error {
    Error::arg(format!(
        "matmul {}: {} data is not aligned (upload it with to_owned_aligned)",
        w.name, w.dtype
    ))
}

/// The product with the process-wide SIMD kernels, parallel over output features.
pub fn matmul(
    out: &mut [f32],
    x: &[f32],
    rows: usize,
    w: &WeightTensor,
    bias: Option<&[f32]>,
) -> Result<()> {
    matmul_with(simd::kernels(), out, x, rows, w, bias)
}

/// The product with an explicit kernel table (tests and benches force an instruction set).
pub fn matmul_with(
    k: &Kernels,
    out: &mut [f32],
    x: &[f32],
    rows: usize,
    w: &WeightTensor,
    bias: Option<&[f32]>,
) -> Result<()> {
    let (n_out, n_in) = dims(w)?;
    check_sizes(w, out.len(), x.len(), rows, n_out, n_in, bias)?;
    if rows == 0 || n_out == 0 {
        return Ok(());
    }
    let out = &mut out[..rows * n_out];
    let x = &x[..rows * n_in];
    if n_in == 0 {
        for row in out.chunks_exact_mut(n_out) {
            for (o, v) in row.iter_mut().enumerate() {
                *v = bias.map_or(0.0, |b| b[o]);
            }
        }
        return Ok(());
    }
    match w.dtype {
        DType::F32 => run_f32(
            &k.tiles_f32,
            out,
            x,
            rows,
            w.as_f32().ok_or_else(|| misaligned(w))?,
            n_out,
            n_in,
            bias,
        ),
        DType::F16 => run_f32(
            &k.tiles_f16,
            out,
            x,
            rows,
            w.as_f16().ok_or_else(|| misaligned(w))?,
            n_out,
            n_in,
            bias,
        ),
        DType::BF16 => {
            let wd = w.as_bf16().ok_or_else(|| misaligned(w))?;
            match k.tiles_bf16dot.as_ref() {
                Some(t) if rows > 1 => run_bf16dot(t, out, x, rows, wd, n_out, n_in, bias),
                _ => run_f32(&k.tiles_bf16, out, x, rows, wd, n_out, n_in, bias),
            }
        }
        other => {
            return Err(Error::UnsupportedDtype {
                name: w.name.clone(),
                dtype: other.to_string(),
            })
        }
    }
    Ok(())
}

/// Row `row` of a (possibly quantized) matrix as f32, for embedding lookups.
pub fn dequantize_row(w: &WeightTensor, row: usize, out: &mut [f32]) -> Result<()> {
    Err(Error::UnsupportedDtype {
        name: w.name.clone(),
        dtype: format!("{} (row {row}, {} values)", w.dtype, out.len()),
    })
}

/// A raw pointer that may cross threads: the tasks that share it write disjoint elements.
#[derive(Clone, Copy)]
struct SyncPtr<T>(*mut T);
// SAFETY: only used to hand `out` to rayon tasks that write disjoint column ranges (see `drive`).
unsafe impl<T> Send for SyncPtr<T> {}
// SAFETY: as above.
unsafe impl<T> Sync for SyncPtr<T> {}

/// Below this many multiply-adds a product runs on the calling thread: waking the pool costs
/// more than it saves (~10 µs of work).
const PAR_MIN_MACS: usize = 1 << 17;
/// Activation bytes per row block: comfortably inside a 1 MiB L2 next to the weight tiles.
const ROW_BLOCK_BYTES: usize = 384 << 10;

/// Splits the output features over the pool and sweeps tiles. `tile(r, nx, o, nw, dst)` computes
/// the `nx × nw` block at activation row `r`, output feature `o` into `dst` (row stride n_out).
#[allow(clippy::too_many_arguments)]
fn drive<F>(
    out: &mut [f32],
    rows: usize,
    n_out: usize,
    n_in: usize,
    x_elem_bytes: usize,
    bias: Option<&[f32]>,
    tile: F,
) where
    F: Fn(usize, usize, usize, usize, *mut f32) + Sync,
{
    let dst = SyncPtr(out.as_mut_ptr());
    let macs = rows.saturating_mul(n_out).saturating_mul(n_in);
    let threads = if macs < PAR_MIN_MACS {
        1
    } else {
        rayon::current_num_threads().max(1)
    };
    let per = n_out.div_ceil(threads).next_multiple_of(NW);
    let chunks = n_out.div_ceil(per);
    let rb = (ROW_BLOCK_BYTES / (n_in * x_elem_bytes).max(1))
        .max(NX)
        .next_multiple_of(NX);
    let body = |c: usize| {
        let dst = dst;
        let (o0, o1) = (c * per, ((c + 1) * per).min(n_out));
        for r0 in (0..rows).step_by(rb) {
            let r1 = (r0 + rb).min(rows);
            let mut o = o0;
            while o < o1 {
                let nw = if o1 - o >= NW { NW } else { 1 };
                let mut r = r0;
                while r < r1 {
                    let nx = (r1 - r).min(NX);
                    // The tile writes rows r..r+nx, columns o..o+nw: inside this task's columns.
                    tile(r, nx, o, nw, dst.0.wrapping_add(r * n_out + o));
                    r += nx;
                }
                o += nw;
            }
            if let Some(b) = bias {
                for r in r0..r1 {
                    for (j, bj) in b[o0..o1].iter().enumerate() {
                        // SAFETY: (r, o0 + j) lies in out (r < rows, o0 + j < n_out) and in this
                        // task's column range, which no other task writes.
                        unsafe { *dst.0.add(r * n_out + o0 + j) += bj };
                    }
                }
            }
        }
    };
    if chunks == 1 {
        body(0);
    } else {
        (0..chunks).into_par_iter().for_each(body);
    }
}

#[allow(clippy::too_many_arguments)]
fn run_f32<E: Elem>(
    table: &TileTable<E>,
    out: &mut [f32],
    x: &[f32],
    rows: usize,
    w: &[E],
    n_out: usize,
    n_in: usize,
    bias: Option<&[f32]>,
) {
    let (xp, wp) = (
        SyncPtr(x.as_ptr() as *mut f32),
        SyncPtr(w.as_ptr() as *mut E),
    );
    drive(out, rows, n_out, n_in, 4, bias, move |r, nx, o, nw, dst| {
        let (xp, wp) = (xp, wp);
        let f = table[nx - 1][usize::from(nw == NW)];
        // SAFETY: rows r..r+nx of x (n_in each) and rows o..o+nw of w exist because `drive`
        // keeps r + nx <= rows and o + nw <= n_out, and the sizes were checked against
        // rows × n_in and n_out × n_in; dst has room for the nx × nw block at stride n_out.
        // The table came from a `Kernels`, built only after checking the CPU.
        unsafe {
            f(
                xp.0.add(r * n_in),
                n_in,
                wp.0.add(o * n_in),
                n_in,
                n_in,
                dst,
                n_out,
            )
        }
    });
}

thread_local! {
    /// Activations rounded to bf16 for the `vdpbf16ps` path; grows to the largest call, kept.
    static BF16_X: RefCell<Vec<bf16>> = const { RefCell::new(Vec::new()) };
}

#[allow(clippy::too_many_arguments)]
fn run_bf16dot(
    table: &Bf16DotTable,
    out: &mut [f32],
    x: &[f32],
    rows: usize,
    w: &[bf16],
    n_out: usize,
    n_in: usize,
    bias: Option<&[f32]>,
) {
    let mut go = |xb: &mut Vec<bf16>| {
        xb.clear();
        xb.extend(x.iter().map(|&v| bf16::from_f32(v)));
        let (xp, wp) = (
            SyncPtr(xb.as_ptr() as *mut u16),
            SyncPtr(w.as_ptr() as *mut u16),
        );
        drive(out, rows, n_out, n_in, 2, bias, move |r, nx, o, nw, dst| {
            let (xp, wp) = (xp, wp);
            let f = table[nx - 1][usize::from(nw == NW)];
            // SAFETY: as in `run_f32`; xb holds rows × n_in bf16 values.
            unsafe {
                f(
                    xp.0.add(r * n_in),
                    n_in,
                    wp.0.add(o * n_in),
                    n_in,
                    n_in,
                    dst,
                    n_out,
                )
            }
        });
    };
    // A re-entrant call on this thread (a rayon task that itself multiplies) gets a fresh buffer
    // rather than a panic.
    BF16_X.with(|cell| match cell.try_borrow_mut() {
        Ok(mut xb) => go(&mut xb),
        Err(_) => go(&mut Vec::new()),
    });
}
