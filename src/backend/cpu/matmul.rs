//! CPU matrix products over weights in their stored dtype.
//!
//! `out[r, o] = Σ_i x[r, i] · w[o, i] (+ bias[o])`, w stored `[out, in]` (Hugging Face layout),
//! x and out row-major f32.
//!
//! How the work is laid out:
//! - The output features are cut into one contiguous chunk per rayon thread (a multiple of 4
//!   rows each), so both cores stream the same number of weight bytes and finish together;
//!   tiny products run on the calling thread.
//! - Decode (rows == 1): one dot product per weight row (four accumulators), so each core
//!   reads a single sequential stream, which the hardware prefetchers follow best. Measured
//!   single-threaded: 4 interleaved row streams reached 9 GB/s (bf16) / 13 GB/s (f32), one
//!   stream 15-18 GB/s, against ~18 GB/s for a plain streaming sum.
//! - Prefill (rows > 1): activation rows in blocks that fit in L2; the input dimension in
//!   slices of at most `KC_MAX`; for each slice, each 4-row weight tile (bf16/f16 widened to
//!   f32 once into a 10 KiB stack buffer) stays in L1 while a 4×4 register-blocked micro-kernel
//!   (`simd::vector::tile`) sweeps it across the block's activation rows. The next tile's
//!   weights are prefetched meanwhile (they are not where the hardware prefetcher looks).
//! - All arithmetic is f32 (bf16/f16 widened exactly). Where the CPU has AVX-512 BF16 and the
//!   table enables it (opt-in: `MINFER_BF16_DOT=1`, see `simd`), bf16 weights at prefill use
//!   `vdpbf16ps` instead: the activations are rounded to bf16 once per call (into a reusable
//!   thread-local buffer), adding up to 2⁻⁹ relative error per product. Decode never does: it
//!   is bound by memory, not arithmetic.
//!
//! Nothing here allocates per call after the first call on a thread (the bf16 buffer grows to
//! the largest activation seen and is kept).

use std::cell::RefCell;

use half::{bf16, f16};
use rayon::prelude::*;

use super::simd::vector::{Elem, NW_WIDE as NW, NX_MAX as NX};
use super::simd::{self, Bf16DotTable, Kernels};
use crate::error::{Error, Result};
use crate::tensor::{DType, WeightTensor};

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
                Some(t) if rows > 1 => run_bf16dot(t, out, x, rows, wd, n_out, n_in, bias),
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

/// A raw pointer that may cross threads: the tasks that share it write disjoint elements.
#[derive(Clone, Copy)]
pub(crate) struct SyncPtr<T>(pub(crate) *mut T);
// SAFETY: only used to hand `out` to rayon tasks that write disjoint column ranges (see `drive`).
unsafe impl<T> Send for SyncPtr<T> {}
// SAFETY: as above.
unsafe impl<T> Sync for SyncPtr<T> {}

/// Below this many multiply-adds a product runs on the calling thread: waking the pool costs
/// more than it saves (~10 µs of work).
const PAR_MIN_MACS: usize = 1 << 17;
/// Activation bytes per row block: comfortably inside a 1 MiB L2 next to the weight tiles.
const ROW_BLOCK_BYTES: usize = 384 << 10;
/// Longest k-slice of a weight tile at prefill: 4 rows × 640 f32 = 10 KiB, which stays in L1
/// (32 KiB) beside the 4 activation rows it meets. Long enough that the 16 horizontal sums per
/// tile and slice cost little next to its 4·4·640 multiply-adds.
const KC_MAX: usize = 640;

/// Runs `body(o0, o1)` over contiguous ranges of output features, one per rayon thread (each a
/// multiple of `NW` long, so all threads stream the same number of weight bytes), or all on
/// the calling thread when the product is small.
pub(crate) fn split_columns(n_out: usize, macs: usize, body: impl Fn(usize, usize) + Sync) {
    let threads = if macs < PAR_MIN_MACS {
        1
    } else {
        rayon::current_num_threads().max(1)
    };
    let per = n_out.div_ceil(threads).next_multiple_of(NW);
    let chunks = n_out.div_ceil(per);
    if chunks == 1 {
        body(0, n_out);
    } else {
        (0..chunks)
            .into_par_iter()
            .for_each(|c| body(c * per, ((c + 1) * per).min(n_out)));
    }
}

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
    /// Whether prefill widens k-slices of weight tiles into an f32 buffer first (so the
    /// conversion is paid once per tile and slice, not once per activation row).
    const PACK: bool;
    fn widen(k: &Kernels, dst: &mut [f32], src: &[Self]);
    fn dot(k: &Kernels, x: &[f32], w: &[Self]) -> f32;
}

