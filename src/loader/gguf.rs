//! GGUF reader (versions 2 and 3): the header, metadata and tensor table, then the translation
//! of a llama.cpp checkpoint into what a Hugging Face directory would hold — config.json,
//! tensors under their Hugging Face names and shapes, tokenizer.json and tokenizer_config.json —
//! so the rest of minfer sees one kind of model whatever the file format.
//!
//! Every count, length and offset read from the file is checked against the file length before
//! it is used, so a truncated or hostile file is an [`Error::BadWeights`], never a panic or a
//! huge allocation. The file is memory-mapped; [`read_header`] touches only the header pages.
//!
//! Deliberately not here: writing GGUF, the quantized kernels (see `quant.rs` for the reference
//! dequantizers), architectures outside the llama family, and llama.cpp's own tokenizer
//! algorithms — the tokenizer is handed on as tokenizer.json for `Tokenizer::from_json`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rayon::prelude::*;
use serde_json::{json, Map, Value};

use crate::error::{Error, Result};
use crate::loader::{DType, Storage, WeightTensor, Weights};
use crate::quant;

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml's GGML_MAX_DIMS.
const MAX_DIMS: u32 = 4;
/// Arrays of arrays are legal; nothing real nests deeper than this, and the bound keeps a hostile
/// file from recursing the stack away.
const MAX_NESTING: u32 = 8;

/// The architectures we translate (the `general.architecture` strings).
pub const SUPPORTED_ARCHITECTURES: [&str; 4] = ["llama", "mistral", "qwen2", "qwen3"];

/// One metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum GgufValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<GgufValue>),
}

