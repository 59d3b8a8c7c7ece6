//! GGUF → Hugging Face directory: config.json, model.safetensors, tokenizer.json,
//! tokenizer_config.json (with the chat template) and generation_config.json, loadable by minfer
//! and by transformers alike.
//!
//! The tensors are the ones `gguf::load` produces — dequantized, renamed, q/k rows un-permuted —
//! written as f32 or bf16. Deliberately not here: writing quantized safetensors (no standard
//! layout that transformers reads), and the reverse direction (HF → GGUF is llama.cpp's job).

use std::path::Path;

use half::bf16;
use safetensors::tensor::{Dtype, TensorView};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::loader::{gguf, DType};

/// Convert `gguf` into a Hugging Face model directory `out_dir` (created if needed; existing
/// files of the same names are replaced). `dtype` is the stored precision: BF16 or F32.
pub fn gguf_to_hf(gguf: &Path, out_dir: &Path, dtype: DType) -> Result<()> {
    let (st_dtype, torch_dtype) = match dtype {
        DType::F32 => (Dtype::F32, "float32"),
        DType::BF16 => (Dtype::BF16, "bfloat16"),
        other => {
            return Err(Error::arg(format!(
                "convert: --dtype {other} is not supported (bf16 or f32)"
            )))
        }
    };
    let ck = gguf::load(gguf, false)?;
    std::fs::create_dir_all(out_dir).map_err(|e| Error::io(out_dir, e))?;

    // Every tensor is owned f32 after a dequantizing load; convert each once to the target bytes.
    let mut data: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::with_capacity(ck.weights.tensors.len());
    for (name, t) in &ck.weights.tensors {
        let values = t.to_f32_vec()?;
        let bytes: Vec<u8> = match dtype {
            DType::BF16 => values
                .iter()
                .flat_map(|&v| bf16::from_f32(v).to_le_bytes())
                .collect(),
            _ => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        };
        data.push((name.clone(), t.shape.clone(), bytes));
    }
    let views = data
        .iter()
        .map(|(name, shape, bytes)| {
            TensorView::new(st_dtype, shape.clone(), bytes)
                .map(|v| (name.clone(), v))
                .map_err(|e| Error::bad_weights(gguf, format!("tensor {name:?}: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let st_path = out_dir.join("model.safetensors");
    // transformers refuses safetensors files whose metadata does not name the framework.
    let metadata = [("format".to_string(), "pt".to_string())]
        .into_iter()
        .collect();
    safetensors::tensor::serialize_to_file(views, Some(metadata), &st_path)
        .map_err(|e| Error::bad_weights(&st_path, format!("writing safetensors: {e}")))?;

    let mut config = ck.config;
    config["torch_dtype"] = Value::from(torch_dtype);
    config["dtype"] = Value::from(torch_dtype);
    let mut tokenizer_config = ck.tokenizer_config;
    // The generic class loads tokenizer.json verbatim; the model-specific classes of
    // transformers ≥ 5 would rebuild the pre-tokenizer from their own defaults.
    tokenizer_config["tokenizer_class"] = Value::from("PreTrainedTokenizerFast");
    write_json(&out_dir.join("config.json"), &config, true)?;
    write_json(
        &out_dir.join("generation_config.json"),
        &ck.generation_config,
        true,
    )?;
    write_json(&out_dir.join("tokenizer.json"), &ck.tokenizer_json, false)?;
    write_json(
        &out_dir.join("tokenizer_config.json"),
        &tokenizer_config,
        true,
    )?;
    Ok(())
}

fn write_json(path: &Path, v: &Value, pretty: bool) -> Result<()> {
    let text = if pretty {
        serde_json::to_string_pretty(v)
    } else {
        serde_json::to_string(v)
    }
    .map_err(|e| Error::json(path, e))?;
    std::fs::write(path, text + "\n").map_err(|e| Error::io(path, e))
}
