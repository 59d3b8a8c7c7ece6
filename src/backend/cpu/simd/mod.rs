//! SIMD kernels with runtime CPU detection (AVX-512, AVX2+FMA, NEON, scalar), chosen once.
//!
//! The kernels are written once over a small vector trait (`vector::Simd`); each instruction
//! set is a token type whose safe `new()` checks the CPU, so holding one proves support
//! (memchr's pattern). A [`Kernels`] value is a dispatch table built from one token; the
//! process-wide table is picked on first use and cached ([`kernels`]). `MINFER_SIMD=scalar|avx2|
//! avx512|neon` overrides the choice at start-up (an ISA the CPU lacks falls back to the best
//! available one: the library cannot print, and refusing to run would help nobody), and
//! `MINFER_BF16_DOT=1` opts in to `vdpbf16ps` for bf16-weight prefill (activations rounded to bf16),
//! and `MINFER_INT_PREFILL=0` opts out of the integer (AVX2 / VNNI) GEMM for quantized-weight prefill
//! (q8-rounded activations, as at decode) in favour of dequantized weights × exact activations.
//!
//! Deliberately not here: threading (callers split work with rayon) and anything that
//! allocates per call.

#[cfg(target_arch = "aarch64")]
pub(crate) mod neon;
pub(crate) mod scalar;
pub(crate) mod vector;
#[cfg(target_arch = "x86_64")]
pub(crate) mod x86;

use std::sync::OnceLock;

use half::{bf16, f16};

use vector::{AxpyStridedFn, DotRowsFn, DotsStridedFn, GemmFn, DOT_ROWS_MAX};

/// An instruction set a [`Kernels`] table can be built for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Isa {
    Scalar,
    Avx2,
    Avx512,
    Neon,
}

impl Isa {
    pub const ALL: [Isa; 4] = [Isa::Scalar, Isa::Avx2, Isa::Avx512, Isa::Neon];

    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
            Isa::Neon => "neon",
        }
    }

    pub fn parse(s: &str) -> Option<Isa> {
        Isa::ALL
            .into_iter()
            .find(|i| i.name().eq_ignore_ascii_case(s.trim()))
    }

    /// The instruction sets this CPU supports, best last.
    pub fn available() -> Vec<Isa> {
        Isa::ALL
            .into_iter()
            .filter(|&i| Kernels::for_isa(i).is_some())
            .collect()
    }
}

impl std::fmt::Display for Isa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// bf16 × bf16 tile (see `x86::tile_bf16dot`), indexed like [`TileTable`].
pub(crate) type Bf16DotTable =
    [[unsafe fn(*const u16, usize, *const u16, usize, usize, *mut f32, usize); 2]; 4];

/// The prefill GEMM micro-kernels of one instruction set (see `vector::gemm_tile`): `mr` weight
/// rows × `nrv · lanes` activation rows, `tiles[nrv - 1]` for nrv = 1, 2.
#[derive(Clone, Copy)]
pub(crate) struct Gemm {
    pub(crate) mr: usize,
    pub(crate) lanes: usize,
    pub(crate) tiles: [GemmFn; 2],
}

impl Gemm {
    /// Activation rows per full tile.
    pub(crate) fn nr(&self) -> usize {
        2 * self.lanes
    }
}

/// The batched-decode dot products of one instruction set (see `vector::dot_rows`): entry
/// `nx - 1` takes `nx` activation rows against one weight row.
#[derive(Clone, Copy)]
pub(crate) struct DotRows {
    pub(crate) f32: [DotRowsFn<f32>; DOT_ROWS_MAX],
    pub(crate) bf16: [DotRowsFn<bf16>; DOT_ROWS_MAX],
    pub(crate) f16: [DotRowsFn<f16>; DOT_ROWS_MAX],
    /// Rows per call that fit the register file (4 × nx accumulators) without spilling.
    pub(crate) nx: usize,
}

/// Builds a [`DotRows`] from a generic wrapper `$f::<E, NX>`.
macro_rules! dot_rows_table {
    ($f:ident, $nx:expr) => {
        DotRows {
            f32: [$f::<f32, 1>, $f::<f32, 2>, $f::<f32, 3>, $f::<f32, 4>],
            bf16: [$f::<bf16, 1>, $f::<bf16, 2>, $f::<bf16, 3>, $f::<bf16, 4>],
            f16: [$f::<f16, 1>, $f::<f16, 2>, $f::<f16, 3>, $f::<f16, 4>],
            nx: $nx,
        }
    };
}

