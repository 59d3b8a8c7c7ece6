//! The OpenAI request and response shapes: request bodies parsed and validated into a typed
//! [`Request`] by one pure function ([`parse_request`], bytes in, no I/O, fuzzed in
//! tests/fuzz/server_api.rs), errors as OpenAI error objects ([`ApiError`]), and the JSON of
//! responses and stream chunks. Nothing here touches the model or the network.
//!
//! Unknown fields are ignored (clients send many: `user`, `metadata`, ...); a known field of the
//! wrong type or out of range is a 400 naming it.

use serde_json::{json, Map, Value};

use crate::sampler::SamplerConfig;
use crate::tokenizer::ChatMessage;

/// The most stop strings a request may give (the OpenAI limit).
pub const MAX_STOP: usize = 4;
/// The most alternatives per position `top_logprobs` may ask for (the OpenAI limit).
pub const MAX_TOP_LOGPROBS: usize = 20;

/// An error as the OpenAI API returns it: an HTTP status and
/// `{"error": {"message", "type", "param", "code"}}`.
#[derive(Clone, Debug, PartialEq)]
pub struct ApiError {
    /// HTTP status (400, 404, 500, 503).
    pub status: u16,
    /// What is wrong, for people.
    pub message: String,
    /// "invalid_request_error", "server_error", ...
    pub kind: &'static str,
    /// The request field at fault, if one is.
    pub param: Option<String>,
    /// A machine-readable code ("model_not_found", "context_length_exceeded", ...).
    pub code: Option<&'static str>,
}

impl ApiError {
    /// 400: `param` is wrong.
    pub fn invalid(param: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            status: 400,
            message: message.into(),
            kind: "invalid_request_error",
            param: Some(param.to_string()),
            code: None,
        }
    }

    /// 400 about the request as a whole (malformed JSON, body too large).
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError {
            status: 400,
            message: message.into(),
            kind: "invalid_request_error",
            param: None,
            code: None,
        }
    }

    /// 404 for a model this server does not serve.
    pub fn model_not_found(name: &str) -> ApiError {
        ApiError {
            status: 404,
            message: format!("The model `{name}` does not exist"),
            kind: "invalid_request_error",
            param: Some("model".into()),
            code: Some("model_not_found"),
        }
    }

    /// 404 for an unknown path.
    pub fn not_found(path: &str) -> ApiError {
        ApiError {
            status: 404,
            message: format!("no endpoint {path}"),
            kind: "invalid_request_error",
            param: None,
            code: Some("not_found"),
        }
    }

    /// 503: the waiting queue is full (sent with Retry-After).
    pub fn overloaded(waiting: usize) -> ApiError {
        ApiError {
            status: 503,
            message: format!("the server is busy ({waiting} requests waiting); retry later"),
            kind: "server_error",
            param: None,
            code: Some("overloaded"),
        }
    }

    /// 500: something failed on our side while serving the request.
    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError {
            status: 500,
            message: message.into(),
            kind: "server_error",
            param: None,
            code: None,
        }
    }

    /// With a code.
    pub fn with_code(mut self, code: &'static str) -> ApiError {
        self.code = Some(code);
        self
    }

    /// The JSON body.
    pub fn to_json(&self) -> Value {
        json!({"error": {
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": self.code,
        }})
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status, self.message)?;
        if let Some(p) = &self.param {
            write!(f, " (param {p})")?;
        }
        Ok(())
    }
}

/// Which endpoint a body was sent to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// POST /v1/chat/completions
    Chat,
    /// POST /v1/completions
    Completions,
}

/// What to continue.
#[derive(Clone, Debug, PartialEq)]
pub enum Prompt {
    /// Chat messages, rendered with the model's chat template.
    Chat(Vec<ChatMessage>),
    /// Text, tokenized with the tokenizer's special tokens (BOS).
    Text(String),
    /// Token ids as given.
    Ids(Vec<u32>),
}

