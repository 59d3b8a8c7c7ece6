//! The small vector abstraction the f32 kernels are written over, and those kernels, once.
//!
//! Each instruction set implements [`Simd`] for its token type (all methods `#[inline(always)]`),
//! and its module instantiates the generic kernels below inside a `#[target_feature]` function,
//! so after inlining every intrinsic is compiled for that instruction set. Nothing here checks
//! the CPU: that is the job of the token constructors in the ISA modules.
//!
//! Deliberately not here: kernels that do not fit "f32 lanes" (the AVX-512 BF16 dot product, the
//! int8 quantized dot products). They live beside their instruction set.

use half::{bf16, f16};

/// A register of f32 lanes. Implementations are only ever called from functions compiled with
/// their instruction set enabled; every method is therefore `unsafe`.
pub(crate) trait Simd: Copy {
    type V: Copy;
    const LANES: usize;
    unsafe fn zero() -> Self::V;
    unsafe fn splat(x: f32) -> Self::V;
    unsafe fn load(p: *const f32) -> Self::V;
    /// `LANES` bf16 values widened to f32 (exact).
    unsafe fn load_bf16(p: *const u16) -> Self::V;
    /// `LANES` f16 values widened to f32 (exact).
    unsafe fn load_f16(p: *const u16) -> Self::V;
    unsafe fn store(p: *mut f32, v: Self::V);
    /// `a · b + acc`, fused where the hardware has it.
    unsafe fn fma(a: Self::V, b: Self::V, acc: Self::V) -> Self::V;
    unsafe fn add(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn hsum(v: Self::V) -> f32;
}

/// A weight element type the f32 kernels can read: f32, bf16 or f16.
pub(crate) trait Elem: Copy + Send + Sync + 'static {
    fn to_f32(self) -> f32;
    /// # Safety
    /// `p` is valid for reading `S::LANES` elements, and the caller runs with `S`'s ISA enabled.
    unsafe fn load<S: Simd>(p: *const Self) -> S::V;
}

impl Elem for f32 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
    #[inline(always)]
    unsafe fn load<S: Simd>(p: *const f32) -> S::V {
        // SAFETY: forwarded precondition.
        unsafe { S::load(p) }
    }
}

impl Elem for bf16 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        f32::from_bits((self.to_bits() as u32) << 16)
    }
    #[inline(always)]
    unsafe fn load<S: Simd>(p: *const bf16) -> S::V {
        // SAFETY: bf16 is a transparent u16; forwarded precondition.
        unsafe { S::load_bf16(p as *const u16) }
    }
}

impl Elem for f16 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
    #[inline(always)]
    unsafe fn load<S: Simd>(p: *const f16) -> S::V {
        // SAFETY: f16 is a transparent u16; forwarded precondition.
        unsafe { S::load_f16(p as *const u16) }
    }
}

/// `Σ a[i]·b[i]` over the common length. Four accumulators hide the FMA latency. This is
/// [`dot_rows`] with one row, so a batched matvec reproduces it bit for bit.
#[inline(always)]
pub(crate) unsafe fn dot<S: Simd, E: Elem>(a: &[f32], b: &[E]) -> f32 {
    let n = a.len().min(b.len());
    let mut out = 0.0f32;
    // SAFETY: one row of n readable elements in each slice; the caller guarantees the ISA.
    unsafe { dot_rows::<S, E, 1>(a.as_ptr(), 0, b.as_ptr(), n, &mut out) };
    out
}

/// `NX` dot products against one weight row: `out[r] = Σ_{i<n} x[r·ldx + i] · w[i]` for
/// `r < NX`. Each weight vector is loaded (and widened) once and used by every row.
///
/// Every row has its own four accumulators and goes through exactly the operations of a
/// single-row call, in the same order (four interleaved FMA chains over whole blocks of
/// 4·LANES, then single vectors into the first chain, then `hsum((a0 + a1) + (a2 + a3))`, then
/// the scalar tail in index order): a row's result does not depend on `NX` or on which rows
/// share the call. That makes batched decode bit-identical to one-row decode.
///
/// # Safety
/// `x` readable for `NX` rows of `n` at stride `ldx`, `w` for `n` elements, `out` writable for
/// `NX`; the caller runs with `S`'s ISA enabled.
#[inline(always)]
pub(crate) unsafe fn dot_rows<S: Simd, E: Elem, const NX: usize>(
    x: *const f32,
    ldx: usize,
    w: *const E,
    n: usize,
    out: *mut f32,
) {
    let l = S::LANES;
    // SAFETY (whole body): every vector load reads [i, i + LANES) with i + LANES <= n inside
    // each row and the weight row; the scalar tail reads i < n; writes out[..NX].
    unsafe {
        let mut acc = [[S::zero(); 4]; NX];
        let mut i = 0;
        while i + 4 * l <= n {
            for u in 0..4 {
                let wv = E::load::<S>(w.add(i + u * l));
                for (r, a) in acc.iter_mut().enumerate() {
                    a[u] = S::fma(S::load(x.add(r * ldx + i + u * l)), wv, a[u]);
                }
            }
            i += 4 * l;
        }
        while i + l <= n {
            let wv = E::load::<S>(w.add(i));
            for (r, a) in acc.iter_mut().enumerate() {
                a[0] = S::fma(S::load(x.add(r * ldx + i)), wv, a[0]);
            }
            i += l;
        }
        for (r, a) in acc.iter().enumerate() {
            let mut s = S::hsum(S::add(S::add(a[0], a[1]), S::add(a[2], a[3])));
            for j in i..n {
                s += *x.add(r * ldx + j) * (*w.add(j)).to_f32();
            }
            *out.add(r) = s;
        }
    }
}

