//! The q8 activation quantizer and the Q8_0 weight quantizer, bit for bit against gguf-py
//! (tests/fixtures/make_quant_fixtures.py → tests/fixtures/quant/), on every instruction set
//! this CPU has; the sets it lacks are printed as NOT RUN (never counted as passed).
//!
//! The activation quantizer is not exported, so it is observed through the product it feeds:
//! a Q8_0 weight matrix whose row `o` is the unit vector e_o (d = 1, q = 1 at column o) makes
//! the integer path return `out[o] = dx · qx[o]` (one f32 product; every other term is an exact
//! zero), and `qx[o] = out[o] / dx` is recovered exactly (|qx| ≤ 127, so a few ulps of error
//! in the product cannot reach ±0.5). Fewer than 8 activation rows keep the integer path
//! (from 8 on, products dequantize the weights and use f32 activations; see quant_kernels.rs).
//!
//! Instruction sets this machine lacks: NEON runs on an aarch64 machine, or here under user-mode
//! QEMU (not tried in this repository yet; Debian packages `qemu-user` and
//! `gcc-aarch64-linux-gnu`, `rustup target add aarch64-unknown-linux-gnu`, then
//! `CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
//! CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L /usr/aarch64-linux-gnu"
//! cargo test --release --target aarch64-unknown-linux-gnu --test quantizer`); the NEON table
//! uses the scalar quantizer and integer kernels. AVX-512 (and VNNI) need such a CPU (Zen 4,
//! Ice Lake and later); Intel's SDE emulates them but is not on a package registry.
//!
//! Then the integer dot products: random Q8_0 weights times the fixture's activations, against
//! an f64 sum over the exactly quantized activations (gguf-py's integers), at f32 tolerance.

mod common;

use std::io::Write;
use std::path::PathBuf;

use half::f16;
use minfer::internals::quant_kernels::quantize_q8_0;
use minfer::internals::simd::{Isa, Kernels};
use minfer::internals::{matmul::matmul_with, Rng};
use minfer::{DType, WeightTensor};

struct Fixture {
    /// n_blocks × 32
    x: Vec<f32>,
    /// n_blocks × 34 (f16 d, 32 × i8)
    gguf: Vec<u8>,
    kinds: Vec<String>,
}

fn fixture() -> Fixture {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/quant");
    let x: Vec<f32> = std::fs::read(dir.join("q8_0_input.f32"))
        .unwrap()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let gguf = std::fs::read(dir.join("q8_0_gguf.bin")).unwrap();
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("q8_0.json")).unwrap()).unwrap();
    let kinds: Vec<String> = meta["kinds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap().to_string())
        .collect();
    assert_eq!(x.len(), kinds.len() * 32);
    assert_eq!(gguf.len(), kinds.len() * 34);
    Fixture { x, gguf, kinds }
}

/// gguf-py's integer for element j of block b.
fn q_ref(f: &Fixture, b: usize, j: usize) -> i32 {
    f.gguf[34 * b + 2 + j] as i8 as i32
}

/// The activation scale the format defines: max|x| / 127 in f32 (gguf-py stores it rounded to
/// f16, so the f32 value is computed here from the definition).
fn dx_ref(block: &[f32]) -> f32 {
    block.iter().map(|v| v.abs()).fold(0.0f32, f32::max) / 127.0
}

/// Every table this CPU can run, and a printed (uncaptured) line naming what ran and what did not.
fn tables(test: &str) -> Vec<Kernels> {
    let mut ran = Vec::new();
    let mut not_run = Vec::new();
    let mut v = Vec::new();
    for isa in Isa::ALL {
        match Kernels::for_isa(isa) {
            Some(k) => {
                ran.push(k.describe());
                v.push(k);
            }
            None => not_run.push(format!("{isa} (this CPU/architecture lacks it)")),
        }
    }
    let _ = writeln!(
        std::io::stderr(),
        "\n{test}: instruction sets RUN: {}; NOT RUN: {}",
        ran.join(", "),
        if not_run.is_empty() {
            "none".to_string()
        } else {
            not_run.join(", ")
        }
    );
    v
}

/// The activation quantizer's integers for `rows` rows of `x` (n_in = x.len() / rows, < 8 rows),
/// read back through an identity Q8_0 product.
fn observed_q(k: &Kernels, x: &[f32], rows: usize) -> Vec<i32> {
    assert!(rows < 8, "the integer path needs < 8 rows");
    let n_in = x.len() / rows;
    let mut w = vec![0u8; n_in * n_in / 32 * 34];
    for o in 0..n_in {
        let blk = &mut w[(o * n_in / 32 + o / 32) * 34..][..34];
        blk[..2].copy_from_slice(&f16::ONE.to_le_bytes());
        blk[2 + o % 32] = 1;
    }
    let w = WeightTensor::from_bytes("identity", DType::Q8_0, vec![n_in, n_in], &w).unwrap();
    let mut out = vec![f32::NAN; rows * n_in];
    matmul_with(k, &mut out, x, rows, &w, None).unwrap();
    out.iter()
        .enumerate()
        .map(|(i, &o)| {
            let (r, c) = (i / n_in, i % n_in);
            let dx = dx_ref(&x[r * n_in + c / 32 * 32..][..32]);
            if dx == 0.0 {
                assert_eq!(o, 0.0, "zero block must give 0, got {o}");
                return 0;
            }
            let q = o / dx;
            assert!(
                (q - q.round()).abs() < 1e-3 && q.abs() <= 127.5,
                "out = {o} is not dx·integer (dx = {dx})"
            );
            q.round() as i32
        })
        .collect()
}

