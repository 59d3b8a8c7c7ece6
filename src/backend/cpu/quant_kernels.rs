//! Products with GGML block-quantized weights, used as stored (no dequantization at load).
//!
//! The activations are quantized once per call, per block of 32, as llama.cpp's q8 formats
//! do: `x ≈ dx · qx` with `dx = max|x| / 127` (f32) and `qx` in -127..=127, plus the sums
//! `dx · Σ qx` of each half-block of 16. One activation format serves every weight type,
//! because each weight format can be written per group of 32 weights as
//!
//! ```text
//! w_j = a_lo/hi · u_j + b_lo/hi        (lo for j < 16, hi for j >= 16; u_j a small integer)
//! Σ_j w_j · x̂_j = dx · (a_lo · Σ_lo u·qx + a_hi · Σ_hi u·qx) + b_lo · s_lo + b_hi · s_hi
//! ```
//!
//! | format | u                 | a          | b           |
//! |--------|-------------------|------------|-------------|
//! | Q8_0   | w (signed i8)     | d          | 0           |
//! | Q4_0   | nibble 0..15      | d          | -8·d        |
//! | Q4_1   | nibble            | d          | m           |
//! | Q4_K   | nibble            | d·scale_s  | -dmin·min_s |
//! | Q6_K   | 6-bit 0..63       | d·scale_16 | -32·a       |
//!
//! The integer sums `Σ u·qx` are exact: `vpdpbusd` (AVX-512 VNNI, on 256-bit registers) or
//! `vpmaddubsw` + `vpmaddwd` (AVX2; no pair can saturate: u ≤ 63, or |w| ≤ 128 with the sign
//! moved onto qx for Q8_0), or plain integer loops (scalar). The only approximation is the
//! activation rounding: `|x - x̂| ≤ dx/2` per element.
//!
//! (The activation sums are stored as `s_lo` and `s_lo + s_hi`, so the common unsplit
//! formats need one multiply-add per group for the `b` term.)
//!
//! The integer path serves decode and decode batches (rows <= `MATVEC_MAX_ROWS` = 16; each
//! weight row is read once per call and met by every activation row, and a row's result is
//! bit-identical to a one-row call: the tiles keep per-row accumulators in one fixed order,
//! and Q5_K's `dequant_dot` is per row too).
//!
//! Prefill (17 rows and more): the integer GEMM (`qgemm`). The activations are quantized as
//! above and packed into panels of 16 rows; each thread unpacks a few weight rows at a time
//! into bytes and per-group scales once per call and sweeps them over every panel with a
//! register-blocked tile, then one f32 FMA per half-group applies the scales:
//! - AVX-512 VNNI (`x86::qgemm_tile`, every format but Q5_K): 4 weight rows × 16 or 32
//!   activation rows; per group, 8 `vpdpbusd` steps of a broadcast weight dword against 16
//!   rows' dwords. Q8_0's signed weights are stored as w + 128 and the exact integer 128·Σqx
//!   is taken off before the scale.
//! - AVX2 (`x86::qgemm_tile_avx2`, the 4-bit formats Q4_0, Q4_1, Q4_K): 2 weight rows × 16
//!   activation rows; per step `vpmaddubsw` of the broadcast weight dword against the panel,
//!   the i16 pair sums added over the whole group (at most 8 · 2 · 15 · 127 < 2^15) and
//!   widened once by `vpmaddwd`. Its f32 part is the VNNI tile's, in the same order. Q8_0 (sign
//!   trick, four instructions per step) and Q6_K (widened every two steps) measured 0.65-0.85x
//!   of the dequantized f32 GEMM on a Zen 3 core, so on AVX2 they take that path.
//!
//! The result is the same arithmetic as the decode path (q8 activations), summed in another
//! order: a prefill row is batch-invariant among prefills, not bit-identical to decode.
//! `MINFER_INT_PREFILL=0` (`Kernels::without_int_prefill`), and the formats or CPUs without an
//! integer tile, instead dequantize each weight row (with `crate::quant`'s reference code)
//! once per call into the packed f32 GEMM (`gemm`), with exact f32 activations.
//!
//! Decode reads each weight row once, so it is bound by how many cache misses a core keeps in
//! flight: the tiles prefetch 2 KiB ahead of the block they read (`PF_AHEAD`). Measured, one
//! core, weights cycled beyond the L3 (`cargo bench --bench matmul -- quick only=matvec`):
//! - Zen 4 (AVX-512 VNNI), before the prefetch: q8_0 19.7, q4_0 10.7, q4_1 11.2, q4_k 10.1,
//!   q6_k 12.1 GB/s of weights, against ~18-20 for f32/bf16/f16.
//! - Zen 3 (AVX2), without / with the prefetch: q8_0 6.9 / 11.5, q4_1 5.4 / 7.3 GB/s, against
//!   12.6 for f32 (whose plain stream the hardware prefetcher follows alone: a software
//!   prefetch there cost 15%). The 4-bit formats and the K-quants (q4_k 4.5, q6_k 4.0) stay
//!   bound by their per-block unpacking and scale work on one core.
//!
//! Not here: quantizing weights other than Q8_0 (minfer reads quantized files; `--quantize
//! q8_0` is the one conversion it makes), NEON integer dot products (aarch64 uses the scalar
//! kernels), and Q5_K fast paths (Q5_K goes through `dequant_dot`: dequantize a block, f32 dot).

use std::cell::RefCell;

use half::f16;
use rayon::prelude::*;

use super::gemm::{gemm, split_columns, store_tile, SyncPtr, WeightRows};
use super::simd::{Isa, Kernels};

/// From this many activation rows on, products dequantize weight rows and use f32 arithmetic;
/// up to one fewer (decode and decode batches) every row is computed as a one-row call would.
const PREFILL_MIN_ROWS: usize = super::matmul::MATVEC_MAX_ROWS + 1;
use crate::error::{Error, Result};
use crate::quant::{scale_min_k4, QK};
use crate::tensor::DType;

/// Activations quantized per block of 32 (see the module header), row-major.
#[derive(Default)]
pub struct QActs {
    /// rows × n_in
    pub qs: Vec<i8>,
    /// rows × n_in/32: the scale dx of each block
    pub d: Vec<f32>,
    /// rows × n_in/32 × 2: dx · Σ qx over the first half-block, then over the whole block
    pub s: Vec<f32>,
    pub n_in: usize,
}

impl QActs {
    /// Quantizes `rows` rows of `n_in` (a multiple of 32) from `x` with `f`, reusing the
    /// buffers.
    fn quantize(&mut self, f: QuantFn, x: &[f32], rows: usize, n_in: usize) {
        self.n_in = n_in;
        self.qs.resize(rows * n_in, 0);
        self.d.resize(rows * n_in / QK, 0.0);
        self.s.resize(rows * n_in / 16, 0.0);
        // SAFETY: the function came from a CPU-checked table (see `QTable`).
        unsafe { f(&x[..rows * n_in], &mut self.qs, &mut self.d, &mut self.s) }
    }
}

/// Quantizes whole blocks of 32: `x` (32·n) into `qs` (32·n), `d` (n), `s` (2·n).
pub(crate) type QuantFn = unsafe fn(&[f32], &mut [i8], &mut [f32], &mut [f32]);

/// The portable activation quantizer (see the module header for the format).
unsafe fn quantize_scalar(x: &[f32], qs: &mut [i8], d: &mut [f32], s: &mut [f32]) {
    for (((xb, qb), d), s) in x
        .chunks_exact(QK)
        .zip(qs.chunks_exact_mut(QK))
        .zip(d.iter_mut())
        .zip(s.chunks_exact_mut(2))
    {
        let amax = xb.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let dx = amax / 127.0;
        let id = if dx > 0.0 { 1.0 / dx } else { 0.0 };
        let mut sums = [0i32; 2];
        for (j, (q, v)) in qb.iter_mut().zip(xb).enumerate() {
            // Round half away from zero, as ggml's roundf, by hand: `f32::round` is a libm call
            // on baseline x86-64, and `r + 0.5` is wrong for r = 0.49999997 (the sum rounds to
            // 1.0). Truncate, then step by the exact remainder. |v·id| <= 127 (+ rounding), and
            // the clamp keeps -128 out (the AVX2 sign trick for Q8_0 would overflow on it).
            let r = v * id;
            let t = r as i32;
            let frac = r - t as f32;
            let r = (t + (frac >= 0.5) as i32 - (frac <= -0.5) as i32).clamp(-127, 127);
            *q = r as i8;
            sums[j / 16] += r;
        }
        *d = dx;
        s[0] = dx * sums[0] as f32;
        s[1] = dx * (sums[0] + sums[1]) as f32;
    }
}

