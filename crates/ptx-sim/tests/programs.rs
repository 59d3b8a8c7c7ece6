//! The PTX interpreter (`--device sim`) against hand-written PTX programs with known results:
//! each instruction family, divergence and reconvergence, barriers, warp collectives, tensor-core
//! fragments, and planted faults that the sanitizer checks must catch.
//!
//! The programs live in tests/ptx/; each file's header says what it exercises.

use ptx_sim::{DevPtr, Device, KernelArg, LaunchConfig};

/// SplitMix64, the same generator (and so the same inputs for each seed) as minfer's tests.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [-1, 1).
    fn f32(&mut self) -> f32 {
        ((self.next() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
}

fn bytes_of<T: Copy, const N: usize>(v: &[T], to_le: impl Fn(T) -> [u8; N]) -> Vec<u8> {
    v.iter().flat_map(|&x| to_le(x)).collect()
}

fn ptx(name: &str) -> String {
    let p = format!("{}/tests/ptx/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{p}: {e}"))
}

fn cfg(grid: u32, block: u32, shared: u32) -> LaunchConfig {
    LaunchConfig {
        grid: (grid, 1, 1),
        block: (block, 1, 1),
        shared_bytes: shared,
    }
}

fn upload_f32(d: &mut Device, v: &[f32]) -> DevPtr {
    let p = d.alloc(v.len() * 4);
    d.copy_to_device(p, &bytes_of(v, f32::to_le_bytes)).unwrap();
    p
}
fn upload_u32(d: &mut Device, v: &[u32]) -> DevPtr {
    let p = d.alloc(v.len() * 4);
    d.copy_to_device(p, &bytes_of(v, u32::to_le_bytes)).unwrap();
    p
}
fn zeros(d: &mut Device, bytes: usize) -> DevPtr {
    let p = d.alloc(bytes);
    d.memset_zero(p, bytes).unwrap();
    p
}
fn download<T, const N: usize>(
    d: &Device,
    p: DevPtr,
    n: usize,
    from_le: fn([u8; N]) -> T,
) -> Vec<T> {
    let mut b = vec![0u8; n * N];
    d.copy_to_host(&mut b, p).unwrap();
    b.chunks_exact(N)
        .map(|c| from_le(c.try_into().unwrap()))
        .collect()
}
fn download_f32(d: &Device, p: DevPtr, n: usize) -> Vec<f32> {
    download(d, p, n, f32::from_le_bytes)
}
fn download_u32(d: &Device, p: DevPtr, n: usize) -> Vec<u32> {
    download(d, p, n, u32::from_le_bytes)
}

/// Load `file` and launch `entry`; returns the driver error text on failure.
fn launch(
    d: &mut Device,
    file: &str,
    entry: &str,
    c: LaunchConfig,
    args: &[KernelArg],
) -> Result<(), String> {
    let m = d.load_module(file, &ptx(file)).map_err(|e| e.to_string())?;
    let f = d.function(m, entry).map_err(|e| e.to_string())?;
    d.launch(f, c, args).map_err(|e| e.to_string())
}

#[test]
fn vec_add_awkward_sizes() {
    for n in [1usize, 31, 32, 33, 100, 257] {
        let mut d = Device::new();
        let mut rng = Rng::new(n as u64);
        let a: Vec<f32> = (0..n).map(|_| rng.f32()).collect();
        let b: Vec<f32> = (0..n).map(|_| rng.f32()).collect();
        let (pa, pb, pc) = (
            upload_f32(&mut d, &a),
            upload_f32(&mut d, &b),
            zeros(&mut d, n * 4),
        );
        let grid = n.div_ceil(64) as u32;
        let args = [
            KernelArg::Ptr(pa),
            KernelArg::Ptr(pb),
            KernelArg::Ptr(pc),
            KernelArg::F32(0.5),
            KernelArg::U32(n as u32),
        ];
        launch(
            &mut d,
            "vec_add.ptx",
            "vec_add_f32",
            cfg(grid, 64, 0),
            &args,
        )
        .unwrap();
        let c = download_f32(&d, pc, n);
        for i in 0..n {
            // fma is exact-then-rounded on both sides: bitwise equal.
            assert_eq!(c[i], b[i].mul_add(0.5, a[i]), "n={n} i={i}");
        }
    }
}

#[test]
fn block_sum_with_shuffles_and_barrier() {
    let mut d = Device::new();
    let blocks = 3;
    let threads = 128;
    let mut rng = Rng::new(7);
    let x: Vec<f32> = (0..blocks * threads).map(|_| rng.f32()).collect();
    let (px, po) = (upload_f32(&mut d, &x), zeros(&mut d, blocks * 4));
    launch(
        &mut d,
        "block_sum.ptx",
        "block_sum_f32",
        cfg(blocks as u32, threads as u32, 0),
        &[KernelArg::Ptr(px), KernelArg::Ptr(po)],
    )
    .unwrap();
    let o = download_f32(&d, po, blocks);
    for b in 0..blocks {
        let want: f32 = x[b * threads..(b + 1) * threads].iter().sum();
        // Different summation order: 128 values in [-1, 1], f32: 1e-4 absolute is ample.
        assert!((o[b] - want).abs() < 1e-4, "block {b}: {} vs {want}", o[b]);
    }
}

#[test]
fn argument_mismatch_is_an_error() {
    let mut d = Device::new();
    let e = launch(
        &mut d,
        "vec_add.ptx",
        "vec_add_f32",
        cfg(1, 32, 0),
        &[KernelArg::U32(1)],
    )
    .unwrap_err();
    assert!(
        e.contains("vec_add_f32") && e.contains("5 parameters"),
        "{e}"
    );
    let p = zeros(&mut d, 4);
    let args = [
        KernelArg::Ptr(p),
        KernelArg::Ptr(p),
        KernelArg::Ptr(p),
        KernelArg::F32(0.5),
        KernelArg::U64(1),
    ];
    let e = launch(&mut d, "vec_add.ptx", "vec_add_f32", cfg(1, 32, 0), &args).unwrap_err();
    assert!(e.contains("parameter `n`"), "{e}");
}

fn int_reference(a: u32, b: u32) -> [u32; 24] {
    let (sa, sb) = (a as i32, b as i32);
    let p1 = sa < sb;
    let p2 = a > b;
    let flags = (p1 && p2) as u32 + 2 * ((a != 0) && p1) as u32 + 4 * ((a == 0) && p1) as u32;
    let prmt = (a & 0xff) | (b & 0xff) << 8 | ((a >> 8) & 0xff) << 16 | ((b >> 8) & 0xff) << 24;
    [
        a.wrapping_add(b),
        a.wrapping_sub(b),
        a.wrapping_mul(b),
        ((a as u64 * b as u64) >> 32) as u32,
        ((sa as i64 * sb as i64) >> 32) as u32,
        ((sa as i64 * sb as i64) >> 32) as u32,
        a.checked_div(b).unwrap_or(u32::MAX),
        if b == 0 {
            a
        } else {
            sa.wrapping_rem(sb) as u32
        },
        sa.min(sb) as u32,
        a.max(b),
        sa.wrapping_abs() as u32,
        sb.wrapping_neg() as u32,
        !((a ^ b) | (a & 0xff00ff00)),
        a << (b & 31),
        (sa >> (b & 31)) as u32,
        0,
        flags,
        a.count_ones() | b.leading_zeros() << 8,
        a.reverse_bits(),
        ((a >> 4) & 0xff) ^ ((sb >> 28) as u32),
        prmt,
        a.wrapping_mul(b).wrapping_add(12345),
        a as u16 as i16 as i32 as u32,
        b.rotate_left(16),
    ]
}

#[test]
fn integer_alu_matches_reference() {
    let mut d = Device::new();
    let n = 96;
    let mut rng = Rng::new(42);
    let mut a: Vec<u32> = (0..n).map(|_| rng.next() as u32).collect();
    let mut b: Vec<u32> = (0..n).map(|_| rng.next() as u32).collect();
    // Edge cases: zero divisor, small values, i32::MIN / -1, equal operands.
    b[0] = 0;
    a[1] = 7;
    b[1] = 3;
    a[2] = i32::MIN as u32;
    b[2] = u32::MAX;
    a[3] = 0;
    b[3] = 5;
    a[4] = 1234;
    b[4] = 1234;
    let (pa, pb, po) = (
        upload_u32(&mut d, &a),
        upload_u32(&mut d, &b),
        zeros(&mut d, n * 96),
    );
    launch(
        &mut d,
        "alu_int.ptx",
        "alu_int",
        cfg(1, n as u32, 0),
        &[KernelArg::Ptr(pa), KernelArg::Ptr(pb), KernelArg::Ptr(po)],
    )
    .unwrap();
    let out = download_u32(&d, po, n * 24);
    for t in 0..n {
        let want = int_reference(a[t], b[t]);
        for k in 0..24 {
            assert_eq!(
                out[t * 24 + k],
                want[k],
                "thread {t} op {k}: a={:#x} b={:#x}",
                a[t],
                b[t]
            );
        }
    }
}

fn bf16_rne(x: f32) -> u16 {
    if x.is_nan() {
        return 0x7fff;
    }
    let b = x.to_bits();
    ((b + 0x7fff + ((b >> 16) & 1)) >> 16) as u16
}

/// (value, tolerance in relative terms; 0 = bitwise).
fn float_reference(x: f32, y: f32) -> Vec<(u32, f32)> {
    let bits = |v: f32| v.to_bits();
    let exact = |v: f32| (bits(v), 0.0);
    // The .approx instructions have a few ulp of error on hardware; the interpreter computes
    // the exact value, and the test allows 1e-6 relative (about 8 ulp) so it states the contract.
    let approx = |v: f32| (bits(v), 1e-6);
    let flags = (x.is_nan() || y.is_nan() || x < y) as u32
        + 2 * (x >= y) as u32
        + 4 * (!x.is_nan() && !y.is_nan()) as u32
        + 8 * (x.is_nan() || x >= y) as u32;
    let rzi = {
        let v = (x * 1000.0).trunc();
        if v.is_nan() {
            0
        } else {
            v.clamp(i32::MIN as f32, i32::MAX as f32) as i32
        }
    };
    let f16rt = if x.is_nan() {
        f32::NAN
    } else {
        half::f16::from_f32(x).to_f32()
    };
    let bf16rt = f32::from_bits((bf16_rne(x) as u32) << 16);
    vec![
        exact(x + y),
        exact(x - y),
        exact(x * y),
        exact(x / y),
        approx(x / y),
        exact(x.min(y)),
        exact(x.max(y)),
        exact(x.abs()),
        exact(-x),
        exact(x.abs().sqrt()),
        approx(1.0 / x.abs().sqrt()),
        exact(1.0 / x),
        approx(x.exp2()),
        approx(x.abs().log2()),
        approx(x.tanh()),
        approx(x.sin()),
        approx(x.cos()),
        exact(x.mul_add(y, 1.5)),
        (flags, 0.0),
        exact((x * 10.0).round_ties_even()),
        (rzi as u32, 0.0),
        (((bf16_rne(x) as u32) << 16) | bf16_rne(y) as u32, 0.0),
        exact(f16rt),
        exact(bf16rt),
        exact(x.max(0.5)),
        exact(rzi as f32),
    ]
}

#[test]
fn float_alu_matches_reference() {
    let mut d = Device::new();
    let mut rng = Rng::new(3);
    let mut x: Vec<f32> = (0..64).map(|_| rng.f32() * 8.0).collect();
    let mut y: Vec<f32> = (0..64).map(|_| rng.f32() * 8.0).collect();
    let specials = [
        (f32::NAN, 1.0),
        (1.0, f32::NAN),
        (f32::INFINITY, 2.0),
        (-0.0, 0.0),
        (1e30, 1e-30),
        (-3.5, 0.0),
        (65520.0, 1.0),                      // rounds to f16 infinity
        (f32::from_bits(0x3f80_8000), 1.0),  // bf16 halfway, ties to even
        (f32::from_bits(0x3f81_8000), -1.0), // bf16 halfway, odd: rounds up
        (2.5e-3, 4.0),
    ];
    for (i, (a, b)) in specials.iter().enumerate() {
        x[i] = *a;
        y[i] = *b;
    }
    let n = x.len();
    let (px, py, po) = (
        upload_f32(&mut d, &x),
        upload_f32(&mut d, &y),
        zeros(&mut d, n * 104),
    );
    launch(
        &mut d,
        "alu_float.ptx",
        "alu_float",
        cfg(1, n as u32, 0),
        &[KernelArg::Ptr(px), KernelArg::Ptr(py), KernelArg::Ptr(po)],
    )
    .unwrap();
    let out = download_u32(&d, po, n * 26);
    for t in 0..n {
        for (k, (want, tol)) in float_reference(x[t], y[t]).into_iter().enumerate() {
            let got = out[t * 26 + k];
            let (g, w) = (f32::from_bits(got), f32::from_bits(want));
            let ok = got == want
                || (g.is_nan() && w.is_nan() && tol >= 0.0 && k != 18 && k != 20 && k != 21)
                || (tol > 0.0 && (g - w).abs() <= tol * w.abs().max(1e-30));
            assert!(
                ok,
                "thread {t} op {k}: x={:e} y={:e} got {got:#x} ({g:e}) want {want:#x} ({w:e})",
                x[t], y[t]
            );
        }
    }
}

#[test]
fn divergent_branches_reconverge() {
    let mut d = Device::new();
    let n = 64;
    let po = zeros(&mut d, n * 16);
    launch(
        &mut d,
        "divergence.ptx",
        "divergence",
        cfg(1, n as u32, 0),
        &[KernelArg::Ptr(po)],
    )
    .unwrap();
    let out = download_u32(&d, po, n * 4);
    let acc = |t: u32| -> u32 {
        let mut a = if t & 1 == 1 {
            if t & 2 != 0 {
                10
            } else {
                20
            }
        } else if t.is_multiple_of(5) {
            60
        } else {
            30
        };
        for i in 0..t % 7 {
            a += i;
        }
        a
    };
    for t in 0..n as u32 {
        let warp0 = t & !31;
        let ballot = (0..32)
            .filter(|l| acc(warp0 + l) > 40)
            .fold(0u32, |m, l| m | 1 << l);
        let mut i = 0;
        loop {
            i += 1;
            if i * 3 > t % 11 || i > 100 {
                break;
            }
        }
        let o = &out[t as usize * 4..t as usize * 4 + 4];
        assert_eq!(o, [acc(t), acc(warp0), ballot, i], "thread {t}");
    }
}

#[test]
fn warp_collectives_match_cuda_semantics() {
    let mut d = Device::new();
    let n = 64;
    let mut rng = Rng::new(11);
    let v: Vec<u32> = (0..n).map(|_| (rng.next() % 64) as u32).collect();
    let (pi, po) = (upload_u32(&mut d, &v), zeros(&mut d, n * 48));
    launch(
        &mut d,
        "collectives.ptx",
        "collectives",
        cfg(1, n as u32, 0),
        &[KernelArg::Ptr(pi), KernelArg::Ptr(po)],
    )
    .unwrap();
    let out = download_u32(&d, po, n * 12);
    for t in 0..n {
        let w0 = t & !31;
        let lane = t % 32;
        let warp = &v[w0..w0 + 32];
        // CUDA's __shfl_*_sync(width) definitions, written independently of the PTX formula.
        let width = 8;
        let down_ok = lane % width + 3 < width;
        let down = if down_ok { warp[lane + 3] } else { warp[lane] };
        let up_ok = lane % width >= 2;
        let up = if up_ok { warp[lane - 2] } else { warp[lane] };
        let idx = warp[lane / width * width + 5];
        let bfly = warp[lane ^ 9];
        let all = warp.iter().all(|&x| x > 3) as u32;
        let any = warp.iter().any(|&x| x > 60) as u32;
        let uni = (w0 + 32 <= 40 || w0 >= 40) as u32;
        let sum = warp.iter().fold(0u32, |a, &x| a.wrapping_add(x));
        let min = warp.iter().map(|&x| 50 - x as i32).min().unwrap() as u32;
        let max = *warp.iter().max().unwrap();
        let and = warp.iter().fold(u32::MAX, |a, &x| a & x);
        let or = warp.iter().fold(0, |a, &x| a | x);
        let xor = warp.iter().fold(0, |a, &x| a ^ x);
        let mix = max ^ (and << 8) ^ (or << 16) ^ (xor << 24);
        let want = [
            down,
            down_ok as u32,
            up,
            up_ok as u32,
            idx,
            bfly,
            all,
            any,
            uni,
            sum,
            min,
            mix,
        ];
        assert_eq!(&out[t * 12..t * 12 + 12], &want, "thread {t}");
    }
}

fn upload_u16(d: &mut Device, v: &[u16]) -> DevPtr {
    let p = d.alloc(v.len() * 2);
    d.copy_to_device(p, &bytes_of(v, u16::to_le_bytes)).unwrap();
    p
}

/// A (16x16) · B (16x8) + C against a CPU matmul in f64.
fn check_mma(entry: &str, bf16: bool) {
    let mut d = Device::new();
    let mut rng = Rng::new(if bf16 { 5 } else { 6 });
    let round = |x: f32| -> (u16, f32) {
        if bf16 {
            let h = half::bf16::from_f32(x);
            (h.to_bits(), h.to_f32())
        } else {
            let h = half::f16::from_f32(x);
            (h.to_bits(), h.to_f32())
        }
    };
    let a: Vec<(u16, f32)> = (0..256).map(|_| round(rng.f32() * 2.0)).collect();
    let b: Vec<(u16, f32)> = (0..128).map(|_| round(rng.f32() * 2.0)).collect(); // [k][n]
    let c: Vec<f32> = (0..128).map(|_| rng.f32()).collect();
    let a_bits: Vec<u16> = a.iter().map(|x| x.0).collect();
    let b_bits: Vec<u16> = if bf16 {
        b.iter().map(|x| x.0).collect()
    } else {
        // f16 kernel takes B transposed: [n][k]
        (0..128).map(|i| b[(i % 16) * 8 + i / 16].0).collect()
    };
    let (pa, pb, pc, pd) = (
        upload_u16(&mut d, &a_bits),
        upload_u16(&mut d, &b_bits),
        upload_f32(&mut d, &c),
        zeros(&mut d, 512),
    );
    launch(
        &mut d,
        "mma.ptx",
        entry,
        cfg(1, 32, 0),
        &[
            KernelArg::Ptr(pa),
            KernelArg::Ptr(pb),
            KernelArg::Ptr(pc),
            KernelArg::Ptr(pd),
        ],
    )
    .unwrap();
    let out = download_f32(&d, pd, 128);
    for i in 0..16 {
        for j in 0..8 {
            let mut s = c[i * 8 + j] as f64;
            let mut mag = s.abs();
            for k in 0..16 {
                let p = a[i * 16 + k].1 as f64 * b[k * 8 + j].1 as f64;
                s += p;
                mag += p.abs();
            }
            // Products of 16-bit floats are exact in f32; 17 f32 additions: a few ulp of the
            // magnitude sum.
            let got = out[i * 8 + j] as f64;
            assert!(
                (got - s).abs() <= 1e-6 * mag + 1e-7,
                "{entry} D[{i}][{j}] = {got}, want {s}"
            );
        }
    }
}

#[test]
fn mma_bf16_tile_matches_cpu_matmul() {
    check_mma("mma_bf16", true);
}

#[test]
fn mma_f16_tile_matches_cpu_matmul() {
    check_mma("mma_f16", false);
}

#[test]
fn ldmatrix_variants() {
    let mut d = Device::new();
    let m: Vec<u16> = (0..256u16)
        .map(|i| i.wrapping_mul(0x9e37) ^ 0x5a5a)
        .collect();
    let (pi, po) = (upload_u16(&mut d, &m), zeros(&mut d, 32 * 44));
    launch(
        &mut d,
        "ldmatrix.ptx",
        "ldmatrix_all",
        cfg(1, 32, 512),
        &[KernelArg::Ptr(pi), KernelArg::Ptr(po)],
    )
    .unwrap();
    let out = download_u32(&d, po, 32 * 11);
    // Matrix mat, row r, col c sits at element mat*64 + r*8 + c. Thread l holds row l/4,
    // columns 2*(l%4) and +1 (transposed: those become rows, l/4 the column).
    let el = |mat: usize, r: usize, c: usize| m[mat * 64 + r * 8 + c] as u32;
    for l in 0..32 {
        let (r, c) = (l / 4, 2 * (l % 4));
        let plain = |mat| el(mat, r, c) | el(mat, r, c + 1) << 16;
        let trans = |mat| el(mat, c, r) | el(mat, c + 1, r) << 16;
        let want = [
            plain(0),
            plain(1),
            plain(2),
            plain(3),
            trans(0),
            trans(1),
            trans(2),
            trans(3),
            plain(0),
            plain(1),
            trans(0),
        ];
        assert_eq!(&out[l * 11..l * 11 + 11], &want, "lane {l}");
    }
}

#[test]
fn atomics_and_reductions() {
    let mut d = Device::new();
    let n = 96u32;
    let init: [u32; 10] = [0, i32::MIN as u32, u32::MAX, 0, 0, 0, 0, 0, 0, 0];
    let (pc, po) = (upload_u32(&mut d, &init), zeros(&mut d, n as usize * 8));
    launch(
        &mut d,
        "atomics.ptx",
        "atomics",
        cfg(1, n, 0),
        &[KernelArg::Ptr(pc), KernelArg::Ptr(po)],
    )
    .unwrap();
    let c = download_u32(&d, pc, 10);
    let out = download_u32(&d, po, n as usize * 2);
    let vals: Vec<i32> = (0..n).map(|t| ((t * 37) % 101) as i32 - 50).collect();
    assert_eq!(c[0], n);
    assert_eq!(c[1] as i32, *vals.iter().max().unwrap());
    assert_eq!(c[2], vals.iter().map(|v| (v + 1000) as u32).min().unwrap());
    assert_eq!(c[3], 2 * n);
    assert!(c[4] < n, "exch leaves some thread's id");
    assert_eq!(f32::from_bits(c[5]), 0.5 * n as f32);
    assert_eq!(c[6], n % 7, "atom.inc wraps at 6");
    assert_eq!(
        c[8] as u64 | (c[9] as u64) << 32,
        (0..n as u64).sum::<u64>()
    );
    let mut tickets: Vec<u32> = out[..n as usize].to_vec();
    tickets.sort_unstable();
    assert_eq!(tickets, (0..n).collect::<Vec<_>>());
    let mut shared: Vec<u32> = out[n as usize..].to_vec();
    shared.sort_unstable();
    assert_eq!(shared, (0..n).map(|k| 100 + 3 * k).collect::<Vec<_>>());
}

#[test]
fn cp_async_sizes_and_zero_fill() {
    let mut d = Device::new();
    let src: Vec<u32> = (0..64).map(|i| 0x1000 + i).collect();
    let (ps, po) = (upload_u32(&mut d, &src), zeros(&mut d, 256));
    launch(
        &mut d,
        "cp_async.ptx",
        "cp_async",
        cfg(1, 32, 0),
        &[KernelArg::Ptr(ps), KernelArg::Ptr(po)],
    )
    .unwrap();
    let out = download_u32(&d, po, 64);
    for i in 0..64 {
        let want = match i {
            0..=31 => src[i],
            32..=47 if i % 2 == 0 => src[i],
            32..=55 => 0,
            _ => 0xAAAA_AAAA,
        };
        assert_eq!(out[i], want, "word {i}");
    }
}

/// Line number of the `// @marker` comment in a tests/ptx file.
fn line_of(file: &str, marker: &str) -> usize {
    let tag = format!("// @{marker}");
    ptx(file)
        .lines()
        .position(|l| l.trim_end().ends_with(&tag))
        .map(|i| i + 1)
        .unwrap_or_else(|| panic!("{tag} not in {file}"))
}

fn expect_fault(
    file: &str,
    entry: &str,
    c: LaunchConfig,
    args: &[KernelArg],
    d: &mut Device,
    needles: &[&str],
) -> String {
    let e = launch(d, file, entry, c, args).expect_err("the planted fault was not caught");
    for n in needles {
        assert!(e.contains(n), "error should mention {n:?}: {e}");
    }
    e
}

#[test]
fn planted_out_of_bounds_read() {
    let mut d = Device::new();
    let a = upload_u32(&mut d, &[1, 2, 3, 4, 5]);
    let o = zeros(&mut d, 64);
    let line = format!("faults.ptx:{}", line_of("faults.ptx", "oob"));
    // Six threads over five elements: thread 5 reads 0 bytes past the end.
    let e = expect_fault(
        "faults.ptx",
        "oob_read",
        cfg(1, 6, 0),
        &[KernelArg::Ptr(a), KernelArg::Ptr(o)],
        &mut d,
        &[
            "oob_read",
            &line,
            "out-of-bounds global load",
            "thread (5, 0, 0)",
            "block (0, 0, 0)",
        ],
    );
    assert!(e.contains(&format!("{:#x}", a.0 + 20)), "{e}");
    // The same kernel within bounds runs.
    launch(
        &mut d,
        "faults.ptx",
        "oob_read",
        cfg(1, 5, 0),
        &[KernelArg::Ptr(a), KernelArg::Ptr(o)],
    )
    .unwrap();
}

#[test]
fn planted_atomic_faults() {
    let mut d = Device::new();
    let a = upload_u32(&mut d, &[0; 4]);
    let line = format!("faults.ptx:{}", line_of("faults.ptx", "atomic_oob"));
    let e = expect_fault(
        "faults.ptx",
        "atomic_oob",
        cfg(1, 5, 0),
        &[KernelArg::Ptr(a)],
        &mut d,
        &["out-of-bounds global atomic", &line, "thread (4, 0, 0)"],
    );
    assert!(e.contains(&format!("{:#x}", a.0 + 16)), "{e}");
    // In bounds, every thread's add lands (on top of those of lanes 0..4 of the faulting
    // launch, which ran before lane 4 faulted).
    launch(
        &mut d,
        "faults.ptx",
        "atomic_oob",
        cfg(1, 4, 0),
        &[KernelArg::Ptr(a)],
    )
    .unwrap();
    assert_eq!(download_u32(&d, a, 4), [2, 2, 2, 2]);
    let line = format!(
        "faults.ptx:{}",
        line_of("faults.ptx", "shared_atomic_uninit")
    );
    expect_fault(
        "faults.ptx",
        "shared_atomic_uninit",
        cfg(1, 1, 0),
        &[],
        &mut d,
        &["atomic on uninitialised Shared memory", &line],
    );
}

/// The errors carry their culprit in fields, not only in the message.
#[test]
fn errors_name_their_culprit_in_fields() {
    use ptx_sim::Error;
    let mut d = Device::new();
    let a = upload_u32(&mut d, &[1, 2, 3, 4, 5]);
    let o = zeros(&mut d, 64);
    let m = d.load_module("faults.ptx", &ptx("faults.ptx")).unwrap();
    let f = d.function(m, "oob_read").unwrap();
    let args = [KernelArg::Ptr(a), KernelArg::Ptr(o)];
    match d.launch(f, cfg(1, 6, 0), &args).unwrap_err() {
        Error::Fault(x) => {
            assert_eq!(x.kernel, "oob_read");
            assert_eq!(x.module, "faults.ptx");
            let (line, src) = x.line.clone().expect("an instruction is to blame");
            assert_eq!(line as usize, line_of("faults.ptx", "oob"));
            assert!(src.starts_with("ld.global.u32"), "{src}");
            assert_eq!((x.thread, x.block), (Some((5, 0, 0)), (0, 0, 0)));
            assert_eq!(x.address, Some(a.0 + 20));
        }
        e => panic!("expected a fault, got {e:?}"),
    }
    match d.launch(f, cfg(1, 6, 0), &args[..1]).unwrap_err() {
        Error::Launch { kernel, .. } => assert_eq!(kernel, "oob_read"),
        e => panic!("expected a launch error, got {e:?}"),
    }
    match d.function(m, "nope").unwrap_err() {
        Error::NoEntry {
            module,
            entry,
            available,
        } => {
            assert_eq!((module.as_str(), entry.as_str()), ("faults.ptx", "nope"));
            assert!(available.iter().any(|k| k == "oob_read"), "{available:?}");
        }
        e => panic!("expected NoEntry, got {e:?}"),
    }
    let e = d.function(ptx_sim::ModuleId(7), "oob_read").unwrap_err();
    assert_eq!(
        e,
        Error::UnknownHandle {
            what: "module",
            id: 7
        }
    );
    let e = d.free(a.offset(4)).unwrap_err();
    assert!(
        matches!(e, Error::Memory { address, .. } if address == a.0 + 4),
        "{e:?}"
    );
    assert!(e.is_host_side());
    let e = d
        .load_module("unknown_op.ptx", &ptx("unknown_op.ptx"))
        .unwrap_err();
    match &e {
        Error::Ptx {
            module,
            line,
            kernel,
            ..
        } => {
            assert_eq!(module, "unknown_op.ptx");
            assert_eq!(*line as usize, line_of("unknown_op.ptx", "unknown"));
            assert_eq!(kernel.as_deref(), Some("unknown_op"));
        }
        e => panic!("expected a PTX error, got {e:?}"),
    }
    assert!(!e.is_host_side());
    let _: &dyn std::error::Error = &e;
}

#[test]
fn planted_misaligned_access() {
    let mut d = Device::new();
    let a = zeros(&mut d, 16);
    let line = format!("faults.ptx:{}", line_of("faults.ptx", "misaligned"));
    expect_fault(
        "faults.ptx",
        "misaligned",
        cfg(1, 1, 0),
        &[KernelArg::Ptr(a)],
        &mut d,
        &["misaligned", &line, &format!("{:#x}", a.0 + 2)],
    );
}

#[test]
fn planted_uninitialised_reads() {
    let mut d = Device::new();
    let a = d.alloc(16);
    d.copy_to_device(a, &[1, 2, 3, 4]).unwrap(); // bytes 0..4 only
    let o = zeros(&mut d, 4);
    let line = format!("faults.ptx:{}", line_of("faults.ptx", "uninit"));
    expect_fault(
        "faults.ptx",
        "uninit_read",
        cfg(1, 1, 0),
        &[KernelArg::Ptr(a), KernelArg::Ptr(o)],
        &mut d,
        &["uninitialised global", &line],
    );
    let line = format!("faults.ptx:{}", line_of("faults.ptx", "local_uninit"));
    expect_fault(
        "faults.ptx",
        "local_uninit",
        cfg(1, 1, 0),
        &[KernelArg::Ptr(o)],
        &mut d,
        &["uninitialised local", &line],
    );
}

#[test]
fn planted_shared_memory_race() {
    let mut d = Device::new();
    let o = zeros(&mut d, 4);
    let read = format!("faults.ptx:{}", line_of("faults.ptx", "race_read"));
    let write = format!("line {}", line_of("faults.ptx", "race_write"));
    expect_fault(
        "faults.ptx",
        "shared_race",
        cfg(1, 64, 0),
        &[KernelArg::Ptr(o)],
        &mut d,
        &["race", &read, &write, "warp 1", "warp 0"],
    );
    // With the barrier in between, the same exchange is clean.
    launch(
        &mut d,
        "faults.ptx",
        "shared_no_race",
        cfg(2, 64, 0),
        &[KernelArg::Ptr(o)],
    )
    .unwrap();
    assert_eq!(download_u32(&d, o, 1), [77]);
}

#[test]
fn planted_divergent_barrier_deadlock() {
    let mut d = Device::new();
    let a = format!("line {}", line_of("faults.ptx", "bar_a"));
    let b = format!("line {}", line_of("faults.ptx", "bar_b"));
    expect_fault(
        "faults.ptx",
        "divergent_barrier",
        cfg(1, 64, 0),
        &[],
        &mut d,
        &["deadlock", &a, &b],
    );
}

#[test]
fn planted_shared_out_of_bounds_and_bad_membermask() {
    let mut d = Device::new();
    let line = format!("faults.ptx:{}", line_of("faults.ptx", "shared_oob"));
    expect_fault(
        "faults.ptx",
        "shared_oob",
        cfg(1, 1, 64),
        &[],
        &mut d,
        &["out-of-bounds shared store", &line, "shared size 64"],
    );
    // With 68 bytes of dynamic shared memory the same store is in bounds.
    launch(&mut d, "faults.ptx", "shared_oob", cfg(1, 1, 68), &[]).unwrap();
    let line = format!("faults.ptx:{}", line_of("faults.ptx", "membermask"));
    expect_fault(
        "faults.ptx",
        "bad_membermask",
        cfg(1, 32, 0),
        &[],
        &mut d,
        &["membermask 0xffffffff", "0x0000ffff", &line],
    );
}

#[test]
fn unknown_instruction_and_modifier_name_their_line() {
    let mut d = Device::new();
    let e = d
        .load_module("unknown_op.ptx", &ptx("unknown_op.ptx"))
        .unwrap_err()
        .to_string();
    let line = format!("unknown_op.ptx:{}", line_of("unknown_op.ptx", "unknown"));
    assert!(e.contains(&line) && e.contains("frobnicate.b32"), "{e}");
    let e = d
        .load_module("bad_modifier.ptx", &ptx("bad_modifier.ptx"))
        .unwrap_err()
        .to_string();
    let line = format!("bad_modifier.ptx:{}", line_of("bad_modifier.ptx", "badmod"));
    assert!(e.contains(&line) && e.contains("add.rz.f32"), "{e}");
}

#[test]
fn host_side_errors() {
    let mut d = Device::new();
    let p = d.alloc(16);
    assert!(d.free(p.offset(4)).is_err(), "free of an interior pointer");
    assert!(
        d.copy_to_device(p.offset(8), &[0; 16]).is_err(),
        "copy past the end"
    );
    d.free(p).unwrap();
    assert!(d.free(p).is_err(), "double free");
    assert!(d.copy_to_device(p, &[0; 4]).is_err(), "use after free");
    assert_eq!(d.bytes_allocated(), 0);
    let m = d.load_module("vec_add.ptx", &ptx("vec_add.ptx")).unwrap();
    assert!(d
        .function(m, "nope")
        .unwrap_err()
        .to_string()
        .contains("vec_add_f32"));
    assert_eq!(d.compute_capability(), (9, 0));
    assert!(d.total_memory() > 0);
}

#[test]
fn state_spaces_and_addressing() {
    let mut d = Device::new();
    let (bx, by, gx, gy) = (8u32, 5u32, 3u32, 2u32);
    let n = (bx * by * gx * gy) as usize;
    let po = zeros(&mut d, n * 32);
    let c = LaunchConfig {
        grid: (gx, gy, 1),
        block: (bx, by, 1),
        shared_bytes: 0,
    };
    launch(
        &mut d,
        "addressing.ptx",
        "addressing",
        c,
        &[KernelArg::Ptr(po)],
    )
    .unwrap();
    let out = download_u32(&d, po, n * 8);
    for cy in 0..gy {
        for cx in 0..gx {
            for ty in 0..by {
                for tx in 0..bx {
                    let t = ty * bx + tx;
                    let blk = cy * gx + cx;
                    let gid = blk * bx * by + t;
                    let (lane, warp) = (t % 32, t / 32);
                    let want = [
                        [10, 20, 30, 40][(t % 4) as usize],
                        3 + blk,
                        gid * 3,
                        gid + 1000,
                        lane | warp << 8 | lane << 16,
                        ((gid as u64 * 0x1_0000_0001) >> 3) as u32,
                        tx | ty << 8 | cy << 16,
                        gid,
                    ];
                    let g = gid as usize;
                    assert_eq!(
                        &out[g * 8..g * 8 + 8],
                        &want,
                        "block ({cx},{cy}) thread ({tx},{ty})"
                    );
                }
            }
        }
    }
}

#[test]
fn profiling_counters_show_coalescing_and_bank_conflicts() {
    let mut d = Device::new();
    let a = upload_u32(&mut d, &(0..32 * 32).collect::<Vec<u32>>());
    let o = zeros(&mut d, 32 * 4);
    let args = [KernelArg::Ptr(a), KernelArg::Ptr(o)];
    d.set_profiling(true);
    launch(&mut d, "counters.ptx", "coalesced", cfg(1, 32, 0), &args).unwrap();
    launch(&mut d, "counters.ptx", "coalesced", cfg(1, 32, 0), &args).unwrap();
    launch(&mut d, "counters.ptx", "strided", cfg(1, 32, 0), &args).unwrap();
    let c = d.take_counters();
    assert!(d.take_counters().is_empty(), "taking resets");
    let get = |k: &str| {
        c.iter()
            .find(|x| x.kernel == k)
            .unwrap_or_else(|| panic!("no counters for {k}"))
    };
    let (co, st) = (get("coalesced"), get("strided"));
    assert_eq!(co.launches, 2);
    assert_eq!(
        co.warp_instructions,
        2 * 13,
        "13 instructions incl. ret, one warp, two launches"
    );
    assert_eq!(
        (co.global_load_bytes, co.global_store_bytes),
        (2 * 128, 2 * 128)
    );
    assert_eq!((co.shared_load_bytes, co.shared_store_bytes), (0, 2 * 128));
    // One 128-byte warp load plus one 128-byte store: 4 sectors each, the ideal.
    assert_eq!((co.global_sectors, co.global_sectors_ideal), (2 * 8, 2 * 8));
    assert_eq!(co.bank_conflicts, 0);
    // Strided: the load touches 32 sectors (ideal 4); the store is still coalesced.
    assert_eq!((st.global_sectors, st.global_sectors_ideal), (32 + 4, 8));
    // 32 distinct words in one bank: 32 wavefronts, 31 extra.
    assert_eq!(st.bank_conflicts, 31);
    assert!(co.seconds >= 0.0);
    // Off again: nothing is gathered.
    d.set_profiling(false);
    launch(&mut d, "counters.ptx", "coalesced", cfg(1, 32, 0), &args).unwrap();
    assert!(d.take_counters().is_empty());
}

/// Throughput probe: `cargo test --release --test ptx_sim throughput -- --ignored --nocapture`.
/// Prints warp instructions per second; speed is measured here, never asserted.
#[test]
#[ignore]
fn throughput() {
    let mut d = Device::new();
    let a = upload_f32(&mut d, &vec![1.0; 256]);
    let o = zeros(&mut d, 256 * 4);
    let m = d
        .load_module("throughput.ptx", &ptx("throughput.ptx"))
        .unwrap();
    let f = d.function(m, "spin").unwrap();
    let iters = 2000u32;
    let blocks = 16;
    let t0 = std::time::Instant::now();
    d.launch(
        f,
        cfg(blocks, 256, 0),
        &[KernelArg::Ptr(a), KernelArg::Ptr(o), KernelArg::U32(iters)],
    )
    .unwrap();
    let s = t0.elapsed().as_secs_f64();
    let warp_instr = blocks as f64 * 8.0 * (iters as f64 * 5.0 + 10.0);
    eprintln!(
        "{:.1} M warp instructions/s ({:.1} M thread instructions/s), {s:.3} s",
        warp_instr / s / 1e6,
        warp_instr * 32.0 / s / 1e6
    );
}

#[test]
fn planted_cp_async_read_before_wait() {
    let mut d = Device::new();
    let src = upload_u32(&mut d, &vec![7; 128]);
    let line = format!("faults.ptx:{}", line_of("faults.ptx", "inflight"));
    expect_fault(
        "faults.ptx",
        "cp_async_no_wait",
        cfg(1, 32, 0),
        &[KernelArg::Ptr(src)],
        &mut d,
        &["cp.async", "in flight", &line],
    );
}

#[test]
fn cp_async_wait_group_keeps_the_newest_groups_in_flight() {
    let mut d = Device::new();
    let a: Vec<u32> = (0..32).collect();
    let b: Vec<u32> = (0..32).map(|i| 1000 * i).collect();
    let (pa, pb, po) = (
        upload_u32(&mut d, &a),
        upload_u32(&mut d, &b),
        zeros(&mut d, 128),
    );
    let args = |early: u32| {
        [
            KernelArg::Ptr(pa),
            KernelArg::Ptr(pb),
            KernelArg::Ptr(po),
            KernelArg::U32(early),
        ]
    };
    launch(
        &mut d,
        "cp_async.ptx",
        "cp_async_groups",
        cfg(1, 32, 0),
        &args(0),
    )
    .unwrap();
    assert_eq!(
        download_u32(&d, po, 32),
        (0..32).map(|i| 1001 * i).collect::<Vec<_>>()
    );
    let line = format!("cp_async.ptx:{}", line_of("cp_async.ptx", "early"));
    expect_fault(
        "cp_async.ptx",
        "cp_async_groups",
        cfg(1, 32, 0),
        &args(1),
        &mut d,
        &["in flight", &line],
    );
}

#[test]
fn planted_spin_forever_is_reported_as_hung() {
    let mut d = Device::new();
    d.set_step_limit(100_000);
    let line = format!("line {}", line_of("faults.ptx", "spin_bar"));
    expect_fault(
        "faults.ptx",
        "spin_forever",
        cfg(1, 64, 0),
        &[],
        &mut d,
        &["hung", "wait at the barrier", &line],
    );
}

#[test]
fn launch_shape_checks() {
    let mut d = Device::new();
    launch(&mut d, "faults.ptx", "fixed_block", cfg(1, 64, 0), &[]).unwrap();
    let e = launch(&mut d, "faults.ptx", "fixed_block", cfg(1, 32, 0), &[]).unwrap_err();
    assert!(e.contains(".reqntid"), "{e}");
    launch(&mut d, "faults.ptx", "bounded_block", cfg(1, 128, 0), &[]).unwrap();
    let e = launch(&mut d, "faults.ptx", "bounded_block", cfg(1, 129, 0), &[]).unwrap_err();
    assert!(e.contains(".maxntid"), "{e}");
    let e = launch(
        &mut d,
        "faults.ptx",
        "bounded_block",
        cfg(1, 64, 300_000),
        &[],
    )
    .unwrap_err();
    assert!(e.contains("shared memory") && e.contains("maximum"), "{e}");
    let e = launch(
        &mut d,
        "faults.ptx",
        "divergent_barrier",
        cfg(1, 2048, 0),
        &[],
    )
    .unwrap_err();
    assert!(e.contains("block shape"), "{e}");
}

#[test]
fn comments_and_literals_keep_line_numbers() {
    let mut d = Device::new();
    let e = d
        .load_module("comments.ptx", &ptx("comments.ptx"))
        .unwrap_err()
        .to_string();
    let line = format!("comments.ptx:{}", line_of("comments.ptx", "tex"));
    assert!(e.contains(&line) && e.contains("tex.2d"), "{e}");
    // The module without the unsupported kernel runs.
    let src = ptx("comments.ptx");
    let good = &src[..src.find(".visible .entry bad_after_comments").unwrap()];
    let m = d.load_module("comments.ptx", good).unwrap();
    let f = d.function(m, "comments").unwrap();
    let o = zeros(&mut d, 8);
    d.launch(f, cfg(1, 1, 0), &[KernelArg::Ptr(o)]).unwrap();
    assert_eq!(download_u32(&d, o, 2), [(-16i32 + 1) as u32, -16i32 as u32]);
}

/// Directed rounding of a finite f32 to bf16 by bit manipulation (independent of `half`):
/// truncate, then step away from zero when the mode asks for it and bits were dropped.
fn bf16_directed(x: f32, mode: &str) -> u16 {
    if x.is_nan() {
        return 0x7fff;
    }
    let b = x.to_bits();
    let trunc = (b >> 16) as u16;
    let inexact = b & 0xffff != 0;
    let neg = x.is_sign_negative();
    let up_mag = match mode {
        "rz" => false,
        "rm" => inexact && neg,
        "rp" => inexact && !neg,
        _ => unreachable!(),
    };
    // Truncating an infinity keeps it; stepping the magnitude of the largest finite value
    // gives infinity, as IEEE directed rounding requires.
    if up_mag {
        trunc + 1
    } else {
        trunc
    }
}

#[test]
fn cvt_rounding_modes_and_saturation() {
    let mut d = Device::new();
    let x: Vec<f32> = vec![
        1.0,
        f32::from_bits(0x3f80_8000), // halfway: ties to even (down)
        f32::from_bits(0x3f81_8000), // halfway, odd: up
        f32::from_bits(0x3f80_0001), // just above 1
        -f32::from_bits(0x3f80_0001),
        f32::MAX, // rn overflows bf16 to inf, rz stays at max finite
        -f32::MAX,
        f32::NAN,
        f32::INFINITY,
        65519.0, // f16: rn → 65504 (max), rz → 65504
        65520.0, // f16: rn → inf
        -2.5,
        2.5,
        1e-8, // f16 underflow: rn → 0
    ];
    let n = x.len();
    let ints: Vec<i32> = (0..n as i32)
        .map(|k| [-5, 0, 77, 255, 256, 100_000, i32::MIN, 16_777_217][k as usize % 8])
        .collect();
    let ints_u: Vec<u32> = ints.iter().map(|&v| v as u32).collect();
    let (px, pi, po) = (
        upload_f32(&mut d, &x),
        upload_u32(&mut d, &ints_u),
        zeros(&mut d, n * 48),
    );
    launch(
        &mut d,
        "cvt.ptx",
        "cvt_modes",
        cfg(1, n as u32, 0),
        &[KernelArg::Ptr(px), KernelArg::Ptr(pi), KernelArg::Ptr(po)],
    )
    .unwrap();
    let out = download_u32(&d, po, n * 12);
    for t in 0..n {
        let v = x[t];
        let f16 = |v: f32| {
            if v.is_nan() {
                0x7fff
            } else {
                half::f16::from_f32(v).to_bits() as u32
            }
        };
        let f16_rz = {
            let r = half::f16::from_f32(v);
            if v.is_nan() {
                0x7fff
            } else if r.to_f32().abs() > v.abs() {
                r.to_bits() as u32 - 1
            } else {
                r.to_bits() as u32
            }
        };
        let to_i = |r: f32| {
            if r.is_nan() {
                0
            } else {
                r.clamp(i32::MIN as f32, i32::MAX as f32) as i32 as u32
            }
        };
        let want = [
            bf16_rne(v) as u32,
            bf16_directed(v, "rz") as u32,
            bf16_directed(v, "rm") as u32,
            bf16_directed(v, "rp") as u32,
            f16(v),
            f16_rz,
            to_i(v.floor()),
            to_i(v.ceil()),
            ints[t].clamp(0, 255) as u32,
            (ints[t] as f32).to_bits(),
        ];
        assert_eq!(
            &out[t * 12..t * 12 + 10],
            &want,
            "x = {v:e} ({:#x}), i = {}",
            v.to_bits(),
            ints[t]
        );
    }
}