impl GgufValue {
    /// Any integer type as u64 (None for negatives and non-integers).
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            GgufValue::U8(v) => Some(v.into()),
            GgufValue::U16(v) => Some(v.into()),
            GgufValue::U32(v) => Some(v.into()),
            GgufValue::U64(v) => Some(v),
            GgufValue::I8(v) => u64::try_from(v).ok(),
            GgufValue::I16(v) => u64::try_from(v).ok(),
            GgufValue::I32(v) => u64::try_from(v).ok(),
            GgufValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            GgufValue::I8(v) => Some(v.into()),
            GgufValue::I16(v) => Some(v.into()),
            GgufValue::I32(v) => Some(v.into()),
            GgufValue::I64(v) => Some(v),
            _ => self.as_u64().and_then(|v| i64::try_from(v).ok()),
        }
    }
    /// Any number as f64.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            GgufValue::F32(v) => Some(v.into()),
            GgufValue::F64(v) => Some(v),
            _ => self.as_i64().map(|v| v as f64),
        }
    }
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            GgufValue::Bool(b) => Some(b),
            _ => None,
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            GgufValue::String(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_array(&self) -> Option<&[GgufValue]> {
        match self {
            GgufValue::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// GGML tensor type ids and their block geometry (ggml.h / gguf-py's GGML_QUANT_SIZES).
/// Types we can size but not compute with are still listed, so that `read_header` (and
/// `inspect`) work on any GGUF and only `load` refuses them.
const GGML_TYPES: &[(u32, &str, u64, u64)] = &[
    (0, "F32", 1, 4),
    (1, "F16", 1, 2),
    (2, "Q4_0", 32, 18),
    (3, "Q4_1", 32, 20),
    (6, "Q5_0", 32, 22),
    (7, "Q5_1", 32, 24),
    (8, "Q8_0", 32, 34),
    (9, "Q8_1", 32, 40),
    (10, "Q2_K", 256, 84),
    (11, "Q3_K", 256, 110),
    (12, "Q4_K", 256, 144),
    (13, "Q5_K", 256, 176),
    (14, "Q6_K", 256, 210),
    (15, "Q8_K", 256, 292),
    (16, "IQ2_XXS", 256, 66),
    (17, "IQ2_XS", 256, 74),
    (18, "IQ3_XXS", 256, 98),
    (19, "IQ1_S", 256, 50),
    (20, "IQ4_NL", 32, 18),
    (21, "IQ3_S", 256, 110),
    (22, "IQ2_S", 256, 82),
    (23, "IQ4_XS", 256, 136),
    (24, "I8", 1, 1),
    (25, "I16", 1, 2),
    (26, "I32", 1, 4),
    (27, "I64", 1, 8),
    (28, "F64", 1, 8),
    (29, "IQ1_M", 256, 56),
    (30, "BF16", 1, 2),
    (34, "TQ1_0", 256, 54),
    (35, "TQ2_0", 256, 66),
    (39, "MXFP4", 32, 17),
];

/// A GGML tensor type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GgmlType {
    pub id: u32,
    pub name: &'static str,
    /// (elements per block, bytes per block)
    pub block: (u64, u64),
}

impl GgmlType {
    pub fn from_id(id: u32) -> Option<GgmlType> {
        GGML_TYPES
            .iter()
            .find(|t| t.0 == id)
            .map(|&(id, name, e, b)| GgmlType {
                id,
                name,
                block: (e, b),
            })
    }

    /// The minfer dtype, for the types minfer can compute with.
    pub fn dtype(self) -> Option<DType> {
        Some(match self.id {
            0 => DType::F32,
            1 => DType::F16,
            30 => DType::BF16,
            8 => DType::Q8_0,
            2 => DType::Q4_0,
            3 => DType::Q4_1,
            12 => DType::Q4K,
            13 => DType::Q5K,
            14 => DType::Q6K,
            _ => return None,
        })
    }
}

/// One entry of the tensor table.
#[derive(Clone, Debug)]
pub struct GgufTensorInfo {
    pub name: String,
    /// ggml order: `dims[0]` is the innermost (contiguous) dimension, the reverse of the
    /// row-major shape Hugging Face uses.
    pub dims: Vec<u64>,
    pub ggml_type: GgmlType,
    /// Absolute offset of the tensor's first byte in the file.
    pub offset: u64,
    pub n_bytes: u64,
}

impl GgufTensorInfo {
    pub fn numel(&self) -> u64 {
        self.dims.iter().product()
    }
    /// Row-major shape, outermost first (Hugging Face order).
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }
}

/// A parsed GGUF header. The tensor bytes stay in the mapping until `load` asks for them.
pub struct GgufFile {
    pub path: PathBuf,
    pub version: u32,
    pub metadata: BTreeMap<String, GgufValue>,
    pub tensors: Vec<GgufTensorInfo>,
    pub alignment: u64,
    /// Absolute offset of the data section (tensor offsets in the file are relative to it;
    /// [`GgufTensorInfo::offset`] already includes it).
    pub data_offset: u64,
    pub file_len: u64,
    storage: Arc<Storage>,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("metadata_keys", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl GgufFile {
    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.metadata.get(key)
    }
    fn err(&self, message: impl std::fmt::Display) -> Error {
        Error::bad_weights(&self.path, message)
    }
    /// Metadata `key` read with `get` (one of GgufValue's `as_*`), or an error saying it is not
    /// `what`; absent keys are `None`.
    fn typed_key<'a, T>(
        &'a self,
        key: &str,
        what: &str,
        get: impl FnOnce(&'a GgufValue) -> Option<T>,
    ) -> Result<Option<T>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => get(v)
                .map(Some)
                .ok_or_else(|| self.err(format!("metadata {key:?} is not {what}"))),
        }
    }
    fn str_key(&self, key: &str) -> Result<Option<&str>> {
        self.typed_key(key, "a string", GgufValue::as_str)
    }
    fn u64_key(&self, key: &str) -> Result<Option<u64>> {
        self.typed_key(key, "an unsigned integer", GgufValue::as_u64)
    }
    fn f64_key(&self, key: &str) -> Result<Option<f64>> {
        self.typed_key(key, "a number", GgufValue::as_f64)
    }
    fn bool_key(&self, key: &str) -> Result<Option<bool>> {
        self.typed_key(key, "a bool", GgufValue::as_bool)
    }
    fn require_u64(&self, key: &str) -> Result<u64> {
        self.u64_key(key)?
            .ok_or_else(|| self.err(format!("metadata {key:?} is missing")))
    }

    /// `general.architecture`.
    pub fn architecture(&self) -> Result<&str> {
        self.str_key("general.architecture")?
            .ok_or_else(|| self.err("metadata \"general.architecture\" is missing"))
    }

    /// The raw bytes of one tensor (bounds were checked by `read_header`).
    pub fn tensor_bytes(&self, t: &GgufTensorInfo) -> &[u8] {
        &self.storage.bytes()[t.offset as usize..(t.offset + t.n_bytes) as usize]
    }
}

