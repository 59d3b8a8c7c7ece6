//! The bottom layer: element types, storage and tensor views.
//!
//! A [`WeightTensor`] is a view into a [`Storage`]: either a memory-mapped file (used in place,
//! no copy) or an owned buffer (GGUF tensors dequantized at load, tables the model computes).
//! [`Weights`] holds a checkpoint's tensors by Hugging Face name. Everything above (quant,
//! loader, backends, the transformer) imports these types; this module imports nothing of
//! minfer but the error type.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use half::{bf16, f16};

use crate::error::{Error, Result};

/// The element types minfer can hold. Quantized types are stored in GGML's block layouts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DType {
    /// 32-bit float.
    F32,
    /// IEEE half precision.
    F16,
    /// bfloat16 (f32 with a 7-bit mantissa).
    BF16,
    /// GGML Q8_0: blocks of 32 weights, one f16 scale + 32 × i8 (34 bytes).
    Q8_0,
    /// GGML Q4_0: blocks of 32, f16 scale + 16 bytes of nibbles (18 bytes), value = (q - 8) · d.
    Q4_0,
    /// GGML Q4_1: blocks of 32, f16 scale d, f16 min m, 16 bytes of nibbles (20 bytes), value = q · d + m.
    Q4_1,
    /// GGML Q4_K: super-blocks of 256 (144 bytes).
    Q4K,
    /// GGML Q5_K: super-blocks of 256 (176 bytes).
    Q5K,
    /// GGML Q6_K: super-blocks of 256 (210 bytes).
    Q6K,
}

impl DType {
    /// Every dtype, plain types first.
    pub const ALL: [DType; 9] = [
        DType::F32,
        DType::F16,
        DType::BF16,
        DType::Q8_0,
        DType::Q4_0,
        DType::Q4_1,
        DType::Q4K,
        DType::Q5K,
        DType::Q6K,
    ];

    /// (elements per block, bytes per block). Plain types are blocks of one.
    pub fn block(self) -> (usize, usize) {
        match self {
            DType::F32 => (1, 4),
            DType::F16 | DType::BF16 => (1, 2),
            DType::Q8_0 => (32, 34),
            DType::Q4_0 => (32, 18),
            DType::Q4_1 => (32, 20),
            DType::Q4K => (256, 144),
            DType::Q5K => (256, 176),
            DType::Q6K => (256, 210),
        }
    }

    /// Bytes needed for `n` elements, or None when `n` is not a whole number of blocks.
    pub fn bytes_for(self, n: usize) -> Option<usize> {
        let (be, bb) = self.block();
        if !n.is_multiple_of(be) {
            return None;
        }
        (n / be).checked_mul(bb)
    }