/// A [`dot_rows`] instance as stored in the dispatch table.
pub(crate) type DotRowsFn<E> = unsafe fn(*const f32, usize, *const E, usize, *mut f32);

/// Most rows one [`dot_rows`] call takes (the tables hold NX = 1..=DOT_ROWS_MAX).
pub(crate) const DOT_ROWS_MAX: usize = 4;

/// `y[i] += alpha · x[i]` over the common length.
#[inline(always)]
pub(crate) unsafe fn axpy<S: Simd>(y: &mut [f32], alpha: f32, x: &[f32]) {
    let n = y.len().min(x.len());
    let (py, px) = (y.as_mut_ptr(), x.as_ptr());
    let l = S::LANES;
    // SAFETY: every access covers [i, i + LANES) with i + LANES <= n; the caller guarantees the ISA.
    unsafe {
        let va = S::splat(alpha);
        let mut i = 0;
        while i + 2 * l <= n {
            let y0 = S::fma(va, S::load(px.add(i)), S::load(py.add(i)));
            let y1 = S::fma(va, S::load(px.add(i + l)), S::load(py.add(i + l)));
            S::store(py.add(i), y0);
            S::store(py.add(i + l), y1);
            i += 2 * l;
        }
        while i + l <= n {
            S::store(
                py.add(i),
                S::fma(va, S::load(px.add(i)), S::load(py.add(i))),
            );
            i += l;
        }
    }
    // The vector loops stop at the last whole multiple of LANES.
    for j in (n - n % l)..n {
        y[j] += alpha * x[j];
    }
}

/// Decode attention scores over a run of consecutive KV slots: `out[j] = Σ_i q[i] ·
/// k[j·stride + i]` for `j < n`, `i < hd`. Each score is exactly [`dot`]`(q, key j)` (the
/// same operations in the same order), only without a dispatch and a bounds check per key.
///
/// # Safety
/// `q` readable for `hd`, `k` for `(n - 1)·stride + hd` (n > 0), `out` writable for `n`; the
/// caller runs with `S`'s ISA enabled.
#[inline(always)]
pub(crate) unsafe fn dots_strided<S: Simd>(
    q: *const f32,
    hd: usize,
    k: *const f32,
    stride: usize,
    n: usize,
    out: *mut f32,
) {
    for j in 0..n {
        // SAFETY: key j lies inside k's run (caller), out[j] is writable.
        unsafe { dot_rows::<S, f32, 1>(q, 0, k.add(j * stride), hd, out.add(j)) };
    }
}

/// `acc[i] += Σ_j p[j] · v[j·stride + i]` for `i < hd`, the keys `j < n` added in order:
/// exactly [`axpy`]`(acc, p[j], value j)` called for j = 0, 1, ..., but with each stretch of
/// `acc` held in registers across the keys instead of loaded and stored once per key. (Each
/// element sees the same fused multiply-adds in the same order either way; the elements past
/// the last whole vector use the same unfused `+= p · v` as `axpy`'s tail.)
///
/// # Safety
/// `acc` readable and writable for `hd`, `p` readable for `n`, `v` for `(n - 1)·stride + hd`
/// (n > 0); the caller runs with `S`'s ISA enabled.
#[inline(always)]
pub(crate) unsafe fn axpy_strided<S: Simd>(
    acc: *mut f32,
    hd: usize,
    p: *const f32,
    v: *const f32,
    stride: usize,
    n: usize,
) {
    let l = S::LANES;
    // SAFETY (whole body): every vector access covers [i, i + LANES) with i + LANES <= hd, in
    // acc and in each value row; p[j] for j < n; the caller vouches for all of them.
    unsafe {
        let mut i = 0;
        while i + 4 * l <= hd {
            let mut a = [S::zero(); 4];
            for (u, a) in a.iter_mut().enumerate() {
                *a = S::load(acc.add(i + u * l));
            }
            for j in 0..n {
                let pj = S::splat(*p.add(j));
                let row = v.add(j * stride + i);
                for (u, a) in a.iter_mut().enumerate() {
                    *a = S::fma(pj, S::load(row.add(u * l)), *a);
                }
            }
            for (u, a) in a.iter().enumerate() {
                S::store(acc.add(i + u * l), *a);
            }
            i += 4 * l;
        }
        while i + l <= hd {
            let mut a = S::load(acc.add(i));
            for j in 0..n {
                a = S::fma(S::splat(*p.add(j)), S::load(v.add(j * stride + i)), a);
            }
            S::store(acc.add(i), a);
            i += l;
        }
        for t in i..hd {
            for j in 0..n {
                *acc.add(t) += *p.add(j) * *v.add(j * stride + t);
            }
        }
    }
}