/// A bounds-checked little-endian reader over the mapped header.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Cursor<'a> {
    fn truncated(&self, what: &str) -> Error {
        Error::bad_weights(
            self.path,
            format!(
                "truncated GGUF header: {what} at byte {} runs past the end of the file ({} bytes)",
                self.pos,
                self.buf.len()
            ),
        )
    }
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| self.truncated(what))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let s = self.take(N, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }
    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }
    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }
    fn string(&mut self, what: &str) -> Result<String> {
        let len = self.u64(what)?;
        let len = usize::try_from(len)
            .ok()
            .filter(|&l| l <= self.remaining())
            .ok_or_else(|| self.truncated(what))?;
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| {
            Error::bad_weights(
                self.path,
                format!("{what} at byte {} is not valid UTF-8", self.pos - len),
            )
        })
    }

    fn value(&mut self, ty: u32, what: &str, depth: u32) -> Result<GgufValue> {
        Ok(match ty {
            0 => GgufValue::U8(self.array::<1>(what)?[0]),
            1 => GgufValue::I8(self.array::<1>(what)?[0] as i8),
            2 => GgufValue::U16(u16::from_le_bytes(self.array(what)?)),
            3 => GgufValue::I16(i16::from_le_bytes(self.array(what)?)),
            4 => GgufValue::U32(self.u32(what)?),
            5 => GgufValue::I32(i32::from_le_bytes(self.array(what)?)),
            6 => GgufValue::F32(f32::from_le_bytes(self.array(what)?)),
            7 => GgufValue::Bool(self.array::<1>(what)?[0] != 0),
            8 => GgufValue::String(self.string(what)?),
            9 => {
                if depth >= MAX_NESTING {
                    return Err(Error::bad_weights(
                        self.path,
                        format!("{what}: arrays nested deeper than {MAX_NESTING}"),
                    ));
                }
                let elem = self.u32(what)?;
                let count = self.u64(what)?;
                // Every element takes at least one byte, so a count beyond the remaining bytes is
                // a lie; checking first keeps `with_capacity` honest.
                let count = usize::try_from(count)
                    .ok()
                    .filter(|&c| c <= self.remaining())
                    .ok_or_else(|| self.truncated(what))?;
                let mut v = Vec::with_capacity(count);
                for _ in 0..count {
                    v.push(self.value(elem, what, depth + 1)?);
                }
                GgufValue::Array(v)
            }
            10 => GgufValue::U64(self.u64(what)?),
            11 => GgufValue::I64(i64::from_le_bytes(self.array(what)?)),
            12 => GgufValue::F64(f64::from_le_bytes(self.array(what)?)),
            other => {
                return Err(Error::bad_weights(
                    self.path,
                    format!("{what}: unknown metadata value type {other}"),
                ))
            }
        })
    }
}

/// Parse the header, metadata and tensor table, checking every tensor's extent against the file.
/// No tensor data is read.
pub fn read_header(path: &Path) -> Result<GgufFile> {
    parse(path, true)
}

/// The header and metadata only, with an empty tensor table: for the first part of a split
/// file, whose tensors lie in other parts, when only its metadata (the tokenizer) is wanted.
pub fn read_metadata(path: &Path) -> Result<GgufFile> {
    parse(path, false)
}

