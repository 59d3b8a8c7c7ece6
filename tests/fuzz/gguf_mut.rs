//! Structure-aware GGUF mutation. A scanner (independent of the library's reader) walks as much
//! of a file as is well formed and records where every count, length, type, dimension and offset
//! lives, and the extent of every metadata entry and tensor-table entry; the mutator then lies in
//! exactly those places (2^40 tensors, 2^62-element dims, string lengths past the end, unknown
//! types, misaligned or overlapping offsets), drops and duplicates whole entries, and adds
//! metadata of every value type under the keys the translation reads.

use std::sync::Arc;

use super::engine::{mutate_bytes, Rng, INTERESTING_U64};

#[derive(Clone, Copy, PartialEq, Debug)]
enum Kind {
    Version,
    TensorCount,
    KvCount,
    StrLen,
    ValueType,
    ElemType,
    ArrayLen,
    Scalar,
    NDims,
    Dim,
    GgmlType,
    Offset,
}

#[derive(Clone, Copy, Debug)]
struct Field {
    at: usize,
    width: usize,
    kind: Kind,
}

#[derive(Default, Debug)]
struct Scan {
    fields: Vec<Field>,
    kvs: Vec<(usize, usize)>,
    tensors: Vec<(usize, usize)>,
    kv_start: usize,
    tensor_start: Option<usize>,
    header_end: Option<usize>,
}

struct Scanner<'a> {
    b: &'a [u8],
    pos: usize,
    scan: Scan,
}

impl Scanner<'_> {
    fn num(&mut self, width: usize, kind: Kind) -> Option<u64> {
        let s = self.b.get(self.pos..self.pos + width)?;
        self.scan.fields.push(Field {
            at: self.pos,
            width,
            kind,
        });
        self.pos += width;
        let mut a = [0u8; 8];
        a[..width].copy_from_slice(s);
        Some(u64::from_le_bytes(a))
    }
    fn string(&mut self) -> Option<()> {
        let len = self.num(8, Kind::StrLen)? as usize;
        if len > self.b.len().saturating_sub(self.pos) {
            return None;
        }
        self.pos += len;
        Some(())
    }
    fn value(&mut self, ty: u64, depth: u32) -> Option<()> {
        let w = match ty {
            0 | 1 | 7 => 1,
            2 | 3 => 2,
            4..=6 => 4,
            10..=12 => 8,
            8 => return self.string(),
            9 if depth < 4 => {
                let elem = self.num(4, Kind::ElemType)?;
                let n = self.num(8, Kind::ArrayLen)?;
                if n > self.b.len() as u64 {
                    return None;
                }
                // Record the fields of the first few elements only: big arrays are walked.
                for i in 0..n {
                    if i < 8 {
                        self.value(elem, depth + 1)?;
                    } else {
                        let before = self.scan.fields.len();
                        self.value(elem, depth + 1)?;
                        self.scan.fields.truncate(before);
                    }
                }
                return Some(());
            }
            _ => return None,
        };
        self.num(w, Kind::Scalar).map(|_| ())
    }
    fn run(mut self) -> Scan {
        let _ = self.walk();
        self.scan
    }
    fn walk(&mut self) -> Option<()> {
        if self.b.get(..4)? != b"GGUF" {
            return None;
        }
        self.pos = 4;
        self.num(4, Kind::Version)?;
        let n_tensors = self.num(8, Kind::TensorCount)?;
        let n_kv = self.num(8, Kind::KvCount)?;
        self.scan.kv_start = self.pos;
        for _ in 0..n_kv.min(1 << 20) {
            let start = self.pos;
            self.string()?;
            let ty = self.num(4, Kind::ValueType)?;
            self.value(ty, 0)?;
            self.scan.kvs.push((start, self.pos));
        }
        self.scan.tensor_start = Some(self.pos);
        for _ in 0..n_tensors.min(1 << 20) {
            let start = self.pos;
            self.string()?;
            let nd = self.num(4, Kind::NDims)?;
            for _ in 0..nd.min(8) {
                self.num(8, Kind::Dim)?;
            }
            self.num(4, Kind::GgmlType)?;
            self.num(8, Kind::Offset)?;
            self.scan.tensors.push((start, self.pos));
        }
        self.scan.header_end = Some(self.pos);
        Some(())
    }
}

