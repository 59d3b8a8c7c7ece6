//! Fuzz targets for every parser minfer runs on files from strangers: GGUF, safetensors (file
//! and sharded index), config.json, tokenizer.json, encode/decode, chat templates, and PTX
//! (crates/ptx-sim, which parses the kernels minfer ships and any a user points it at).
//!
//! `cargo test --release --test fuzz` runs each target's regression cases and corpus, then a
//! short deterministic campaign (`FUZZ_SECONDS`, default 3 s per target). `scripts/fuzz.sh
//! TARGET SECONDS` runs a long one. See engine.rs for what counts as a failure (panic, hang,
//! oversized allocation, violated property) and where failing inputs are kept.

mod bounds;
mod engine;
mod gguf_mut;
mod json_mut;
#[cfg(feature = "server")]
mod server_api;

#[cfg(feature = "server")]
#[test]
fn server_api() {
    server_api::campaign_server_api();
}

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use engine::{campaign, mutate_bytes, scratch, shape, Guard, Outcome, Rng, Target};
use minfer::internals::{gguf, open_checkpoint, safetensors};
use minfer::{ChatMessage, Error, ModelConfig, Tokenizer};
use serde_json::{json, Value};

#[global_allocator]
static GUARD: Guard = Guard;

fn manifest() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn fixture(rel: &str) -> PathBuf {
    manifest().join("tests/fixtures").join(rel)
}

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The outcome's shape, or a violation when an error does not say what is wrong.
fn outcome<T>(step: &str, r: &minfer::Result<T>) -> String {
    match r {
        Ok(_) => format!("{step}: ok"),
        Err(e) => format!("{step}: {}", shape(&e.to_string())),
    }
}

fn tokenizer_dirs() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(fixture("tokenizers"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("tokenizer.json").is_file())
        .collect();
    v.sort();
    v
}

// ---- GGUF --------------------------------------------------------------------------------------

/// Tensors lie inside the data section, after the header, and do not overlap.
fn check_extents(extents: &mut [(u64, u64, String)], lo: u64, hi: u64) -> Result<(), String> {
    extents.sort();
    for (a, b, name) in extents.iter() {
        if *a < lo || b > &hi || a > b {
            return Err(format!("tensor {name:?} at {a}..{b} is outside {lo}..{hi}"));
        }
    }
    for w in extents.windows(2) {
        if w[1].0 < w[0].1 {
            return Err(format!(
                "tensors {:?} ({}..{}) and {:?} ({}..{}) overlap",
                w[0].2, w[0].0, w[0].1, w[1].2, w[1].0, w[1].1
            ));
        }
    }
    Ok(())
}

fn run_gguf(bytes: &[u8]) -> Outcome {
    let path = scratch("gguf").join("model.gguf");
    std::fs::write(&path, bytes).map_err(|e| e.to_string())?;
    let mut shapes = Vec::new();
    let header = gguf::read_header(&path);
    shapes.push(outcome("header", &header));
    if let Ok(h) = &header {
        let mut ext: Vec<_> = h
            .tensors
            .iter()
            .map(|t| (t.offset, t.offset + t.n_bytes, t.name.clone()))
            .collect();
        check_extents(&mut ext, h.data_offset, h.file_len)?;
        for t in &h.tensors {
            let _ = h.tensor_bytes(t);
        }
    }
    let tok = minfer::load_tokenizer(&path);
    shapes.push(outcome("tokenizer", &tok));
    if let Ok(t) = &tok {
        let ids = t.encode("Hello, wörld! 12345", true).unwrap_or_default();
        let _ = t.decode(&ids, false);
        let _ = t.apply_chat_template(&[ChatMessage::new("user", "hi")], true);
    }
    if header.is_ok() {
        shapes.push(outcome("load", &gguf::load(&path, true).map(|_| ())));
        shapes.push(outcome("inspect", &minfer::inspect::inspect(&path)));
    }
    Ok(shapes.join(" | "))
}

fn gguf_seeds() -> Vec<Vec<u8>> {
    vec![read(&fixture("gguf/tiny-llama.gguf"))]
}

#[test]
fn gguf() {
    campaign(Target {
        name: "gguf",
        seeds: gguf_seeds(),
        mutate: gguf_mut::mutate,
        run: Arc::new(run_gguf),
    });
}

// ---- safetensors -------------------------------------------------------------------------------

