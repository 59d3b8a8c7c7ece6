//! CPU matrix products over weights in their stored dtype.
//!
//! `out[r, o] = Σ_i x[r, i] · w[o, i] (+ bias[o])`, w stored `[out, in]` (Hugging Face layout),
//! x and out row-major f32.
//!
//! How the work is laid out:
//! - The output features are cut into one contiguous chunk per rayon thread (a multiple of 4
//!   rows each), so both cores stream the same number of weight bytes and finish together;
//!   tiny products run on the calling thread.
//! - Decode, one sequence or a server decode step of up to `MATVEC_MAX_ROWS` = 16: a batched
//!   matvec. Each weight row is read once per call (one sequential stream per core, which the
//!   hardware prefetchers follow best; measured single-threaded: 4 interleaved row streams
//!   reached 9 GB/s (bf16) / 13 GB/s (f32), one stream 15-18 GB/s, against ~18 GB/s for a plain
//!   streaming sum) and every activation row's dot product against it is taken while it sits
//!   in L1 (`simd::vector::dot_rows`, four accumulators per row). Each row's result is
//!   bit-identical to the one-row call (batch invariance: a request's greedy output does not
//!   depend on how many others share its decode step; tested for every weight type).
//! - Prefill (rows > 16): `gemm`, the packed register-blocked product shared with the
//!   quantized types (weights widened to f32 once per call, activations transposed into
//!   panels once per call).
//! - All arithmetic is f32 (bf16/f16 widened exactly). Where the CPU has AVX-512 BF16 and the
//!   table enables it (opt-in: `MINFER_BF16_DOT=1`, see `simd`), bf16 weights at prefill (rows > 16) use
//!   `vdpbf16ps` instead: the activations are rounded to bf16 once per call (into a reusable
//!   thread-local buffer), adding up to 2⁻⁹ relative error per product. Decode never does: it
//!   is bound by memory, not arithmetic.
//!
//! Nothing here allocates per call after the first call on a thread (the bf16 buffer grows to
//! the largest activation seen and is kept).

use std::cell::RefCell;

use half::{bf16, f16};

use super::gemm::{gemm, split_columns, SyncPtr, WeightRows};
use super::simd::vector::{DotRowsFn, Elem, DOT_ROWS_MAX, NW_WIDE as NW, NX_MAX as NX};
use super::simd::{Bf16DotTable, Kernels};
use crate::error::{Error, Result};
use crate::tensor::{DType, WeightTensor};

/// Up to this many activation rows a product is a batched matvec (decode: one sequence or a
/// decode step of several), computing each row bit-identically to a one-row call; from one
/// more on it is prefill (the packed GEMM, or the bf16 dot-product tiles where enabled), which
/// sums in another order. Block-quantized weights use the same boundary.
pub const MATVEC_MAX_ROWS: usize = 16;

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
    let wf = if w.dtype.is_quantized() {
        crate::quant::dequantize_to_vec(w.dtype, w.bytes(), w.numel())?
    } else {
        w.to_f32_vec()?
    };
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
    matmul_with(super::simd::kernels(), out, x, rows, w, bias)
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
        DType::F32 => {
            let wd = w.as_f32().ok_or_else(|| misaligned(w))?;
            plain(k, out, x, rows, wd, n_out, n_in, bias)
        }
        DType::F16 => {
            let wd = w.as_f16().ok_or_else(|| misaligned(w))?;
            plain(k, out, x, rows, wd, n_out, n_in, bias)
        }
        DType::BF16 => {
            let wd = w.as_bf16().ok_or_else(|| misaligned(w))?;
            match k.tiles_bf16dot.as_ref() {
                Some(t) if rows > MATVEC_MAX_ROWS => {
                    run_bf16dot(t, out, x, rows, wd, n_out, n_in, bias)
                }
                _ => plain(k, out, x, rows, wd, n_out, n_in, bias),
            }
        }
        q => {
            return super::quant_kernels::matmul_quant(
                k,
                &w.name,
                q,
                out,
                x,
                rows,
                w.bytes(),
                n_out,
                n_in,
                bias,
            );
        }
    }
    Ok(())
}

