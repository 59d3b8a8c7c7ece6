//! A llama.cpp checkpoint as a Hugging Face one: config.json from the metadata, tensors under
//! their Hugging Face names and shapes (q/k rows un-permuted, quantized tensors dequantized or
//! kept as blocks), generation_config.json.

use std::collections::BTreeMap;

use rayon::prelude::*;
use serde_json::{json, Map, Value};

use super::GgufFile;
use crate::error::{Error, Result};
use crate::quant;
use crate::tensor::{WeightTensor, Weights};

fn hf_architecture(arch: &str) -> (&'static str, &'static str) {
    match arch {
        "qwen2" => ("Qwen2ForCausalLM", "qwen2"),
        "qwen3" => ("Qwen3ForCausalLM", "qwen3"),
        "mistral" => ("MistralForCausalLM", "mistral"),
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
    Ok(c)
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
    if n_head == 0 || !rows.is_multiple_of(n_head) || !(rows / n_head).is_multiple_of(2) {
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

pub(super) fn hf_weights(file: &GgufFile, config: &Value, keep_quantized: bool) -> Result<Weights> {
    let arch = file.architecture()?;
    let permuted = arch == "llama" || arch == "mistral";
    let heads = config["num_attention_heads"].as_u64().unwrap_or(0) as usize;
    let kv_heads = config["num_key_value_heads"].as_u64().unwrap_or(0) as usize;

    let built: Vec<Result<(String, WeightTensor)>> = file
        .tensors
        .par_iter()
        .map(|t| {
            let hf = hf_tensor_name(&t.name).ok_or_else(|| {
                file.err(format!(
                    "tensor {:?} has no Hugging Face counterpart in the {arch} architecture",
                    t.name
                ))
            })?;
            let dtype = t.ggml_type.dtype().ok_or_else(|| Error::UnsupportedDtype {
                name: t.name.clone(),
                dtype: t.ggml_type.name.to_string(),
            })?;
            let shape = t.shape();
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
