//! Parity with the Hugging Face `tokenizers` package on recorded fixtures
//! (tests/fixtures/make_tokenizer_fixtures.py), plus streaming, scale and error tests.
//! Runs without Python: the fixtures hold the oracle's ids and decoded text.

use std::path::{Path, PathBuf};

use minfer::Error;
use minfer::{ChatMessage, Tokenizer};
use serde_json::{json, Value};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizers")
}

fn load(name: &str) -> (Tokenizer, Value) {
    let dir = fixtures();
    let fixture: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join(format!("{name}.json"))).unwrap())
            .unwrap();
    let tok = Tokenizer::from_file(&dir.join(name).join("tokenizer.json")).unwrap();
    (tok, fixture)
}

fn ids_of(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn short(s: &str) -> String {
    let t: String = s.chars().take(60).collect();
    format!("{t:?}{}", if s.chars().count() > 60 { "…" } else { "" })
}

/// Checks every case; reports all failures at once so a regression shows its whole extent.
fn check_parity(name: &str) {
    let (tok, fixture) = load(name);
    let cases = fixture["cases"].as_array().unwrap();
    assert!(cases.len() >= 100, "{name}: only {} cases", cases.len());
    let mut failures = Vec::new();
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let want = ids_of(&case["ids"]);
        let got = tok.encode(text, false).unwrap();
        if got != want {
            failures.push(format!(
                "encode {}: got {:?}\n   want {:?}",
                short(text),
                &got[..got.len().min(30)],
                &want[..want.len().min(30)]
            ));
        }
        let want_sp = ids_of(&case["ids_special"]);
        let got_sp = tok.encode(text, true).unwrap();
        if got_sp != want_sp {
            failures.push(format!(
                "encode+special {}: got {:?} want {:?}",
                short(text),
                &got_sp[..got_sp.len().min(30)],
                &want_sp[..want_sp.len().min(30)]
            ));
        }
        for (skip, key) in [(false, "decoded"), (true, "decoded_skip_special")] {
            let want_text = case[key].as_str().unwrap();
            let got_text = tok.decode(&want_sp, skip).unwrap();
            if got_text != want_text {
                failures.push(format!(
                    "{key} {}: got {} want {}",
                    short(text),
                    short(&got_text),
                    short(want_text)
                ));
            }
            let mut stream = tok.decode_stream(skip);
            let mut streamed = String::new();
            for &id in &want_sp {
                if let Some(piece) = stream.step(id).unwrap() {
                    streamed.push_str(&piece);
                }
            }
            streamed.extend(stream.flush());
            if streamed != want_text {
                failures.push(format!(
                    "stream {key} {}: got {} want {}",
                    short(text),
                    short(&streamed),
                    short(want_text)
                ));
            }
        }
    }
    if !failures.is_empty() {
        panic!(
            "{name}: {} failures of {} cases:\n{}",
            failures.len(),
            cases.len(),
            failures[..failures.len().min(25)].join("\n")
        );
    }
}

#[test]
fn parity_smollm2() {
    check_parity("smollm2");
}

#[test]
fn parity_qwen2() {
    check_parity("qwen2");
}

#[test]
fn parity_gpt2ish() {
    check_parity("gpt2ish");
}

#[test]
fn parity_llama3ish() {
    check_parity("llama3ish");
}

#[test]
fn parity_qwen35ish() {
    check_parity("qwen35ish");
}

#[test]
fn parity_tekkenish() {
    check_parity("tekkenish");
}

#[test]
fn parity_gpt4oish() {
    check_parity("gpt4oish");
}

#[test]
fn parity_llama2ish() {
    check_parity("llama2ish");
}

#[test]
fn parity_mistralish() {
    check_parity("mistralish");
}

fn check_chat(name: &str) {
    let (tok, fixture) = load(name);
    assert!(tok.has_chat_template());
    let chats = fixture["chat"].as_array().unwrap();
    assert!(!chats.is_empty());
    for c in chats {
        let messages: Vec<ChatMessage> = c["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| ChatMessage {
                role: m["role"].as_str().unwrap().into(),
                content: m["content"].as_str().unwrap().into(),
            })
            .collect();
        let agp = c["add_generation_prompt"].as_bool().unwrap();
        let got = tok.apply_chat_template(&messages, agp);
        match c.get("rendered").and_then(Value::as_str) {
            Some(want) => assert_eq!(got.unwrap(), want, "{name}: {messages:?} agp={agp}"),
            None => {
                // The template called raise_exception(): we must fail with its message.
                let want = c["error"].as_str().unwrap();
                match got {
                    Err(Error::Tokenizer(m)) => {
                        assert!(m.contains(want), "{name}: error {m:?} lacks {want:?}")
                    }
                    other => {
                        panic!("{name}: expected the template's exception {want:?}, got {other:?}")
                    }
                }
            }
        }
    }
}

