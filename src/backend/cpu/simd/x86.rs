//! x86-64: AVX2+FMA+F16C (8 lanes) and AVX-512 F/BW/VL (16 lanes), plus the AVX-512 BF16 tile
//! (`vdpbf16ps`: 32 bf16 products per instruction into 16 f32 lanes).
//!
//! Each token's `new()` checks the CPU, so holding one proves the instructions exist; the
//! `#[target_feature]` wrappers are only reachable through a token (or a dispatch table built
//! from one). Not here: the int8 quantized kernels (see `quant_kernels.rs`).

use std::arch::x86_64::*;

use super::vector::{self, Elem, Simd};

/// AVX2 with FMA and F16C (Haswell and later, Zen and later).
#[derive(Clone, Copy, Debug)]
pub struct Avx2(());

impl Avx2 {
    pub fn new() -> Option<Avx2> {
        (is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c"))
        .then_some(Avx2(()))
    }
}

/// AVX-512 F/BW/VL (with AVX2, FMA, F16C), and whether BF16 and VNNI are present too.
#[derive(Clone, Copy, Debug)]
pub struct Avx512 {
    bf16: bool,
    vnni: bool,
}

impl Avx512 {
    pub fn new() -> Option<Avx512> {
        let base = Avx2::new().is_some()
            && is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vl");
        base.then(|| Avx512 {
            bf16: is_x86_feature_detected!("avx512bf16"),
            vnni: is_x86_feature_detected!("avx512vnni"),
        })
    }
    /// `vdpbf16ps` is available.
    pub fn has_bf16(&self) -> bool {
        self.bf16
    }
    /// `vpdpbusd` is available.
    pub fn has_vnni(&self) -> bool {
        self.vnni
    }
}

impl Simd for Avx2 {
    type V = __m256;
    const LANES: usize = 8;
    #[inline(always)]
    unsafe fn zero() -> __m256 {
        // SAFETY: only called with AVX2 enabled (trait contract).
        unsafe { _mm256_setzero_ps() }
    }
    #[inline(always)]
    unsafe fn splat(x: f32) -> __m256 {
        // SAFETY: as above.
        unsafe { _mm256_set1_ps(x) }
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> __m256 {
        // SAFETY: the caller guarantees 8 readable f32; unaligned load.
        unsafe { _mm256_loadu_ps(p) }
    }
    #[inline(always)]
    unsafe fn load_bf16(p: *const u16) -> __m256 {
        // SAFETY: the caller guarantees 8 readable u16. bf16 → f32 is a 16-bit left shift.
        unsafe {
            _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(
                _mm_loadu_si128(p as *const __m128i),
            )))
        }
    }
    #[inline(always)]
    unsafe fn load_f16(p: *const u16) -> __m256 {
        // SAFETY: the caller guarantees 8 readable u16; F16C is part of the token.
        unsafe { _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i)) }
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: __m256) {
        // SAFETY: the caller guarantees 8 writable f32.
        unsafe { _mm256_storeu_ps(p, v) }
    }
    #[inline(always)]
    unsafe fn fma(a: __m256, b: __m256, acc: __m256) -> __m256 {
        // SAFETY: FMA is part of the token.
        unsafe { _mm256_fmadd_ps(a, b, acc) }
    }
    #[inline(always)]
    unsafe fn add(a: __m256, b: __m256) -> __m256 {
        // SAFETY: AVX enabled.
        unsafe { _mm256_add_ps(a, b) }
    }
    #[inline(always)]
    unsafe fn hsum(v: __m256) -> f32 {
        // SAFETY: AVX enabled.
        unsafe {
            let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            let s = _mm_add_ss(s, _mm_shuffle_ps::<0b01>(s, s));
            _mm_cvtss_f32(s)
        }
    }
}

