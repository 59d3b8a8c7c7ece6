//! config.json → [`ModelConfig`]: the llama family (Llama, Mistral, Qwen2, Qwen3) and Gemma 3 as
//! one struct of flags, so that one forward pass serves them all.
//!
//! Both config styles are read: transformers ≥ 5 writes `rope_parameters` (with `rope_theta`
//! inside), older checkpoints write `rope_theta` and `rope_scaling` at the top level.
//!
//! # Gemma 3, from the sources (not guessed)
//!
//! transformers' `models/gemma3/modeling_gemma3.py` and `configuration_gemma3.py` (read in the
//! installed transformers package, see tests/fixtures/make_gemma_fixtures.py):
//! - `Gemma3TextScaledWordEmbedding`: embeddings times `hidden_size ** 0.5`, a float32 scalar
//!   ([`ModelConfig::embed_scale`]).
//! - `Gemma3RMSNorm`: `x / sqrt(mean(x²) + eps) · (1 + w)` in float32, `w` initialised to zeros
//!   ([`ModelConfig::norm_weight_offset`] = 1, added to the weights once at load).
//! - `Gemma3DecoderLayer`: four norms: `x += post_attention_layernorm(attn(input_layernorm(x)))`,
//!   `x += post_feedforward_layernorm(mlp(pre_feedforward_layernorm(x)))`
//!   ([`ModelConfig::sandwich_norms`]); note that Gemma's `post_attention_layernorm` is the
//!   norm *after* attention, where llama's is the norm before the MLP.
//! - q_norm / k_norm per head (Gemma3RMSNorm of head_dim) before RoPE.
//! - MLP `down(gelu_pytorch_tanh(gate(x)) · up(x))` (`hidden_activation`).
//! - Attention scale `query_pre_attn_scalar ** -0.5`; no soft-capping (`attn_logit_softcapping`
//!   and `final_logit_softcapping` are None in Gemma 3, and refused here when set).
//! - `layer_types` ("sliding_attention" / "full_attention"), defaulting to every
//!   `sliding_window_pattern`-th layer (default 6) being full: layer i slides iff (i+1) % 6 ≠ 0.
//!   Sliding layers use RoPE base `rope_local_base_freq` with no scaling; full layers use
//!   `rope_theta` with `rope_scaling` (transformers ≥ 5: `rope_parameters` keyed by layer type).
//!
//! llama.cpp (`convert_hf_to_gguf.py`, class `Gemma3Model`; `llama-model.cpp`, LLM_ARCH_GEMMA3):
//! the converter **adds 1 to every tensor whose name ends in `norm.weight`** (`norm_shift = 1.0`,
//! "Gemma3RMSNorm adds 1.0 to the norm value"), so GGUF norms hold `1 + w`; the GGUF loader
//! subtracts it again so the weights are Hugging Face's (see loader/gguf/hf.rs). The GGUF has no
//! local RoPE base or layer pattern: llama.cpp hard-codes `rope_freq_base_train_swa = 10000`,
//! `set_swa_pattern(6)` and the attention scale `1/sqrt(head_dim)` (27B: `1/sqrt(hidden/heads)`).

use std::path::Path;

use serde_json::Value;

use crate::error::{Error, Result};

pub const SUPPORTED_ARCHITECTURES: &[&str] = &[
    "LlamaForCausalLM",
    "MistralForCausalLM",
    "Qwen2ForCausalLM",
    "Qwen3ForCausalLM",
    "Gemma3ForCausalLM",
    "Gemma3ForConditionalGeneration",
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    Llama,
    Mistral,
    Qwen2,
    Qwen3,
    Gemma3,
}

/// The gate activation of the gated MLP: `down(act(gate(x)) · up(x))`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MlpActivation {
    /// silu(x) = x / (1 + e^-x) (SwiGLU: llama, Mistral, Qwen).
    Silu,
    /// GELU, tanh approximation (`gelu_pytorch_tanh`: GeGLU, Gemma).
    GeluTanh,
}

/// How rotary frequencies are scaled (`rope_scaling` / `rope_parameters`).
#[derive(Clone, Debug, PartialEq)]
pub enum RopeScaling {
    None,
    /// Positions divided by `factor` (equivalently inv_freq / factor).
    Linear {
        factor: f64,
    },
    /// Llama 3.1's frequency-dependent scaling.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: f64,
    },
}

