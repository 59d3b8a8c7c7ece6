//! `minfer serve` over real HTTP on 127.0.0.1 (ephemeral ports), with the real SmolLM2 model:
//! answers equal the library's greedy generation (JSON and SSE), concurrent requests equal
//! their solo runs, a client that disconnects mid-stream frees its sequence, and every kind of
//! bad input gets the OpenAI error object. The client is std::net::TcpStream (HTTP/1.1 with
//! `Connection: close`, chunked bodies decoded here): no HTTP client dependency.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use minfer::server::{ServeOptions, Server};
use minfer::{ChatMessage, GenerateOptions, LoadOptions, Model};
use serde_json::{json, Value};

const CTX: usize = 512;

fn load(path: &Path, parallel: usize) -> Model {
    Model::load(
        path,
        &LoadOptions {
            context_len: Some(CTX),
            threads: 2,
            max_seqs: parallel,
            ..LoadOptions::default()
        },
    )
    .unwrap()
}

fn start(path: &Path, parallel: usize, max_waiting: usize) -> Server {
    start_with(path, parallel, max_waiting, true)
}

fn start_with(path: &Path, parallel: usize, max_waiting: usize, prefix_cache: bool) -> Server {
    let opts = ServeOptions {
        prefix_cache,
        port: 0,
        max_waiting,
        max_body_bytes: 64 << 10,
        ..ServeOptions::default()
    };
    Server::start(load(path, parallel), &opts).unwrap()
}

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    /// The `data:` payloads of an SSE body.
    fn events(&self) -> Vec<String> {
        self.body
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .map(str::to_string)
            .collect()
    }
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(300))).unwrap();
    s
}

fn send(s: &mut TcpStream, method: &str, path: &str, body: &[u8]) {
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    // A server may answer (400) before reading all of an oversized body and close.
    let _ = s.write_all(body);
}

