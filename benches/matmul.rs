//! CPU matmul and attention throughput at the shapes of SmolLM2-135M and
//! DeepSeek-R1-Distill-Qwen-1.5B (`cargo bench --bench matmul [-- quick] [-- isa=avx2]`).
//!
//! - matvec (decode, rows = 1): each shape is cycled over enough copies of the weights to
//!   exceed the last-level cache, so every call reads its weights from memory as a real decode
//!   step does. Printed: µs per call, GB/s of weights read, and the fraction of the machine's
//!   read bandwidth measured at the start of this run (streaming sum, same thread count).
//! - a whole SmolLM2 decode step's matmuls (30 layers + lm_head, all distinct weights, so every
//!   step reads them from memory), for one sequence and for batched decode steps of 4 and 8
//!   sequences (the server's): ms per step, tokens/s, and the weights' read rate. The batched
//!   matvec reads the weights once per step, so a step of 8 should cost little more than one.
//! - matmat (batched decode, rows = 4 and 8, weights in cache; prefill, rows = 128 and 512):
//!   GFLOP/s, and the fraction of the f32 FMA peak measured at the start of the run (12 FMA
//!   chains per thread).
//! - attention at several context lengths with the strided dot / axpy kernels: one query per
//!   head (decode), q·K, softmax, Σ p·V; GB/s of K and V read.

use std::time::Instant;

use half::{bf16, f16};
use minfer::internals::matmul::matmul_with;
use minfer::internals::simd::{self, Isa, Kernels};
use minfer::{DType, WeightTensor};

struct Rng(u64);
impl Rng {
    fn f32(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    }
}

fn weight(dtype: DType, n_out: usize, n_in: usize, rng: &mut Rng) -> WeightTensor {
    let n = n_out * n_in;
    let bytes: Vec<u8> = match dtype {
        DType::F32 => (0..n).flat_map(|_| rng.f32().to_le_bytes()).collect(),
        DType::BF16 => (0..n)
            .flat_map(|_| bf16::from_f32(rng.f32()).to_le_bytes())
            .collect(),
        DType::F16 => (0..n)
            .flat_map(|_| f16::from_f32(rng.f32()).to_le_bytes())
            .collect(),
        q => {
            // Random blocks with a sane f16 scale (and min) in place; speed does not depend
            // on the values.
            let (be, bb) = q.block();
            let f16_at: &[usize] = match q {
                DType::Q6K => &[208],
                DType::Q8_0 | DType::Q4_0 => &[0],
                _ => &[0, 2],
            };
            let mut b: Vec<u8> = (0..n / be * bb)
                .map(|_| (rng.f32() * 511.0) as i32 as u8)
                .collect();
            for blk in b.chunks_exact_mut(bb) {
                for &o in f16_at {
                    blk[o..o + 2].copy_from_slice(&f16::from_f32(0.01).to_le_bytes());
                }
            }
            b
        }
    };
    WeightTensor::from_bytes("bench", dtype, vec![n_out, n_in], &bytes).expect("bench weight")
}

fn fail(e: minfer::Error) -> ! {
    eprintln!("bench failed: {e}");
    std::process::exit(2)
}

/// The best of `f`'s per-call seconds over `reps` timed calls (after one warm-up). The best, not
/// the median: this machine is shared, and interference only ever adds time. The bandwidth
/// ceiling is a best-of too, so the fractions compare like with like.
fn time(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    let mut v: Vec<f64> = (0..reps)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .collect();
    v.sort_by(|a, b| a.total_cmp(b));
    v[0]
}

struct Shape {
    name: &'static str,
    n_out: usize,
    n_in: usize,
}