impl Simd for Avx512 {
    type V = __m512;
    const LANES: usize = 16;
    #[inline(always)]
    unsafe fn zero() -> __m512 {
        // SAFETY: only called with AVX-512F enabled (trait contract).
        unsafe { _mm512_setzero_ps() }
    }
    #[inline(always)]
    unsafe fn splat(x: f32) -> __m512 {
        // SAFETY: as above.
        unsafe { _mm512_set1_ps(x) }
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> __m512 {
        // SAFETY: the caller guarantees 16 readable f32; unaligned load.
        unsafe { _mm512_loadu_ps(p) }
    }
    #[inline(always)]
    unsafe fn load_bf16(p: *const u16) -> __m512 {
        // SAFETY: the caller guarantees 16 readable u16. bf16 → f32 is a 16-bit left shift.
        unsafe {
            _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(
                _mm256_loadu_si256(p as *const __m256i),
            )))
        }
    }
    #[inline(always)]
    unsafe fn load_f16(p: *const u16) -> __m512 {
        // SAFETY: the caller guarantees 16 readable u16; vcvtph2ps zmm is AVX-512F.
        unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i)) }
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: __m512) {
        // SAFETY: the caller guarantees 16 writable f32.
        unsafe { _mm512_storeu_ps(p, v) }
    }
    #[inline(always)]
    unsafe fn fma(a: __m512, b: __m512, acc: __m512) -> __m512 {
        // SAFETY: AVX-512F enabled.
        unsafe { _mm512_fmadd_ps(a, b, acc) }
    }
    #[inline(always)]
    unsafe fn add(a: __m512, b: __m512) -> __m512 {
        // SAFETY: AVX-512F enabled.
        unsafe { _mm512_add_ps(a, b) }
    }
    #[inline(always)]
    unsafe fn hsum(v: __m512) -> f32 {
        // SAFETY: AVX-512F enabled.
        unsafe { _mm512_reduce_add_ps(v) }
    }
}

// ---- AVX2 entry points -------------------------------------------------------------------

