//! Hugging Face tokenizer.json / tokenizer_config.json Values from a GGUF file's
//! `tokenizer.ggml.*` metadata, so that GGUF models load through `Tokenizer::from_json` like
//! any other. The caller (the GGUF loader) reads the key/values into `GgufTokenizerMeta`.
//!
//! Supported: `tokenizer.ggml.model = "gpt2"` (byte-level BPE) with the pre-tokenizer names
//! llama.cpp writes for GPT-2, Llama 3, Qwen2 and SmolLM, and `"llama"` (SentencePiece BPE with
//! byte fallback: Llama 2, Mistral, TinyLlama), whose merges are recovered from the scores the
//! way transformers' GGUF loader does (`generate_merges`) and which is laid out like Llama 2's
//! own tokenizer.json (Prepend + Replace normalizer, Replace/ByteFallback/Fuse/Strip decoder).
//! Anything else is an error naming it. tests/fixtures/make_tokenizer_fixtures.py builds the
//! Qwen2 and SmolLM2 fixtures from real GGUF headers the same way.

use serde_json::{json, Value};

use super::pretok::{LLAMA3_PATTERN, QWEN2_PATTERN};
use super::terr;
use crate::error::Result;

/// GGUF `tokenizer.ggml.token_type` values (llama.cpp's llama_token_type).
pub const TOKEN_TYPE_UNKNOWN: i32 = 2;
pub const TOKEN_TYPE_CONTROL: i32 = 3;
pub const TOKEN_TYPE_USER_DEFINED: i32 = 4;

/// The `tokenizer.*` metadata of a GGUF file.
#[derive(Clone, Debug, Default)]
pub struct GgufTokenizerMeta {
    /// tokenizer.ggml.model ("gpt2", "llama" ...)
    pub model: String,
    /// tokenizer.ggml.pre ("llama-bpe", "qwen2", "smollm" ...)
    pub pre: Option<String>,
    /// tokenizer.ggml.tokens
    pub tokens: Vec<String>,
    /// tokenizer.ggml.token_type (same length as tokens, or empty: all normal)
    pub token_types: Vec<i32>,
    /// tokenizer.ggml.merges ("a b" strings)
    pub merges: Vec<String>,
    /// tokenizer.ggml.scores (SentencePiece models: how good each piece is)
    pub scores: Vec<f32>,
    /// tokenizer.ggml.add_space_prefix (SentencePiece models; default true)
    pub add_space_prefix: Option<bool>,
    pub bos_id: Option<u32>,
    pub eos_id: Option<u32>,
    pub unk_id: Option<u32>,
    /// tokenizer.ggml.add_bos_token / add_eos_token
    pub add_bos: Option<bool>,
    pub add_eos: Option<bool>,
    /// tokenizer.chat_template
    pub chat_template: Option<String>,
}

/// Returns (tokenizer.json, tokenizer_config.json) for `Tokenizer::from_json`.
pub fn hf_json_from_gguf(meta: &GgufTokenizerMeta) -> Result<(Value, Value)> {
    match meta.model.as_str() {
        "gpt2" => byte_level_json(meta),
        "llama" => sentencepiece_json(meta),
        other => Err(terr(format!(
            "GGUF tokenizer.ggml.model {other:?} is not supported (minfer converts \"gpt2\" and \"llama\")"
        ))),
    }
}

