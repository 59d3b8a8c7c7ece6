//! Tokenizers loaded from Hugging Face tokenizer.json: byte-level BPE (GPT-2, Llama 3, Qwen2,
//! SmolLM) and SentencePiece-style BPE with byte fallback (Llama 2, Mistral, TinyLlama), with
//! added/special tokens, post-processing (BOS/EOS), streaming decode and Jinja chat templates.
//!
//! Everything is our own code over serde_json except the Jinja engine (minijinja). The
//! pre-tokenizer regexes of real tokenizers are hand-written matchers (`pretok`); an unknown
//! regex, model, normalizer, pre-tokenizer, decoder or post-processor type is an
//! `Error::Tokenizer` naming it. Not implemented: WordPiece/Unigram/WordLevel models, pair
//! encodings, offsets, truncation and padding.

mod added;
mod bpe;
mod chat;
mod decoder;
mod normalize;
mod pretok;
mod unicode;
#[rustfmt::skip]
mod unicode_tables;

use std::collections::HashMap;
use std::path::Path;
use std::sync::OnceLock;

use serde_json::Value;

use crate::error::{Error, Result};
use added::{AddedToken, Matcher, Segment};
use bpe::{Bpe, BpeOptions, FastMap};
use decoder::{Decoder, DecoderState, Step};
use normalize::Normalizer;
use pretok::{IsolatePattern, SplitPattern};

/// The Split regexes minfer implements, as tokenizer.json spells them (for tokenizers built
/// from GGUF metadata).
pub(crate) mod patterns {
    pub(crate) use super::pretok::{
        DEEPSEEK_CJK_PATTERN, DEEPSEEK_LETTERS_PATTERN, DEEPSEEK_PUNCT_PATTERN, GPT4O_PATTERN,
        LINE_BREAK_PATTERN, LINE_RUNS_PATTERN, LLAMA3_PATTERN, QWEN2_PATTERN, QWEN35_PATTERN,
        SPACE_LETTERS_PATTERN, SPACE_PUNCT_PATTERN, TEKKEN_PATTERN, THREE_DIGITS_PATTERN,
        TRAILING_SPACE_PATTERN,
    };
}

/// One chat message for `apply_chat_template`.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct ChatMessage {
    /// "system", "user" or "assistant".
    pub role: String,
    /// The text.
    pub content: String,
}

impl ChatMessage {
    /// A message.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> ChatMessage {
        ChatMessage {
            role: role.into(),
            content: content.into(),
        }
    }
}

#[derive(Clone, Debug)]
enum PreTok {
    Split(SplitPattern),
    /// A Split whose pattern matches only part of the text.
    Isolate(IsolatePattern),
    Punctuation {
        contiguous: bool,
    },
    Digits {
        individual: bool,
    },
    Metaspace {
        replacement: char,
        prepend: Prepend,
        split: bool,
    },
    ByteLevel {
        add_prefix_space: bool,
        use_regex: bool,
    },
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Prepend {
    Always,
    First,
    Never,
}

/// What add_special_tokens=true puts around the sequence.
#[derive(Clone, Debug)]
enum PostItem {
    Ids(Vec<u32>),
    Sequence,
}

/// A tokenizer built from tokenizer.json (or GGUF metadata): BPE, byte-level or SentencePiece
/// style, with added tokens, normalizer, pre-tokenizer, decoder and chat template.
pub struct Tokenizer {
    bpe: Bpe,
    /// id -> piece, for model vocab and added tokens alike.
    pieces: Vec<Option<String>>,
    added: Vec<AddedToken>,
    added_by_id: HashMap<u32, usize>,
    raw_matcher: Matcher,
    normalized_matcher: Matcher,
    normalizer: Option<Normalizer>,
    pre: Vec<PreTok>,
    byte_level: bool,
    byte_chars: [char; 256],
    post: Vec<PostItem>,
    decoder: Decoder,
    bos: Option<u32>,
    eos: Vec<u32>,
    chat: Option<chat::ChatTemplate>,
}

fn terr(msg: impl std::fmt::Display) -> Error {
    Error::Tokenizer(msg.to_string())
}

/// The byte a ByteLevel character stands for (the inverse of `pretok::byte_to_char_table`,
/// whose characters all lie below U+0144).
pub(crate) fn byte_of_level_char(c: char) -> Option<u8> {
    static INV: OnceLock<[i16; 0x144]> = OnceLock::new();
    let inv = INV.get_or_init(|| {
        let mut inv = [-1i16; 0x144];
        for (b, &c) in pretok::byte_to_char_table().iter().enumerate() {
            inv[c as usize] = b as i16;
        }
        inv
    });
    inv.get(c as usize).and_then(|&b| u8::try_from(b).ok())
}

fn get_str<'a>(v: &'a Value, key: &str, ctx: &str) -> Result<&'a str> {
    v.get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| terr(format!("{ctx}: missing string field {key:?}")))
}