fn scan(b: &[u8]) -> Scan {
    Scanner {
        b,
        pos: 0,
        scan: Scan::default(),
    }
    .run()
}

fn put(b: &mut [u8], f: Field, v: u64) {
    b[f.at..f.at + f.width].copy_from_slice(&v.to_le_bytes()[..f.width]);
}

fn get(b: &[u8], f: Field) -> u64 {
    let mut a = [0u8; 8];
    a[..f.width].copy_from_slice(&b[f.at..f.at + f.width]);
    u64::from_le_bytes(a)
}

/// Keys the translation and the tokenizer read (plus the container's own).
const KEYS: &[&str] = &[
    "general.alignment",
    "general.architecture",
    "general.name",
    "llama.block_count",
    "llama.context_length",
    "llama.embedding_length",
    "llama.feed_forward_length",
    "llama.attention.head_count",
    "llama.attention.head_count_kv",
    "llama.attention.key_length",
    "llama.attention.value_length",
    "llama.attention.layer_norm_rms_epsilon",
    "llama.rope.freq_base",
    "llama.rope.dimension_count",
    "llama.rope.scaling.type",
    "llama.rope.scaling.factor",
    "llama.vocab_size",
    "qwen2.block_count",
    "qwen3.attention.head_count",
    "mistral.attention.sliding_window",
    "tokenizer.ggml.model",
    "tokenizer.ggml.pre",
    "tokenizer.ggml.tokens",
    "tokenizer.ggml.scores",
    "tokenizer.ggml.token_type",
    "tokenizer.ggml.merges",
    "tokenizer.ggml.bos_token_id",
    "tokenizer.ggml.eos_token_id",
    "tokenizer.ggml.unknown_token_id",
    "tokenizer.ggml.padding_token_id",
    "tokenizer.ggml.add_bos_token",
    "tokenizer.ggml.add_eos_token",
    "tokenizer.ggml.add_space_prefix",
    "tokenizer.chat_template",
    "split.count",
];

const STRINGS: &[&str] = &[
    "",
    "llama",
    "qwen2",
    "qwen3",
    "mistral",
    "gemma3",
    "gpt2",
    "llama-bpe",
    "smollm",
    "qwen2",
    "default",
    "yarn",
    "linear",
    "<unk>",
    "<s>",
    "</s>",
    "a b",
    "Ġ Ġ",
    "{% for m in messages %}{{ m.content }}{% endfor %}",
    "{{ raise_exception('x') }}",
    "\u{0}",
    "\u{fffd}",
    "é",
];

fn encode_value(rng: &mut Rng, ty: u32, out: &mut Vec<u8>, depth: u32) {
    match ty {
        0 | 1 | 7 => out.push(rng.next() as u8),
        2 | 3 => out.extend_from_slice(&(rng.next() as u16).to_le_bytes()),
        4 | 5 => {
            let v = if rng.one_in(2) {
                *rng.pick(INTERESTING_U64) as u32
            } else {
                rng.below(5000) as u32
            };
            out.extend_from_slice(&v.to_le_bytes());
        }
        6 => {
            let v = *rng.pick(&[0.0f32, -1.0, 1e-6, 1e30, f32::NAN, f32::INFINITY, 10000.0]);
            out.extend_from_slice(&v.to_le_bytes());
        }
        10 | 11 => out.extend_from_slice(&rng.pick(INTERESTING_U64).to_le_bytes()),
        12 => {
            let v = *rng.pick(&[0.0f64, -1.0, 1e300, f64::NAN, 0.5]);
            out.extend_from_slice(&v.to_le_bytes());
        }
        8 => {
            let s = rng.pick(STRINGS).as_bytes();
            out.extend_from_slice(&(s.len() as u64).to_le_bytes());
            out.extend_from_slice(s);
        }
        _ => {
            // An array (of arrays, sometimes).
            let elem = if depth < 3 && rng.one_in(4) {
                9
            } else {
                *rng.pick(&[0u32, 4, 5, 6, 8, 8, 8, 10, 12, 7])
            };
            let max = if depth == 0 && rng.one_in(8) {
                3000
            } else {
                12
            };
            let n = rng.below(max);
            out.extend_from_slice(&elem.to_le_bytes());
            out.extend_from_slice(&(n as u64).to_le_bytes());
            for _ in 0..n {
                encode_value(rng, elem, out, depth + 1);
            }
        }
    }
}