/// A validated completion request, either endpoint.
#[derive(Clone, Debug, PartialEq)]
pub struct Request {
    /// Which endpoint (response shape).
    pub endpoint: Endpoint,
    /// The `model` field, if given.
    pub model: Option<String>,
    /// The prompt or messages.
    pub prompt: Prompt,
    /// max_completion_tokens, else max_tokens; None = up to the context.
    pub max_tokens: Option<usize>,
    /// Sampling settings (seed None in the request: a fresh one per request).
    pub sampling: SamplerConfig,
    /// Whether the request fixed the seed.
    pub seeded: bool,
    /// Stop strings (not included in the output).
    pub stop: Vec<String>,
    /// Server-sent events instead of one JSON body.
    pub stream: bool,
    /// stream_options.include_usage: a last chunk with the usage.
    pub include_usage: bool,
    /// Log-probabilities of the chosen tokens, with this many alternatives each.
    pub logprobs: Option<usize>,
    /// Extension: keep generating past the model's end-of-sequence token.
    pub ignore_eos: bool,
}

/// Parse and validate a request body for `endpoint`. Pure: bytes in, a typed request or an
/// OpenAI-style 400 error naming the field out. Never panics (fuzzed).
pub fn parse_request(endpoint: Endpoint, body: &[u8]) -> Result<Request, ApiError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the body is not valid JSON: {e}")))?;
    let Value::Object(o) = v else {
        return Err(ApiError::bad_request("the body must be a JSON object"));
    };
    let model = opt_str(&o, "model")?.map(str::to_string);
    let prompt = match endpoint {
        Endpoint::Chat => Prompt::Chat(messages(&o)?),
        Endpoint::Completions => completion_prompt(&o)?,
    };
    if let Some(n) = opt_uint(&o, "n")? {
        if n != 1 {
            return Err(ApiError::invalid("n", "only n = 1 is supported"));
        }
    }
    if endpoint == Endpoint::Completions {
        if opt_bool(&o, "echo")? == Some(true) {
            return Err(ApiError::invalid("echo", "echo is not supported"));
        }
        if let Some(b) = opt_uint(&o, "best_of")? {
            if b != 1 {
                return Err(ApiError::invalid(
                    "best_of",
                    "only best_of = 1 is supported",
                ));
            }
        }
        if opt_str(&o, "suffix")?.is_some_and(|s| !s.is_empty()) {
            return Err(ApiError::invalid("suffix", "suffix is not supported"));
        }
    }
    let max_tokens = match opt_uint(&o, "max_completion_tokens")? {
        Some(n) => Some(("max_completion_tokens", n)),
        None => opt_uint(&o, "max_tokens")?.map(|n| ("max_tokens", n)),
    };
    if let Some((field, 0)) = max_tokens {
        return Err(ApiError::invalid(
            field,
            format!("{field} must be at least 1"),
        ));
    }
    let max_tokens = max_tokens.map(|(_, n)| n as usize);

    let d = SamplerConfig::default();
    let temperature = opt_num(&o, "temperature")?.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::invalid(
            "temperature",
            "temperature must be in [0, 2]",
        ));
    }
    let top_p = opt_num(&o, "top_p")?.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::invalid("top_p", "top_p must be in (0, 1]"));
    }
    let penalty = |name: &str| -> Result<f64, ApiError> {
        let p = opt_num(&o, name)?.unwrap_or(0.0);
        if !(-2.0..=2.0).contains(&p) {
            return Err(ApiError::invalid(
                name,
                format!("{name} must be in [-2, 2]"),
            ));
        }
        Ok(p)
    };
    let presence_penalty = penalty("presence_penalty")?;
    let frequency_penalty = penalty("frequency_penalty")?;
    let top_k = match o.get("top_k") {
        None | Some(Value::Null) => 0,
        Some(v) => match v.as_i64() {
            Some(-1) | Some(0) => 0, // -1 is vLLM's "off"
            Some(k) if k > 0 => k as usize,
            _ => {
                return Err(ApiError::invalid(
                    "top_k",
                    "top_k must be an integer ≥ 0 (or -1 for off)",
                ))
            }
        },
    };
    let min_p = opt_num(&o, "min_p")?.unwrap_or(0.0);
    if !(0.0..=1.0).contains(&min_p) {
        return Err(ApiError::invalid("min_p", "min_p must be in [0, 1]"));
    }
    let repetition_penalty = opt_num(&o, "repetition_penalty")?.unwrap_or(1.0);
    if !(repetition_penalty > 0.0 && repetition_penalty <= 10.0) {
        return Err(ApiError::invalid(
            "repetition_penalty",
            "repetition_penalty must be in (0, 10]",
        ));
    }
    let seed = match o.get("seed") {
        None | Some(Value::Null) => None,
        Some(v) => match (v.as_u64(), v.as_i64()) {
            (Some(s), _) => Some(s),
            (None, Some(s)) => Some(s as u64), // negative seeds: their two's complement
            _ => return Err(ApiError::invalid("seed", "seed must be an integer")),
        },
    };
    let sampling = SamplerConfig {
        temperature: temperature as f32,
        top_k,
        top_p: top_p as f32,
        min_p: min_p as f32,
        repetition_penalty: repetition_penalty as f32,
        presence_penalty: presence_penalty as f32,
        frequency_penalty: frequency_penalty as f32,
        seed: seed.unwrap_or(d.seed),
    };
    // Again after the conversion to f32: a tiny positive top_p or repetition_penalty rounds to
    // 0 (found by the server_api fuzz target).
    if let Err(e) = sampling.validate() {
        return Err(match e {
            crate::Error::InvalidOption { field, reason, .. } => {
                ApiError::invalid(field, format!("{field} {reason}"))
            }
            other => ApiError::bad_request(other.to_string()),
        });
    }

    let stop = match o.get("stop") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => {
            if a.len() > MAX_STOP {
                return Err(ApiError::invalid(
                    "stop",
                    format!("stop takes at most {MAX_STOP} strings"),
                ));
            }
            let mut out = Vec::new();
            for s in a {
                match s {
                    Value::String(s) => out.push(s.clone()),
                    _ => {
                        return Err(ApiError::invalid(
                            "stop",
                            "stop must be a string or an array of strings",
                        ))
                    }
                }
            }
            out
        }
        Some(_) => {
            return Err(ApiError::invalid(
                "stop",
                "stop must be a string or an array of strings",
            ))
        }
    };
    if stop.iter().any(String::is_empty) {
        return Err(ApiError::invalid("stop", "stop strings must not be empty"));
    }

    let stream = opt_bool(&o, "stream")?.unwrap_or(false);
    let include_usage = match o.get("stream_options") {
        None | Some(Value::Null) => false,
        Some(Value::Object(so)) => {
            if !stream {
                return Err(ApiError::invalid(
                    "stream_options",
                    "stream_options is only allowed when stream is true",
                ));
            }
            match so.get("include_usage") {
                None | Some(Value::Null) => false,
                Some(Value::Bool(b)) => *b,
                Some(_) => {
                    return Err(ApiError::invalid(
                        "stream_options.include_usage",
                        "stream_options.include_usage must be a boolean",
                    ))
                }
            }
        }
        Some(_) => {
            return Err(ApiError::invalid(
                "stream_options",
                "stream_options must be an object",
            ))
        }
    };

    let logprobs = match endpoint {
        Endpoint::Chat => {
            let on = opt_bool(&o, "logprobs")?.unwrap_or(false);
            let top = opt_uint(&o, "top_logprobs")?;
            match (on, top) {
                (false, Some(_)) => {
                    return Err(ApiError::invalid(
                        "top_logprobs",
                        "top_logprobs needs logprobs: true",
                    ))
                }
                (false, None) => None,
                (true, t) => Some(t.unwrap_or(0) as usize),
            }
        }
        // The legacy endpoint: `logprobs` is the number of alternatives.
        Endpoint::Completions => opt_uint(&o, "logprobs")?.map(|n| n as usize),
    };
    if let Some(k) = logprobs {
        if k > MAX_TOP_LOGPROBS {
            let field = match endpoint {
                Endpoint::Chat => "top_logprobs",
                Endpoint::Completions => "logprobs",
            };
            return Err(ApiError::invalid(
                field,
                format!("{field} must be at most {MAX_TOP_LOGPROBS}"),
            ));
        }
    }
    let ignore_eos = opt_bool(&o, "ignore_eos")?.unwrap_or(false);

    Ok(Request {
        endpoint,
        model,
        prompt,
        max_tokens,
        sampling,
        seeded: seed.is_some(),
        stop,
        stream,
        include_usage,
        logprobs,
        ignore_eos,
    })
}