#[derive(Clone, Debug, PartialEq)]
/// A model's shape and flags, from config.json or GGUF metadata. Architectures differ only by
/// these fields; the forward pass reads them.
pub struct ModelConfig {
    /// The family.
    pub arch: Arch,
    /// The `architectures[0]` string, as written in config.json.
    pub architecture: String,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the MLP's hidden layer.
    pub intermediate_size: usize,
    /// Transformer blocks.
    pub num_layers: usize,
    /// Query heads.
    pub num_heads: usize,
    /// Key/value heads.
    pub num_kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// Vocabulary size (rows of the embedding table).
    pub vocab_size: usize,
    /// The epsilon inside every RMSNorm.
    pub rms_norm_eps: f32,
    /// RoPE base frequency.
    pub rope_theta: f64,
    /// RoPE frequency scaling (llama3, linear) or none.
    pub rope_scaling: RopeScaling,
    /// The longest context the model was trained for.
    pub max_position_embeddings: usize,
    /// The output projection reuses the embedding table.
    pub tie_word_embeddings: bool,
    /// q/k/v projections carry biases (Qwen2, or `attention_bias: true`).
    pub attention_bias: bool,
    /// Per-head RMSNorm of q and k before RoPE (Qwen3).
    pub qk_norm: bool,
    /// Sliding-window size per layer; None = full causal attention.
    pub layer_windows: Vec<Option<usize>>,
    /// RoPE base of the sliding-window layers, when it differs from `rope_theta` (Gemma 3's
    /// `rope_local_base_freq`; those layers also skip `rope_scaling`).
    pub rope_local_theta: Option<f64>,
    /// Softmax scale of attention: `head_dim^-0.5`, or `query_pre_attn_scalar^-0.5` (Gemma).
    pub attention_scale: f32,
    /// Embeddings are multiplied by this (Gemma: `sqrt(hidden_size)`).
    pub embed_scale: Option<f32>,
    /// Added to every RMSNorm weight at load (Gemma's `(1 + w)`: 1.0; else 0.0).
    pub norm_weight_offset: f32,
    /// Norms after attention and after the MLP too, before each residual add (Gemma).
    pub sandwich_norms: bool,
    /// The MLP's gate activation.
    pub mlp_activation: MlpActivation,
    /// Beginning-of-sequence id, when the config names one.
    pub bos_token_id: Option<u32>,
    /// End-of-sequence ids the config names.
    pub eos_token_ids: Vec<u32>,
}

fn get_usize(v: &Value, key: &str, path: &Path) -> Result<usize> {
    v.get(key)
        .and_then(Value::as_u64)
        .map(|x| x as usize)
        .ok_or_else(|| Error::json(path, format!("missing or non-integer field {key:?}")))
}

/// Upper bounds on a config's sizes, far above any real model (Llama 3.1 405B: 126 layers,
/// hidden 16384, 128 heads; Gemma 3: a 262144-token vocabulary), so that a hostile config.json
/// cannot size a table from a number like 2^40 and every product of two dims fits in 64 bits.
/// Each must also be positive (a zero vocabulary or width divides by zero downstream).
const LIMITS: [(&str, usize); 7] = [
    ("num_hidden_layers", 1 << 12),
    ("num_attention_heads", 1 << 12),
    ("num_key_value_heads", 1 << 12),
    ("head_dim", 1 << 14),
    ("hidden_size", 1 << 20),
    ("intermediate_size", 1 << 22),
    ("vocab_size", 1 << 24),
];

fn check_limit(path: &Path, key: &str, value: usize) -> Result<usize> {
    match LIMITS.iter().find(|(k, _)| *k == key) {
        Some(&(_, max)) if value == 0 || value > max => Err(Error::json(
            path,
            format!("{key} {value} is not in 1..={max}"),
        )),
        _ => Ok(value),
    }
}

fn opt_usize(v: &Value, key: &str) -> Option<usize> {
    v.get(key).and_then(Value::as_u64).map(|x| x as usize)
}

