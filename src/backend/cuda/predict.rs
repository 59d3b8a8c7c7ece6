//! A performance model for the kernels, fed by the PTX interpreter's counters: what a decode
//! step should cost on a GPU nobody has lent us yet, per kernel and per token.
//!
//! The interpreter runs each op of one decode step once at the model's real shapes (the
//! lm_head matvec, whose cost is linear in its rows, at a fraction of the vocabulary, scaled
//! back up), and counts per launch: the bytes it touches (distinct 32-byte sectors: what DRAM
//! serves when the caches keep one launch's footprint and nothing survives to the next), warp
//! instructions, global load requests, shared-memory traffic and bank conflicts, CTAs and their
//! size. Registers per thread come from ptxas ([`REGS_SM90`]). Each launch's time is the largest
//! of four floors, plus a fixed gap between dependent kernels:
//!
//! - **dram**: footprint / copy bandwidth (the copy bandwidth is a stated fraction of the
//!   datasheet peak until a GPU measures it);
//! - **latency**: each warp issues its global loads in rounds of `loads in flight`
//!   ([`loads_in_flight`], read off each kernel's code), each round waits one DRAM latency, and
//!   CTAs run in waves of what fits on the SMs (occupancy from threads, registers, shared
//!   memory): rounds per warp × latency × waves. This is Little's law seen from one warp, and is
//!   what a small grid or a serial loop costs;
//! - **issue**: warp instructions / (4 schedulers × clock × SMs the grid occupies);
//! - **smem**: shared bytes (plus 128 B per conflict wavefront) / (128 B per clock per SM).
//!
//! Per token: the sum over launches (device time, as a CUDA graph would replay it), and the
//! host-bound time without a graph (launches × the host cost of one launch), whichever is
//! larger. What it does not model: L2 hits between kernels (weights never fit, activations are
//! kilobytes), DRAM page effects, tail effects inside a wave, clock throttling, the tensor-core
//! GEMM of prefill (not a decode kernel). It is a floor-based model: a measured time far above
//! it names a cause the model lacks.

use super::backend::CudaBackend;
use super::driver::{
    DevPtr, FuncId, GpuDriver, GraphId, KernelArg, KernelCounters, LaunchConfig, ModuleId,
};
use super::sim::SimDriver;
use crate::backend::{AttnParams, Backend, KvShape, StepLayout};
use crate::config::MlpActivation;
use crate::error::{Error, Result};
use crate::tensor::{DType, WeightTensor};

/// Published figures of one GPU (datasheet numbers; the copy fraction and latency are
/// assumptions until scripts/gpu-check.sh measures them).
#[derive(Clone, Debug)]
pub struct GpuSpec {
    pub name: &'static str,
    pub sms: u32,
    /// Boost clock, GHz.
    pub clock_ghz: f64,
    /// HBM peak, GB/s (10^9 B/s).
    pub hbm_gb_s: f64,
    /// Fraction of the peak a large device-to-device copy reaches: the "copy bandwidth" the
    /// targets are stated against.
    pub copy_fraction: f64,
    /// Loaded DRAM latency seen by one warp, ns.
    pub dram_latency_ns: f64,
    /// Per SM: registers, threads, CTAs, shared memory bytes.
    pub regs_per_sm: u32,
    pub threads_per_sm: u32,
    pub ctas_per_sm: u32,
    pub smem_per_sm: u32,
    /// Device-side gap between two dependent kernels (drain and fill), µs.
    pub kernel_gap_us: f64,
    /// Host time of one `cuLaunchKernel` without a graph, µs.
    pub host_launch_us: f64,
}

impl GpuSpec {
    /// H200 SXM: 132 SMs, 1.98 GHz, HBM3e 4.8 TB/s, 228 KB shared per SM.
    pub fn h200() -> GpuSpec {
        GpuSpec {
            name: "H200",
            sms: 132,
            clock_ghz: 1.98,
            hbm_gb_s: 4800.0,
            copy_fraction: 0.90,
            dram_latency_ns: 700.0,
            regs_per_sm: 65536,
            threads_per_sm: 2048,
            ctas_per_sm: 32,
            smem_per_sm: 228 * 1024,
            kernel_gap_us: 1.0,
            host_launch_us: 2.5,
        }
    }

    /// A100 SXM 80 GB: 108 SMs, 1.41 GHz, HBM2e 2.04 TB/s, 164 KB shared per SM.
    pub fn a100() -> GpuSpec {
        GpuSpec {
            name: "A100",
            sms: 108,
            clock_ghz: 1.41,
            hbm_gb_s: 2039.0,
            copy_fraction: 0.90,
            dram_latency_ns: 650.0,
            regs_per_sm: 65536,
            threads_per_sm: 2048,
            ctas_per_sm: 32,
            smem_per_sm: 164 * 1024,
            kernel_gap_us: 1.0,
            host_launch_us: 2.5,
        }
    }