fn get_bool(v: &Value, key: &str, default: bool) -> bool {
    v.get(key).and_then(Value::as_bool).unwrap_or(default)
}

fn one_char(s: &str, ctx: &str) -> Result<char> {
    let mut it = s.chars();
    match (it.next(), it.next()) {
        (Some(c), None) => Ok(c),
        _ => Err(terr(format!(
            "{ctx}: expected a single character, got {s:?}"
        ))),
    }
}

/// A token given as a string or as an AddedToken object ({"content": ...}).
fn token_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}

fn parse_normalizer(v: &Value, ctx: &str) -> Result<Option<Normalizer>> {
    if v.is_null() {
        return Ok(None);
    }
    let ty = get_str(v, "type", ctx)?;
    let n = match ty {
        "NFC" => Normalizer::Nfc,
        "Prepend" => Normalizer::Prepend(get_str(v, "prepend", ctx)?.to_string()),
        "Replace" => {
            let pattern = v.get("pattern").ok_or_else(|| terr(format!("{ctx}: Replace without pattern")))?;
            let Some(p) = pattern.get("String").and_then(Value::as_str) else {
                return Err(terr(format!("{ctx}: normalizer Replace with pattern {pattern} is not supported (only String patterns)")));
            };
            Normalizer::Replace { pattern: p.to_string(), content: get_str(v, "content", ctx)?.to_string() }
        }
        "Lowercase" => Normalizer::Lowercase,
        "Strip" => Normalizer::Strip { left: get_bool(v, "strip_left", true), right: get_bool(v, "strip_right", true) },
        "Sequence" => {
            let list = v.get("normalizers").and_then(Value::as_array).ok_or_else(|| terr(format!("{ctx}: Sequence without normalizers")))?;
            let mut out = Vec::new();
            for (i, n) in list.iter().enumerate() {
                if let Some(n) = parse_normalizer(n, &format!("{ctx}.normalizers[{i}]"))? {
                    out.push(n);
                }
            }
            Normalizer::Sequence(out)
        }
        other => {
            return Err(terr(format!(
                "{ctx}: unsupported normalizer type {other:?} (supported: NFC, Prepend, Replace, Lowercase, Strip, Sequence)"
            )))
        }
    };
    Ok(Some(n))
}

fn parse_pretok(v: &Value, ctx: &str, out: &mut Vec<PreTok>) -> Result<()> {
    if v.is_null() {
        return Ok(());
    }
    let ty = get_str(v, "type", ctx)?;
    match ty {
        "Sequence" => {
            let list = v.get("pretokenizers").and_then(Value::as_array).ok_or_else(|| terr(format!("{ctx}: Sequence without pretokenizers")))?;
            for (i, p) in list.iter().enumerate() {
                parse_pretok(p, &format!("{ctx}.pretokenizers[{i}]"), out)?;
            }
        }
        "Split" => {
            let pattern = v.get("pattern").ok_or_else(|| terr(format!("{ctx}: Split without pattern")))?;
            let Some(re) = pattern.get("Regex").and_then(Value::as_str) else {
                return Err(terr(format!("{ctx}: Split with pattern {pattern} is not supported (only the known Regex patterns)")));
            };
            let p = match (SplitPattern::recognise(re), IsolatePattern::recognise(re)) {
                (Some(p), _) => PreTok::Split(p),
                (None, Some(p)) => PreTok::Isolate(p),
                (None, None) => return Err(terr(format!(
                    "{ctx}: Split regex `{re}` is not one minfer implements (the GPT-2, Llama 3, Qwen2, Qwen3.5, Tekken, GPT-4o, DeepSeek and Falcon patterns are)"
                ))),
            };
            let behavior = v.get("behavior").and_then(Value::as_str).unwrap_or("Isolated");
            if behavior != "Isolated" || get_bool(v, "invert", false) {
                return Err(terr(format!("{ctx}: Split behavior {behavior:?} / invert is not supported (only Isolated)")));
            }
            out.push(p);
        }
        "Punctuation" => {
            let contiguous = match v.get("behavior").and_then(Value::as_str).unwrap_or("Isolated") {
                "Isolated" => false,
                "Contiguous" => true,
                other => return Err(terr(format!("{ctx}: Punctuation behavior {other:?} is not supported (only Isolated and Contiguous)"))),
            };
            out.push(PreTok::Punctuation { contiguous });
        }
        "Digits" => out.push(PreTok::Digits { individual: get_bool(v, "individual_digits", false) }),
        "ByteLevel" => out.push(PreTok::ByteLevel {
            add_prefix_space: get_bool(v, "add_prefix_space", true),
            use_regex: get_bool(v, "use_regex", true),
        }),
        "Metaspace" => {
            let replacement = one_char(get_str(v, "replacement", ctx)?, ctx)?;
            let prepend = match v.get("prepend_scheme").and_then(Value::as_str) {
                Some("always") => Prepend::Always,
                Some("first") => Prepend::First,
                Some("never") => Prepend::Never,
                Some(other) => return Err(terr(format!("{ctx}: unknown Metaspace prepend_scheme {other:?}"))),
                None if get_bool(v, "add_prefix_space", true) => Prepend::Always,
                None => Prepend::Never,
            };
            out.push(PreTok::Metaspace { replacement, prepend, split: get_bool(v, "split", true) });
        }
        other => {
            return Err(terr(format!(
                "{ctx}: unsupported pre_tokenizer type {other:?} (supported: ByteLevel, Split, Digits, Punctuation, Metaspace, Sequence)"
            )))
        }
    }
    Ok(())
}