fn parse(path: &Path, with_tensors: bool) -> Result<GgufFile> {
    let storage = Arc::new(Storage::map(path)?);
    let buf = storage.bytes();
    let mut c = Cursor { buf, pos: 0, path };
    let magic = c.array::<4>("magic")?;
    if &magic != MAGIC {
        return Err(Error::bad_weights(
            path,
            format!("not a GGUF file: magic is {magic:02x?}, expected \"GGUF\""),
        ));
    }
    let version = c.u32("version")?;
    if !(2..=3).contains(&version) {
        return Err(Error::bad_weights(
            path,
            format!("GGUF version {version} is not supported (versions 2 and 3 are; a huge number means a big-endian file)"),
        ));
    }
    let n_tensors = c.u64("tensor count")?;
    let n_kv = c.u64("metadata count")?;

    let mut metadata = BTreeMap::new();
    for i in 0..n_kv {
        let key = c.string(&format!("metadata key #{i}"))?;
        let ty = c.u32(&format!("type of metadata {key:?}"))?;
        let value = c.value(ty, &format!("metadata {key:?}"), 0)?;
        if metadata.insert(key.clone(), value).is_some() {
            return Err(Error::bad_weights(
                path,
                format!("metadata key {key:?} appears twice"),
            ));
        }
    }

    let alignment = match metadata.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(v) => match v.as_u64() {
            Some(a) if a > 0 && a.is_power_of_two() => a,
            _ => {
                return Err(Error::bad_weights(
                    path,
                    format!("general.alignment {v:?} is not a power of two"),
                ))
            }
        },
    };

    if !with_tensors {
        let data_offset = c.pos as u64;
        let file_len = buf.len() as u64;
        return Ok(GgufFile {
            path: path.to_path_buf(),
            version,
            metadata,
            tensors: vec![],
            alignment,
            data_offset,
            file_len,
            storage,
        });
    }
    // Each tensor-table entry takes at least 24 bytes; refuse counts the file cannot hold.
    if n_tensors > (c.remaining() / 24) as u64 {
        return Err(c.truncated(&format!("tensor table of {n_tensors} entries")));
    }
    let mut raw = Vec::with_capacity(n_tensors as usize);
    for i in 0..n_tensors {
        let name = c.string(&format!("name of tensor #{i}"))?;
        let n_dims = c.u32(&format!("tensor {name:?} rank"))?;
        if n_dims > MAX_DIMS {
            return Err(Error::bad_weights(
                path,
                format!("tensor {name:?} has {n_dims} dimensions (at most {MAX_DIMS})"),
            ));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            dims.push(c.u64(&format!("tensor {name:?} dims"))?);
        }
        let ty = c.u32(&format!("tensor {name:?} type"))?;
        let offset = c.u64(&format!("tensor {name:?} offset"))?;
        raw.push((name, dims, ty, offset));
    }
    let header_end = c.pos as u64;
    let data_offset = header_end.div_ceil(alignment) * alignment;
    let file_len = buf.len() as u64;

    let mut tensors = Vec::with_capacity(raw.len());
    let mut seen = HashSet::new();
    for (name, dims, ty, rel) in raw {
        let bad = |m: String| Error::bad_weights(path, format!("tensor {name:?}: {m}"));
        if !seen.insert(name.clone()) {
            return Err(bad("appears twice in the tensor table".into()));
        }
        let ggml_type = GgmlType::from_id(ty).ok_or_else(|| Error::UnsupportedDtype {
            name: name.clone(),
            dtype: format!("GGML type id {ty}"),
        })?;
        let numel = dims
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d))
            .ok_or_else(|| bad(format!("dims {dims:?} overflow")))?;
        let (be, bb) = ggml_type.block;
        if dims.first().copied().unwrap_or(1) % be != 0 {
            return Err(bad(format!(
                "row length {:?} is not a multiple of the {} block size {be}",
                dims.first(),
                ggml_type.name
            )));
        }
        let n_bytes = (numel / be)
            .checked_mul(bb)
            .ok_or_else(|| bad("size overflows".into()))?;
        if rel % alignment != 0 {
            return Err(bad(format!(
                "offset {rel} is not a multiple of the alignment {alignment}"
            )));
        }
        let offset = data_offset
            .checked_add(rel)
            .ok_or_else(|| bad("offset overflows".into()))?;
        let end = offset
            .checked_add(n_bytes)
            .ok_or_else(|| bad("offset + size overflows".into()))?;
        if end > file_len {
            return Err(bad(format!(
                "data at bytes {offset}..{end} lies past the end of the file ({file_len} bytes)"
            )));
        }
        tensors.push(GgufTensorInfo {
            name,
            dims,
            ggml_type,
            offset,
            n_bytes,
        });
    }

    Ok(GgufFile {
        path: path.to_path_buf(),
        version,
        metadata,
        tensors,
        alignment,
        data_offset,
        file_len,
        storage,
    })
}

/// A GGUF file translated into the pieces of a Hugging Face checkpoint.
pub struct GgufCheckpoint {
    /// The equivalent Hugging Face config.json.
    pub config: Value,
    pub generation_config: Value,
    /// Hugging Face tensor names and shapes ([out, in] for linear layers).
    pub weights: Weights,
    /// The equivalent Hugging Face tokenizer.json.
    pub tokenizer_json: Value,
    /// tokenizer_config.json: chat_template, bos/eos/unk/pad tokens, add_bos_token ...
    pub tokenizer_config: Value,
}

