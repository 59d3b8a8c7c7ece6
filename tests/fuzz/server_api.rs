//! Fuzz target `server_api`: request bodies of `minfer serve` (`minfer::server::parse_request`,
//! both endpoints). Properties: an error is a 400 whose message is not empty and, when it names
//! a parameter, names one the request could hold; an accepted request holds only values the
//! server can run (sampling settings valid, stop strings within the limits, a non-empty prompt).

use std::sync::Arc;

use minfer::server::{parse_request, Endpoint, Prompt};

use crate::engine::{campaign, Outcome, Target};
use crate::json_mut;

const DICT: &[&str] = &[
    "model",
    "messages",
    "role",
    "content",
    "system",
    "developer",
    "user",
    "assistant",
    "tool",
    "type",
    "text",
    "image_url",
    "prompt",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "repetition_penalty",
    "presence_penalty",
    "frequency_penalty",
    "seed",
    "stop",
    "stream",
    "stream_options",
    "include_usage",
    "logprobs",
    "top_logprobs",
    "n",
    "echo",
    "best_of",
    "suffix",
    "ignore_eos",
    "user",
];

const FIELDS: &[&str] = &[
    "model",
    "messages",
    "prompt",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "repetition_penalty",
    "presence_penalty",
    "frequency_penalty",
    "seed",
    "stop",
    "stream",
    "stream_options",
    "logprobs",
    "top_logprobs",
    "n",
    "echo",
    "best_of",
    "suffix",
    "ignore_eos",
];

fn run(bytes: &[u8]) -> Outcome {
    let mut shapes = Vec::new();
    for endpoint in [Endpoint::Chat, Endpoint::Completions] {
        match parse_request(endpoint, bytes) {
            Err(e) => {
                if e.status != 400 || e.message.is_empty() {
                    return Err(format!("{endpoint:?}: bad error {e}"));
                }
                if let Some(p) = &e.param {
                    let root = p.split(['.', '[']).next().unwrap_or("");
                    if !FIELDS.contains(&root) {
                        return Err(format!("{endpoint:?}: param {p:?} is not a request field"));
                    }
                }
                shapes.push(format!("{endpoint:?}: 400 {}", e.param.unwrap_or_default()));
            }
            Ok(r) => {
                if r.sampling.validate().is_err() {
                    return Err(format!(
                        "{endpoint:?}: accepted invalid sampling {:?}",
                        r.sampling
                    ));
                }
                let empty = match &r.prompt {
                    Prompt::Chat(m) => m.is_empty(),
                    Prompt::Text(t) => t.is_empty(),
                    Prompt::Ids(ids) => ids.is_empty(),
                };
                if empty || r.stop.len() > 4 || r.stop.iter().any(String::is_empty) {
                    return Err(format!("{endpoint:?}: accepted {r:?}"));
                }
                if r.max_tokens == Some(0) || r.logprobs.is_some_and(|k| k > 20) {
                    return Err(format!("{endpoint:?}: accepted {r:?}"));
                }
                shapes.push(format!("{endpoint:?}: ok"));
            }
        }
    }
    Ok(shapes.join(" | "))
}

fn seeds() -> Vec<Vec<u8>> {
    [
        r#"{"model":"m","messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"Hi"}],"max_tokens":16,"temperature":0.7,"top_p":0.9,"seed":1,"stop":["\n"],"stream":true,"stream_options":{"include_usage":true}}"#,
        r#"{"messages":[{"role":"user","content":[{"type":"text","text":"Hi"}]}],"logprobs":true,"top_logprobs":2,"presence_penalty":0.5,"frequency_penalty":0.5,"top_k":40,"min_p":0.05,"repetition_penalty":1.1}"#,
        r#"{"prompt":"Once upon a time","max_tokens":8,"logprobs":2,"stop":"."}"#,
        r#"{"prompt":[1,2,3],"max_completion_tokens":4,"n":1,"echo":false}"#,
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect()
}

/// The campaign (registered as the test `server_api` in main.rs, so `--exact server_api` finds it).
pub fn campaign_server_api() {
    campaign(Target {
        name: "server_api",
        seeds: seeds(),
        mutate: |rng, d, o| json_mut::mutate_text(rng, d, o, DICT),
        run: Arc::new(run),
    });
}