fn is_tie_block(kind: &str) -> bool {
    kind.starts_with("ties")
}

/// The block whose first element is the largest f32 below 0.5 (at d = 1).
fn is_below_half_block(kind: &str) -> bool {
    kind.starts_with("one ulp from ties toward -inf")
}

/// Compare the quantizer's integers with gguf-py's on the blocks `pick` selects; returns the
/// mismatches as text.
fn mismatches(k: &Kernels, f: &Fixture, pick: &dyn Fn(&str) -> bool) -> Vec<String> {
    let blocks: Vec<usize> = (0..f.kinds.len()).filter(|&b| pick(&f.kinds[b])).collect();
    let mut bad = Vec::new();
    // Three activation rows of up to 4 blocks per product, so multi-row tiles run too.
    for group in blocks.chunks(12) {
        let per_row = group.len().div_ceil(3);
        let rows = group.len().div_ceil(per_row);
        let mut x = vec![0.0f32; rows * per_row * 32];
        let mut where_: Vec<Option<usize>> = vec![None; rows * per_row];
        for (i, &b) in group.iter().enumerate() {
            x[i * 32..i * 32 + 32].copy_from_slice(&f.x[b * 32..b * 32 + 32]);
            where_[i] = Some(b);
        }
        let q = observed_q(k, &x, rows);
        for (slot, b) in where_.iter().enumerate() {
            let Some(b) = *b else { continue };
            for j in 0..32 {
                let (got, want) = (q[slot * 32 + j], q_ref(f, b, j));
                if got != want {
                    bad.push(format!(
                        "{}: block {b} ({}), x[{j}] = {:e} (x·127/max = {}): got {got}, gguf-py {want}",
                        k.describe(),
                        f.kinds[b],
                        f.x[b * 32 + j],
                        f.x[b * 32 + j] * (1.0 / dx_ref(&f.x[b * 32..b * 32 + 32]))
                    ));
                }
            }
        }
    }
    bad
}

#[test]
fn activation_quantizer_matches_gguf_py_on_every_isa() {
    let f = fixture();
    let mut bad = Vec::new();
    for k in tables("activation_quantizer_matches_gguf_py_on_every_isa") {
        bad.extend(mismatches(&k, &f, &|kind| {
            !is_tie_block(kind) && !is_below_half_block(kind)
        }));
    }
    assert!(
        bad.is_empty(),
        "{} mismatches:\n{}",
        bad.len(),
        bad.join("\n")
    );
}

/// Exact ties (x·(1/dx) = k + 0.5 in f32): gguf-py and ggml round half away from zero, and so
/// must every instruction set (the AVX2 quantizer, also used by the AVX-512 table, once rounded
/// ties to even: 2.5 → 2 instead of 3).
#[test]
fn activation_quantizer_rounds_ties_half_away_from_zero_on_every_isa() {
    let f = fixture();
    let mut bad = Vec::new();
    for k in tables("activation_quantizer_rounds_ties_half_away_from_zero_on_every_isa") {
        bad.extend(mismatches(&k, &f, &|kind| is_tie_block(kind)));
    }
    assert!(
        bad.is_empty(),
        "{} mismatches:\n{}",
        bad.len(),
        bad.join("\n")
    );
}

/// The largest f32 below 0.5, 0.49999997, must round to 0 (the scalar quantizer once rounded
/// "half away from zero by hand" as `(r + 0.5·sign(r)) as i32`, and 0.49999997 + 0.5 rounds up
/// to 1.0 in f32).
#[test]
fn activation_quantizer_rounds_the_largest_float_below_one_half_down_on_every_isa() {
    let f = fixture();
    let mut bad = Vec::new();
    for k in tables("activation_quantizer_rounds_the_largest_float_below_one_half_down") {
        bad.extend(mismatches(&k, &f, &|kind| is_below_half_block(kind)));
    }
    assert!(
        bad.is_empty(),
        "{} mismatches:\n{}",
        bad.len(),
        bad.join("\n")
    );
}

/// The scalar table alone must already get the ties right (it is the portable reference the
/// other instruction sets are meant to equal).
#[test]
fn scalar_activation_quantizer_rounds_ties_half_away_from_zero() {
    let f = fixture();
    let k = Kernels::for_isa(Isa::Scalar).unwrap();
    let bad = mismatches(&k, &f, &|kind| is_tie_block(kind));
    assert!(
        bad.is_empty(),
        "{} mismatches:\n{}",
        bad.len(),
        bad.join("\n")
    );
}

