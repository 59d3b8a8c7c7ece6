//! Scalar semantics: what one instruction computes on one lane's values (integer arithmetic,
//! floats of every width, comparisons, conversions with their rounding modes). Pure functions of
//! bits; the executor (`mod.rs`) applies them across the lanes of a warp.

use crate::isa::*;
use half::{bf16, f16};

#[inline(always)]
pub(super) fn mask(bits: u32) -> u64 {
    if bits >= 64 {
        u64::MAX
    } else {
        (1u64 << bits) - 1
    }
}

#[inline(always)]
pub(super) fn sx(v: u64, bits: u32) -> i64 {
    if bits >= 64 {
        v as i64
    } else {
        let s = 64 - bits;
        ((v << s) as i64) >> s
    }
}

#[inline(always)]
pub(super) fn zx(v: u64, bits: u32) -> u64 {
    v & mask(bits)
}

pub(super) fn int2(op: IBin, ty: Ty, a: u64, b: u64) -> u64 {
    let bits = ty.bits();
    let s = ty.signed();
    match op {
        IBin::Add => zx(a.wrapping_add(b), bits),
        IBin::Sub => zx(a.wrapping_sub(b), bits),
        IBin::MulLo => zx(a.wrapping_mul(b), bits),
        IBin::MulHi => {
            if s {
                zx(
                    ((sx(a, bits) as i128 * sx(b, bits) as i128) >> bits) as u64,
                    bits,
                )
            } else {
                zx(
                    ((zx(a, bits) as u128 * zx(b, bits) as u128) >> bits) as u64,
                    bits,
                )
            }
        }
        IBin::MulWide => {
            if s {
                zx((sx(a, bits) as i128 * sx(b, bits) as i128) as u64, bits * 2)
            } else {
                zx((zx(a, bits) as u128 * zx(b, bits) as u128) as u64, bits * 2)
            }
        }
        IBin::Div | IBin::Rem => {
            if zx(b, bits) == 0 {
                // Undefined in PTX; hardware gives all ones for the quotient.
                return if op == IBin::Div {
                    mask(bits)
                } else {
                    zx(a, bits)
                };
            }
            if s {
                let (x, y) = (sx(a, bits), sx(b, bits));
                zx(
                    if op == IBin::Div {
                        x.wrapping_div(y)
                    } else {
                        x.wrapping_rem(y)
                    } as u64,
                    bits,
                )
            } else {
                let (x, y) = (zx(a, bits), zx(b, bits));
                if op == IBin::Div {
                    x / y
                } else {
                    x % y
                }
            }
        }
        IBin::Min | IBin::Max => {
            let less = if s {
                sx(a, bits) < sx(b, bits)
            } else {
                zx(a, bits) < zx(b, bits)
            };
            zx(if (op == IBin::Min) == less { a } else { b }, bits)
        }
        IBin::And => zx(a & b, bits),
        IBin::Or => zx(a | b, bits),
        IBin::Xor => zx(a ^ b, bits),
        IBin::Shl => {
            let n = zx(b, 32);
            if n >= bits as u64 {
                0
            } else {
                zx(a << n, bits)
            }
        }
        IBin::Shr => {
            let n = zx(b, 32);
            if s {
                let x = sx(a, bits);
                zx((x >> n.min(63)) as u64, bits)
            } else if n >= bits as u64 {
                0
            } else {
                zx(a, bits) >> n
            }
        }
    }
}

pub(super) fn int1(op: IUn, ty: Ty, a: u64) -> u64 {
    let bits = ty.bits();
    match op {
        IUn::Abs => zx(sx(a, bits).wrapping_abs() as u64, bits),
        IUn::Neg => zx(0u64.wrapping_sub(a), bits),
        IUn::Not => {
            if ty == Ty::Pred {
                (a == 0) as u64
            } else {
                zx(!a, bits)
            }
        }
        IUn::Cnot => (zx(a, bits) == 0) as u64,
        IUn::Popc => zx(a, bits).count_ones() as u64,
        IUn::Clz => (zx(a, bits).leading_zeros() - (64 - bits)) as u64,
        IUn::Brev => zx(a, bits).reverse_bits() >> (64 - bits),
    }
}

pub(super) fn h2f(ty: Ty, v: u64) -> f32 {
    match ty {
        Ty::F16 | Ty::F16x2 => f16::from_bits(v as u16).to_f32(),
        Ty::BF16 | Ty::BF16x2 => bf16::from_bits(v as u16).to_f32(),
        _ => f32::from_bits(v as u32),
    }
}
fn f2h(ty: Ty, x: f32) -> u64 {
    match ty {
        Ty::F16 | Ty::F16x2 => f32_to_f16(x) as u64,
        Ty::BF16 | Ty::BF16x2 => f32_to_bf16(x) as u64,
        _ => x.to_bits() as u64,
    }
}