/// Load a GGUF file. With `keep_quantized` false every tensor becomes owned f32; with true,
/// quantized tensors keep their GGML block dtype and F32/F16/BF16 tensors stay in the mapping.
pub fn load(path: &Path, keep_quantized: bool) -> Result<GgufCheckpoint> {
    let file = read_header(path)?;
    let arch = file.architecture()?.to_string();
    if !SUPPORTED_ARCHITECTURES.contains(&arch.as_str()) {
        return Err(Error::UnknownArchitecture {
            found: arch,
            supported: SUPPORTED_ARCHITECTURES.to_vec(),
        });
    }
    if file.tensors.iter().any(|t| t.name == "rope_freqs.weight") {
        // llama.cpp bakes Llama 3.1's rope scaling into per-dimension factors and drops the
        // parameters; recovering them is guesswork, and silently ignoring them is wrong.
        return Err(file.err("rope_freqs.weight (Llama 3.1-style rope scaling) is not supported"));
    }
    let config = hf_config(&file)?;
    let weights = hf_weights(&file, &config, keep_quantized)?;
    let (tokenizer_json, tokenizer_config) = hf_tokenizer(&file)?;
    let generation_config = generation_config(&file, &config)?;
    Ok(GgufCheckpoint {
        config,
        generation_config,
        weights,
        tokenizer_json,
        tokenizer_config,
    })
}

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
fn generation_config(file: &GgufFile, config: &Value) -> Result<Value> {
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
    if n_head == 0 || rows % n_head != 0 || (rows / n_head) % 2 != 0 {
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

fn hf_weights(file: &GgufFile, config: &Value, keep_quantized: bool) -> Result<Weights> {
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

// ---------------------------------------------------------------------------------------------
// Tokenizer

/// llama.cpp token types (llama_token_type).
const TOKEN_UNKNOWN: i64 = 2;
const TOKEN_CONTROL: i64 = 3;
const TOKEN_USER_DEFINED: i64 = 4;

/// Qwen2's pre-tokenizer regex, as in its tokenizer.json.
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Llama 3's pre-tokenizer regex, as in its tokenizer.json.
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The `tokenizer.ggml.pre` values we translate.
pub const SUPPORTED_PRE_TOKENIZERS: [&str; 8] = [
    "smollm",
    "qwen2",
    "deepseek-r1-qwen",
    "llama-bpe",
    "llama3",
    "llama-v3",
    "gpt-2",
    "default",
];

/// GPT-2's byte → printable character table (bytes_to_unicode).
pub fn bytes_to_unicode() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut n = 0u32;
    for b in 0..=255u8 {
        let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        table[b as usize] = if printable {
            b as char
        } else {
            n += 1;
            char::from_u32(255 + n).unwrap_or('\0')
        };
    }
    table
}

fn added_token(id: usize, content: &str, special: bool) -> Value {
    json!({"id": id, "content": content, "single_word": false, "lstrip": false, "rstrip": false,
           "normalized": false, "special": special})
}

fn byte_level(add_prefix_space: bool, trim_offsets: bool, use_regex: bool) -> Value {
    json!({"type": "ByteLevel", "add_prefix_space": add_prefix_space, "trim_offsets": trim_offsets, "use_regex": use_regex})
}

fn split(regex: &str) -> Value {
    json!({"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": false})
}

fn bos_template(bos: Option<(&str, usize)>) -> Value {
    match bos {
        None => Value::Null,
        Some((tok, id)) => json!({
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": tok, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": tok, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": tok, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {tok: {"id": tok, "ids": [id], "tokens": [tok]}}
        }),
    }
}

/// Build tokenizer.json and tokenizer_config.json from the `tokenizer.ggml.*` metadata.
pub fn hf_tokenizer(file: &GgufFile) -> Result<(Value, Value)> {
    let model = file
        .str_key("tokenizer.ggml.model")?
        .ok_or_else(|| file.err("no tokenizer.ggml.model in the metadata"))?;
    let tokens: Vec<&str> = file
        .get("tokenizer.ggml.tokens")
        .and_then(|v| v.as_array())
        .ok_or_else(|| file.err("tokenizer.ggml.tokens is missing or not an array"))?
        .iter()
        .map(|v| {
            v.as_str()
                .ok_or_else(|| file.err("tokenizer.ggml.tokens holds a non-string"))
        })
        .collect::<Result<_>>()?;
    let types: Vec<i64> = match file.get("tokenizer.ggml.token_type") {
        None => vec![1; tokens.len()],
        Some(v) => v
            .as_array()
            .ok_or_else(|| file.err("tokenizer.ggml.token_type is not an array"))?
            .iter()
            .map(|v| {
                v.as_i64()
                    .ok_or_else(|| file.err("tokenizer.ggml.token_type holds a non-integer"))
            })
            .collect::<Result<_>>()?,
    };
    if types.len() != tokens.len() {
        return Err(file.err(format!(
            "{} token types for {} tokens",
            types.len(),
            tokens.len()
        )));
    }
    let token_id = |key: &str| -> Result<Option<usize>> {
        match file.u64_key(&format!("tokenizer.ggml.{key}"))? {
            None => Ok(None),
            Some(id) if (id as usize) < tokens.len() => Ok(Some(id as usize)),
            Some(id) => Err(file.err(format!(
                "tokenizer.ggml.{key} = {id} is outside the vocabulary of {}",
                tokens.len()
            ))),
        }
    };
    let bos = token_id("bos_token_id")?;
    let eos = token_id("eos_token_id")?;
    let unk = token_id("unknown_token_id")?;
    let pad = token_id("padding_token_id")?;
    let eot = token_id("eot_token_id")?;
    let sentencepiece = model == "llama";
    // llama.cpp adds BOS to a SentencePiece vocabulary that does not say otherwise.
    let add_bos = file
        .bool_key("tokenizer.ggml.add_bos_token")?
        .unwrap_or(sentencepiece);
    let add_eos = file
        .bool_key("tokenizer.ggml.add_eos_token")?
        .unwrap_or(false);
    let bos_tpl = if add_bos {
        bos.map(|id| (tokens[id], id))
    } else {
        None
    };

    let tok = match model {
        "gpt2" => {
            let pre = file.str_key("tokenizer.ggml.pre")?.unwrap_or("default");
            byte_level_tokenizer(file, &tokens, &types, pre, bos_tpl)?
        }
        "llama" => sentencepiece_tokenizer(file, &tokens, &types, unk, bos_tpl)?,
        other => {
            return Err(Error::Tokenizer(format!(
                "{}: tokenizer.ggml.model {other:?} is not supported (gpt2 and llama are)",
                file.path.display()
            )))
        }
    };

    let mut cfg = Map::new();
    let name = |id: Option<usize>| id.map(|i| json!(tokens[i])).unwrap_or(Value::Null);
    cfg.insert("bos_token".into(), name(bos));
    cfg.insert("eos_token".into(), name(eos));
    cfg.insert("unk_token".into(), name(unk));
    cfg.insert("pad_token".into(), name(pad));
    if eot.is_some() {
        cfg.insert("eot_token".into(), name(eot));
    }
    cfg.insert("add_bos_token".into(), json!(add_bos));
    cfg.insert("add_eos_token".into(), json!(add_eos));
    if let Some(t) = file.str_key("tokenizer.chat_template")? {
        cfg.insert("chat_template".into(), json!(t));
    }
    cfg.insert("clean_up_tokenization_spaces".into(), json!(false));
    cfg.insert(
        "model_max_length".into(),
        json!(hf_config(file)
            .ok()
            .and_then(|c| c["max_position_embeddings"].as_u64())
            .unwrap_or(2048)),
    );
    cfg.insert(
        "tokenizer_class".into(),
        json!(if sentencepiece {
            "LlamaTokenizer"
        } else {
            "GPT2Tokenizer"
        }),
    );
    Ok((tok, Value::Object(cfg)))
}

fn byte_level_tokenizer(
    file: &GgufFile,
    tokens: &[&str],
    types: &[i64],
    pre: &str,
    bos: Option<(&str, usize)>,
) -> Result<Value> {
    let (normalizer, pre_tokenizer, ignore_merges) = match pre {
        // SmolLM's tokenizer.json splits every digit on its own before the GPT-2 regex.
        "smollm" => (
            Value::Null,
            json!({"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": true}, byte_level(false, true, true)]}),
            false,
        ),
        "qwen2" | "deepseek-r1-qwen" => (
            json!({"type": "NFC"}),
            json!({"type": "Sequence", "pretokenizers": [split(QWEN2_SPLIT), byte_level(false, false, false)]}),
            false,
        ),
        "llama-bpe" | "llama3" | "llama-v3" => (
            Value::Null,
            json!({"type": "Sequence", "pretokenizers": [split(LLAMA3_SPLIT), byte_level(false, true, false)]}),
            true,
        ),
        "gpt-2" | "default" => (Value::Null, byte_level(false, true, true), false),
        other => {
            return Err(Error::Tokenizer(format!(
                "{}: tokenizer.ggml.pre {other:?} is not supported (supported: {})",
                file.path.display(),
                SUPPORTED_PRE_TOKENIZERS.join(", ")
            )))
        }
    };

    // Byte-level vocabularies spell every ordinary token in GPT-2's byte alphabet. Control and
    // user-defined tokens are matched whole in the raw text, so they keep their raw spelling and
    // become added tokens — as in the model's own tokenizer.json (DeepSeek's
    // "<｜begin▁of▁sentence｜>" is not in the alphabet; transformers' GGUF conversion drops it).
    // An ordinary token written in raw text is respelled into the alphabet, as transformers does.
    let table = bytes_to_unicode();
    let alphabet: HashSet<char> = table.iter().copied().collect();
    let mut vocab = Map::new();
    let mut added = Vec::new();
    for (id, (t, &ty)) in tokens.iter().zip(types).enumerate() {
        let spelled = if ty == TOKEN_CONTROL
            || ty == TOKEN_USER_DEFINED
            || t.chars().all(|c| alphabet.contains(&c))
        {
            t.to_string()
        } else {
            t.bytes().map(|b| table[b as usize]).collect()
        };
        vocab.insert(spelled, json!(id));
        if ty == TOKEN_CONTROL {
            added.push(added_token(id, t, true));
        } else if ty == TOKEN_USER_DEFINED {
            added.push(added_token(id, t, false));
        }
    }
    let merges = match file.get("tokenizer.ggml.merges") {
        None => return Err(file.err("a gpt2 tokenizer needs tokenizer.ggml.merges")),
        Some(v) => v
            .as_array()
            .ok_or_else(|| file.err("tokenizer.ggml.merges is not an array"))?
            .iter()
            .map(|m| {
                let s = m
                    .as_str()
                    .ok_or_else(|| file.err("tokenizer.ggml.merges holds a non-string"))?;
                let (a, b) = s
                    .split_once(' ')
                    .ok_or_else(|| file.err(format!("merge {s:?} has no space")))?;
                Ok(json!([a, b]))
            })
            .collect::<Result<Vec<_>>>()?,
    };
    // Without BOS the post-processor has nothing to add: ids are what the model produced. (A
    // ByteLevel post-processor, which some tokenizer.json files carry, only adjusts offsets.)
    let post = bos_template(bos);
    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": normalizer,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": post,
        "decoder": byte_level(true, true, true),
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
            "ignore_merges": ignore_merges, "vocab": vocab, "merges": merges
        }
    }))
}

