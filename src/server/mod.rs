//! `minfer serve`: an OpenAI-compatible HTTP server (the `server` feature) over continuous
//! batching.
//!
//! - `api.rs`: request parsing and validation ([`parse_request`], pure, fuzzed), OpenAI error
//!   objects, response and chunk JSON.
//! - `http.rs`: axum routes; prompts are tokenized on the blocking pool; SSE streaming.
//! - `scheduler.rs`: the thread that owns the batched engine and runs admit → one prefill
//!   chunk → one batched decode step, sampling each row on the host.
//! - `metrics.rs`: the Prometheus text for GET /metrics.
//!
//! Endpoints: POST /v1/chat/completions, POST /v1/completions, GET /v1/models, GET /health,
//! GET /metrics. What it deliberately does not do: n > 1, echo, tools/function calling, images,
//! authentication (bind it to 127.0.0.1, the default, or put a proxy in front).

mod api;
mod engine;
mod http;
mod metrics;
mod scheduler;

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;

pub use api::{parse_request, ApiError, Endpoint, Prompt, Request};

use crate::error::{Error, Result};
use crate::tokenizer::Tokenizer;
use metrics::Metrics;
use scheduler::{Engine, Scheduler, SchedulerConfig};

/// How to serve.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// Address to listen on.
    pub host: String,
    /// Port; 0 = any free port (see [`Server::local_addr`]).
    pub port: u16,
    /// The name clients pass as `model`; None = the model file's name without extension.
    pub model_name: Option<String>,
    /// Requests waiting for a slot beyond which new ones get 503 (Retry-After).
    pub max_waiting: usize,
    /// Largest request body in bytes; larger ones get 400.
    pub max_body_bytes: usize,
    /// Threads of the HTTP runtime (the model computes on its own threads).
    pub http_threads: usize,
    /// Reuse the KV blocks of earlier prompts' common prefixes (see
    /// [`Batcher::set_prefix_cache`](crate::Batcher::set_prefix_cache)).
    pub prefix_cache: bool,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            host: "127.0.0.1".into(),
            port: 8080,
            model_name: None,
            max_waiting: 64,
            max_body_bytes: 4 << 20,
            http_threads: 2,
            prefix_cache: true,
        }
    }
}

/// A running server: the HTTP runtime on one thread, the scheduler (which owns the model) on
/// another. Dropping it shuts both down after the requests in flight.
pub struct Server {
    addr: SocketAddr,
    model_name: String,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    http: Option<JoinHandle<std::io::Result<()>>>,
    scheduler: Option<JoinHandle<()>>,
}

/// What the server needs to know about the model besides the engine.
pub(crate) struct ModelInfo {
    pub tokenizer: Tokenizer,
    pub eos_ids: Vec<u32>,
    pub context_len: usize,
    pub vocab: usize,
    /// Default model name.
    pub name: String,
}

impl Server {
    /// Serve `model` on `opts.host:opts.port`: it becomes a [`Batcher`](crate::Batcher), so
    /// load it with `LoadOptions::max_seqs` = the number of sequences to decode together.
    pub fn start(mut model: crate::Model, opts: &ServeOptions) -> Result<Server> {
        let tokenizer = model.take_tokenizer()?;
        let files = model.files();
        let name = files
            .weights
            .file_stem()
            .or_else(|| files.dir.file_name())
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "minfer".into());
        let info = ModelInfo {
            tokenizer,
            eos_ids: model.eos_ids().to_vec(),
            context_len: model.context_len(),
            vocab: model.config().vocab_size,
            name,
        };
        let mut batcher = crate::model::Batcher::new(model)?;
        batcher.set_prefix_cache(opts.prefix_cache);
        Self::start_engine(batcher, info, opts)
    }

    /// Bind and start serving `engine`.
    pub(crate) fn start_engine<E: Engine + Send + 'static>(
        engine: E,
        info: ModelInfo,
        opts: &ServeOptions,
    ) -> Result<Server> {
        let listener = std::net::TcpListener::bind((opts.host.as_str(), opts.port))
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .map_err(|e| {
                Error::option(
                    "host",
                    format!("{}:{}", opts.host, opts.port),
                    e.to_string(),
                )
            })?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error::option("port", opts.port, e.to_string()))?;
        let metrics = Arc::new(Metrics::default());
        let tok = Arc::new(info.tokenizer);
        let model_name = opts.model_name.clone().unwrap_or(info.name);
        let (jobs_tx, jobs_rx) = std::sync::mpsc::channel();
        let cfg = SchedulerConfig {
            eos_ids: info.eos_ids,
            vocab: info.vocab,
        };
        let sched_tok = tok.clone();
        let sched_metrics = metrics.clone();
        let scheduler = std::thread::Builder::new()
            .name("minfer-scheduler".into())
            .spawn(move || {
                let mut s = Scheduler::new(engine, &sched_tok, cfg, sched_metrics);
                s.run(jobs_rx);
            })
            .map_err(|e| Error::arg(format!("cannot start the scheduler thread: {e}")))?;
        let state = Arc::new(http::AppState::new(
            jobs_tx,
            tok,
            metrics,
            model_name.clone(),
            info.context_len,
            info.vocab,
            opts.max_waiting,
            opts.max_body_bytes,
        ));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(opts.http_threads.max(1))
            .thread_name("minfer-http")
            .enable_io()
            .enable_time()
            .build()
            .map_err(|e| Error::arg(format!("cannot start the HTTP runtime: {e}")))?;
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let http = std::thread::Builder::new()
            .name("minfer-http-main".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener)?;
                    let app = http::router(state);
                    axum::serve(listener, app)
                        .with_graceful_shutdown(async move {
                            let _ = stop_rx.await;
                        })
                        .await
                })
            })
            .map_err(|e| Error::arg(format!("cannot start the HTTP thread: {e}")))?;
        Ok(Server {
            addr,
            model_name,
            shutdown: Some(stop_tx),
            http: Some(http),
            scheduler: Some(scheduler),
        })
    }

    /// The address it listens on (the real port when started with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The name clients pass as `model`.
    pub fn model_name(&self) -> &str {
        &self.model_name
    }

    /// Block until the server stops (it runs until the process ends or [`Server::shutdown`]).
    pub fn wait(mut self) -> Result<()> {
        self.join()
    }

    /// Stop accepting connections, finish the requests in flight, stop.
    pub fn shutdown(mut self) -> Result<()> {
        if let Some(s) = self.shutdown.take() {
            let _ = s.send(());
        }
        self.join()
    }

    fn join(&mut self) -> Result<()> {
        let mut result = Ok(());
        if let Some(h) = self.http.take() {
            result = match h.join() {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(Error::arg(format!("the HTTP server failed: {e}"))),
                Err(_) => Err(Error::arg("the HTTP server thread panicked")),
            };
        }
        // The router (and the job sender) is gone: the scheduler finishes and exits.
        if let Some(h) = self.scheduler.take() {
            if h.join().is_err() && result.is_ok() {
                result = Err(Error::arg("the scheduler thread panicked"));
            }
        }
        result
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(s) = self.shutdown.take() {
            let _ = s.send(());
        }
        let _ = self.join();
    }
}