fn bump_count(b: &mut [u8], s: &Scan, kind: Kind, delta: i64) {
    if let Some(f) = s.fields.iter().find(|f| f.kind == kind).copied() {
        let v = get(b, f);
        put(b, f, v.wrapping_add(delta as u64));
    }
}

pub fn mutate(rng: &mut Rng, data: &mut Vec<u8>, others: &[Arc<Vec<u8>>]) {
    let s = scan(data);
    if s.fields.is_empty() || rng.one_in(8) {
        mutate_bytes(rng, data, others);
        return;
    }
    match rng.below(10) {
        0..=3 => {
            let f = *rng.pick(&s.fields);
            let cur = get(data, f);
            let v = match f.kind {
                Kind::Version => *rng.pick(&[1u64, 2, 3, 4, 0x0300_0000]),
                Kind::ValueType | Kind::ElemType => rng.below(16) as u64,
                Kind::GgmlType => *rng.pick(&[0u64, 1, 2, 3, 8, 12, 13, 14, 4, 5, 30, 39, 40, 999]),
                Kind::NDims => rng.below(7) as u64,
                Kind::Dim => match rng.below(3) {
                    0 => *rng.pick(INTERESTING_U64),
                    1 => cur.wrapping_mul(2),
                    _ => cur / 2,
                },
                Kind::Offset => match rng.below(5) {
                    0 => *rng.pick(INTERESTING_U64),
                    1 => cur.wrapping_add(*rng.pick(&[1u64, 16, 32, 64])),
                    2 => cur.wrapping_sub(*rng.pick(&[1u64, 16, 32, 64])),
                    3 => data.len() as u64,
                    _ => {
                        // Another tensor's offset: the two overlap.
                        let offs: Vec<_> =
                            s.fields.iter().filter(|f| f.kind == Kind::Offset).collect();
                        get(data, **rng.pick(&offs))
                    }
                },
                _ => match rng.below(4) {
                    0 => cur.wrapping_add(1),
                    1 => cur.wrapping_sub(1),
                    2 => (data.len() - f.at) as u64,
                    _ => *rng.pick(INTERESTING_U64),
                },
            };
            put(data, f, v);
        }
        4 if !s.kvs.is_empty() => {
            let (a, b) = *rng.pick(&s.kvs);
            data.drain(a..b);
            if !rng.one_in(4) {
                bump_count(data, &s, Kind::KvCount, -1);
            }
        }
        5 if !s.kvs.is_empty() => {
            // A duplicate key (the reader refuses), or one moved ahead of another.
            let (a, b) = *rng.pick(&s.kvs);
            let entry = data[a..b].to_vec();
            let at = s.kv_start;
            data.splice(at..at, entry);
            bump_count(data, &s, Kind::KvCount, 1);
        }
        6 if !s.tensors.is_empty() => {
            let (a, b) = *rng.pick(&s.tensors);
            if rng.one_in(2) {
                data.drain(a..b);
                bump_count(data, &s, Kind::TensorCount, -1);
            } else {
                let entry = data[a..b].to_vec();
                data.splice(b..b, entry);
                bump_count(data, &s, Kind::TensorCount, 1);
            }
        }
        7 | 8 => {
            // A new metadata entry of any type under a key the translation reads.
            let key = rng.pick(KEYS).as_bytes();
            let ty = if key == b"general.alignment" {
                *rng.pick(&[4u32, 10, 6, 8])
            } else {
                rng.below(13) as u32
            };
            let mut e = Vec::new();
            e.extend_from_slice(&(key.len() as u64).to_le_bytes());
            e.extend_from_slice(key);
            e.extend_from_slice(&ty.to_le_bytes());
            encode_value(rng, ty, &mut e, 0);
            // Replace an existing entry with the same key, or add one.
            let existing = s
                .kvs
                .iter()
                .find(|&&(a, _)| data.get(a + 8..a + 8 + key.len()) == Some(key));
            match existing {
                Some(&(a, b)) => {
                    data.splice(a..b, e);
                }
                None => {
                    let at = s.kv_start;
                    data.splice(at..at, e);
                    bump_count(data, &s, Kind::KvCount, 1);
                }
            }
        }
        _ => {
            // Truncate in or just after the header, or grow/shrink the data section.
            let end = s.header_end.unwrap_or(data.len());
            match rng.below(3) {
                0 => data.truncate(rng.below(data.len() + 1)),
                1 => data.truncate((end + rng.below(64)).min(data.len())),
                _ => {
                    let n = rng.below(4096);
                    data.extend(std::iter::repeat_n(0u8, n));
                }
            }
        }
    }
    data.truncate(super::engine::MAX_INPUT);
}

