//! The HTTP layer (axum): routes, request preparation (parse, model check, tokenize, length
//! check, queue bound), and turning the scheduler's events into a JSON body or an SSE stream.
//! Tokenizing and rendering the chat template run on tokio's blocking pool, off the scheduler.

use std::convert::Infallible;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::{json, Value};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

use super::api::{
    logprobs_json, parse_request, ApiError, Endpoint, Finish, Prompt, Request, ResponseMeta,
    TokenLogprob, Usage,
};
use super::metrics::{Metrics, Outcome};
use super::scheduler::{Event, Job};
use crate::tokenizer::Tokenizer;

/// What every handler shares.
pub struct AppState {
    /// To the scheduler thread.
    pub jobs: Sender<Job>,
    /// For prompts (chat template, encode).
    pub tok: Arc<Tokenizer>,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// The name clients pass as `model`.
    pub model_name: String,
    /// Positions per sequence.
    pub ctx: usize,
    /// Vocabulary size (token-id prompts are checked against it).
    pub vocab: usize,
    /// Waiting requests beyond which new ones get 503.
    pub max_waiting: usize,
    /// Largest request body, bytes.
    pub max_body_bytes: usize,
    /// Unix seconds the server started (the model's `created`).
    pub created: u64,
    next_id: AtomicU64,
}