fn type_error(field: &str, what: &str) -> ApiError {
    ApiError::invalid(field, format!("{field} must be {what}"))
}

fn opt_str<'a>(o: &'a Map<String, Value>, field: &str) -> Result<Option<&'a str>, ApiError> {
    match o.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(type_error(field, "a string")),
    }
}

fn opt_bool(o: &Map<String, Value>, field: &str) -> Result<Option<bool>, ApiError> {
    match o.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(type_error(field, "a boolean")),
    }
}

fn opt_uint(o: &Map<String, Value>, field: &str) -> Result<Option<u64>, ApiError> {
    match o.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .map(Some)
            .ok_or_else(|| type_error(field, "a non-negative integer")),
    }
}

fn opt_num(o: &Map<String, Value>, field: &str) -> Result<Option<f64>, ApiError> {
    match o.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_f64()
            .filter(|x| x.is_finite())
            .map(Some)
            .ok_or_else(|| type_error(field, "a number")),
    }
}

fn messages(o: &Map<String, Value>) -> Result<Vec<ChatMessage>, ApiError> {
    let list = match o.get("messages") {
        None | Some(Value::Null) => {
            return Err(ApiError::invalid("messages", "messages is required"))
        }
        Some(Value::Array(a)) => a,
        Some(_) => return Err(type_error("messages", "an array of messages")),
    };
    if list.is_empty() {
        return Err(ApiError::invalid(
            "messages",
            "messages must hold at least one message",
        ));
    }
    let mut out = Vec::with_capacity(list.len());
    for (i, m) in list.iter().enumerate() {
        let Value::Object(m) = m else {
            return Err(type_error(&format!("messages[{i}]"), "an object"));
        };
        let role = match m.get("role") {
            Some(Value::String(r)) => r.as_str(),
            Some(_) => return Err(type_error(&format!("messages[{i}].role"), "a string")),
            None => {
                return Err(ApiError::invalid(
                    &format!("messages[{i}].role"),
                    format!("messages[{i}].role is required"),
                ))
            }
        };
        let role = match role {
            "system" | "user" | "assistant" | "tool" => role,
            // The newer name of the system role.
            "developer" => "system",
            _ => {
                return Err(ApiError::invalid(
                    &format!("messages[{i}].role"),
                    format!(
                        "messages[{i}].role must be system, developer, user, assistant or tool, not {role:?}"
                    ),
                ))
            }
        };
        let field = format!("messages[{i}].content");
        let content = match m.get("content") {
            Some(Value::String(s)) => s.clone(),
            // An assistant turn that only called tools has no content.
            None | Some(Value::Null) if role == "assistant" => String::new(),
            None | Some(Value::Null) => {
                return Err(ApiError::invalid(&field, format!("{field} is required")))
            }
            Some(Value::Array(parts)) => {
                let mut text = String::new();
                for (j, p) in parts.iter().enumerate() {
                    let pf = format!("{field}[{j}]");
                    let Value::Object(p) = p else {
                        return Err(type_error(&pf, "an object"));
                    };
                    match (p.get("type"), p.get("text")) {
                        (Some(Value::String(t)), Some(Value::String(s))) if t == "text" => {
                            text.push_str(s)
                        }
                        (Some(Value::String(t)), _) if t != "text" => {
                            return Err(ApiError::invalid(
                                &format!("{pf}.type"),
                                format!("only text content parts are supported, not {t:?}"),
                            ))
                        }
                        _ => {
                            return Err(ApiError::invalid(
                                &pf,
                                format!("{pf} must be {{\"type\": \"text\", \"text\": string}}"),
                            ))
                        }
                    }
                }
                text
            }
            Some(_) => {
                return Err(type_error(
                    &field,
                    "a string or an array of text content parts",
                ))
            }
        };
        out.push(ChatMessage::new(role, content));
    }
    Ok(out)
}

