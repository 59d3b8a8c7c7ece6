//! Parity with the Hugging Face `tokenizers` package on recorded fixtures
//! (tests/fixtures/make_tokenizer_fixtures.py), plus streaming, scale and error tests.
//! Runs without Python: the fixtures hold the oracle's ids and decoded text.

use std::path::{Path, PathBuf};

use minfer::tokenizer::{ChatMessage, Tokenizer};
use minfer::Error;
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
fn parity_llama2ish() {
    check_parity("llama2ish");
}

#[test]
fn parity_mistralish() {
    check_parity("mistralish");
}