    /// `"h200"` or `"a100"` (case-insensitive).
    pub fn by_name(name: &str) -> Result<GpuSpec> {
        match name.to_ascii_lowercase().as_str() {
            "h200" => Ok(GpuSpec::h200()),
            "a100" => Ok(GpuSpec::a100()),
            other => Err(Error::arg(format!(
                "unknown GPU {other:?} for the performance model; known: h200, a100"
            ))),
        }
    }

    /// Copy bandwidth, B/s.
    pub fn copy_bytes_per_s(&self) -> f64 {
        self.hbm_gb_s * 1e9 * self.copy_fraction
    }
}

/// Registers per thread from ptxas 12.9 for sm_90 (scripts/ptxas-check.sh prints them; update
/// together). Unknown kernels count as 32.
pub const REGS_SM90: &[(&str, u32)] = &[
    ("matvec_bf16", 38),
    ("matvec_f16", 38),
    ("matvec_f32", 40),
    ("gemm_bf16", 72),
    ("gemm_f16", 72),
    ("attn_split_f32", 32),
    ("attn_combine_f32", 40),
    ("attn_prefill_f32", 32),
    ("rms_norm_f32", 30),
    ("add_rms_norm_f32", 28),
    ("head_rms_norm_f32", 18),
    ("argmax_f32", 23),
    ("matvec_q8_0", 38),
    ("matvec_q4_0", 44),
    ("matvec_q4_1", 44),
    ("matvec_q4_k", 44),
    ("matvec_q6_k", 50),
    ("kv_append_f32", 32),
];

fn regs(kernel: &str) -> u32 {
    REGS_SM90
        .iter()
        .find(|r| r.0 == kernel)
        .map(|r| r.1)
        .unwrap_or(32)
}

/// Independent global load requests one warp keeps in flight in the kernel's hot loop: the
/// global loads ptxas put in that loop's body (scripts/sass-check.py prints them as `hot_ldg`),
/// lowered where the loop is not the one that dominates the kernel. The model's only
/// hand-entered numbers besides the GPU figures and [`REGS_SM90`].
pub fn loads_in_flight(kernel: &str) -> f64 {
    match kernel {
        // 4 × 16 B weight chunks + their 8 activation loads per main-loop trip (12 LDG.E.128);
        // v2's tail loads its 0–3 chunks in one predicated trip (v1: a loop, 3 per trip).
        "matvec_bf16" | "matvec_f16" => 12.0,
        "matvec_f32" => 12.0,
        // quantized matvec (kernels/matvec_q.ptx): one unit per lane per trip, every load of
        // the unit issued before its FMAs (SASS hot_ldg): Q8_0 2 quant + 1 scale + 8 x; Q4_0 /
        // Q4_1 1 + 1 + 8; Q4_K 1 header + 2 quant + 16 x; Q6_K 3 quant + scales + d + 16 x.
        "matvec_q8_0" => 11.0,
        "matvec_q4_0" | "matvec_q4_1" => 10.0,
        "matvec_q4_k" => 19.0,
        "matvec_q6_k" => 21.0,
        // v2: four independent scalar loads per trip, one trip per thread for a vocabulary.
        // v1 (one block) had the same 4 per trip (ptxas's unroll) but ~148 trips.
        "argmax_f32" => 4.0,
        // norms v2: 4 elements per trip, loads before stores (8 LDG per scale-pass trip; the
        // rms_norm sum loop unrolled 4× by ptxas). Two dependent passes: 4 keeps a 1536-wide
        // row at 2 rounds. v1: 256 threads, 1 element per trip; add_rms_norm's loop kept 2
        // loads in flight (its residual store blocked ptxas's hoisting).
        "rms_norm_f32" | "add_rms_norm_f32" => 4.0,
        "head_rms_norm_f32" => 4.0,
        // attention split v2: the P·V key loop is unrolled with 16 LDG.128 per trip, but the
        // score loop (4 keys per warp for a 32-key chunk, one K row per key) is not: 4 is
        // the blend. v1's P·V loop: 4 scalar loads per trip (ptxas's unroll), 3 passes.
        "attn_split_f32" => 4.0,
        // combine v2: the split loop is branch-free and unrolled 4× (12 LDG per trip).
        "attn_combine_f32" => 12.0,
        // rope: no loop; inv_freq[i] and the pair (a, b) are independent loads, and ptxas
        // issues all three before the sin/cos (SASS: 3 LDG, no loop).
        "rope_f32" => 3.0,
        // grid-stride elementwise kernels: a binary op's two loads per trip.
        "silu_mul_f32" | "add_f32" | "copy_f32" => 2.0,
        // one element per thread: the gate and up loads (glu), the one source load (split)
        "glu_silu_f32" | "glu_gelu_tanh_f32" => 2.0,
        "split_cols_f32" => 1.0,
        // paged kv_append: k, v, position and table index in flight, then the table entry
        // (5 loads in 2 dependent rounds)
        "kv_append_f32" => 2.5,
        _ => 1.0,
    }
}