const ST_DICT: &[&str] = &[
    "dtype",
    "shape",
    "data_offsets",
    "__metadata__",
    "F32",
    "F16",
    "BF16",
    "I64",
    "F4",
    "F6_E2M3",
    "BOOL",
    "F8_E4M3",
    "Q4_0",
    "model.embed_tokens.weight",
    "lm_head.weight",
];

/// Mutate the JSON header of a safetensors file and write it back with its length (or a lying
/// one), or the data region, or the bytes.
fn mutate_safetensors(rng: &mut Rng, data: &mut Vec<u8>, others: &[Arc<Vec<u8>>]) {
    let n = data
        .get(..8)
        .map(|b| u64::from_le_bytes(b.try_into().unwrap()) as usize);
    let Some(n) = n.filter(|&n| n <= data.len() - 8) else {
        mutate_bytes(rng, data, others);
        return;
    };
    let (header, body) = (data[8..8 + n].to_vec(), data[8 + n..].to_vec());
    match rng.below(8) {
        0 => mutate_bytes(rng, data, others),
        1 => {
            let mut body = body;
            match rng.below(3) {
                0 => body.truncate(rng.below(body.len() + 1)),
                1 => body.extend(std::iter::repeat_n(0u8, 1 + rng.below(64))),
                _ => mutate_bytes(rng, &mut body, &[]),
            }
            data.truncate(8 + n);
            data.extend(body);
        }
        _ => {
            let mut h = header;
            json_mut::mutate_text(rng, &mut h, others, ST_DICT);
            // Headers are padded to 8 bytes by writers; sometimes keep it, sometimes not.
            if rng.one_in(2) {
                while h.len() % 8 != 0 {
                    h.push(b' ');
                }
            }
            let len = if rng.one_in(10) {
                *rng.pick(engine::INTERESTING_U64)
            } else {
                h.len() as u64
            };
            let mut out = len.to_le_bytes().to_vec();
            out.extend(h);
            out.extend(body);
            *data = out;
        }
    }
    data.truncate(engine::MAX_INPUT);
}

fn run_safetensors(bytes: &[u8]) -> Outcome {
    let path = scratch("safetensors").join("model.safetensors");
    std::fs::write(&path, bytes).map_err(|e| e.to_string())?;
    let header = safetensors::read_header(&path);
    let mut shapes = vec![outcome("header", &header)];
    if let Ok(h) = &header {
        let mut ext: Vec<_> = h
            .tensors
            .iter()
            .map(|t| (t.begin as u64, t.end as u64, t.name.clone()))
            .collect();
        let data_len = h.file_len - h.data_start as u64;
        check_extents(&mut ext, 0, data_len)?;
        let w = safetensors::load(&path);
        shapes.push(outcome("load", &w));
        if let Ok(w) = w {
            for t in w.tensors.values() {
                let _ = t.to_f32_vec();
            }
        }
    }
    Ok(shapes.join(" | "))
}

fn safetensors_seeds() -> Vec<Vec<u8>> {
    let mut v: Vec<Vec<u8>> = ["llama_bf16", "llama_f16", "qwen2_bias", "qwen3_norms"]
        .iter()
        .map(|m| read(&fixture(&format!("models/{m}/model.safetensors"))))
        .collect();
    v.push(read(&fixture(
        "models/llama_sharded/model-00002-of-00003.safetensors",
    )));
    v
}

#[test]
fn safetensors() {
    campaign(Target {
        name: "safetensors",
        seeds: safetensors_seeds(),
        mutate: mutate_safetensors,
        run: Arc::new(run_safetensors),
    });
}

// ---- the sharded index -------------------------------------------------------------------------

const INDEX_DICT: &[&str] = &[
    "weight_map",
    "metadata",
    "total_size",
    "model-00001-of-00003.safetensors",
    "model-00002-of-00003.safetensors",
    "model-00003-of-00003.safetensors",
    "../model-00001-of-00003.safetensors",
    "/etc/passwd",
    ".hidden",
    "missing.safetensors",
    "model.embed_tokens.weight",
    "model.norm.weight",
];

fn sharded_dir() -> PathBuf {
    let dir = scratch("safetensors_index");
    let src = fixture("models/llama_sharded");
    for e in std::fs::read_dir(&src).unwrap().flatten() {
        let name = e.file_name();
        let to = dir.join(&name);
        if name != "model.safetensors.index.json" && !to.exists() {
            std::fs::copy(e.path(), to).unwrap();
        }
    }
    dir
}