fn completion_prompt(o: &Map<String, Value>) -> Result<Prompt, ApiError> {
    const WHAT: &str = "a string, an array of one string, or an array of token ids";
    let ids = |a: &[Value]| -> Option<Vec<u32>> {
        a.iter()
            .map(|x| x.as_u64().and_then(|t| u32::try_from(t).ok()))
            .collect()
    };
    let p = match o.get("prompt") {
        None | Some(Value::Null) => return Err(ApiError::invalid("prompt", "prompt is required")),
        Some(Value::String(s)) => Prompt::Text(s.clone()),
        Some(Value::Array(a)) => match a.as_slice() {
            [Value::String(s)] => Prompt::Text(s.clone()),
            [Value::Array(inner)] => {
                Prompt::Ids(ids(inner).ok_or_else(|| type_error("prompt", WHAT))?)
            }
            a if a.len() > 1 && a.iter().all(|x| x.is_string() || x.is_array()) => {
                return Err(ApiError::invalid(
                    "prompt",
                    "one prompt per request is supported",
                ))
            }
            a => Prompt::Ids(ids(a).ok_or_else(|| type_error("prompt", WHAT))?),
        },
        Some(_) => return Err(type_error("prompt", WHAT)),
    };
    let empty = match &p {
        Prompt::Text(s) => s.is_empty(),
        Prompt::Ids(v) => v.is_empty(),
        Prompt::Chat(_) => false,
    };
    if empty {
        return Err(ApiError::invalid("prompt", "prompt must not be empty"));
    }
    Ok(p)
}