#[test]
fn chat_template_smollm2() {
    check_chat("smollm2");
}

#[test]
fn chat_template_qwen2() {
    check_chat("qwen2");
}

#[test]
fn chat_template_llama3() {
    check_chat("llama3ish");
}

#[test]
fn chat_template_llama2_strip_and_raise() {
    check_chat("llama2ish");
    check_chat("mistralish");
}

/// A tokenizer.json made from a fixture with one part replaced.
fn with_part(name: &str, key: &str, value: Value) -> Result<Tokenizer, Error> {
    let dir = fixtures().join(name);
    let mut j: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("tokenizer.json")).unwrap())
            .unwrap();
    j[key] = value;
    Tokenizer::from_json(&j, None)
}

fn tokenizer_error(r: Result<Tokenizer, Error>) -> String {
    match r {
        Err(Error::Tokenizer(m)) => m,
        Err(other) => panic!("expected Error::Tokenizer, got {other:?}"),
        Ok(_) => panic!("expected Error::Tokenizer, got a tokenizer"),
    }
}

#[test]
fn unsupported_types_are_named() {
    let m = tokenizer_error(with_part(
        "gpt2ish",
        "pre_tokenizer",
        json!({"type": "Whitespace"}),
    ));
    assert!(m.contains("\"Whitespace\""), "{m}");
    let m = tokenizer_error(with_part("gpt2ish", "normalizer", json!({"type": "NFKC"})));
    assert!(m.contains("\"NFKC\""), "{m}");
    let m = tokenizer_error(with_part(
        "gpt2ish",
        "decoder",
        json!({"type": "WordPiece", "prefix": "##"}),
    ));
    assert!(m.contains("\"WordPiece\""), "{m}");
    let m = tokenizer_error(with_part(
        "gpt2ish",
        "post_processor",
        json!({"type": "Foo"}),
    ));
    assert!(m.contains("\"Foo\""), "{m}");
    let m = tokenizer_error(with_part(
        "gpt2ish",
        "model",
        json!({"type": "Unigram", "vocab": []}),
    ));
    assert!(m.contains("\"Unigram\""), "{m}");
    let re = r"\p{Han}+|\s+";
    let m = tokenizer_error(with_part(
        "gpt2ish",
        "pre_tokenizer",
        json!({"type": "Sequence", "pretokenizers": [{"type": "Split", "pattern": {"Regex": re}, "behavior": "Isolated", "invert": false}]}),
    ));
    assert!(m.contains(re), "error should quote the unknown regex: {m}");
    // An absurd id is an error, not a 16 GB allocation.
    let m = tokenizer_error(with_part(
        "gpt2ish",
        "added_tokens",
        json!([{"id": 4_000_000_000u64, "content": "<x>", "special": true}]),
    ));
    assert!(m.contains("4000000000"), "{m}");
    // A merge naming a token that is not in the vocabulary.
    let dir = fixtures().join("gpt2ish");
    let mut j: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("tokenizer.json")).unwrap())
            .unwrap();
    j["model"]["merges"] = json!([["nope", "zzz"]]);
    let m = tokenizer_error(Tokenizer::from_json(&j, None));
    assert!(m.contains("nope"), "{m}");
    // A chat template that does not parse: the tokenizer still loads (generation does not
    // need it); rendering reports the parse error.
    let cfg = json!({"chat_template": "{% for %}"});
    let j: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("tokenizer.json")).unwrap())
            .unwrap();
    let tok = Tokenizer::from_json(&j, Some(&cfg)).unwrap();
    assert!(tok.has_chat_template());
    match tok.apply_chat_template(
        &[ChatMessage {
            role: "user".into(),
            content: "x".into(),
        }],
        true,
    ) {
        Err(Error::Tokenizer(m)) => assert!(m.contains("chat_template does not parse"), "{m}"),
        other => panic!("expected a template error, got {other:?}"),
    }
    // A tokenizer without a template says so.
    let tok = Tokenizer::from_json(&j, None).unwrap();
    assert!(!tok.has_chat_template());
    assert!(matches!(
        tok.apply_chat_template(&[], false),
        Err(Error::Tokenizer(_))
    ));
}