impl Weight for f32 {
    const PACK: bool = false;
    fn widen(_: &Kernels, dst: &mut [f32], src: &[f32]) {
        dst.copy_from_slice(src);
    }
    fn dot(k: &Kernels, x: &[f32], w: &[f32]) -> f32 {
        k.dot_f32(x, w)
    }
}

impl Weight for bf16 {
    const PACK: bool = true;
    fn widen(k: &Kernels, dst: &mut [f32], src: &[bf16]) {
        k.widen_bf16(dst, src);
    }
    fn dot(k: &Kernels, x: &[f32], w: &[bf16]) -> f32 {
        k.dot_bf16(x, w)
    }
}

impl Weight for f16 {
    const PACK: bool = true;
    fn widen(k: &Kernels, dst: &mut [f32], src: &[f16]) {
        k.widen_f16(dst, src);
    }
    fn dot(k: &Kernels, x: &[f32], w: &[f16]) -> f32 {
        k.dot_f16(x, w)
    }
}

/// f32 arithmetic over weights of type `E`: one dot product per weight row at decode,
/// k-sliced (and for bf16/f16, widened) register-blocked weight tiles at prefill.
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
    if rows == 1 {
        // Decode: one weight row at a time, so each core reads one sequential stream, which
        // the hardware prefetchers follow best (measured single-threaded under CPU time:
        // 4 interleaved row streams reached 9 GB/s for bf16 and 13 for f32, one stream 16-18).
        let dst = SyncPtr(out.as_mut_ptr());
        split_columns(n_out, n_out * n_in, |o0, o1| {
            // Rebinding makes the closure capture the Sync wrapper, not its raw-pointer field.
            #[allow(clippy::redundant_locals)]
            let dst = dst;
            for o in o0..o1 {
                let v = E::dot(k, x, &w[o * n_in..(o + 1) * n_in]) + bias.map_or(0.0, |b| b[o]);
                // SAFETY: o < n_out = out.len() (rows == 1), and columns o0..o1 belong to
                // this task alone.
                unsafe { *dst.0.add(o) = v };
            }
        });
        return;
    }
    let wb: &[u8] = bytemuck::cast_slice(w);
    let esize = std::mem::size_of::<E>();
    let src = Panel {
        bytes: wb,
        row_bytes: n_in * esize,
        block: (1, esize),
        in_place: if E::PACK {
            None
        } else {
            bytemuck::try_cast_slice(w).ok()
        },
    };
    prefill(
        k,
        out,
        x,
        rows,
        n_out,
        n_in,
        bias,
        &src,
        &|o, k0, dst: &mut [f32]| E::widen(k, dst, &w[o * n_in + k0..o * n_in + k0 + dst.len()]),
    );
}

/// Where prefill reads weight tiles from.
pub(crate) struct Panel<'a> {
    /// All weight bytes, `row_bytes` per output feature.
    pub(crate) bytes: &'a [u8],
    pub(crate) row_bytes: usize,
    /// (elements, bytes) per block: (1, size) for plain types.
    pub(crate) block: (usize, usize),
    /// f32 weights are read in place (row stride n_in) instead of being widened.
    pub(crate) in_place: Option<&'a [f32]>,
}