fn parse_decoder(v: &Value, ctx: &str, out: &mut Vec<Step>) -> Result<()> {
    if v.is_null() {
        return Ok(());
    }
    let ty = get_str(v, "type", ctx)?;
    match ty {
        "Sequence" => {
            let list = v.get("decoders").and_then(Value::as_array).ok_or_else(|| terr(format!("{ctx}: Sequence without decoders")))?;
            for (i, d) in list.iter().enumerate() {
                parse_decoder(d, &format!("{ctx}.decoders[{i}]"), out)?;
            }
        }
        "ByteLevel" => out.push(Step::ByteLevel),
        "ByteFallback" => out.push(Step::ByteFallback),
        "Fuse" => out.push(Step::Fuse),
        "Replace" => {
            let pattern = v.get("pattern").ok_or_else(|| terr(format!("{ctx}: Replace without pattern")))?;
            let Some(p) = pattern.get("String").and_then(Value::as_str) else {
                return Err(terr(format!("{ctx}: decoder Replace with pattern {pattern} is not supported (only String patterns)")));
            };
            out.push(Step::Replace { pattern: p.to_string(), content: get_str(v, "content", ctx)?.to_string() });
        }
        "Strip" => {
            let content = one_char(get_str(v, "content", ctx)?, ctx)?;
            let n = |k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0) as usize;
            out.push(Step::Strip { content, start: n("start"), stop: n("stop") });
        }
        "Metaspace" => {
            let replacement = one_char(get_str(v, "replacement", ctx)?, ctx)?;
            let prepend = match v.get("prepend_scheme").and_then(Value::as_str) {
                Some("never") => false,
                Some(_) => true,
                None => get_bool(v, "add_prefix_space", true),
            };
            out.push(Step::Metaspace { replacement, prepend });
        }
        other => {
            return Err(terr(format!(
                "{ctx}: unsupported decoder type {other:?} (supported: ByteLevel, ByteFallback, Fuse, Replace, Strip, Metaspace, Sequence)"
            )))
        }
    }
    Ok(())
}

