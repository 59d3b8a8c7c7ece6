//! Opening a checkpoint: one entry, [`open`], for a Hugging Face directory, a `.safetensors`
//! file with its config.json beside it, or a `.gguf` file. Every format ends as the same
//! [`Checkpoint`]: a [`ModelConfig`], zero-copy [`Weights`] by Hugging Face name, the EOS ids,
//! and the tokenizer definition.
//!
//! The model asks for tensors by their Hugging Face names; the readers here have already checked
//! every offset against the file length.

// The format readers are internal (tests reach them through `minfer::internals`).
#[allow(missing_docs)]
pub mod gguf;
#[allow(missing_docs)]
pub mod safetensors;

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::config::{token_ids, ModelConfig};
use crate::error::{Error, Result};
use crate::tensor::Weights;
use crate::tokenizer::Tokenizer;

/// The files that make a checkpoint, resolved from what the user pointed at.
#[derive(Clone, Debug)]
pub struct ModelFiles {
    /// The directory holding config.json (and tokenizer files).
    pub dir: PathBuf,
    /// A directory of shards, or one .safetensors file.
    pub weights: PathBuf,
}

impl ModelFiles {
    /// `path` is a model directory, or a .safetensors file with config.json beside it.
    pub fn resolve(path: &Path) -> Result<ModelFiles> {
        if !path.exists() {
            return Err(Error::MissingFile {
                path: path.to_path_buf(),
                what: "model (no such file or directory)".into(),
            });
        }
        if path.is_dir() {
            return Ok(ModelFiles {
                dir: path.to_path_buf(),
                weights: path.to_path_buf(),
            });
        }
        let dir = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let dir = if dir.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            dir
        };
        Ok(ModelFiles {
            dir,
            weights: path.to_path_buf(),
        })
    }

    /// The weights are a GGUF file.
    pub fn is_gguf(&self) -> bool {
        is_gguf(&self.weights)
    }
}

/// A .gguf file (by extension, or by its magic when the extension is something else).
pub fn is_gguf(path: &Path) -> bool {
    if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
    {
        return true;
    }
    let mut magic = [0u8; 4];
    path.is_file()
        && std::fs::File::open(path)
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic))
            .is_ok()
        && &magic == b"GGUF"
}

/// A checkpoint once read: config, weights (mapped, not copied, except GGUF tensors that are
/// dequantized or permuted at load), EOS ids and the tokenizer (tokenizer.json beside
/// config.json, or the one embedded in a GGUF), when there is one.
pub struct Checkpoint {
    /// The model's shape and flags.
    pub config: ModelConfig,
    /// Every tensor, by Hugging Face name.
    pub weights: Weights,
    /// EOS ids from config.json, generation_config.json and the tokenizer, deduplicated.
    pub eos_ids: Vec<u32>,
    /// Where the checkpoint's files are.
    pub files: ModelFiles,
    /// The checkpoint's tokenizer; None when a directory has no tokenizer.json.
    pub tokenizer: Option<Tokenizer>,
}

/// Gemma3ForConditionalGeneration checkpoints hold the language model under a prefix
/// (`model.language_model.` in transformers ≥ 5, `language_model.model.` before) beside the
/// vision tower: keep the language model's tensors, under the names Gemma3ForCausalLM uses.
fn language_model_only(config: &ModelConfig, mut weights: Weights) -> Weights {
    if config.architecture != "Gemma3ForConditionalGeneration" {
        return weights;
    }
    let tensors = std::mem::take(&mut weights.tensors);
    for (name, mut t) in tensors {
        let renamed = if let Some(rest) = name.strip_prefix("model.language_model.") {
            format!("model.{rest}")
        } else if let Some(rest) = name.strip_prefix("language_model.model.") {
            format!("model.{rest}")
        } else if let Some(rest) = name.strip_prefix("language_model.lm_head.") {
            format!("lm_head.{rest}")
        } else if name.starts_with("lm_head.") {
            name
        } else {
            continue; // vision tower, projector
        };
        t.name = renamed.clone();
        weights.tensors.insert(renamed, t);
    }
    weights
}

/// Read a directory, .safetensors or .gguf checkpoint. `keep_quantized`: GGUF block-quantized
/// tensors stay in their block format (false dequantizes them to f32 at load).
pub fn open(path: &Path, keep_quantized: bool) -> Result<Checkpoint> {
    let files = ModelFiles::resolve(path)?;
    let (config, weights, mut eos_ids, tokenizer) = if files.is_gguf() {
        let ck = gguf::load(&files.weights, keep_quantized)?;
        let config = ModelConfig::from_json(&ck.config, &files.weights)?;
        let mut eos = config.eos_token_ids.clone();
        eos.extend(token_ids(ck.generation_config.get("eos_token_id")));
        let tokenizer = Tokenizer::from_json(&ck.tokenizer_json, Some(&ck.tokenizer_config))?;
        (config, ck.weights, eos, Some(tokenizer))
    } else {
        let config = ModelConfig::from_file(&files.dir.join("config.json"))?;
        let weights = language_model_only(&config, safetensors::load(&files.weights)?);
        let eos = eos_ids(&config, &files.dir)?;
        let t = files.dir.join("tokenizer.json");
        let tokenizer = if t.is_file() {
            Some(Tokenizer::from_file(&t)?)
        } else {
            None
        };
        (config, weights, eos, tokenizer)
    };
    // Stop at the tokenizer's EOS too (a chat model's end-of-turn token is often only there).
    eos_ids.extend(tokenizer.iter().flat_map(Tokenizer::eos_ids));
    eos_ids.sort_unstable();
    eos_ids.dedup();
    Ok(Checkpoint {
        config,
        weights,
        eos_ids,
        files,
        tokenizer,
    })
}

/// The tokenizer of a model directory, a tokenizer.json, a .safetensors file beside one, or a
/// .gguf file (reading only the GGUF's metadata, not its tensors).
pub fn open_tokenizer(path: &Path) -> Result<Tokenizer> {
    if is_gguf(path) {
        let file = gguf::read_header(path)?;
        let (json, config) = gguf::hf_tokenizer(&file)?;
        return Tokenizer::from_json(&json, Some(&config));
    }
    let file = if path.is_dir() {
        path.join("tokenizer.json")
    } else if path.extension().is_some_and(|e| e == "json") {
        path.to_path_buf()
    } else {
        path.parent()
            .unwrap_or(Path::new("."))
            .join("tokenizer.json")
    };
    Tokenizer::from_file(&file)
}

/// EOS ids from config.json and generation_config.json, deduplicated.
fn eos_ids(config: &ModelConfig, dir: &Path) -> Result<Vec<u32>> {
    let mut ids = config.eos_token_ids.clone();
    let gen = dir.join("generation_config.json");
    if gen.is_file() {
        let text = std::fs::read_to_string(&gen).map_err(|e| Error::io(&gen, e))?;
        let v: Value = serde_json::from_str(&text).map_err(|e| Error::json(&gen, e))?;
        ids.extend(token_ids(v.get("eos_token_id")));
    }
    ids.sort_unstable();
    ids.dedup();
    Ok(ids)
}
