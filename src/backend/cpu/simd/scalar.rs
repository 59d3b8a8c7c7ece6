//! The portable fallback: the generic kernels over plain arrays of eight f32 lanes, which the
//! compiler may vectorize with the baseline instruction set (SSE2 on x86-64). No `unsafe`
//! hardware requirement: the [`Scalar`] token always exists.

use super::vector::{self, Simd};

/// Holding this proves nothing: the scalar kernels run everywhere.
#[derive(Clone, Copy, Debug)]
pub struct Scalar;

const L: usize = 8;

impl Simd for Scalar {
    type V = [f32; L];
    const LANES: usize = L;
    #[inline(always)]
    unsafe fn zero() -> [f32; L] {
        [0.0; L]
    }
    #[inline(always)]
    unsafe fn splat(x: f32) -> [f32; L] {
        [x; L]
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> [f32; L] {
        // SAFETY: the caller guarantees L readable elements.
        unsafe { (p as *const [f32; L]).read_unaligned() }
    }
    #[inline(always)]
    unsafe fn load_bf16(p: *const u16) -> [f32; L] {
        // SAFETY: the caller guarantees L readable elements.
        let b = unsafe { (p as *const [u16; L]).read_unaligned() };
        b.map(|h| f32::from_bits((h as u32) << 16))
    }
    #[inline(always)]
    unsafe fn load_f16(p: *const u16) -> [f32; L] {
        // SAFETY: the caller guarantees L readable elements.
        let b = unsafe { (p as *const [u16; L]).read_unaligned() };
        b.map(|h| half::f16::from_bits(h).to_f32())
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: [f32; L]) {
        // SAFETY: the caller guarantees L writable elements.
        unsafe { (p as *mut [f32; L]).write_unaligned(v) }
    }
    #[inline(always)]
    unsafe fn fma(a: [f32; L], b: [f32; L], acc: [f32; L]) -> [f32; L] {
        // Unfused on purpose: f32::mul_add is a slow libm call without hardware FMA.
        std::array::from_fn(|i| a[i] * b[i] + acc[i])
    }
    #[inline(always)]
    unsafe fn add(a: [f32; L], b: [f32; L]) -> [f32; L] {
        std::array::from_fn(|i| a[i] + b[i])
    }
    #[inline(always)]
    unsafe fn hsum(v: [f32; L]) -> f32 {
        ((v[0] + v[4]) + (v[1] + v[5])) + ((v[2] + v[6]) + (v[3] + v[7]))
    }
}

pub(super) unsafe fn dot<E: vector::Elem>(a: &[f32], b: &[E]) -> f32 {
    // SAFETY: Scalar needs no CPU feature.
    unsafe { vector::dot::<Scalar, E>(a, b) }
}

pub(super) unsafe fn dot_rows<E: vector::Elem, const NX: usize>(
    x: *const f32,
    ldx: usize,
    w: *const E,
    n: usize,
    out: *mut f32,
) {
    // SAFETY: forwarded pointer contract; Scalar needs no CPU feature.
    unsafe { vector::dot_rows::<Scalar, E, NX>(x, ldx, w, n, out) }
}

pub(super) unsafe fn widen<E: vector::Elem>(dst: &mut [f32], src: &[E]) {
    // SAFETY: Scalar needs no CPU feature.
    unsafe { vector::widen::<Scalar, E>(dst, src) }
}

pub(super) unsafe fn dots_strided(
    q: *const f32,
    hd: usize,
    k: *const f32,
    stride: usize,
    n: usize,
    out: *mut f32,
) {
    // SAFETY: forwarded pointer contract; Scalar needs no CPU feature.
    unsafe { vector::dots_strided::<Scalar>(q, hd, k, stride, n, out) }
}

pub(super) unsafe fn axpy_strided(
    acc: *mut f32,
    hd: usize,
    p: *const f32,
    v: *const f32,
    stride: usize,
    n: usize,
) {
    // SAFETY: forwarded pointer contract; Scalar needs no CPU feature.
    unsafe { vector::axpy_strided::<Scalar>(acc, hd, p, v, stride, n) }
}

pub(super) unsafe fn axpy(y: &mut [f32], alpha: f32, x: &[f32]) {
    // SAFETY: Scalar needs no CPU feature.
    unsafe { vector::axpy::<Scalar>(y, alpha, x) }
}

pub(super) unsafe fn gemm<const MR: usize, const NRV: usize>(
    w: *const f32,
    ldw: usize,
    xp: *const f32,
    ldx: usize,
    k: usize,
    out: *mut f32,
) {
    // SAFETY: forwarded pointer contract; Scalar needs no CPU feature.
    unsafe { vector::gemm_tile::<Scalar, MR, NRV>(w, ldw, xp, ldx, k, out) }
}

pub(super) unsafe fn fma_chains(iters: usize, seed: f32) -> f32 {
    // SAFETY: Scalar needs no CPU feature.
    unsafe { vector::fma_chains::<Scalar>(iters, seed) }
}
