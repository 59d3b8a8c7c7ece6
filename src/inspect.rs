//! `inspect`: what "135M", "1.5B" or "7B" means for one checkpoint, from its headers alone.
//!
//! Reads config.json (or the GGUF metadata) and the tensor tables — never tensor data, so it takes
//! milliseconds even for a 70B checkpoint — and reports the architecture and shapes, the exact
//! parameter count with a breakdown, bytes on disk by dtype, the memory the weights and the KV
//! cache need at each precision, and whether that fits in this machine's RAM.
//!
//! Deliberately not here: activation memory and runtime overheads (they depend on batch and
//! backend, not on the checkpoint), and querying a GPU (the caller knows its device and fills
//! [`Report::gpu_memory_bytes`]).

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::loader::ModelFiles;
use crate::loader::{gguf, safetensors};

/// Bytes per weight of the precisions a checkpoint can be held in.
const PRECISIONS: [(&str, f64); 4] = [
    ("f32", 4.0),
    ("bf16", 2.0),
    // GGML Q8_0: 32 weights in 34 bytes (an f16 scale per block).
    ("int8", 34.0 / 32.0),
    // GGML Q4_0: 32 weights in 18 bytes.
    ("q4", 18.0 / 32.0),
];

/// Parameters by role. Tied embeddings are counted once, under `embeddings`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Breakdown {
    /// The token embedding table.
    pub embeddings: u64,
    /// q/k/v/o projections, their biases and q/k norms.
    pub attention: u64,
    /// gate/up/down projections.
    pub mlp: u64,
    /// The layer norms and the final norm.
    pub norms: u64,
    /// An untied output projection.
    pub lm_head: u64,
    /// Anything outside the llama family's tensor names.
    pub other: u64,
    /// The checkpoint ties its embeddings and stores them: a stored lm_head is a duplicate.
    tied_skip: bool,
}

/// The answer to "what is this checkpoint", computed from headers.
#[derive(Clone, Debug)]
pub struct Report {
    /// The checkpoint inspected.
    pub path: PathBuf,
    /// "safetensors" or "gguf".
    pub format: &'static str,
    /// Its config.
    pub config: ModelConfig,
    /// Tensors in the checkpoint.
    pub tensor_count: usize,
    /// Exact number of parameters (sum of tensor element counts; tied embeddings once).
    pub parameters: u64,
    /// Parameters by role.
    pub breakdown: Breakdown,
    /// Tensor bytes on disk by stored dtype ("bf16", "f32", "q4_1" ...).
    pub weight_bytes: BTreeMap<String, u64>,
    /// Parameters by stored dtype.
    pub parameters_by_dtype: BTreeMap<String, u64>,
    /// Sum of the sizes of the checkpoint's weight files.
    pub file_bytes: u64,
    /// This machine's RAM (MemTotal of /proc/meminfo), when known.
    pub ram_bytes: Option<u64>,
    /// Memory of the device the caller will use, when it knows one (the CLI fills this).
    pub gpu_memory_bytes: Option<u64>,
}

/// "135M", "1.8B", "7.6B", "70.6B": millions to the nearest million, billions to one decimal.
pub fn human_count(n: u64) -> String {
    let x = n as f64;
    if x >= 1e9 {
        format!("{:.1}B", x / 1e9)
    } else if x >= 1e6 {
        format!("{:.0}M", x / 1e6)
    } else if x >= 1e3 {
        format!("{:.0}K", x / 1e3)
    } else {
        n.to_string()
    }
}

/// "1.23 GiB" style.
pub fn human_bytes(n: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut x = n as f64;
    let mut u = 0;
    while x >= 1024.0 && u + 1 < units.len() {
        x /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{x:.2} {}", units[u])
    }
}

#[derive(PartialEq)]
enum Role {
    Embeddings,
    Attention,
    Mlp,
    Norm,
    LmHead,
    Other,
}

fn role(hf_name: &str) -> Role {
    if hf_name.contains("embed_tokens") {
        Role::Embeddings
    } else if hf_name.starts_with("lm_head") {
        Role::LmHead
    } else if hf_name.contains("norm") {
        // Before self_attn: q_norm / k_norm are norms, not attention projections.
        Role::Norm
    } else if hf_name.contains("self_attn") {
        Role::Attention
    } else if hf_name.contains(".mlp.") {
        Role::Mlp
    } else {
        Role::Other
    }
}