/// Row `row` of a `[rows, width]` (possibly quantized) matrix as f32, for embedding lookups.
/// `out.len()` is the row width.
pub fn dequantize_row(w: &WeightTensor, row: usize, out: &mut [f32]) -> Result<()> {
    let width = out.len();
    let (be, bb) = w.dtype.block();
    let rows = w.shape.first().copied().unwrap_or(0);
    if row >= rows || !width.is_multiple_of(be) || w.numel() != rows * width {
        return Err(Error::arg(format!(
            "dequantize_row {}: row {row} of width {width} does not fit {:?} {}",
            w.name, w.shape, w.dtype
        )));
    }
    let rb = width / be * bb;
    crate::quant::dequantize(w.dtype, &w.bytes()[row * rb..(row + 1) * rb], out)
}

/// Activation bytes per row block of the bf16 dot-product path: comfortably inside a 1 MiB L2
/// next to the weight tiles.
const ROW_BLOCK_BYTES: usize = 384 << 10;

/// Adds `bias[o0..o1]` to rows `r0..r1` of `out` (row stride `n_out`) through a shared pointer.
///
/// # Safety
/// `dst` points at a `rows × n_out` buffer with `r1 <= rows`, `o1 <= n_out`, and no other
/// thread touches columns `o0..o1` meanwhile.
#[allow(clippy::too_many_arguments)]
unsafe fn add_bias(
    dst: *mut f32,
    n_out: usize,
    r0: usize,
    r1: usize,
    o0: usize,
    o1: usize,
    bias: &[f32],
) {
    for r in r0..r1 {
        for (j, bj) in bias[o0..o1].iter().enumerate() {
            // SAFETY: inside the buffer and inside this task's columns (caller's contract).
            unsafe { *dst.add(r * n_out + o0 + j) += bj };
        }
    }
}

/// Splits the output features over the pool and sweeps tiles over the whole k range.
/// `tile(r, nx, o, nw, dst)` computes the `nx × nw` block at activation row `r`, output feature
/// `o` into `dst` (row stride n_out). Used by the bf16 dot-product path.
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
    let rb = (ROW_BLOCK_BYTES / (n_in * x_elem_bytes).max(1))
        .max(NX)
        .next_multiple_of(NX);
    split_columns(
        n_out,
        rows.saturating_mul(n_out).saturating_mul(n_in),
        NW,
        |o0, o1| {
            // Rebinding makes the closure capture the Sync wrapper, not its raw-pointer field.
            #[allow(clippy::redundant_locals)]
            let dst = dst;
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
                    // SAFETY: r1 <= rows, o1 <= n_out, and columns o0..o1 belong to this task.
                    unsafe { add_bias(dst.0, n_out, r0, r1, o0, o1, b) };
                }
            }
        },
    );
}

/// A weight element the f32-arithmetic paths accept, with its tile table and how to widen it.
trait Weight: Elem + bytemuck::Pod {
    /// The weights themselves when they are f32 already (read in place by the GEMM).
    fn as_f32(w: &[Self]) -> Option<&[f32]> {
        let _ = w;
        None
    }
    fn widen(k: &Kernels, dst: &mut [f32], src: &[Self]);
    /// The batched-decode dot products for this element type (`vector::dot_rows`).
    fn dot_rows(k: &Kernels) -> &[DotRowsFn<Self>; DOT_ROWS_MAX];
}

impl Weight for f32 {
    fn as_f32(w: &[f32]) -> Option<&[f32]> {
        Some(w)
    }
    fn widen(_: &Kernels, dst: &mut [f32], src: &[f32]) {
        dst.copy_from_slice(src);
    }
    fn dot_rows(k: &Kernels) -> &[DotRowsFn<f32>; DOT_ROWS_MAX] {
        &k.dot_rows.f32
    }
}