/// Raw view of quantized activation row `r0` onward (strides derive from `n_in`).
#[derive(Clone, Copy)]
pub(crate) struct QX {
    qs: *const i8,
    d: *const f32,
    s: *const f32,
    n_in: usize,
}

/// Computes `out[r] = Σ_i x[r, i] · w[i]` for `r < NX`, one weight row `w` of `n_in` elements.
///
/// # Safety
/// `w` holds one whole row of the table's format (n_in / block elements blocks), `x` covers
/// NX rows of n_in, `out` has NX writable slots, and the table came from a CPU-checked
/// [`Kernels`].
pub(crate) type QTileFn = unsafe fn(*const u8, QX, *mut f32);
/// One instruction set's quantized kernels.
#[derive(Clone, Copy)]
pub(crate) struct QTable {
    /// Indexed `[format][nx - 1]`, formats in [`FORMATS`] order.
    tiles: [[QTileFn; 4]; 5],
    quantize: QuantFn,
}

/// The formats with integer kernels, in table order.
pub const FORMATS: [DType; 5] = [
    DType::Q8_0,
    DType::Q4_0,
    DType::Q4_1,
    DType::Q4K,
    DType::Q6K,
];

fn format_index(d: DType) -> Option<usize> {
    FORMATS.iter().position(|&f| f == d)
}

#[inline(always)]
fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// One weight format, as groups of 32 (see the module header).
pub(crate) trait QFormat {
    const ELEMS: usize;
    const BYTES: usize;
    /// u is a signed i8 (Q8_0) rather than an unsigned small integer.
    const SIGNED: bool;
    /// a (and b) differ between the two halves of a group (Q6_K).
    const SPLIT: bool;
    /// How many 4-byte steps of `vpmaddubsw` pair sums (each at most 2 · max u · 127) the AVX2
    /// GEMM may add in i16 lanes before widening: 32767 / (254 · max u), so 8 for the 4-bit
    /// formats (u <= 15), 2 for Q6_K (u <= 63), 1 for Q8_0 (|w| <= 128).
    const I16_STEPS: usize;
    /// Calls `f(g, u, a, b)` for each group g of the block at `blk` (BYTES long), u as bytes.
    fn groups(blk: &[u8], f: impl FnMut(usize, &[u8; 32], [f32; 2], [f32; 2]));
}

pub(crate) struct Q8_0;
pub(crate) struct Q4_0;
pub(crate) struct Q4_1;
pub(crate) struct Q4K;
pub(crate) struct Q6K;

#[inline(always)]
fn nibbles(q: &[u8]) -> [u8; 32] {
    let mut u = [0u8; 32];
    for j in 0..16 {
        u[j] = q[j] & 0x0F;
        u[j + 16] = q[j] >> 4;
    }
    u
}

impl QFormat for Q8_0 {
    const ELEMS: usize = 32;
    const BYTES: usize = 34;
    const SIGNED: bool = true;
    const SPLIT: bool = false;
    const I16_STEPS: usize = 1;
    #[inline(always)]
    fn groups(blk: &[u8], mut f: impl FnMut(usize, &[u8; 32], [f32; 2], [f32; 2])) {
        let d = f16_at(blk, 0);
        let mut u = [0u8; 32];
        u.copy_from_slice(&blk[2..34]);
        f(0, &u, [d, d], [0.0, 0.0]);
    }
}

impl QFormat for Q4_0 {
    const ELEMS: usize = 32;
    const BYTES: usize = 18;
    const SIGNED: bool = false;
    const SPLIT: bool = false;
    const I16_STEPS: usize = 8;
    #[inline(always)]
    fn groups(blk: &[u8], mut f: impl FnMut(usize, &[u8; 32], [f32; 2], [f32; 2])) {
        let d = f16_at(blk, 0);
        f(0, &nibbles(&blk[2..18]), [d, d], [-8.0 * d, -8.0 * d]);
    }
}

impl QFormat for Q4_1 {
    const ELEMS: usize = 32;
    const BYTES: usize = 20;
    const SIGNED: bool = false;
    const SPLIT: bool = false;
    const I16_STEPS: usize = 8;
    #[inline(always)]
    fn groups(blk: &[u8], mut f: impl FnMut(usize, &[u8; 32], [f32; 2], [f32; 2])) {
        let (d, m) = (f16_at(blk, 0), f16_at(blk, 2));
        f(0, &nibbles(&blk[4..20]), [d, d], [m, m]);
    }
}

/// Q4_K per-group (a, b) for the 8 groups of a super-block.
#[inline(always)]
fn q4k_scales(blk: &[u8]) -> [(f32, f32); 8] {
    q4k_scales_with(f16_at(blk, 0), f16_at(blk, 2), blk)
}

/// [`q4k_scales`] with the block's `d` and `dmin` already widened (the SIMD kernels widen
/// both with one `vcvtph2ps`: `half`'s conversion through a runtime feature check cost more
/// than the rest of a decode super-block's scale work).
#[inline(always)]
fn q4k_scales_with(d: f32, dmin: f32, blk: &[u8]) -> [(f32, f32); 8] {
    let mut sc = [0u8; 12];
    sc.copy_from_slice(&blk[4..16]);
    std::array::from_fn(|j| {
        let (s, m) = scale_min_k4(j, &sc);
        (d * s as f32, -dmin * m as f32)
    })
}

impl QFormat for Q4K {
    const ELEMS: usize = 256;
    const BYTES: usize = 144;
    const SIGNED: bool = false;
    const SPLIT: bool = false;
    const I16_STEPS: usize = 8;
    #[inline(always)]
    fn groups(blk: &[u8], mut f: impl FnMut(usize, &[u8; 32], [f32; 2], [f32; 2])) {
        let ab = q4k_scales(blk);
        for c in 0..4 {
            let q = &blk[16 + 32 * c..16 + 32 * c + 32];
            let lo: [u8; 32] = std::array::from_fn(|l| q[l] & 0x0F);
            let hi: [u8; 32] = std::array::from_fn(|l| q[l] >> 4);
            let (a, b) = ab[2 * c];
            f(2 * c, &lo, [a, a], [b, b]);
            let (a, b) = ab[2 * c + 1];
            f(2 * c + 1, &hi, [a, a], [b, b]);
        }
    }
}

impl QFormat for Q6K {
    const ELEMS: usize = 256;
    const BYTES: usize = 210;
    const SIGNED: bool = false;
    const SPLIT: bool = true;
    const I16_STEPS: usize = 2;
    #[inline(always)]
    fn groups(blk: &[u8], mut f: impl FnMut(usize, &[u8; 32], [f32; 2], [f32; 2])) {
        let d = f16_at(blk, 208);
        for h in 0..2 {
            let ql = &blk[64 * h..64 * h + 64];
            let qh = &blk[128 + 32 * h..128 + 32 * h + 32];
            let sc = &blk[192 + 8 * h..192 + 8 * h + 8];
            for g in 0..4 {
                let u: [u8; 32] = std::array::from_fn(|l| {
                    let low = if g % 2 == 0 { ql[l] } else { ql[l + 32] };
                    let low = if g < 2 { low & 0x0F } else { low >> 4 };
                    low | (((qh[l] >> (2 * g)) & 3) << 4)
                });
                let a = [
                    d * (sc[2 * g] as i8) as f32,
                    d * (sc[2 * g + 1] as i8) as f32,
                ];
                f(4 * h + g, &u, a, [-32.0 * a[0], -32.0 * a[1]]);
            }
        }
    }
}