impl AppState {
    /// Shared state for the router.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        jobs: Sender<Job>,
        tok: Arc<Tokenizer>,
        metrics: Arc<Metrics>,
        model_name: String,
        ctx: usize,
        vocab: usize,
        max_waiting: usize,
        max_body_bytes: usize,
    ) -> AppState {
        AppState {
            jobs,
            tok,
            metrics,
            model_name,
            ctx,
            vocab,
            max_waiting,
            max_body_bytes,
            created: unix_now(),
            next_id: AtomicU64::new(1),
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The routes.
pub fn router(state: Arc<AppState>) -> Router {
    let limit = state.max_body_bytes;
    Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/v1/models", get(models))
        .route("/v1/models/{id}", get(model))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .fallback(fallback)
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

fn error_response(e: &ApiError) -> Response {
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut r = json_body(status, &e.to_json());
    if e.status == 503 {
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    r
}

fn json_response(v: &Value) -> Response {
    json_body(StatusCode::OK, v)
}

fn json_body(status: StatusCode, v: &Value) -> Response {
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        v.to_string(),
    )
        .into_response()
}

async fn chat(State(st): State<Arc<AppState>>, body: Result<Bytes, BytesRejection>) -> Response {
    complete(st, Endpoint::Chat, body).await
}

async fn completions(
    State(st): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    complete(st, Endpoint::Completions, body).await
}

async fn fallback(uri: Uri) -> Response {
    error_response(&ApiError::not_found(uri.path()))
}

async fn health(State(st): State<Arc<AppState>>) -> Response {
    json_response(&json!({
        "status": "ok",
        "running": st.metrics.running.load(Relaxed),
        "waiting": st.metrics.waiting.load(Relaxed),
    }))
}

async fn metrics(State(st): State<Arc<AppState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        st.metrics.render(),
    )
        .into_response()
}

fn model_object(st: &AppState) -> Value {
    json!({
        "id": st.model_name,
        "object": "model",
        "created": st.created,
        "owned_by": "minfer",
        "context_length": st.ctx,
    })
}

async fn models(State(st): State<Arc<AppState>>) -> Response {
    json_response(&json!({"object": "list", "data": [model_object(&st)]}))
}

async fn model(State(st): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    if id == st.model_name {
        json_response(&model_object(&st))
    } else {
        error_response(&ApiError::model_not_found(&id))
    }
}

/// Both completion endpoints.
async fn complete(
    st: Arc<AppState>,
    endpoint: Endpoint,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let received = Instant::now();
    let (req, rx) = match submit(&st, endpoint, body, received).await {
        Ok(x) => x,
        Err(e) => {
            st.metrics.count(if e.status == 503 {
                Outcome::Rejected
            } else if e.status >= 500 {
                Outcome::ServerError
            } else {
                Outcome::Invalid
            });
            return error_response(&e);
        }
    };
    let n = st.next_id.fetch_add(1, Relaxed);
    let meta = ResponseMeta {
        id: format!(
            "{}-{:x}{n:06x}",
            match endpoint {
                Endpoint::Chat => "chatcmpl",
                Endpoint::Completions => "cmpl",
            },
            st.created
        ),
        created: unix_now(),
        model: st.model_name.clone(),
        endpoint,
    };
    if req.stream {
        stream_response(meta, req.include_usage, rx).await
    } else {
        whole_response(meta, rx).await
    }
}

/// Everything before the scheduler: parse, check, tokenize, queue. Errors are counted by the
/// caller.
async fn submit(
    st: &Arc<AppState>,
    endpoint: Endpoint,
    body: Result<Bytes, BytesRejection>,
    received: Instant,
) -> Result<(Request, UnboundedReceiver<Event>), ApiError> {
    let body = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::bad_request(format!(
                "the request body is over the limit of {} bytes",
                st.max_body_bytes
            ))
            .with_code("body_too_large")
        } else {
            ApiError::bad_request(format!("could not read the request body: {e}"))
        }
    })?;
    let req = parse_request(endpoint, &body)?;
    if let Some(m) = &req.model {
        if *m != st.model_name {
            return Err(ApiError::model_not_found(m));
        }
    }
    let st2 = st.clone();
    let prompt = req.prompt.clone();
    let ids = tokio::task::spawn_blocking(move || {
        catch_unwind(AssertUnwindSafe(|| tokenize(&st2, &prompt)))
            .unwrap_or_else(|_| Err(ApiError::internal("internal error while tokenizing")))
    })
    .await
    .unwrap_or_else(|_| Err(ApiError::internal("internal error while tokenizing")))?;

    let prompt_field = match endpoint {
        Endpoint::Chat => "messages",
        Endpoint::Completions => "prompt",
    };
    if ids.len() >= st.ctx {
        return Err(ApiError::invalid(
            prompt_field,
            format!(
                "the prompt has {} tokens but the context holds {} (at least one must be left for the answer)",
                ids.len(),
                st.ctx
            ),
        )
        .with_code("context_length_exceeded"));
    }
    let room = st.ctx - ids.len();
    let max_new = match req.max_tokens {
        Some(n) if n > room => {
            let field = if endpoint == Endpoint::Chat && body_has(&body, "max_completion_tokens") {
                "max_completion_tokens"
            } else {
                "max_tokens"
            };
            return Err(ApiError::invalid(
                field,
                format!(
                    "the prompt has {} tokens and {field} is {n}, but the context holds {} tokens; ask for at most {room}",
                    ids.len(),
                    st.ctx
                ),
            )
            .with_code("context_length_exceeded"));
        }
        Some(n) => n,
        None => room,
    };
    let waiting = st.metrics.waiting.load(Relaxed) as usize;
    if waiting >= st.max_waiting {
        return Err(ApiError::overloaded(waiting));
    }
    let mut sampling = req.sampling.clone();
    if !req.seeded {
        sampling.seed = fresh_seed();
    }
    let (tx, rx) = unbounded_channel();
    let job = Job {
        prompt: ids,
        max_new,
        sampling,
        stop: req.stop.clone(),
        logprobs: req.logprobs,
        ignore_eos: req.ignore_eos,
        events: tx,
        received,
    };
    st.metrics.waiting.fetch_add(1, Relaxed);
    if st.jobs.send(job).is_err() {
        st.metrics.waiting.fetch_sub(1, Relaxed);
        return Err(ApiError::internal("the scheduler has stopped"));
    }
    Ok((req, rx))
}

fn body_has(body: &[u8], key: &str) -> bool {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get(key).map(|x| !x.is_null()))
        .unwrap_or(false)
}

fn fresh_seed() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    t ^ COUNTER
        .fetch_add(1, Relaxed)
        .wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

fn tokenize(st: &AppState, prompt: &Prompt) -> Result<Vec<u32>, ApiError> {
    match prompt {
        Prompt::Chat(messages) => {
            let text = st
                .tok
                .apply_chat_template(messages, true)
                .map_err(|e| ApiError::invalid("messages", format!("chat template: {e}")))?;
            st.tok
                .encode(&text, false)
                .map_err(|e| ApiError::invalid("messages", e.to_string()))
        }
        Prompt::Text(text) => st
            .tok
            .encode(text, true)
            .map_err(|e| ApiError::invalid("prompt", e.to_string())),
        Prompt::Ids(ids) => {
            if let Some(bad) = ids.iter().find(|&&t| t as usize >= st.vocab) {
                return Err(ApiError::invalid(
                    "prompt",
                    format!(
                        "token id {bad} is out of range for a vocabulary of {}",
                        st.vocab
                    ),
                ));
            }
            Ok(ids.clone())
        }
    }
}