/// Apply `f` to a float operand of type `ty` (two halves for the x2 types).
fn fmap(ty: Ty, args: [u64; 3], f: impl Fn(f32, f32, f32) -> f32) -> u64 {
    match ty {
        Ty::F16x2 | Ty::BF16x2 => {
            let lo = f(h2f(ty, args[0]), h2f(ty, args[1]), h2f(ty, args[2]));
            let hi = f(
                h2f(ty, args[0] >> 16),
                h2f(ty, args[1] >> 16),
                h2f(ty, args[2] >> 16),
            );
            f2h(ty, lo) | f2h(ty, hi) << 16
        }
        _ => f2h(ty, f(h2f(ty, args[0]), h2f(ty, args[1]), h2f(ty, args[2]))),
    }
}

fn saturate(x: f32) -> f32 {
    if x.is_nan() {
        0.0
    } else {
        x.clamp(0.0, 1.0)
    }
}

pub(super) fn fbin(op: FBin, ty: Ty, sat: bool, a: u64, b: u64) -> u64 {
    if ty == Ty::F64 {
        let (x, y) = (f64::from_bits(a), f64::from_bits(b));
        let r = match op {
            FBin::Add => x + y,
            FBin::Sub => x - y,
            FBin::Mul => x * y,
            FBin::Div => x / y,
            FBin::Min => x.min(y),
            FBin::Max => x.max(y),
        };
        let r = if sat {
            if r.is_nan() {
                0.0
            } else {
                r.clamp(0.0, 1.0)
            }
        } else {
            r
        };
        return r.to_bits();
    }
    if ty == Ty::F32 && !sat {
        let (x, y) = (f32::from_bits(a as u32), f32::from_bits(b as u32));
        let r = match op {
            FBin::Add => x + y,
            FBin::Sub => x - y,
            FBin::Mul => x * y,
            FBin::Div => x / y,
            FBin::Min => x.min(y),
            FBin::Max => x.max(y),
        };
        return r.to_bits() as u64;
    }
    fmap(ty, [a, b, 0], |x, y, _| {
        let r = match op {
            FBin::Add => x + y,
            FBin::Sub => x - y,
            FBin::Mul => x * y,
            FBin::Div => x / y,
            FBin::Min => x.min(y),
            FBin::Max => x.max(y),
        };
        if sat {
            saturate(r)
        } else {
            r
        }
    })
}

pub(super) fn ffma(ty: Ty, sat: bool, a: u64, b: u64, c: u64) -> u64 {
    if ty == Ty::F64 {
        return f64::from_bits(a)
            .mul_add(f64::from_bits(b), f64::from_bits(c))
            .to_bits();
    }
    if ty == Ty::F32 && !sat {
        let r =
            f32::from_bits(a as u32).mul_add(f32::from_bits(b as u32), f32::from_bits(c as u32));
        return r.to_bits() as u64;
    }
    fmap(ty, [a, b, c], |x, y, z| {
        let r = x.mul_add(y, z);
        if sat {
            saturate(r)
        } else {
            r
        }
    })
}

pub(super) fn fun(op: FUn, ty: Ty, a: u64) -> u64 {
    // Sign manipulation is a bit operation in PTX (NaN payloads preserved).
    let sign = match ty {
        Ty::F64 => 1u64 << 63,
        Ty::F32 => 1 << 31,
        Ty::F16 | Ty::BF16 => 1 << 15,
        _ => 0x8000_8000,
    };
    match op {
        FUn::Abs => return a & !sign & mask(ty.bits()),
        FUn::Neg => return (a ^ sign) & mask(ty.bits()),
        _ => {}
    }
    if ty == Ty::F64 {
        let x = f64::from_bits(a);
        let r = match op {
            FUn::Sqrt => x.sqrt(),
            FUn::Rsqrt => 1.0 / x.sqrt(),
            FUn::Rcp => 1.0 / x,
            FUn::Ex2 => x.exp2(),
            FUn::Lg2 => x.log2(),
            FUn::Sin => x.sin(),
            FUn::Cos => x.cos(),
            FUn::Tanh => x.tanh(),
            FUn::Abs | FUn::Neg => x,
        };
        return r.to_bits();
    }
    fmap(ty, [a, 0, 0], |x, _, _| match op {
        FUn::Sqrt => x.sqrt(),
        FUn::Rsqrt => 1.0 / x.sqrt(),
        FUn::Rcp => 1.0 / x,
        FUn::Ex2 => x.exp2(),
        FUn::Lg2 => x.log2(),
        FUn::Sin => x.sin(),
        FUn::Cos => x.cos(),
        FUn::Tanh => x.tanh(),
        FUn::Abs | FUn::Neg => x,
    })
}

