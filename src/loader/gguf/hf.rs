//! A llama.cpp checkpoint as a Hugging Face one: config.json from the metadata, tensors under
//! their Hugging Face names and shapes (q/k rows un-permuted, quantized tensors dequantized or
//! kept as blocks), generation_config.json.

use std::collections::BTreeMap;

use rayon::prelude::*;
use serde_json::{json, Map, Value};

use super::GgufFile;
use crate::error::{Error, Result};
use crate::quant;
use crate::tensor::{DType, WeightTensor, Weights};

fn hf_architecture(arch: &str) -> (&'static str, &'static str) {
    match arch {
        "qwen2" => ("Qwen2ForCausalLM", "qwen2"),
        "qwen3" => ("Qwen3ForCausalLM", "qwen3"),
        "mistral" => ("MistralForCausalLM", "mistral"),
        "gemma3" => ("Gemma3ForCausalLM", "gemma3_text"),
        _ => ("LlamaForCausalLM", "llama"),
    }
}

/// The config.json Hugging Face would ship with this model.
pub fn hf_config(file: &GgufFile) -> Result<Value> {
    let arch = file.architecture()?;
    let k = |s: &str| format!("{arch}.{s}");
    let hidden = file.require_u64(&k("embedding_length"))?;
    let heads = file.require_u64(&k("attention.head_count"))?;
    if heads == 0 {
        return Err(file.err(format!("{} is 0", k("attention.head_count"))));
    }
    let kv_heads = file
        .u64_key(&k("attention.head_count_kv"))?
        .unwrap_or(heads);
    // key_length is the per-head width when it differs from hidden / heads (Qwen3); llama
    // files state it as rope.dimension_count. Partial rotary is not in this family.
    let head_dim = match file.u64_key(&k("attention.key_length"))? {
        Some(d) => d,
        None => file
            .u64_key(&k("rope.dimension_count"))?
            .unwrap_or(hidden / heads),
    };
    let vocab = match file.u64_key(&k("vocab_size"))? {
        Some(v) => v,
        None => {
            match file.get("tokenizer.ggml.tokens").and_then(|v| v.as_array()) {
                Some(t) => t.len() as u64,
                None => {
                    let t = file
                    .tensors
                    .iter()
                    .find(|t| t.name == "token_embd.weight")
                    .ok_or_else(|| file.err("cannot tell the vocabulary size: no vocab_size, tokens or token_embd"))?;
                    t.dims.get(1).copied().unwrap_or(0)
                }
            }
        }
    };
    let (architectures, model_type) = hf_architecture(arch);
    let tied = !file.tensors.iter().any(|t| t.name == "output.weight");

    let rope_scaling = match file.str_key(&k("rope.scaling.type"))? {
        None | Some("none") => Value::Null,
        Some(kind @ ("linear" | "yarn")) => {
            let factor = file
                .f64_key(&k("rope.scaling.factor"))?
                .ok_or_else(|| file.err("rope scaling without a factor"))?;
            let mut m = json!({"type": kind, "rope_type": kind, "factor": factor});
            if let Some(orig) = file.u64_key(&k("rope.scaling.original_context_length"))? {
                m["original_max_position_embeddings"] = json!(orig);
            }
            m
        }
        Some(other) => {
            return Err(file.err(format!("rope scaling type {other:?} is not supported")))
        }
    };

    let mut c = json!({
        "architectures": [architectures],
        "model_type": model_type,
        "hidden_size": hidden,
        "intermediate_size": file.require_u64(&k("feed_forward_length"))?,
        "num_hidden_layers": file.require_u64(&k("block_count"))?,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": file.f64_key(&k("attention.layer_norm_rms_epsilon"))?.map(|e| round_f32(e as f32)).unwrap_or(1e-6),
        "rope_theta": file.f64_key(&k("rope.freq_base"))?.map(|e| round_f32(e as f32)).unwrap_or(10000.0),
        "rope_scaling": rope_scaling,
        "max_position_embeddings": file.u64_key(&k("context_length"))?.unwrap_or(2048),
        "vocab_size": vocab,
        "tie_word_embeddings": tied,
        "torch_dtype": "float32",
    });
    let m = c.as_object_mut().expect("json! object");
    for (key, hf) in [
        ("tokenizer.ggml.bos_token_id", "bos_token_id"),
        ("tokenizer.ggml.eos_token_id", "eos_token_id"),
    ] {
        if let Some(id) = file.u64_key(key)? {
            m.insert(hf.into(), json!(id));
        }
    }
    if arch == "llama" || arch == "mistral" {
        let bias = file.tensors.iter().any(|t| t.name == "blk.0.attn_q.bias");
        m.insert("attention_bias".into(), json!(bias));
        m.insert("mlp_bias".into(), json!(false));
    }
    if let Some(w) = file.u64_key(&k("attention.sliding_window"))? {
        m.insert("sliding_window".into(), json!(w));
    } else if arch == "mistral" || arch == "qwen2" || arch == "qwen3" {
        m.insert("sliding_window".into(), Value::Null);
    }
    if arch == "qwen2" || arch == "qwen3" {
        m.insert("use_sliding_window".into(), json!(false));
    }
    if arch == "gemma3" {
        gemma3_config(file, m, hidden, heads, head_dim)?;
    }
    Ok(c)
}