fn run_index(bytes: &[u8]) -> Outcome {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    let dir = DIR.get_or_init(sharded_dir);
    std::fs::write(dir.join("model.safetensors.index.json"), bytes).map_err(|e| e.to_string())?;
    let files = safetensors::checkpoint_files(dir);
    if let Ok(files) = &files {
        for f in files {
            if f.parent() != Some(dir.as_path()) {
                return Err(format!(
                    "shard {} is outside the model directory",
                    f.display()
                ));
            }
        }
    }
    let ck = open_checkpoint(dir, false);
    Ok(format!(
        "{} | {}",
        outcome("files", &files),
        outcome("open", &ck.map(|_| ()))
    ))
}

#[test]
fn safetensors_index() {
    campaign(Target {
        name: "safetensors_index",
        seeds: vec![read(&fixture(
            "models/llama_sharded/model.safetensors.index.json",
        ))],
        mutate: |rng, d, o| json_mut::mutate_text(rng, d, o, INDEX_DICT),
        run: Arc::new(run_index),
    });
}

// ---- config.json -------------------------------------------------------------------------------

const CONFIG_DICT: &[&str] = &[
    "architectures",
    "LlamaForCausalLM",
    "MistralForCausalLM",
    "Qwen2ForCausalLM",
    "Qwen3ForCausalLM",
    "Gemma3ForCausalLM",
    "Gemma3ForConditionalGeneration",
    "text_config",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "vocab_size",
    "rms_norm_eps",
    "rope_theta",
    "rope_scaling",
    "rope_parameters",
    "rope_type",
    "type",
    "llama3",
    "linear",
    "default",
    "yarn",
    "factor",
    "low_freq_factor",
    "high_freq_factor",
    "original_max_position_embeddings",
    "max_position_embeddings",
    "tie_word_embeddings",
    "attention_bias",
    "sliding_window",
    "use_sliding_window",
    "max_window_layers",
    "layer_types",
    "sliding_attention",
    "full_attention",
    "partial_rotary_factor",
    "bos_token_id",
    "eos_token_id",
    "query_pre_attn_scalar",
    "rope_local_base_freq",
    "sliding_window_pattern",
    "final_logit_softcapping",
    "attn_logit_softcapping",
];

fn config_dir() -> PathBuf {
    let dir = scratch("config");
    let w = dir.join("model.safetensors");
    if !w.exists() {
        std::fs::copy(fixture("models/llama_gqa_untied/model.safetensors"), w).unwrap();
    }
    dir
}

fn run_config(bytes: &[u8]) -> Outcome {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    let dir = DIR.get_or_init(config_dir);
    let path = dir.join("config.json");
    std::fs::write(&path, bytes).map_err(|e| e.to_string())?;
    let cfg = ModelConfig::from_file(&path);
    let mut shapes = vec![outcome("config", &cfg)];
    if let Ok(c) = &cfg {
        let shapes_of = c.tensor_shapes();
        let _ = c.rope_inv_freq();
        let _ = (c.q_dim(), c.kv_dim(), shapes_of.len());
        shapes.push(outcome("inspect", &minfer::inspect::inspect(dir)));
        let m = minfer::Model::load(dir, &minfer::LoadOptions::default());
        shapes.push(outcome("load", &m.map(|_| ())));
    }
    Ok(shapes.join(" | "))
}

fn config_seeds() -> Vec<Vec<u8>> {
    let mut v = Vec::new();
    let mut dirs: Vec<_> = std::fs::read_dir(fixture("models"))
        .unwrap()
        .flatten()
        .map(|e| e.path().join("config.json"))
        .filter(|p| p.is_file())
        .collect();
    dirs.sort();
    for p in dirs {
        v.push(read(&p));
    }
    v
}

#[test]
fn config() {
    campaign(Target {
        name: "config",
        seeds: config_seeds(),
        mutate: |rng, d, o| json_mut::mutate_text(rng, d, o, CONFIG_DICT),
        run: Arc::new(run_config),
    });
}

// ---- tokenizer.json ----------------------------------------------------------------------------

const TOKENIZER_DICT: &[&str] = &[
    "model",
    "type",
    "BPE",
    "WordPiece",
    "Unigram",
    "vocab",
    "merges",
    "unk_token",
    "byte_fallback",
    "fuse_unk",
    "ignore_merges",
    "continuing_subword_prefix",
    "added_tokens",
    "id",
    "content",
    "special",
    "normalized",
    "lstrip",
    "rstrip",
    "single_word",
    "normalizer",
    "pre_tokenizer",
    "decoder",
    "post_processor",
    "Sequence",
    "normalizers",
    "pretokenizers",
    "decoders",
    "NFC",
    "NFKC",
    "Prepend",
    "Replace",
    "Strip",
    "ByteLevel",
    "Metaspace",
    "Split",
    "Digits",
    "ByteFallback",
    "Fuse",
    "TemplateProcessing",
    "single",
    "pair",
    "special_tokens",
    "pattern",
    "Regex",
    "String",
    "behavior",
    "Isolated",
    "invert",
    "replacement",
    "prepend_scheme",
    "add_prefix_space",
    "trim_offsets",
    "use_regex",
    "individual_digits",
    "▁",
    "Ġ",
    "<s>",
    "</s>",
    "<unk>",
    "<0x41>",
];