fn byte_level_json(meta: &GgufTokenizerMeta) -> Result<(Value, Value)> {
    let pre_name = meta.pre.as_deref().unwrap_or("default");
    let split = |re: &str| json!({"type": "Split", "pattern": {"Regex": re}, "behavior": "Isolated", "invert": false});
    let byte_level = |use_regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": use_regex});
    // (normalizer, pre-tokenizer, ignore_merges), as the models' own tokenizer.json files have.
    let (normalizer, pre, ignore_merges) = match pre_name {
        "gpt-2" | "phi-2" | "roberta-bpe" => (Value::Null, byte_level(true), false),
        "llama3" | "llama-v3" | "llama-bpe" => (
            Value::Null,
            json!({"type": "Sequence", "pretokenizers": [split(LLAMA3_PATTERN), byte_level(false)]}),
            true,
        ),
        "qwen2" | "deepseek-r1-qwen" | "megrez" => (
            json!({"type": "NFC"}),
            json!({"type": "Sequence", "pretokenizers": [split(QWEN2_PATTERN), byte_level(false)]}),
            false,
        ),
        "smollm" => (
            Value::Null,
            json!({"type": "Sequence", "pretokenizers": [
                {"type": "Digits", "individual_digits": true}, byte_level(true)]}),
            false,
        ),
        other => {
            return Err(terr(format!(
                "GGUF tokenizer.ggml.pre {other:?} is not supported (known: gpt-2, llama-bpe, qwen2, deepseek-r1-qwen, smollm)"
            )))
        }
    };
    let n = meta.tokens.len();
    if !meta.token_types.is_empty() && meta.token_types.len() != n {
        return Err(terr(format!(
            "GGUF tokenizer.ggml.token_type has {} entries for {n} tokens",
            meta.token_types.len()
        )));
    }
    let name_of = |id: Option<u32>, what: &str| -> Result<Option<String>> {
        match id {
            None => Ok(None),
            Some(i) => meta
                .tokens
                .get(i as usize)
                .cloned()
                .map(Some)
                .ok_or_else(|| {
                    terr(format!(
                        "GGUF tokenizer.ggml.{what}_token_id {i} is out of range ({n} tokens)"
                    ))
                }),
        }
    };
    let bos = name_of(meta.bos_id, "bos")?;
    let eos = name_of(meta.eos_id, "eos")?;
    // Every token goes into the model vocabulary (added ones too, so their ids are kept).
    let mut vocab = serde_json::Map::with_capacity(n);
    let mut added = Vec::new();
    for (i, t) in meta.tokens.iter().enumerate() {
        if vocab.insert(t.clone(), json!(i)).is_some() {
            return Err(terr(format!(
                "GGUF tokenizer.ggml.tokens: {t:?} appears twice"
            )));
        }
        let ty = meta.token_types.get(i).copied().unwrap_or(1);
        if ty == TOKEN_TYPE_CONTROL || ty == TOKEN_TYPE_USER_DEFINED {
            added.push(json!({"id": i, "content": t, "single_word": false, "lstrip": false, "rstrip": false,
                              "normalized": false, "special": ty == TOKEN_TYPE_CONTROL}));
        }
    }
    let mut single = Vec::new();
    let mut specials = serde_json::Map::new();
    let mut special = |name: &String, id: u32, single: &mut Vec<Value>| {
        single.push(json!({"SpecialToken": {"id": name, "type_id": 0}}));
        specials.insert(
            name.clone(),
            json!({"id": name, "ids": [id], "tokens": [name]}),
        );
    };
    if let (Some(true), Some(b), Some(id)) = (meta.add_bos, &bos, meta.bos_id) {
        special(b, id, &mut single);
    }
    single.push(json!({"Sequence": {"id": "A", "type_id": 0}}));
    if let (Some(true), Some(e), Some(id)) = (meta.add_eos, &eos, meta.eos_id) {
        special(e, id, &mut single);
    }
    let post = if single.len() > 1 {
        json!({"type": "TemplateProcessing", "single": single, "pair": [], "special_tokens": specials})
    } else {
        json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": true})
    };
    let unk = name_of(meta.unk_id, "unknown")?;
    let tokenizer = json!({
        "version": "1.0",
        "added_tokens": added,
        "normalizer": normalizer,
        "pre_tokenizer": pre,
        "post_processor": post,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "fuse_unk": false, "byte_fallback": false,
                  "ignore_merges": ignore_merges, "vocab": vocab, "merges": meta.merges},
    });
    Ok((tokenizer, config_json(bos, eos, unk, meta)))
}

/// Merges implied by a SentencePiece vocabulary: every split of a piece into two pieces that
/// are both in the vocabulary, best piece score first (ties: shorter left, then shorter right
/// part last, as transformers' `generate_merges` sorts with reverse=True; then vocabulary order).
fn merges_from_scores(tokens: &[String], scores: &[f32]) -> Vec<(String, String)> {
    let index: std::collections::HashMap<&str, usize> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.as_str(), i))
        .collect();
    // (score, left chars, right chars, left, right)
    let mut merges: Vec<(f32, usize, usize, &str, &str)> = Vec::new();
    for (t, &score) in tokens.iter().zip(scores) {
        let mut local = Vec::new();
        for (k, (at, _)) in t.char_indices().enumerate().skip(1) {
            let (l, r) = t.split_at(at);
            if let (Some(&il), Some(&ir)) = (index.get(l), index.get(r)) {
                local.push((il, ir, k, l, r));
            }
        }
        local.sort_by_key(|&(il, ir, ..)| (il, ir));
        let n = t.chars().count();
        merges.extend(
            local
                .into_iter()
                .map(|(_, _, k, l, r)| (score, k, n - k, l, r)),
        );
    }
    // Python's sorted(..., reverse=True) is stable: equal keys keep their order.
    merges.sort_by(|a, b| b.0.total_cmp(&a.0).then(b.1.cmp(&a.1)).then(b.2.cmp(&a.2)));
    merges
        .into_iter()
        .map(|(_, _, _, l, r)| (l.to_string(), r.to_string()))
        .collect()
}