fn parse_post(v: &Value, ctx: &str, vocab: &dyn Fn(&str) -> Option<u32>) -> Result<Vec<PostItem>> {
    let seq = vec![PostItem::Sequence];
    if v.is_null() {
        return Ok(seq);
    }
    let ty = get_str(v, "type", ctx)?;
    let ids_of = |tok: &Value, what: &str| -> Result<Vec<u32>> {
        // ["</s>", 2]
        tok.get(1)
            .and_then(Value::as_u64)
            .map(|id| vec![id as u32])
            .ok_or_else(|| terr(format!("{ctx}: bad {what} token {tok}")))
    };
    match ty {
        "ByteLevel" => Ok(seq),
        "TemplateProcessing" => {
            let single = v.get("single").and_then(Value::as_array).ok_or_else(|| terr(format!("{ctx}: TemplateProcessing without single")))?;
            let specials = v.get("special_tokens");
            let mut out = Vec::new();
            for item in single {
                if let Some(st) = item.get("SpecialToken") {
                    let name = get_str(st, "id", ctx)?;
                    let ids = specials
                        .and_then(|s| s.get(name))
                        .and_then(|s| s.get("ids"))
                        .and_then(Value::as_array)
                        .map(|a| a.iter().filter_map(|x| x.as_u64().map(|x| x as u32)).collect::<Vec<_>>())
                        .or_else(|| vocab(name).map(|id| vec![id]))
                        .ok_or_else(|| terr(format!("{ctx}: special token {name:?} has no id")))?;
                    out.push(PostItem::Ids(ids));
                } else if item.get("Sequence").is_some() {
                    out.push(PostItem::Sequence);
                } else {
                    return Err(terr(format!("{ctx}: unsupported template item {item}")));
                }
            }
            Ok(out)
        }
        "RobertaProcessing" | "BertProcessing" => {
            let cls = ids_of(v.get("cls").unwrap_or(&Value::Null), "cls")?;
            let sep = ids_of(v.get("sep").unwrap_or(&Value::Null), "sep")?;
            Ok(vec![PostItem::Ids(cls), PostItem::Sequence, PostItem::Ids(sep)])
        }
        "Sequence" => {
            let list = v.get("processors").and_then(Value::as_array).ok_or_else(|| terr(format!("{ctx}: Sequence without processors")))?;
            let mut cur = seq;
            for (i, p) in list.iter().enumerate() {
                let next = parse_post(p, &format!("{ctx}.processors[{i}]"), vocab)?;
                let mut composed = Vec::new();
                for item in next {
                    match item {
                        PostItem::Sequence => composed.extend(cur.iter().cloned()),
                        other => composed.push(other),
                    }
                }
                cur = composed;
            }
            Ok(cur)
        }
        other => Err(terr(format!(
            "{ctx}: unsupported post_processor type {other:?} (supported: TemplateProcessing, ByteLevel, RobertaProcessing, BertProcessing, Sequence)"
        ))),
    }
}

fn parse_merges(v: &Value) -> Result<Vec<(String, String)>> {
    let Some(list) = v.as_array() else {
        return Err(terr("model.merges is not a list"));
    };
    let mut out = Vec::with_capacity(list.len());
    for (i, m) in list.iter().enumerate() {
        let pair = match m {
            Value::String(s) => s
                .split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string())),
            Value::Array(a) if a.len() == 2 => match (a[0].as_str(), a[1].as_str()) {
                (Some(x), Some(y)) => Some((x.to_string(), y.to_string())),
                _ => None,
            },
            _ => None,
        };
        out.push(pair.ok_or_else(|| {
            terr(format!(
                "model.merges[{i}]: expected \"a b\" or [\"a\", \"b\"], got {m}"
            ))
        })?);
    }
    Ok(out)
}

impl Tokenizer {
    /// tokenizer.json path; also reads tokenizer_config.json beside it when present.
    pub fn from_file(path: &Path) -> Result<Tokenizer> {
        let read_json = |p: &Path| -> Result<Value> {
            let text = std::fs::read_to_string(p).map_err(|e| Error::io(p, e))?;
            serde_json::from_str(&text).map_err(|e| Error::json(p, e))
        };
        if !path.exists() {
            return Err(Error::MissingFile {
                path: path.to_path_buf(),
                what: "tokenizer.json".into(),
            });
        }
        let tok = read_json(path)?;
        let cfg_path = path.with_file_name("tokenizer_config.json");
        let cfg = if cfg_path.exists() {
            Some(read_json(&cfg_path)?)
        } else {
            None
        };
        // Newer Hugging Face repositories keep the template in its own file.
        let jinja_path = path.with_file_name("chat_template.jinja");
        let jinja = if jinja_path.exists() {
            Some(std::fs::read_to_string(&jinja_path).map_err(|e| Error::io(&jinja_path, e))?)
        } else {
            None
        };
        Tokenizer::build(&tok, cfg.as_ref(), jinja).map_err(|e| match e {
            Error::Tokenizer(m) => Error::Tokenizer(format!("{}: {m}", path.display())),
            other => other,
        })
    }

    /// From parsed JSON (used for tokenizers built from GGUF metadata); config =
    /// tokenizer_config.json contents.
    pub fn from_json(
        tokenizer_json: &Value,
        tokenizer_config: Option<&Value>,
    ) -> Result<Tokenizer> {
        Tokenizer::build(tokenizer_json, tokenizer_config, None)
    }

