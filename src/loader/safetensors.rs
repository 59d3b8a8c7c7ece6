//! safetensors reader: one file or a sharded checkpoint (model.safetensors.index.json).
//!
//! The format is 8 bytes of little-endian header length N, N bytes of JSON
//! `{name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {...}}`, then the data.
//! [`read_header`] reads only the header (used by `inspect`, which must not touch tensor data);
//! [`load`] memory-maps the files and hands out zero-copy [`WeightTensor`] views. Every offset is
//! checked against the file length and against shape × dtype before any view is made.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value;

use crate::error::{Error, Result};
use crate::tensor::{DType, Storage, WeightTensor, Weights};

/// Headers larger than this are refused (the format's own limit is 100 MB).
const MAX_HEADER: u64 = 100 << 20;

/// One tensor as described by a header.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorHeader {
    pub name: String,
    /// The dtype string as written ("F32", "BF16", "I64" ...).
    pub dtype: String,
    pub shape: Vec<usize>,
    /// Byte range relative to the start of the data region.
    pub begin: usize,
    pub end: usize,
}

impl TensorHeader {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    /// Our dtype, if we compute with it.
    pub fn dtype(&self) -> Option<DType> {
        parse_dtype(&self.dtype)
    }
}

/// The parsed header of one .safetensors file.
#[derive(Clone, Debug)]
pub struct Header {
    pub path: PathBuf,
    /// Offset of the data region in the file (8 + N).
    pub data_start: usize,
    pub file_len: u64,
    pub tensors: Vec<TensorHeader>,
}

fn parse_dtype(s: &str) -> Option<DType> {
    match s {
        "F32" => Some(DType::F32),
        "F16" => Some(DType::F16),
        "BF16" => Some(DType::BF16),
        _ => None,
    }
}

/// Bytes per element of a safetensors dtype string (for bounds checks of any dtype).
fn dtype_bits(s: &str) -> Option<usize> {
    Some(match s {
        "BOOL" | "U8" | "I8" | "F8_E4M3" | "F8_E5M2" | "F8_E8M0" => 8,
        "F16" | "BF16" | "I16" | "U16" => 16,
        "F32" | "I32" | "U32" => 32,
        "F64" | "I64" | "U64" => 64,
        "F4" => 4,
        "F6_E2M3" | "F6_E3M2" => 6,
        _ => return None,
    })
}

/// Read and validate the header of `path` without reading tensor data.
pub fn read_header(path: &Path) -> Result<Header> {
    let mut file = std::fs::File::open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::MissingFile {
                path: path.to_path_buf(),
                what: "safetensors file".into(),
            }
        } else {
            Error::io(path, e)
        }
    })?;
    let file_len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    let bad = |m: String| Error::bad_weights(path, m);
    if file_len < 8 {
        return Err(bad(format!(
            "file is {file_len} bytes: too short for a safetensors header"
        )));
    }
    let mut len8 = [0u8; 8];
    file.read_exact(&mut len8).map_err(|e| Error::io(path, e))?;
    let n = u64::from_le_bytes(len8);
    if n > MAX_HEADER {
        return Err(bad(format!("header length {n} exceeds the 100 MB limit")));
    }
    if 8 + n > file_len {
        return Err(bad(format!(
            "header length {n} runs past the end of the file ({file_len} bytes)"
        )));
    }
    let mut json = vec![0u8; n as usize];
    file.read_exact(&mut json).map_err(|e| Error::io(path, e))?;
    let v: Value =
        serde_json::from_slice(&json).map_err(|e| bad(format!("header is not valid JSON: {e}")))?;
    let obj = v
        .as_object()
        .ok_or_else(|| bad("header is not a JSON object".into()))?;
    let data_start = 8 + n as usize;
    let data_len = (file_len - 8 - n) as usize;

    let mut tensors = Vec::with_capacity(obj.len());
    for (name, info) in obj {
        if name == "__metadata__" {
            continue;
        }
        let dtype = info
            .get("dtype")
            .and_then(Value::as_str)
            .ok_or_else(|| bad(format!("tensor {name:?}: missing dtype")))?
            .to_string();
        let shape: Vec<usize> = info
            .get("shape")
            .and_then(Value::as_array)
            .and_then(|a| {
                a.iter()
                    .map(|d| d.as_u64().map(|d| d as usize))
                    .collect::<Option<Vec<_>>>()
            })
            .ok_or_else(|| bad(format!("tensor {name:?}: missing or invalid shape")))?;
        let offs = info
            .get("data_offsets")
            .and_then(Value::as_array)
            .filter(|a| a.len() == 2)
            .and_then(|a| Some((a[0].as_u64()? as usize, a[1].as_u64()? as usize)))
            .ok_or_else(|| bad(format!("tensor {name:?}: missing or invalid data_offsets")))?;
        let (begin, end) = offs;
        if begin > end || end > data_len {
            return Err(bad(format!(
                "tensor {name:?}: data_offsets [{begin}, {end}] lie past the end of the data region ({data_len} bytes)"
            )));
        }
        let bits = dtype_bits(&dtype)
            .ok_or_else(|| bad(format!("tensor {name:?}: unknown dtype {dtype:?}")))?;
        let numel = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        let want = numel
            .and_then(|n| n.checked_mul(bits))
            .map(|b| b.div_ceil(8));
        if want != Some(end - begin) {
            return Err(bad(format!(
                "tensor {name:?}: shape {shape:?} of {dtype} needs {want:?} bytes but data_offsets span {}",
                end - begin
            )));
        }
        tensors.push(TensorHeader {
            name: name.clone(),
            dtype,
            shape,
            begin,
            end,
        });
    }
    tensors.sort_by_key(|t| (t.begin, t.end));
    for w in tensors.windows(2) {
        if w[1].begin < w[0].end {
            return Err(bad(format!(
                "tensors {:?} (bytes {}..{}) and {:?} (bytes {}..{}) overlap",
                w[0].name, w[0].begin, w[0].end, w[1].name, w[1].begin, w[1].end
            )));
        }
    }
    Ok(Header {
        path: path.to_path_buf(),
        data_start,
        file_len,
        tensors,
    })
}