const SMOL: [Shape; 5] = [
    Shape {
        name: "smol q/o 576x576",
        n_out: 576,
        n_in: 576,
    },
    Shape {
        name: "smol k/v 192x576",
        n_out: 192,
        n_in: 576,
    },
    Shape {
        name: "smol gate/up 1536x576",
        n_out: 1536,
        n_in: 576,
    },
    Shape {
        name: "smol down 576x1536",
        n_out: 576,
        n_in: 1536,
    },
    Shape {
        name: "smol lm_head 49152x576",
        n_out: 49152,
        n_in: 576,
    },
];
const QWEN: [Shape; 5] = [
    Shape {
        name: "1.5b q/o 1536x1536",
        n_out: 1536,
        n_in: 1536,
    },
    Shape {
        name: "1.5b k/v 256x1536",
        n_out: 256,
        n_in: 1536,
    },
    Shape {
        name: "1.5b gate/up 8960x1536",
        n_out: 8960,
        n_in: 1536,
    },
    Shape {
        name: "1.5b down 1536x8960",
        n_out: 1536,
        n_in: 8960,
    },
    Shape {
        name: "1.5b lm_head 151936x1536",
        n_out: 151936,
        n_in: 1536,
    },
];

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "quick");
    // `only=matvec,step,matmat,attn` runs a subset.
    let only: Option<Vec<&str>> = args
        .iter()
        .find_map(|a| a.strip_prefix("only="))
        .map(|s| s.split(',').collect());
    let run = |part: &str| only.as_ref().is_none_or(|o| o.contains(&part));
    let k = match args.iter().find_map(|a| a.strip_prefix("isa=")) {
        Some(name) => match Isa::parse(name).and_then(Kernels::for_isa) {
            Some(k) => k,
            None => {
                eprintln!(
                    "isa {name} is not available here; have {:?}",
                    Isa::available()
                );
                std::process::exit(2)
            }
        },
        None => *simd::kernels(),
    };
    let k = if args.iter().any(|a| a == "bf16dot") {
        k
    } else {
        k.without_bf16_dot()
    };
    let threads = rayon::current_num_threads();
    let bw = simd::measure_read_bandwidth(1 << 30, 5);
    let peak = k.measure_fma_peak_gflops(300);
    println!(
        "kernels {}, {threads} threads, read bandwidth {bw:.1} GB/s (streaming sum), f32 FMA peak {peak:.1} GFLOP/s",
        k.describe()
    );
    let dtypes = [
        DType::F32,
        DType::BF16,
        DType::F16,
        DType::Q8_0,
        DType::Q4_0,
        DType::Q4_1,
        DType::Q4K,
        DType::Q6K,
    ];
    // K-quant rows must be whole 256-blocks: SmolLM2's 576-wide matrices cannot be Q4_K/Q6_K.
    let fits = |d: DType, n_in: usize| n_in.is_multiple_of(d.block().0);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    // Enough distinct weight bytes per shape that nothing is served from the 32 MiB L3.
    let stream_bytes: usize = if quick { 128 << 20 } else { 256 << 20 };

    if run("matvec") {
        println!("\n== matvec (decode, rows = 1) ==");
        println!(
            "{:<28} {:>5} {:>10} {:>9} {:>8}",
            "shape", "dtype", "us/call", "GB/s", "of bw"
        );
        for dtype in dtypes {
            for s in SMOL.iter().chain(QWEN.iter()) {
                if (quick && s.n_out * s.n_in > 50_000_000) || !fits(dtype, s.n_in) {
                    continue;
                }
                let bytes = s.n_out * s.n_in / dtype.block().0 * dtype.block().1;
                let copies = stream_bytes.div_ceil(bytes).clamp(1, 256);
                let ws: Vec<WeightTensor> = (0..copies)
                    .map(|_| weight(dtype, s.n_out, s.n_in, &mut rng))
                    .collect();
                let x: Vec<f32> = (0..s.n_in).map(|_| rng.f32()).collect();
                let mut out = vec![0.0f32; s.n_out];
                let reps = (2_000_000_000 / (bytes * copies)).clamp(3, 50);
                let t = time(reps, || {
                    for w in &ws {
                        matmul_with(&k, &mut out, &x, 1, w, None).unwrap_or_else(|e| fail(e));
                    }
                }) / copies as f64;
                let gbs = bytes as f64 / t / 1e9;
                println!(
                    "{:<28} {:>5} {:>10.1} {:>9.1} {:>7.0}%",
                    s.name,
                    dtype.name(),
                    t * 1e6,
                    gbs,
                    100.0 * gbs / bw
                );
            }
        }
    }
    if run("step") {
        println!("\n== SmolLM2-135M decode step: 30 layers x (q,k,v,o,gate,up,down) + lm_head, distinct weights ==");
        println!("   (seqs = sequences per step: 1 = one sequence, 4 and 8 = batched decode)");
        println!(
            "{:<5} {:>5} {:>10} {:>9} {:>8} {:>12}",
            "dtype", "seqs", "ms/step", "GB/s", "of bw", "tok/s bound"
        );
        let seqs_list: &[usize] = if quick { &[1, 8] } else { &[1, 4, 8] };
        for dtype in dtypes {
            if !fits(dtype, 576) {
                continue;
            }
            let mut layers = Vec::new();
            for _ in 0..30 {
                for (o, i) in [
                    (576, 576),
                    (192, 576),
                    (192, 576),
                    (576, 576),
                    (1536, 576),
                    (1536, 576),
                    (576, 1536),
                ] {
                    layers.push(weight(dtype, o, i, &mut rng));
                }
            }
            layers.push(weight(dtype, 49152, 576, &mut rng));
            let bytes: usize = layers.iter().map(|w| w.bytes().len()).sum();
            for &seqs in seqs_list {
                let x: Vec<f32> = (0..seqs * 1536).map(|_| rng.f32()).collect();
                let mut out = vec![0.0f32; seqs * 49152];
                let t = time(if quick { 5 } else { 15 }, || {
                    for w in &layers {
                        let n_in = w.shape[1];
                        matmul_with(&k, &mut out, &x[..seqs * n_in], seqs, w, None)
                            .unwrap_or_else(|e| fail(e));
                    }
                });
                let gbs = bytes as f64 / t / 1e9;
                println!(
                    "{:<5} {:>5} {:>10.2} {:>9.1} {:>7.0}% {:>12.0}",
                    dtype.name(),
                    seqs,
                    t * 1e3,
                    gbs,
                    100.0 * gbs / bw,
                    seqs as f64 / t
                );
            }
        }
    }
    if run("matmat") {
        println!(
            "\n== matmat (batched decode, rows <= 16; prefill, rows > 16; weights in cache) =="
        );
        println!(
            "{:<28} {:>5} {:>5} {:>10} {:>9} {:>7} {:>9}",
            "shape", "dtype", "rows", "ms/call", "GFLOP/s", "% peak", "GB/s"
        );
        // 4 and 8: batched decode (the server's sequences at once); 128 and 512: prefill.
        let rows_list: &[usize] = if quick { &[8, 128] } else { &[4, 8, 128, 512] };
        for dtype in dtypes {
            for s in SMOL
                .iter()
                .filter(|s| s.n_out < 10_000)
                .chain(QWEN.iter().filter(|s| s.n_out < 10_000))
                .filter(|s| fits(dtype, s.n_in))
            {
                let w = weight(dtype, s.n_out, s.n_in, &mut rng);
                for &rows in rows_list {
                    let x: Vec<f32> = (0..rows * s.n_in).map(|_| rng.f32()).collect();
                    let mut out = vec![0.0f32; rows * s.n_out];
                    let flops = 2.0 * (rows * s.n_out * s.n_in) as f64;
                    let reps = ((2e10 / flops) as usize).clamp(10, 100);
                    let t = time(reps, || {
                        matmul_with(&k, &mut out, &x, rows, &w, None).unwrap_or_else(|e| fail(e))
                    });
                    let bytes = w.bytes().len() + 4 * rows * (s.n_in + s.n_out);
                    println!(
                        "{:<28} {:>5} {:>5} {:>10.3} {:>9.1} {:>6.0}% {:>9.1}",
                        s.name,
                        dtype.name(),
                        rows,
                        t * 1e3,
                        flops / t / 1e9,
                        100.0 * flops / t / 1e9 / peak,
                        bytes as f64 / t / 1e9
                    );
                }
            }
        }
    }
    if run("attn") {
        println!(
            "\n== attention, one decode query (strided dot / axpy kernels, heads in parallel) =="
        );
        println!(
            "{:<34} {:>6} {:>10} {:>9}",
            "model", "ctx", "us/call", "GB/s"
        );
        use rayon::prelude::*;
        for (name, heads, kv_heads, hd) in [
            ("smol 9 heads / 3 kv, head_dim 64", 9, 3, 64),
            ("1.5b 12 heads / 2 kv, head_dim 128", 12, 2, 128),
        ] {
            for ctx in [128usize, 512, 2048, 8192] {
                // K and V as the CPU backend lays them out: [ctx, kv_heads, head_dim].
                let kc: Vec<f32> = (0..ctx * kv_heads * hd).map(|_| rng.f32()).collect();
                let vc: Vec<f32> = (0..ctx * kv_heads * hd).map(|_| rng.f32()).collect();
                let q: Vec<f32> = (0..heads * hd).map(|_| rng.f32()).collect();
                let mut out = vec![0.0f32; heads * hd];
                let mut scores = vec![vec![0.0f32; ctx]; heads];
                let scale = 1.0 / (hd as f32).sqrt();
                let stride = kv_heads * hd;
                let t = time(if quick { 10 } else { 50 }, || {
                    out.par_chunks_mut(hd)
                        .zip(scores.par_iter_mut())
                        .enumerate()
                        .for_each(|(h, (o, sc))| {
                            let off = (h / (heads / kv_heads)) * hd;
                            let qh = &q[h * hd..(h + 1) * hd];
                            // As the CPU backend's decode attention: one strided call for
                            // the scores of a run of keys, one for Σ p·V.
                            k.dots_strided(qh, &kc[off..], stride, sc);
                            let mut m = f32::NEG_INFINITY;
                            for s in sc.iter_mut() {
                                *s *= scale;
                                m = m.max(*s);
                            }
                            let mut z = 0.0;
                            for s in sc.iter_mut() {
                                *s = (*s - m).exp();
                                z += *s;
                            }
                            sc.iter_mut().for_each(|s| *s /= z);
                            o.fill(0.0);
                            k.axpy_strided(o, sc, &vc[off..], stride);
                        });
                });
                let bytes = 2 * ctx * kv_heads * hd * 4;
                println!(
                    "{:<34} {:>6} {:>10.1} {:>9.1}",
                    name,
                    ctx,
                    t * 1e6,
                    bytes as f64 / t / 1e9
                );
            }
        }
    }
}