/// The plain kernel: integer dot products per half-group, f32 across groups.
///
/// # Safety
/// As [`QTileFn`] (no CPU feature needed).
unsafe fn qtile_scalar<F: QFormat, const NX: usize>(w: *const u8, x: QX, out: *mut f32) {
    let n_in = x.n_in;
    let nb = n_in / F::ELEMS;
    let gpb = F::ELEMS / 32;
    // SAFETY: the caller vouches for one row of nb blocks at w and NX activation rows at x.
    let (wrow, qs, ds, ss) = unsafe {
        (
            std::slice::from_raw_parts(w, nb * F::BYTES),
            std::slice::from_raw_parts(x.qs, NX * n_in),
            std::slice::from_raw_parts(x.d, NX * n_in / 32),
            std::slice::from_raw_parts(x.s, NX * n_in / 16),
        )
    };
    let mut acc = [0f32; NX];
    for (b, blk) in wrow.chunks_exact(F::BYTES).enumerate() {
        F::groups(blk, |g, u, a, bb| {
            let gi = b * gpb + g;
            for (r, acc) in acc.iter_mut().enumerate() {
                let xq = &qs[r * n_in + gi * 32..r * n_in + gi * 32 + 32];
                let mut dot = [0i32; 2];
                for j in 0..32 {
                    let uj = if F::SIGNED {
                        u[j] as i8 as i32
                    } else {
                        u[j] as i32
                    };
                    dot[j / 16] += uj * xq[j] as i32;
                }
                let dx = ds[r * n_in / 32 + gi];
                let s = &ss[r * n_in / 16 + 2 * gi..];
                *acc += dx * (a[0] * dot[0] as f32 + a[1] * dot[1] as f32)
                    + bb[0] * s[0]
                    + bb[1] * (s[1] - s[0]);
            }
        });
    }
    for (r, a) in acc.iter().enumerate() {
        // SAFETY: out has NX slots (caller).
        unsafe { *out.add(r) = *a };
    }
}

macro_rules! qtable {
    ($f:ident) => {
        [
            [$f::<Q8_0, 1>, $f::<Q8_0, 2>, $f::<Q8_0, 3>, $f::<Q8_0, 4>],
            [$f::<Q4_0, 1>, $f::<Q4_0, 2>, $f::<Q4_0, 3>, $f::<Q4_0, 4>],
            [$f::<Q4_1, 1>, $f::<Q4_1, 2>, $f::<Q4_1, 3>, $f::<Q4_1, 4>],
            [$f::<Q4K, 1>, $f::<Q4K, 2>, $f::<Q4K, 3>, $f::<Q4K, 4>],
            [$f::<Q6K, 1>, $f::<Q6K, 2>, $f::<Q6K, 3>, $f::<Q6K, 4>],
        ]
    };
}

impl QTable {
    /// The integer kernels for the instruction set of `k`. Holding `k` proves the CPU has that
    /// instruction set (it can only be built through `Kernels::for_isa`), and VNNI when
    /// `k.has_vnni()`.
    fn for_kernels(k: &Kernels) -> QTable {
        match k.isa() {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 if k.has_vnni() => x86::table_vnni(),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 | Isa::Avx512 => x86::table_avx2(),
            _ => table_scalar(),
        }
    }
}