// ---- responses ---------------------------------------------------------------------------------

/// Why a choice ended, as the API names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finish {
    /// End of sequence or a stop string.
    Stop,
    /// max_tokens or the context reached.
    Length,
}

impl Finish {
    /// "stop" or "length".
    pub fn as_str(self) -> &'static str {
        match self {
            Finish::Stop => "stop",
            Finish::Length => "length",
        }
    }
}

/// Token counts of one request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Tokens in the prompt.
    pub prompt_tokens: usize,
    /// Of those, reused from the prefix cache.
    pub cached_tokens: usize,
    /// Tokens generated (the end-of-sequence token not counted).
    pub completion_tokens: usize,
}

impl Usage {
    /// The `usage` object.
    pub fn to_json(self) -> Value {
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens},
        })
    }
}

/// The log-probability of one chosen token, with the most likely alternatives.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenLogprob {
    /// The token's text.
    pub token: String,
    /// Natural log of its probability under the model (before sampling settings).
    pub logprob: f32,
    /// The most likely tokens at this position, most likely first.
    pub top: Vec<(String, f32)>,
}

/// Chat: `{"content": [...]}`; completions: `{"tokens", "token_logprobs", "top_logprobs",
/// "text_offset"}` (offsets counted from `offset0`, in bytes of the generated text).
pub fn logprobs_json(endpoint: Endpoint, lps: &[TokenLogprob], offset0: usize) -> Value {
    match endpoint {
        Endpoint::Chat => {
            let entry =
                |t: &str, lp: f32| json!({"token": t, "logprob": lp, "bytes": t.as_bytes()});
            let content: Vec<Value> = lps
                .iter()
                .map(|l| {
                    let mut e = entry(&l.token, l.logprob);
                    e["top_logprobs"] =
                        Value::Array(l.top.iter().map(|(t, lp)| entry(t, *lp)).collect());
                    e
                })
                .collect();
            json!({ "content": content })
        }
        Endpoint::Completions => {
            let mut offset = offset0;
            let mut offsets = Vec::with_capacity(lps.len());
            for l in lps {
                offsets.push(offset);
                offset += l.token.len();
            }
            json!({
                "tokens": lps.iter().map(|l| l.token.as_str()).collect::<Vec<_>>(),
                "token_logprobs": lps.iter().map(|l| l.logprob).collect::<Vec<_>>(),
                "top_logprobs": lps.iter().map(|l| {
                    let m: Map<String, Value> =
                        l.top.iter().map(|(t, lp)| (t.clone(), json!(lp))).collect();
                    Value::Object(m)
                }).collect::<Vec<_>>(),
                "text_offset": offsets,
            })
        }
    }
}