/// `eos_token_id` may be an integer or a list.
pub(crate) fn token_ids(v: Option<&Value>) -> Vec<u32> {
    match v {
        Some(Value::Number(n)) => n.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_u64)
            .map(|x| x as u32)
            .collect(),
        _ => Vec::new(),
    }
}

impl ModelConfig {
    /// The tensor schema of this architecture: every tensor name and shape the forward pass
    /// reads, in checkpoint order. The one place shapes are written down: the transformer checks
    /// a checkpoint against it and the synthetic models are generated from it.
    pub fn tensor_shapes(&self) -> Vec<(String, Vec<usize>)> {
        let c = self;
        let (h, i, v) = (c.hidden_size, c.intermediate_size, c.vocab_size);
        let (q, kv, hd) = (c.q_dim(), c.kv_dim(), c.head_dim);
        let mut out = vec![("model.embed_tokens.weight".to_string(), vec![v, h])];
        for l in 0..c.num_layers {
            let p = format!("model.layers.{l}");
            out.push((format!("{p}.input_layernorm.weight"), vec![h]));
            for (n, rows) in [("q", q), ("k", kv), ("v", kv)] {
                out.push((format!("{p}.self_attn.{n}_proj.weight"), vec![rows, h]));
                if c.attention_bias {
                    out.push((format!("{p}.self_attn.{n}_proj.bias"), vec![rows]));
                }
            }
            if c.qk_norm {
                out.push((format!("{p}.self_attn.q_norm.weight"), vec![hd]));
                out.push((format!("{p}.self_attn.k_norm.weight"), vec![hd]));
            }
            out.push((format!("{p}.self_attn.o_proj.weight"), vec![h, q]));
            out.push((format!("{p}.post_attention_layernorm.weight"), vec![h]));
            if c.sandwich_norms {
                out.push((format!("{p}.pre_feedforward_layernorm.weight"), vec![h]));
                out.push((format!("{p}.post_feedforward_layernorm.weight"), vec![h]));
            }
            out.push((format!("{p}.mlp.gate_proj.weight"), vec![i, h]));
            out.push((format!("{p}.mlp.up_proj.weight"), vec![i, h]));
            out.push((format!("{p}.mlp.down_proj.weight"), vec![h, i]));
        }
        out.push(("model.norm.weight".to_string(), vec![h]));
        if !c.tie_word_embeddings {
            out.push(("lm_head.weight".to_string(), vec![v, h]));
        }
        out
    }