/// A tokenizer.json and an optional tokenizer_config.json, as one JSON document:
/// `{"tokenizer": ..., "config": ...}`.
fn run_tokenizer(bytes: &[u8]) -> Outcome {
    let v: Value = match serde_json::from_slice(bytes) {
        Ok(v) => v,
        Err(_) => return Ok("not json".into()),
    };
    let tok_json = v.get("tokenizer").cloned().unwrap_or(Value::Null);
    let t = Tokenizer::from_json(&tok_json, v.get("config"));
    let mut shapes = vec![outcome("load", &t)];
    if let Ok(t) = &t {
        for text in ["Hello world, 1234!", " \n\t日本語 é ", "<s>x</s>"] {
            let ids = t.encode(text, true);
            shapes.push(outcome("encode", &ids));
            if let Ok(ids) = ids {
                stream_equals_decode(t, &ids)?;
            }
        }
        let n = t.vocab_size() as u32;
        let ids: Vec<u32> = (0..n.min(300)).collect();
        stream_equals_decode(t, &ids)?;
        shapes.push(outcome(
            "chat",
            &t.apply_chat_template(&[ChatMessage::new("user", "hi")], true),
        ));
    }
    Ok(shapes.join(" | "))
}

/// A real vocabulary cut to its first `keep` ids, with the merges that stay valid and the added
/// tokens renumbered after it: the same structure, small enough to build in a millisecond.
fn shrink_tokenizer(mut tok: Value, keep: u64) -> Value {
    let Some(vocab) = tok["model"]["vocab"].as_object() else {
        return tok;
    };
    if vocab.len() as u64 <= keep {
        return tok;
    }
    let vocab: serde_json::Map<String, Value> = vocab
        .iter()
        .filter(|(_, id)| id.as_u64().is_some_and(|i| i < keep))
        .map(|(k, id)| (k.clone(), id.clone()))
        .collect();
    let pair = |m: &Value| -> Option<(String, String)> {
        match m {
            Value::String(s) => s.split_once(' ').map(|(a, b)| (a.into(), b.into())),
            Value::Array(a) => Some((a.first()?.as_str()?.into(), a.get(1)?.as_str()?.into())),
            _ => None,
        }
    };
    let merges: Vec<Value> = tok["model"]["merges"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| {
            pair(m).is_some_and(|(a, b)| {
                vocab.contains_key(&a) && vocab.contains_key(&b) && vocab.contains_key(&(a + &b))
            })
        })
        .cloned()
        .collect();
    tok["model"]["vocab"] = Value::Object(vocab);
    tok["model"]["merges"] = Value::Array(merges);
    if let Some(added) = tok["added_tokens"].as_array_mut() {
        for (i, t) in added.iter_mut().enumerate() {
            if t["id"].as_u64().is_some_and(|id| id >= keep) {
                t["id"] = json!(keep + i as u64);
            }
        }
    }
    tok
}

fn small_tokenizer_seeds() -> Vec<Vec<u8>> {
    let mut v = Vec::new();
    for dir in tokenizer_dirs() {
        let tok: Value = serde_json::from_slice(&read(&dir.join("tokenizer.json"))).unwrap();
        let tok = shrink_tokenizer(tok, 2000);
        let cfg: Value = serde_json::from_slice(&read(&dir.join("tokenizer_config.json"))).unwrap();
        v.push(serde_json::to_vec(&json!({"tokenizer": tok, "config": cfg})).unwrap());
    }
    v
}

fn mutate_tokenizer(rng: &mut Rng, data: &mut Vec<u8>, others: &[Arc<Vec<u8>>]) {
    json_mut::mutate_text(rng, data, others, TOKENIZER_DICT);
}

#[test]
fn tokenizer_json() {
    campaign(Target {
        name: "tokenizer_json",
        seeds: small_tokenizer_seeds(),
        mutate: mutate_tokenizer,
        run: Arc::new(run_tokenizer),
    });
}