/// The prefill product (rows > 1) in f32 arithmetic: activation rows in L2-sized blocks, the
/// input dimension in slices of at most `KC_MAX` (whole weight blocks), each 4-row weight tile
/// widened once per slice by `widen(o, k0, dst)` (dst.len() elements of row o from k0) into an
/// L1-resident buffer and swept across the block's rows by the 4×4 micro-kernel.
#[allow(clippy::too_many_arguments)]
pub(crate) fn prefill(
    k: &Kernels,
    out: &mut [f32],
    x: &[f32],
    rows: usize,
    n_out: usize,
    n_in: usize,
    bias: Option<&[f32]>,
    src: &Panel<'_>,
    widen: &(dyn Fn(usize, usize, &mut [f32]) + Sync),
) {
    let tiles = &k.tiles_f32;
    let (be, bb) = src.block;
    let align = be.max(16);
    let kmax = KC_MAX / align * align;
    let slices = n_in.div_ceil(kmax);
    let kc = n_in.div_ceil(slices).next_multiple_of(align).min(kmax);
    let rb = (ROW_BLOCK_BYTES / (kc * 4)).max(NX).next_multiple_of(NX);
    let dst = SyncPtr(out.as_mut_ptr());
    split_columns(
        n_out,
        rows.saturating_mul(n_out).saturating_mul(n_in),
        |o0, o1| {
            // Rebinding makes the closure capture the Sync wrapper, not its raw-pointer field.
            #[allow(clippy::redundant_locals)]
            let dst = dst;
            let mut pack = [0f32; NW * KC_MAX];
            let mut tmp = [0f32; NX * NW];
            for r0 in (0..rows).step_by(rb) {
                let r1 = (r0 + rb).min(rows);
                for k0 in (0..n_in).step_by(kc) {
                    let kl = kc.min(n_in - k0);
                    let mut o = o0;
                    while o < o1 {
                        let nw = if o1 - o >= NW { NW } else { 1 };
                        let (wt, ldw): (*const f32, usize) = match src.in_place {
                            Some(wf) => (wf[o * n_in + k0..].as_ptr(), n_in),
                            None => {
                                for j in 0..nw {
                                    widen(o + j, k0, &mut pack[j * kl..(j + 1) * kl]);
                                }
                                (pack.as_ptr(), kl)
                            }
                        };
                        // The next tile's slice lies 4 rows further on, not where the hardware
                        // prefetcher is looking: ask for its lines a few at a time, spread over
                        // this tile's activation rows (+5-15% single-threaded at 1.5B shapes).
                        let slice_bytes = kl / be * bb;
                        let next = (o + nw).min(n_out - 1) * src.row_bytes + k0 / be * bb;
                        let next_lines = (NW * slice_bytes).div_ceil(64);
                        let per_step = next_lines.div_ceil((r1 - r0).div_ceil(NX));
                        let mut line = 0;
                        let mut r = r0;
                        while r < r1 {
                            for _ in 0..per_step {
                                let (row, col) = (line * 64 / slice_bytes, line * 64 % slice_bytes);
                                if row < NW {
                                    simd::prefetch(
                                        src.bytes
                                            .as_ptr()
                                            .wrapping_add(next + row * src.row_bytes + col),
                                    );
                                }
                                line += 1;
                            }
                            let nx = (r1 - r).min(NX);
                            let f = tiles[nx - 1][usize::from(nw == NW)];
                            // SAFETY: x rows r..r+nx hold columns k0..k0+kl (r + nx <= rows,
                            // k0 + kl <= n_in); wt holds nw rows of kl at stride ldw (the packed
                            // buffer, or the f32 weights with o + nw <= n_out); tmp has NX × NW
                            // slots at stride NW. The table came from a CPU-checked `Kernels`.
                            unsafe {
                                f(
                                    x.as_ptr().add(r * n_in + k0),
                                    n_in,
                                    wt,
                                    ldw,
                                    kl,
                                    tmp.as_mut_ptr(),
                                    NW,
                                )
                            };
                            for a in 0..nx {
                                for j in 0..nw {
                                    // SAFETY: (r + a, o + j) is inside out and inside this task's
                                    // columns o0..o1, which no other task writes.
                                    let d = unsafe { &mut *dst.0.add((r + a) * n_out + o + j) };
                                    if k0 == 0 {
                                        *d = tmp[a * NW + j];
                                    } else {
                                        *d += tmp[a * NW + j];
                                    }
                                }
                            }
                            r += nx;
                        }
                        o += nw;
                    }
                }
                if let Some(b) = bias {
                    // SAFETY: r1 <= rows, o1 <= n_out, and columns o0..o1 belong to this task.
                    unsafe { add_bias(dst.0, n_out, r0, r1, o0, o1, b) };
                }
            }
        },
    );
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