/// The fixture really contains ties that the two rules round differently (else the tie tests
/// above would prove nothing).
#[test]
fn fixture_has_ties_that_the_rounding_rule_decides() {
    let f = fixture();
    let mut decided = 0;
    for b in (0..f.kinds.len()).filter(|&b| is_tie_block(&f.kinds[b])) {
        let blk = &f.x[b * 32..b * 32 + 32];
        let id = 1.0 / dx_ref(blk);
        for (j, v) in blk.iter().enumerate() {
            let r = v * id;
            if r.fract().abs() == 0.5 && (r.round_ties_even() as i32) != q_ref(&f, b, j) {
                decided += 1;
            }
        }
    }
    assert!(decided >= 100, "only {decided} ties that the rule decides");
}

/// `quantize_q8_0` (weights to Q8_0) equals gguf-py byte for byte: the f16 scale and every q.
#[test]
fn weight_quantizer_matches_gguf_py_bytes() {
    let f = fixture();
    let got = quantize_q8_0(&f.x).unwrap();
    assert_eq!(got.len(), f.gguf.len());
    for (b, (g, w)) in got.chunks(34).zip(f.gguf.chunks(34)).enumerate() {
        assert_eq!(g, w, "block {b} ({})", f.kinds[b]);
    }
}

/// The integer dot products: out[r, o] against Σ_b d_w · dx · Σ_j qw·qx in f64 with gguf-py's
/// qx. The kernels sum exact integers per group (a half or whole block, or SIMD lanes), then
/// combine the groups' f32 products: a few roundings per block and one per addition, so the
/// error is below (n_blocks + 4)·ε·Σ_j |d_w·dx·qw_j·qx_j| (the usual dot-product bound over the
/// element products; ε = f32::EPSILON = 2u gives a factor of 2 to spare). A quantizer that
/// truncates, or scales by max/128, moves the result by ~dx·d_w per element, hundreds of times
/// this bound.
#[test]
fn integer_dot_products_match_an_f64_dot_over_the_exact_activations() {
    let f = fixture();
    // The huge block is left out (1e37 × weights overflows f32: inf is the right f32 answer
    // there).
    let blocks: Vec<usize> = (0..f.kinds.len())
        .filter(|&b| {
            let k = &f.kinds[b];
            k != "huge"
        })
        .collect();
    let mut rng = Rng::new(16);
    for k in tables("integer_dot_products_match_an_f64_dot_over_the_exact_activations") {
        for (rows, nb) in [(1usize, 1usize), (1, 7), (3, 5), (5, 8), (7, 3)] {
            let n_in = nb * 32;
            let n_out = 9;
            // Activation rows: consecutive fixture blocks (wrapping).
            let start = rng.next_u64() as usize % blocks.len();
            let xb: Vec<usize> = (0..rows * nb)
                .map(|i| blocks[(start + i) % blocks.len()])
                .collect();
            let x: Vec<f32> = xb
                .iter()
                .flat_map(|&b| f.x[b * 32..b * 32 + 32].iter().copied())
                .collect();
            // Random Q8_0 weights, q in -128..=127 (the AVX2 sign trick's worst case, -128).
            let mut w = vec![0u8; n_out * nb * 34];
            for blk in w.chunks_exact_mut(34) {
                let d = f16::from_f32((rng.next_f32() + 0.01) * 0.1);
                blk[..2].copy_from_slice(&d.to_le_bytes());
                for q in &mut blk[2..] {
                    *q = rng.next_u64() as u8;
                }
            }
            let wt = WeightTensor::from_bytes("w", DType::Q8_0, vec![n_out, n_in], &w).unwrap();
            let mut out = vec![f32::NAN; rows * n_out];
            matmul_with(&k, &mut out, &x, rows, &wt, None).unwrap();
            for r in 0..rows {
                for o in 0..n_out {
                    let (mut exact, mut abs) = (0.0f64, 0.0f64);
                    for bi in 0..nb {
                        let b = xb[r * nb + bi];
                        let wb = &w[(o * nb + bi) * 34..][..34];
                        let dw = f16::from_le_bytes([wb[0], wb[1]]).to_f64();
                        let dx = dx_ref(&f.x[b * 32..b * 32 + 32]) as f64;
                        let prods: Vec<i64> = (0..32)
                            .map(|j| (wb[2 + j] as i8 as i64) * q_ref(&f, b, j) as i64)
                            .collect();
                        exact += dw * dx * prods.iter().sum::<i64>() as f64;
                        abs += dw * dx * prods.iter().map(|p| p.abs()).sum::<i64>() as f64;
                    }
                    let got = out[r * n_out + o] as f64;
                    let tol = (nb as f64 + 4.0) * f32::EPSILON as f64 * abs + 1e-38;
                    assert!(
                        (got - exact).abs() <= tol,
                        "{}: rows {rows}, {nb} blocks, out[{r},{o}] = {got}, f64 {exact}, tol {tol}",
                        k.describe()
                    );
                }
            }
        }
    }
}