impl Breakdown {
    /// The exact parameter count by role of a checkpoint's tensors (Hugging Face name, element
    /// count): the one place parameters are counted, for `inspect` and `Model::num_parameters`.
    /// A checkpoint that ties its embeddings but still stores lm_head holds one matrix twice;
    /// it is counted once.
    pub(crate) fn of<'a>(
        tied: bool,
        tensors: impl Iterator<Item = (&'a str, u64)> + Clone,
    ) -> Self {
        let has_embed = tensors.clone().any(|(n, _)| role(n) == Role::Embeddings);
        let mut b = Breakdown {
            tied_skip: tied && has_embed,
            ..Breakdown::default()
        };
        let skip = b.tied_skip;
        for (name, numel) in tensors.filter(|(n, _)| !(skip && role(n) == Role::LmHead)) {
            *match role(name) {
                Role::Embeddings => &mut b.embeddings,
                Role::Attention => &mut b.attention,
                Role::Mlp => &mut b.mlp,
                Role::Norm => &mut b.norms,
                Role::LmHead => &mut b.lm_head,
                Role::Other => &mut b.other,
            } += numel;
        }
        b
    }

    /// Whether the tensor's elements are counted (a duplicate tied lm_head is not).
    fn counted(&self, hf_name: &str) -> bool {
        !(self.tied_skip && role(hf_name) == Role::LmHead)
    }

    /// All parameters.
    pub fn total(&self) -> u64 {
        self.embeddings + self.attention + self.mlp + self.norms + self.lm_head + self.other
    }
}

/// One tensor as inspect sees it.
struct Entry {
    hf_name: String,
    numel: u64,
    dtype: String,
    bytes: u64,
}

/// Inspect a checkpoint: a directory (config.json + model.safetensors or a sharded index), a
/// .safetensors file with config.json beside it, or a .gguf file. Reads headers only.
pub fn inspect(path: &Path) -> Result<Report> {
    let files = ModelFiles::resolve(path)?;
    let (format, config, entries, file_bytes) = if files.is_gguf() {
        inspect_gguf(&files.weights)?
    } else {
        inspect_safetensors(&files)?
    };

    let b = Breakdown::of(
        config.tie_word_embeddings,
        entries.iter().map(|e| (e.hf_name.as_str(), e.numel)),
    );
    let mut weight_bytes = BTreeMap::new();
    let mut by_dtype = BTreeMap::new();
    for e in &entries {
        *weight_bytes.entry(e.dtype.clone()).or_insert(0) += e.bytes;
        if b.counted(&e.hf_name) {
            *by_dtype.entry(e.dtype.clone()).or_insert(0) += e.numel;
        }
    }
    let parameters = b.total();
    Ok(Report {
        path: path.to_path_buf(),
        format,
        config,
        tensor_count: entries.len(),
        parameters,
        breakdown: b,
        weight_bytes,
        parameters_by_dtype: by_dtype,
        file_bytes,
        ram_bytes: mem_total(),
        gpu_memory_bytes: None,
    })
}

