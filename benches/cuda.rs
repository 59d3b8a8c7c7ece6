//! CUDA kernel and end-to-end benchmarks: `cargo bench --features cuda --bench cuda`.
//!
//! On a GPU: the device-copy ceiling, the decode matvec at the shapes of
//! DeepSeek-R1-Distill-Qwen-1.5B and Llama-3-8B (GB/s and % of the copy ceiling), the prefill
//! GEMM at their shapes (TFLOP/s), decode attention, then a whole random-weight model of each
//! shape (prefill and decode tok/s, GB/s) with its per-kernel table. Each kernel time is the
//! median over CUDA events; weights rotate among enough copies to exceed the L2 cache, so the
//! numbers are DRAM numbers. Lines starting with `TABLE|` are the summary that
//! scripts/gpu-check.sh prints last.
//!
//! Without a GPU (or without the feature) it runs a small smoke pass on the PTX interpreter and
//! prints the interpreter's counters (global sectors vs ideal: coalescing; bank conflicts), which
//! is what can be learnt about the kernels there. Speed is never asserted.

use std::time::Instant;

use half::bf16;
use minfer::backend::{AttnParams, Backend, KvShape, StepLayout};
use minfer::internals::cuda::driver::GpuDriver;
use minfer::internals::cuda::sim::SimDriver;
use minfer::internals::cuda::{CudaBackend, CudaMat};
use minfer::{DType, WeightTensor};

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

fn random_bf16<D: GpuDriver + 'static>(
    b: &CudaBackend<D>,
    rng: &mut Rng,
    n: usize,
    k: usize,
) -> CudaMat<D> {
    let v: Vec<bf16> = (0..n * k)
        .map(|_| bf16::from_f32(rng.f32() * 0.05))
        .collect();
    let w = WeightTensor::from_bytes("w", DType::BF16, vec![n, k], bytemuck::cast_slice(&v))
        .expect("tensor");
    b.upload(&w).expect("upload")
}

fn random_buf<D: GpuDriver + 'static>(
    b: &CudaBackend<D>,
    rng: &mut Rng,
    rows: usize,
    width: usize,
) -> minfer::internals::CudaBuf<D> {
    let v: Vec<f32> = (0..rows * width).map(|_| rng.f32()).collect();
    let t = b
        .upload(&WeightTensor::from_f32("x", vec![rows, width], &v))
        .expect("upload");
    let mut out = b.alloc(rows * width).expect("alloc");
    let ids: Vec<u32> = (0..rows as u32).collect();
    b.embed(&mut out, &t, &ids).expect("embed");
    out
}

/// Median seconds per call of `kernel` over `reps` calls of `f`, from the driver's counters.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
fn time_kernel<D: GpuDriver + 'static>(
    b: &CudaBackend<D>,
    kernel: &str,
    reps: usize,
    mut f: impl FnMut(usize),
) -> f64 {
    f(0); // warm-up: module load, first-touch
    b.synchronize().expect("sync");
    let _ = b.take_profile();
    let mut per = Vec::new();
    for i in 0..reps {
        f(i + 1);
        let p = b.take_profile();
        if let Some(row) = p.iter().find(|r| r.op == kernel) {
            per.push(row.seconds / row.calls.max(1) as f64);
        }
    }
    per.sort_by(f64::total_cmp);
    per.get(per.len() / 2).copied().unwrap_or(f64::NAN)
}

#[cfg(feature = "cuda")]
fn gpu() -> Option<CudaBackend<minfer::internals::cuda::cudarc_driver::CudarcDriver>> {
    match minfer::internals::cuda::cudarc_driver::CudarcDriver::new(0) {
        Ok(d) => Some(CudaBackend::new(d).expect("kernels load")),
        Err(e) => {
            eprintln!("no GPU ({e}); running the interpreter smoke pass instead");
            None
        }
    }
}

fn main() {
    // MINFER_PREDICT=h200[,a100] [MINFER_PREDICT_MODELS=qwen2-1.5b,llama3-8b]
    // [MINFER_PREDICT_CTX=1024] [MINFER_PREDICT_KERNELS=dir of .ptx replacing the shipped
    // ones]: the performance model's predicted decode tables instead.
    if let Ok(gpus) = std::env::var("MINFER_PREDICT") {
        predict_tables(&gpus);
        return;
    }
    #[cfg(feature = "cuda")]
    if let Some(b) = gpu() {
        gpu_benches(&b);
        return;
    }
    sim_smoke();
}