#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_avx2<E: Elem>(a: &[f32], b: &[E]) -> f32 {
    // SAFETY: this function only runs where an Avx2 token was built.
    unsafe { vector::dot::<Avx2, E>(a, b) }
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_rows_avx2<E: Elem, const NX: usize>(
    x: *const f32,
    ldx: usize,
    w: *const E,
    n: usize,
    out: *mut f32,
) {
    // SAFETY: forwarded pointer contract; AVX2 guaranteed by the token that built the table.
    unsafe { vector::dot_rows::<Avx2, E, NX>(x, ldx, w, n, out) }
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn widen_avx2<E: Elem>(dst: &mut [f32], src: &[E]) {
    // SAFETY: this function only runs where an Avx2 token was built.
    unsafe { vector::widen::<Avx2, E>(dst, src) }
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dots_strided_avx2(
    q: *const f32,
    hd: usize,
    k: *const f32,
    stride: usize,
    n: usize,
    out: *mut f32,
) {
    // SAFETY: forwarded pointer contract; the ISA is guaranteed by the token that built the table.
    unsafe { vector::dots_strided::<Avx2>(q, hd, k, stride, n, out) }
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn axpy_strided_avx2(
    acc: *mut f32,
    hd: usize,
    p: *const f32,
    v: *const f32,
    stride: usize,
    n: usize,
) {
    // SAFETY: forwarded pointer contract; the ISA is guaranteed by the token that built the table.
    unsafe { vector::axpy_strided::<Avx2>(acc, hd, p, v, stride, n) }
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn axpy_avx2(y: &mut [f32], alpha: f32, x: &[f32]) {
    // SAFETY: as above.
    unsafe { vector::axpy::<Avx2>(y, alpha, x) }
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn gemm_avx2<const MR: usize, const NRV: usize>(
    w: *const f32,
    ldw: usize,
    xp: *const f32,
    ldx: usize,
    k: usize,
    out: *mut f32,
) {
    // SAFETY: forwarded pointer contract; AVX2 guaranteed by the token that built the table.
    unsafe { vector::gemm_tile::<Avx2, MR, NRV>(w, ldw, xp, ldx, k, out) }
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn fma_chains_avx2(iters: usize, seed: f32) -> f32 {
    // SAFETY: register arithmetic; AVX2 guaranteed by the caller's token.
    unsafe { vector::fma_chains::<Avx2>(iters, seed) }
}

// ---- AVX-512 entry points ----------------------------------------------------------------

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub(super) unsafe fn dot_avx512<E: Elem>(a: &[f32], b: &[E]) -> f32 {
    // SAFETY: this function only runs where an Avx512 token was built.
    unsafe { vector::dot::<Avx512, E>(a, b) }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub(super) unsafe fn dot_rows_avx512<E: Elem, const NX: usize>(
    x: *const f32,
    ldx: usize,
    w: *const E,
    n: usize,
    out: *mut f32,
) {
    // SAFETY: forwarded pointer contract; AVX-512 guaranteed by the token that built the table.
    unsafe { vector::dot_rows::<Avx512, E, NX>(x, ldx, w, n, out) }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub(super) unsafe fn widen_avx512<E: Elem>(dst: &mut [f32], src: &[E]) {
    // SAFETY: this function only runs where an Avx512 token was built.
    unsafe { vector::widen::<Avx512, E>(dst, src) }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub(super) unsafe fn dots_strided_avx512(
    q: *const f32,
    hd: usize,
    k: *const f32,
    stride: usize,
    n: usize,
    out: *mut f32,
) {
    // SAFETY: forwarded pointer contract; the ISA is guaranteed by the token that built the table.
    unsafe { vector::dots_strided::<Avx512>(q, hd, k, stride, n, out) }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub(super) unsafe fn axpy_strided_avx512(
    acc: *mut f32,
    hd: usize,
    p: *const f32,
    v: *const f32,
    stride: usize,
    n: usize,
) {
    // SAFETY: forwarded pointer contract; the ISA is guaranteed by the token that built the table.
    unsafe { vector::axpy_strided::<Avx512>(acc, hd, p, v, stride, n) }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub(super) unsafe fn axpy_avx512(y: &mut [f32], alpha: f32, x: &[f32]) {
    // SAFETY: as above.
    unsafe { vector::axpy::<Avx512>(y, alpha, x) }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub(super) unsafe fn gemm_avx512<const MR: usize, const NRV: usize>(
    w: *const f32,
    ldw: usize,
    xp: *const f32,
    ldx: usize,
    k: usize,
    out: *mut f32,
) {
    // SAFETY: forwarded pointer contract; AVX-512 guaranteed by the token that built the table.
    unsafe { vector::gemm_tile::<Avx512, MR, NRV>(w, ldw, xp, ldx, k, out) }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub(super) unsafe fn fma_chains_avx512(iters: usize, seed: f32) -> f32 {
    // SAFETY: register arithmetic; AVX-512 guaranteed by the caller's token.
    unsafe { vector::fma_chains::<Avx512>(iters, seed) }
}

/// bf16 × bf16 tile with `vdpbf16ps`: `out[r·ldo + j] = Σ_i x[r·ldx + i] · w[j·ldw + i]`, both
/// operands bf16 (the activations were rounded to bf16 by the caller), products exact, sums in
/// f32. The tail (k mod 32) is read with a zero-masked load, so no element past `k` is touched.
///
/// # Safety
/// An [`Avx512`] token with `has_bf16()` exists; pointers as in [`vector::tile`].
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
pub(super) unsafe fn tile_bf16dot<const NX: usize, const NW: usize>(
    x: *const u16,
    ldx: usize,
    w: *const u16,
    ldw: usize,
    k: usize,
    out: *mut f32,
    ldo: usize,
) {
    #[inline(always)]
    unsafe fn ld(p: *const u16, mask: Option<__mmask32>) -> __m512bh {
        // SAFETY: the caller guarantees 32 readable u16, or `mask` covers only readable ones
        // (masked-off lanes are not accessed). __m512i and __m512bh are both 64-byte vectors.
        unsafe {
            let v = match mask {
                None => _mm512_loadu_si512(p as *const _),
                Some(m) => _mm512_maskz_loadu_epi16(m, p as *const _),
            };
            std::mem::transmute::<__m512i, __m512bh>(v)
        }
    }
    #[inline(always)]
    unsafe fn step<const NX: usize, const NW: usize>(
        acc: &mut [[__m512; NW]; NX],
        x: *const u16,
        ldx: usize,
        w: *const u16,
        ldw: usize,
        mask: Option<__mmask32>,
    ) {
        // SAFETY: the caller vouches for 32 (or `mask`) readable elements in each row.
        unsafe {
            let mut wv = [std::mem::transmute::<__m512i, __m512bh>(_mm512_setzero_si512()); NW];
            for (j, v) in wv.iter_mut().enumerate() {
                *v = ld(w.add(j * ldw), mask);
            }
            for (r, row) in acc.iter_mut().enumerate() {
                let xv = ld(x.add(r * ldx), mask);
                for (a, v) in row.iter_mut().zip(wv.iter()) {
                    *a = _mm512_dpbf16_ps(*a, xv, *v);
                }
            }
        }
    }
    // SAFETY (whole body): reads stay in [0, k) of the vouched-for rows.
    unsafe {
        let mut acc = [[_mm512_setzero_ps(); NW]; NX];
        let mut i = 0;
        while i + 32 <= k {
            step(&mut acc, x.add(i), ldx, w.add(i), ldw, None);
            i += 32;
        }
        if i < k {
            let mask = ((1u64 << (k - i)) - 1) as __mmask32;
            step(&mut acc, x.add(i), ldx, w.add(i), ldw, Some(mask));
        }
        for (r, row) in acc.iter().enumerate() {
            for (j, a) in row.iter().enumerate() {
                *out.add(r * ldo + j) = _mm512_reduce_add_ps(*a);
            }
        }
    }
}