    /// Read and check a config.json.
    pub fn from_file(path: &Path) -> Result<ModelConfig> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::MissingFile {
                    path: path.to_path_buf(),
                    what: "config.json".into(),
                }
            } else {
                Error::io(path, e)
            }
        })?;
        let v: Value = serde_json::from_str(&text).map_err(|e| Error::json(path, e))?;
        Self::from_json(&v, path)
    }

    /// Parse a config.json value; `path` is only used in error messages.
    pub fn from_json(v: &Value, path: &Path) -> Result<ModelConfig> {
        // Gemma3ForConditionalGeneration keeps the language model's config under `text_config`.
        let outer_arch = v
            .get("architectures")
            .and_then(|a| a.get(0))
            .and_then(Value::as_str);
        if outer_arch == Some("Gemma3ForConditionalGeneration") {
            let text = v
                .get("text_config")
                .filter(|t| t.is_object())
                .ok_or_else(|| {
                    Error::json(
                        path,
                        "Gemma3ForConditionalGeneration without \"text_config\"",
                    )
                })?;
            let mut t = text.clone();
            let m = t.as_object_mut().expect("checked object");
            m.insert(
                "architectures".into(),
                serde_json::json!(["Gemma3ForCausalLM"]),
            );
            for key in ["bos_token_id", "eos_token_id", "tie_word_embeddings"] {
                if let (false, Some(x)) = (m.contains_key(key), v.get(key)) {
                    m.insert(key.into(), x.clone());
                }
            }
            let mut c = Self::from_json(&t, path)?;
            c.architecture = "Gemma3ForConditionalGeneration".into();
            return Ok(c);
        }
        let architecture = v
            .get("architectures")
            .and_then(|a| a.get(0))
            .and_then(Value::as_str)
            .ok_or_else(|| Error::json(path, "missing field \"architectures\""))?
            .to_string();
        let arch = match architecture.as_str() {
            "LlamaForCausalLM" => Arch::Llama,
            "MistralForCausalLM" => Arch::Mistral,
            "Qwen2ForCausalLM" => Arch::Qwen2,
            "Qwen3ForCausalLM" => Arch::Qwen3,
            "Gemma3ForCausalLM" => Arch::Gemma3,
            _ => {
                return Err(Error::UnknownArchitecture {
                    found: architecture,
                    supported: SUPPORTED_ARCHITECTURES.to_vec(),
                })
            }
        };
        let limited = |key: &str| check_limit(path, key, get_usize(v, key, path)?);
        let hidden_size = limited("hidden_size")?;
        let num_heads = limited("num_attention_heads")?;
        let num_layers = limited("num_hidden_layers")?;
        let num_kv_heads = check_limit(
            path,
            "num_key_value_heads",
            opt_usize(v, "num_key_value_heads").unwrap_or(num_heads),
        )?;
        if num_heads == 0 || num_kv_heads == 0 || num_heads % num_kv_heads != 0 {
            return Err(Error::json(
                path,
                format!("num_attention_heads ({num_heads}) must be a positive multiple of num_key_value_heads ({num_kv_heads})"),
            ));
        }
        let head_dim = match v.get("head_dim") {
            Some(Value::Number(n)) => n.as_u64().map(|x| x as usize),
            _ => None,
        }
        .unwrap_or(hidden_size / num_heads);
        let head_dim = check_limit(path, "head_dim", head_dim)?;
        if head_dim == 0 || head_dim % 2 != 0 {
            return Err(Error::json(
                path,
                format!("head_dim must be even and positive, got {head_dim}"),
            ));
        }

        // RoPE: new style `rope_parameters` or old style `rope_theta` + `rope_scaling`. Gemma 3
        // under transformers ≥ 5 keys `rope_parameters` by layer type; the full-attention entry
        // is the model's main RoPE, the sliding one gives the local base.
        let by_type = v
            .get("rope_parameters")
            .filter(|r| r.get("full_attention").is_some_and(Value::is_object));
        let rope_obj = match by_type {
            Some(r) => r.get("full_attention"),
            None => v
                .get("rope_parameters")
                .filter(|x| x.is_object())
                .or_else(|| v.get("rope_scaling").filter(|x| x.is_object())),
        };
        let rope_theta = rope_obj
            .and_then(|r| r.get("rope_theta"))
            .and_then(Value::as_f64)
            .or_else(|| v.get("rope_theta").and_then(Value::as_f64))
            // Gemma3TextConfig.default_theta: global 1e6 (local 10000, below).
            .unwrap_or(if arch == Arch::Gemma3 {
                1_000_000.0
            } else {
                10000.0
            });
        let rope_scaling = match rope_obj {
            None => RopeScaling::None,
            Some(r) => {
                let kind = r
                    .get("rope_type")
                    .or_else(|| r.get("type"))
                    .and_then(Value::as_str)
                    .unwrap_or("default");
                let f = |k: &str| -> Result<f64> {
                    r.get(k).and_then(Value::as_f64).ok_or_else(|| {
                        Error::json(path, format!("rope scaling {kind:?} needs {k:?}"))
                    })
                };
                match kind {
                    "default" => RopeScaling::None,
                    "linear" => RopeScaling::Linear { factor: f("factor")? },
                    "llama3" => RopeScaling::Llama3 {
                        factor: f("factor")?,
                        low_freq_factor: f("low_freq_factor")?,
                        high_freq_factor: f("high_freq_factor")?,
                        original_max_position_embeddings: f("original_max_position_embeddings")?,
                    },
                    other => {
                        return Err(Error::json(
                            path,
                            format!("unsupported rope scaling type {other:?} (supported: default, linear, llama3)"),
                        ))
                    }
                }
            }
        };
        if r_partial(v) {
            return Err(Error::json(
                path,
                "partial_rotary_factor < 1 is not supported",
            ));
        }

        let layer_windows = layer_windows(v, arch, num_layers, path)?;
        let gemma = arch == Arch::Gemma3;
        let rope_local_theta = if gemma {
            let local = by_type
                .and_then(|r| r.get("sliding_attention"))
                .and_then(|r| r.get("rope_theta"))
                .and_then(Value::as_f64)
                .or_else(|| v.get("rope_local_base_freq").and_then(Value::as_f64))
                .unwrap_or(10000.0);
            Some(local)
        } else {
            None
        };
        if gemma {
            if v.get("use_bidirectional_attention")
                .and_then(Value::as_bool)
                .unwrap_or(false)
            {
                return Err(Error::json(
                    path,
                    "use_bidirectional_attention (EmbeddingGemma) is not supported",
                ));
            }
            if let Some(t) = by_type
                .and_then(|r| r.get("sliding_attention"))
                .and_then(|r| r.get("rope_type"))
                .and_then(Value::as_str)
                .filter(|t| *t != "default")
            {
                return Err(Error::json(
                    path,
                    format!("rope_type {t:?} on sliding layers is not supported"),
                ));
            }
            for key in ["attn_logit_softcapping", "final_logit_softcapping"] {
                if v.get(key).is_some_and(|x| !x.is_null()) {
                    return Err(Error::json(
                        path,
                        format!("{key} is set; logit soft-capping (Gemma 2) is not supported"),
                    ));
                }
            }
        }
        let act = v
            .get("hidden_activation")
            .or_else(|| v.get("hidden_act"))
            .and_then(Value::as_str)
            .unwrap_or(if gemma { "gelu_pytorch_tanh" } else { "silu" });
        let mlp_activation = match act {
            "silu" | "swish" => MlpActivation::Silu,
            "gelu_pytorch_tanh" | "gelu_new" | "gelu_fast" => MlpActivation::GeluTanh,
            other => {
                return Err(Error::json(
                    path,
                    format!(
                        "unsupported MLP activation {other:?} (supported: silu, gelu_pytorch_tanh)"
                    ),
                ))
            }
        };
        let attention_scale = match v.get("query_pre_attn_scalar").and_then(Value::as_f64) {
            Some(s) if gemma && s > 0.0 => s.powf(-0.5) as f32,
            _ => 1.0 / (head_dim as f32).sqrt(),
        };
        let attention_bias = match arch {
            Arch::Qwen2 => true,
            _ => v
                .get("attention_bias")
                .and_then(Value::as_bool)
                .unwrap_or(false),
        };
        Ok(ModelConfig {
            arch,
            architecture,
            hidden_size,
            intermediate_size: limited("intermediate_size")?,
            num_layers,
            num_heads,
            num_kv_heads,
            head_dim,
            vocab_size: limited("vocab_size")?,
            rms_norm_eps: v
                .get("rms_norm_eps")
                .and_then(Value::as_f64)
                .unwrap_or(1e-6) as f32,
            rope_theta,
            rope_scaling,
            max_position_embeddings: opt_usize(v, "max_position_embeddings").unwrap_or(2048),
            // Gemma ties by default (Gemma3TextConfig's tie_word_embeddings=True).
            tie_word_embeddings: v
                .get("tie_word_embeddings")
                .and_then(Value::as_bool)
                .unwrap_or(gemma),
            attention_bias,
            qk_norm: arch == Arch::Qwen3 || gemma,
            layer_windows,
            rope_local_theta,
            attention_scale,
            embed_scale: gemma.then(|| (hidden_size as f64).sqrt() as f32),
            norm_weight_offset: if gemma { 1.0 } else { 0.0 },
            sandwich_norms: gemma,
            mlp_activation,
            bos_token_id: token_ids(v.get("bos_token_id")).first().copied(),
            eos_token_ids: token_ids(v.get("eos_token_id")),
        })
    }

    /// Rotary inverse frequencies, `[head_dim / 2]`, with the configured scaling applied, computed
    /// exactly as transformers does (f64 here, then rounded once to f32).
    pub fn rope_inv_freq(&self) -> Vec<f32> {
        rope_inv_freq(self.head_dim, self.rope_theta, &self.rope_scaling)
    }

    /// The rotary frequencies of layer `l`: the local ones (`rope_local_theta`, unscaled) for a
    /// sliding-window layer of a model that has them, else [`ModelConfig::rope_inv_freq`].
    pub fn layer_uses_local_rope(&self, l: usize) -> bool {
        self.rope_local_theta.is_some() && self.layer_windows.get(l).is_some_and(Option::is_some)
    }

    /// The unscaled frequencies of the local (sliding-window) layers, when the model has them.
    pub fn rope_local_inv_freq(&self) -> Option<Vec<f32>> {
        self.rope_local_theta
            .map(|t| rope_inv_freq(self.head_dim, t, &RopeScaling::None))
    }
}

