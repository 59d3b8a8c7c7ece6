//! Random-weight models with the published shapes of real checkpoints, for benchmarks and for
//! the GPU check: speed depends on shapes and dtypes, not on the values, and these need no
//! download. Never used for correctness (the fixtures are for that).

use std::path::Path;
use std::sync::Arc;

use rayon::prelude::*;
use serde_json::{json, Value};

use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::rng::Rng;
use crate::tensor::{DType, Storage, WeightTensor, Weights};

/// The presets: name → config.json (the published values of each checkpoint).
pub const PRESETS: &[&str] = &["smollm2-135m", "qwen2-1.5b", "qwen2-7b", "llama3-8b"];

pub fn preset_config_json(name: &str) -> Result<Value> {
    Ok(match name {
        "smollm2-135m" => json!({
            "architectures": ["LlamaForCausalLM"], "hidden_size": 576, "intermediate_size": 1536,
            "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3,
            "vocab_size": 49152, "rms_norm_eps": 1e-5, "rope_theta": 100000.0,
            "max_position_embeddings": 8192, "tie_word_embeddings": true,
            "bos_token_id": 1, "eos_token_id": 2
        }),
        // DeepSeek-R1-Distill-Qwen-1.5B
        "qwen2-1.5b" => json!({
            "architectures": ["Qwen2ForCausalLM"], "hidden_size": 1536, "intermediate_size": 8960,
            "num_hidden_layers": 28, "num_attention_heads": 12, "num_key_value_heads": 2,
            "vocab_size": 151936, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
            "max_position_embeddings": 131072, "tie_word_embeddings": false,
            "use_sliding_window": false, "bos_token_id": 151646, "eos_token_id": 151643
        }),
        // DeepSeek-R1-Distill-Qwen-7B
        "qwen2-7b" => json!({
            "architectures": ["Qwen2ForCausalLM"], "hidden_size": 3584, "intermediate_size": 18944,
            "num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4,
            "vocab_size": 152064, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
            "max_position_embeddings": 131072, "tie_word_embeddings": false,
            "use_sliding_window": false, "bos_token_id": 151646, "eos_token_id": 151643
        }),
        // Meta-Llama-3-8B
        "llama3-8b" => json!({
            "architectures": ["LlamaForCausalLM"], "hidden_size": 4096, "intermediate_size": 14336,
            "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
            "vocab_size": 128256, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
            "max_position_embeddings": 8192, "tie_word_embeddings": false,
            "bos_token_id": 128000, "eos_token_id": 128001
        }),
        other => {
            return Err(Error::arg(format!(
                "unknown synthetic model {other:?}; presets: {}",
                PRESETS.join(", ")
            )))
        }
    })
}

pub fn preset_config(name: &str) -> Result<ModelConfig> {
    ModelConfig::from_json(
        &preset_config_json(name)?,
        Path::new(&format!("synthetic:{name}")),
    )
}

/// Random weights for `config`: matrices uniform in ±1/√fan_in (so activations stay O(1)),
/// norm weights 1, biases small. `dtype` is F32, F16 or BF16.
pub fn random_weights(config: &ModelConfig, dtype: DType, seed: u64) -> Result<Weights> {
    if dtype.is_quantized() {
        return Err(Error::arg("synthetic weights are f32, f16 or bf16"));
    }
    let path = Path::new("<synthetic>");
    let shapes = config.tensor_shapes();
    let tensors = shapes
        .into_par_iter()
        .enumerate()
        .map(|(k, (name, shape))| {
            let n: usize = shape.iter().product();
            let is_norm = name.ends_with("norm.weight");
            let amp = if shape.len() == 2 {
                1.0 / (shape[1] as f32).sqrt()
            } else {
                0.02
            };
            let mut words = vec![0u64; (n * dtype.block().1).div_ceil(8)];
            let bytes: &mut [u8] = bytemuck::cast_slice_mut(&mut words);
            bytes[..n * dtype.block().1]
                .par_chunks_mut(1 << 16)
                .enumerate()
                .for_each(|(c, chunk)| {
                    let mut rng = Rng::new(seed ^ ((k as u64) << 32) ^ c as u64);
                    let elem = dtype.block().1;
                    for e in chunk.chunks_exact_mut(elem) {
                        let x = if is_norm {
                            1.0
                        } else {
                            (rng.next_f32() * 2.0 - 1.0) * amp
                        };
                        match dtype {
                            DType::F32 => e.copy_from_slice(&x.to_le_bytes()),
                            DType::F16 => e.copy_from_slice(&half::f16::from_f32(x).to_le_bytes()),
                            _ => e.copy_from_slice(&half::bf16::from_f32(x).to_le_bytes()),
                        }
                    }
                });
            let len = n * dtype.block().1;
            let t = WeightTensor::new(
                name.clone(),
                dtype,
                shape,
                Arc::new(Storage::Owned(words)),
                0,
                len,
                path,
            )?;
            Ok((name, t))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Weights {
        path: path.to_path_buf(),
        tensors: tensors.into_iter().collect(),
        unsupported: Default::default(),
    })
}
