//! Every SIMD kernel against a plain f64 reference, for every length 0..=300 and several
//! misalignments, on every instruction set this CPU has (the others are skipped, with a note).

mod common;
use common::Rng;

use half::{bf16, f16};
use minfer::internals::simd::{self, Isa, Kernels};

fn tables() -> Vec<Kernels> {
    let (mut v, mut not_run) = (Vec::new(), Vec::new());
    for isa in Isa::ALL {
        match Kernels::for_isa(isa) {
            Some(k) => v.push(k),
            None => not_run.push(format!("{isa} (this CPU/architecture lacks it)")),
        }
    }
    let ran: Vec<String> = v.iter().map(|k| k.describe()).collect();
    common::report_isas("simd", &ran, &not_run);
    v
}

const MAX_LEN: usize = 300;
const OFFSETS: [usize; 4] = [0, 1, 3, 7];

/// Summing n products in f32 in any order is within γ_n·Σ|a·b| of the exact sum (γ_n ≈ n·u,
/// u = 2⁻²⁴; each product adds one more rounding). f32::EPSILON = 2u, so (n + 2)·EPSILON covers
/// this with a factor of 2 to spare. The widened bf16/f16 operands are exact, so the same bound
/// applies to them. The tiny absolute term covers n = 0 and all-zero sums.
fn tol(n: usize, abs_sum: f64) -> f64 {
    (n as f64 + 2.0) * f32::EPSILON as f64 * abs_sum + 1e-30
}

fn check_dot<E: Copy>(
    name: &str,
    conv: fn(f32) -> E,
    widen: fn(E) -> f32,
    f: impl Fn(&Kernels, &[f32], &[E]) -> f32,
) {
    let mut rng = Rng::new(42);
    for k in tables() {
        for n in 0..=MAX_LEN {
            for &off in &OFFSETS {
                let a = rng.vec(n + off);
                let b: Vec<E> = rng.vec(n + off).into_iter().map(conv).collect();
                let (a, b) = (&a[off..], &b[off..]);
                let exact: f64 = a
                    .iter()
                    .zip(b)
                    .map(|(x, y)| *x as f64 * widen(*y) as f64)
                    .sum();
                let abs: f64 = a
                    .iter()
                    .zip(b)
                    .map(|(x, y)| (*x as f64 * widen(*y) as f64).abs())
                    .sum();
                let got = f(&k, a, b) as f64;
                assert!(
                    (got - exact).abs() <= tol(n, abs),
                    "{name} {}: n={n} off={off}: got {got}, exact {exact}, tol {}",
                    k.describe(),
                    tol(n, abs)
                );
            }
        }
    }
}

#[test]
fn dot_f32_every_isa() {
    check_dot("dot_f32", |x| x, |x| x, |k, a, b| k.dot_f32(a, b));
}

#[test]
fn dot_bf16_every_isa() {
    check_dot("dot_bf16", bf16::from_f32, bf16::to_f32, |k, a, b| {
        k.dot_bf16(a, b)
    });
}

#[test]
fn dot_f16_every_isa() {
    check_dot("dot_f16", f16::from_f32, f16::to_f32, |k, a, b| {
        k.dot_f16(a, b)
    });
}

#[test]
fn dot_uses_common_length() {
    for k in tables() {
        let a = [1.0f32; 40];
        let b = [2.0f32; 33];
        assert_eq!(k.dot_f32(&a, &b), 66.0, "{}", k.describe());
    }
}

#[test]
fn axpy_every_isa() {
    let mut rng = Rng::new(7);
    for k in tables() {
        for n in 0..=MAX_LEN {
            for &off in &OFFSETS {
                let x = rng.vec(n + off);
                let y0 = rng.vec(n + off + 5);
                let alpha = rng.f32() * 3.0;
                let mut y = y0.clone();
                k.axpy(&mut y[off..off + n], alpha, &x[off..]);
                for i in 0..y.len() {
                    let want = if i >= off && i < off + n {
                        y0[i] as f64 + alpha as f64 * x[i] as f64
                    } else {
                        y0[i] as f64
                    };
                    // One multiply and one add, each rounded once (or once when fused):
                    // within 2u·(|y| + |αx|) ≤ EPSILON·(|y| + |αx|).
                    let scale = y0[i].abs() as f64
                        + if i >= off && i < off + n {
                            (alpha * x[i]).abs() as f64
                        } else {
                            0.0
                        };
                    assert!(
                        (y[i] as f64 - want).abs() <= f32::EPSILON as f64 * scale,
                        "axpy {}: n={n} off={off} i={i}: got {}, want {want}",
                        k.describe(),
                        y[i]
                    );
                }
            }
        }
    }
}