/// One launch as the model sees it.
#[derive(Clone, Debug)]
pub struct KernelPrediction {
    /// The op that launched it ("q_proj", "attention", ...) and the kernel.
    pub op: String,
    pub kernel: String,
    /// How many times per token.
    pub per_token: u64,
    /// Bytes per launch (footprint).
    pub bytes: f64,
    /// The four floors per launch, µs, and the predicted time per launch (the largest plus the
    /// inter-kernel gap).
    pub dram_us: f64,
    pub latency_us: f64,
    pub issue_us: f64,
    pub smem_us: f64,
    pub us: f64,
    /// "dram", "latency", "issue", "smem" or "gap" (the inter-kernel gap dominates).
    pub limit: &'static str,
    /// CTAs per SM that fit, and CTAs launched.
    pub ctas_per_sm: u32,
    pub ctas: u64,
}

impl KernelPrediction {
    /// Fraction of the copy bandwidth this launch reaches.
    pub fn bw_fraction(&self, gpu: &GpuSpec) -> f64 {
        self.bytes / (self.us * 1e-6) / gpu.copy_bytes_per_s()
    }
}

/// Predict one launch from its counters (one launch's worth; `scale` multiplies the work, for
/// a launch interpreted at a fraction of its rows).
pub fn predict_launch(
    gpu: &GpuSpec,
    op: &str,
    c: &KernelCounters,
    scale: f64,
    per_token: u64,
) -> KernelPrediction {
    let threads = c.threads_per_cta.max(1) as u32;
    let warps_per_cta = threads.div_ceil(32);
    let regs_per_cta = regs(&c.kernel) * warps_per_cta * 32;
    let mut fit = gpu.ctas_per_sm.min(gpu.threads_per_sm / threads);
    fit = fit.min(gpu.regs_per_sm / regs_per_cta.max(1));
    if c.shared_per_cta > 0 {
        fit = fit.min(gpu.smem_per_sm / c.shared_per_cta as u32);
    }
    let fit = fit.max(1);
    let ctas = (c.ctas as f64 * scale).round().max(1.0);
    let waves = (ctas / (fit as f64 * gpu.sms as f64)).ceil();
    let sms_used = ctas.min(gpu.sms as f64);
    let clock = gpu.clock_ghz * 1e9;

    let bytes = c.footprint_bytes as f64 * scale;
    let dram = bytes / gpu.copy_bytes_per_s();
    let warps = ctas * warps_per_cta as f64;
    let requests_per_warp = c.global_load_requests as f64 * scale / warps;
    let rounds = (requests_per_warp / loads_in_flight(&c.kernel))
        .ceil()
        .max(1.0);
    let latency = rounds * gpu.dram_latency_ns * 1e-9 * waves;
    let issue = c.warp_instructions as f64 * scale / (4.0 * clock * sms_used);
    let smem_bytes =
        (c.shared_load_bytes + c.shared_store_bytes + 128 * c.bank_conflicts) as f64 * scale;
    let smem = smem_bytes / (128.0 * clock * sms_used);
    let gap = gpu.kernel_gap_us * 1e-6;
    let floors = [
        ("dram", dram),
        ("latency", latency),
        ("issue", issue),
        ("smem", smem),
    ];
    let (mut limit, mut worst) = floors[0];
    for &(n, t) in &floors[1..] {
        if t > worst {
            limit = n;
            worst = t;
        }
    }
    if gap > worst {
        limit = "gap";
    }
    KernelPrediction {
        op: op.to_string(),
        kernel: c.kernel.clone(),
        per_token,
        bytes,
        dram_us: dram * 1e6,
        latency_us: latency * 1e6,
        issue_us: issue * 1e6,
        smem_us: smem * 1e6,
        us: (worst + gap) * 1e6,
        limit,
        ctas_per_sm: fit,
        ctas: ctas as u64,
    }
}

/// The dtype of each matrix of a decode step (a quantized checkpoint mixes them).
#[derive(Clone, Copy, Debug)]
pub struct MatDTypes {
    pub q: DType,
    pub k: DType,
    pub v: DType,
    pub o: DType,
    pub gate: DType,
    pub up: DType,
    pub down: DType,
    pub lm_head: DType,
}