fn rope_inv_freq(head_dim: usize, theta: f64, scaling: &RopeScaling) -> Vec<f32> {
    let d = head_dim as f64;
    (0..head_dim / 2)
        .map(|i| {
            // transformers computes base ** (2i / d) in f32; do the same so tables match bitwise-ish.
            let exponent = ((2 * i) as f32 / d as f32) as f64;
            let inv = (1.0 / (theta.powf(exponent))) as f32 as f64;
            let scaled = match *scaling {
                RopeScaling::None => inv,
                RopeScaling::Linear { factor } => inv / factor,
                RopeScaling::Llama3 {
                    factor,
                    low_freq_factor,
                    high_freq_factor,
                    original_max_position_embeddings: old,
                } => {
                    let low_wavelen = old / low_freq_factor;
                    let high_wavelen = old / high_freq_factor;
                    let wavelen = 2.0 * std::f64::consts::PI / inv;
                    if wavelen < high_wavelen {
                        inv
                    } else if wavelen > low_wavelen {
                        inv / factor
                    } else {
                        let smooth = (old / wavelen - low_freq_factor)
                            / (high_freq_factor - low_freq_factor);
                        (1.0 - smooth) * inv / factor + smooth * inv
                    }
                }
            };
            scaled as f32
        })
        .collect()
}