fn sentencepiece_json(meta: &GgufTokenizerMeta) -> Result<(Value, Value)> {
    let n = meta.tokens.len();
    if meta.scores.len() != n && meta.merges.is_empty() {
        return Err(terr(format!(
            "GGUF SentencePiece tokenizer has {} scores for {n} tokens and no merges",
            meta.scores.len()
        )));
    }
    if !meta.token_types.is_empty() && meta.token_types.len() != n {
        return Err(terr(format!(
            "GGUF tokenizer.ggml.token_type has {} entries for {n} tokens",
            meta.token_types.len()
        )));
    }
    let name_of = |id: Option<u32>, what: &str| -> Result<Option<String>> {
        match id {
            None => Ok(None),
            Some(i) => meta
                .tokens
                .get(i as usize)
                .cloned()
                .map(Some)
                .ok_or_else(|| {
                    terr(format!(
                        "GGUF tokenizer.ggml.{what}_token_id {i} is out of range ({n} tokens)"
                    ))
                }),
        }
    };
    let (bos, eos, unk) = (
        name_of(meta.bos_id, "bos")?,
        name_of(meta.eos_id, "eos")?,
        name_of(meta.unk_id, "unknown")?,
    );
    let mut vocab = serde_json::Map::with_capacity(n);
    let mut added = Vec::new();
    for (i, t) in meta.tokens.iter().enumerate() {
        if vocab.insert(t.clone(), json!(i)).is_some() {
            return Err(terr(format!(
                "GGUF tokenizer.ggml.tokens: {t:?} appears twice"
            )));
        }
        let ty = meta.token_types.get(i).copied().unwrap_or(1);
        if matches!(
            ty,
            TOKEN_TYPE_UNKNOWN | TOKEN_TYPE_CONTROL | TOKEN_TYPE_USER_DEFINED
        ) {
            added.push(json!({"id": i, "content": t, "single_word": false, "lstrip": false, "rstrip": false,
                              "normalized": false, "special": ty != TOKEN_TYPE_USER_DEFINED}));
        }
    }
    let merges: Vec<Value> = if meta.merges.is_empty() {
        merges_from_scores(&meta.tokens, &meta.scores)
            .into_iter()
            .map(|(l, r)| json!([l, r]))
            .collect()
    } else {
        meta.merges.iter().map(|m| json!(m)).collect()
    };
    let replace = json!({"type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"});
    let normalizer = if meta.add_space_prefix.unwrap_or(true) {
        json!({"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "\u{2581}"}, replace]})
    } else {
        replace
    };
    let mut single = Vec::new();
    let mut specials = serde_json::Map::new();
    let mut special = |name: &String, id: u32, single: &mut Vec<Value>| {
        single.push(json!({"SpecialToken": {"id": name, "type_id": 0}}));
        specials.insert(
            name.clone(),
            json!({"id": name, "ids": [id], "tokens": [name]}),
        );
    };
    // llama.cpp adds BOS for SentencePiece models unless the file says not to.
    if let (true, Some(b), Some(id)) = (meta.add_bos.unwrap_or(true), &bos, meta.bos_id) {
        special(b, id, &mut single);
    }
    single.push(json!({"Sequence": {"id": "A", "type_id": 0}}));
    if let (Some(true), Some(e), Some(id)) = (meta.add_eos, &eos, meta.eos_id) {
        special(e, id, &mut single);
    }
    let tokenizer = json!({
        "version": "1.0",
        "added_tokens": added,
        "normalizer": normalizer,
        "pre_tokenizer": null,
        "post_processor": {"type": "TemplateProcessing", "single": single, "pair": [], "special_tokens": specials},
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "}, {"type": "ByteFallback"},
            {"type": "Fuse"}, {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
        "model": {"type": "BPE", "dropout": null, "unk_token": unk, "fuse_unk": true, "byte_fallback": true,
                  "ignore_merges": false, "vocab": vocab, "merges": merges},
    });
    Ok((tokenizer, config_json(bos, eos, unk, meta)))
}

fn config_json(
    bos: Option<String>,
    eos: Option<String>,
    unk: Option<String>,
    meta: &GgufTokenizerMeta,
) -> Value {
    let mut config = serde_json::Map::new();
    for (k, v) in [("bos_token", bos), ("eos_token", eos), ("unk_token", unk)] {
        if let Some(v) = v {
            config.insert(k.into(), json!(v));
        }
    }
    if let Some(t) = &meta.chat_template {
        config.insert("chat_template".into(), json!(t));
    }
    Value::Object(config)
}