impl MatDTypes {
    /// Every matrix in `d`.
    pub fn all(d: DType) -> MatDTypes {
        MatDTypes {
            q: d,
            k: d,
            v: d,
            o: d,
            gate: d,
            up: d,
            down: d,
            lm_head: d,
        }
    }
}

/// The shape of a batch-1 decode step, Llama-style (RMSNorm, SiLU-gated MLP; Gemma's GeGLU and
/// head norms are modelled as the same launches).
#[derive(Clone, Debug)]
pub struct DecodeShape {
    pub name: String,
    pub hidden: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub inter: usize,
    pub vocab: usize,
    pub layers: usize,
    pub qkv_bias: bool,
    pub dtypes: MatDTypes,
}

impl DecodeShape {
    /// The presets of `minfer bench synthetic:NAME` (smollm2-135m, qwen2-1.5b, qwen2-7b,
    /// llama3-8b), bf16 weights.
    pub fn preset(name: &str) -> Result<DecodeShape> {
        let c = crate::synthetic::preset_config(name)?;
        Ok(DecodeShape::of_config(
            name,
            &c,
            MatDTypes::all(DType::BF16),
        ))
    }

    /// The decode step of a model with this config and these weight dtypes.
    pub fn of_config(name: &str, c: &crate::config::ModelConfig, dtypes: MatDTypes) -> DecodeShape {
        DecodeShape {
            name: name.to_string(),
            hidden: c.hidden_size,
            heads: c.num_heads,
            kv_heads: c.num_kv_heads,
            head_dim: c.head_dim,
            inter: c.intermediate_size,
            vocab: c.vocab_size,
            layers: c.num_layers,
            qkv_bias: c.attention_bias,
            dtypes,
        }
    }

    /// The weight dtypes of a loaded checkpoint (layer 0's matrices, the lm_head or the tied
    /// embedding table), as the GPU backend keeps them.
    pub fn dtypes_of(weights: &crate::tensor::Weights) -> MatDTypes {
        let d = |name: &str, fallback: &str| {
            weights
                .tensors
                .get(name)
                .or_else(|| weights.tensors.get(fallback))
                .map(|t| t.dtype)
                .unwrap_or(DType::BF16)
        };
        let l = |m: &str| d(&format!("model.layers.0.{m}.weight"), "");
        MatDTypes {
            q: l("self_attn.q_proj"),
            k: l("self_attn.k_proj"),
            v: l("self_attn.v_proj"),
            o: l("self_attn.o_proj"),
            gate: l("mlp.gate_proj"),
            up: l("mlp.up_proj"),
            down: l("mlp.down_proj"),
            lm_head: d("lm_head.weight", "model.embed_tokens.weight"),
        }
    }

    /// Bytes of weights one token reads: the floor of a decode step.
    pub fn weight_bytes(&self) -> f64 {
        let kv = self.kv_heads * self.head_dim;
        let q = self.heads * self.head_dim;
        let (h, i, t) = (self.hidden, self.inter, &self.dtypes);
        let b = |d: DType, n: usize| d.bytes_for(n).unwrap_or(n * 2) as f64;
        let per_layer = b(t.q, q * h)
            + b(t.k, kv * h)
            + b(t.v, kv * h)
            + b(t.o, h * q)
            + b(t.gate, i * h)
            + b(t.up, i * h)
            + b(t.down, h * i);
        self.layers as f64 * per_layer + b(t.lm_head, self.vocab * h)
    }

    fn dtype_label(&self) -> String {
        let t = &self.dtypes;
        let all = [t.q, t.k, t.v, t.o, t.gate, t.up, t.down, t.lm_head];
        let mut names: Vec<&str> = all.iter().map(|d| d.name()).collect();
        names.sort_unstable();
        names.dedup();
        names.join("/")
    }
}

/// The predicted decode step: one row per distinct launch.
#[derive(Clone, Debug)]
pub struct DecodePrediction {
    pub shape: DecodeShape,
    pub gpu: GpuSpec,
    pub context: usize,
    pub kernels: Vec<KernelPrediction>,
}