    /// The lower-case name ("bf16", "q4_k"), as [`FromStr`](std::str::FromStr) reads it.
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::Q8_0 => "q8_0",
            DType::Q4_0 => "q4_0",
            DType::Q4_1 => "q4_1",
            DType::Q4K => "q4_k",
            DType::Q5K => "q5_k",
            DType::Q6K => "q6_k",
        }
    }

    /// A GGML block type (not f32, f16 or bf16).
    pub fn is_quantized(self) -> bool {
        !matches!(self, DType::F32 | DType::F16 | DType::BF16)
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for DType {
    type Err = Error;

    /// The names [`DType::name`] prints, case-insensitively ("bf16", "Q8_0", "q4_k" ...).
    fn from_str(s: &str) -> Result<DType> {
        let lower = s.trim().to_ascii_lowercase();
        DType::ALL
            .into_iter()
            .find(|d| d.name() == lower)
            .ok_or_else(|| Error::InvalidOption {
                field: "dtype",
                value: s.to_string(),
                reason: format!("expected one of {}", DType::ALL.map(DType::name).join(", ")),
            })
    }
}

/// Where tensor bytes live.
pub enum Storage {
    /// A read-only memory map of a file.
    Mmap(memmap2::Mmap),
    /// Owned bytes. Stored as u64 words so that any f32/f16/bf16 view of it is aligned.
    Owned(Vec<u64>),
}

impl Storage {
    /// The bytes.
    pub fn bytes(&self) -> &[u8] {
        match self {
            Storage::Mmap(m) => m,
            Storage::Owned(v) => bytemuck::cast_slice(v),
        }
    }

    /// An owned, 8-byte aligned copy of `bytes`.
    pub fn owned(bytes: &[u8]) -> Storage {
        let mut words = vec![0u64; bytes.len().div_ceil(8)];
        bytemuck::cast_slice_mut::<u64, u8>(&mut words)[..bytes.len()].copy_from_slice(bytes);
        Storage::Owned(words)
    }

    /// Memory-map a file read-only.
    pub fn map(path: &Path) -> Result<Storage> {
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: the mapping is read-only. If another process truncates the file while we hold
        // the mapping, reads fault (SIGBUS); every memory-mapping runtime accepts that risk, and
        // we never hand out the mapping mutably.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        Ok(Storage::Mmap(map))
    }
}

/// One tensor: a typed, shaped view into shared storage.
#[derive(Clone)]
pub struct WeightTensor {
    /// The Hugging Face name ("model.layers.0.self_attn.q_proj.weight").
    pub name: String,
    /// The stored element type.
    pub dtype: DType,
    /// Row-major shape, outermost first, as Hugging Face writes it: a linear layer is [out, in].
    pub shape: Vec<usize>,
    storage: Arc<Storage>,
    start: usize,
    len: usize,
}

impl WeightTensor {
    /// A view of `len` bytes at `start` of `storage`. Checks the range and that the byte count
    /// matches shape × dtype.
    pub fn new(
        name: impl Into<String>,
        dtype: DType,
        shape: Vec<usize>,
        storage: Arc<Storage>,
        start: usize,
        len: usize,
        path: &Path,
    ) -> Result<WeightTensor> {
        let name = name.into();
        let end = start.checked_add(len);
        if end.is_none_or(|e| e > storage.bytes().len()) {
            return Err(Error::bad_weights(
                path,
                format!(
                    "tensor {name:?}: bytes {start}..{} lie past the end of the data ({} bytes)",
                    start.saturating_add(len),
                    storage.bytes().len()
                ),
            ));
        }
        let numel = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        let want = numel.and_then(|n| dtype.bytes_for(n));
        if want != Some(len) {
            return Err(Error::bad_weights(
                path,
                format!("tensor {name:?}: shape {shape:?} of {dtype} needs {want:?} bytes, the header gives {len}"),
            ));
        }
        Ok(WeightTensor {
            name,
            dtype,
            shape,
            storage,
            start,
            len,
        })
    }

    /// A tensor owning a copy of `values` (used for computed tables and dequantized weights).
    pub fn from_f32(name: impl Into<String>, shape: Vec<usize>, values: &[f32]) -> WeightTensor {
        let bytes: &[u8] = bytemuck::cast_slice(values);
        let storage = Arc::new(Storage::owned(bytes));
        WeightTensor {
            name: name.into(),
            dtype: DType::F32,
            shape,
            storage,
            start: 0,
            len: bytes.len(),
        }
    }

    /// A tensor owning arbitrary bytes of `dtype` (the caller guarantees the size matches).
    pub fn from_bytes(
        name: impl Into<String>,
        dtype: DType,
        shape: Vec<usize>,
        bytes: &[u8],
    ) -> Result<WeightTensor> {
        let storage = Arc::new(Storage::owned(bytes));
        WeightTensor::new(
            name,
            dtype,
            shape,
            storage,
            0,
            bytes.len(),
            Path::new("<memory>"),
        )
    }

    /// The rows of `parts` one after another, as one owned tensor named `name`: `[Σ n_i, k]`
    /// for matrices `[n_i, k]`, `[Σ n_i]` for vectors. This is how linear layers that read the
    /// same input (q/k/v, gate/up) are fused at load into one matrix, and their biases into one
    /// vector. Row-major storage makes it a byte concatenation for every dtype, the GGML block
    /// types included, as long as each row is whole blocks. None when the parts differ in dtype,
    /// rank or row width, or a row is not whole blocks (such layers stay apart).
    pub fn concat_rows(name: impl Into<String>, parts: &[&WeightTensor]) -> Option<WeightTensor> {
        let first = parts.first()?;
        let rank = first.shape.len();
        let same = parts.iter().all(|p| {
            p.dtype == first.dtype && p.shape.len() == rank && p.shape[1..] == first.shape[1..]
        });
        if !same || !(rank == 1 || rank == 2) {
            return None;
        }
        let (per_block, _) = first.dtype.block();
        if rank == 2 && !first.shape[1].is_multiple_of(per_block) {
            return None;
        }
        let mut shape = first.shape.clone();
        shape[0] = parts.iter().map(|p| p.shape[0]).sum();
        // Written straight into the owned storage: one copy, never two.
        let len: usize = parts.iter().map(|p| p.len).sum();
        let mut words = vec![0u64; len.div_ceil(8)];
        let mut at = 0;
        for p in parts {
            bytemuck::cast_slice_mut::<u64, u8>(&mut words)[at..at + p.len]
                .copy_from_slice(p.bytes());
            at += p.len;
        }
        let storage = Arc::new(Storage::Owned(words));
        WeightTensor::new(
            name,
            first.dtype,
            shape,
            storage,
            0,
            len,
            Path::new("<fused>"),
        )
        .ok()
    }

    /// Tell the OS that this tensor's bytes will not be read again (they were copied into a
    /// fused tensor): pages of a memory-mapped file leave the process's resident set instead of
    /// staying beside the copy. Nothing for owned storage. Only a hint: the bytes stay readable.
    pub fn release_pages(&self) {
        #[cfg(unix)]
        if let Storage::Mmap(m) = &*self.storage {
            // SAFETY: `m` is a read-only shared mapping of a file (Storage::map). MADV_DONTNEED
            // drops this process's page-table entries for the range; a later read faults the
            // same bytes back in from the file, so every view of the mapping (this tensor's,
            // its neighbours' on the shared first and last page) keeps reading what it read.
            let _ = unsafe {
                m.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, self.start, self.len)
            };
        }
    }

    /// The tensor's bytes, in the stored layout.
    pub fn bytes(&self) -> &[u8] {
        &self.storage.bytes()[self.start..self.start + self.len]
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// The data as f32, if the dtype is f32 and the bytes are 4-aligned.
    pub fn as_f32(&self) -> Option<&[f32]> {
        (self.dtype == DType::F32)
            .then(|| bytemuck::try_cast_slice(self.bytes()).ok())
            .flatten()
    }
    /// The data as bf16, if the dtype is bf16 and the bytes are 2-aligned.
    pub fn as_bf16(&self) -> Option<&[bf16]> {
        (self.dtype == DType::BF16)
            .then(|| bytemuck::try_cast_slice(self.bytes()).ok())
            .flatten()
    }
    /// The data as f16, if the dtype is f16 and the bytes are 2-aligned.
    pub fn as_f16(&self) -> Option<&[f16]> {
        (self.dtype == DType::F16)
            .then(|| bytemuck::try_cast_slice(self.bytes()).ok())
            .flatten()
    }

    /// Whether the typed views above will succeed (mmapped data can be misaligned when a
    /// safetensors header length is not a multiple of 8).
    pub fn is_aligned(&self) -> bool {
        let align = match self.dtype {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
            _ => 1,
        };
        (self.bytes().as_ptr() as usize).is_multiple_of(align)
    }

    /// The same tensor copied into aligned owned storage.
    pub fn to_owned_aligned(&self) -> WeightTensor {
        let storage = Arc::new(Storage::owned(self.bytes()));
        WeightTensor {
            storage,
            start: 0,
            ..self.clone()
        }
    }

    /// Every element as f32 (dequantizing when needed). Allocates: for load time and tests only.
    pub fn to_f32_vec(&self) -> Result<Vec<f32>> {
        let b = self.bytes();
        Ok(match self.dtype {
            DType::F32 => b
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            DType::F16 => b
                .chunks_exact(2)
                .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            DType::BF16 => b
                .chunks_exact(2)
                .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            other => {
                return Err(Error::UnsupportedDtype {
                    name: self.name.clone(),
                    dtype: other.to_string(),
                })
            }
        })
    }
}

impl std::fmt::Debug for WeightTensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {} {:?}", self.name, self.dtype, self.shape)
    }
}