/// Identity of one response: the same in every chunk of a stream.
#[derive(Clone, Debug)]
pub struct ResponseMeta {
    /// "chatcmpl-..." or "cmpl-...".
    pub id: String,
    /// Unix seconds.
    pub created: u64,
    /// The served model's name.
    pub model: String,
    /// Which endpoint.
    pub endpoint: Endpoint,
}

impl ResponseMeta {
    fn object(&self, chunk: bool) -> &'static str {
        match (self.endpoint, chunk) {
            (Endpoint::Chat, false) => "chat.completion",
            (Endpoint::Chat, true) => "chat.completion.chunk",
            (Endpoint::Completions, _) => "text_completion",
        }
    }

    fn base(&self, chunk: bool) -> Value {
        json!({
            "id": self.id,
            "object": self.object(chunk),
            "created": self.created,
            "model": self.model,
            "system_fingerprint": SYSTEM_FINGERPRINT,
        })
    }

    /// The whole response of a non-streaming request.
    pub fn response(
        &self,
        text: &str,
        finish: Finish,
        usage: &Usage,
        logprobs: Option<&[TokenLogprob]>,
    ) -> Value {
        let lp = logprobs
            .map(|l| logprobs_json(self.endpoint, l, 0))
            .unwrap_or(Value::Null);
        let choice = match self.endpoint {
            Endpoint::Chat => json!({
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": lp,
                "finish_reason": finish.as_str(),
            }),
            Endpoint::Completions => json!({
                "index": 0,
                "text": text,
                "logprobs": lp,
                "finish_reason": finish.as_str(),
            }),
        };
        let mut v = self.base(false);
        v["choices"] = json!([choice]);
        v["usage"] = usage.to_json();
        v
    }

    /// One stream chunk. Chat: `role` goes in the first chunk's delta; `text` None with a
    /// finish reason is the last content chunk (empty delta).
    pub fn chunk(
        &self,
        role: bool,
        text: Option<&str>,
        finish: Option<Finish>,
        logprobs: Option<Value>,
        with_usage_field: bool,
    ) -> Value {
        let choice = match self.endpoint {
            Endpoint::Chat => {
                let mut delta = Map::new();
                if role {
                    delta.insert("role".into(), json!("assistant"));
                }
                if let Some(t) = text {
                    delta.insert("content".into(), json!(t));
                }
                json!({
                    "index": 0,
                    "delta": delta,
                    "logprobs": logprobs.unwrap_or(Value::Null),
                    "finish_reason": finish.map(Finish::as_str),
                })
            }
            Endpoint::Completions => json!({
                "index": 0,
                "text": text.unwrap_or(""),
                "logprobs": logprobs.unwrap_or(Value::Null),
                "finish_reason": finish.map(Finish::as_str),
            }),
        };
        let mut v = self.base(true);
        v["choices"] = json!([choice]);
        if with_usage_field {
            v["usage"] = Value::Null;
        }
        v
    }

    /// The last chunk when stream_options.include_usage: no choices, the usage.
    pub fn usage_chunk(&self, usage: &Usage) -> Value {
        let mut v = self.base(true);
        v["choices"] = json!([]);
        v["usage"] = usage.to_json();
        v
    }
}