/// Collect the whole answer.
async fn whole_response(meta: ResponseMeta, mut rx: UnboundedReceiver<Event>) -> Response {
    let mut text = String::new();
    let mut lps: Vec<TokenLogprob> = Vec::new();
    let mut any_lps = false;
    while let Some(ev) = rx.recv().await {
        match ev {
            Event::Delta { text: t, logprobs } => {
                text.push_str(&t);
                any_lps |= !logprobs.is_empty();
                lps.extend(logprobs);
            }
            Event::Done { finish, usage } => {
                let lp = any_lps.then_some(lps.as_slice());
                return json_response(&meta.response(&text, finish, &usage, lp));
            }
            Event::Error(e) => return error_response(&e),
        }
    }
    error_response(&ApiError::internal("the scheduler dropped the request"))
}

/// An SSE stream. The first event is awaited before answering, so a request that fails at
/// admission still gets an HTTP error status.
async fn stream_response(
    meta: ResponseMeta,
    include_usage: bool,
    mut rx: UnboundedReceiver<Event>,
) -> Response {
    let first = match rx.recv().await {
        Some(Event::Error(e)) => return error_response(&e),
        Some(ev) => ev,
        None => return error_response(&ApiError::internal("the scheduler dropped the request")),
    };
    let s = SseState {
        meta,
        include_usage,
        rx,
        first: Some(first),
        started: false,
        offset: 0,
        ended: false,
    };
    let body = futures_util::stream::unfold(s, |mut s| async move {
        if s.ended {
            return None;
        }
        let ev = match s.first.take() {
            Some(ev) => Some(ev),
            None => s.rx.recv().await,
        };
        s.frames(ev).map(|b| (Ok::<Bytes, Infallible>(b), s))
    });
    let mut r = Response::new(Body::from_stream(body));
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

struct SseState {
    meta: ResponseMeta,
    include_usage: bool,
    rx: UnboundedReceiver<Event>,
    first: Option<Event>,
    started: bool,
    /// Bytes of text sent (completions' text_offset).
    offset: usize,
    ended: bool,
}

fn frame(out: &mut String, v: &Value) {
    out.push_str("data: ");
    out.push_str(&v.to_string());
    out.push_str("\n\n");
}

impl SseState {
    /// The SSE frames for one event (None when the stream is over).
    fn frames(&mut self, ev: Option<Event>) -> Option<Bytes> {
        if self.ended {
            return None;
        }
        let mut out = String::new();
        let usage_field = self.include_usage;
        if !self.started {
            self.started = true;
            if self.meta.endpoint == Endpoint::Chat {
                frame(
                    &mut out,
                    &self.meta.chunk(true, Some(""), None, None, usage_field),
                );
            }
        }
        match ev {
            Some(Event::Delta { text, logprobs }) => {
                let lp = (!logprobs.is_empty())
                    .then(|| logprobs_json(self.meta.endpoint, &logprobs, self.offset));
                self.offset += text.len();
                frame(
                    &mut out,
                    &self.meta.chunk(false, Some(&text), None, lp, usage_field),
                );
            }
            Some(Event::Done { finish, usage }) => {
                self.finish(&mut out, finish, &usage);
            }
            Some(Event::Error(e)) => {
                frame(&mut out, &e.to_json());
                out.push_str("data: [DONE]\n\n");
                self.ended = true;
            }
            None => {
                // The scheduler went away without an end: say so and close.
                frame(
                    &mut out,
                    &ApiError::internal("the scheduler dropped the request").to_json(),
                );
                out.push_str("data: [DONE]\n\n");
                self.ended = true;
            }
        }
        Some(Bytes::from(out))
    }

    fn finish(&mut self, out: &mut String, finish: Finish, usage: &Usage) {
        let text = match self.meta.endpoint {
            Endpoint::Chat => None,
            Endpoint::Completions => Some(""),
        };
        frame(
            out,
            &self
                .meta
                .chunk(false, text, Some(finish), None, self.include_usage),
        );
        if self.include_usage {
            frame(out, &self.meta.usage_chunk(usage));
        }
        out.push_str("data: [DONE]\n\n");
        self.ended = true;
    }
}