/// Builds a [`Gemm`] from a generic `#[target_feature]` wrapper `$f::<MR, NRV>`.
macro_rules! gemm_table {
    ($f:ident, $mr:literal, $lanes:literal) => {
        Gemm {
            mr: $mr,
            lanes: $lanes,
            tiles: [$f::<$mr, 1> as GemmFn, $f::<$mr, 2>],
        }
    };
}

/// A dispatch table for one instruction set. It can only be built through [`Kernels::for_isa`]
/// (or [`Kernels::detect`]), which checks the CPU, so every function pointer in it is safe to
/// call on this machine.
#[derive(Clone, Copy)]
pub struct Kernels {
    isa: Isa,
    vnni: bool,
    dot_f32: unsafe fn(&[f32], &[f32]) -> f32,
    dot_bf16: unsafe fn(&[f32], &[bf16]) -> f32,
    dot_f16: unsafe fn(&[f32], &[f16]) -> f32,
    axpy: unsafe fn(&mut [f32], f32, &[f32]),
    dots_strided: DotsStridedFn,
    axpy_strided: AxpyStridedFn,
    widen_bf16: unsafe fn(&mut [f32], &[bf16]),
    widen_f16: unsafe fn(&mut [f32], &[f16]),
    /// Several activation rows against one weight row (batched decode).
    pub(crate) dot_rows: DotRows,
    /// f32 GEMM micro-kernels over packed panels (prefill).
    pub(crate) gemm: Gemm,
    /// 12 independent FMA chains (peak measurement).
    fma_chains: unsafe fn(usize, f32) -> f32,
    /// Present when the CPU has AVX-512 BF16 and it was not switched off.
    pub(crate) tiles_bf16dot: Option<Bf16DotTable>,
    /// Prefill with block-quantized weights in integer arithmetic (q8 activations) where the
    /// CPU has a kernel for it (AVX2 or AVX-512 VNNI); off: dequantized weights, exact f32
    /// activations.
    int_prefill: bool,
}

impl std::fmt::Debug for Kernels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl Kernels {
    /// The table for `isa`, or None when this CPU (or this build's architecture) lacks it.
    pub fn for_isa(isa: Isa) -> Option<Kernels> {
        match isa {
            Isa::Scalar => Some(Kernels::scalar()),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => x86::Avx2::new().map(|_| {
                use x86::{
                    axpy_avx2, axpy_strided_avx2, dot_avx2, dot_rows_avx2, dots_strided_avx2,
                    fma_chains_avx2, gemm_avx2, widen_avx2,
                };
                Kernels {
                    isa,
                    vnni: false,
                    dot_f32: dot_avx2::<f32>,
                    dot_bf16: dot_avx2::<bf16>,
                    dot_f16: dot_avx2::<f16>,
                    axpy: axpy_avx2,
                    dots_strided: dots_strided_avx2,
                    axpy_strided: axpy_strided_avx2,
                    widen_bf16: widen_avx2::<bf16>,
                    widen_f16: widen_avx2::<f16>,
                    // 3 rows × 4 accumulators + weight + x = 14 of 16 ymm registers.
                    dot_rows: dot_rows_table!(dot_rows_avx2, 3),
                    // 6 × 2 accumulators + 2 loads + 1 broadcast = 15 of 16 ymm registers.
                    gemm: gemm_table!(gemm_avx2, 6, 8),
                    fma_chains: fma_chains_avx2,
                    tiles_bf16dot: None,
                    int_prefill: true,
                }
            }),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => x86::Avx512::new().map(|t| {
                use x86::{
                    axpy_avx512, axpy_strided_avx512, dot_avx512, dot_rows_avx512,
                    dots_strided_avx512, fma_chains_avx512, gemm_avx512, tile_bf16dot as bd,
                    widen_avx512,
                };
                let bf16dot: Bf16DotTable = [
                    [bd::<1, 1>, bd::<1, 4>],
                    [bd::<2, 1>, bd::<2, 4>],
                    [bd::<3, 1>, bd::<3, 4>],
                    [bd::<4, 1>, bd::<4, 4>],
                ];
                Kernels {
                    isa,
                    vnni: t.has_vnni(),
                    dot_f32: dot_avx512::<f32>,
                    dot_bf16: dot_avx512::<bf16>,
                    dot_f16: dot_avx512::<f16>,
                    axpy: axpy_avx512,
                    dots_strided: dots_strided_avx512,
                    axpy_strided: axpy_strided_avx512,
                    widen_bf16: widen_avx512::<bf16>,
                    widen_f16: widen_avx512::<f16>,
                    // 4 rows × 4 accumulators + weight + x = 18 of 32 zmm registers.
                    dot_rows: dot_rows_table!(dot_rows_avx512, 4),
                    // 12 × 2 accumulators + 2 loads + 1 broadcast = 27 of 32 zmm registers.
                    gemm: gemm_table!(gemm_avx512, 12, 16),
                    fma_chains: fma_chains_avx512,
                    tiles_bf16dot: t.has_bf16().then_some(bf16dot),
                    int_prefill: true,
                }
            }),
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => neon::Neon::new().map(|_| {
                use neon::{
                    axpy_neon, axpy_strided_neon, dot_neon, dot_rows_neon, dots_strided_neon,
                    fma_chains_neon, gemm_neon, widen_neon,
                };
                Kernels {
                    isa,
                    vnni: false,
                    dot_f32: dot_neon::<f32>,
                    dot_bf16: dot_neon::<bf16>,
                    dot_f16: dot_neon::<f16>,
                    axpy: axpy_neon,
                    dots_strided: dots_strided_neon,
                    axpy_strided: axpy_strided_neon,
                    widen_bf16: widen_neon::<bf16>,
                    widen_f16: widen_neon::<f16>,
                    // 4 rows × 4 accumulators + weight + x = 18 of 32 q registers.
                    dot_rows: dot_rows_table!(dot_rows_neon, 4),
                    // 8 × 2 accumulators + 2 loads + 1 broadcast = 19 of 32 q registers.
                    gemm: gemm_table!(gemm_neon, 8, 4),
                    fma_chains: fma_chains_neon,
                    tiles_bf16dot: None,
                    int_prefill: true,
                }
            }),
            #[allow(unreachable_patterns)]
            _ => None,
        }
    }