/// A [`dots_strided`] instance as stored in the dispatch table.
pub(crate) type DotsStridedFn = unsafe fn(*const f32, usize, *const f32, usize, usize, *mut f32);
/// An [`axpy_strided`] instance as stored in the dispatch table.
pub(crate) type AxpyStridedFn = unsafe fn(*mut f32, usize, *const f32, *const f32, usize, usize);

/// `dst[i] = src[i]` widened to f32, over the common length.
#[inline(always)]
pub(crate) unsafe fn widen<S: Simd, E: Elem>(dst: &mut [f32], src: &[E]) {
    let n = dst.len().min(src.len());
    let l = S::LANES;
    let mut i = 0;
    // SAFETY: each access covers [i, i + LANES) with i + LANES <= n; the caller guarantees the ISA.
    unsafe {
        while i + l <= n {
            S::store(dst.as_mut_ptr().add(i), E::load::<S>(src.as_ptr().add(i)));
            i += l;
        }
    }
    for j in i..n {
        dst[j] = src[j].to_f32();
    }
}

/// GEMM micro-kernel over packed operands (prefill):
/// `out[i·NR + j] = Σ_{t<k} w[i·ldw + t] · xp[t·ldx + j]` for `i < MR`, `j < NR = NRV·LANES`.
///
/// `w` holds MR weight rows (f32, row stride `ldw`): each element is broadcast once per k-step.
/// `xp` is a panel of NR activation rows transposed to k-major (`[k][ldx]`, see `gemm::pack_x`;
/// attention passes V rows in place): NRV vector loads per k-step. The MR × NRV accumulators stay in registers (AVX-512: 12 × 2 of
/// 32 registers; AVX2: 6 × 2 of 16), so each k-step issues MR·NRV FMAs for NRV loads and MR
/// broadcasts. Every output is one lane of one accumulator summed in k order (t = 0, 1, ...):
/// the result of a (weight row, activation row) pair does not depend on MR, NRV or which
/// other rows share the tile, which makes prefill batch-invariant.
///
/// # Safety
/// `w` readable for MR rows of `k` at stride `ldw`; `xp` readable for `k` rows of NR at stride
/// `ldx`; `out` writable for `MR · NR`; the caller runs with `S`'s ISA enabled.
#[inline(always)]
pub(crate) unsafe fn gemm_tile<S: Simd, const MR: usize, const NRV: usize>(
    w: *const f32,
    ldw: usize,
    xp: *const f32,
    ldx: usize,
    k: usize,
    out: *mut f32,
) {
    let l = S::LANES;
    let nr = NRV * l;
    // SAFETY (whole body): reads stay in the MR × k weight rows and the k × NR panel the caller
    // vouched for; writes in out[..MR·NR].
    unsafe {
        let mut acc = [[S::zero(); NRV]; MR];
        let mut xv = [S::zero(); NRV];
        for t in 0..k {
            let p = xp.add(t * ldx);
            for (v, xv) in xv.iter_mut().enumerate() {
                *xv = S::load(p.add(v * l));
            }
            for (i, row) in acc.iter_mut().enumerate() {
                let b = S::splat(*w.add(i * ldw + t));
                for (a, x) in row.iter_mut().zip(xv.iter()) {
                    *a = S::fma(b, *x, *a);
                }
            }
        }
        for (i, row) in acc.iter().enumerate() {
            for (v, a) in row.iter().enumerate() {
                S::store(out.add(i * nr + v * l), *a);
            }
        }
    }
}

/// A GEMM micro-kernel as stored in the dispatch table (see [`gemm_tile`] for the contract).
pub(crate) type GemmFn = unsafe fn(*const f32, usize, *const f32, usize, usize, *mut f32);

/// `iters` rounds of 12 independent FMA chains per lane, for measuring the FMA peak: returns
/// the sum so nothing is optimised away. 12 chains hide a 4-cycle latency at 2 FMAs per cycle
/// (and the 512-bit case at 1 per cycle).
#[inline(always)]
pub(crate) unsafe fn fma_chains<S: Simd>(iters: usize, seed: f32) -> f32 {
    // SAFETY: register arithmetic only; the caller guarantees the ISA.
    unsafe {
        let m = S::splat(0.999_999);
        let a = S::splat(1e-7);
        let mut acc = [S::zero(); 12];
        for (i, v) in acc.iter_mut().enumerate() {
            *v = S::splat(seed + i as f32);
        }
        for _ in 0..iters {
            for v in acc.iter_mut() {
                *v = S::fma(*v, m, a);
            }
        }
        let mut s = S::zero();
        for v in acc {
            s = S::add(s, v);
        }
        S::hsum(s)
    }
}

/// Weight rows per wide tile of the bf16 dot-product path.
pub(crate) const NW_WIDE: usize = 4;
/// Activation rows per tile of the bf16 dot-product path, at most.
pub(crate) const NX_MAX: usize = 4;
