//! The prefill matrix product in f32 arithmetic, shared by every weight type, and the helpers
//! that split a product over the thread pool.
//!
//! `out[r, o] = Σ_i x[r, i] · w[o, i] (+ bias[o])`, w `[n_out, n_in]`, x and out row-major.
//!
//! How the work is laid out (BLIS-style, with the roles chosen for this workload):
//! - The activations are transposed once per call into panels of `nr` rows, k-major
//!   (`[n_in][nr]`, `pack_x`): `rows · n_in` moves against `rows · n_in · n_out` multiply-adds.
//! - The output features are cut into one contiguous range per thread (a multiple of `mr`).
//!   Each thread takes `mr` weight rows at a time (copied, widened or dequantized once, row
//!   after row, into a thread-local f32 buffer) and sweeps
//!   them across every activation panel with the register-blocked micro-kernel
//!   (`simd::vector::gemm_tile`): `mr × nr` accumulators, one broadcast weight and `nr / lanes`
//!   activation vectors per k-step.
//! - Each output is summed in k order in one f32 lane, whatever the tile, the panel it falls
//!   in, the number of rows in the call or the number of threads: a row's result does not
//!   depend on the batch it shares (batch invariance, tested). It differs in rounding from the
//!   decode path (rows <= 16, four-accumulator dot products, see `matmul::matvec`).
//!
//! Nothing here allocates per call after the first call on a thread (the buffers grow to the
//! largest product seen and are kept).

use std::cell::RefCell;

use rayon::prelude::*;

use super::simd::{Gemm, Kernels};

/// A raw pointer that may cross threads: the tasks that share it write disjoint elements.
#[derive(Clone, Copy)]
pub(crate) struct SyncPtr<T>(pub(crate) *mut T);
// SAFETY: only used to hand `out` to rayon tasks that write disjoint column ranges.
unsafe impl<T> Send for SyncPtr<T> {}
// SAFETY: as above.
unsafe impl<T> Sync for SyncPtr<T> {}

/// Below this many multiply-adds a product runs on the calling thread: waking the pool costs
/// more than it saves (~10 µs of work).
const PAR_MIN_MACS: usize = 1 << 17;

/// Runs `body(o0, o1)` over contiguous ranges of output features, one per rayon thread (each a
/// multiple of `align` long, so all threads stream the same number of weight bytes), or all on
/// the calling thread when the product is small.
pub(crate) fn split_columns(
    n_out: usize,
    macs: usize,
    align: usize,
    body: impl Fn(usize, usize) + Sync,
) {
    let threads = if macs < PAR_MIN_MACS {
        1
    } else {
        rayon::current_num_threads().max(1)
    };
    let per = n_out.div_ceil(threads).next_multiple_of(align.max(1));
    let chunks = n_out.div_ceil(per);
    if chunks == 1 {
        body(0, n_out);
    } else {
        (0..chunks)
            .into_par_iter()
            .for_each(|c| body(c * per, ((c + 1) * per).min(n_out)));
    }
}