    fn scalar() -> Kernels {
        use scalar::{axpy, axpy_strided, dot, dot_rows, dots_strided, fma_chains, gemm, widen};
        Kernels {
            isa: Isa::Scalar,
            vnni: false,
            dot_f32: dot::<f32>,
            dot_bf16: dot::<bf16>,
            dot_f16: dot::<f16>,
            axpy,
            dots_strided,
            axpy_strided,
            widen_bf16: widen::<bf16>,
            widen_f16: widen::<f16>,
            // Eight-lane arrays are two SSE2 registers each: two rows already fill the 16.
            dot_rows: dot_rows_table!(dot_rows, 2),
            gemm: gemm_table!(gemm, 4, 8),
            fma_chains,
            tiles_bf16dot: None,
            int_prefill: true,
        }
    }

    /// The best table for this CPU, honouring `MINFER_SIMD` and `MINFER_BF16_DOT`.
    pub fn detect() -> Kernels {
        let forced = std::env::var("MINFER_SIMD")
            .ok()
            .and_then(|s| Isa::parse(&s));
        let best = [Isa::Avx512, Isa::Neon, Isa::Avx2]
            .into_iter()
            .find_map(Kernels::for_isa)
            .unwrap_or_else(Kernels::scalar);
        let k = forced.and_then(Kernels::for_isa).unwrap_or(best);
        // Rounding activations to bf16 moves logits by ~1e-2 relative, which breaks parity with
        // transformers (f32 activations over bf16 weights): opt in with MINFER_BF16_DOT=1.
        let k = match std::env::var("MINFER_BF16_DOT").as_deref() {
            Ok("1") | Ok("on") | Ok("true") => k,
            _ => k.without_bf16_dot(),
        };
        // Quantized prefill with q8 activations (as llama.cpp, and as minfer's decode) is the
        // default; MINFER_INT_PREFILL=0 keeps f32 activations (dequantized weights).
        match std::env::var("MINFER_INT_PREFILL").as_deref() {
            Ok("0") | Ok("off") | Ok("false") => k.without_int_prefill(),
            _ => k,
        }
    }

    /// The same table with quantized-weight prefill in f32 (weights dequantized, activations
    /// exact) rather than the integer GEMM.
    pub fn without_int_prefill(mut self) -> Kernels {
        self.int_prefill = false;
        self
    }

    /// Whether quantized-weight prefill may use the integer GEMM (when the CPU has one).
    pub fn int_prefill(&self) -> bool {
        self.int_prefill
    }