impl Weight for bf16 {
    fn widen(k: &Kernels, dst: &mut [f32], src: &[bf16]) {
        k.widen_bf16(dst, src);
    }
    fn dot_rows(k: &Kernels) -> &[DotRowsFn<bf16>; DOT_ROWS_MAX] {
        &k.dot_rows.bf16
    }
}

impl Weight for f16 {
    fn widen(k: &Kernels, dst: &mut [f32], src: &[f16]) {
        k.widen_f16(dst, src);
    }
    fn dot_rows(k: &Kernels) -> &[DotRowsFn<f16>; DOT_ROWS_MAX] {
        &k.dot_rows.f16
    }
}

/// f32 arithmetic over weights of type `E`: the batched matvec for decode (up to
/// [`MATVEC_MAX_ROWS`] rows), the packed GEMM (`gemm`) for more rows.
#[allow(clippy::too_many_arguments)]
fn plain<E: Weight>(
    k: &Kernels,
    out: &mut [f32],
    x: &[f32],
    rows: usize,
    w: &[E],
    n_out: usize,
    n_in: usize,
    bias: Option<&[f32]>,
) {
    if rows <= MATVEC_MAX_ROWS {
        matvec(k, out, x, rows, w, n_out, n_in, bias);
        return;
    }
    match E::as_f32(w) {
        Some(wf) => gemm(k, out, x, rows, n_out, n_in, bias, WeightRows::F32(wf)),
        None => gemm(
            k,
            out,
            x,
            rows,
            n_out,
            n_in,
            bias,
            WeightRows::Widen(&|o, dst: &mut [f32]| E::widen(k, dst, &w[o * n_in..(o + 1) * n_in])),
        ),
    }
}

/// Decode, one sequence or a batch of them (`rows <= MATVEC_MAX_ROWS`): the weights are read
/// once per call, one row at a time (each core one sequential stream, which the hardware
/// prefetchers follow best: measured single-threaded under CPU time, 4 interleaved row streams
/// reached 9 GB/s for bf16 and 13 for f32, one stream 16-18), and every activation row's dot
/// product against a weight row is taken while that row sits in L1 (`dot_rows`, up to
/// `nx` activation rows per call). Each output is exactly what the one-row call computes for
/// its activation row (batch invariance, tested bit for bit).
#[allow(clippy::too_many_arguments)]
fn matvec<E: Weight>(
    k: &Kernels,
    out: &mut [f32],
    x: &[f32],
    rows: usize,
    w: &[E],
    n_out: usize,
    n_in: usize,
    bias: Option<&[f32]>,
) {
    let table = E::dot_rows(k);
    let nx_max = k.dot_rows.nx.clamp(1, DOT_ROWS_MAX);
    let dst = SyncPtr(out.as_mut_ptr());
    split_columns(n_out, rows * n_out * n_in, NW, |o0, o1| {
        // Rebinding makes the closure capture the Sync wrapper, not its raw-pointer field.
        #[allow(clippy::redundant_locals)]
        let dst = dst;
        let mut tmp = [0f32; DOT_ROWS_MAX];
        for o in o0..o1 {
            let wr = &w[o * n_in..(o + 1) * n_in];
            let b = bias.map_or(0.0, |b| b[o]);
            let mut r = 0;
            while r < rows {
                let nx = (rows - r).min(nx_max);
                // SAFETY: rows r..r+nx of x exist (r + nx <= rows, x holds rows × n_in), wr is
                // n_in long, tmp has DOT_ROWS_MAX >= nx slots; the table came from a
                // CPU-checked `Kernels`.
                unsafe {
                    table[nx - 1](
                        x[r * n_in..].as_ptr(),
                        n_in,
                        wr.as_ptr(),
                        n_in,
                        tmp.as_mut_ptr(),
                    )
                };
                for (a, v) in tmp[..nx].iter().enumerate() {
                    // SAFETY: (r + a, o) is inside out (r + a < rows, o < n_out), and columns
                    // o0..o1 belong to this task alone.
                    unsafe { *dst.0.add((r + a) * n_out + o) = v + b };
                }
                r += nx;
            }
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