fn table_scalar() -> QTable {
    QTable {
        tiles: qtable!(qtile_scalar),
        quantize: quantize_scalar,
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod x86 {
    //! AVX2 and AVX-512 VNNI (256-bit) forms of the integer kernels. The SIMD unpacking of
    //! each format mirrors its scalar `groups` exactly.

    use std::arch::x86_64::*;

    use super::{QFormat, QTable, Q4K, Q4_0, Q4_1, Q6K, Q8_0, QX};

    /// `Σ u·x` over each run of 4 bytes, as 8 i32 lanes (u unsigned, x signed).
    pub(crate) trait IDot {
        unsafe fn dot(u: __m256i, x: __m256i) -> __m256i;
    }
    pub(crate) struct Avx2Dot;
    pub(crate) struct VnniDot;

    impl IDot for Avx2Dot {
        #[inline(always)]
        unsafe fn dot(u: __m256i, x: __m256i) -> __m256i {
            // SAFETY: AVX2 enabled by the caller. maddubs cannot saturate here: u <= 63, or
            // u = |w| <= 128 with |x| <= 127 (2·128·127 < 32767).
            unsafe { _mm256_madd_epi16(_mm256_maddubs_epi16(u, x), _mm256_set1_epi16(1)) }
        }
    }

    impl IDot for VnniDot {
        #[inline(always)]
        unsafe fn dot(u: __m256i, x: __m256i) -> __m256i {
            // SAFETY: AVX-512 VNNI + VL enabled by the caller.
            unsafe { _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, x) }
        }
    }

    /// The two f16 values at `p` and `p + 2`, widened. The 4 bytes are loaded with an explicit
    /// `vmovd` (zero-extending): from any intrinsic form, LLVM narrowed the load to a `vpinsrw`
    /// merging into whatever register was free, which chained every block's scale load to the
    /// previous block's arithmetic (Q4_0 decode 2-4x slower, measured).
    #[inline(always)]
    unsafe fn f16_pair(p: *const u8) -> (f32, f32) {
        let h: __m128i;
        // SAFETY: the caller guarantees four readable bytes at p; vmovd only reads them.
        unsafe {
            std::arch::asm!(
                "vmovd {h}, dword ptr [{p}]",
                h = out(xmm_reg) h,
                p = in(reg) p,
                options(pure, readonly, nostack, preserves_flags)
            );
        }
        // SAFETY: F16C is enabled by the caller.
        unsafe {
            let v = _mm_cvtph_ps(h);
            (_mm_cvtss_f32(v), _mm_cvtss_f32(_mm_movehdup_ps(v)))
        }
    }

    #[inline(always)]
    unsafe fn nibbles16(p: *const u8) -> __m256i {
        // SAFETY: 16 readable bytes (caller). Low nibbles are elements 0..16, high 16..32.
        unsafe {
            let q = _mm_loadu_si128(p as *const __m128i);
            let m = _mm_set1_epi8(0x0F);
            let lo = _mm_and_si128(q, m);
            let hi = _mm_and_si128(_mm_srli_epi16::<4>(q), m);
            _mm256_set_m128i(hi, lo)
        }
    }

    /// SIMD unpacking: `f(g, u, a, b)` per group, like `QFormat::groups`.
    pub(crate) trait SimdFormat: QFormat {
        unsafe fn groups_simd<S: Sink>(blk: *const u8, f: &mut S);
    }

    /// Receives the groups of a block (a trait, not a closure: a closure called from several
    /// places, as in the K-quant group loops, is left out of line without the caller's target
    /// features, and every intrinsic in it became a call: Q4_K decode was 50x slower).
    pub(crate) trait Sink {
        unsafe fn group(&mut self, g: usize, u: __m256i, a: [f32; 2], b: [f32; 2]);
    }

    impl SimdFormat for Q8_0 {
        #[inline(always)]
        unsafe fn groups_simd<S: Sink>(blk: *const u8, f: &mut S) {
            // SAFETY: one 34-byte block (caller).
            unsafe {
                let d = f16_pair(blk).0;
                f.group(
                    0,
                    _mm256_loadu_si256(blk.add(2) as *const __m256i),
                    [d, d],
                    [0.0, 0.0],
                );
            }
        }
    }

    impl SimdFormat for Q4_0 {
        #[inline(always)]
        unsafe fn groups_simd<S: Sink>(blk: *const u8, f: &mut S) {
            // SAFETY: one 18-byte block (caller).
            unsafe {
                let d = f16_pair(blk).0;
                f.group(0, nibbles16(blk.add(2)), [d, d], [-8.0 * d, -8.0 * d]);
            }
        }
    }

    impl SimdFormat for Q4_1 {
        #[inline(always)]
        unsafe fn groups_simd<S: Sink>(blk: *const u8, f: &mut S) {
            // SAFETY: one 20-byte block (caller).
            unsafe {
                let (d, m) = f16_pair(blk);
                f.group(0, nibbles16(blk.add(4)), [d, d], [m, m]);
            }
        }
    }

    impl SimdFormat for Q4K {
        #[inline(always)]
        unsafe fn groups_simd<S: Sink>(blk: *const u8, f: &mut S) {
            // SAFETY: one 144-byte block (caller).
            unsafe {
                let (d, dmin) = f16_pair(blk);
                let ab = super::q4k_scales_with(d, dmin, std::slice::from_raw_parts(blk, 16));
                let m = _mm256_set1_epi8(0x0F);
                for c in 0..4 {
                    let q = _mm256_loadu_si256(blk.add(16 + 32 * c) as *const __m256i);
                    let (a, b) = ab[2 * c];
                    f.group(2 * c, _mm256_and_si256(q, m), [a, a], [b, b]);
                    let (a, b) = ab[2 * c + 1];
                    f.group(
                        2 * c + 1,
                        _mm256_and_si256(_mm256_srli_epi16::<4>(q), m),
                        [a, a],
                        [b, b],
                    );
                }
            }
        }
    }

    impl SimdFormat for Q6K {
        #[inline(always)]
        unsafe fn groups_simd<S: Sink>(blk: *const u8, f: &mut S) {
            // SAFETY: one 210-byte block (caller).
            unsafe {
                // d is the block's last two bytes: read 206..210 and take the upper half.
                let d = f16_pair(blk.add(206)).1;
                let m4 = _mm256_set1_epi8(0x0F);
                let m2 = _mm256_set1_epi8(0x03);
                for h in 0..2 {
                    let ql0 = _mm256_loadu_si256(blk.add(64 * h) as *const __m256i);
                    let ql1 = _mm256_loadu_si256(blk.add(64 * h + 32) as *const __m256i);
                    let qh = _mm256_loadu_si256(blk.add(128 + 32 * h) as *const __m256i);
                    let sc = blk.add(192 + 8 * h) as *const i8;
                    let hb = |s: i32| -> __m256i {
                        // bits (2g, 2g+1) of qh moved to bits 4..6
                        let v = match s {
                            0 => qh,
                            2 => _mm256_srli_epi16::<2>(qh),
                            4 => _mm256_srli_epi16::<4>(qh),
                            _ => _mm256_srli_epi16::<6>(qh),
                        };
                        _mm256_slli_epi16::<4>(_mm256_and_si256(v, m2))
                    };
                    let lows = [
                        _mm256_and_si256(ql0, m4),
                        _mm256_and_si256(ql1, m4),
                        _mm256_and_si256(_mm256_srli_epi16::<4>(ql0), m4),
                        _mm256_and_si256(_mm256_srli_epi16::<4>(ql1), m4),
                    ];
                    for (g, low) in lows.into_iter().enumerate() {
                        let u = _mm256_or_si256(low, hb(2 * g as i32));
                        let a = [d * *sc.add(2 * g) as f32, d * *sc.add(2 * g + 1) as f32];
                        f.group(4 * h + g, u, a, [-32.0 * a[0], -32.0 * a[1]]);
                    }
                }
            }
        }
    }

    #[inline(always)]
    unsafe fn hsum(v: __m256) -> f32 {
        // SAFETY: AVX enabled by the caller.
        unsafe {
            let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            let s = _mm_add_ss(s, _mm_shuffle_ps::<0b01>(s, s));
            _mm_cvtss_f32(s)
        }
    }

    /// The accumulators of one weight row against NX activation rows.
    struct Acc<F, D, const NX: usize> {
        /// Two per row (even / odd groups) halve the FMA latency chain.
        acc: [[__m256; 2]; NX],
        accs: [f32; NX],
        x: QX,
        /// Index of the block's first group in the row.
        g0: usize,
        _m: std::marker::PhantomData<(F, D)>,
    }

    impl<F: SimdFormat, D: IDot, const NX: usize> Sink for Acc<F, D, NX> {
        #[inline(always)]
        unsafe fn group(&mut self, g: usize, u: __m256i, a: [f32; 2], bb: [f32; 2]) {
            let (x, n_in) = (self.x, self.x.n_in);
            let gi = self.g0 + g;
            // SAFETY: group gi of each of the NX activation rows exists (the caller of qtile
            // vouches for NX rows of n_in); the ISA is enabled by the qtile wrapper.
            unsafe {
                let uu = if F::SIGNED { _mm256_sign_epi8(u, u) } else { u };
                for r in 0..NX {
                    let xq = _mm256_loadu_si256(x.qs.add(r * n_in + gi * 32) as *const __m256i);
                    let xx = if F::SIGNED {
                        _mm256_sign_epi8(xq, u)
                    } else {
                        xq
                    };
                    let dot = _mm256_cvtepi32_ps(D::dot(uu, xx));
                    let dx = *x.d.add(r * (n_in / 32) + gi);
                    let sc = if F::SPLIT {
                        _mm256_set_m128(_mm_set1_ps(a[1] * dx), _mm_set1_ps(a[0] * dx))
                    } else {
                        _mm256_set1_ps(a[0] * dx)
                    };
                    // A branch, not acc[r][gi & 1]: a computed index would keep the
                    // accumulators in memory.
                    if gi & 1 == 0 {
                        self.acc[r][0] = _mm256_fmadd_ps(dot, sc, self.acc[r][0]);
                    } else {
                        self.acc[r][1] = _mm256_fmadd_ps(dot, sc, self.acc[r][1]);
                    }
                    if F::SPLIT {
                        let s = x.s.add(r * (n_in / 16) + 2 * gi);
                        self.accs[r] += bb[0] * *s + bb[1] * (*s.add(1) - *s);
                    } else if !F::SIGNED {
                        self.accs[r] += bb[0] * *x.s.add(r * (n_in / 16) + 2 * gi + 1);
                    }
                }
            }
        }
    }

    /// How far ahead of the block being read the decode tiles prefetch. Without it the loop
    /// keeps too few misses in flight for its ~17 instructions per 34-byte Q8_0 block: one
    /// Zen 3 core read 5-7 GB/s of Q8_0/Q4_1 weights against 13 GB/s for f32 rows.
    const PF_AHEAD: usize = 2048;

    #[inline(always)]
    unsafe fn qtile<F: SimdFormat, D: IDot, const NX: usize>(w: *const u8, x: QX, out: *mut f32) {
        let nb = x.n_in / F::ELEMS;
        let gpb = F::ELEMS / 32;
        // SAFETY (whole body): reads stay inside the row of nb blocks at w and the NX rows of
        // x (caller's contract); AVX2/FMA/F16C are enabled by the wrapper.
        unsafe {
            let mut st = Acc::<F, D, NX> {
                acc: [[_mm256_setzero_ps(); 2]; NX],
                accs: [0f32; NX],
                x,
                g0: 0,
                _m: std::marker::PhantomData,
            };
            for b in 0..nb {
                st.g0 = b * gpb;
                // Software prefetch PF_AHEAD bytes ahead (past the row end it reaches into the
                // next rows, which the caller reads next; a prefetch never faults).
                _mm_prefetch::<_MM_HINT_T0>(w.wrapping_add(b * F::BYTES + PF_AHEAD) as *const i8);
                F::groups_simd(w.add(b * F::BYTES), &mut st);
            }
            for r in 0..NX {
                *out.add(r) = hsum(_mm256_add_ps(st.acc[r][0], st.acc[r][1])) + st.accs[r];
            }
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn qtile_avx2<F: SimdFormat, const NX: usize>(w: *const u8, x: QX, out: *mut f32) {
        // SAFETY: forwarded contract; only reachable through an AVX2-checked table.
        unsafe { qtile::<F, Avx2Dot, NX>(w, x, out) }
    }

    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512vnni")]
    unsafe fn qtile_vnni<F: SimdFormat, const NX: usize>(w: *const u8, x: QX, out: *mut f32) {
        // SAFETY: forwarded contract; only reachable through a VNNI-checked table.
        unsafe { qtile::<F, VnniDot, NX>(w, x, out) }
    }

    /// Only call after checking AVX2, FMA and F16C.
    pub(crate) fn table_avx2() -> QTable {
        QTable {
            tiles: qtable!(qtile_avx2),
            quantize: quantize_avx2,
        }
    }

    /// Only call after checking AVX-512 F/VL/VNNI as well.
    pub(crate) fn table_vnni() -> QTable {
        QTable {
            tiles: qtable!(qtile_vnni),
            quantize: quantize_avx2,
        }
    }

    /// Pointers into [`super::QPanels`] at a first panel, with the panel strides (bytes for `q`,
    /// elements for the others).
    #[derive(Clone, Copy)]
    pub(crate) struct QPanelPtrs {
        pub(crate) q: *const u8,
        pub(crate) d: *const f32,
        pub(crate) s0: *const f32,
        pub(crate) s1: *const f32,
        pub(crate) isum: *const i32,
        pub(crate) pq: usize,
        pub(crate) pf: usize,
    }

    /// An integer GEMM tile: `(u, a, b, groups, panels, out)`, see [`qgemm_tile`].
    pub(crate) type QGemmFn =
        unsafe fn(*const u8, *const f32, *const f32, usize, QPanelPtrs, *mut f32);

    /// The integer GEMM tiles of one instruction set for one format.
    #[derive(Clone, Copy)]
    pub(crate) struct QGemmTiles {
        /// Weight rows per tile.
        pub(crate) mr: usize,
        /// `tiles[n - 1]` takes n panels of 16 activation rows; `nrv` entries are filled.
        pub(crate) tiles: [QGemmFn; 2],
        pub(crate) nrv: usize,
    }

    /// The tiles for a format: AVX-512 VNNI where `k` has it (4 weight rows × 1 or 2 panels),
    /// else AVX2 for the 4-bit formats (2 weight rows × 1 panel); None otherwise.
    pub(crate) fn qgemm_tiles<F: QFormat>(
        k: &crate::backend::cpu::simd::Kernels,
    ) -> Option<QGemmTiles> {
        use super::QMR;
        use crate::backend::cpu::simd::Isa;
        if k.has_vnni() {
            let tiles = match (F::SIGNED, F::SPLIT) {
                (true, false) => [
                    qgemm_vnni::<QMR, 1, false, true> as QGemmFn,
                    qgemm_vnni::<QMR, 2, false, true>,
                ],
                (false, false) => [
                    qgemm_vnni::<QMR, 1, false, false> as QGemmFn,
                    qgemm_vnni::<QMR, 2, false, false>,
                ],
                (false, true) => [
                    qgemm_vnni::<QMR, 1, true, false> as QGemmFn,
                    qgemm_vnni::<QMR, 2, true, false>,
                ],
                (true, true) => return None,
            };
            return Some(QGemmTiles {
                mr: QMR,
                tiles,
                nrv: 2,
            });
        }
        if !matches!(k.isa(), Isa::Avx2 | Isa::Avx512) {
            return None;
        }
        const MR: usize = QMR_AVX2;
        // Only the 4-bit formats: their pair sums add in i16 over a whole group, so a step
        // costs one `vpmaddubsw` and one `vpaddw`. Q8_0 (sign trick: four instructions per
        // step) and Q6_K (widened every two steps) ran at 0.65-0.85x of the dequantized f32
        // GEMM on a Zen 3 core (benches/matmul.rs, one thread), so they take that path.
        if F::SIGNED || F::SPLIT || F::I16_STEPS != 8 {
            return None;
        }
        let tile: QGemmFn = qgemm_avx2::<MR, 8>;
        Some(QGemmTiles {
            mr: MR,
            tiles: [tile, tile],
            nrv: 1,
        })
    }

    /// Weight rows per AVX2 tile: 2 rows × 16 activation rows keep 4 f32 and 4 integer
    /// accumulators, 2 activation vectors and the broadcast weight in 11 of 16 ymm registers
    /// (3 rows spilled at each group's end, measured slower).
    pub(crate) const QMR_AVX2: usize = 2;

    /// The AVX2 integer GEMM micro-kernel for the unsigned, unsplit formats (Q4_0, Q4_1,
    /// Q4_K): `MR` packed weight rows × one panel of 16 activation rows (two ymm registers of
    /// 8 rows' 4 bytes). Per step of 4 bytes, for each weight row, `vpmaddubsw` of its
    /// broadcast 4 bytes against the panel gives pair sums in i16 lanes; these are added in
    /// i16 for `S16` steps (no overflow: `QFormat::I16_STEPS`) and then widened by `vpmaddwd`
    /// with ones into the group's exact i32 sums. The f32 part per group is the VNNI tile's
    /// arithmetic in the same order, so both instruction sets give bit-identical results.
    ///
    /// # Safety
    /// As [`qgemm_tile`], with one panel, and AVX2 and FMA enabled by the caller.
    #[inline(always)]
    unsafe fn qgemm_tile_avx2<const MR: usize, const S16: usize>(
        u: *const u8,
        a: *const f32,
        b: *const f32,
        groups: usize,
        x: QPanelPtrs,
        out: *mut f32,
    ) {
        // SAFETY (whole body): every read stays inside the packed tile and panel the caller
        // vouched for; writes in out[..MR·16].
        unsafe {
            let ones = _mm256_set1_epi16(1);
            let mut acc = [[_mm256_setzero_ps(); 2]; MR];
            for g in 0..groups {
                let mut ia = [[_mm256_setzero_si256(); 2]; MR];
                let mut h = [[_mm256_setzero_si256(); 2]; MR];
                for t in 0..8 {
                    let base = x.q.add((g * 8 + t) * 64);
                    let xv = [
                        _mm256_loadu_si256(base as *const __m256i),
                        _mm256_loadu_si256(base.add(32) as *const __m256i),
                    ];
                    for i in 0..MR {
                        let wv = _mm256_set1_epi32(
                            (u.add((g * MR + i) * 32 + 4 * t) as *const i32).read_unaligned(),
                        );
                        for v in 0..2 {
                            let p = _mm256_maddubs_epi16(wv, xv[v]);
                            h[i][v] = if t % S16 == 0 {
                                p
                            } else {
                                _mm256_add_epi16(h[i][v], p)
                            };
                            if t % S16 == S16 - 1 {
                                ia[i][v] =
                                    _mm256_add_epi32(ia[i][v], _mm256_madd_epi16(h[i][v], ones));
                            }
                        }
                    }
                }
                for v in 0..2 {
                    let f = g * 16 + v * 8;
                    let dx = _mm256_loadu_ps(x.d.add(f));
                    let s1 = _mm256_loadu_ps(x.s1.add(f));
                    for i in 0..MR {
                        let ab = (g * MR + i) * 2;
                        let a0 = _mm256_set1_ps(*a.add(ab));
                        acc[i][v] = _mm256_fmadd_ps(
                            _mm256_cvtepi32_ps(ia[i][v]),
                            _mm256_mul_ps(a0, dx),
                            acc[i][v],
                        );
                        acc[i][v] = _mm256_fmadd_ps(_mm256_set1_ps(*b.add(ab)), s1, acc[i][v]);
                    }
                }
            }
            for (i, row) in acc.iter().enumerate() {
                for (v, a) in row.iter().enumerate() {
                    _mm256_storeu_ps(out.add(i * 16 + v * 8), *a);
                }
            }
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn qgemm_avx2<const MR: usize, const S16: usize>(
        u: *const u8,
        a: *const f32,
        b: *const f32,
        groups: usize,
        x: QPanelPtrs,
        out: *mut f32,
    ) {
        // SAFETY: forwarded contract; only reachable through `qgemm_tiles`, which checks for an
        // AVX2 (or AVX-512) `Kernels`, itself CPU-checked.
        unsafe { qgemm_tile_avx2::<MR, S16>(u, a, b, groups, x, out) }
    }

    /// The integer GEMM micro-kernel: `MR` packed weight rows × `NRV` panels of 16 activation
    /// rows. Per group of 32: eight `vpdpbusd` steps (4 bytes each: the weight row's 4 bytes
    /// broadcast, the 16 rows' 4 bytes in the panel) give the exact integer sums Σ u·qx of
    /// every (weight row, activation row) pair in i32 lanes (split formats: per half); then,
    /// in f32, `acc += Σu·qx · (a · dx) + b · s` (Q8_0: the integer sum less 128·Σqx first).
    /// `out[i · NRV·16 + j]` for weight row i, activation row j of the panels.
    ///
    /// # Safety
    /// `u`, `a`, `b` hold `groups` groups of MR rows as [`super::QWPack`] lays them out; `x`
    /// points at NRV panels of `groups` groups ([`super::QPanels`]); `out` is writable for
    /// `MR · NRV · 16`; AVX-512 F/BW/VL/VNNI are enabled by the caller.
    #[inline(always)]
    unsafe fn qgemm_tile<
        const MR: usize,
        const NRV: usize,
        const SPLIT: bool,
        const SIGNED: bool,
    >(
        u: *const u8,
        a: *const f32,
        b: *const f32,
        groups: usize,
        x: QPanelPtrs,
        out: *mut f32,
    ) {
        // SAFETY (whole body): every read stays inside the packed tile and panels the caller
        // vouched for; writes in out[..MR·NRV·16].
        unsafe {
            let mut acc = [[_mm512_setzero_ps(); NRV]; MR];
            for g in 0..groups {
                let mut ia = [[_mm512_setzero_si512(); NRV]; MR];
                let mut lo = [[_mm512_setzero_si512(); NRV]; MR];
                for t in 0..8 {
                    if SPLIT && t == 4 {
                        lo = ia;
                        ia = [[_mm512_setzero_si512(); NRV]; MR];
                    }
                    let xv: [__m512i; NRV] = std::array::from_fn(|v| {
                        _mm512_loadu_si512(x.q.add(v * x.pq + (g * 8 + t) * 64) as *const _)
                    });
                    for (i, row) in ia.iter_mut().enumerate() {
                        let wv = _mm512_set1_epi32(
                            (u.add((g * MR + i) * 32 + 4 * t) as *const i32).read_unaligned(),
                        );
                        for (acc, xv) in row.iter_mut().zip(xv.iter()) {
                            *acc = _mm512_dpbusd_epi32(*acc, wv, *xv);
                        }
                    }
                }
                for v in 0..NRV {
                    let f = v * x.pf + g * 16;
                    let dx = _mm512_loadu_ps(x.d.add(f));
                    let s1 = _mm512_loadu_ps(x.s1.add(f));
                    let s0 = if SPLIT {
                        _mm512_loadu_ps(x.s0.add(f))
                    } else {
                        _mm512_setzero_ps()
                    };
                    let isum = if SIGNED {
                        _mm512_loadu_si512(x.isum.add(f) as *const _)
                    } else {
                        _mm512_setzero_si512()
                    };
                    for i in 0..MR {
                        let ab = (g * MR + i) * 2;
                        let a0 = _mm512_set1_ps(*a.add(ab));
                        if SPLIT {
                            let a1 = _mm512_set1_ps(*a.add(ab + 1));
                            acc[i][v] = _mm512_fmadd_ps(
                                _mm512_cvtepi32_ps(lo[i][v]),
                                _mm512_mul_ps(a0, dx),
                                acc[i][v],
                            );
                            acc[i][v] = _mm512_fmadd_ps(
                                _mm512_cvtepi32_ps(ia[i][v]),
                                _mm512_mul_ps(a1, dx),
                                acc[i][v],
                            );
                            acc[i][v] = _mm512_fmadd_ps(_mm512_set1_ps(*b.add(ab)), s0, acc[i][v]);
                            acc[i][v] =
                                _mm512_fmadd_ps(_mm512_set1_ps(*b.add(ab + 1)), s1, acc[i][v]);
                        } else {
                            let iv = if SIGNED {
                                _mm512_sub_epi32(ia[i][v], isum)
                            } else {
                                ia[i][v]
                            };
                            acc[i][v] = _mm512_fmadd_ps(
                                _mm512_cvtepi32_ps(iv),
                                _mm512_mul_ps(a0, dx),
                                acc[i][v],
                            );
                            if !SIGNED {
                                acc[i][v] =
                                    _mm512_fmadd_ps(_mm512_set1_ps(*b.add(ab)), s1, acc[i][v]);
                            }
                        }
                    }
                }
            }
            for (i, row) in acc.iter().enumerate() {
                for (v, a) in row.iter().enumerate() {
                    _mm512_storeu_ps(out.add(i * NRV * 16 + v * 16), *a);
                }
            }
        }
    }

    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn qgemm_vnni<
        const MR: usize,
        const NRV: usize,
        const SPLIT: bool,
        const SIGNED: bool,
    >(
        u: *const u8,
        a: *const f32,
        b: *const f32,
        groups: usize,
        x: QPanelPtrs,
        out: *mut f32,
    ) {
        // SAFETY: forwarded contract; only reachable through `qgemm_tiles`, which checks VNNI
        // on a CPU-checked AVX-512 `Kernels`.
        unsafe { qgemm_tile::<MR, NRV, SPLIT, SIGNED>(u, a, b, groups, x, out) }
    }

    /// The activation quantizer with AVX2: the same format, bounds and rounding (half away
    /// from zero) as `quantize_scalar`, so every instruction set gives the same integers.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn quantize_avx2(x: &[f32], qs: &mut [i8], d: &mut [f32], s: &mut [f32]) {
        let n = (x.len() / 32)
            .min(qs.len() / 32)
            .min(d.len())
            .min(s.len() / 2);
        // SAFETY: block b reads x[32b..32b+32] and writes qs[32b..32b+32], d[b], s[2b..2b+2],
        // all inside the slices for b < n.
        unsafe {
            let sign = _mm256_set1_ps(-0.0);
            for b in 0..n {
                let p = x.as_ptr().add(32 * b);
                let v = [
                    _mm256_loadu_ps(p),
                    _mm256_loadu_ps(p.add(8)),
                    _mm256_loadu_ps(p.add(16)),
                    _mm256_loadu_ps(p.add(24)),
                ];
                let a = v.map(|v| _mm256_andnot_ps(sign, v));
                let m = _mm256_max_ps(_mm256_max_ps(a[0], a[1]), _mm256_max_ps(a[2], a[3]));
                let m = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps::<1>(m));
                let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
                let m = _mm_max_ss(m, _mm_shuffle_ps::<0b01>(m, m));
                let dx = _mm_cvtss_f32(m) / 127.0;
                let id = _mm256_set1_ps(if dx > 0.0 { 1.0 / dx } else { 0.0 });
                let lim = _mm256_set1_ps(127.0);
                let (one, half) = (_mm256_set1_ps(1.0), _mm256_set1_ps(0.5));
                let q = v.map(|v| {
                    // Half away from zero, as the scalar quantizer and ggml: truncate, then
                    // step by one where the exact remainder reaches ±0.5.
                    let y = _mm256_mul_ps(v, id);
                    let t = _mm256_round_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(y);
                    let f = _mm256_sub_ps(y, t);
                    let up = _mm256_and_ps(_mm256_cmp_ps::<_CMP_GE_OQ>(f, half), one);
                    let down = _mm256_and_ps(
                        _mm256_cmp_ps::<_CMP_LE_OQ>(f, _mm256_sub_ps(_mm256_setzero_ps(), half)),
                        one,
                    );
                    let r = _mm256_sub_ps(_mm256_add_ps(t, up), down);
                    _mm256_cvtps_epi32(_mm256_max_ps(
                        _mm256_min_ps(r, lim),
                        _mm256_sub_ps(_mm256_setzero_ps(), lim),
                    ))
                });
                // i32 → i16 → i8; the packs interleave 128-bit lanes, the permute restores order.
                let w01 = _mm256_packs_epi32(q[0], q[1]);
                let w23 = _mm256_packs_epi32(q[2], q[3]);
                let b8 = _mm256_packs_epi16(w01, w23);
                let b8 = _mm256_permutevar8x32_epi32(b8, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
                _mm256_storeu_si256(qs.as_mut_ptr().add(32 * b) as *mut __m256i, b8);
                let hsum = |v: __m256i| -> i32 {
                    let s =
                        _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
                    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b00_00_11_10>(s));
                    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b00_00_00_01>(s));
                    _mm_cvtsi128_si32(s)
                };
                *d.get_unchecked_mut(b) = dx;
                *s.get_unchecked_mut(2 * b) = dx * hsum(_mm256_add_epi32(q[0], q[1])) as f32;
                *s.get_unchecked_mut(2 * b + 1) = dx
                    * hsum(_mm256_add_epi32(
                        _mm256_add_epi32(q[0], q[1]),
                        _mm256_add_epi32(q[2], q[3]),
                    )) as f32;
            }
        }
    }
}

thread_local! {
    /// Quantized activations of the current call; grows to the largest call, kept.
    static QX_BUF: RefCell<QActs> = RefCell::new(QActs::default());
}

/// `out[r, o] = Σ_i x[r, i] · w[o, i] (+ bias[o])` for block-quantized `w` bytes of `dtype`
/// (shape `[n_out, n_in]`, sizes already checked by the caller).
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul_quant(
    k: &Kernels,
    name: &str,
    dtype: DType,
    out: &mut [f32],
    x: &[f32],
    rows: usize,
    w: &[u8],
    n_out: usize,
    n_in: usize,
    bias: Option<&[f32]>,
) -> Result<()> {
    let (be, bb) = dtype.block();
    if !n_in.is_multiple_of(be) {
        return Err(Error::UnsupportedDtype {
            name: name.to_string(),
            dtype: format!("{dtype} with rows of {n_in} (not whole blocks of {be})"),
        });
    }
    let row_bytes = n_in / be * bb;
    if rows >= PREFILL_MIN_ROWS && k.int_prefill() {
        #[cfg(target_arch = "x86_64")]
        {
            let done = match dtype {
                DType::Q8_0 => qgemm::<Q8_0>(k, out, x, rows, w, n_out, n_in, row_bytes, bias),
                DType::Q4_0 => qgemm::<Q4_0>(k, out, x, rows, w, n_out, n_in, row_bytes, bias),
                DType::Q4_1 => qgemm::<Q4_1>(k, out, x, rows, w, n_out, n_in, row_bytes, bias),
                DType::Q4K => qgemm::<Q4K>(k, out, x, rows, w, n_out, n_in, row_bytes, bias),
                DType::Q6K => qgemm::<Q6K>(k, out, x, rows, w, n_out, n_in, row_bytes, bias),
                _ => false,
            };
            if done {
                return Ok(());
            }
        }
    }
    if rows >= PREFILL_MIN_ROWS {
        // Prefill: dequantize each weight row once per call and run the packed f32 GEMM over
        // all activation rows (exact activations; the integer path pays its per-block scale
        // work once per activation row).
        let fill = |o: usize, dst: &mut [f32]| {
            // dst is one whole row (n_in, whole blocks), so this cannot fail; if it somehow
            // did, dst would keep its previous contents.
            let _ = crate::quant::dequantize(dtype, &w[o * row_bytes..(o + 1) * row_bytes], dst);
        };
        gemm(k, out, x, rows, n_out, n_in, bias, WeightRows::Widen(&fill));
        return Ok(());
    }
    let Some(fi) = format_index(dtype) else {
        dequant_dot(k, dtype, out, x, rows, w, n_out, n_in, row_bytes, bias);
        return Ok(());
    };
    let qt = QTable::for_kernels(k);
    let table = &qt.tiles[fi];
    let quantize = qt.quantize;
    let mut go = |qa: &mut QActs| {
        qa.quantize(quantize, x, rows, n_in);
        let qa = &*qa;
        let dst = SyncPtr(out.as_mut_ptr());
        // Activation rows per block: the quantized block (~n_in bytes per row) stays in L2
        // while every weight row of this task's range meets it. A decode batch is always one
        // block, so its weights are read once.
        let rb = ((256 << 10) / n_in)
            .max(PREFILL_MIN_ROWS)
            .next_multiple_of(4);
        split_columns(
            n_out,
            rows.saturating_mul(n_out).saturating_mul(n_in),
            4,
            |o0, o1| {
                // Rebinding makes the closure capture the Sync wrapper, not its raw-pointer field.
                #[allow(clippy::redundant_locals)]
                let dst = dst;
                let mut tmp = [0f32; 4];
                for r0 in (0..rows).step_by(rb) {
                    let r1 = (r0 + rb).min(rows);
                    for o in o0..o1 {
                        let wr = w[o * row_bytes..(o + 1) * row_bytes].as_ptr();
                        let mut r = r0;
                        while r < r1 {
                            let nx = (r1 - r).min(4);
                            let xr = QX {
                                qs: qa.qs[r * n_in..].as_ptr(),
                                d: qa.d[r * n_in / 32..].as_ptr(),
                                s: qa.s[r * n_in / 16..].as_ptr(),
                                n_in,
                            };
                            // SAFETY: wr is one whole row (row_bytes), rows r..r+nx of the quantized
                            // activations exist (r + nx <= rows), tmp has 4 slots; the table came
                            // from a CPU-checked `Kernels`.
                            unsafe { table[nx - 1](wr, xr, tmp.as_mut_ptr()) };
                            for (a, v) in tmp[..nx].iter().enumerate() {
                                let b = bias.map_or(0.0, |b| b[o]);
                                // SAFETY: (r + a, o) is inside out, in this task's columns.
                                unsafe { *dst.0.add((r + a) * n_out + o) = v + b };
                            }
                            r += nx;
                        }
                    }
                }
            },
        );
    };
    QX_BUF.with(|cell| match cell.try_borrow_mut() {
        Ok(mut qa) => go(&mut qa),
        Err(_) => go(&mut QActs::default()),
    });
    Ok(())
}

/// Fallback for block types without integer kernels (Q5_K): dequantize one block at a time
/// onto the stack and take an f32 dot product with the activations.
#[allow(clippy::too_many_arguments)]
fn dequant_dot(
    k: &Kernels,
    dtype: DType,
    out: &mut [f32],
    x: &[f32],
    rows: usize,
    w: &[u8],
    n_out: usize,
    n_in: usize,
    row_bytes: usize,
    bias: Option<&[f32]>,
) {
    let (be, bb) = dtype.block();
    let dst = SyncPtr(out.as_mut_ptr());
    split_columns(
        n_out,
        rows.saturating_mul(n_out).saturating_mul(n_in),
        4,
        |o0, o1| {
            // Rebinding makes the closure capture the Sync wrapper, not its raw-pointer field.
            #[allow(clippy::redundant_locals)]
            let dst = dst;
            let mut blk = [0f32; 256];
            for o in o0..o1 {
                let wr = &w[o * row_bytes..(o + 1) * row_bytes];
                let mut acc = [0f32; 64];
                let mut r0 = 0;
                while r0 < rows {
                    let nr = (rows - r0).min(acc.len());
                    acc[..nr].fill(0.0);
                    for (b, wb) in wr.chunks_exact(bb).enumerate() {
                        // The sizes match by construction (bb bytes encode be elements).
                        if crate::quant::dequantize(dtype, wb, &mut blk[..be]).is_err() {
                            continue;
                        }
                        for (a, acc) in acc[..nr].iter_mut().enumerate() {
                            let xr = &x[(r0 + a) * n_in + b * be..(r0 + a) * n_in + (b + 1) * be];
                            *acc += k.dot_f32(xr, &blk[..be]);
                        }
                    }
                    for (a, v) in acc[..nr].iter().enumerate() {
                        // SAFETY: (r0 + a, o) is inside out, in this task's columns.
                        unsafe {
                            *dst.0.add((r0 + a) * n_out + o) = v + bias.map_or(0.0, |b| b[o])
                        };
                    }
                    r0 += nr;
                }
            }
        },
    );
}

// ---- prefill: the integer GEMM (AVX-512 VNNI, AVX2) ------------------------------------------------

/// Activation rows per panel of the integer GEMM: one 512-bit register of i32 lanes.
const QNR: usize = 16;
/// Weight rows per integer GEMM tile.
#[cfg(target_arch = "x86_64")]
const QMR: usize = 4;

/// The quantized activations of a prefill call rearranged into panels of [`QNR`] rows for the
/// integer GEMM (rows past the end are zero, and so contribute nothing):
/// - `q`: per panel, per group of 32, per step t of 4 bytes: the 4 bytes of each of the 16
///   rows (`[panel][group][t < 8][row < 16][4]`): one `vpdpbusd` operand per step.
/// - `d`: dx per panel, group, row; `s0`/`s1`: the activation sums the `b` terms need (split
///   formats: the first half and the second half; the others: 0 and the whole group);
///   `isum`: 128 · Σ qx over the group as i32 (the Q8_0 offset correction, exact).
#[derive(Default)]
struct QPanels {
    q: Vec<u8>,
    d: Vec<f32>,
    s0: Vec<f32>,
    s1: Vec<f32>,
    isum: Vec<i32>,
}

impl QPanels {
    fn pack(&mut self, qa: &QActs, rows: usize, split: bool, offset128: bool) {
        let n_in = qa.n_in;
        let gn = n_in / 32;
        let panels = rows.div_ceil(QNR);
        self.q.clear();
        self.q.resize(panels * gn * 32 * QNR, 0);
        for v in [&mut self.d, &mut self.s0, &mut self.s1] {
            v.clear();
            v.resize(panels * gn * QNR, 0.0);
        }
        self.isum.clear();
        self.isum.resize(panels * gn * QNR, 0);
        for r in 0..rows {
            let (p, j) = (r / QNR, r % QNR);
            let xr = &qa.qs[r * n_in..(r + 1) * n_in];
            for g in 0..gn {
                let base = (p * gn + g) * 32 * QNR;
                let xg = &xr[g * 32..g * 32 + 32];
                // 4 bytes at a time (one step's dword per row): a byte loop here was 6% of a
                // Q4_1 prefill's instructions.
                let xb: &[u8] = bytemuck::cast_slice(xg);
                for (t, step) in xb.chunks_exact(4).enumerate() {
                    let at = base + t * 4 * QNR + j * 4;
                    self.q[at..at + 4].copy_from_slice(step);
                }
                let fi = (p * gn + g) * QNR + j;
                self.d[fi] = qa.d[r * gn + g];
                let (lo, all) = (qa.s[r * 2 * gn + 2 * g], qa.s[r * 2 * gn + 2 * g + 1]);
                if split {
                    self.s0[fi] = lo;
                    self.s1[fi] = all - lo;
                } else {
                    self.s1[fi] = all;
                }
                if offset128 {
                    self.isum[fi] = 128 * xg.iter().map(|&v| v as i32).sum::<i32>();
                }
            }
        }
    }
}

/// One tile of packed weights for the integer GEMM: [`QMR`] rows, per group g and row i the 32
/// unsigned integers `u` (Q8_0: w + 128), `a` and `b` (two halves each, see the module header).
#[derive(Default)]
struct QWPack {
    u: Vec<u8>,
    a: Vec<f32>,
    b: Vec<f32>,
}

impl QWPack {
    /// Packs weight rows `o..o + m` (m <= mr) of `w`; rows m..mr are zero.
    fn pack<F: QFormat>(&mut self, w: &[u8], row_bytes: usize, o: usize, m: usize, mr: usize) {
        let gn = row_bytes / F::BYTES * (F::ELEMS / 32);
        let gpb = F::ELEMS / 32;
        self.u.clear();
        self.u.resize(gn * mr * 32, 0);
        self.a.clear();
        self.a.resize(gn * mr * 2, 0.0);
        self.b.clear();
        self.b.resize(gn * mr * 2, 0.0);
        for i in 0..m {
            let row = &w[(o + i) * row_bytes..(o + i + 1) * row_bytes];
            for (bi, blk) in row.chunks_exact(F::BYTES).enumerate() {
                F::groups(blk, |g, u, a, b| {
                    let gi = bi * gpb + g;
                    let dst = &mut self.u[(gi * mr + i) * 32..(gi * mr + i + 1) * 32];
                    if F::SIGNED {
                        // Signed bytes as unsigned: w + 128 (0..=255); the kernel subtracts
                        // 128 · Σ qx exactly (`QPanels::isum`).
                        for (d, s) in dst.iter_mut().zip(u) {
                            *d = s.wrapping_add(128);
                        }
                    } else {
                        dst.copy_from_slice(u);
                        self.b[(gi * mr + i) * 2..(gi * mr + i + 1) * 2].copy_from_slice(&b);
                    }
                    self.a[(gi * mr + i) * 2..(gi * mr + i + 1) * 2].copy_from_slice(&a);
                });
            }
        }
    }
}

thread_local! {
    /// Activation panels of the current integer-GEMM call (calling thread).
    static QP_BUF: RefCell<QPanels> = RefCell::new(QPanels::default());
    /// The weight tile of each worker thread.
    static QW_BUF: RefCell<QWPack> = RefCell::new(QWPack::default());
}

/// Prefill with block-quantized weights in integer arithmetic (AVX-512 VNNI, or AVX2 for the
/// 4-bit formats): the activations are quantized to q8 per block of 32 (as at decode), packed
/// into panels of 16 rows ([`QPanels`]); each thread unpacks the tile's weight rows at a time
/// into bytes and scales ([`QWPack`], once per call) and sweeps them over every panel with the
/// register-blocked tile (`x86::qgemm_tile`, `vpdpbusd`: 64 multiply-adds per instruction, or
/// `x86::qgemm_tile_avx2`, `vpmaddubsw`: 32, against 16 / 8 for an f32 FMA).
/// Each output sums its groups in order in one f32 lane, whatever the tile or the thread, so
/// prefill stays batch-invariant. Returns false (nothing written) when the format has no
/// integer kernel.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
fn qgemm<F: QFormat>(
    k: &Kernels,
    out: &mut [f32],
    x: &[f32],
    rows: usize,
    w: &[u8],
    n_out: usize,
    n_in: usize,
    row_bytes: usize,
    bias: Option<&[f32]>,
) -> bool {
    let Some(qt) = x86::qgemm_tiles::<F>(k) else {
        return false;
    };
    let (mr, tiles) = (qt.mr, qt.tiles);
    let quantize = QTable::for_kernels(k).quantize;
    let gn = n_in / 32;
    let mut go = |qa: &mut QActs, qp: &mut QPanels| {
        qa.quantize(quantize, x, rows, n_in);
        // Only the VNNI tile stores Q8_0 as w + 128 and needs the 128 · Σqx correction.
        qp.pack(qa, rows, F::SPLIT, F::SIGNED && k.has_vnni());
        let qp = &*qp;
        let panels = rows.div_ceil(QNR);
        let (pq, pf) = (gn * 32 * QNR, gn * QNR);
        let dst = SyncPtr(out.as_mut_ptr());
        split_columns(
            n_out,
            rows.saturating_mul(n_out).saturating_mul(n_in),
            mr,
            |o0, o1| {
                // Rebinding makes the closure capture the Sync wrapper, not its raw-pointer field.
                #[allow(clippy::redundant_locals)]
                let dst = dst;
                let run = |wp: &mut QWPack| {
                    let mut tmp = [0f32; QMR * 2 * QNR];
                    let mut o = o0;
                    while o < o1 {
                        let m = mr.min(o1 - o);
                        wp.pack::<F>(w, row_bytes, o, m, mr);
                        let mut p = 0;
                        while p < panels {
                            let nrv = (panels - p).min(qt.nrv);
                            let width = nrv * QNR;
                            // SAFETY: the weight tile holds gn groups of mr rows (pack, packed
                            // with the tiles' offset); panels p..p + nrv exist in every panel
                            // array (p + nrv <= panels <= qt.nrv), at strides pq / pf; tmp holds
                            // QMR × 2 × QNR >= mr × nrv × QNR. The tiles came from a CPU-checked
                            // `Kernels` (`qgemm_tiles`).
                            unsafe {
                                tiles[nrv - 1](
                                    wp.u.as_ptr(),
                                    wp.a.as_ptr(),
                                    wp.b.as_ptr(),
                                    gn,
                                    x86::QPanelPtrs {
                                        q: qp.q[p * pq..].as_ptr(),
                                        d: qp.d[p * pf..].as_ptr(),
                                        s0: qp.s0[p * pf..].as_ptr(),
                                        s1: qp.s1[p * pf..].as_ptr(),
                                        isum: qp.isum[p * pf..].as_ptr(),
                                        pq,
                                        pf,
                                    },
                                    tmp.as_mut_ptr(),
                                )
                            };
                            let r0 = p * QNR;
                            // SAFETY: rows r0..r0 + min(width, rows - r0) and columns o..o + m
                            // (o + m <= o1 <= n_out) are inside out and in this task's columns
                            // o0..o1; tmp holds mr × width >= m × width results.
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
                            p += nrv;
                        }
                        o += m;
                    }
                };
                QW_BUF.with(|cell| match cell.try_borrow_mut() {
                    Ok(mut wp) => run(&mut wp),
                    Err(_) => run(&mut QWPack::default()),
                });
            },
        );
    };
    QX_BUF.with(|cx| {
        QP_BUF.with(|cp| match (cx.try_borrow_mut(), cp.try_borrow_mut()) {
            (Ok(mut qa), Ok(mut qp)) => go(&mut qa, &mut qp),
            _ => go(&mut QActs::default(), &mut QPanels::default()),
        })
    });
    true
}

/// Quantizes rows of f32 to Q8_0 bytes (34 per 32 values), exactly as
/// `crate::quant::quantize_q8_0_reference` (ggml's `quantize_row_q8_0_ref`), in parallel.
pub fn quantize_q8_0(x: &[f32]) -> Result<Vec<u8>> {
    if !x.len().is_multiple_of(QK) {
        return Err(Error::arg(format!(
            "quantize_q8_0: length {} is not a multiple of {QK}",
            x.len()
        )));
    }
    let mut out = vec![0u8; x.len() / QK * 34];
    out.par_chunks_mut(34 * 1024)
        .zip(x.par_chunks(QK * 1024))
        .for_each(|(o, xs)| {
            for (ob, xb) in o.chunks_exact_mut(34).zip(xs.chunks_exact(QK)) {
                let amax = xb.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                let d = amax / 127.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                ob[..2].copy_from_slice(&f16::from_f32(d).to_le_bytes());
                for (q, v) in ob[2..].iter_mut().zip(xb) {
                    *q = (v * id).round() as i8 as u8;
                }
            }
        });
    Ok(out)
}
