//! End-to-end speed: prefill and decode tokens per second, achieved bandwidth, and how that
//! compares with the machine's own measured read bandwidth (measured in the same run, because
//! the machines we run on are shared and noisy). Used by `minfer bench` and `benches/`.

use std::time::Instant;

use crate::backend::{OpProfile, TraceEvent};
use crate::error::Result;
use crate::model::GenerateOptions;
use crate::model::Model;
use crate::rng::Rng;

#[derive(Clone, Debug)]
/// What `run` measures.
pub struct BenchOptions {
    /// Prompt tokens (random ids) for the prefill measurement.
    pub prompt_len: usize,
    /// Tokens generated for the decode measurement.
    pub gen_len: usize,
    /// Measured passes; medians are reported.
    pub repeats: usize,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            prompt_len: 128,
            gen_len: 64,
            repeats: 3,
        }
    }
}

#[derive(Clone, Debug, Default)]
/// Speeds measured by `run`.
pub struct BenchResult {
    /// Prompt tokens per second (median over repeats).
    pub prefill_tok_s: f64,
    /// Generated tokens per second (median over repeats).
    pub decode_tok_s: f64,
    /// Bytes one decode step reads on average (weights + the KV cache at the mean position).
    pub decode_bytes_per_token: f64,
    /// Weight and KV-cache bytes read per second during decode.
    pub decode_gb_s: f64,
    /// All passes, for the spread.
    pub prefill_runs: Vec<f64>,
    /// Decode tok/s of every repeat.
    pub decode_runs: Vec<f64>,
}

/// The median (NaN for an empty slice).
pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => 0.0,
        n if n % 2 == 1 => s[n / 2],
        n => 0.5 * (s[n / 2 - 1] + s[n / 2]),
    }
}

/// Random prompt ids (seeded), avoiding nothing in particular: speed does not depend on them.
pub fn random_prompt(vocab: usize, len: usize, seed: u64) -> Vec<u32> {
    let mut rng = Rng::new(seed);
    (0..len)
        .map(|_| (rng.next_u64() % vocab as u64) as u32)
        .collect()
}

/// Prefill `prompt_len` tokens, then decode `gen_len` (greedy, EOS ignored); `repeats` times
/// after one warm-up pass.
pub fn run(model: &mut Model, opts: &BenchOptions) -> Result<BenchResult> {
    let vocab = model.config().vocab_size;
    let prompt = random_prompt(vocab, opts.prompt_len.max(1), 1);
    let gen = GenerateOptions {
        max_new_tokens: opts.gen_len.max(1),
        ignore_eos: true,
        ..Default::default()
    };
    let mut pre = Vec::new();
    let mut dec = Vec::new();
    for pass in 0..=opts.repeats.max(1) {
        model.reset();
        let stats = model.generate(&prompt, &gen, |_| true)?;
        if pass > 0 {
            pre.push(stats.prefill_tok_s);
            dec.push(stats.decode_tok_s);
        }
    }
    let mean_pos = opts.prompt_len + opts.gen_len / 2;
    let bytes = model.decode_weight_bytes() as f64 + model.kv_bytes_read_at(mean_pos) as f64;
    let decode_tok_s = median(&dec);
    Ok(BenchResult {
        prefill_tok_s: median(&pre),
        decode_tok_s,
        decode_bytes_per_token: bytes,
        decode_gb_s: bytes * decode_tok_s / 1e9,
        prefill_runs: pre,
        decode_runs: dec,
    })
}

/// Per-op profiles of one prefill of `prompt_len` tokens and of `steps` decode steps, and
/// the timeline of both (needs a model loaded with `LoadOptions::profile`).
pub struct Profiles {
    /// Per-op timings of the prefill.
    pub prefill: Vec<OpProfile>,
    /// Wall time of the prefill.
    pub prefill_seconds: f64,
    /// Per-op timings summed over the decode steps.
    pub decode: Vec<OpProfile>,
    /// Wall time of the decode steps.
    pub decode_seconds: f64,
    /// Decode steps profiled.
    pub decode_steps: usize,
    /// Every op execution, for a Perfetto trace.
    pub trace: Vec<TraceEvent>,
}

/// Per-op profile of one prefill of `prompt_len` random tokens and `steps` decode steps
/// (the model must be loaded with `LoadOptions::profile`).
pub fn profile(model: &mut Model, prompt_len: usize, steps: usize) -> Result<Profiles> {
    let vocab = model.config().vocab_size;
    let mut prompt = random_prompt(vocab, prompt_len.max(1), 2);
    model.reset();
    let _ = model.take_profile();
    let _ = model.take_trace();
    let one = GenerateOptions {
        max_new_tokens: 1,
        ignore_eos: true,
        ..Default::default()
    };
    let mut first = 0;
    let t = Instant::now();
    model.generate(&prompt, &one, |id| {
        first = id;
        true
    })?;
    let prefill_seconds = t.elapsed().as_secs_f64();
    let prefill = model.take_profile();
    // Continue from the cache: each of these steps computes exactly one new position.
    prompt.push(first);
    let gen = GenerateOptions {
        max_new_tokens: steps.max(1),
        ignore_eos: true,
        ..Default::default()
    };
    let t = Instant::now();
    let stats = model.generate(&prompt, &gen, |_| true)?;
    let decode_seconds = t.elapsed().as_secs_f64();
    let decode = model.take_profile();
    let decode_steps = stats.generated_tokens;
    Ok(Profiles {
        prefill,
        prefill_seconds,
        decode,
        decode_seconds,
        decode_steps,
        trace: model.take_trace(),
    })
}

