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

/// `Σ a[i]·b[i]` over the common length. Four accumulators hide the FMA latency.
#[inline(always)]
pub(crate) unsafe fn dot<S: Simd, E: Elem>(a: &[f32], b: &[E]) -> f32 {
    let n = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let l = S::LANES;
    // SAFETY (whole body): every load reads [i, i + LANES) with i + LANES <= n, inside both
    // slices; the caller guarantees the ISA.
    unsafe {
        let mut acc = [S::zero(); 4];
        let mut i = 0;
        while i + 4 * l <= n {
            for (u, a) in acc.iter_mut().enumerate() {
                *a = S::fma(
                    S::load(pa.add(i + u * l)),
                    E::load::<S>(pb.add(i + u * l)),
                    *a,
                );
            }
            i += 4 * l;
        }
        while i + l <= n {
            acc[0] = S::fma(S::load(pa.add(i)), E::load::<S>(pb.add(i)), acc[0]);
            i += l;
        }
        let mut s = S::hsum(S::add(S::add(acc[0], acc[1]), S::add(acc[2], acc[3])));
        for j in i..n {
            s += a[j] * b[j].to_f32();
        }
        s
    }
}

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

/// Register-blocked tile: `out[r·ldo + j] = Σ_{i<k} x[r·ldx + i] · w[j·ldw + i]` for `r < NX`,
/// `j < NW`. Each weight vector is loaded (and widened) once and used for NX activation rows;
/// each activation vector is used for NW weight rows.
///
/// # Safety
/// `x` readable for rows `0..NX` of `k` elements at stride `ldx`; `w` likewise for `NW` rows at
/// stride `ldw`; `out` writable at every `r·ldo + j`; the caller runs with `S`'s ISA enabled.
#[inline(always)]
pub(crate) unsafe fn tile<S: Simd, E: Elem, const NX: usize, const NW: usize>(
    x: *const f32,
    ldx: usize,
    w: *const E,
    ldw: usize,
    k: usize,
    out: *mut f32,
    ldo: usize,
) {
    let l = S::LANES;
    // SAFETY (whole body): all reads stay in [0, k) of the rows the caller vouched for.
    unsafe {
        let mut acc = [[S::zero(); NW]; NX];
        let mut i = 0;
        while i + l <= k {
            let mut wv = [S::zero(); NW];
            for (j, v) in wv.iter_mut().enumerate() {
                *v = E::load::<S>(w.add(j * ldw + i));
            }
            for (r, row) in acc.iter_mut().enumerate() {
                let xv = S::load(x.add(r * ldx + i));
                for (a, v) in row.iter_mut().zip(wv.iter()) {
                    *a = S::fma(xv, *v, *a);
                }
            }
            i += l;
        }
        for (r, row) in acc.iter().enumerate() {
            for (j, a) in row.iter().enumerate() {
                let mut s = S::hsum(*a);
                for t in i..k {
                    s += *x.add(r * ldx + t) * (*w.add(j * ldw + t)).to_f32();
                }
                *out.add(r * ldo + j) = s;
            }
        }
    }
}

/// A tile function as stored in the dispatch table (see [`tile`] for the contract).
pub(crate) type TileFn<E> = unsafe fn(*const f32, usize, *const E, usize, usize, *mut f32, usize);

/// Tile functions indexed `[nx - 1][nw == NW_WIDE]`, NX in 1..=4 and NW in {1, 4}.
pub(crate) type TileTable<E> = [[TileFn<E>; 2]; 4];

/// Weight rows per wide tile.
pub(crate) const NW_WIDE: usize = 4;
/// Activation rows per tile, at most.
pub(crate) const NX_MAX: usize = 4;

/// Builds a [`TileTable`] from a generic `#[target_feature]` wrapper `$f::<E, NX, NW>`.
macro_rules! tile_table {
    ($f:ident, $e:ty) => {
        [
            [
                $f::<$e, 1, 1> as $crate::backend::cpu::simd::vector::TileFn<$e>,
                $f::<$e, 1, 4>,
            ],
            [$f::<$e, 2, 1>, $f::<$e, 2, 4>],
            [$f::<$e, 3, 1>, $f::<$e, 3, 4>],
            [$f::<$e, 4, 1>, $f::<$e, 4, 4>],
        ]
    };
}
pub(crate) use tile_table;