    /// The same table with bf16-weight products computed in f32 (activations not rounded).
    pub fn without_bf16_dot(mut self) -> Kernels {
        self.tiles_bf16dot = None;
        self
    }

    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// Whether prefill products with bf16 weights use `vdpbf16ps` (activations rounded to bf16).
    pub fn has_bf16_dot(&self) -> bool {
        self.tiles_bf16dot.is_some()
    }

    /// Whether AVX-512 VNNI (`vpdpbusd`) is available for the int8 kernels.
    pub fn has_vnni(&self) -> bool {
        self.vnni
    }

    /// Whether this instruction set has an integer prefill GEMM for block-quantized weights
    /// (AVX2 `vpmaddubsw`, or AVX-512 VNNI `vpdpbusd`), used unless switched off
    /// ([`Kernels::without_int_prefill`]).
    pub fn has_int_gemm(&self) -> bool {
        matches!(self.isa, Isa::Avx2 | Isa::Avx512)
    }

    /// "avx512+bf16+vnni", "avx2", "scalar" ...
    pub fn describe(&self) -> String {
        let mut s = self.isa.name().to_string();
        if self.has_bf16_dot() {
            s.push_str("+bf16");
        }
        if self.vnni {
            s.push_str("+vnni");
        }
        if self.has_int_gemm() && !self.int_prefill {
            s.push_str("(f32 prefill)");
        }
        s
    }

    /// `Σ a[i]·b[i]` over the common length of `a` and `b`.
    pub fn dot_f32(&self, a: &[f32], b: &[f32]) -> f32 {
        // SAFETY: the table was built after checking the CPU (see `for_isa`).
        unsafe { (self.dot_f32)(a, b) }
    }

    /// `Σ a[i]·b[i]` with bf16 `b` widened exactly to f32.
    pub fn dot_bf16(&self, a: &[f32], b: &[bf16]) -> f32 {
        // SAFETY: as in `dot_f32`.
        unsafe { (self.dot_bf16)(a, b) }
    }

    /// `Σ a[i]·b[i]` with f16 `b` widened exactly to f32.
    pub fn dot_f16(&self, a: &[f32], b: &[f16]) -> f32 {
        // SAFETY: as in `dot_f32`.
        unsafe { (self.dot_f16)(a, b) }
    }

    /// `dst[i] = src[i]` as f32 (exact), over the common length.
    pub fn widen_bf16(&self, dst: &mut [f32], src: &[bf16]) {
        // SAFETY: as in `dot_f32`.
        unsafe { (self.widen_bf16)(dst, src) }
    }

    /// `dst[i] = src[i]` as f32 (exact), over the common length.
    pub fn widen_f16(&self, dst: &mut [f32], src: &[f16]) {
        // SAFETY: as in `dot_f32`.
        unsafe { (self.widen_f16)(dst, src) }
    }

    /// `y[i] += alpha · x[i]` over the common length.
    pub fn axpy(&self, y: &mut [f32], alpha: f32, x: &[f32]) {
        // SAFETY: as in `dot_f32`.
        unsafe { (self.axpy)(y, alpha, x) }
    }

    /// `out[j] = dot_f32(q, k[j·stride..j·stride + q.len()])` for every `j < out.len()` whose
    /// row fits in `k` (decode attention scores over consecutive KV slots); bit-identical to
    /// the per-key calls.
    pub fn dots_strided(&self, q: &[f32], k: &[f32], stride: usize, out: &mut [f32]) {
        let hd = q.len();
        let n = rows_that_fit(k.len(), stride, hd).min(out.len());
        if n == 0 {
            return;
        }
        // SAFETY: q has hd elements; rows 0..n of k (stride `stride`, hd long) lie inside k
        // (`rows_that_fit`); out has n slots; the table was built after checking the CPU.
        unsafe { (self.dots_strided)(q.as_ptr(), hd, k.as_ptr(), stride, n, out.as_mut_ptr()) }
    }

    /// `acc += p[j] · v[j·stride..j·stride + acc.len()]` for every `j < p.len()` whose row fits
    /// in `v`, in order; bit-identical to calling [`Kernels::axpy`] once per row.
    pub fn axpy_strided(&self, acc: &mut [f32], p: &[f32], v: &[f32], stride: usize) {
        let hd = acc.len();
        let n = rows_that_fit(v.len(), stride, hd).min(p.len());
        if n == 0 {
            return;
        }
        // SAFETY: as in `dots_strided`, with acc (hd) read and written and p (n) read.
        unsafe { (self.axpy_strided)(acc.as_mut_ptr(), hd, p.as_ptr(), v.as_ptr(), stride, n) }
    }
}