/// What a Gemma 3 GGUF does not store, filled in as llama.cpp runs it (llama-model.cpp,
/// LLM_ARCH_GEMMA3: `set_swa_pattern(6)`, `rope_freq_base_train_swa = 10000`, attention scale
/// `1/sqrt(head_dim)`, or `1/sqrt(hidden/heads)` for the 62-layer 27B) and as transformers'
/// GGUF loader does (Gemma3TextConfig's defaults: pattern 6, local base 10000,
/// query_pre_attn_scalar 256 — the same numbers for every size but 27B).
fn gemma3_config(
    file: &GgufFile,
    m: &mut Map<String, Value>,
    hidden: u64,
    heads: u64,
    head_dim: u64,
) -> Result<()> {
    let layers = file.require_u64("gemma3.block_count")?;
    if file.get("gemma3.attention.sliding_window").is_none() {
        return Err(file.err("gemma3.attention.sliding_window is missing"));
    }
    let scalar = if layers == 62 {
        hidden / heads
    } else {
        head_dim
    };
    let pattern = 6;
    let types: Vec<&str> = (0..layers)
        .map(|i| {
            if (i + 1) % pattern != 0 {
                "sliding_attention"
            } else {
                "full_attention"
            }
        })
        .collect();
    m.insert("hidden_activation".into(), json!("gelu_pytorch_tanh"));
    m.insert("hidden_act".into(), json!("gelu_pytorch_tanh"));
    m.insert("query_pre_attn_scalar".into(), json!(scalar));
    m.insert("rope_local_base_freq".into(), json!(10000.0));
    m.insert("sliding_window_pattern".into(), json!(pattern));
    m.insert("layer_types".into(), json!(types));
    m.insert("attn_logit_softcapping".into(), Value::Null);
    m.insert("final_logit_softcapping".into(), Value::Null);
    m.insert("attention_bias".into(), json!(false));
    if let Some(pad) = file.u64_key("tokenizer.ggml.padding_token_id")? {
        m.insert("pad_token_id".into(), json!(pad));
    }
    Ok(())
}

/// f32 metadata (1e-5, 1e5) printed as the decimal a person wrote, not 9.999999747378752e-06.
fn round_f32(v: f32) -> f64 {
    format!("{v}").parse().unwrap_or(v as f64)
}

/// generation_config.json: BOS, and every token llama.cpp ends generation on (EOS, and the
/// end-of-turn / end-of-message tokens chat models emit instead), as Llama 3's own file lists
/// both <|end_of_text|> and <|eot_id|>.
pub(super) fn generation_config(file: &GgufFile, config: &Value) -> Result<Value> {
    let mut g = Map::new();
    if let Some(v) = config.get("bos_token_id") {
        g.insert("bos_token_id".into(), v.clone());
    }
    let mut eos = Vec::new();
    for key in ["eos_token_id", "eot_token_id", "eom_token_id"] {
        if let Some(id) = file.u64_key(&format!("tokenizer.ggml.{key}"))? {
            if !eos.contains(&id) {
                eos.push(id);
            }
        }
    }
    match eos.len() {
        0 => {}
        1 => {
            g.insert("eos_token_id".into(), json!(eos[0]));
        }
        _ => {
            g.insert("eos_token_id".into(), json!(eos));
        }
    }
    Ok(Value::Object(g))
}

