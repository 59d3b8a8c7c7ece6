//! tokenizer.json and tokenizer_config.json from a GGUF's `tokenizer.ggml.*` metadata, built as
//! the model's own tokenizer.json is (so `Tokenizer::from_json` reads one format) and tokenizing
//! as llama.cpp does: tests/llama_vocab_suite.rs runs llama.cpp's tokenizer test suite. Where
//! transformers' GGUF converter differs (the SentencePiece space prefix), llama.cpp wins.

use std::collections::{HashMap, HashSet};

use serde_json::{json, Map, Value};

use super::GgufFile;
use crate::error::{Error, Result};

/// llama.cpp token types (llama_token_type).
const TOKEN_UNKNOWN: i64 = 2;
const TOKEN_CONTROL: i64 = 3;
const TOKEN_USER_DEFINED: i64 = 4;

/// The `tokenizer.ggml.pre` values we translate: llama.cpp's names for BPE vocabularies whose
/// pre-tokenizer minfer implements (see `bpe_pre_tokenizer`).
pub const SUPPORTED_PRE_TOKENIZERS: &[&str] = &[
    // GPT-2's regex (ByteLevel with use_regex)
    "default",
    "gpt-2",
    "mpt",
    "olmo",
    "jais",
    "trillion",
    "granite-docling",
    "phi-2",
    "jina-es",
    "jina-de",
    "gigachat",
    "jina-v2-es",
    "jina-v2-de",
    "a.x-4.0",
    "mellum",
    "modern-bert",
    "exaone4",
    "jina-v1-en",
    "jina-v2-code",
    "roberta-bpe",
    // every digit alone, then GPT-2's regex
    "smollm",
    "starcoder",
    "refact",
    "command-r",
    "codeshell",
    "exaone",
    "minerva-7b",
    "mellum2",
    // Llama 3's regex, whole-word vocabulary lookups first (ignore_merges)
    "llama-bpe",
    "llama3",
    "llama-v3",
    "falcon3",
    "falcon-h1",
    "pixtral",
    "midm-2.0",
    "lfm2",
    "jina-v5-nano",
    // Llama 3's regex, plain BPE
    "dbrx",
    "smaug-bpe",
    "glm4",
    "chatglm-bpe",
    // Qwen2's regex (one digit per piece)
    "qwen2",
    "deepseek-r1-qwen",
    "kormo",
    "f2llmv2",
    "stablelm2",
    "hunyuan",
    "solar-open",
    "megrez",
    "grok-2",
    "bailingmoe",
    "bailingmoe2",
    "llada-moe",
    "qwen35",
    "tekken",
    "gpt-4o",
    "llama4",
    "kanana2",
    "talkie",
    "minimax-m2",
    "deepseek-llm",
    "deepseek-coder",
    "falcon",
];