#[test]
fn forced_isa_and_names() {
    assert!(
        Kernels::for_isa(Isa::Scalar).is_some(),
        "scalar always exists"
    );
    for isa in Isa::ALL {
        assert_eq!(Isa::parse(isa.name()), Some(isa));
        if let Some(k) = Kernels::for_isa(isa) {
            assert_eq!(k.isa(), isa);
            assert!(!k.without_bf16_dot().has_bf16_dot());
        }
    }
    assert_eq!(Isa::parse("AVX512"), Some(Isa::Avx512));
    assert_eq!(Isa::parse("sse9"), None);
    // The process-wide table is one of the available ones, and the free functions use it.
    let k = simd::kernels();
    assert!(Isa::available().contains(&k.isa()));
    assert_eq!(simd::dot_f32(&[1.0, 2.0, 3.0], &[4.0, 5.0, 6.0]), 32.0);
    let mut y = [1.0f32, 1.0];
    simd::axpy(&mut y, 2.0, &[3.0, 4.0]);
    assert_eq!(y, [7.0, 9.0]);
}

#[test]
fn read_bandwidth_is_positive() {
    // Only that it measures something; speed is never asserted.
    let gbs = simd::measure_read_bandwidth(1 << 20, 2);
    assert!(gbs.is_finite() && gbs > 0.0);
}

/// The FMA-peak probe runs on every instruction set this CPU has and returns a finite positive
/// rate (no timing assertion: speed belongs to benches).
#[test]
fn fma_peak_probe_runs_on_every_isa() {
    for isa in Isa::ALL {
        match Kernels::for_isa(isa) {
            Some(k) => {
                let g = k.measure_fma_peak_gflops(2);
                assert!(g.is_finite() && g > 0.0, "{isa}: {g}");
            }
            None => common::report_isas(
                "fma_peak_probe",
                &[],
                &[format!("{isa} (this CPU/architecture lacks it)")],
            ),
        }
    }
}

/// The strided attention kernels are the per-key `dot_f32` / `axpy` calls, bit for bit (decode
/// attention's results must not change with how its keys are grouped), on awkward head widths,
/// run lengths and strides, and they never read a row that does not fit the slice.
#[test]
fn strided_attention_kernels_equal_per_key_calls() {
    let mut rng = Rng::new(7);
    for k in tables() {
        for hd in [1usize, 3, 8, 17, 32, 64, 70, 128] {
            for stride in [hd, hd + 5, 3 * hd] {
                for n in [1usize, 2, 5, 31, 33] {
                    let q = rng.vec(hd);
                    let keys = rng.vec((n - 1) * stride + hd);
                    let p = rng.vec(n);
                    let mut got = vec![f32::NAN; n + 1];
                    k.dots_strided(&q, &keys, stride, &mut got[..n]);
                    for j in 0..n {
                        let want = k.dot_f32(&q, &keys[j * stride..j * stride + hd]);
                        assert_eq!(
                            got[j].to_bits(),
                            want.to_bits(),
                            "dots_strided {}: hd={hd} stride={stride} n={n} j={j}",
                            k.describe()
                        );
                    }
                    assert!(got[n].is_nan(), "dots_strided wrote past its n outputs");
                    // A slice one element short of the last row: that row is left alone.
                    let mut short = vec![f32::NAN; n];
                    k.dots_strided(&q, &keys[..keys.len() - 1], stride, &mut short);
                    assert!(
                        short[n - 1].is_nan(),
                        "dots_strided read a row that does not fit"
                    );

                    let acc0 = rng.vec(hd);
                    let mut want = acc0.clone();
                    for j in 0..n {
                        k.axpy(&mut want, p[j], &keys[j * stride..j * stride + hd]);
                    }
                    let mut got = acc0.clone();
                    k.axpy_strided(&mut got, &p, &keys, stride);
                    let (gb, wb): (Vec<u32>, Vec<u32>) = (
                        got.iter().map(|v| v.to_bits()).collect(),
                        want.iter().map(|v| v.to_bits()).collect(),
                    );
                    assert_eq!(
                        gb,
                        wb,
                        "axpy_strided {}: hd={hd} stride={stride} n={n}",
                        k.describe()
                    );
                }
            }
        }
    }
}