/// The safetensors files of a checkpoint: `model.safetensors`, or the shards an index names.
/// `path` is a directory or a single .safetensors file.
pub fn checkpoint_files(path: &Path) -> Result<Vec<PathBuf>> {
    if path.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    let single = path.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index = path.join("model.safetensors.index.json");
    if index.is_file() {
        let text = std::fs::read_to_string(&index).map_err(|e| Error::io(&index, e))?;
        let v: Value = serde_json::from_str(&text).map_err(|e| Error::json(&index, e))?;
        let map = v
            .get("weight_map")
            .and_then(Value::as_object)
            .ok_or_else(|| Error::json(&index, "missing field \"weight_map\""))?;
        let mut files: Vec<String> = map
            .values()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect();
        files.sort();
        files.dedup();
        for f in &files {
            if f.is_empty() || f.contains('/') || f.contains('\\') || f.starts_with('.') {
                return Err(Error::json(
                    &index,
                    format!("shard name {f:?} is not a plain file name"),
                ));
            }
        }
        return Ok(files.into_iter().map(|f| path.join(f)).collect());
    }
    Err(Error::MissingFile {
        path: path.to_path_buf(),
        what: "model.safetensors or model.safetensors.index.json".into(),
    })
}

/// Memory-map every file of the checkpoint at `path` (directory or file) and build views.
/// Tensors of dtypes we do not compute with are kept out; asking for one later is an
/// `UnsupportedDtype` error naming it.
pub fn load(path: &Path) -> Result<Weights> {
    let mut tensors = BTreeMap::new();
    let mut unsupported = BTreeMap::new();
    for file in checkpoint_files(path)? {
        let header = read_header(&file)?;
        let storage = Arc::new(Storage::map(&file)?);
        if storage.bytes().len() as u64 != header.file_len {
            return Err(Error::bad_weights(
                &file,
                "file changed size while being opened",
            ));
        }
        for t in header.tensors {
            let Some(dtype) = t.dtype() else {
                unsupported.insert(t.name.clone(), t.dtype.clone());
                continue;
            };
            let mut w = WeightTensor::new(
                t.name.clone(),
                dtype,
                t.shape,
                storage.clone(),
                header.data_start + t.begin,
                t.end - t.begin,
                &file,
            )?;
            if !w.is_aligned() {
                // A header length that is not a multiple of the element size leaves the data
                // misaligned for typed access: copy this tensor once rather than fail.
                w = w.to_owned_aligned();
            }
            if tensors.insert(t.name.clone(), w).is_some() {
                return Err(Error::bad_weights(
                    &file,
                    format!("tensor {:?} appears in more than one shard", t.name),
                ));
            }
        }
    }
    Ok(Weights {
        path: path.to_path_buf(),
        tensors,
        unsupported,
    })
}