/// Reported in every response (OpenAI's field for the backend configuration).
pub const SYSTEM_FINGERPRINT: &str = concat!("minfer-", env!("CARGO_PKG_VERSION"));

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(body: &str) -> Result<Request, ApiError> {
        parse_request(Endpoint::Chat, body.as_bytes())
    }

    fn param(r: Result<Request, ApiError>) -> Option<String> {
        let e = r.unwrap_err();
        assert_eq!(e.status, 400, "{e}");
        e.param
    }

    #[test]
    fn a_full_chat_request_parses() {
        let r = chat(
            r#"{"model":"m","messages":[{"role":"developer","content":"be brief"},
            {"role":"user","content":[{"type":"text","text":"hi "},{"type":"text","text":"there"}]}],
            "max_tokens":5,"max_completion_tokens":7,"temperature":0.5,"top_p":0.9,"seed":-1,
            "stop":["a","b"],"presence_penalty":0.5,"frequency_penalty":-0.5,"logprobs":true,
            "top_logprobs":3,"top_k":40,"min_p":0.05,"repetition_penalty":1.1,"stream":true,
            "stream_options":{"include_usage":true},"user":"ignored","n":1}"#,
        )
        .unwrap();
        assert_eq!(r.model.as_deref(), Some("m"));
        assert_eq!(
            r.prompt,
            Prompt::Chat(vec![
                ChatMessage::new("system", "be brief"),
                ChatMessage::new("user", "hi there")
            ])
        );
        assert_eq!(r.max_tokens, Some(7));
        assert_eq!(r.sampling.seed, u64::MAX);
        assert!(r.seeded);
        assert_eq!(r.sampling.top_k, 40);
        assert_eq!(r.sampling.presence_penalty, 0.5);
        assert_eq!(r.stop, ["a", "b"]);
        assert_eq!(r.logprobs, Some(3));
        assert!(r.stream && r.include_usage);
    }

    #[test]
    fn completion_prompts() {
        let p = |b: &str| parse_request(Endpoint::Completions, b.as_bytes()).map(|r| r.prompt);
        assert_eq!(p(r#"{"prompt":"hi"}"#).unwrap(), Prompt::Text("hi".into()));
        assert_eq!(
            p(r#"{"prompt":["hi"]}"#).unwrap(),
            Prompt::Text("hi".into())
        );
        assert_eq!(p(r#"{"prompt":[1,2]}"#).unwrap(), Prompt::Ids(vec![1, 2]));
        assert_eq!(p(r#"{"prompt":[[1,2]]}"#).unwrap(), Prompt::Ids(vec![1, 2]));
        for bad in [
            r#"{"prompt":""}"#,
            r#"{"prompt":[]}"#,
            r#"{"prompt":["a","b"]}"#,
            r#"{"prompt":[1,-2]}"#,
            r#"{"prompt":[1.5]}"#,
            r#"{"prompt":[4294967296]}"#,
            r#"{"prompt":7}"#,
            r#"{}"#,
        ] {
            assert_eq!(
                param(p(bad).map(|_| unreachable!())),
                Some("prompt".into()),
                "{bad}"
            );
        }
    }

    #[test]
    fn every_bad_field_is_named() {
        let cases = [
            (r#"{"messages":[]}"#, "messages"),
            (r#"{}"#, "messages"),
            (r#"{"messages":"hi"}"#, "messages"),
            (r#"{"messages":[3]}"#, "messages[0]"),
            (r#"{"messages":[{"content":"x"}]}"#, "messages[0].role"),
            (
                r#"{"messages":[{"role":"wizard","content":"x"}]}"#,
                "messages[0].role",
            ),
            (r#"{"messages":[{"role":"user"}]}"#, "messages[0].content"),
            (
                r#"{"messages":[{"role":"user","content":5}]}"#,
                "messages[0].content",
            ),
            (
                r#"{"messages":[{"role":"user","content":[{"type":"image_url"}]}]}"#,
                "messages[0].content[0].type",
            ),
        ];
        let m = r#""messages":[{"role":"user","content":"x"}]"#;
        let field_cases = [
            (r#""model":3"#, "model"),
            (r#""max_tokens":"5""#, "max_tokens"),
            (r#""max_tokens":0"#, "max_tokens"),
            (r#""max_tokens":-1"#, "max_tokens"),
            (r#""max_tokens":2.5"#, "max_tokens"),
            (r#""max_completion_tokens":0"#, "max_completion_tokens"),
            (r#""temperature":"hot""#, "temperature"),
            (r#""temperature":3"#, "temperature"),
            (r#""top_p":0"#, "top_p"),
            (r#""top_k":-2"#, "top_k"),
            (r#""top_k":1.5"#, "top_k"),
            (r#""min_p":2"#, "min_p"),
            (r#""repetition_penalty":0"#, "repetition_penalty"),
            (r#""repetition_penalty":1e-300"#, "repetition_penalty"),
            (r#""top_p":1e-300"#, "top_p"),
            (r#""presence_penalty":3"#, "presence_penalty"),
            (r#""frequency_penalty":"x""#, "frequency_penalty"),
            (r#""seed":"x""#, "seed"),
            (r#""seed":1.5"#, "seed"),
            (r#""stop":5"#, "stop"),
            (r#""stop":["a","b","c","d","e"]"#, "stop"),
            (r#""stop":[""]"#, "stop"),
            (r#""stop":[1]"#, "stop"),
            (r#""stream":"yes""#, "stream"),
            (
                r#""stream_options":{"include_usage":true}"#,
                "stream_options",
            ),
            (
                r#""stream":true,"stream_options":{"include_usage":1}"#,
                "stream_options.include_usage",
            ),
            (r#""logprobs":1"#, "logprobs"),
            (r#""top_logprobs":2"#, "top_logprobs"),
            (r#""logprobs":true,"top_logprobs":21"#, "top_logprobs"),
            (r#""n":2"#, "n"),
        ];
        let owned: Vec<(String, &str)> = cases
            .iter()
            .map(|(b, p)| (b.to_string(), *p))
            .chain(
                field_cases
                    .iter()
                    .map(|(f, p)| (format!("{{{m},{f}}}"), *p)),
            )
            .collect();
        for (body, want) in owned {
            assert_eq!(param(chat(&body)), Some(want.to_string()), "{body}");
        }
    }

    #[test]
    fn malformed_bodies_are_400_without_a_param() {
        for bad in ["", "{", "[1]", "null", "\"x\"", "{\"messages\":[}", "\u{0}"] {
            let e = chat(bad).unwrap_err();
            assert_eq!((e.status, e.param.clone()), (400, None), "{bad:?}: {e}");
        }
    }

    #[test]
    fn the_error_object_has_the_openai_shape() {
        let v = ApiError::model_not_found("gpt-9").to_json();
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["param"], "model");
        assert_eq!(v["error"]["code"], "model_not_found");
        assert!(v["error"]["message"].as_str().unwrap().contains("gpt-9"));
    }
}