impl ModelConfig {
    /// Dimensions of q (all heads) and of k / v (kv heads).
    pub fn q_dim(&self) -> usize {
        self.num_heads * self.head_dim
    }
    /// Width of one position's keys (or values): `num_kv_heads × head_dim`.
    pub fn kv_dim(&self) -> usize {
        self.num_kv_heads * self.head_dim
    }
}

fn r_partial(v: &Value) -> bool {
    let p = v
        .get("partial_rotary_factor")
        .or_else(|| {
            v.get("rope_parameters")
                .and_then(|r| r.get("partial_rotary_factor"))
        })
        .and_then(Value::as_f64);
    p.is_some_and(|p| p < 1.0)
}

/// Which layers use a sliding window, following transformers:
/// - Mistral: every layer, when `sliding_window` is set (not null).
/// - Qwen2 / Qwen3: `layer_types` when present ("sliding_attention" / "full_attention"); else
///   layers i ≥ max_window_layers when `use_sliding_window` is true.
/// - Llama: never.
fn layer_windows(
    v: &Value,
    arch: Arch,
    num_layers: usize,
    path: &Path,
) -> Result<Vec<Option<usize>>> {
    let window = opt_usize(v, "sliding_window");
    match arch {
        Arch::Llama => Ok(vec![None; num_layers]),
        Arch::Mistral => Ok(vec![window; num_layers]),
        Arch::Gemma3 => {
            let window =
                window.ok_or_else(|| Error::json(path, "Gemma 3 needs \"sliding_window\""))?;
            let types: Vec<Value> = match v.get("layer_types").and_then(Value::as_array) {
                Some(t) => t.clone(),
                None => {
                    let pattern = opt_usize(v, "sliding_window_pattern").unwrap_or(6).max(1);
                    (0..num_layers)
                        .map(|i| {
                            Value::from(if (i + 1) % pattern != 0 {
                                "sliding_attention"
                            } else {
                                "full_attention"
                            })
                        })
                        .collect()
                }
            };
            layer_types(&types, num_layers, Some(window), path)
        }
        Arch::Qwen2 | Arch::Qwen3 => {
            let use_sw = v
                .get("use_sliding_window")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            let window = if use_sw { window } else { None };
            if let Some(types) = v.get("layer_types").and_then(Value::as_array) {
                let w = window.or(opt_usize(v, "sliding_window"));
                return layer_types(types, num_layers, w, path);
            }
            let max_window_layers = opt_usize(v, "max_window_layers").unwrap_or(num_layers);
            Ok((0..num_layers)
                .map(|i| if i >= max_window_layers { window } else { None })
                .collect())
        }
    }
}