/// SentencePiece BPE (tokenizer.ggml.model = "llama"), built the way transformers' GGUF
/// converter builds it: BPE with byte fallback, merges recovered from the vocabulary scores,
/// Metaspace pre-tokenizer.
fn sentencepiece_tokenizer(
    file: &GgufFile,
    tokens: &[&str],
    types: &[i64],
    unk: Option<usize>,
    bos: Option<(&str, usize)>,
) -> Result<Value> {
    let scores: Vec<f64> = match file.get("tokenizer.ggml.scores") {
        Some(v) => v
            .as_array()
            .ok_or_else(|| file.err("tokenizer.ggml.scores is not an array"))?
            .iter()
            .map(|s| {
                s.as_f64()
                    .ok_or_else(|| file.err("tokenizer.ggml.scores holds a non-number"))
            })
            .collect::<Result<_>>()?,
        None => {
            return Err(file.err("a llama (SentencePiece) tokenizer needs tokenizer.ggml.scores"))
        }
    };
    if scores.len() != tokens.len() {
        return Err(file.err(format!(
            "{} scores for {} tokens",
            scores.len(),
            tokens.len()
        )));
    }
    let add_prefix_space = file
        .bool_key("tokenizer.ggml.add_space_prefix")?
        .unwrap_or(true);

    let mut index: HashMap<&str, usize> = HashMap::new();
    let mut vocab = Map::new();
    for (id, t) in tokens.iter().enumerate() {
        index.insert(t, id);
        vocab.insert(t.to_string(), json!(id));
    }
    let merges = match file.get("tokenizer.ggml.merges") {
        Some(v) => v
            .as_array()
            .ok_or_else(|| file.err("tokenizer.ggml.merges is not an array"))?
            .iter()
            .map(|m| {
                let s = m
                    .as_str()
                    .ok_or_else(|| file.err("tokenizer.ggml.merges holds a non-string"))?;
                let (a, b) = s
                    .split_once(' ')
                    .ok_or_else(|| file.err(format!("merge {s:?} has no space")))?;
                Ok(json!([a, b]))
            })
            .collect::<Result<Vec<_>>>()?,
        None => sentencepiece_merges(tokens, &scores, &index)
            .into_iter()
            .map(|(a, b)| json!([a, b]))
            .collect(),
    };
    let mut added = Vec::new();
    for (id, (t, &ty)) in tokens.iter().zip(types).enumerate() {
        if ty == TOKEN_CONTROL || ty == TOKEN_UNKNOWN || Some(id) == unk {
            added.push(added_token(id, t, true));
        } else if ty == TOKEN_USER_DEFINED {
            added.push(added_token(id, t, false));
        }
    }
    let mut decoders = vec![
        json!({"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "}),
        json!({"type": "ByteFallback"}),
        json!({"type": "Fuse"}),
    ];
    if add_prefix_space {
        decoders.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
    }
    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {"type": "Metaspace", "replacement": "\u{2581}",
                          "prepend_scheme": if add_prefix_space { "first" } else { "never" }, "split": false},
        "post_processor": bos_template(bos),
        "decoder": {"type": "Sequence", "decoders": decoders},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": unk.map(|u| json!(tokens[u])).unwrap_or(Value::Null),
            "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": true,
            "byte_fallback": true, "ignore_merges": false, "vocab": vocab, "merges": merges
        }
    }))
}