// ---- encode / decode ---------------------------------------------------------------------------

/// Streaming decode equals one-shot decode for any ids (a promise of the API).
fn stream_equals_decode(t: &Tokenizer, ids: &[u32]) -> Result<(), String> {
    for skip in [false, true] {
        let full = match t.decode(ids, skip) {
            Ok(s) => s,
            Err(Error::InvalidArgument(_)) => continue,
            Err(e) => return Err(format!("decode failed with an unexpected error: {e}")),
        };
        let mut st = t.decode_stream(skip);
        let mut s = String::new();
        for &id in ids {
            if let Some(p) = st.step(id).map_err(|e| e.to_string())? {
                s.push_str(&p);
            }
        }
        s.extend(st.flush());
        if s != full {
            return Err(format!("stream {s:?} != decode {full:?} for ids {ids:?}"));
        }
    }
    Ok(())
}

struct Loaded {
    name: String,
    tok: Tokenizer,
}

fn tokenizers() -> &'static [Loaded] {
    static T: OnceLock<Vec<Loaded>> = OnceLock::new();
    T.get_or_init(|| {
        tokenizer_dirs()
            .into_iter()
            .map(|d| Loaded {
                name: d.file_name().unwrap().to_string_lossy().into_owned(),
                tok: minfer::load_tokenizer(&d).unwrap(),
            })
            .collect()
    })
}

/// Which texts a tokenizer promises to give back unchanged. Byte-level vocabularies with all 256
/// byte tokens round-trip anything; SmolLM2 and the SentencePiece-style ones lack byte tokens for
/// some C0 controls and lead bytes F1.. (Hugging Face drops those characters too); Qwen2's NFC
/// normalizer changes text, so there re-encoding the output must be stable instead.
fn promises_round_trip(name: &str, text: &str) -> Option<bool> {
    let plain = text
        .chars()
        .all(|c| (c >= ' ' || "\t\n\r".contains(c)) && (c as u32) < 0x4_0000);
    match name {
        "llama3ish" | "qwen35ish" | "tekkenish" | "gpt4oish" => Some(true),
        "smollm2" | "llama2ish" if plain => Some(true),
        "qwen2" if plain => Some(false),
        _ => None,
    }
}

/// First byte: the tokenizer; second: flags (add special tokens, decode ids instead); the rest:
/// text (lossy UTF-8), or ids (little-endian u16/u32) when decoding.
fn run_encode(bytes: &[u8]) -> Outcome {
    let toks = tokenizers();
    let Some((&sel, rest)) = bytes.split_first() else {
        return Ok("empty".into());
    };
    let l = &toks[sel as usize % toks.len()];
    let (flags, rest) = rest.split_first().unwrap_or((&0, &[]));
    if flags & 4 != 0 {
        // Arbitrary ids, a quarter of them low (byte tokens).
        let n = l.tok.vocab_size() as u32 + 4;
        let ids: Vec<u32> = rest
            .chunks(2)
            .map(|c| u16::from_le_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32 % n)
            .collect();
        stream_equals_decode(&l.tok, &ids)?;
        return Ok("decode".into());
    }
    let text = String::from_utf8_lossy(rest);
    let ids = l
        .tok
        .encode(&text, flags & 1 != 0)
        .map_err(|e| format!("encode failed: {e}"))?;
    stream_equals_decode(&l.tok, &ids)?;
    // SentencePiece-style normalizers prepend "▁" to every stretch of text between special
    // tokens, so text holding a special token's content comes back with a space after it (as
    // with Hugging Face); the round trip is promised for text without special tokens.
    // Their decoder also turns a literal "▁" into a space, as Hugging Face's does.
    let has_special = ids.iter().any(|&id| l.tok.is_special(id));
    let sp_exempt = l.name == "llama2ish" && (has_special || text.contains('▁'));
    if flags & 1 == 0 && !sp_exempt {
        if let Some(exact) = promises_round_trip(&l.name, &text) {
            let back = l.tok.decode(&ids, false).map_err(|e| e.to_string())?;
            if exact && back != text {
                return Err(format!("{}: round trip of {text:?} gave {back:?}", l.name));
            }
            if !exact {
                let again = l
                    .tok
                    .decode(
                        &l.tok.encode(&back, false).map_err(|e| e.to_string())?,
                        false,
                    )
                    .map_err(|e| e.to_string())?;
                if again != back {
                    return Err(format!(
                        "{}: {text:?} is not stable: {back:?} then {again:?}",
                        l.name
                    ));
                }
            }
        }
    }
    // Novelty: which tokenizer, and a coarse length class.
    Ok(format!(
        "{} {} {}",
        l.name,
        flags & 5,
        ids.len().min(64) / 8
    ))
}