type Parts = (&'static str, ModelConfig, Vec<Entry>, u64);

fn inspect_gguf(path: &Path) -> Result<Parts> {
    let file = gguf::read_header(path)?;
    let arch = file.architecture()?;
    if !gguf::SUPPORTED_ARCHITECTURES.contains(&arch) {
        return Err(Error::UnknownArchitecture {
            found: arch.to_string(),
            supported: gguf::SUPPORTED_ARCHITECTURES.to_vec(),
        });
    }
    let config = ModelConfig::from_json(&gguf::hf_config(&file)?, path)?;
    let entries = file
        .tensors
        .iter()
        .map(|t| Entry {
            hf_name: gguf::hf_tensor_name_for(arch, &t.name).unwrap_or_else(|| t.name.clone()),
            numel: t.numel(),
            dtype: t.ggml_type.name.to_ascii_lowercase(),
            bytes: t.n_bytes,
        })
        .collect();
    Ok(("gguf", config, entries, file.file_len))
}

fn inspect_safetensors(files: &ModelFiles) -> Result<Parts> {
    let config = ModelConfig::from_file(&files.dir.join("config.json"))?;
    let mut entries = Vec::new();
    let mut file_bytes = 0;
    for f in safetensors::checkpoint_files(&files.weights)? {
        let h = safetensors::read_header(&f)?;
        file_bytes += h.file_len;
        for t in h.tensors {
            entries.push(Entry {
                numel: t.numel() as u64,
                dtype: t.dtype.to_ascii_lowercase(),
                bytes: (t.end - t.begin) as u64,
                hf_name: t.name,
            });
        }
    }
    Ok(("safetensors", config, entries, file_bytes))
}

/// MemTotal from /proc/meminfo, in bytes.
fn mem_total() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

impl Report {
    /// The parameter count as people say it ("135M", "1.5B").
    pub fn parameters_human(&self) -> String {
        human_count(self.parameters)
    }

    /// Bytes to hold the weights at each precision, in the order "f32", "bf16", "int8", "q4".
    pub fn memory_bytes(&self) -> Vec<(&'static str, u64)> {
        PRECISIONS
            .iter()
            .map(|&(p, bpw)| (p, (self.parameters as f64 * bpw).ceil() as u64))
            .collect()
    }

    /// KV-cache bytes per token: 2 (k and v) × layers × kv_heads × head_dim × bytes per element.
    pub fn kv_cache_bytes_per_token(&self, bytes_per_elem: u64) -> u64 {
        let c = &self.config;
        2 * (c.num_layers * c.num_kv_heads * c.head_dim) as u64 * bytes_per_elem
    }

    /// The context the KV-cache figures assume.
    pub fn context_length(&self) -> u64 {
        self.config.max_position_embeddings as u64
    }

    /// Whether weights at `precision` plus a full-context KV cache (f32 next to f32 weights,
    /// bf16 otherwise) fit in `capacity` bytes.
    fn fits(&self, precision: &str, capacity: u64) -> bool {
        let kv_bytes = if precision == "f32" { 4 } else { 2 };
        let weights = self
            .memory_bytes()
            .into_iter()
            .find(|&(p, _)| p == precision)
            .map_or(0, |(_, b)| b);
        let need = weights + self.kv_cache_bytes_per_token(kv_bytes) * self.context_length();
        need <= capacity
    }

    /// The report as JSON (what `minfer inspect --json` prints).
    pub fn to_json(&self) -> Value {
        let c = &self.config;
        let mem: serde_json::Map<String, Value> = self
            .memory_bytes()
            .into_iter()
            .map(|(k, v)| (k.to_string(), json!(v)))
            .collect();
        let fits = |cap: Option<u64>| -> Value {
            match cap {
                None => Value::Null,
                Some(cap) => PRECISIONS
                    .iter()
                    .map(|&(p, _)| (p.to_string(), json!(self.fits(p, cap))))
                    .collect::<serde_json::Map<_, _>>()
                    .into(),
            }
        };
        let ctx = self.context_length();
        json!({
            "path": self.path.display().to_string(),
            "format": self.format,
            "architecture": c.architecture,
            "shapes": {
                "layers": c.num_layers,
                "hidden_size": c.hidden_size,
                "attention_heads": c.num_heads,
                "kv_heads": c.num_kv_heads,
                "head_dim": c.head_dim,
                "intermediate_size": c.intermediate_size,
                "vocab_size": c.vocab_size,
                "context_length": c.max_position_embeddings,
                "tie_word_embeddings": c.tie_word_embeddings,
            },
            "tensors": self.tensor_count,
            "parameters": self.parameters,
            "parameters_human": self.parameters_human(),
            "breakdown": {
                "embeddings": self.breakdown.embeddings,
                "attention": self.breakdown.attention,
                "mlp": self.breakdown.mlp,
                "norms": self.breakdown.norms,
                "lm_head": self.breakdown.lm_head,
                "other": self.breakdown.other,
            },
            "parameters_by_dtype": self.parameters_by_dtype,
            "weight_bytes": self.weight_bytes,
            "file_bytes": self.file_bytes,
            "memory_bytes": mem,
            "kv_cache_bytes_per_token": {
                "f32": self.kv_cache_bytes_per_token(4),
                "bf16": self.kv_cache_bytes_per_token(2),
            },
            "kv_cache_bytes_full_context": {
                "f32": self.kv_cache_bytes_per_token(4) * ctx,
                "bf16": self.kv_cache_bytes_per_token(2) * ctx,
            },
            "ram_bytes": self.ram_bytes,
            "fits_in_ram": fits(self.ram_bytes),
            "gpu_memory_bytes": self.gpu_memory_bytes,
            "fits_in_gpu": fits(self.gpu_memory_bytes),
        })
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.config;
        let pct = |n: u64| {
            if self.parameters == 0 {
                0.0
            } else {
                100.0 * n as f64 / self.parameters as f64
            }
        };
        writeln!(f, "{} ({})", self.path.display(), self.format)?;
        writeln!(
            f,
            "architecture   {}: {} layers, hidden {}, {} heads ({} kv) of {}, intermediate {}, vocab {}, context {}{}",
            c.architecture,
            c.num_layers,
            c.hidden_size,
            c.num_heads,
            c.num_kv_heads,
            c.head_dim,
            c.intermediate_size,
            c.vocab_size,
            c.max_position_embeddings,
            if c.tie_word_embeddings { ", tied embeddings" } else { "" }
        )?;
        writeln!(
            f,
            "parameters     {} = {} ({} tensors)",
            group_digits(self.parameters),
            self.parameters_human(),
            self.tensor_count
        )?;
        let b = &self.breakdown;
        for (name, n) in [
            ("embeddings", b.embeddings),
            ("attention", b.attention),
            ("mlp", b.mlp),
            ("norms", b.norms),
            ("lm_head", b.lm_head),
            ("other", b.other),
        ] {
            if n == 0 && (name == "other" || (name == "lm_head" && c.tie_word_embeddings)) {
                if name == "lm_head" {
                    writeln!(f, "  {name:<12} tied to the embeddings")?;
                }
                continue;
            }
            writeln!(f, "  {name:<12} {:>16} {:>6.1}%", group_digits(n), pct(n))?;
        }
        writeln!(
            f,
            "on disk        {} in all files",
            human_bytes(self.file_bytes)
        )?;
        for (dtype, bytes) in &self.weight_bytes {
            writeln!(
                f,
                "  {dtype:<12} {:>16} params {:>12}",
                group_digits(self.parameters_by_dtype.get(dtype).copied().unwrap_or(0)),
                human_bytes(*bytes)
            )?;
        }
        writeln!(f, "weights at     (bytes to hold every parameter)")?;
        let ram = self.ram_bytes;
        for (p, bytes) in self.memory_bytes() {
            let fits = match ram {
                Some(cap) if self.fits(p, cap) => "fits in RAM",
                Some(_) => "does not fit in RAM",
                None => "",
            };
            let gpu = match self.gpu_memory_bytes {
                Some(cap) if self.fits(p, cap) => ", fits on the GPU",
                Some(_) => ", does not fit on the GPU",
                None => "",
            };
            writeln!(f, "  {p:<12} {:>12}   {fits}{gpu}", human_bytes(bytes))?;
        }
        let ctx = self.context_length();
        writeln!(
            f,
            "KV cache       {} per token at f32, {} at bf16; {} / {} at the full {} context",
            human_bytes(self.kv_cache_bytes_per_token(4)),
            human_bytes(self.kv_cache_bytes_per_token(2)),
            human_bytes(self.kv_cache_bytes_per_token(4) * ctx),
            human_bytes(self.kv_cache_bytes_per_token(2) * ctx),
            ctx
        )?;
        if let Some(r) = ram {
            writeln!(
                f,
                "this machine   {} RAM (fit = weights + full-context KV cache)",
                human_bytes(r)
            )?;
        }
        if let Some(g) = self.gpu_memory_bytes {
            writeln!(f, "GPU            {} memory", human_bytes(g))?;
        }
        Ok(())
    }
}

/// 1777088000 → "1,777,088,000".
pub fn group_digits(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}