/// Truth of a comparison for each outcome: less, equal, greater, unordered (a NaN operand).
pub(super) fn cmp_table(cmp: Cmp) -> [bool; 4] {
    const F: bool = false;
    const T: bool = true;
    match cmp {
        Cmp::Eq => [F, T, F, F],
        Cmp::Ne => [T, F, T, F],
        Cmp::Lt | Cmp::Lo => [T, F, F, F],
        Cmp::Le | Cmp::Ls => [T, T, F, F],
        Cmp::Gt | Cmp::Hi => [F, F, T, F],
        Cmp::Ge | Cmp::Hs => [F, T, T, F],
        Cmp::Equ => [F, T, F, T],
        Cmp::Neu => [T, F, T, T],
        Cmp::Ltu => [T, F, F, T],
        Cmp::Leu => [T, T, F, T],
        Cmp::Gtu => [F, F, T, T],
        Cmp::Geu => [F, T, T, T],
        Cmp::Num => [T, T, T, F],
        Cmp::Nan => [F, F, F, T],
    }
}

#[inline(always)]
pub(super) fn code_of<T: PartialOrd>(x: T, y: T) -> u8 {
    match x.partial_cmp(&y) {
        Some(std::cmp::Ordering::Less) => 0,
        Some(std::cmp::Ordering::Equal) => 1,
        Some(std::cmp::Ordering::Greater) => 2,
        None => 3,
    }
}

pub(super) fn f32_to_bf16(x: f32) -> u16 {
    if x.is_nan() {
        0x7fff
    } else {
        bf16::from_f32(x).to_bits()
    }
}
pub(super) fn f32_to_f16(x: f32) -> u16 {
    if x.is_nan() {
        0x7fff
    } else {
        f16::from_f32(x).to_bits()
    }
}

/// Correct directed rounding from a round-to-nearest result `r` (bits of the narrow type,
/// sign-magnitude) of the exact value `v`: step one ulp toward zero or away from it.
fn directed(r_bits: u64, r: f64, v: f64, rnd: Rnd) -> u64 {
    if r.is_nan() || v.is_nan() || r == v {
        return r_bits;
    }
    let toward_zero = r_bits.wrapping_sub(1);
    let away = r_bits.wrapping_add(1);
    let r_neg = r.is_sign_negative();
    match rnd {
        Rnd::Rz if r.abs() > v.abs() => toward_zero,
        Rnd::Rm if r > v => {
            if r_neg {
                away
            } else {
                toward_zero
            }
        }
        Rnd::Rp if r < v => {
            if r_neg {
                toward_zero
            } else {
                away
            }
        }
        _ => r_bits,
    }
}

fn round_int(x: f64, rnd: Rnd) -> f64 {
    match rnd {
        Rnd::Rni => x.round_ties_even(),
        Rnd::Rzi => x.trunc(),
        Rnd::Rmi => x.floor(),
        Rnd::Rpi => x.ceil(),
        Rnd::Rna => x.round(),
        _ => x,
    }
}

/// Round an exact value to float type `ty` with mode `rnd` (.rn when none).
fn to_float(v: f64, ty: Ty, rnd: Rnd, from_f32: Option<f32>) -> u64 {
    match ty {
        Ty::F64 => v.to_bits(),
        Ty::F32 => {
            let r = v as f32;
            directed(r.to_bits() as u64, r as f64, v, rnd) & 0xffff_ffff
        }
        Ty::F16 => {
            if v.is_nan() {
                return 0x7fff;
            }
            let r = match from_f32 {
                Some(x) => f16::from_f32(x),
                None => f16::from_f64(v),
            };
            directed(r.to_bits() as u64, r.to_f64(), v, rnd) & 0xffff
        }
        Ty::BF16 => {
            if v.is_nan() {
                return 0x7fff;
            }
            let r = match from_f32 {
                Some(x) => bf16::from_f32(x),
                None => bf16::from_f64(v),
            };
            directed(r.to_bits() as u64, r.to_f64(), v, rnd) & 0xffff
        }
        _ => v.to_bits(),
    }
}

fn int_range(ty: Ty) -> (i128, i128) {
    let bits = ty.bits();
    if ty.signed() {
        (-(1i128 << (bits - 1)), (1i128 << (bits - 1)) - 1)
    } else {
        (0, (1i128 << bits) - 1)
    }
}

