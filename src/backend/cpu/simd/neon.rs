//! aarch64 NEON (4 f32 lanes). UNTESTED: no aarch64 toolchain or machine was available when
//! this was written, so it has not even been compiled; it mirrors the x86 modules closely.
//! f16 weights are widened lane by lane in software because the f16 vector types are not
//! stable in Rust yet.

use std::arch::aarch64::*;

use super::vector::{self, Elem, Simd};

/// Advanced SIMD (always present on aarch64 Linux/macOS, checked anyway).
#[derive(Clone, Copy, Debug)]
pub struct Neon(());

impl Neon {
    pub fn new() -> Option<Neon> {
        std::arch::is_aarch64_feature_detected!("neon").then_some(Neon(()))
    }
}

impl Simd for Neon {
    type V = float32x4_t;
    const LANES: usize = 4;
    #[inline(always)]
    unsafe fn zero() -> float32x4_t {
        // SAFETY: NEON enabled (trait contract).
        unsafe { vdupq_n_f32(0.0) }
    }
    #[inline(always)]
    unsafe fn splat(x: f32) -> float32x4_t {
        // SAFETY: as above.
        unsafe { vdupq_n_f32(x) }
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> float32x4_t {
        // SAFETY: the caller guarantees 4 readable f32.
        unsafe { vld1q_f32(p) }
    }
    #[inline(always)]
    unsafe fn load_bf16(p: *const u16) -> float32x4_t {
        // SAFETY: the caller guarantees 4 readable u16. bf16 → f32 is a 16-bit left shift.
        unsafe { vreinterpretq_f32_u32(vshll_n_u16::<16>(vld1_u16(p))) }
    }
    #[inline(always)]
    unsafe fn load_f16(p: *const u16) -> float32x4_t {
        // SAFETY: the caller guarantees 4 readable u16.
        unsafe {
            let h = (p as *const [u16; 4]).read_unaligned();
            let f = h.map(|b| half::f16::from_bits(b).to_f32());
            vld1q_f32(f.as_ptr())
        }
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: float32x4_t) {
        // SAFETY: the caller guarantees 4 writable f32.
        unsafe { vst1q_f32(p, v) }
    }
    #[inline(always)]
    unsafe fn fma(a: float32x4_t, b: float32x4_t, acc: float32x4_t) -> float32x4_t {
        // SAFETY: NEON enabled.
        unsafe { vfmaq_f32(acc, a, b) }
    }
    #[inline(always)]
    unsafe fn add(a: float32x4_t, b: float32x4_t) -> float32x4_t {
        // SAFETY: NEON enabled.
        unsafe { vaddq_f32(a, b) }
    }
    #[inline(always)]
    unsafe fn hsum(v: float32x4_t) -> f32 {
        // SAFETY: NEON enabled.
        unsafe { vaddvq_f32(v) }
    }
}

#[target_feature(enable = "neon")]
pub(super) unsafe fn dot_neon<E: Elem>(a: &[f32], b: &[E]) -> f32 {
    // SAFETY: only reachable through a Neon token.
    unsafe { vector::dot::<Neon, E>(a, b) }
}

#[target_feature(enable = "neon")]
pub(super) unsafe fn dot_rows_neon<E: Elem, const NX: usize>(
    x: *const f32,
    ldx: usize,
    w: *const E,
    n: usize,
    out: *mut f32,
) {
    // SAFETY: forwarded pointer contract; only reachable through a Neon token.
    unsafe { vector::dot_rows::<Neon, E, NX>(x, ldx, w, n, out) }
}

#[target_feature(enable = "neon")]
pub(super) unsafe fn widen_neon<E: Elem>(dst: &mut [f32], src: &[E]) {
    // SAFETY: only reachable through a Neon token.
    unsafe { vector::widen::<Neon, E>(dst, src) }
}

#[target_feature(enable = "neon")]
pub(super) unsafe fn dots_strided_neon(
    q: *const f32,
    hd: usize,
    k: *const f32,
    stride: usize,
    n: usize,
    out: *mut f32,
) {
    // SAFETY: forwarded pointer contract; the ISA is guaranteed by the token that built the table.
    unsafe { vector::dots_strided::<Neon>(q, hd, k, stride, n, out) }
}

#[target_feature(enable = "neon")]
pub(super) unsafe fn axpy_strided_neon(
    acc: *mut f32,
    hd: usize,
    p: *const f32,
    v: *const f32,
    stride: usize,
    n: usize,
) {
    // SAFETY: forwarded pointer contract; the ISA is guaranteed by the token that built the table.
    unsafe { vector::axpy_strided::<Neon>(acc, hd, p, v, stride, n) }
}

#[target_feature(enable = "neon")]
pub(super) unsafe fn axpy_neon(y: &mut [f32], alpha: f32, x: &[f32]) {
    // SAFETY: as above.
    unsafe { vector::axpy::<Neon>(y, alpha, x) }
}

#[target_feature(enable = "neon")]
pub(super) unsafe fn gemm_neon<const MR: usize, const NRV: usize>(
    w: *const f32,
    ldw: usize,
    xp: *const f32,
    ldx: usize,
    k: usize,
    out: *mut f32,
) {
    // SAFETY: forwarded pointer contract; NEON guaranteed by the token that built the table.
    unsafe { vector::gemm_tile::<Neon, MR, NRV>(w, ldw, xp, ldx, k, out) }
}

#[target_feature(enable = "neon")]
pub(super) unsafe fn fma_chains_neon(iters: usize, seed: f32) -> f32 {
    // SAFETY: register arithmetic; NEON guaranteed by the caller's token.
    unsafe { vector::fma_chains::<Neon>(iters, seed) }
}