/// normalizer, pre_tokenizer and BPE ignore_merges of the tokenizer.json that a vocabulary with
/// `tokenizer.ggml.pre = name` came from, as its model's own tokenizer.json spells them (so the
/// regexes are the ones `pretok` recognises). None for a name minfer does not implement.
fn bpe_pre_tokenizer(name: &str) -> Option<(Value, Value, bool)> {
    use crate::tokenizer::patterns::*;
    let bl = |use_regex| byte_level(false, true, use_regex);
    let seq = |v: Vec<Value>| json!({"type": "Sequence", "pretokenizers": v});
    let digits = |individual| json!({"type": "Digits", "individual_digits": individual});
    let nfc = json!({"type": "NFC"});
    let none = Value::Null;
    Some(match name {
        "default" | "gpt-2" | "mpt" | "olmo" | "jais" | "trillion" | "granite-docling"
        | "phi-2" | "jina-es" | "jina-de" | "gigachat" | "jina-v2-es" | "jina-v2-de"
        | "a.x-4.0" | "mellum" | "modern-bert" | "exaone4" | "jina-v1-en" | "jina-v2-code"
        | "roberta-bpe" => (none, bl(true), false),
        "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone" | "minerva-7b"
        | "mellum2" => (none, seq(vec![digits(true), bl(true)]), false),
        "llama-bpe" | "llama3" | "llama-v3" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0"
        | "lfm2" | "jina-v5-nano" => (none, seq(vec![split(LLAMA3_PATTERN), bl(false)]), true),
        "dbrx" | "smaug-bpe" | "glm4" | "chatglm-bpe" => {
            (none, seq(vec![split(LLAMA3_PATTERN), bl(false)]), false)
        }
        "qwen2" | "deepseek-r1-qwen" => (nfc, seq(vec![split(QWEN2_PATTERN), bl(false)]), false),
        "kormo" | "f2llmv2" | "stablelm2" | "hunyuan" | "solar-open" | "megrez" | "grok-2"
        | "bailingmoe" | "bailingmoe2" | "llada-moe" => {
            (none, seq(vec![split(QWEN2_PATTERN), bl(false)]), false)
        }
        // Qwen3.5 has no NFC normalizer: its pattern keeps combining marks with their letters.
        "qwen35" => (none, seq(vec![split(QWEN35_PATTERN), bl(false)]), false),
        "tekken" => (none, seq(vec![split(TEKKEN_PATTERN), bl(false)]), true),
        "gpt-4o" | "llama4" | "kanana2" | "talkie" | "minimax-m2" => {
            (none, seq(vec![split(GPT4O_PATTERN), bl(false)]), false)
        }
        "deepseek-llm" => (
            none,
            seq(vec![
                split(LINE_BREAK_PATTERN),
                split(DEEPSEEK_LETTERS_PATTERN),
                split(DEEPSEEK_PUNCT_PATTERN),
                split(TRAILING_SPACE_PATTERN),
                split(DEEPSEEK_CJK_PATTERN),
                digits(false),
                bl(false),
            ]),
            false,
        ),
        "deepseek-coder" => (
            none,
            seq(vec![
                split(LINE_BREAK_PATTERN),
                split(SPACE_LETTERS_PATTERN),
                split(SPACE_PUNCT_PATTERN),
                split(DEEPSEEK_CJK_PATTERN),
                digits(true),
                bl(false),
            ]),
            false,
        ),
        // Falcon's Digits and Split come after ByteLevel, so they see its alphabet.
        "falcon" => (
            none,
            seq(vec![
                json!({"type": "Punctuation", "behavior": "Contiguous"}),
                bl(true),
                digits(false),
                split(THREE_DIGITS_PATTERN),
            ]),
            false,
        ),
        _ => return None,
    })
}

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
    // llama.cpp adds BOS to a SentencePiece vocabulary that does not say otherwise, and always
    // to Gemma 4's.
    let add_bos = file
        .bool_key("tokenizer.ggml.add_bos_token")?
        .unwrap_or(sentencepiece)
        || model == "gemma4";
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
        "llama" if file.architecture()? == "gemma3" => {
            gemma_tokenizer(&tokens, &types, unk, bos_tpl)
        }
        "llama" => sentencepiece_tokenizer(file, &tokens, &types, unk, bos_tpl)?,
        "gemma4" => gemma4_tokenizer(file, &tokens, &types, bos_tpl)?,
        other => {
            return Err(Error::Tokenizer(format!(
                "{}: tokenizer.ggml.model {other:?} is not supported (gpt2, llama and gemma4 are)",
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
    let Some((normalizer, pre_tokenizer, ignore_merges)) = bpe_pre_tokenizer(pre) else {
        return Err(Error::Tokenizer(format!(
            "{}: tokenizer.ggml.pre {pre:?} is not supported (supported: {})",
            file.path.display(),
            SUPPORTED_PRE_TOKENIZERS.join(", ")
        )));
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
    let merges = ggml_merges(file)?
        .ok_or_else(|| file.err("a gpt2 tokenizer needs tokenizer.ggml.merges"))?;
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

/// `tokenizer.ggml.merges` as tokenizer.json merges, if present.
fn ggml_merges(file: &GgufFile) -> Result<Option<Vec<Value>>> {
    let Some(v) = file.get("tokenizer.ggml.merges") else {
        return Ok(None);
    };
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
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

/// Gemma 4 (tokenizer.ggml.model = "gemma4"): BPE over the text's characters with byte
/// fallback and GGUF merges, spaces written "▁" and no space prefix, each run of line feeds
/// and each stretch between them tokenized on its own, as llama.cpp does.
fn gemma4_tokenizer(
    file: &GgufFile,
    tokens: &[&str],
    types: &[i64],
    bos: Option<(&str, usize)>,
) -> Result<Value> {
    use crate::tokenizer::patterns::LINE_RUNS_PATTERN;
    let merges = ggml_merges(file)?
        .ok_or_else(|| file.err("a gemma4 tokenizer needs tokenizer.ggml.merges"))?;
    let mut vocab = Map::new();
    let mut added = Vec::new();
    for (id, (t, &ty)) in tokens.iter().zip(types).enumerate() {
        vocab.insert(t.to_string(), json!(id));
        if ty == TOKEN_CONTROL {
            added.push(added_token(id, t, true));
        } else if ty == TOKEN_USER_DEFINED {
            added.push(added_token(id, t, false));
        }
    }
    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": {"type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"},
        "pre_tokenizer": split(LINE_RUNS_PATTERN),
        "post_processor": bos_template(bos),
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "},
            {"type": "ByteFallback"}, {"type": "Fuse"}]},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": true,
            "ignore_merges": false, "vocab": vocab, "merges": merges
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
    let merges = match ggml_merges(file)? {
        Some(m) => m,
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
    // As llama.cpp tokenizes and as a Llama tokenizer.json's normalizer does: "▁" before every
    // stretch of text between added tokens, even one that starts with a space (" Hello" is
    // "▁▁Hello"), then every space becomes "▁"; the whole stretch is one BPE piece.
    // (transformers' GGUF converter instead uses Metaspace with prepend_scheme "first", which
    // adds no "▁" before a leading space.)
    let space = json!({"type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"});
    let normalizer = if add_prefix_space {
        json!({"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "\u{2581}"}, space]})
    } else {
        space
    };
    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": normalizer,
        "pre_tokenizer": null,
        "post_processor": bos_template(bos),
        "decoder": {"type": "Sequence", "decoders": decoders},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": unk.map(|u| json!(tokens[u])).unwrap_or(Value::Null),
            "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": true,
            "byte_fallback": true, "ignore_merges": false, "vocab": vocab, "merges": merges
        }
    }))
}

/// Gemma's SentencePiece vocabulary (`general.architecture` = gemma3), built as transformers'
/// GGUF loader builds it (integrations/gguf/gguf_tokenizer_mapping.py, `gemma_tokenizer`, handing
/// the vocabulary to `GemmaTokenizer`: BPE with byte fallback and `fuse_unk`, spaces replaced
/// by "▁", no prefix space, no splitting, decoder ▁→space + ByteFallback + Fuse), which differs
/// from [`sentencepiece_tokenizer`] in two ways:
/// - tokens made only of whitespace that contain a space are stored by llama.cpp as real spaces
///   ("  ") but looked up as "▁▁": they are respelled "▁" × their length first;
/// - the file has no merges and Gemma's scores do not follow its merge order: merges are
///   recovered from the vocabulary ranked by position in the file (score = −id).
///
/// Control tokens are special added tokens; user-defined ones are plain added tokens when their
/// (respelled) spelling is in the vocabulary (so the respelled space runs are not). BOS is added.
fn gemma_tokenizer(
    tokens: &[&str],
    types: &[i64],
    unk: Option<usize>,
    bos: Option<(&str, usize)>,
) -> Value {
    let respelled: Vec<String> = tokens
        .iter()
        .map(|t| {
            if t.contains(' ') && t.trim().is_empty() {
                "\u{2581}".repeat(t.chars().count())
            } else {
                t.to_string()
            }
        })
        .collect();
    let spelled: Vec<&str> = respelled.iter().map(String::as_str).collect();
    let mut index: HashMap<&str, usize> = HashMap::new();
    let mut vocab = Map::new();
    for (id, t) in spelled.iter().enumerate() {
        index.insert(t, id);
        vocab.insert(t.to_string(), json!(id));
    }
    let by_position: Vec<f64> = (0..spelled.len()).map(|i| -(i as f64)).collect();
    let merges: Vec<Value> = sentencepiece_merges(&spelled, &by_position, &index)
        .into_iter()
        .map(|(a, b)| json!([a, b]))
        .collect();
    let mut added = Vec::new();
    for (id, (t, &ty)) in tokens.iter().zip(types).enumerate() {
        if ty == TOKEN_CONTROL || ty == TOKEN_UNKNOWN || Some(id) == unk {
            added.push(added_token(id, t, true));
        } else if ty == TOKEN_USER_DEFINED && index.contains_key(t) {
            added.push(added_token(index[t], t, false));
        }
    }
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {"type": "Metaspace", "replacement": "\u{2581}",
                          "prepend_scheme": "never", "split": false},
        "post_processor": bos_template(bos),
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "},
            {"type": "ByteFallback"},
            {"type": "Fuse"},
        ]},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": unk.map(|u| json!(spelled[u])).unwrap_or(Value::Null),
            "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": true,
            "byte_fallback": true, "ignore_merges": false, "vocab": vocab, "merges": merges
        }
    })
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokenizer::Tokenizer;

    /// Every supported name gives a tokenizer.json that minfer builds and encodes with (over a
    /// vocabulary of the 256 byte-level characters, no merges: each byte is one token).
    #[test]
    fn every_supported_pre_tokenizer_builds_and_encodes() {
        let table = bytes_to_unicode();
        let vocab: Map<String, Value> = table
            .iter()
            .enumerate()
            .map(|(i, c)| (c.to_string(), json!(i)))
            .collect();
        let text = "Hello  wörld's 12345 ½ 你好!!\n\t $x  ";
        let mut seen = HashSet::new();
        for &name in SUPPORTED_PRE_TOKENIZERS {
            assert!(seen.insert(name), "{name} listed twice");
            let (normalizer, pre_tokenizer, ignore_merges) =
                bpe_pre_tokenizer(name).unwrap_or_else(|| panic!("{name} has no pre-tokenizer"));
            let j = json!({
                "normalizer": normalizer, "pre_tokenizer": pre_tokenizer,
                "decoder": byte_level(true, true, true),
                "model": {"type": "BPE", "ignore_merges": ignore_merges, "vocab": vocab, "merges": []}
            });
            let tok = Tokenizer::from_json(&j, None).unwrap_or_else(|e| panic!("{name}: {e}"));
            let ids = tok.encode(text, false).unwrap();
            let back = tok.decode(&ids, false).unwrap();
            // NFC leaves this text alone, so every pre-tokenizer round-trips it byte for byte.
            assert_eq!(back, text, "{name}");
        }
        assert!(bpe_pre_tokenizer("mystery-pre").is_none());
    }
}