const TEXT_DICT: &[&str] = &[
    " ",
    "  ",
    "\n",
    "\r\n",
    "\t",
    "'s",
    "'LL",
    "123",
    "4567890",
    "é",
    "e\u{301}",
    "日本語",
    "🦀",
    "\u{200d}",
    "\u{fffd}",
    "\u{0}",
    "\u{7f}",
    "<s>",
    "</s>",
    "<unk>",
    "<|im_start|>",
    "<|im_end|>",
    "<|begin_of_text|>",
    "<|eot_id|>",
    "[INST]",
    "▁",
    "Ġ",
    "<0x41>",
    "ﬁ",
    "Ⅻ",
    "\u{10ffff}",
];

fn mutate_text(rng: &mut Rng, data: &mut Vec<u8>, others: &[Arc<Vec<u8>>]) {
    if data.len() < 2 {
        data.resize(2, 0);
    }
    match rng.below(6) {
        0 => data[0] = rng.next() as u8,
        1 => data[1] = rng.next() as u8,
        2 | 3 => {
            let s = rng.pick(TEXT_DICT).as_bytes();
            let at = 2 + rng.below(data.len() - 1);
            let times = if rng.one_in(8) {
                1 + rng.below(2000)
            } else {
                1
            };
            let ins: Vec<u8> = s.iter().copied().cycle().take(s.len() * times).collect();
            data.splice(at..at, ins);
        }
        4 => {
            // A random scalar value.
            let c = char::from_u32(rng.below(0x11_0000) as u32).unwrap_or('x');
            let at = 2 + rng.below(data.len() - 1);
            let mut b = [0u8; 4];
            data.splice(at..at, c.encode_utf8(&mut b).bytes());
        }
        _ => {
            let (head, tail) = data.split_at(2);
            let mut t = tail.to_vec();
            mutate_bytes(rng, &mut t, others);
            *data = [head, &t].concat();
        }
    }
    data.truncate(64 << 10);
}

fn text_seeds() -> Vec<Vec<u8>> {
    let corpus = read(&fixture("tokenizers/corpus.txt"));
    let text = String::from_utf8_lossy(&corpus);
    let lines: Vec<&str> = text.lines().filter(|l| !l.is_empty()).collect();
    let n = tokenizers().len();
    (0..n * 2)
        .map(|i| {
            let mut v = vec![i as u8, (i / n) as u8 * 4];
            v.extend_from_slice(lines[(i * 97) % lines.len()].as_bytes());
            v
        })
        .collect()
}

#[test]
fn encode_decode() {
    campaign(Target {
        name: "encode_decode",
        seeds: text_seeds(),
        mutate: mutate_text,
        run: Arc::new(run_encode),
    });
}

// ---- chat templates ----------------------------------------------------------------------------

/// A tiny tokenizer to hang templates on (rendering does not depend on the vocabulary).
fn tiny_tokenizer() -> Value {
    json!({
        "model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": ["a b"]},
        "added_tokens": [{"id": 3, "content": "<s>", "special": true}],
    })
}

const JINJA_DICT: &[&str] = &[
    "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}",
    "{% for i in range(1000000000) %}x{% endfor %}",
    "{% for i in range(100000) %}{% for j in range(100000) %}{{ i }}{% endfor %}{% endfor %}",
    "{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}",
    "{{ 'x' * 99999999 }}",
    "{% set s = 'ab' * 40000000 %}{{ s ~ s ~ s }}",
    "{{ messages | tojson(indent=999999999) }}",
    "{{ messages | tojson(indent=1000) }}",
    "{{ raise_exception('no') }}",
    "{{ strftime_now('%Y-%m-%d %Q') }}",
    "{{ bos_token }}",
    "{% if add_generation_prompt %}<|assistant|>{% endif %}",
    "{{ messages[0]['content'] | trim }}",
    "{{ m.content.split(' ') | join('|') }}",
    "{{ messages[99] }}",
    "{{ messages | length }}",
    "{% set ns = namespace(x=0) %}{% for m in messages %}{% set ns.x = ns.x + 1 %}{% endfor %}",
    "{{ '%s' % messages }}",
    "{{ (messages * 1000000) | length }}",
    "{{ range(99999999) | list | length }}",
    "{{ 'a'.ljust(999999999) }}",
    "{{ 'a' | center(999999999) }}",
    "{{ 'a' | indent(999999999) }}",
    "{% for x in messages recursive %}{{ loop(messages) }}{% endfor %}",
    "{{ ",
    "{% endfor %}",
    "{%- ",
    " -%}",
    "}}",
    "{#",
];