    fn build(
        tokenizer_json: &Value,
        tokenizer_config: Option<&Value>,
        chat_template_file: Option<String>,
    ) -> Result<Tokenizer> {
        let j = tokenizer_json;
        let model = j
            .get("model")
            .ok_or_else(|| terr("tokenizer.json has no \"model\""))?;
        let model_type =
            model
                .get("type")
                .and_then(Value::as_str)
                .unwrap_or(if model.get("merges").is_some() {
                    "BPE"
                } else {
                    "?"
                });
        if model_type != "BPE" {
            return Err(terr(format!(
                "unsupported model type {model_type:?} (minfer implements BPE only)"
            )));
        }
        for key in ["continuing_subword_prefix", "end_of_word_suffix"] {
            if let Some(v) = model
                .get(key)
                .filter(|v| !v.is_null() && v.as_str() != Some(""))
            {
                return Err(terr(format!("BPE {key} {v} is not supported")));
            }
        }
        let vocab_json = model
            .get("vocab")
            .and_then(Value::as_object)
            .ok_or_else(|| terr("model.vocab is not an object"))?;
        let mut vocab = FastMap::default();
        vocab.reserve(vocab_json.len());
        let mut max_id = 0u32;
        for (k, v) in vocab_json {
            let id = v
                .as_u64()
                .filter(|&x| x < u32::MAX as u64)
                .ok_or_else(|| terr(format!("model.vocab[{k:?}]: bad id {v}")))?
                as u32;
            max_id = max_id.max(id);
            vocab.insert(k.clone(), id);
        }
        let merges = parse_merges(model.get("merges").unwrap_or(&Value::Array(vec![])))?;
        let unk_id = match model.get("unk_token").and_then(Value::as_str) {
            Some(u) => Some(
                *vocab
                    .get(u)
                    .ok_or_else(|| terr(format!("unk_token {u:?} is not in the vocabulary")))?,
            ),
            None => None,
        };
        let opts = BpeOptions {
            unk_id,
            fuse_unk: get_bool(model, "fuse_unk", false),
            byte_fallback: get_bool(model, "byte_fallback", false),
            ignore_merges: get_bool(model, "ignore_merges", false),
        };

        // Added tokens.
        let mut added = Vec::new();
        if let Some(list) = j.get("added_tokens").and_then(Value::as_array) {
            for (i, t) in list.iter().enumerate() {
                let ctx = format!("added_tokens[{i}]");
                let id = t
                    .get("id")
                    .and_then(Value::as_u64)
                    .filter(|&x| x < u32::MAX as u64)
                    .ok_or_else(|| terr(format!("{ctx}: missing or bad id")))?
                    as u32;
                let content = get_str(t, "content", &ctx)?.to_string();
                let special = get_bool(t, "special", false);
                added.push(AddedToken {
                    id,
                    content,
                    single_word: get_bool(t, "single_word", false),
                    lstrip: get_bool(t, "lstrip", false),
                    rstrip: get_bool(t, "rstrip", false),
                    normalized: get_bool(t, "normalized", !special),
                    special,
                });
                max_id = max_id.max(id);
            }
        }
        // Ids are dense in real vocabularies; a wild one would make the id table enormous.
        let entries = vocab.len() + added.len();
        if max_id as usize > 2 * entries + 65_536 {
            return Err(terr(format!(
                "token id {max_id} is far beyond the {entries} tokens defined"
            )));
        }
        let mut pieces: Vec<Option<String>> = vec![None; max_id as usize + 1];
        // In the file's order (the map's order is random per process): when two strings share
        // an id, the same one decodes every time.
        for (k, v) in vocab_json {
            if let Some(id) = v.as_u64() {
                pieces[id as usize] = Some(k.clone());
            }
        }
        let mut added_by_id = HashMap::new();
        for (i, t) in added.iter().enumerate() {
            pieces[t.id as usize] = Some(t.content.clone());
            added_by_id.insert(t.id, i);
        }

        let normalizer =
            parse_normalizer(j.get("normalizer").unwrap_or(&Value::Null), "normalizer")?;
        let mut pre = Vec::new();
        parse_pretok(
            j.get("pre_tokenizer").unwrap_or(&Value::Null),
            "pre_tokenizer",
            &mut pre,
        )?;
        // After ByteLevel, pre-tokenizers see the byte-level alphabet (Falcon's Digits and
        // Split do); only those that split characters can follow it.
        let byte_level = match pre
            .iter()
            .position(|p| matches!(p, PreTok::ByteLevel { .. }))
        {
            Some(i)
                if !pre[i + 1..].iter().all(|p| {
                    matches!(
                        p,
                        PreTok::Split(_) | PreTok::Isolate(_) | PreTok::Digits { .. }
                    )
                }) =>
            {
                return Err(terr(
                    "pre_tokenizer: only Split and Digits may follow ByteLevel",
                ));
            }
            Some(_) => true,
            None => false,
        };
        let mut steps = Vec::new();
        parse_decoder(
            j.get("decoder").unwrap_or(&Value::Null),
            "decoder",
            &mut steps,
        )?;
        let decoder = Decoder { steps };
        decoder.validate().map_err(terr)?;
        let lookup = |s: &str| {
            vocab
                .get(s)
                .copied()
                .or_else(|| added.iter().find(|t| t.content == s).map(|t| t.id))
        };
        let post = parse_post(
            j.get("post_processor").unwrap_or(&Value::Null),
            "post_processor",
            &lookup,
        )?;

        let token_id = |v: Option<&Value>| v.and_then(token_string).and_then(|s| lookup(&s));
        let bos =
            token_id(tokenizer_config.and_then(|c| c.get("bos_token"))).or_else(|| {
                match post.first() {
                    Some(PostItem::Ids(ids)) => ids.first().copied(),
                    _ => None,
                }
            });
        let eos = token_id(tokenizer_config.and_then(|c| c.get("eos_token")))
            .into_iter()
            .collect();

        let byte_chars = pretok::byte_to_char_table();
        let bpe = Bpe::new(vocab, &merges, opts, byte_level.then_some(&byte_chars))
            .map_err(|e| terr(format!("model.merges: {e}")))?;
        // Normalized added tokens are matched in normalized text, so their patterns are
        // normalized too (as tokenizers does).
        let raw_matcher = Matcher::new(
            added
                .iter()
                .enumerate()
                .filter(|(_, t)| !t.normalized)
                .map(|(i, t)| (t.content.clone(), i)),
        );
        let normalized_matcher = Matcher::new(
            added
                .iter()
                .enumerate()
                .filter(|(_, t)| t.normalized)
                .map(|(i, t)| {
                    let p = normalizer
                        .as_ref()
                        .map_or_else(|| t.content.clone(), |n| n.apply(&t.content));
                    (p, i)
                }),
        );
        let chat = chat::ChatTemplate::from_config(tokenizer_config, chat_template_file)?;

        Ok(Tokenizer {
            bpe,
            pieces,
            added,
            added_by_id,
            raw_matcher,
            normalized_matcher,
            normalizer,
            pre,
            byte_level,
            byte_chars,
            post,
            decoder,
            bos,
            eos,
            chat,
        })
    }