/// Merges implied by a SentencePiece vocabulary, exactly as transformers' `generate_merges`
/// with scores: every split of every token into two vocabulary pieces is a merge, ranked by the
/// merged token's score (best first), then by the lengths of the pieces (longer first); ties keep
/// vocabulary order, and splits of one token are ordered by the ids of their pieces.
pub fn sentencepiece_merges(
    tokens: &[&str],
    scores: &[f64],
    index: &HashMap<&str, usize>,
) -> Vec<(String, String)> {
    // Python dict semantics: a token listed twice keeps its last id and its last score, at the
    // position of its first appearance.
    let mut order: Vec<&str> = Vec::new();
    let mut score_of: HashMap<&str, f64> = HashMap::new();
    for (t, &s) in tokens.iter().zip(scores) {
        if score_of.insert(t, s).is_none() {
            order.push(t);
        }
    }
    let mut merges: Vec<(&str, &str, f64)> = Vec::new();
    for t in order {
        let score = score_of[t];
        let mut local = Vec::new();
        for (i, _) in t.char_indices().skip(1) {
            let (l, r) = t.split_at(i);
            if let (Some(&il), Some(&ir)) = (index.get(l), index.get(r)) {
                local.push((l, r, il, ir));
            }
        }
        local.sort_by_key(|&(_, _, il, ir)| (il, ir));
        merges.extend(local.into_iter().map(|(l, r, _, _)| (l, r, score)));
    }
    // Python's sorted(..., reverse=True) is stable: equal keys keep their order.
    let clen = |s: &str| s.chars().count();
    merges.sort_by(|a, b| {
        b.2.partial_cmp(&a.2)
            .unwrap_or(std::cmp::Ordering::Equal)
            .then_with(|| clen(b.0).cmp(&clen(a.0)))
            .then_with(|| clen(b.1).cmp(&clen(a.1)))
    });
    merges
        .into_iter()
        .map(|(l, r, _)| (l.to_string(), r.to_string()))
        .collect()
}