/// All tensors of a checkpoint, by Hugging Face name.
pub struct Weights {
    /// Where they came from (for error messages).
    pub path: PathBuf,
    /// Tensors by Hugging Face name.
    pub tensors: BTreeMap<String, WeightTensor>,
    /// Tensors present in the checkpoint in a dtype we do not compute with (name → dtype).
    pub unsupported: BTreeMap<String, String>,
}

impl Weights {
    /// The tensor, or an error naming it (missing, or stored in a dtype minfer cannot use).
    pub fn get(&self, name: &str) -> Result<&WeightTensor> {
        if let Some(dtype) = self.unsupported.get(name) {
            return Err(Error::UnsupportedDtype {
                name: name.to_string(),
                dtype: dtype.clone(),
            });
        }
        self.tensors.get(name).ok_or_else(|| Error::MissingTensor {
            name: name.to_string(),
            path: self.path.clone(),
        })
    }

    /// The tensor, checked to have exactly `shape`.
    pub fn get_shaped(&self, name: &str, shape: &[usize]) -> Result<&WeightTensor> {
        let t = self.get(name)?;
        if t.shape != shape {
            return Err(Error::ShapeMismatch {
                name: name.to_string(),
                expected: shape.to_vec(),
                got: t.shape.clone(),
            });
        }
        Ok(t)
    }