pub(super) fn cvt(dty: Ty, sty: Ty, rnd: Rnd, sat: bool, a: u64) -> u64 {
    if sty.float() {
        let (v, f32v) = match sty {
            Ty::F64 => (f64::from_bits(a), None),
            Ty::F32 => {
                let x = f32::from_bits(a as u32);
                (x as f64, Some(x))
            }
            _ => {
                let x = h2f(sty, a);
                (x as f64, Some(x))
            }
        };
        if dty.float() {
            let mut v = v;
            let mut f32v = f32v;
            if matches!(rnd, Rnd::Rni | Rnd::Rzi | Rnd::Rmi | Rnd::Rpi) {
                v = round_int(v, rnd);
                f32v = None;
            }
            if sat {
                v = if v.is_nan() { 0.0 } else { v.clamp(0.0, 1.0) };
                f32v = None;
            }
            let r = if rnd == Rnd::None { Rnd::Rn } else { rnd };
            // Widening conversions are exact; f32→f16/bf16 goes straight from the f32 so the
            // round-to-nearest step is a single rounding.
            let from = if sty.bits() <= 32 && dty.bits() < 32 {
                f32v
            } else {
                None
            };
            return to_float(v, dty, r, from);
        }
        // float → integer: round, saturate to the destination range, NaN → 0.
        if v.is_nan() {
            return 0;
        }
        let r = round_int(v, rnd);
        let (lo, hi) = int_range(dty);
        let i = if r <= lo as f64 {
            lo
        } else if r >= hi as f64 {
            hi
        } else {
            r as i128
        };
        return zx(i as u64, dty.bits());
    }
    // Integer source.
    let bits = sty.bits();
    let i: i128 = if sty.signed() {
        sx(a, bits) as i128
    } else {
        zx(a, bits) as i128
    };
    if dty.float() {
        let v = i as f64;
        let rn = match dty {
            Ty::F32 => {
                let r = if sty.signed() {
                    (i as i64) as f32
                } else {
                    (i as u64) as f32
                };
                if matches!(rnd, Rnd::None | Rnd::Rn) {
                    return r.to_bits() as u64;
                }
                Some(r)
            }
            _ => None,
        };
        let r = if rnd == Rnd::None { Rnd::Rn } else { rnd };
        let out = to_float(v, dty, r, rn.filter(|_| dty != Ty::F32));
        let out = if sat && dty != Ty::F64 {
            cvt(dty, dty, Rnd::None, true, out)
        } else {
            out
        };
        return out;
    }
    let (lo, hi) = int_range(dty);
    let i = if sat { i.clamp(lo, hi) } else { i };
    zx(i as u64, dty.bits())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cvt_bf16_rounding() {
        // 1 + 2^-8 is exactly halfway between two bf16 values: ties to even (down).
        let x = f32::from_bits(0x3f80_8000);
        assert_eq!(
            cvt(Ty::BF16, Ty::F32, Rnd::Rn, false, x.to_bits() as u64),
            0x3f80
        );
        let y = f32::from_bits(0x3f81_8000); // halfway, odd below: rounds up
        assert_eq!(
            cvt(Ty::BF16, Ty::F32, Rnd::Rn, false, y.to_bits() as u64),
            0x3f82
        );
        assert_eq!(cvt(Ty::BF16, Ty::F32, Rnd::Rz, false, 0x3f81_ffff), 0x3f81);
        assert_eq!(cvt(Ty::BF16, Ty::F32, Rnd::Rp, false, 0x3f81_0001), 0x3f82);
        assert_eq!(cvt(Ty::BF16, Ty::F32, Rnd::Rm, false, 0xbf81_0001), 0xbf82);
        assert_eq!(
            cvt(Ty::F16, Ty::F32, Rnd::Rn, false, 1e6f32.to_bits() as u64),
            0x7c00
        );
        assert_eq!(
            cvt(Ty::F16, Ty::F32, Rnd::Rz, false, 1e6f32.to_bits() as u64),
            0x7bff
        );
        assert_eq!(
            cvt(
                Ty::S32,
                Ty::F32,
                Rnd::Rzi,
                false,
                (-2.7f32).to_bits() as u64
            ),
            (-2i32) as u32 as u64
        );
        assert_eq!(
            cvt(Ty::S32, Ty::F32, Rnd::Rni, false, 2.5f32.to_bits() as u64),
            2
        );
        assert_eq!(
            cvt(Ty::U8, Ty::F32, Rnd::Rni, false, 300f32.to_bits() as u64),
            255
        );
        assert_eq!(
            cvt(Ty::S32, Ty::F32, Rnd::Rzi, false, f32::NAN.to_bits() as u64),
            0
        );
    }
}