/// `{"template": "...", "messages": [...], "gen": bool}`.
fn run_chat(bytes: &[u8]) -> Outcome {
    static TOK: OnceLock<Value> = OnceLock::new();
    let v: Value = match serde_json::from_slice(bytes) {
        Ok(v) => v,
        Err(_) => return Ok("not json".into()),
    };
    let mut cfg = json!({"bos_token": "<s>", "eos_token": "</s>"});
    cfg["chat_template"] = v.get("template").cloned().unwrap_or(Value::Null);
    let t = Tokenizer::from_json(TOK.get_or_init(tiny_tokenizer), Some(&cfg));
    let t = match t {
        Ok(t) => t,
        Err(e) => return Ok(format!("load: {}", shape(&e.to_string()))),
    };
    let messages: Vec<ChatMessage> = v
        .get("messages")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|m| {
                    let s = |k: &str| match m.get(k) {
                        Some(Value::String(s)) => s.clone(),
                        Some(other) => other.to_string(),
                        None => String::new(),
                    };
                    ChatMessage::new(s("role"), s("content"))
                })
                .collect()
        })
        .unwrap_or_default();
    let gen = v.get("gen").and_then(Value::as_bool).unwrap_or(true);
    let r = t.apply_chat_template(&messages, gen);
    // The library's bound, restated: 1 MiB plus twice the messages' text.
    let input: usize = messages
        .iter()
        .map(|m| m.role.len() + m.content.len())
        .sum();
    let limit = (1 << 20) + 2 * input;
    if let Ok(s) = &r {
        if s.len() > limit {
            return Err(format!("rendered {} bytes (limit {limit})", s.len()));
        }
    }
    Ok(outcome("render", &r))
}

fn mutate_chat(rng: &mut Rng, data: &mut Vec<u8>, others: &[Arc<Vec<u8>>]) {
    let Ok(mut v) = serde_json::from_slice::<Value>(data) else {
        mutate_bytes(rng, data, others);
        return;
    };
    match rng.below(4) {
        0 | 1 => {
            // Edit the template text: insert a snippet, or mutate its bytes.
            let mut t = v
                .get("template")
                .and_then(Value::as_str)
                .unwrap_or("")
                .as_bytes()
                .to_vec();
            if rng.one_in(3) {
                mutate_bytes(rng, &mut t, &[]);
            } else {
                let s = rng.pick(JINJA_DICT).as_bytes();
                let mut at = rng.below(t.len() + 1);
                while at < t.len() && (t[at] & 0xC0) == 0x80 {
                    at += 1;
                }
                t.splice(at..at, s.iter().copied());
            }
            v["template"] = json!(String::from_utf8_lossy(&t));
        }
        2 => json_mut::mutate_value(
            rng,
            v.get_mut("messages").unwrap_or(&mut Value::Null),
            &["role", "content", "user", "assistant", "system", "tool"],
        ),
        _ => {
            let msgs = v["messages"].as_array().cloned().unwrap_or_default();
            let mut m = json!({"role": *rng.pick(&["user", "assistant", "system", "x"]),
                               "content": *rng.pick(TEXT_DICT)});
            if rng.one_in(4) {
                m["content"] = json!("{{ 7*7 }}{% raw %}".repeat(1 + rng.below(100)));
            }
            let mut msgs = msgs;
            msgs.push(m);
            v["messages"] = json!(msgs);
        }
    }
    *data = serde_json::to_vec(&v).unwrap_or_default();
}

fn chat_seeds() -> Vec<Vec<u8>> {
    let messages = json!([
        {"role": "system", "content": "You are helpful."},
        {"role": "user", "content": "What is 2 + 2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "And 3 + 3?"},
    ]);
    let mut v = Vec::new();
    for dir in tokenizer_dirs() {
        let cfg: Value = serde_json::from_slice(&read(&dir.join("tokenizer_config.json"))).unwrap();
        if let Some(t) = cfg.get("chat_template") {
            v.push(serde_json::to_vec(&json!({"template": t, "messages": messages})).unwrap());
        }
    }
    v
}

#[test]
fn chat_template() {
    campaign(Target {
        name: "chat_template",
        seeds: chat_seeds(),
        mutate: mutate_chat,
        run: Arc::new(run_chat),
    });
}

// ---- seeds derived from the real model ---------------------------------------------------------

/// Writes tests/fuzz/corpus/gguf/smollm2-metadata.gguf: SmolLM2's metadata (every key and value
/// type, its chat template) with arrays cut to 600 elements and no tensors. Run by hand after
/// scripts/fetch-model.sh: `cargo test --release --test fuzz -- --ignored make_seeds`.
#[test]
#[ignore]
fn make_seeds() {
    let model = manifest().join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    let file = gguf::read_header(&model).expect("run scripts/fetch-model.sh first");
    let seed = gguf_mut::metadata_seed(&file, 600);
    let dir = manifest().join("tests/fuzz/corpus/gguf");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("smollm2-metadata.gguf"), seed).unwrap();
}