impl DecodePrediction {
    pub fn launches(&self) -> u64 {
        self.kernels.iter().map(|k| k.per_token).sum()
    }
    /// Launch calls the host makes per token: every kernel without a graph; with one (the
    /// backend's batch-1 decode), one `cuGraphLaunch` for the step and the argmax launch after
    /// it (plus the step's two small uploads and the argmax read, which are copies).
    pub fn host_launches(&self, graph: bool) -> u64 {
        if graph {
            2
        } else {
            self.launches()
        }
    }
    /// Device time per token (a CUDA graph replaying the step), µs.
    pub fn device_us(&self) -> f64 {
        self.kernels.iter().map(|k| k.us * k.per_token as f64).sum()
    }
    /// Time per token without a graph: the host issues each launch, µs.
    pub fn token_us(&self) -> f64 {
        self.device_us()
            .max(self.launches() as f64 * self.gpu.host_launch_us)
    }
    /// Bytes a token moves (footprints).
    pub fn bytes(&self) -> f64 {
        self.kernels
            .iter()
            .map(|k| k.bytes * k.per_token as f64)
            .sum()
    }
    /// Fraction of the copy bandwidth: weight bytes over the token time (the way the targets
    /// count: achieved GB/s of the weights against copy GB/s), with and without a graph.
    pub fn bw_fraction(&self, graph: bool) -> f64 {
        let us = if graph {
            self.device_us()
        } else {
            self.token_us()
        };
        self.shape.weight_bytes() / (us * 1e-6) / self.gpu.copy_bytes_per_s()
    }

    /// A plain-text table: per launch, then per token.
    pub fn table(&self) -> String {
        let mut s = format!(
            "predicted decode step: {} ({}, batch 1, context {}) on {} — copy bandwidth {:.0} GB/s assumed ({:.0}% of {:.0})\n",
            self.shape.name,
            self.shape.dtype_label(),
            self.context,
            self.gpu.name,
            self.gpu.copy_bytes_per_s() / 1e9,
            self.gpu.copy_fraction * 100.0,
            self.gpu.hbm_gb_s
        );
        s += &format!(
            "{:<12} {:<18} {:>4} {:>6} {:>10} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>6} {:>8}\n",
            "op",
            "kernel",
            "x",
            "CTAs",
            "KB",
            "dram",
            "latency",
            "issue",
            "smem",
            "us",
            "us/tok",
            "%bw",
            "limit"
        );
        for k in &self.kernels {
            s += &format!(
                "{:<12} {:<18} {:>4} {:>6} {:>10.1} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8.1} {:>5.0}% {:>8}\n",
                k.op,
                k.kernel,
                k.per_token,
                k.ctas,
                k.bytes / 1024.0,
                k.dram_us,
                k.latency_us,
                k.issue_us,
                k.smem_us,
                k.us,
                k.us * k.per_token as f64,
                100.0 * k.bw_fraction(&self.gpu),
                k.limit
            );
        }
        let floor = self.shape.weight_bytes() / self.gpu.copy_bytes_per_s() * 1e6;
        s += &format!(
            "per token: {} kernel launches ({} host launch calls with the CUDA graph), {:.1} MB; floor {:.0} us; device (graph) {:.0} us = {:.0}% of copy bandwidth; without a graph {:.0} us = {:.0}% ({})\n",
            self.launches(),
            self.host_launches(true),
            self.bytes() / 1e6,
            floor,
            self.device_us(),
            100.0 * self.bw_fraction(true),
            self.token_us(),
            100.0 * self.bw_fraction(false),
            if self.token_us() > self.device_us() {
                "host launch-bound"
            } else {
                "device-bound"
            }
        );
        s
    }
}

/// The interpreter with some kernel files replaced by the same-named files of a directory:
/// how the model predicts an older or experimental version of a kernel (its host code must
/// launch it the same way).
pub struct OverrideDriver {
    inner: SimDriver,
    dir: Option<std::path::PathBuf>,
}

impl OverrideDriver {
    pub fn new(dir: Option<&std::path::Path>) -> OverrideDriver {
        OverrideDriver {
            inner: SimDriver::new(),
            dir: dir.map(|d| d.to_path_buf()),
        }
    }
}