#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
fn gpu_benches<D: GpuDriver + 'static>(b: &CudaBackend<D>) {
    println!("device: {}", b.name());
    b.set_profiling(true);
    let copy = b
        .measure_copy_bandwidth(1 << 30, 10)
        .expect("copy bandwidth");
    println!("copy_f32 device copy: {copy:.0} GB/s (read + write)");
    println!("TABLE|copy ceiling (copy_f32 kernel)|{copy:.0} GB/s");
    let mut rng = Rng(42);

    // decode matvec: (name, N, K)
    // (model, [(matrix, n_out, n_in)])
    type Shapes<'a> = &'a [(&'a str, &'a [(&'a str, usize, usize)])];
    let shapes: Shapes = &[
        (
            "qwen2-1.5b",
            &[
                ("q/o_proj", 1536, 1536),
                ("k/v_proj", 256, 1536),
                ("gate/up", 8960, 1536),
                ("down", 1536, 8960),
                ("lm_head", 151936, 1536),
            ],
        ),
        (
            "llama3-8b",
            &[
                ("q/o_proj", 4096, 4096),
                ("k/v_proj", 1024, 4096),
                ("gate/up", 14336, 4096),
                ("down", 4096, 14336),
                ("lm_head", 128256, 4096),
            ],
        ),
    ];
    println!(
        "\n{:<12} {:<9} {:>7} {:>6} {:>9} {:>8} {:>6}",
        "model", "matrix", "N", "K", "us", "GB/s", "%copy"
    );
    for (model, mats) in shapes {
        for &(name, n, k) in mats.iter() {
            let bytes = n * k * 2;
            // rotate over enough copies that the set exceeds any L2 (H200: 50 MB) fourfold
            let copies = (256usize << 20).div_ceil(bytes).clamp(1, 32);
            let ws: Vec<_> = (0..copies)
                .map(|_| random_bf16(b, &mut rng, n, k))
                .collect();
            let x = random_buf(b, &mut rng, 1, k);
            let mut out = b.alloc(n).expect("alloc");
            let s = time_kernel(b, "matvec_bf16", 30, |i| {
                b.matmul(&mut out, &x, &ws[i % copies], None, 1)
                    .expect("matvec")
            });
            let gbs = bytes as f64 / s / 1e9;
            println!(
                "{model:<12} {name:<9} {n:>7} {k:>6} {:>9.1} {gbs:>8.0} {:>5.0}%",
                s * 1e6,
                100.0 * gbs / copy
            );
        }
    }

    // prefill GEMM at M = 512
    println!(
        "\n{:<12} {:<9} {:>5} {:>7} {:>6} {:>9} {:>8}",
        "model", "matrix", "M", "N", "K", "us", "TFLOP/s"
    );
    for (model, mats) in shapes {
        for &(name, n, k) in mats.iter().filter(|m| m.0 != "lm_head") {
            let m = 512;
            let w = random_bf16(b, &mut rng, n, k);
            let x = random_buf(b, &mut rng, m, k);
            let mut out = b.alloc(m * n).expect("alloc");
            let s = time_kernel(b, "gemm_bf16", 10, |_| {
                b.matmul(&mut out, &x, &w, None, m).expect("gemm")
            });
            let tf = 2.0 * (m * n * k) as f64 / s / 1e12;
            println!(
                "{model:<12} {name:<9} {m:>5} {n:>7} {k:>6} {:>9.1} {tf:>8.1}",
                s * 1e6
            );
            if name == "gate/up" {
                println!("TABLE|gemm_bf16 {model} gate/up 512x{n}x{k}|{tf:.1} TFLOP/s");
            }
        }
    }

    // decode attention over a long history
    println!(
        "\n{:<12} {:>6} {:>9} {:>8} {:>6}",
        "attention", "ctx", "us", "GB/s", "%copy"
    );
    for &(model, nh, nkv, hd) in &[
        ("qwen2-1.5b", 12usize, 2usize, 128usize),
        ("llama3-8b", 32, 8, 128),
    ] {
        for &ctx in &[1024usize, 4096] {
            let shape = KvShape::contiguous(1, ctx + 1, 32, nkv, hd);
            let mut kv = b.alloc_kv(shape).expect("kv");
            let layout = b
                .layout_of(&StepLayout::contiguous(ctx - 1, 1, shape.blocks))
                .expect("layout");
            let q = random_buf(b, &mut rng, 1, nh * hd);
            let kk = random_buf(b, &mut rng, 1, nkv * hd);
            let mut out = b.alloc(nh * hd).expect("alloc");
            let p = AttnParams {
                n_heads: nh,
                n_kv_heads: nkv,
                head_dim: hd,
                scale: 0.088,
                window: None,
            };
            let s = time_kernel(b, "attn_split_f32", 20, |_| {
                b.attention(&mut out, &q, &kk, &kk, &mut kv, 0, 1, &layout, &p)
                    .expect("attention")
            });
            let bytes = (ctx * nkv * hd * 8) as f64;
            println!(
                "{model:<12} {ctx:>6} {:>9.1} {:>8.0} {:>5.0}%",
                s * 1e6,
                bytes / s / 1e9,
                100.0 * bytes / s / 1e9 / copy
            );
        }
    }

    // whole models, random weights of the published shapes
    for preset in ["qwen2-1.5b", "llama3-8b"] {
        let opts = minfer::LoadOptions {
            context_len: Some(512),
            max_batch: 128,
            device: minfer::Device::Cuda(0),
            ..Default::default()
        };
        let t = Instant::now();
        let mut m = match minfer::Model::synthetic(preset, DType::BF16, &opts) {
            Ok(m) => m,
            Err(e) => {
                println!("{preset}: {e}");
                continue;
            }
        };
        println!("\n{preset}: loaded in {:.1} s", t.elapsed().as_secs_f64());
        let bo = minfer::bench::BenchOptions {
            prompt_len: 128,
            gen_len: 64,
            repeats: 3,
        };
        match minfer::bench::run(&mut m, &bo) {
            Ok(r) => {
                println!(
                    "{preset}: prefill {:.0} tok/s, decode {:.1} tok/s = {:.0} GB/s = {:.0}% of the copy ceiling",
                    r.prefill_tok_s,
                    r.decode_tok_s,
                    r.decode_gb_s,
                    100.0 * r.decode_gb_s / copy
                );
                println!(
                    "TABLE|{preset} decode (bf16, batch 1)|{:.1} tok/s, {:.0} GB/s, {:.0}% of copy",
                    r.decode_tok_s,
                    r.decode_gb_s,
                    100.0 * r.decode_gb_s / copy
                );
                println!(
                    "TABLE|{preset} prefill 128 tokens|{:.0} tok/s",
                    r.prefill_tok_s
                );
            }
            Err(e) => println!("{preset}: bench failed: {e}"),
        }
    }
}

/// The performance model (src/backend/cuda/predict.rs) over the interpreter's counters.
fn predict_tables(gpus: &str) {
    use minfer::internals::cuda::predict::{predict_decode, DecodeShape, GpuSpec};
    let gpus: Vec<GpuSpec> = gpus
        .split(',')
        .map(|g| GpuSpec::by_name(g.trim()).expect("gpu"))
        .collect();
    let models = std::env::var("MINFER_PREDICT_MODELS")
        .unwrap_or_else(|_| "qwen2-1.5b,llama3-8b".to_string());
    let ctx: usize = std::env::var("MINFER_PREDICT_CTX")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(1024);
    for m in models.split(',') {
        let shape = DecodeShape::preset(m.trim()).expect("shape");
        let t = Instant::now();
        let dir = std::env::var_os("MINFER_PREDICT_KERNELS").map(std::path::PathBuf::from);
        let preds = predict_decode(&shape, ctx, &gpus, dir.as_deref()).expect("predict");
        for p in preds {
            println!("{}", p.table());
            println!(
                "TABLE|{m} decode PREDICTED on {} (model, not measured)|{:.0} us/token, {:.0}% of copy bandwidth",
                p.gpu.name,
                p.device_us(),
                100.0 * p.bw_fraction(true)
            );
        }
        println!("(interpreted in {:.0} s)\n", t.elapsed().as_secs_f64());
    }
}

/// What the interpreter can say about the kernels: instruction counts, coalescing, conflicts.
fn sim_smoke() {
    let b = CudaBackend::new(SimDriver::new()).expect("kernels load");
    println!("device: {}", b.name());
    b.driver().set_profiling(true);
    let mut rng = Rng(7);
    let (n, k) = (64, 1024);
    let w = random_bf16(&b, &mut rng, n, k);
    let x = random_buf(&b, &mut rng, 1, k);
    let mut out = b.alloc(n).expect("alloc");
    b.matmul(&mut out, &x, &w, None, 1).expect("matvec");
    let x17 = random_buf(&b, &mut rng, 17, k);
    let mut out17 = b.alloc(17 * n).expect("alloc");
    b.matmul(&mut out17, &x17, &w, None, 17).expect("gemm");
    let shape = KvShape::contiguous(1, 300, 32, 2, 64);
    let mut kv = b.alloc_kv(shape).expect("kv");
    let layout = b
        .layout_of(&StepLayout::contiguous(200, 1, shape.blocks))
        .expect("layout");
    let q = random_buf(&b, &mut rng, 1, 4 * 64);
    let kk = random_buf(&b, &mut rng, 1, 2 * 64);
    let mut ao = b.alloc(4 * 64).expect("alloc");
    let p = AttnParams {
        n_heads: 4,
        n_kv_heads: 2,
        head_dim: 64,
        scale: 0.125,
        window: None,
    };
    b.attention(&mut ao, &q, &kk, &kk, &mut kv, 0, 1, &layout, &p)
        .expect("attention");
    println!(
        "{:<18} {:>6} {:>12} {:>12} {:>12} {:>10} {:>9}",
        "kernel", "calls", "warp instr", "global ld B", "global st B", "sectors/ideal", "bank cfl"
    );
    for c in b.driver().take_counters() {
        println!(
            "{:<18} {:>6} {:>12} {:>12} {:>12} {:>10.2} {:>9}",
            c.kernel,
            c.launches,
            c.warp_instructions,
            c.global_load_bytes,
            c.global_store_bytes,
            c.global_sectors as f64 / c.global_sectors_ideal.max(1) as f64,
            c.bank_conflicts
        );
    }
}