/// Score a sequence and return its total time (used by kernel-level benches).
pub fn time_forward(model: &mut Model, tokens: &[u32]) -> Result<f64> {
    model.reset();
    let t = Instant::now();
    let gen = GenerateOptions {
        max_new_tokens: 1,
        ignore_eos: true,
        ..Default::default()
    };
    model.generate(tokens, &gen, |_| true)?;
    Ok(t.elapsed().as_secs_f64())
}

/// Chrome / Perfetto trace JSON ("X" complete events on one thread).
pub fn chrome_trace(events: &[TraceEvent]) -> serde_json::Value {
    let evs: Vec<serde_json::Value> = events
        .iter()
        .map(|e| serde_json::json!({"name": e.name, "ph": "X", "ts": e.start_us, "dur": e.dur_us, "pid": 1, "tid": 1}))
        .collect();
    serde_json::json!({ "traceEvents": evs, "displayTimeUnit": "ms" })
}

/// The arithmetic ceiling used in profiles: the f32 FMA peak of `threads` threads (0 = all
/// cores) in GFLOP/s, measured now with register-resident FMA chains on the instruction set
/// the CPU backend uses (best of short bursts, so a shared machine shows the cores' own rate).
/// GEMM efficiency is quoted against it.
pub fn measure_fma_peak_gflops(threads: usize) -> Result<f64> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .map_err(|e| crate::Error::Device(format!("cannot start {threads} threads: {e}")))?;
    let kernels = crate::backend::cpu::simd::Kernels::detect();
    Ok(pool.install(|| kernels.measure_fma_peak_gflops(5)))
}

/// The performance model's predicted decode step (src/backend/cuda/predict.rs) for `model` on
/// each GPU of `gpus` ("h200", "a100", comma-separated), at `context` positions: what
/// `minfer bench --device sim --predict h200` prints. `model` is `synthetic:NAME` (bf16
/// weights, or `synthetic_dtype`) or a checkpoint path, whose weight dtypes are kept as the GPU
/// backend keeps them (a GGUF's quantized blocks run on kernels/matvec_q.ptx). Interprets one
/// decode step at the real shapes: seconds to minutes.
pub fn predict_decode(
    model: &str,
    synthetic_dtype: crate::tensor::DType,
    gpus: &str,
    context: usize,
) -> Result<Vec<PredictedDecode>> {
    use crate::backend::cuda::predict::{self, DecodeShape, GpuSpec, MatDTypes};
    let gpus = gpus
        .split(',')
        .map(|g| GpuSpec::by_name(g.trim()))
        .collect::<Result<Vec<_>>>()?;
    let shape = match model.strip_prefix("synthetic:") {
        Some(name) => {
            let c = crate::synthetic::preset_config(name)?;
            DecodeShape::of_config(name, &c, MatDTypes::all(synthetic_dtype))
        }
        None => {
            let ck = crate::loader::open(std::path::Path::new(model), true)?;
            let name = std::path::Path::new(model)
                .file_name()
                .map_or(model.to_string(), |n| n.to_string_lossy().into_owned());
            DecodeShape::of_config(&name, &ck.config, DecodeShape::dtypes_of(&ck.weights))
        }
    };
    if context == 0 {
        return Err(crate::error::Error::option(
            "context",
            context,
            "the predicted decode step needs at least one position",
        ));
    }
    Ok(predict::predict_decode(&shape, context, &gpus, None)?
        .into_iter()
        .map(|p| PredictedDecode {
            gpu: p.gpu.name.to_string(),
            table: p.table(),
            launches: p.launches(),
            device_us: p.device_us(),
            token_us: p.token_us(),
            weight_bytes: p.shape.weight_bytes(),
            bw_fraction_graph: p.bw_fraction(true),
            bw_fraction: p.bw_fraction(false),
        })
        .collect())
}

/// One GPU's predicted decode step (see [`predict_decode`]).
#[derive(Clone, Debug)]
pub struct PredictedDecode {
    /// "H200", "A100-80GB".
    pub gpu: String,
    /// Per launch: CTAs, bytes, the four floors, predicted µs per launch and per token, fraction
    /// of the copy bandwidth, the limiting resource; then the per-token summary.
    pub table: String,
    /// Launches per token.
    pub launches: u64,
    /// Device time per token (as a CUDA graph would replay it), µs.
    pub device_us: f64,
    /// Time per token without a graph (host launch cost included), µs.
    pub token_us: f64,
    /// Weight bytes per token.
    pub weight_bytes: f64,
    /// Weight bytes over device time, as a fraction of the assumed copy bandwidth.
    pub bw_fraction_graph: f64,
    /// The same without a graph.
    pub bw_fraction: f64,
}