    /// Whether the checkpoint has the tensor.
    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concat_rows_joins_rows_in_order_and_refuses_what_cannot_be_one_matrix() {
        let a = WeightTensor::from_f32("a", vec![2, 3], &[1., 2., 3., 4., 5., 6.]);
        let b = WeightTensor::from_f32("b", vec![1, 3], &[7., 8., 9.]);
        let ab = WeightTensor::concat_rows("a+b", &[&a, &b]).expect("same dtype and width");
        assert_eq!((ab.name.as_str(), ab.shape.clone()), ("a+b", vec![3, 3]));
        assert_eq!(
            ab.to_f32_vec().unwrap(),
            (1..=9).map(|v| v as f32).collect::<Vec<_>>()
        );
        // vectors (biases)
        let (u, v) = (
            WeightTensor::from_f32("u", vec![2], &[1., 2.]),
            WeightTensor::from_f32("v", vec![1], &[3.]),
        );
        let uv = WeightTensor::concat_rows("u+v", &[&u, &v]).unwrap();
        assert_eq!(uv.to_f32_vec().unwrap(), vec![1., 2., 3.]);
        // another width, another dtype, another rank: apart
        let c = WeightTensor::from_f32("c", vec![1, 2], &[1., 2.]);
        assert!(WeightTensor::concat_rows("a+c", &[&a, &c]).is_none());
        let h = WeightTensor::from_bytes("h", DType::BF16, vec![1, 3], &[0; 6]).unwrap();
        assert!(WeightTensor::concat_rows("a+h", &[&a, &h]).is_none());
        assert!(WeightTensor::concat_rows("a+u", &[&a, &u]).is_none());
        // block types: rows of whole blocks are a byte concatenation
        let q = |n| WeightTensor::from_bytes("q", DType::Q8_0, vec![n, 64], &vec![n as u8; n * 68]);
        let qq = WeightTensor::concat_rows("q+q", &[&q(1).unwrap(), &q(2).unwrap()]).unwrap();
        assert_eq!(qq.shape, vec![3, 64]);
        assert_eq!(&qq.bytes()[..68], &[1u8; 68][..]);
        assert_eq!(&qq.bytes()[68..], &[2u8; 136][..]);
        // a row that is not whole blocks cannot be cut between rows
        let odd = WeightTensor::from_bytes("o", DType::Q8_0, vec![2, 16], &[0; 34]).unwrap();
        assert!(WeightTensor::concat_rows("o+o", &[&odd, &odd]).is_none());
    }
}