#[test]
fn unknown_id_is_an_error_not_a_panic() {
    let (tok, _) = load("gpt2ish");
    let n = tok.vocab_size() as u32;
    assert!(tok.decode(&[n], false).is_err());
    assert!(tok.decode(&[u32::MAX], true).is_err());
    assert!(tok.decode_stream(false).step(n + 5).is_err());
}

#[test]
fn named_template_list_uses_default() {
    let dir = fixtures().join("smollm2");
    let j: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("tokenizer.json")).unwrap())
            .unwrap();
    let cfg = json!({
        "bos_token": {"content": "<|im_start|>"},
        "eos_token": "<|im_end|>",
        "chat_template": [
            {"name": "tool_use", "template": "tools"},
            {"name": "default", "template": "{{ bos_token }}{% for m in messages %}{{ m.role | upper }}:{{ m.content.strip() }}|{% endfor %}{% if add_generation_prompt %}A:{% endif %}"}
        ]
    });
    let tok = Tokenizer::from_json(&j, Some(&cfg)).unwrap();
    let msgs = [ChatMessage {
        role: "user".into(),
        content: "  hi  ".into(),
    }];
    assert_eq!(
        tok.apply_chat_template(&msgs, true).unwrap(),
        "<|im_start|>USER:hi|A:"
    );
    assert_eq!(tok.bos_id(), Some(1));
    assert_eq!(tok.eos_ids(), vec![2]);
}

#[test]
fn api_basics() {
    let (tok, _) = load("qwen2");
    assert_eq!(tok.vocab_size(), 152064);
    assert_eq!(tok.bos_id(), Some(151646));
    assert_eq!(tok.eos_ids(), vec![151643]);
    assert!(tok.is_special(151643) && !tok.is_special(151648) && !tok.is_special(100));
    assert_eq!(tok.id_to_piece(151648), Some("<think>"));
    assert_eq!(tok.token_to_id("<think>"), Some(151648));
    let the = tok.token_to_id("Ġthe").unwrap();
    assert_eq!(tok.id_to_piece(the), Some("Ġthe"));
    let (ids, pieces) = tok.encode_with_pieces("Hello world", true).unwrap();
    assert_eq!(ids.len(), pieces.len());
    assert_eq!(pieces[0], "<｜begin▁of▁sentence｜>");
    assert_eq!(pieces[2], "Ġworld");
    let (l2, _) = load("llama2ish");
    assert_eq!(l2.bos_id(), Some(1));
    assert_eq!(l2.id_to_piece(3 + 0x41), Some("<0x41>"));
}

/// Long inputs must not be quadratic: each of these is large enough that an O(n^2) merge loop
/// or whitespace matcher would take minutes. Only correctness is asserted (round trip).
#[test]
fn long_word_and_whitespace_runs() {
    for name in ["qwen2", "smollm2", "llama2ish", "llama3ish"] {
        let (tok, _) = load(name);
        let word: String = "abcdefghij".repeat(20_000); // 200 kB, one pre-token
        let ids = tok.encode(&word, false).unwrap();
        assert_eq!(
            tok.decode(&ids, false).unwrap().trim_start(),
            word,
            "{name}: long word"
        );
        let spaces = " ".repeat(100_000) + "x" + &"\n".repeat(50_000) + &"\t ".repeat(50_000);
        let ids = tok.encode(&spaces, false).unwrap();
        let back = tok.decode(&ids, false).unwrap();
        // SentencePiece-style decoders strip the one space their normalizer prepends.
        assert_eq!(back, spaces, "{name}: whitespace run");
        let digits = "7".repeat(100_000);
        let ids = tok.encode(&digits, false).unwrap();
        assert_eq!(
            tok.decode(&ids, false).unwrap(),
            digits,
            "{name}: digit run"
        );
    }
}