impl GpuDriver for OverrideDriver {
    fn name(&self) -> String {
        self.inner.name()
    }
    fn total_memory(&self) -> u64 {
        self.inner.total_memory()
    }
    fn compute_capability(&self) -> (u32, u32) {
        self.inner.compute_capability()
    }
    fn load_module(&self, name: &str, ptx: &str) -> Result<ModuleId> {
        if let Some(d) = &self.dir {
            let f = d.join(name);
            if f.exists() {
                let text = std::fs::read_to_string(&f)
                    .map_err(|e| Error::Device(format!("{}: {e}", f.display())))?;
                return self.inner.load_module(name, &text);
            }
        }
        self.inner.load_module(name, ptx)
    }
    fn function(&self, module: ModuleId, entry: &str) -> Result<FuncId> {
        self.inner.function(module, entry)
    }
    fn alloc(&self, bytes: usize) -> Result<DevPtr> {
        self.inner.alloc(bytes)
    }
    fn free(&self, ptr: DevPtr) -> Result<()> {
        self.inner.free(ptr)
    }
    fn copy_to_device(&self, dst: DevPtr, src: &[u8]) -> Result<()> {
        self.inner.copy_to_device(dst, src)
    }
    fn copy_to_host(&self, dst: &mut [u8], src: DevPtr) -> Result<()> {
        self.inner.copy_to_host(dst, src)
    }
    fn memset_zero(&self, dst: DevPtr, bytes: usize) -> Result<()> {
        self.inner.memset_zero(dst, bytes)
    }
    fn launch(&self, f: FuncId, cfg: LaunchConfig, args: &[KernelArg]) -> Result<()> {
        self.inner.launch(f, cfg, args)
    }
    fn synchronize(&self) -> Result<()> {
        self.inner.synchronize()
    }
    fn begin_capture(&self) -> Result<()> {
        self.inner.begin_capture()
    }
    fn end_capture(&self) -> Result<GraphId> {
        self.inner.end_capture()
    }
    fn launch_graph(&self, graph: GraphId) -> Result<()> {
        self.inner.launch_graph(graph)
    }
    fn free_graph(&self, graph: GraphId) -> Result<()> {
        self.inner.free_graph(graph)
    }
    fn set_profiling(&self, on: bool) {
        self.inner.set_profiling(on)
    }
    fn take_counters(&self) -> Vec<KernelCounters> {
        self.inner.take_counters()
    }
}

struct Runner {
    b: CudaBackend<OverrideDriver>,
    rng: u64,
    rows: Vec<(String, KernelCounters, f64, u64)>,
}