// ---- the PTX parser (crates/ptx-sim) -----------------------------------------------------------

const PTX_DICT: &[&str] = &[
    ".global .u8 g[4294967296];\n",
    ".global .align 8 .b8 g2[18446744073709551615];\n",
    ".const .f32 c[3] = {1.0, 2.0};\n",
    ".extern .global .u32 ext;\n",
    ".shared .align 16 .b8 sm[99999999999];\n",
    ".local .b8 l[1];\n",
    "    .reg .b32 %r<100000000>;\n",
    "    .reg .b64 %rd<4294967296>;\n",
    "    .reg .pred %p<0>;\n",
    "    .shared .align 4 .f32 tile[1099511627776];\n",
    "    .local .align 8 .b8 stack[4294967295];\n",
    "    bra.uni $L_nowhere;\n",
    "$L_loop:\n    bra.uni $L_loop;\n",
    "    ld.global.f32 %f0, [%rd0+18446744073709551615];\n",
    "    mov.u32 %r0, 0xffffffffffffffffff;\n",
    "    call f, (%r0);\n",
    "    @%p bra $L;\n",
    ".version 99.9\n",
    ".target sm_1000\n",
    ".address_size 128\n",
    ".entry e() {\n",
    "}\n",
    "// comment\n",
    "/* unterminated",
    "\"",
    "{",
    ";",
    "[",
    "%",
    "$",
    ".maxntid 4294967295, 4294967295, 4294967295\n",
    ".param .align 4294967296 .b8 p[4294967296]\n",
];

fn mutate_ptx(rng: &mut Rng, data: &mut Vec<u8>, others: &[Arc<Vec<u8>>]) {
    let text = String::from_utf8_lossy(data).into_owned();
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    if lines.is_empty() || rng.one_in(6) {
        mutate_bytes(rng, data, others);
        return;
    }
    let i = rng.below(lines.len());
    match rng.below(6) {
        0 => {
            lines.remove(i);
        }
        1 => {
            let l = lines[rng.below(lines.len())].clone();
            lines.insert(i, l);
        }
        2 | 3 => lines.insert(i, rng.pick(PTX_DICT).trim_end().to_string()),
        4 => {
            // Replace a number in the line with an interesting one.
            let l = &lines[i];
            let starts: Vec<usize> = l
                .char_indices()
                .filter(|&(k, c)| {
                    c.is_ascii_digit() && (k == 0 || !l.as_bytes()[k - 1].is_ascii_alphanumeric())
                })
                .map(|(k, _)| k)
                .collect();
            if !starts.is_empty() {
                let a = *rng.pick(&starts);
                let b = a + l[a..].bytes().take_while(u8::is_ascii_digit).count();
                let v = rng.pick(engine::INTERESTING_U64).to_string();
                lines[i] = format!("{}{v}{}", &l[..a], &l[b..]);
            }
        }
        _ => {
            let j = rng.below(lines.len());
            lines.swap(i, j);
        }
    }
    *data = (lines.join("\n") + "\n").into_bytes();
    data.truncate(engine::MAX_INPUT);
}

fn run_ptx(bytes: &[u8]) -> Outcome {
    let text = String::from_utf8_lossy(bytes);
    let mut dev = ptx_sim::Device::new();
    let r = dev.load_module("fuzz.ptx", &text);
    Ok(match r {
        Ok(_) => "ok".into(),
        Err(e) => shape(&e.to_string()),
    })
}

fn ptx_seeds() -> Vec<Vec<u8>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(manifest().join("kernels"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "ptx"))
        .collect();
    files.sort();
    files.iter().map(|p| read(p)).collect()
}

#[test]
fn ptx() {
    campaign(Target {
        name: "ptx",
        seeds: ptx_seeds(),
        mutate: mutate_ptx,
        run: Arc::new(run_ptx),
    });
}
