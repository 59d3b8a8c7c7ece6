//! GGUF → Hugging Face directory: config.json, model.safetensors, tokenizer.json,
//! tokenizer_config.json (with the chat template) and generation_config.json, loadable by minfer
//! and by transformers alike.
//!
//! The tensors are the ones `gguf::load` produces — renamed, q/k rows un-permuted — dequantized
//! one at a time as they are written, as f32 or bf16. Deliberately not here: writing quantized safetensors (no standard
//! layout that transformers reads), and the reverse direction (HF → GGUF is llama.cpp's job).

use std::borrow::Cow;
use std::cell::RefCell;
use std::path::Path;

use half::bf16;
use safetensors::tensor::{Dtype, View};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::loader::gguf;
use crate::quant;
use crate::tensor::{DType, WeightTensor};

/// Convert `gguf` into a Hugging Face model directory `out_dir` (created if needed; existing
/// files of the same names are replaced). `dtype` is the stored precision: BF16 or F32.
pub fn gguf_to_hf(gguf: &Path, out_dir: &Path, dtype: DType) -> Result<()> {
    let (st_dtype, torch_dtype) = match dtype {
        DType::F32 => (Dtype::F32, "float32"),
        DType::BF16 => (Dtype::BF16, "bfloat16"),
        other => {
            return Err(Error::option(
                "dtype",
                other,
                "conversion writes bf16 or f32",
            ))
        }
    };
    // Load without dequantizing: tensors stay mapped (or, for permuted q/k rows, small owned
    // copies) and each is converted only when the writer asks for its bytes, so the peak memory
    // is one tensor in f32, not the whole model.
    if !crate::loader::is_gguf(gguf) {
        return Err(Error::arg(format!(
            "conversion reads a .gguf file; {} is not one",
            gguf.display()
        )));
    }
    let ck = gguf::load(gguf, true)?;
    std::fs::create_dir_all(out_dir).map_err(|e| Error::io(out_dir, e))?;

    let failure: RefCell<Option<Error>> = RefCell::new(None);
    let views = ck.weights.tensors.values().map(|t| {
        (
            t.name.clone(),
            Converted {
                tensor: t,
                dtype: st_dtype,
                failure: &failure,
            },
        )
    });
    let st_path = out_dir.join("model.safetensors");
    // transformers refuses safetensors files whose metadata does not name the framework.
    let metadata = [("format".to_string(), "pt".to_string())]
        .into_iter()
        .collect();
    let written = safetensors::tensor::serialize_to_file(views, Some(metadata), &st_path);
    if let Some(e) = failure.into_inner() {
        let _ = std::fs::remove_file(&st_path);
        return Err(e);
    }
    written.map_err(|e| Error::bad_weights(&st_path, format!("writing safetensors: {e}")))?;

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

/// A tensor converted to the output dtype when the safetensors writer asks for its bytes.
struct Converted<'a> {
    tensor: &'a WeightTensor,
    dtype: Dtype,
    /// The first conversion error; `View::data` cannot return one.
    failure: &'a RefCell<Option<Error>>,
}

impl View for Converted<'_> {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.tensor.shape
    }
    fn data_len(&self) -> usize {
        self.tensor.numel() * self.dtype.bitsize() / 8
    }
    fn data(&self) -> Cow<'_, [u8]> {
        let t = self.tensor;
        let values = match quant::dequantize_to_vec(t.dtype, t.bytes(), t.numel()) {
            Ok(v) => v,
            Err(e) => {
                self.failure.borrow_mut().get_or_insert(e);
                // The file is deleted after the write; keep the length consistent meanwhile.
                return Cow::Owned(vec![0; self.data_len()]);
            }
        };
        let bytes: Vec<u8> = match self.dtype {
            Dtype::BF16 => values
                .iter()
                .flat_map(|&v| bf16::from_f32(v).to_le_bytes())
                .collect(),
            _ => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        };
        Cow::Owned(bytes)
    }
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