/// A GGUF with `file`'s metadata, arrays cut to `max_array` elements, and no tensors: a small
/// seed that keeps a real model's keys, types and chat template.
pub fn metadata_seed(file: &minfer::internals::gguf::GgufFile, max_array: usize) -> Vec<u8> {
    use minfer::internals::gguf::GgufValue as V;
    fn write(v: &V, out: &mut Vec<u8>, max_array: usize) {
        match v {
            V::U8(x) => out.push(*x),
            V::I8(x) => out.push(*x as u8),
            V::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
            V::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
            V::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
            V::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
            V::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
            V::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
            V::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
            V::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
            V::Bool(x) => out.push(*x as u8),
            V::String(s) => {
                out.extend_from_slice(&(s.len() as u64).to_le_bytes());
                out.extend_from_slice(s.as_bytes());
            }
            V::Array(a) => {
                let a = &a[..a.len().min(max_array)];
                let elem = a.first().map_or(4, type_id);
                out.extend_from_slice(&elem.to_le_bytes());
                out.extend_from_slice(&(a.len() as u64).to_le_bytes());
                for x in a {
                    write(x, out, max_array);
                }
            }
        }
    }
    fn type_id(v: &V) -> u32 {
        match v {
            V::U8(_) => 0,
            V::I8(_) => 1,
            V::U16(_) => 2,
            V::I16(_) => 3,
            V::U32(_) => 4,
            V::I32(_) => 5,
            V::F32(_) => 6,
            V::Bool(_) => 7,
            V::String(_) => 8,
            V::Array(_) => 9,
            V::U64(_) => 10,
            V::I64(_) => 11,
            V::F64(_) => 12,
        }
    }
    let mut out = b"GGUF".to_vec();
    out.extend_from_slice(&3u32.to_le_bytes());
    out.extend_from_slice(&0u64.to_le_bytes());
    out.extend_from_slice(&(file.metadata.len() as u64).to_le_bytes());
    for (k, v) in &file.metadata {
        out.extend_from_slice(&(k.len() as u64).to_le_bytes());
        out.extend_from_slice(k.as_bytes());
        out.extend_from_slice(&type_id(v).to_le_bytes());
        write(v, &mut out, max_array);
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn scanner_sees_the_fixture() {
        let b = std::fs::read(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/gguf/tiny-llama.gguf"),
        )
        .unwrap();
        let s = super::scan(&b);
        assert!(s.header_end.is_some(), "{s:?}");
        assert!(!s.tensors.is_empty() && !s.kvs.is_empty());
    }
}