fn request(addr: SocketAddr, method: &str, path: &str, body: &[u8]) -> Reply {
    let mut s = connect(addr);
    send(&mut s, method, path, body);
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a header block");
    let head = String::from_utf8(raw[..split].to_vec()).unwrap();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    if chunked {
        body = dechunk(&body);
    }
    Reply {
        status,
        headers,
        body: String::from_utf8(body).unwrap(),
    }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let eol = b
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("chunk size line");
        let size_hex = std::str::from_utf8(&b[..eol]).unwrap();
        let size = usize::from_str_radix(size_hex.split(';').next().unwrap().trim(), 16).unwrap();
        b = &b[eol + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}

fn post(addr: SocketAddr, path: &str, body: &Value) -> Reply {
    request(addr, "POST", path, body.to_string().as_bytes())
}

fn get(addr: SocketAddr, path: &str) -> Reply {
    request(addr, "GET", path, b"")
}

/// A metric's value from /metrics.
fn metric(addr: SocketAddr, line_start: &str) -> f64 {
    let r = get(addr, "/metrics");
    assert_eq!(r.status, 200);
    r.body
        .lines()
        .find_map(|l| l.strip_prefix(line_start)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{line_start} missing from\n{}", r.body))
}

/// The library's greedy answer: (text, generated ids, stopped at EOS).
fn library_greedy(model: &mut Model, prompt: &[u32], n: usize) -> (String, usize, bool) {
    model.reset();
    let out = model
        .generate_ids_as_text(
            prompt,
            &GenerateOptions {
                max_new_tokens: n,
                ..Default::default()
            },
            |_| true,
        )
        .unwrap();
    let eos = matches!(out.stats.stop, minfer::StopReason::Eos(_));
    (out.text, out.ids.len(), eos)
}

fn content_of_stream(r: &Reply, chat: bool) -> (String, Vec<Value>) {
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    let events = r.events();
    assert_eq!(
        events.last().map(String::as_str),
        Some("[DONE]"),
        "{}",
        r.body
    );
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let mut text = String::new();
    for c in &chunks {
        if let Some(choice) = c["choices"].get(0) {
            let piece = if chat {
                &choice["delta"]["content"]
            } else {
                &choice["text"]
            };
            text.push_str(piece.as_str().unwrap_or(""));
        }
    }
    (text, chunks)
}

#[test]
fn answers_equal_the_library_json_and_stream() {
    let Some(path) = common::real_model() else {
        return;
    };
    let server = start(&path, 4, 16);
    let addr = server.local_addr();
    let name = server.model_name().to_string();
    let mut model = load(&path, 1);
    let question = "What is the capital of France? Answer in one sentence.";
    let prompt = model
        .chat_prompt(&[ChatMessage::new("user", question)])
        .unwrap();
    let n = 24;
    let (want, want_n, eos) = library_greedy(&mut model, &prompt, n);
    let finish = if eos { "stop" } else { "length" };

    let body = json!({
        "model": name,
        "messages": [{"role": "user", "content": question}],
        "max_tokens": n,
        "temperature": 0,
    });
    let r = post(addr, "/v1/chat/completions", &body);
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], name.as_str());
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert!(v["created"].as_u64().unwrap() > 1_600_000_000);
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert_eq!(v["choices"][0]["message"]["content"], want.as_str());
    assert_eq!(v["choices"][0]["finish_reason"], finish);
    assert_eq!(v["usage"]["prompt_tokens"], prompt.len());
    assert_eq!(v["usage"]["completion_tokens"], want_n);
    assert_eq!(v["usage"]["total_tokens"], prompt.len() + want_n);

    // The same request streamed, with the usage chunk.
    let mut sbody = body.clone();
    sbody["stream"] = json!(true);
    sbody["stream_options"] = json!({"include_usage": true});
    let r = post(addr, "/v1/chat/completions", &sbody);
    let (text, chunks) = content_of_stream(&r, true);
    assert_eq!(text, want);
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert!(chunks
        .iter()
        .all(|c| c["object"] == "chat.completion.chunk"));
    assert!(chunks.iter().all(|c| c["id"] == chunks[0]["id"]));
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"], json!([]));
    assert_eq!(last["usage"]["completion_tokens"], want_n);
    // The same prompt again: the usage reports cached prompt tokens (0 here: exact prefix reuse
    // resumes only at a max_batch boundary or a 32-token point with 32+ rows after it, which a
    // short prompt does not have; tests/batching.rs checks the reuse itself).
    let cached = last["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64();
    assert!(
        cached.is_some_and(|c| c as usize <= prompt.len()),
        "{cached:?}"
    );
    let fin = &chunks[chunks.len() - 2];
    assert_eq!(fin["choices"][0]["finish_reason"], finish);

    // /v1/completions on raw text (tokenized with BOS, as Model::generate_text does).
    let text_prompt = "The three primary colors are";
    let ids = model
        .tokenizer()
        .unwrap()
        .encode(text_prompt, true)
        .unwrap();
    let (want, want_n, _) = library_greedy(&mut model, &ids, 16);
    let body = json!({"prompt": text_prompt, "max_tokens": 16, "temperature": 0});
    let v = post(addr, "/v1/completions", &body).json();
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["choices"][0]["text"], want.as_str());
    assert_eq!(v["usage"]["completion_tokens"], want_n);
    let mut sbody = body.clone();
    sbody["stream"] = json!(true);
    let (text, _) = content_of_stream(&post(addr, "/v1/completions", &sbody), false);
    assert_eq!(text, want);

    // A stop string taken from the middle of the answer cuts it there, and never leaks.
    let cut = want.char_indices().nth(want.chars().count() / 2).unwrap().0;
    let stop: String = want[cut..].chars().take(3).collect();
    let at = want.find(&stop).unwrap();
    let mut sbody = body.clone();
    sbody["stop"] = json!([stop, "\u{1}never"]);
    let v = post(addr, "/v1/completions", &sbody).json();
    assert_eq!(v["choices"][0]["text"], &want[..at]);
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    sbody["stream"] = json!(true);
    let (text, _) = content_of_stream(&post(addr, "/v1/completions", &sbody), false);
    assert_eq!(text, &want[..at]);

    // Log-probabilities: one entry per token; greedy picks the most likely.
    let v = post(
        addr,
        "/v1/chat/completions",
        &json!({"messages": [{"role": "user", "content": question}], "max_tokens": 6,
                "temperature": 0, "logprobs": true, "top_logprobs": 3}),
    )
    .json();
    let content = v["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert_eq!(
        content.len(),
        v["usage"]["completion_tokens"].as_u64().unwrap() as usize
    );
    for e in content {
        let top = e["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 3);
        assert_eq!(top[0]["logprob"], e["logprob"]);
        assert!(top[0]["logprob"].as_f64() >= top[1]["logprob"].as_f64());
        assert!(e["logprob"].as_f64().unwrap() <= 0.0);
    }

    // Models, health, metrics.
    let v = get(addr, "/v1/models").json();
    assert_eq!(v["data"][0]["id"], name.as_str());
    assert_eq!(get(addr, "/health").json()["status"], "ok");
    assert!(metric(addr, "minfer_requests_total{outcome=\"ok\"}") >= 7.0);
    assert!(metric(addr, "minfer_generated_tokens_total") > 0.0);
    server.shutdown().unwrap();
}

/// Prompts for the concurrency test: (question, seed; None = greedy).
fn mixed_requests() -> Vec<Value> {
    let topics = [
        "the sea", "a cat", "winter", "bread", "rivers", "the moon", "trains", "music",
    ];
    let mut v = Vec::new();
    for (i, t) in topics.iter().enumerate() {
        v.push(json!({"messages": [{"role": "user", "content": format!("Write one sentence about {t}.")}],
                      "max_tokens": 12, "temperature": 0}));
        v.push(
            json!({"messages": [{"role": "user", "content": format!("Tell me a fact about {t}.")}],
                      "max_tokens": 12, "temperature": 0.9, "top_p": 0.95, "seed": 100 + i}),
        );
    }
    v
}

/// 16 requests at once, decoded in batches of up to 7 (9 wait for a slot, then join between
/// steps): every answer, greedy or seeded, equals the same request run alone.
#[test]
fn sixteen_concurrent_requests_equal_their_solo_runs() {
    let Some(path) = common::real_model() else {
        return;
    };
    concurrent_equals_solo(&path, 7, false);
}

/// All 16 in one decode batch (this failed before the CPU matmul computed each row of a
/// batch of up to 16 exactly as a single row).
#[test]
fn sixteen_requests_in_one_batch_equal_their_solo_runs() {
    let Some(path) = common::real_model() else {
        return;
    };
    concurrent_equals_solo(&path, 16, false);
}

/// Prefix sharing on: the prompts share the chat template's system prompt. This failed while
/// a prompt resumed after any cached prefix (its remaining rows ran the batched matvec where the
/// full prompt ran the packed GEMM); the Batcher's exact prefix reuse resumes only where the rest
/// computes bit-identical values.
#[test]
fn sixteen_concurrent_requests_equal_their_solo_runs_with_prefix_sharing() {
    let Some(path) = common::real_model() else {
        return;
    };
    concurrent_equals_solo(&path, 7, true);
}

fn concurrent_equals_solo(path: &Path, parallel: usize, prefix_cache: bool) {
    let server = start_with(path, parallel, 32, prefix_cache);
    let addr = server.local_addr();
    let reqs = mixed_requests();
    let answer = |b: &Value| -> String {
        let r = post(addr, "/v1/chat/completions", b);
        assert_eq!(r.status, 200, "{}", r.body);
        r.json()["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let solo: Vec<String> = reqs.iter().map(answer).collect();
    let t0 = Instant::now();
    let together: Vec<String> = std::thread::scope(|s| {
        let hs: Vec<_> = reqs.iter().map(|b| s.spawn(move || answer(b))).collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(t0.elapsed() < Duration::from_secs(300));
    for (i, (a, b)) in solo.iter().zip(&together).enumerate() {
        assert_eq!(
            a, b,
            "parallel {parallel}, prefix cache {prefix_cache}, request {i}: {}",
            reqs[i]
        );
    }
    // Seeds matter: two sampled answers to different prompts differ from their greedy twins.
    assert!((0..8).any(|i| solo[2 * i] != solo[2 * i + 1]));
    server.shutdown().unwrap();
}

#[test]
fn a_client_that_disconnects_mid_stream_frees_its_sequence() {
    let Some(path) = common::real_model() else {
        return;
    };
    let server = start(&path, 2, 8);
    let addr = server.local_addr();
    let mut s = connect(addr);
    let body = json!({"prompt": "Once upon a time", "max_tokens": 400, "temperature": 0,
                      "ignore_eos": true, "stream": true});
    send(
        &mut s,
        "POST",
        "/v1/completions",
        body.to_string().as_bytes(),
    );
    let mut reader = BufReader::new(s);
    let mut line = String::new();
    let mut data_lines = 0;
    while data_lines < 3 {
        line.clear();
        assert!(
            reader.read_line(&mut line).unwrap() > 0,
            "stream ended early"
        );
        if line.contains("data: {") {
            data_lines += 1;
        }
    }
    assert_eq!(metric(addr, "minfer_sequences_running"), 1.0);
    drop(reader); // the client goes away mid-stream
    let t0 = Instant::now();
    while metric(addr, "minfer_requests_total{outcome=\"cancelled\"}") < 1.0 {
        assert!(t0.elapsed() < Duration::from_secs(60), "not cancelled");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(metric(addr, "minfer_sequences_running"), 0.0);
    assert_eq!(
        metric(addr, "minfer_kv_blocks_in_use"),
        0.0,
        "blocks still held"
    );
    let generated = metric(addr, "minfer_generated_tokens_total");
    assert!(generated < 400.0, "generation went on: {generated}");
    // The server still answers.
    let v = post(
        addr,
        "/v1/completions",
        &json!({"prompt": "Hello", "max_tokens": 3, "temperature": 0}),
    )
    .json();
    assert_eq!(v["usage"]["completion_tokens"], 3);
    server.shutdown().unwrap();
}

fn assert_error(r: &Reply, status: u16, param: Option<&str>) {
    assert_eq!(r.status, status, "{}", r.body);
    let v = r.json();
    let e = &v["error"];
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    assert!(e["type"].is_string(), "{v}");
    assert!(e.get("code").is_some(), "{v}");
    match param {
        Some(p) => assert_eq!(e["param"], p, "{v}"),
        None => assert!(e["param"].is_null(), "{v}"),
    }
}

#[test]
fn bad_requests_get_openai_errors() {
    let Some(path) = common::real_model() else {
        return;
    };
    let server = start(&path, 2, 8);
    let addr = server.local_addr();
    let chat = "/v1/chat/completions";
    let raw = |p: &str, b: &str| request(addr, "POST", p, b.as_bytes());
    assert_error(&raw(chat, "{\"messages\": [}"), 400, None);
    assert_error(&raw(chat, ""), 400, None);
    assert_error(&raw(chat, "[]"), 400, None);
    assert_error(&raw(chat, r#"{"messages": []}"#), 400, Some("messages"));
    assert_error(&raw(chat, r#"{"messages": "hi"}"#), 400, Some("messages"));
    let m = r#""messages": [{"role": "user", "content": "hi"}]"#;
    for (field, bad) in [
        ("max_tokens", r#""max_tokens": "ten""#),
        ("temperature", r#""temperature": "hot""#),
        ("top_p", r#""top_p": 7"#),
        ("stop", r#""stop": ["a", "b", "c", "d", "e"]"#),
        ("seed", r#""seed": 1.5"#),
        ("stream", r#""stream": 1"#),
        ("top_logprobs", r#""top_logprobs": 3"#),
        (
            "messages[0].role",
            r#""messages": [{"role": 1, "content": "x"}]"#,
        ),
    ] {
        let body = if field.starts_with("messages") {
            format!("{{{bad}}}")
        } else {
            format!("{{{m}, {bad}}}")
        };
        assert_error(&raw(chat, &body), 400, Some(field));
    }
    // Context: prompt + max_tokens over CTX names max_tokens; a prompt alone over it names
    // the prompt.
    let body = format!(r#"{{{m}, "max_tokens": {CTX}}}"#);
    let r = raw(chat, &body);
    assert_error(&r, 400, Some("max_tokens"));
    assert_eq!(r.json()["error"]["code"], "context_length_exceeded");
    let long = "word ".repeat(CTX + 10);
    let r = post(addr, "/v1/completions", &json!({"prompt": long}));
    assert_error(&r, 400, Some("prompt"));
    let r = post(
        addr,
        "/v1/completions",
        &json!({"prompt": [1, 2, 99999999]}),
    );
    assert_error(&r, 400, Some("prompt"));
    // Over the body limit (64 KiB here).
    let big = format!(r#"{{{m}, "user": "{}"}}"#, "x".repeat(100 << 10));
    assert_error(&raw(chat, &big), 400, None);
    // Unknown model and path.
    let r = raw(chat, &format!(r#"{{{m}, "model": "gpt-9"}}"#));
    assert_error(&r, 404, Some("model"));
    assert_eq!(r.json()["error"]["code"], "model_not_found");
    assert_error(&get(addr, "/v1/nothing"), 404, None);
    // Still healthy, and every rejection was counted.
    assert_eq!(get(addr, "/health").status, 200);
    assert!(metric(addr, "minfer_requests_total{outcome=\"invalid\"}") >= 18.0);
    server.shutdown().unwrap();

    // A full queue: 503 with Retry-After.
    let server = start(&path, 1, 0);
    let r = post(
        server.local_addr(),
        chat,
        &json!({"messages": [{"role": "user", "content": "hi"}]}),
    );
    assert_error(&r, 503, None);
    assert_eq!(r.header("retry-after"), Some("1"));
    server.shutdown().unwrap();
}

#[test]
fn the_cli_serves_on_an_ephemeral_port() {
    let Some(path) = common::real_model() else {
        return;
    };
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_minfer"))
        .args([
            "serve",
            path.to_str().unwrap(),
            "--port",
            "0",
            "--ctx",
            "256",
            "--threads",
            "1",
        ])
        .args(["--parallel", "2", "--alias", "smol"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    err.read_line(&mut line).unwrap();
    let addr: SocketAddr = line
        .split("http://")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .parse()
        .unwrap();
    let v = post(
        addr,
        "/v1/chat/completions",
        &json!({"model": "smol", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}),
    );
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(v.status, 200, "{}", v.body);
    assert_eq!(v.json()["model"], "smol");
}