impl Runner {
    fn f32s(&mut self, n: usize) -> Vec<f32> {
        (0..n)
            .map(|_| {
                self.rng = self
                    .rng
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((self.rng >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.1
            })
            .collect()
    }
    fn mat(&mut self, n: usize, k: usize) -> Result<<CudaBackend<OverrideDriver> as Backend>::Mat> {
        self.mat_of(n, k, DType::BF16)
    }
    /// A random `[n, k]` matrix of `dtype`; block types get random quants and small f16 scales.
    fn mat_of(
        &mut self,
        n: usize,
        k: usize,
        dtype: DType,
    ) -> Result<<CudaBackend<OverrideDriver> as Backend>::Mat> {
        let w = if dtype.is_quantized() {
            let (be, bb) = dtype.block();
            let mut bytes = vec![0u8; (n * k).div_ceil(be) * bb];
            for b in bytes.iter_mut() {
                self.rng = self
                    .rng
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                *b = (self.rng >> 56) as u8;
            }
            // f16 scale fields: 0.01 (0x211f), where each type keeps them
            let at: &[usize] = match dtype {
                DType::Q6K => &[208],
                DType::Q4_1 | DType::Q4K | DType::Q5K => &[0, 2],
                _ => &[0],
            };
            for blk in bytes.chunks_exact_mut(bb) {
                for &i in at {
                    blk[i..i + 2].copy_from_slice(&0x211fu16.to_le_bytes());
                }
            }
            WeightTensor::from_bytes("w", dtype, vec![n, k], &bytes)?
        } else {
            let v = self.f32s(n * k);
            match dtype {
                DType::F32 => WeightTensor::from_f32("w", vec![n, k], &v),
                DType::F16 => {
                    let h: Vec<half::f16> = v.into_iter().map(half::f16::from_f32).collect();
                    WeightTensor::from_bytes("w", dtype, vec![n, k], bytemuck::cast_slice(&h))?
                }
                _ => {
                    let h: Vec<half::bf16> = v.into_iter().map(half::bf16::from_f32).collect();
                    WeightTensor::from_bytes(
                        "w",
                        DType::BF16,
                        vec![n, k],
                        bytemuck::cast_slice(&h),
                    )?
                }
            }
        };
        self.b.upload(&w)
    }
    fn vec1(&mut self, n: usize) -> Result<<CudaBackend<OverrideDriver> as Backend>::Mat> {
        let v = self.f32s(n);
        self.b.upload(&WeightTensor::from_f32("v", vec![n], &v))
    }
    fn buf(&mut self, n: usize) -> Result<<CudaBackend<OverrideDriver> as Backend>::Buf> {
        let t = self.mat(1, n)?;
        let mut out = self.b.alloc(n)?;
        self.b.embed(&mut out, &t, &[0])?;
        Ok(out)
    }
    /// Record what ran since the last call under `op`; `scale` and `per_token` as in
    /// [`predict_launch`].
    fn take(&mut self, op: &str, scale: f64, per_token: u64) {
        for c in self.b.driver().take_counters() {
            self.rows.push((op.to_string(), c, scale, per_token));
        }
    }
}

/// Rows of the lm_head matvec interpreted (the rest is scaled): its counters are linear in rows.
const LM_HEAD_ROWS: usize = 8192;

/// Interpret one decode step of `shape` at position `context - 1` and predict it on `gpu`.
/// Takes seconds to minutes of host time (the 8B shape's largest matrices are ~100 MB).
/// `kernels`: a directory whose .ptx files replace the shipped ones of the same name
/// ([`OverrideDriver`]), or None.
pub fn predict_decode(
    shape: &DecodeShape,
    context: usize,
    gpus: &[GpuSpec],
    kernels: Option<&std::path::Path>,
) -> Result<Vec<DecodePrediction>> {
    let b = CudaBackend::new(OverrideDriver::new(kernels))?;
    let mut r = Runner {
        b,
        rng: 1,
        rows: Vec::new(),
    };
    let (h, hd, nh, nkv) = (shape.hidden, shape.head_dim, shape.heads, shape.kv_heads);
    let (qd, kvd, l) = (nh * hd, nkv * hd, shape.layers as u64);
    let x = r.buf(h)?;
    let mut res = r.buf(h)?;
    let mut hn = r.b.alloc(h)?;
    let norm_w = r.vec1(h)?;
    let inv_freq = r.vec1(hd / 2)?;
    let t = shape.dtypes;
    // q/k/v (and gate/up below) are one matrix when their dtypes agree, as the transformer
    // fuses them at load: one matmul, then a split (the activation, for gate/up).
    let fuse_qkv = t.q == t.k && t.k == t.v;
    let fuse_gate_up = t.gate == t.up;
    let wo = r.mat_of(h, qd, t.o)?;
    let mut q = r.b.alloc(qd)?;
    let mut k = r.b.alloc(kvd)?;
    let mut v = r.b.alloc(kvd)?;
    let mut att = r.b.alloc(qd)?;
    let mut o = r.b.alloc(h)?;
    let kv_shape = KvShape::contiguous(1, context, 32, nkv, hd);
    let mut kv = r.b.alloc_kv(kv_shape)?;
    let layout =
        r.b.layout_of(&StepLayout::contiguous(context - 1, 1, kv_shape.blocks))?;
    r.b.driver().set_profiling(true);
    let _ = r.b.driver().take_counters();

    // one layer
    r.b.add_rms_norm(&mut hn, &mut res, &x, &norm_w, 1, 1e-6)?;
    r.take("input_norm", 1.0, l);
    if fuse_qkv {
        let wqkv = r.mat_of(qd + 2 * kvd, h, t.q)?;
        let bqkv = r.vec1(qd + 2 * kvd)?;
        let mut qkv = r.b.alloc(qd + 2 * kvd)?;
        let _ = r.b.driver().take_counters();
        r.b.matmul(&mut qkv, &hn, &wqkv, shape.qkv_bias.then_some(&bqkv), 1)?;
        r.take("qkv_proj", 1.0, l);
        let mut parts = [(&mut q, qd), (&mut k, kvd), (&mut v, kvd)];
        r.b.split_columns(&qkv, 1, &mut parts)?;
        r.take("split_qkv", 1.0, l);
    } else {
        let wq = r.mat_of(qd, h, t.q)?;
        let wk = r.mat_of(kvd, h, t.k)?;
        let wv = r.mat_of(kvd, h, t.v)?;
        let bq = r.vec1(qd)?;
        let bk = r.vec1(kvd)?;
        let (qb, kb) = match shape.qkv_bias {
            true => (Some(&bq), Some(&bk)),
            false => (None, None),
        };
        let _ = r.b.driver().take_counters();
        r.b.matmul(&mut q, &hn, &wq, qb, 1)?;
        r.take("q_proj", 1.0, l);
        r.b.matmul(&mut k, &hn, &wk, kb, 1)?;
        r.take("k_proj", 1.0, l);
        r.b.matmul(&mut v, &hn, &wv, kb, 1)?;
        r.take("v_proj", 1.0, l);
    }
    r.b.rope(&mut q, 1, nh, hd, &layout, &inv_freq)?;
    r.take("rope_q", 1.0, l);
    r.b.rope(&mut k, 1, nkv, hd, &layout, &inv_freq)?;
    r.take("rope_k", 1.0, l);
    let p = AttnParams {
        n_heads: nh,
        n_kv_heads: nkv,
        head_dim: hd,
        scale: 1.0 / (hd as f32).sqrt(),
        window: None,
    };
    r.b.attention(&mut att, &q, &k, &v, &mut kv, 0, 1, &layout, &p)?;
    r.take("attention", 1.0, l);
    r.b.matmul(&mut o, &att, &wo, None, 1)?;
    r.take("o_proj", 1.0, l);
    r.b.add_rms_norm(&mut hn, &mut res, &o, &norm_w, 1, 1e-6)?;
    r.take("post_norm", 1.0, l);
    drop(wo);
    let mut gate = r.b.alloc(shape.inter)?;
    if fuse_gate_up {
        let wgu = r.mat_of(2 * shape.inter, h, t.gate)?;
        let mut gu = r.b.alloc(2 * shape.inter)?;
        let _ = r.b.driver().take_counters();
        r.b.matmul(&mut gu, &hn, &wgu, None, 1)?;
        r.take("gate_up_proj", 1.0, l);
        r.b.gated_act(&mut gate, &mut gu, 1, shape.inter, MlpActivation::Silu)?;
        r.take("glu", 1.0, l);
    } else {
        let wg = r.mat_of(shape.inter, h, t.gate)?;
        let wu = r.mat_of(shape.inter, h, t.up)?;
        let mut up = r.b.alloc(shape.inter)?;
        let _ = r.b.driver().take_counters();
        r.b.matmul(&mut gate, &hn, &wg, None, 1)?;
        r.take("gate_proj", 1.0, l);
        r.b.matmul(&mut up, &hn, &wu, None, 1)?;
        r.take("up_proj", 1.0, l);
        r.b.silu_mul(&mut gate, &up, shape.inter)?;
        r.take("silu_mul", 1.0, l);
    }
    let wd = r.mat_of(h, shape.inter, t.down)?;
    let _ = r.b.driver().take_counters();
    r.b.matmul(&mut o, &gate, &wd, None, 1)?;
    r.take("down_proj", 1.0, l);
    drop(wd);

    // once per token
    let emb = r.mat_of(4, h, t.lm_head)?;
    let _ = r.b.driver().take_counters();
    let mut e = r.b.alloc(h)?;
    r.b.embed(&mut e, &emb, &[3])?;
    r.take("embed", 1.0, 1);
    r.b.add_rms_norm(&mut hn, &mut res, &o, &norm_w, 1, 1e-6)?;
    r.take("final_norm", 1.0, 1);
    let rows = LM_HEAD_ROWS.min(shape.vocab);
    let wl = r.mat_of(rows, h, t.lm_head)?;
    let mut logits = r.b.alloc(shape.vocab)?;
    let _ = r.b.driver().take_counters();
    r.b.matmul(&mut logits, &hn, &wl, None, 1)?;
    r.take("lm_head", shape.vocab as f64 / rows as f64, 1);
    drop(wl);
    let filled = r.buf(shape.vocab)?;
    let _ = r.b.driver().take_counters();
    r.b.argmax(&filled, 0, shape.vocab)?;
    r.take("argmax", 1.0, 1);
    r.b.driver().set_profiling(false);

    Ok(gpus
        .iter()
        .map(|gpu| DecodePrediction {
            shape: shape.clone(),
            gpu: gpu.clone(),
            context,
            kernels: r
                .rows
                .iter()
                .map(|(op, c, scale, n)| predict_launch(gpu, op, c, *scale, *n))
                .collect(),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counters(
        kernel: &str,
        ctas: u64,
        threads: u64,
        bytes: u64,
        requests: u64,
    ) -> KernelCounters {
        KernelCounters {
            kernel: kernel.into(),
            launches: 1,
            ctas,
            threads_per_cta: threads,
            footprint_bytes: bytes,
            global_load_requests: requests,
            warp_instructions: requests * 10,
            ..Default::default()
        }
    }

    #[test]
    fn a_big_streaming_kernel_is_dram_bound_and_a_one_block_loop_is_latency_bound() {
        let gpu = GpuSpec::h200();
        // 100 MB over 10k CTAs of 8 warps (13 waves of 6 CTAs per SM), 2 rounds of 12 loads
        // per warp: 18 µs of latency under 24 µs of DRAM time
        let big = predict_launch(
            &gpu,
            "x",
            &counters("matvec_bf16", 10_000, 256, 100 << 20, 10_000 * 8 * 24),
            1.0,
            1,
        );
        assert_eq!(big.limit, "dram");
        // the 1 µs inter-kernel gap on top of 24 µs
        assert!((big.bw_fraction(&gpu) - 0.96).abs() < 0.01, "{big:?}");
        // one CTA, 32 warps, 148 loads each, 4 in flight: 37 rounds of 0.7 µs (argmax v1)
        let one = predict_launch(
            &gpu,
            "x",
            &counters("argmax_f32", 1, 1024, 600_000, 32 * 148),
            1.0,
            1,
        );
        assert_eq!(one.limit, "latency");
        assert!((one.us - 26.9).abs() < 0.1, "{one:?}");
    }
}