/// GGUF tensor name → Hugging Face name in architecture `arch` (the `general.architecture`
/// string), or None for a name that architecture does not have. Gemma 3 differs from the llama
/// family in its four norms per layer: llama.cpp's `ffn_norm` is Gemma's
/// pre_feedforward_layernorm, and `post_attention_norm` / `post_ffw_norm` are the norms after
/// attention and after the MLP.
pub fn hf_tensor_name_for(arch: &str, gguf: &str) -> Option<String> {
    if arch == "gemma3" {
        if let Some((layer, part)) = gguf
            .strip_prefix("blk.")
            .and_then(|r| r.split_once('.'))
            .filter(|(l, _)| l.parse::<usize>().is_ok())
        {
            let hf = match part {
                "ffn_norm.weight" => Some("pre_feedforward_layernorm.weight"),
                "post_attention_norm.weight" => Some("post_attention_layernorm.weight"),
                "post_ffw_norm.weight" => Some("post_feedforward_layernorm.weight"),
                _ => None,
            };
            if let Some(hf) = hf {
                return Some(format!("model.layers.{layer}.{hf}"));
            }
        }
    }
    hf_tensor_name(gguf)
}

/// GGUF tensor name → Hugging Face name, or None for a name outside the llama family.
pub fn hf_tensor_name(gguf: &str) -> Option<String> {
    match gguf {
        "token_embd.weight" => return Some("model.embed_tokens.weight".into()),
        "output_norm.weight" => return Some("model.norm.weight".into()),
        "output.weight" => return Some("lm_head.weight".into()),
        _ => {}
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (part, suffix) = rest.rsplit_once('.')?;
    if suffix != "weight" && suffix != "bias" {
        return None;
    }
    let hf = match part {
        "attn_norm" => "input_layernorm",
        "ffn_norm" => "post_attention_layernorm",
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "attn_q_norm" => "self_attn.q_norm",
        "attn_k_norm" => "self_attn.k_norm",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf}.{suffix}"))
}

/// For llama-architecture files, llama.cpp's converter reorders the rows of q_proj and k_proj
/// within each head from Hugging Face's [first half | second half] rotary layout to interleaved
/// pairs (its `permute`): GGUF row `h·d + 2i + j` holds HF row `h·d + j·d/2 + i`. This returns,
/// for each HF row, the GGUF row to take it from.
pub fn unpermute_rows(rows: usize, n_head: usize) -> Option<Vec<usize>> {
    // More heads than rows (a hostile head count with an empty tensor) would loop over the
    // heads doing nothing: 2^32 iterations for a header that claims 2^32 - 2 heads.
    if n_head == 0
        || n_head > rows
        || !rows.is_multiple_of(n_head)
        || !(rows / n_head).is_multiple_of(2)
    {
        return None;
    }
    let d = rows / n_head;
    let mut src = Vec::with_capacity(rows);
    for h in 0..n_head {
        for j in 0..2 {
            for i in 0..d / 2 {
                src.push(h * d + 2 * i + j);
            }
        }
    }
    Some(src)
}

fn gather_rows(bytes: &[u8], row_bytes: usize, src: &[usize]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    for &r in src {
        out.extend_from_slice(&bytes[r * row_bytes..(r + 1) * row_bytes]);
    }
    out
}

/// The tensors that need more than a view or a dequantization: Q5_0 and Q5_1 blocks (any
/// architecture), and Gemma 3's norm weights, stored by llama.cpp as `1 + w` (its converter adds
/// `norm_shift = 1.0` to every `*norm.weight`; transformers' GGUF loader subtracts it again,
/// Gemma2TensorProcessor) and returned here as Hugging Face's `w`.
///
/// Q5_0 becomes Q8_0 exactly ([`quant::q5_0_to_q8_0`]: same scale, the i8 `q - 16`), so it runs
/// on the Q8_0 integer kernels with unchanged weights; Q5_1 (`d·q + m`, not a Q8_0 value) is
/// dequantized to f32.
fn converted_tensor(
    file: &GgufFile,
    t: &super::GgufTensorInfo,
    hf: &str,
    shape: &[usize],
    arch: &str,
    keep_quantized: bool,
) -> Result<Option<WeightTensor>> {
    let bad = |e: Error| file.err(format!("tensor {:?}: {e}", t.name));
    let bytes = file.tensor_bytes(t);
    let is_norm = arch == "gemma3" && t.name.ends_with("norm.weight");
    let q5 = match t.ggml_type.id {
        6 => Some(false),
        7 => Some(true),
        _ => None,
    };
    if is_norm {
        let mut v = match (q5, t.ggml_type.dtype()) {
            (Some(q5_1), _) => quant::dequantize_q5(q5_1, bytes).map_err(bad)?,
            (None, Some(dtype)) => quant::dequantize_to_vec(dtype, bytes, t.numel() as usize)
                .map_err(|_| {
                    file.err(format!("tensor {:?}: size does not match its dims", t.name))
                })?,
            (None, None) => {
                return Err(Error::UnsupportedDtype {
                    name: t.name.clone(),
                    dtype: t.ggml_type.name.to_string(),
                })
            }
        };
        v.iter_mut().for_each(|x| *x -= 1.0);
        return Ok(Some(WeightTensor::from_f32(hf, shape.to_vec(), &v)));
    }
    match q5 {
        None => Ok(None),
        Some(false) if keep_quantized => {
            let q8 = quant::q5_0_to_q8_0(bytes).map_err(bad)?;
            Ok(Some(WeightTensor::from_bytes(
                hf,
                DType::Q8_0,
                shape.to_vec(),
                &q8,
            )?))
        }
        Some(q5_1) => {
            let v = quant::dequantize_q5(q5_1, bytes).map_err(bad)?;
            if v.len() as u64 != t.numel() {
                return Err(file.err(format!("tensor {:?}: size does not match its dims", t.name)));
            }
            Ok(Some(WeightTensor::from_f32(hf, shape.to_vec(), &v)))
        }
    }
}

pub(super) fn hf_weights(file: &GgufFile, config: &Value, keep_quantized: bool) -> Result<Weights> {
    let arch = file.architecture()?;
    let permuted = arch == "llama" || arch == "mistral";
    let heads = config["num_attention_heads"].as_u64().unwrap_or(0) as usize;
    let kv_heads = config["num_key_value_heads"].as_u64().unwrap_or(0) as usize;

    let built: Vec<Result<(String, WeightTensor)>> = file
        .tensors
        .par_iter()
        .map(|t| {
            let hf = hf_tensor_name_for(arch, &t.name).ok_or_else(|| {
                file.err(format!(
                    "tensor {:?} has no Hugging Face counterpart in the {arch} architecture",
                    t.name
                ))
            })?;
            let shape = t.shape();
            if let Some(w) = converted_tensor(file, t, &hf, &shape, arch, keep_quantized)? {
                return Ok((hf, w));
            }
            let dtype = t.ggml_type.dtype().ok_or_else(|| Error::UnsupportedDtype {
                name: t.name.clone(),
                dtype: t.ggml_type.name.to_string(),
            })?;
            let n_head = if hf.contains("q_proj") {
                Some(heads)
            } else if hf.contains("k_proj") {
                Some(kv_heads)
            } else {
                None
            };
            let unperm = match n_head {
                Some(n) if permuted => {
                    let rows = shape.first().copied().unwrap_or(0);
                    Some(unpermute_rows(rows, n).ok_or_else(|| {
                        file.err(format!(
                            "tensor {:?}: {rows} rows do not split into {n} heads of even size",
                            t.name
                        ))
                    })?)
                }
                _ => None,
            };
            let bytes = file.tensor_bytes(t);
            let rows = shape.first().copied().unwrap_or(1).max(1);
            let row_bytes = bytes.len() / rows;
            let wt = if !keep_quantized {
                let src;
                let bytes = match &unperm {
                    Some(p) => {
                        src = gather_rows(bytes, row_bytes, p);
                        &src[..]
                    }
                    None => bytes,
                };
                let values =
                    quant::dequantize_to_vec(dtype, bytes, t.numel() as usize).map_err(|_| {
                        file.err(format!("tensor {:?}: size does not match its dims", t.name))
                    })?;
                WeightTensor::from_f32(hf.clone(), shape, &values)
            } else if let Some(p) = &unperm {
                // Rows are whole blocks (the row length is a multiple of the block size, checked
                // in read_header), so permuting quantized rows is exact.
                WeightTensor::from_bytes(
                    hf.clone(),
                    dtype,
                    shape,
                    &gather_rows(bytes, row_bytes, p),
                )?
            } else {
                WeightTensor::new(
                    hf.clone(),
                    dtype,
                    shape,
                    file.storage.clone(),
                    t.offset as usize,
                    t.n_bytes as usize,
                    &file.path,
                )?
            };
            Ok((hf, wt))
        })
        .collect();
    let mut tensors = BTreeMap::new();
    for r in built {
        let (name, t) = r?;
        tensors.insert(name, t);
    }
    Ok(Weights {
        path: file.path.clone(),
        tensors,
        unsupported: BTreeMap::new(),
    })
}
