//! GGUF (versions 2 and 3), by concern:
//! - this file, the container: header, typed metadata and tensor table, every count, length and
//!   offset checked;
//! - `hf.rs`: the translation of a llama.cpp checkpoint into what a Hugging Face directory would
//!   hold (config.json, tensors under their Hugging Face names and shapes);
//! - `tokenizer.rs`: tokenizer.json and tokenizer_config.json from the `tokenizer.ggml.*`
//!   metadata,
//!
//! so the rest of minfer sees one kind of model whatever the file format.
//!
//! Every count, length and offset read from the file is checked against the file length before
//! it is used, so a truncated or hostile file is an [`Error::BadWeights`], never a panic or a
//! huge allocation. The file is memory-mapped; [`read_header`] touches only the header pages.
//!
//! Deliberately not here: writing GGUF, the quantized kernels (see `quant.rs` for the reference
//! dequantizers), architectures outside the llama family, and llama.cpp's own tokenizer
//! algorithms — the tokenizer is handed on as tokenizer.json for `Tokenizer::from_json`.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value;

use crate::error::{Error, Result};
use crate::tensor::{DType, Storage, Weights};

mod hf;
mod tokenizer;

pub use hf::{hf_config, hf_tensor_name, hf_tensor_name_for, unpermute_rows};
pub use tokenizer::{
    bytes_to_unicode, hf_tokenizer, sentencepiece_merges, SUPPORTED_PRE_TOKENIZERS,
};

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml's GGML_MAX_DIMS.
const MAX_DIMS: u32 = 4;
/// Arrays of arrays are legal; nothing real nests deeper than this, and the bound keeps a hostile
/// file from recursing the stack away.
const MAX_NESTING: u32 = 8;
/// Elements in one metadata array. The largest real arrays are vocabularies and merge lists of a
/// few hundred thousand entries; each element costs 32 bytes in memory, so this bounds one array
/// at 512 MiB whatever the file claims.
const MAX_ARRAY_LEN: usize = 1 << 24;

/// The fewest bytes one value of metadata type `ty` takes in the file (unknown types: 1, and
/// they fail when read).
fn min_value_size(ty: u32) -> usize {
    match ty {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        8 | 10..=12 => 8, // a string is at least its 8-byte length
        9 => 12,          // element type and count
        _ => 1,
    }
}

/// The architectures we translate (the `general.architecture` strings).
pub const SUPPORTED_ARCHITECTURES: [&str; 5] = ["llama", "mistral", "qwen2", "qwen3", "gemma3"];

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
    pub(super) fn err(&self, message: impl std::fmt::Display) -> Error {
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
    pub(super) fn str_key(&self, key: &str) -> Result<Option<&str>> {
        self.typed_key(key, "a string", GgufValue::as_str)
    }
    pub(super) fn u64_key(&self, key: &str) -> Result<Option<u64>> {
        self.typed_key(key, "an unsigned integer", GgufValue::as_u64)
    }
    pub(super) fn f64_key(&self, key: &str) -> Result<Option<f64>> {
        self.typed_key(key, "a number", GgufValue::as_f64)
    }
    pub(super) fn bool_key(&self, key: &str) -> Result<Option<bool>> {
        self.typed_key(key, "a bool", GgufValue::as_bool)
    }
    pub(super) fn require_u64(&self, key: &str) -> Result<u64> {
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
                // Every element takes at least `min_value_size` bytes, so a count the remaining
                // bytes cannot hold is a lie; checking first keeps `with_capacity` honest.
                let count = usize::try_from(count)
                    .ok()
                    .filter(|&c| c.saturating_mul(min_value_size(elem)) <= self.remaining())
                    .ok_or_else(|| self.truncated(what))?;
                if count > MAX_ARRAY_LEN {
                    return Err(Error::bad_weights(
                        self.path,
                        format!("{what}: array of {count} elements (at most {MAX_ARRAY_LEN})"),
                    ));
                }
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

    // Tensors may not share bytes (the header cannot overlap them: data starts after it).
    let mut by_offset: Vec<&GgufTensorInfo> = tensors.iter().collect();
    by_offset.sort_by_key(|t| (t.offset, t.n_bytes));
    for w in by_offset.windows(2) {
        if w[1].offset < w[0].offset + w[0].n_bytes {
            return Err(Error::bad_weights(
                path,
                format!(
                    "tensors {:?} (bytes {}..{}) and {:?} (from byte {}) overlap",
                    w[0].name,
                    w[0].offset,
                    w[0].offset + w[0].n_bytes,
                    w[1].name,
                    w[1].offset
                ),
            ));
        }
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
    let weights = hf::hf_weights(&file, &config, keep_quantized)?;
    let (tokenizer_json, tokenizer_config) = hf_tokenizer(&file)?;
    let generation_config = hf::generation_config(&file, &config)?;
    Ok(GgufCheckpoint {
        config,
        generation_config,
        weights,
        tokenizer_json,
        tokenizer_config,
    })
}