    /// Token ids of `text`; `add_special_tokens` adds what the post-processor adds (BOS ...).
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let mut ids = Vec::with_capacity(text.len() / 3 + 4);
        let mut segs = Vec::new();
        self.raw_matcher
            .split(text, 0, text.len(), &self.added, &mut segs);
        let mut scratch = Scratch::default();
        for seg in segs {
            match seg {
                Segment::Token(idx, _, _) => ids.push(self.added[idx].id),
                Segment::Text(a, b) => {
                    let piece = &text[a..b];
                    let normalized;
                    let norm: &str = match &self.normalizer {
                        Some(n) if n.is_nfc_only() => {
                            normalized = unicode::nfc(piece);
                            &normalized
                        }
                        Some(n) => {
                            normalized = std::borrow::Cow::Owned(n.apply(piece));
                            &normalized
                        }
                        None => piece,
                    };
                    if self.normalized_matcher.is_empty() {
                        self.encode_text(norm, a == 0, &mut scratch, &mut ids);
                        continue;
                    }
                    let mut sub = Vec::new();
                    self.normalized_matcher
                        .split(norm, 0, norm.len(), &self.added, &mut sub);
                    for s in sub {
                        match s {
                            Segment::Token(idx, _, _) => ids.push(self.added[idx].id),
                            Segment::Text(x, y) => self.encode_text(
                                &norm[x..y],
                                a == 0 && x == 0,
                                &mut scratch,
                                &mut ids,
                            ),
                        }
                    }
                }
            }
        }
        if add_special_tokens {
            let mut out = Vec::with_capacity(ids.len() + 2);
            for item in &self.post {
                match item {
                    PostItem::Ids(v) => out.extend_from_slice(v),
                    PostItem::Sequence => out.extend_from_slice(&ids),
                }
            }
            return Ok(out);
        }
        Ok(ids)
    }

    /// `encode`, with each id's vocabulary piece (for `minfer tokenize --json`).
    pub fn encode_with_pieces(
        &self,
        text: &str,
        add_special_tokens: bool,
    ) -> Result<(Vec<u32>, Vec<String>)> {
        let ids = self.encode(text, add_special_tokens)?;
        let pieces = ids
            .iter()
            .map(|&id| self.id_to_piece(id).unwrap_or_default().to_string())
            .collect();
        Ok((ids, pieces))
    }

    /// Pre-tokenizes and BPE-encodes one normalized stretch of text without added tokens.
    /// `at_start`: the stretch begins the input (Metaspace's prepend_scheme "first").
    fn encode_text(&self, text: &str, at_start: bool, sc: &mut Scratch, ids: &mut Vec<u32>) {
        if text.is_empty() {
            return;
        }
        sc.buf.clear();
        sc.buf.push_str(text);
        sc.ranges.clear();
        sc.ranges.push((0, text.len()));
        // Whether sc.buf holds the byte-level alphabet (pre-tokenizers after ByteLevel).
        let mut mapped = false;
        for (k, p) in self.pre.iter().enumerate() {
            match *p {
                PreTok::Split(pat) => {
                    sc.tmp.clear();
                    for &(a, b) in &sc.ranges {
                        pat.split(&sc.buf[a..b], a, &mut sc.tmp);
                    }
                    std::mem::swap(&mut sc.ranges, &mut sc.tmp);
                }
                PreTok::Isolate(pat) => {
                    sc.tmp.clear();
                    for &(a, b) in &sc.ranges {
                        pat.split(&sc.buf[a..b], a, &mut sc.tmp);
                    }
                    std::mem::swap(&mut sc.ranges, &mut sc.tmp);
                }
                PreTok::Punctuation { contiguous } => {
                    sc.tmp.clear();
                    for &(a, b) in &sc.ranges {
                        pretok::split_punctuation(&sc.buf[a..b], a, contiguous, &mut sc.tmp);
                    }
                    std::mem::swap(&mut sc.ranges, &mut sc.tmp);
                }
                PreTok::Digits { individual } => {
                    sc.tmp.clear();
                    for &(a, b) in &sc.ranges {
                        pretok::split_digits(&sc.buf[a..b], a, individual, &mut sc.tmp);
                    }
                    std::mem::swap(&mut sc.ranges, &mut sc.tmp);
                }
                PreTok::Metaspace {
                    replacement,
                    prepend,
                    split,
                } => {
                    let mut nb = String::with_capacity(sc.buf.len() + 8);
                    sc.tmp.clear();
                    let mut rep = [0u8; 4];
                    let rep: &str = replacement.encode_utf8(&mut rep);
                    for (k, &(a, b)) in sc.ranges.iter().enumerate() {
                        let piece = sc.buf[a..b].replace(' ', rep);
                        let start = nb.len();
                        let add = match prepend {
                            Prepend::Always => true,
                            Prepend::First => at_start && k == 0 && a == 0,
                            Prepend::Never => false,
                        };
                        if add && !piece.starts_with(replacement) {
                            nb.push_str(rep);
                        }
                        nb.push_str(&piece);
                        let end = nb.len();
                        if split {
                            // MergedWithNext: every replacement character starts a new piece.
                            let mut s = start;
                            for (off, _) in nb[start..end].match_indices(replacement) {
                                let at = start + off;
                                if at > s {
                                    sc.tmp.push((s, at));
                                    s = at;
                                }
                            }
                            if end > s {
                                sc.tmp.push((s, end));
                            }
                        } else if end > start {
                            sc.tmp.push((start, end));
                        }
                    }
                    sc.buf = nb;
                    std::mem::swap(&mut sc.ranges, &mut sc.tmp);
                }
                PreTok::ByteLevel {
                    add_prefix_space,
                    use_regex,
                } => {
                    if add_prefix_space {
                        let mut nb = String::with_capacity(sc.buf.len() + 8);
                        sc.tmp.clear();
                        for &(a, b) in &sc.ranges {
                            let start = nb.len();
                            if !sc.buf[a..b].starts_with(' ') {
                                nb.push(' ');
                            }
                            nb.push_str(&sc.buf[a..b]);
                            sc.tmp.push((start, nb.len()));
                        }
                        sc.buf = nb;
                        std::mem::swap(&mut sc.ranges, &mut sc.tmp);
                    }
                    if use_regex {
                        sc.tmp.clear();
                        for &(a, b) in &sc.ranges {
                            SplitPattern::Gpt2.split(&sc.buf[a..b], a, &mut sc.tmp);
                        }
                        std::mem::swap(&mut sc.ranges, &mut sc.tmp);
                    }
                    if k + 1 < self.pre.len() {
                        // The rest see each byte as its byte-level character (a split may
                        // then fall inside a multi-byte character of the input).
                        let mut nb = String::with_capacity(2 * sc.buf.len());
                        sc.tmp.clear();
                        for &(a, b) in &sc.ranges {
                            let start = nb.len();
                            nb.extend(sc.buf[a..b].bytes().map(|x| self.byte_chars[x as usize]));
                            sc.tmp.push((start, nb.len()));
                        }
                        sc.buf = nb;
                        std::mem::swap(&mut sc.ranges, &mut sc.tmp);
                        mapped = true;
                    }
                }
            }
        }
        for &(a, b) in &sc.ranges {
            if a == b {
                continue;
            }
            let piece = &sc.buf[a..b];
            if mapped {
                sc.key.clear();
                sc.key.extend(piece.chars().filter_map(byte_of_level_char));
                self.bpe.tokenize_piece(&sc.key, piece, true, ids);
            } else if self.byte_level {
                sc.mapped.clear();
                if self.bpe.ignore_merges() || !self.bpe.has_byte_level_ids() {
                    sc.mapped
                        .extend(piece.bytes().map(|x| self.byte_chars[x as usize]));
                }
                self.bpe
                    .tokenize_piece(piece.as_bytes(), &sc.mapped, true, ids);
            } else {
                self.bpe.tokenize_piece(piece.as_bytes(), piece, false, ids);
            }
        }
    }

    /// ids -> text. An id outside the vocabulary is an error.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        let mut stream = self.decode_stream(skip_special_tokens);
        let mut out = String::new();
        for &id in ids {
            stream.push_into(id, &mut out)?;
        }
        stream.state.finish(&mut out);
        Ok(out)
    }

    /// The raw vocabulary string ("Ġthe", "▁the") or added token content.
    pub fn id_to_piece(&self, id: u32) -> Option<&str> {
        self.pieces.get(id as usize).and_then(|p| p.as_deref())
    }

    /// The id of a vocabulary piece or added token.
    pub fn token_to_id(&self, piece: &str) -> Option<u32> {
        self.added
            .iter()
            .find(|t| t.content == piece)
            .map(|t| t.id)
            .or_else(|| self.bpe.vocab.get(piece).copied())
    }

    /// Including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.pieces.len()
    }

    /// The beginning-of-sequence id, if the tokenizer has one.
    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }

    /// The end-of-sequence ids the tokenizer config names.
    pub fn eos_ids(&self) -> Vec<u32> {
        self.eos.clone()
    }

    /// An added token marked special (skipped by `decode(.., skip_special_tokens = true)`).
    pub fn is_special(&self, id: u32) -> bool {
        self.added_by_id
            .get(&id)
            .is_some_and(|&i| self.added[i].special)
    }

    /// A streaming decoder: push ids, get text as soon as it is complete UTF-8.
    pub fn decode_stream(&self, skip_special_tokens: bool) -> DecodeStream<'_> {
        DecodeStream {
            tok: self,
            skip_special_tokens,
            state: self.decoder.state(),
        }
    }

    /// Whether the checkpoint ships a chat template.
    pub fn has_chat_template(&self) -> bool {
        self.chat.is_some()
    }

    /// Render `messages` with the checkpoint's chat template.
    pub fn apply_chat_template(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String> {
        match &self.chat {
            Some(t) => t.render(messages, add_generation_prompt),
            None => Err(terr(
                "this tokenizer has no chat_template (tokenizer_config.json)",
            )),
        }
    }
}