/// Where the micro-kernel reads weight rows from.
pub(crate) enum WeightRows<'a> {
    /// f32 weights, `[n_out, n_in]`, copied block by block.
    F32(&'a [f32]),
    /// Any other type: `fill(o, dst)` writes weight row `o` (all `n_in` values) as f32.
    Widen(&'a (dyn Fn(usize, &mut [f32]) + Sync)),
}

thread_local! {
    /// The transposed activation panels of the current call (calling thread).
    static XP: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// `mr` widened weight rows (each worker thread).
    static WPACK: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` with this thread's buffer from `key`, or a fresh one when it is already borrowed
/// (a re-entrant call from a rayon task that itself multiplies).
fn with_buf<R>(
    key: &'static std::thread::LocalKey<RefCell<Vec<f32>>>,
    f: impl FnOnce(&mut Vec<f32>) -> R,
) -> R {
    key.with(|cell| match cell.try_borrow_mut() {
        Ok(mut b) => f(&mut b),
        Err(_) => f(&mut Vec::new()),
    })
}

/// Transposes `rows` rows of `x` (`[rows, n_in]`) into panels of `g.nr()` rows, k-major:
/// panel p (rows `p·nr ..`) starts at `p · nr · n_in` and holds element (row p·nr + j, column t)
/// at `t · width + j`, where `width = min(nr, rows_pad − p·nr)` and `rows_pad` is `rows` rounded
/// up to whole vectors (the padding rows are zero). Returns `rows_pad`.
fn pack_x(g: &Gemm, xp: &mut Vec<f32>, x: &[f32], rows: usize, n_in: usize) -> usize {
    let (nr, lanes) = (g.nr(), g.lanes);
    let rows_pad = rows.next_multiple_of(lanes);
    xp.clear();
    xp.resize(rows_pad * n_in, 0.0);
    let fill = |p: usize, panel: &mut [f32]| {
        let r0 = p * nr;
        let width = panel.len() / n_in;
        let real = rows.saturating_sub(r0).min(width);
        // Blocks of 64 columns: the `width` destination lines of a block stay in L1.
        for t0 in (0..n_in).step_by(64) {
            let t1 = (t0 + 64).min(n_in);
            for j in 0..real {
                let src = &x[(r0 + j) * n_in + t0..(r0 + j) * n_in + t1];
                for (t, v) in src.iter().enumerate() {
                    panel[(t0 + t) * width + j] = *v;
                }
            }
        }
    };
    if rows_pad * n_in >= 1 << 15 {
        xp.par_chunks_mut(nr * n_in)
            .enumerate()
            .for_each(|(p, panel)| fill(p, panel));
    } else {
        xp.chunks_mut(nr * n_in)
            .enumerate()
            .for_each(|(p, panel)| fill(p, panel));
    }
    rows_pad
}

/// The prefill product (see the module header). `rows >= 1`, `n_in >= 1`; sizes checked by
/// the caller (`x` holds `rows · n_in`, `out` `rows · n_out`, `bias` `n_out`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm(
    k: &Kernels,
    out: &mut [f32],
    x: &[f32],
    rows: usize,
    n_out: usize,
    n_in: usize,
    bias: Option<&[f32]>,
    w: WeightRows<'_>,
) {
    let g = k.gemm;
    with_buf(&XP, |xp| {
        let rows_pad = pack_x(&g, xp, x, rows, n_in);
        let xp = &xp[..];
        let dst = SyncPtr(out.as_mut_ptr());
        let (mr, nr, lanes) = (g.mr, g.nr(), g.lanes);
        split_columns(
            n_out,
            rows.saturating_mul(n_out).saturating_mul(n_in),
            mr,
            |o0, o1| {
                // Rebinding makes the closure capture the Sync wrapper, not its raw-pointer field.
                #[allow(clippy::redundant_locals)]
                let dst = dst;
                with_buf(&WPACK, |pack| {
                    pack.resize(mr * n_in, 0.0);
                    let mut tmp = [0f32; TMP_MAX];
                    let mut o = o0;
                    while o < o1 {
                        let m = mr.min(o1 - o);
                        // Every weight block is copied (f32) or widened into the thread's buffer,
                        // one row after the other: mr interleaved row streams straight from
                        // memory starved the first panel sweep (F32 pp128 ~15% slower than
                        // bf16 through the buffer, measured single-threaded).
                        for i in 0..m {
                            let row = &mut pack[i * n_in..(i + 1) * n_in];
                            match w {
                                WeightRows::F32(wf) => {
                                    row.copy_from_slice(&wf[(o + i) * n_in..(o + i + 1) * n_in])
                                }
                                WeightRows::Widen(f) => f(o + i, row),
                            }
                        }
                        pack[m * n_in..].fill(0.0);
                        let wp = pack.as_ptr();
                        let mut r0 = 0;
                        while r0 < rows {
                            let width = nr.min(rows_pad - r0);
                            let f = g.tiles[width / lanes - 1];
                            // SAFETY: wp holds mr rows of n_in at stride n_in (the pack); the panel at r0·n_in holds
                            // n_in × width values (pack_x); tmp holds TMP_MAX >= mr · nr. The
                            // table came from a CPU-checked `Kernels`.
                            unsafe {
                                f(
                                    wp,
                                    n_in,
                                    xp[r0 * n_in..].as_ptr(),
                                    width,
                                    n_in,
                                    tmp.as_mut_ptr(),
                                )
                            };
                            // SAFETY: rows r0..r0 + min(width, rows - r0) and columns
                            // o..o + m (o + m <= o1 <= n_out) are inside out and in this task's
                            // columns o0..o1; tmp holds m × width results.
                            unsafe {
                                store_tile(
                                    dst,
                                    n_out,
                                    &tmp,
                                    m,
                                    width.min(rows - r0),
                                    width,
                                    r0,
                                    o,
                                    bias,
                                )
                            };
                            r0 += width;
                        }
                        o += m;
                    }
                });
            },
        );
    });
}

/// Writes a micro-tile's results to `out` (row stride `n_out`) through a shared pointer:
/// `out[r0 + j, o + i] = tmp[i · width + j] (+ bias[o + i])` for `i < m`, `j < real`, where
/// `width` is the tile's activation-row count (its padding rows past `real` are dropped).
///
/// # Safety
/// `dst` points at a `[rows, n_out]` buffer with `r0 + real <= rows` and `o + m <= n_out`, no
/// other thread writes those columns meanwhile, and `tmp` holds `m · width` values.
#[allow(clippy::too_many_arguments)]
#[inline]
pub(crate) unsafe fn store_tile(
    dst: SyncPtr<f32>,
    n_out: usize,
    tmp: &[f32],
    m: usize,
    real: usize,
    width: usize,
    r0: usize,
    o: usize,
    bias: Option<&[f32]>,
) {
    for j in 0..real {
        let row = (r0 + j) * n_out + o;
        for i in 0..m {
            let v = tmp[i * width + j] + bias.map_or(0.0, |b| b[o + i]);
            // SAFETY: (r0 + j, o + i) is inside out and in the caller's columns (contract).
            unsafe { *dst.0.add(row + i) = v };
        }
    }
}

/// Room for the largest micro-tile of any table (AVX-512: 12 × 32).
pub(crate) const TMP_MAX: usize = 12 * 32;