impl Kernels {
    /// The f32 FMA peak of the current rayon pool in GFLOP/s (2 flops per FMA lane): every
    /// thread runs 12 independent FMA chains in registers for about a millisecond, `reps` times;
    /// the best run counts. Short bursts and a best-of because the machines this runs on are
    /// shared: a burst that no other process interrupted shows the core's own rate. This is
    /// the ceiling prefill GEMM efficiency is quoted against (`cargo bench --bench matmul`).
    pub fn measure_fma_peak_gflops(&self, reps: usize) -> f64 {
        use rayon::prelude::*;
        let threads = rayon::current_num_threads().max(1);
        let lanes = self.gemm.lanes;
        // Calibrate the iteration count to ~1 ms on one thread (best of a few tries).
        let iters = 1 << 14;
        let mut dt = f64::INFINITY;
        for _ in 0..5 {
            let t = std::time::Instant::now();
            // SAFETY: the table was built after checking the CPU.
            std::hint::black_box(unsafe { (self.fma_chains)(iters, 1.0) });
            dt = dt.min(t.elapsed().as_secs_f64());
        }
        let iters = ((iters as f64) * (1e-3 / dt.max(1e-9))).max(1.0) as usize;
        let mut best = f64::INFINITY;
        for _ in 0..reps.max(1) {
            let t = std::time::Instant::now();
            let s: f32 = (0..threads)
                .into_par_iter()
                // SAFETY: as above.
                .map(|i| unsafe { (self.fma_chains)(iters, i as f32) })
                .sum();
            std::hint::black_box(s);
            best = best.min(t.elapsed().as_secs_f64());
        }
        (threads * iters * 12 * lanes * 2) as f64 / best / 1e9
    }
}

/// How many rows of `width` elements at `stride` fit in `len` elements (the last row needs only
/// `width`, not a whole stride).
fn rows_that_fit(len: usize, stride: usize, width: usize) -> usize {
    if len < width {
        0
    } else {
        (len - width)
            .checked_div(stride)
            .map_or(usize::MAX, |n| n + 1)
    }
}

/// The process-wide table, detected on first use and cached.
pub fn kernels() -> &'static Kernels {
    static K: OnceLock<Kernels> = OnceLock::new();
    K.get_or_init(Kernels::detect)
}

/// `Σ a[i]·b[i]` over the common length, with the process-wide kernels.
#[inline]
pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    kernels().dot_f32(a, b)
}

/// `y[i] += a · x[i]` over the common length, with the process-wide kernels.
#[inline]
pub fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    kernels().axpy(y, a, x)
}

/// The machine's read bandwidth in GB/s (1e9 bytes/s): the best of `reps` streaming sums over a
/// `bytes`-sized buffer (make it several times the last-level cache), split evenly over the
/// current rayon pool. Allocates and touches the buffer: a measurement tool for benches and
/// `minfer bench`, not for the inference path.
pub fn measure_read_bandwidth(bytes: usize, reps: usize) -> f64 {
    use rayon::prelude::*;
    let words = (bytes / 8).max(1024);
    let mut buf = vec![0u64; words];
    let threads = rayon::current_num_threads().max(1);
    let chunk = words.div_ceil(threads);
    buf.par_chunks_mut(chunk).enumerate().for_each(|(c, s)| {
        for (i, v) in s.iter_mut().enumerate() {
            *v = (c * chunk + i) as u64;
        }
    });
    let mut best = f64::INFINITY;
    for _ in 0..reps.max(1) {
        let t = std::time::Instant::now();
        let sum: u64 = buf
            .par_chunks(chunk)
            .map(|s| {
                // Eight independent lanes so the compiler vectorizes the wrapping adds.
                let mut acc = [0u64; 8];
                for c in s.chunks_exact(8) {
                    for (a, v) in acc.iter_mut().zip(c) {
                        *a = a.wrapping_add(*v);
                    }
                }
                acc.iter().fold(0u64, |a, b| a.wrapping_add(*b))
            })
            .reduce(|| 0, u64::wrapping_add);
        std::hint::black_box(sum);
        best = best.min(t.elapsed().as_secs_f64());
    }
    (words * 8) as f64 / best / 1e9
}

/// The process-wide table's instruction sets, for display ("avx512+bf16+vnni").
pub fn describe() -> &'static str {
    static D: OnceLock<String> = OnceLock::new();
    D.get_or_init(|| kernels().describe())
}