/// Streaming equals full decoding for arbitrary id sequences too (byte tokens that split
/// characters, invalid UTF-8, specials anywhere), not just for encodings of real text.
#[test]
fn stream_equals_decode_on_random_ids() {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        // splitmix64
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    for name in [
        "qwen2",
        "smollm2",
        "gpt2ish",
        "llama3ish",
        "llama2ish",
        "mistralish",
    ] {
        let (tok, _) = load(name);
        let n = tok.vocab_size() as u64;
        for round in 0..200 {
            let len = (next() % 40) as usize;
            let ids: Vec<u32> = (0..len)
                .map(|_| match next() % 4 {
                    // Low ids: byte tokens (<0xNN>) and single bytes in byte-level vocabularies.
                    0 => (next() % 300.min(n)) as u32,
                    _ => (next() % n) as u32,
                })
                .collect();
            for skip in [false, true] {
                let full = tok.decode(&ids, skip).unwrap();
                let mut stream = tok.decode_stream(skip);
                let mut s = String::new();
                for &id in &ids {
                    if let Some(p) = stream.step(id).unwrap() {
                        assert!(!p.is_empty());
                        s.push_str(&p);
                    }
                }
                s.extend(stream.flush());
                assert_eq!(s, full, "{name} round {round} skip={skip}: ids {ids:?}");
            }
        }
    }
}

/// A multi-byte character split across byte tokens is held back until complete.
#[test]
fn stream_holds_partial_characters() {
    let (tok, _) = load("llama2ish");
    // "é" = C3 A9 through byte fallback, then a normal token.
    let ids = [3 + 0xC3, 3 + 0xA9];
    let mut st = tok.decode_stream(false);
    assert_eq!(st.step(ids[0]).unwrap(), None);
    assert_eq!(st.step(ids[1]).unwrap(), None); // a byte run ends only at a non-byte token
    let e = tok.encode("e", false).unwrap();
    let tail = st.step(*e.last().unwrap()).unwrap().unwrap();
    assert!(tail.starts_with("é"), "{tail:?}");
    let (q, _) = load("qwen2");
    let ids = q.encode("日本", false).unwrap();
    let mut st = q.decode_stream(false);
    let mut out = String::new();
    for id in ids {
        if let Some(p) = st.step(id).unwrap() {
            assert!(
                !p.contains('\u{FFFD}'),
                "emitted a partial character: {p:?}"
            );
            out.push_str(&p);
        }
    }
    out.extend(st.flush());
    assert_eq!(out, "日本");
}

#[test]
fn tokenizer_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Tokenizer>();
}

/// Arbitrary Unicode (any scalar value, mixed with ASCII, spaces and special-token text)
/// encodes without panicking and decodes back to the input (NFC-normalized for Qwen2).
#[test]
fn random_text_round_trips() {
    let mut state = 0x1234_5678_9ABC_DEF0u64;
    let mut next = move || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    for name in [
        "qwen2",
        "smollm2",
        "llama3ish",
        "qwen35ish",
        "tekkenish",
        "gpt4oish",
        "llama2ish",
    ] {
        let (tok, _) = load(name);
        let nfc = name == "qwen2";
        for _ in 0..300 {
            let len = (next() % 30) as usize;
            let mut s = String::new();
            for _ in 0..len {
                let c = match next() % 6 {
                    // Planes 0-3 and no C0 controls: SmolLM2's vocabulary lacks the byte tokens
                    // for lead bytes F1.. and some controls, which tokenizers (and we) drop.
                    0 => char::from_u32((next() % 0x4_0000) as u32),
                    1 => char::from_u32(0x80 + (next() % 0x3000) as u32),
                    2 => Some([' ', '\n', '\t', '\r', '\''][(next() % 5) as usize]),
                    _ => char::from_u32(0x20 + (next() % 0x5F) as u32),
                };
                if let Some(c) = c {
                    s.push(c);
                }
            }
            if next() % 10 == 0 {
                s.push_str("<|im_start|>");
            }
            let ids = tok.encode(&s, false).unwrap();
            let back = tok.decode(&ids, false).unwrap();
            if nfc && back != s {
                // Only acceptable if NFC changed the text: then re-encoding the result is stable.
                let again = tok
                    .decode(&tok.encode(&back, false).unwrap(), false)
                    .unwrap();
                assert_eq!(again, back, "{name}: {s:?}");
                continue;
            }
            assert_eq!(back, s, "{name}: round trip of {s:?}");
        }
    }
}
