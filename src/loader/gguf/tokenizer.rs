//! tokenizer.json and tokenizer_config.json from a GGUF's `tokenizer.ggml.*` metadata, built the
//! way Hugging Face's converters build them, so `Tokenizer::from_json` reads one format.

use std::collections::{HashMap, HashSet};

use serde_json::{json, Map, Value};

use super::{GgufFile, GgufValue};
use crate::error::{Error, Result};

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
        json!(file
            .architecture()
            .ok()
            .and_then(|a| file.u64_key(&format!("{a}.context_length")).ok().flatten())
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
        Some(v) => ggml_merges(file, v)?,
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
        Some(v) => ggml_merges(file, v)?,
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

/// `tokenizer.ggml.merges` ("a b" strings) as tokenizer.json's `[["a", "b"], ...]`.
fn ggml_merges(file: &GgufFile, v: &GgufValue) -> Result<Vec<Value>> {
    v.as_array()
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
        .collect()
}