/// `layer_types` ("sliding_attention" / "full_attention") → the window of each layer.
fn layer_types(
    types: &[Value],
    num_layers: usize,
    window: Option<usize>,
    path: &Path,
) -> Result<Vec<Option<usize>>> {
    if types.len() != num_layers {
        return Err(Error::json(
            path,
            format!(
                "layer_types has {} entries for {num_layers} layers",
                types.len()
            ),
        ));
    }
    types
        .iter()
        .map(|t| match t.as_str() {
            Some("full_attention") => Ok(None),
            Some("sliding_attention") => Ok(window),
            other => Err(Error::json(path, format!("unknown layer type {other:?}"))),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn gemma_text() -> Value {
        json!({
            "architectures": ["Gemma3ForCausalLM"], "model_type": "gemma3_text",
            "hidden_size": 640, "intermediate_size": 2048, "num_hidden_layers": 7,
            "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 256,
            "vocab_size": 262144, "query_pre_attn_scalar": 256, "sliding_window": 512,
            "rope_local_base_freq": 10000.0
        })
    }

    #[test]
    fn gemma3_defaults_follow_transformers() {
        let c = ModelConfig::from_json(&gemma_text(), Path::new("config.json")).unwrap();
        assert_eq!(c.arch, Arch::Gemma3);
        assert_eq!(c.rope_theta, 1_000_000.0);
        assert_eq!(c.rope_local_theta, Some(10000.0));
        assert!(c.tie_word_embeddings && c.qk_norm && c.sandwich_norms);
        assert_eq!(c.mlp_activation, MlpActivation::GeluTanh);
        assert_eq!(c.norm_weight_offset, 1.0);
        assert_eq!(c.embed_scale, Some((640f64).sqrt() as f32));
        assert_eq!(c.attention_scale, 1.0 / 16.0);
        // Pattern 6: layer 5 is global, the rest slide.
        let w: Vec<bool> = c.layer_windows.iter().map(Option::is_some).collect();
        assert_eq!(w, [true, true, true, true, true, false, true]);
        assert!(c.layer_uses_local_rope(0) && !c.layer_uses_local_rope(5));
        let names: Vec<String> = c.tensor_shapes().into_iter().map(|(n, _)| n).collect();
        assert!(names.contains(&"model.layers.6.post_feedforward_layernorm.weight".into()));
        assert!(!names.contains(&"lm_head.weight".into()));
    }

    #[test]
    fn gemma3_multimodal_config_reads_its_text_config() {
        let v = json!({
            "architectures": ["Gemma3ForConditionalGeneration"], "model_type": "gemma3",
            "text_config": gemma_text(), "eos_token_id": [1, 106]
        });
        let c = ModelConfig::from_json(&v, Path::new("config.json")).unwrap();
        assert_eq!(c.architecture, "Gemma3ForConditionalGeneration");
        assert_eq!(c.arch, Arch::Gemma3);
        assert_eq!(c.eos_token_ids, [1, 106]);
        let v = json!({"architectures": ["Gemma3ForConditionalGeneration"]});
        assert!(ModelConfig::from_json(&v, Path::new("c.json")).is_err());
    }

    #[test]
    fn gemma3_refuses_what_it_does_not_run() {
        for (k, val) in [
            ("final_logit_softcapping", json!(30.0)),
            ("attn_logit_softcapping", json!(50.0)),
            ("use_bidirectional_attention", json!(true)),
            ("hidden_activation", json!("relu")),
            ("layer_types", json!(["sliding_attention"])),
        ] {
            let mut v = gemma_text();
            v[k] = val;
            let e = ModelConfig::from_json(&v, Path::new("config.json")).unwrap_err();
            assert!(e.to_string().contains("config.json"), "{k}: {e}");
        }
        let mut v = gemma_text();
        v.as_object_mut().unwrap().remove("sliding_window");
        assert!(ModelConfig::from_json(&v, Path::new("config.json")).is_err());
    }
}