#[derive(Default)]
struct Scratch {
    buf: String,
    ranges: Vec<(usize, usize)>,
    tmp: Vec<(usize, usize)>,
    mapped: String,
    /// The input bytes of a piece spelled in the byte-level alphabet.
    key: Vec<u8>,
}

/// Incremental decoding: `step` returns text as soon as it is final (complete UTF-8, past any
/// leading space the decoder strips), `flush` returns the rest at the end. The pieces
/// concatenated equal `Tokenizer::decode` of all the ids.
pub struct DecodeStream<'a> {
    tok: &'a Tokenizer,
    skip_special_tokens: bool,
    state: DecoderState,
}

impl DecodeStream<'_> {
    fn push_into(&mut self, id: u32, out: &mut String) -> Result<()> {
        let piece = self.tok.id_to_piece(id).ok_or_else(|| {
            Error::arg(format!(
                "token id {id} is not in the vocabulary (size {})",
                self.tok.vocab_size()
            ))
        })?;
        if self.skip_special_tokens && self.tok.is_special(id) {
            return Ok(());
        }
        self.state.push(piece, out);
        Ok(())
    }

    pub fn step(&mut self, id: u32) -> Result<Option<String>> {
        let mut out = String::new();
        self.push_into(id, &mut out)?;
        Ok(if out.is_empty() { None } else { Some(out) })
    }

    /// End of the stream: whatever was held back (an incomplete character decodes to U+FFFD).
    pub fn flush(&mut self) -> Option<String> {
        let mut out = String::new();
        self.state.finish(&mut out);
        if out.is_empty() {
            None
        } else {
            Some(out)
        }
    }
}
