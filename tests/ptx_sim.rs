//! minfer's side of the PTX interpreter: its shipped kernels decode in it, and the adapter
//! (`backend::cuda::sim::SimDriver`, over the `ptx-sim` crate) maps the interpreter's errors to
//! minfer's. The interpreter's own tests (every instruction family, the sanitizer checks, the
//! counters) live with it: crates/ptx-sim/tests/.

mod common;
use common::Rng;

use minfer::internals::cuda::driver::{DevPtr, GpuDriver, KernelArg, LaunchConfig};
use minfer::internals::cuda::sim::SimDriver;
use minfer::Error;

fn upload_f32(d: &SimDriver, v: &[f32]) -> DevPtr {
    let p = d.alloc(v.len() * 4).unwrap();
    d.copy_to_device(p, bytemuck::cast_slice(v)).unwrap();
    p
}
fn zeros(d: &SimDriver, bytes: usize) -> DevPtr {
    let p = d.alloc(bytes).unwrap();
    d.memset_zero(p, bytes).unwrap();
    p
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

/// A kernel reading one element past the end of its input when launched with n+1 threads.
const OOB: &str = "
.version 8.0
.target sm_90
.address_size 64
.visible .entry copy(.param .u64 a, .param .u64 b)
{
    .reg .b32 %r<3>;
    .reg .b64 %rd<6>;
    ld.param.u64 %rd1, [a];
    ld.param.u64 %rd2, [b];
    mov.u32 %r1, %tid.x;
    mul.wide.u32 %rd3, %r1, 4;
    add.s64 %rd4, %rd1, %rd3;
    ld.global.u32 %r2, [%rd4];
    add.s64 %rd5, %rd2, %rd3;
    st.global.u32 [%rd5], %r2;
    ret;
}
";

/// Kernel faults and bad PTX are `Error::Ptx`; host-side misuse is `Error::Device`; both with
/// the interpreter's message, culprit included.
#[test]
fn adapter_maps_interpreter_errors() {
    let d = SimDriver::new();
    let m = d.load_module("oob.ptx", OOB).unwrap();
    let f = d.function(m, "copy").unwrap();
    let a = zeros(&d, 16);
    let b = zeros(&d, 20);
    let cfg = LaunchConfig {
        grid: (1, 1, 1),
        block: (5, 1, 1),
        shared_bytes: 0,
    };
    let e = d
        .launch(f, cfg, &[KernelArg::Ptr(a), KernelArg::Ptr(b)])
        .unwrap_err();
    let text = e.to_string();
    assert!(matches!(e, Error::Ptx(_)), "{e:?}");
    assert!(
        text.starts_with("ptx: kernel `copy` (oob.ptx:14")
            && text.contains("thread (4, 0, 0)")
            && text.contains("out-of-bounds global load")
            && text.contains(&format!("{:#x}", a.0 + 16)),
        "{text}"
    );
    let e = d
        .load_module("bad.ptx", ".version 8.0\n.target sm_90\n.bogus\n")
        .unwrap_err();
    assert!(
        matches!(e, Error::Ptx(_)) && e.to_string().contains("bad.ptx:3"),
        "{e}"
    );
    let e = d.free(a.offset(4)).unwrap_err();
    assert!(matches!(e, Error::Device(_)), "{e:?}");
    let e = d.function(m, "nope").unwrap_err();
    assert!(
        matches!(e, Error::Device(_)) && e.to_string().contains("copy"),
        "{e}"
    );
    assert_eq!(d.name(), "ptx interpreter");
    d.free(a).unwrap();
    d.free(b).unwrap();
    assert_eq!(d.bytes_allocated(), 0);
}

/// Throughput on a shipped kernel at the tiny fixture models' shapes (matvec_f32, K = 64,
/// N = 192, one row): `cargo test --release --test ptx_sim throughput_matvec -- --ignored
/// --nocapture`.
#[test]
#[ignore]
fn throughput_matvec() {
    let src = std::fs::read_to_string(format!("{}/kernels/matvec.ptx", env!("CARGO_MANIFEST_DIR")))
        .unwrap();
    let d = SimDriver::new();
    let (k, n) = (64usize, 192usize);
    let mut rng = Rng::new(9);
    let x = upload_f32(&d, &(0..k).map(|_| rng.f32()).collect::<Vec<_>>());
    let w = upload_f32(&d, &(0..k * n).map(|_| rng.f32()).collect::<Vec<_>>());
    let o = zeros(&d, n * 4);
    let m = d.load_module("matvec.ptx", &src).unwrap();
    let f = d.function(m, "matvec_f32").unwrap();
    let c = LaunchConfig {
        grid: (n.div_ceil(8) as u32, 1, 1),
        block: (256, 1, 1),
        shared_bytes: 0,
    };
    let args = [
        KernelArg::Ptr(o),
        KernelArg::Ptr(x),
        KernelArg::Ptr(w),
        KernelArg::U64(0),
        KernelArg::U32(k as u32),
        KernelArg::U32(n as u32),
    ];
    d.set_profiling(true);
    d.launch(f, c, &args).unwrap();
    let wi = d.take_counters()[0].warp_instructions;
    d.set_profiling(false);
    let reps = 200;
    let t0 = std::time::Instant::now();
    for _ in 0..reps {
        d.launch(f, c, &args).unwrap();
    }
    let s = t0.elapsed().as_secs_f64() / reps as f64;
    eprintln!("matvec_f32 {k}x{n}: {wi} warp instructions, {:.1} us per launch, {:.1} M warp instructions/s", s * 1e6, wi as f64 / s / 1e6);
}
