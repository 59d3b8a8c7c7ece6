//! The scheduler: one thread owns the engine (the [`Batcher`](crate::Batcher)) and runs the
//! continuous-batching loop. Requests arrive over a channel as [`Job`]s; each iteration
//!
//! 1. drops cancelled work (a job whose event channel is closed: the client went away),
//! 2. admits waiting jobs while a sequence slot and KV blocks are free,
//! 3. prefills one chunk of one sequence still prefilling (so a long prompt never freezes the
//!    running streams for more than one chunk),
//! 4. runs one batched decode step over every sequence that has its next input token,
//!
//! then samples each row on the host with the request's own seeded [`Sampler`], decodes text
//! incrementally, applies stop strings (holding back text that could still become one) and
//! sends [`Event`]s to the request. Finished or cancelled sequences are removed at once, which
//! frees their KV blocks.
//!
//! The engine is behind the small [`Engine`] trait so the loop is tested with a fake one.
//! A panic in one request's work (sampling, text) is caught and reported to that request only.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc::UnboundedSender;

use super::api::{ApiError, Finish, TokenLogprob, Usage};
use super::metrics::{Metrics, Outcome};
use crate::error::Result;
use crate::sampler::{Sampler, SamplerConfig};
use crate::tokenizer::{DecodeStream, Tokenizer};

/// KV-cache occupancy, for /metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KvUsage {
    /// Blocks in the pool.
    pub blocks_total: usize,
    /// Blocks held by sequences or the prefix cache.
    pub blocks_in_use: usize,
    /// Of those, blocks held only by the prefix cache (evictable).
    pub blocks_cached: usize,
}

/// What the scheduler needs from the batched model. The Batcher implements it; tests use a
/// fake.
pub trait Engine {
    /// Sequences that can run at once.
    fn max_seqs(&self) -> usize;
    /// Prompt tokens one prefill call should take (one forward step).
    fn prefill_chunk(&self) -> usize;
    /// Whether a sequence of `prompt` and up to `max_new` new tokens fits now (the prompt, for
    /// the blocks a cached prefix provides).
    fn can_admit(&self, prompt: &[u32], max_new: usize) -> bool;
    /// Register a sequence (reserving its KV blocks); returns its id.
    fn add(&mut self, prompt: &[u32], max_new: usize) -> Result<u64>;
    /// Prompt tokens of `id` reused from the prefix cache.
    fn cached_tokens(&self, id: u64) -> usize;
    /// Prefill up to `budget` prompt tokens; true when the prompt is complete and `logits(id)`
    /// is the distribution of the first new token.
    fn prefill(&mut self, id: u64, budget: usize) -> Result<bool>;
    /// One batched decode step: append each token to its sequence and compute all of them.
    fn decode(&mut self, batch: &[(u64, u32)]) -> Result<()>;
    /// The latest logits of `id`.
    fn logits(&self, id: u64) -> Option<&[f32]>;
    /// Free `id`'s blocks.
    fn remove(&mut self, id: u64);
    /// Pool occupancy.
    fn kv_usage(&self) -> KvUsage;
}

/// One request, tokenized and checked, handed to the scheduler.
pub struct Job {
    /// The prompt ids (non-empty; prompt + max_new fits the context).
    pub prompt: Vec<u32>,
    /// At most this many new tokens.
    pub max_new: usize,
    /// Sampling settings, with the presence/frequency penalties.
    pub sampling: SamplerConfig,
    /// Stop strings.
    pub stop: Vec<String>,
    /// Alternatives per position when log-probabilities are asked for.
    pub logprobs: Option<usize>,
    /// Do not stop at the model's end-of-sequence ids.
    pub ignore_eos: bool,
    /// Where the request's events go; closed = the client is gone.
    pub events: UnboundedSender<Event>,
    /// When the server received the request (for time-to-first-token).
    pub received: Instant,
}

/// What a request hears from the scheduler.
#[derive(Debug)]
pub enum Event {
    /// New text (and the log-probabilities of the tokens it came with, when asked for).
    Delta {
        /// Text safe to show (never part of a stop string).
        text: String,
        /// One entry per token since the last delta.
        logprobs: Vec<TokenLogprob>,
    },
    /// The end, with why and the counts.
    Done {
        /// "stop" or "length".
        finish: Finish,
        /// Token counts.
        usage: Usage,
    },
    /// The request failed; nothing more follows.
    Error(ApiError),
}

/// Settings of the loop.
#[derive(Clone, Debug)]
pub struct SchedulerConfig {
    /// The model's end-of-sequence ids.
    pub eos_ids: Vec<u32>,
    /// Vocabulary size (logits width).
    pub vocab: usize,
}

enum Phase {
    /// Prompt tokens still to compute.
    Prefill,
    /// Waiting for the decode step that consumes `next`.
    Decode { next: u32 },
}

/// A sequence the engine holds.
struct Active<'t> {
    id: u64,
    job: Job,
    phase: Phase,
    sampler: Sampler,
    history: Vec<u32>,
    generated: usize,
    cached: usize,
    text: TextState<'t>,
    scratch: Vec<f32>,
    pending_lps: Vec<TokenLogprob>,
    /// Nothing more to do: remove it.
    done: bool,
}

/// The loop's state. `run` drives it until the job channel closes and nothing is left.
pub struct Scheduler<'t, E: Engine> {
    engine: E,
    tok: &'t Tokenizer,
    cfg: SchedulerConfig,
    metrics: Arc<Metrics>,
    waiting: VecDeque<Job>,
    active: Vec<Active<'t>>,
    rate: RateWindow,
}

impl<'t, E: Engine> Scheduler<'t, E> {
    /// A scheduler over `engine`.
    pub fn new(engine: E, tok: &'t Tokenizer, cfg: SchedulerConfig, metrics: Arc<Metrics>) -> Self {
        let kv = engine.kv_usage();
        metrics.set_kv(kv);
        Scheduler {
            engine,
            tok,
            cfg,
            metrics,
            waiting: VecDeque::new(),
            active: Vec::new(),
            rate: RateWindow::default(),
        }
    }

    /// The engine (tests look at its state).
    #[cfg(test)]
    pub fn engine(&self) -> &E {
        &self.engine
    }

    /// Serve jobs from `rx` until it is closed and all work is finished.
    pub fn run(&mut self, rx: Receiver<Job>) {
        loop {
            if self.active.is_empty() && self.waiting.is_empty() {
                self.publish();
                match rx.recv() {
                    Ok(job) => self.waiting.push_back(job),
                    Err(_) => return,
                }
            }
            while let Ok(job) = rx.try_recv() {
                self.waiting.push_back(job);
            }
            self.step();
        }
    }

    /// Queue a job (as if it came from the channel).
    #[cfg(test)]
    pub fn submit(&mut self, job: Job) {
        self.waiting.push_back(job);
    }

    /// Whether any work is left.
    #[cfg(test)]
    pub fn busy(&self) -> bool {
        !self.active.is_empty() || !self.waiting.is_empty()
    }

    /// One iteration: cancel, admit, one prefill chunk, one decode step, clean up.
    pub fn step(&mut self) {
        self.drop_cancelled();
        self.admit();
        self.prefill_one();
        self.decode_all();
        self.reap();
        self.publish();
    }

    fn drop_cancelled(&mut self) {
        let metrics = &self.metrics;
        self.waiting.retain(|j| {
            let gone = j.events.is_closed();
            if gone {
                metrics.waiting.fetch_sub(1, Relaxed);
                metrics.count(Outcome::Cancelled);
            }
            !gone
        });
        for a in &mut self.active {
            if !a.done && a.job.events.is_closed() {
                a.done = true;
                self.metrics.count(Outcome::Cancelled);
            }
        }
    }

    fn admit(&mut self) {
        while self.active.len() < self.engine.max_seqs() {
            let Some(job) = self.waiting.front() else {
                break;
            };
            // An empty engine that cannot take the job never will: let `add` say why.
            if !self.engine.can_admit(&job.prompt, job.max_new) && !self.active.is_empty() {
                break;
            }
            let job = self.waiting.pop_front().expect("front exists");
            self.metrics.waiting.fetch_sub(1, Relaxed);
            let engine = &mut self.engine;
            let added = catch_unwind(AssertUnwindSafe(|| engine.add(&job.prompt, job.max_new)));
            let id = match added {
                Ok(Ok(id)) => id,
                Ok(Err(e)) => {
                    fail(
                        &self.metrics,
                        &job,
                        ApiError::internal(format!("could not admit the request: {e}")),
                    );
                    continue;
                }
                Err(p) => {
                    fail(
                        &self.metrics,
                        &job,
                        panic_error("admitting the request", &p),
                    );
                    continue;
                }
            };
            let sampler = match Sampler::new(job.sampling.clone()) {
                Ok(s) => s,
                Err(e) => {
                    self.engine.remove(id);
                    fail(&self.metrics, &job, ApiError::bad_request(e.to_string()));
                    continue;
                }
            };
            let cached = self.engine.cached_tokens(id);
            self.metrics
                .prompt_tokens
                .fetch_add(job.prompt.len() as u64, Relaxed);
            self.metrics
                .cached_prompt_tokens
                .fetch_add(cached as u64, Relaxed);
            let text = TextState::new(self.tok, job.stop.clone());
            self.active.push(Active {
                id,
                history: job.prompt.clone(),
                job,
                phase: Phase::Prefill,
                sampler,
                generated: 0,
                cached,
                text,
                scratch: Vec::new(),
                pending_lps: Vec::new(),
                done: false,
            });
        }
    }

    fn prefill_one(&mut self) {
        let Some(i) = self
            .active
            .iter()
            .position(|a| !a.done && matches!(a.phase, Phase::Prefill))
        else {
            return;
        };
        let budget = self.engine.prefill_chunk().max(1);
        let id = self.active[i].id;
        let engine = &mut self.engine;
        let r = catch_unwind(AssertUnwindSafe(|| engine.prefill(id, budget)));
        self.metrics.prefill_steps.fetch_add(1, Relaxed);
        match r {
            Ok(Ok(false)) => {}
            Ok(Ok(true)) => {
                let a = &mut self.active[i];
                let first = a.job.received.elapsed().as_secs_f64();
                self.metrics.observe_ttft(first);
                self.next_token(i);
            }
            Ok(Err(e)) => self.kill(i, ApiError::internal(format!("prefill failed: {e}"))),
            Err(p) => self.kill(i, panic_error("prefill", &p)),
        }
    }

    fn decode_all(&mut self) {
        let batch: Vec<(u64, u32)> = self
            .active
            .iter()
            .filter(|a| !a.done)
            .filter_map(|a| match a.phase {
                Phase::Decode { next } => Some((a.id, next)),
                Phase::Prefill => None,
            })
            .collect();
        if batch.is_empty() {
            return;
        }
        let engine = &mut self.engine;
        let r = catch_unwind(AssertUnwindSafe(|| engine.decode(&batch)));
        self.metrics.decode_steps.fetch_add(1, Relaxed);
        self.metrics
            .decode_rows
            .fetch_add(batch.len() as u64, Relaxed);
        let failure = match r {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(ApiError::internal(format!("decode step failed: {e}"))),
            Err(p) => Some(panic_error("the decode step", &p)),
        };
        for (id, _) in batch {
            let i = self
                .active
                .iter()
                .position(|a| a.id == id)
                .expect("batched sequence is active");
            match &failure {
                None => self.next_token(i),
                Some(e) => self.kill(i, e.clone()),
            }
        }
    }

    /// Sample the next token of `active[i]` from its logits and act on it.
    fn next_token(&mut self, i: usize) {
        let Some(logits) = self.engine.logits(self.active[i].id) else {
            self.kill(
                i,
                ApiError::internal("the engine has no logits for the sequence"),
            );
            return;
        };
        if logits.len() != self.cfg.vocab {
            let msg = format!(
                "the engine gave {} logits for a vocabulary of {}",
                logits.len(),
                self.cfg.vocab
            );
            self.kill(i, ApiError::internal(msg));
            return;
        }
        let a = &mut self.active[i];
        let eos = &self.cfg.eos_ids;
        let tok = self.tok;
        let metrics = &*self.metrics;
        let r = catch_unwind(AssertUnwindSafe(|| a.advance(logits, eos, tok, metrics)));
        match r {
            Ok(Ok(generated)) => {
                self.metrics
                    .generated_tokens
                    .fetch_add(generated as u64, Relaxed);
                self.rate.add(generated);
            }
            Ok(Err(e)) => self.kill(i, e),
            Err(p) => self.kill(i, panic_error("sampling", &p)),
        }
    }

    /// Report `e` to the request and end it.
    fn kill(&mut self, i: usize, e: ApiError) {
        let a = &mut self.active[i];
        if !a.done {
            a.done = true;
            fail(&self.metrics, &a.job, e);
        }
    }

    fn reap(&mut self) {
        let engine = &mut self.engine;
        self.active.retain(|a| {
            if a.done {
                engine.remove(a.id);
            }
            !a.done
        });
    }

    fn publish(&mut self) {
        let m = &self.metrics;
        m.running.store(self.active.len() as u64, Relaxed);
        m.set_kv(self.engine.kv_usage());
        m.set_tokens_per_second(self.rate.per_second());
    }
}

impl<'t> Active<'t> {
    /// Choose the next token from `logits`, emit its text, decide whether to go on. Returns the
    /// number of tokens generated (0 or 1).
    fn advance(
        &mut self,
        logits: &[f32],
        eos: &[u32],
        tok: &Tokenizer,
        metrics: &Metrics,
    ) -> std::result::Result<usize, ApiError> {
        self.scratch.clear();
        self.scratch.extend_from_slice(logits);
        let lp = self.job.logprobs.map(|k| log_softmax_top(logits, k));
        let t = self.sampler.sample(&mut self.scratch, &self.history);
        if !self.job.ignore_eos && eos.contains(&t) {
            self.finish(Finish::Stop, metrics);
            return Ok(0);
        }
        self.generated += 1;
        self.history.push(t);
        if let Some((lse, top)) = lp {
            let name = |id: u32| tok.decode(&[id], false).unwrap_or_default();
            self.pending_lps.push(TokenLogprob {
                token: name(t),
                logprob: logits
                    .get(t as usize)
                    .map_or(f32::NEG_INFINITY, |&l| l - lse),
                top: top.into_iter().map(|(id, lp)| (name(id), lp)).collect(),
            });
        }
        let (text, stopped) = self
            .text
            .push(t)
            .map_err(|e| ApiError::internal(format!("decoding token {t}: {e}")))?;
        self.emit(text);
        if stopped {
            self.finish(Finish::Stop, metrics);
        } else if self.generated >= self.job.max_new {
            let rest = self.text.flush();
            self.emit(rest);
            self.finish(Finish::Length, metrics);
        } else {
            self.phase = Phase::Decode { next: t };
        }
        Ok(1)
    }

    fn emit(&mut self, text: String) {
        if text.is_empty() && self.pending_lps.is_empty() {
            return;
        }
        let logprobs = std::mem::take(&mut self.pending_lps);
        let _ = self.job.events.send(Event::Delta { text, logprobs });
    }

    fn finish(&mut self, finish: Finish, metrics: &Metrics) {
        if finish == Finish::Stop && !self.text.stopped {
            let rest = self.text.flush();
            self.emit(rest);
        }
        if !self.pending_lps.is_empty() {
            self.emit(String::new());
        }
        let usage = Usage {
            prompt_tokens: self.job.prompt.len(),
            cached_tokens: self.cached,
            completion_tokens: self.generated,
        };
        // Counted before the client can hear of it (and scrape /metrics).
        metrics.count(Outcome::Ok);
        let _ = self.job.events.send(Event::Done { finish, usage });
        self.done = true;
    }
}

fn fail(metrics: &Metrics, job: &Job, e: ApiError) {
    metrics.count(if e.status >= 500 {
        Outcome::ServerError
    } else {
        Outcome::Invalid
    });
    let _ = job.events.send(Event::Error(e));
}

fn panic_error(what: &str, p: &Box<dyn std::any::Any + Send>) -> ApiError {
    let msg = p
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into());
    ApiError::internal(format!("internal error in {what}: {msg}"))
}

/// log-sum-exp of `logits` and the `k` most likely tokens with their log-probabilities.
fn log_softmax_top(logits: &[f32], k: usize) -> (f32, Vec<(u32, f32)>) {
    let m = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&l| ((l - m) as f64).exp()).sum();
    let lse = m + sum.ln() as f32;
    let mut top: Vec<(u32, f32)> = Vec::with_capacity(k + 1);
    if k > 0 {
        for (i, &l) in logits.iter().enumerate() {
            if top.len() < k || l > top[top.len() - 1].1 {
                let at = top.partition_point(|x| x.1 >= l);
                top.insert(at, (i as u32, l));
                top.truncate(k);
            }
        }
    }
    (lse, top.into_iter().map(|(i, l)| (i, l - lse)).collect())
}

/// Incremental text with stop strings: text that could still be the start of a stop string is
/// held back until it cannot.
pub struct TextState<'t> {
    stream: DecodeStream<'t>,
    stop: Vec<String>,
    /// All text decoded so far.
    all: String,
    /// Bytes of `all` already sent.
    sent: usize,
    /// A stop string matched: `all` is cut before it and nothing more is sent.
    stopped: bool,
}

impl<'t> TextState<'t> {
    /// A decoder for one request.
    pub fn new(tok: &'t Tokenizer, stop: Vec<String>) -> Self {
        TextState {
            stream: tok.decode_stream(true),
            stop,
            all: String::new(),
            sent: 0,
            stopped: false,
        }
    }

    /// Add token `t`: the text now safe to send, and whether a stop string matched.
    pub fn push(&mut self, t: u32) -> Result<(String, bool)> {
        if self.stopped {
            return Ok((String::new(), true));
        }
        if let Some(piece) = self.stream.step(t)? {
            self.all.push_str(&piece);
        }
        Ok(self.release(false))
    }

    /// The end: everything held back (up to a stop string, if one matches).
    pub fn flush(&mut self) -> String {
        if self.stopped {
            return String::new();
        }
        if let Some(rest) = self.stream.flush() {
            self.all.push_str(&rest);
        }
        self.release(true).0
    }

    fn release(&mut self, end: bool) -> (String, bool) {
        let longest = self.stop.iter().map(String::len).max().unwrap_or(0);
        // A match cannot start in text already sent (it was not a possible stop prefix).
        let mut from = self.sent.saturating_sub(longest);
        while !self.all.is_char_boundary(from) {
            from -= 1;
        }
        let hit = self
            .stop
            .iter()
            .filter_map(|s| self.all[from..].find(s.as_str()).map(|p| from + p))
            .min();
        if let Some(cut) = hit {
            let cut = cut.max(self.sent);
            let out = self.all[self.sent..cut].to_string();
            self.all.truncate(cut);
            self.sent = cut;
            self.stopped = true;
            return (out, true);
        }
        let mut safe = self.all.len();
        if !end {
            // Hold back the longest tail of `all` that is a proper prefix of a stop string.
            let bytes = self.all.as_bytes();
            for s in &self.stop {
                for k in (1..s.len()).rev() {
                    if k <= bytes.len() - self.sent && bytes.ends_with(&s.as_bytes()[..k]) {
                        safe = safe.min(bytes.len() - k);
                        break;
                    }
                }
            }
        }
        let out = self.all[self.sent..safe].to_string();
        self.sent = safe;
        (out, false)
    }
}

/// Generated tokens over the last few seconds, for the tokens/s gauge.
#[derive(Default)]
struct RateWindow {
    buckets: VecDeque<(Instant, usize)>,
}

impl RateWindow {
    const WINDOW: Duration = Duration::from_secs(10);

    fn add(&mut self, n: usize) {
        if n == 0 {
            return;
        }
        let now = Instant::now();
        match self.buckets.back_mut() {
            Some((t, c)) if now.duration_since(*t) < Duration::from_millis(100) => *c += n,
            _ => self.buckets.push_back((now, n)),
        }
        self.trim(now);
    }

    fn trim(&mut self, now: Instant) {
        while self
            .buckets
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > Self::WINDOW)
        {
            self.buckets.pop_front();
        }
    }

    fn per_second(&mut self) -> f64 {
        let now = Instant::now();
        self.trim(now);
        let Some((first, _)) = self.buckets.front() else {
            return 0.0;
        };
        let span = now.duration_since(*first).as_secs_f64().max(1.0);
        self.buckets.iter().map(|(_, c)| *c).sum::<usize>() as f64 / span
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

    fn tokenizer() -> Tokenizer {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/tokenizers/gpt2ish/tokenizer.json");
        Tokenizer::from_file(&p).unwrap()
    }

    /// A deterministic stand-in for the Batcher: the next token after `t` is
    /// `(t · 7 + 3) mod vocab` (skipping 0, the EOS), unless the prompt's first token asks for
    /// EOS after `n` tokens (`prompt[0] = 1000 + n`). A prompt starting with 999 panics in
    /// prefill. Blocks of 4 positions are reserved at `add`.
    struct Fake {
        vocab: usize,
        max_seqs: usize,
        blocks_total: usize,
        seqs: HashMap<u64, (Vec<u32>, usize, usize)>, // tokens, prompt len done, blocks
        next_id: u64,
        logits: HashMap<u64, Vec<f32>>,
        batch_sizes: Vec<usize>,
        removed: Vec<u64>,
    }

    impl Fake {
        fn new(max_seqs: usize) -> Fake {
            Fake {
                vocab: 1501,
                max_seqs,
                blocks_total: 64,
                seqs: HashMap::new(),
                next_id: 1,
                logits: HashMap::new(),
                batch_sizes: Vec::new(),
                removed: Vec::new(),
            }
        }
        fn next_of(tokens: &[u32], prompt_len: usize, vocab: usize) -> u32 {
            let generated = tokens.len() - prompt_len;
            if tokens[0] >= 1000 && generated == (tokens[0] - 1000) as usize {
                return 0;
            }
            let t = *tokens.last().unwrap() as usize;
            let n = (t * 7 + 3) % vocab;
            if n == 0 {
                1
            } else {
                n as u32
            }
        }
        fn set_logits(&mut self, id: u64) {
            let (tokens, plen, _) = &self.seqs[&id];
            let n = Fake::next_of(tokens, *plen, self.vocab);
            let mut l = vec![0.0; self.vocab];
            l[n as usize] = 10.0;
            self.logits.insert(id, l);
        }
        fn used(&self) -> usize {
            self.seqs.values().map(|s| s.2).sum()
        }
    }

    impl Engine for Fake {
        fn max_seqs(&self) -> usize {
            self.max_seqs
        }
        fn prefill_chunk(&self) -> usize {
            3
        }
        fn can_admit(&self, prompt: &[u32], max_new: usize) -> bool {
            self.seqs.len() < self.max_seqs
                && self.used() + (prompt.len() + max_new).div_ceil(4) <= self.blocks_total
        }
        fn add(&mut self, prompt: &[u32], max_new: usize) -> Result<u64> {
            let id = self.next_id;
            self.next_id += 1;
            let blocks = (prompt.len() + max_new).div_ceil(4);
            self.seqs.insert(id, (prompt.to_vec(), 0, blocks));
            Ok(id)
        }
        fn cached_tokens(&self, _id: u64) -> usize {
            0
        }
        fn prefill(&mut self, id: u64, budget: usize) -> Result<bool> {
            let s = self.seqs.get_mut(&id).unwrap();
            assert!(s.0[0] != 999, "planted panic");
            s.1 = (s.1 + budget).min(s.0.len());
            let done = s.1 == s.0.len();
            if done {
                self.set_logits(id);
            }
            Ok(done)
        }
        fn decode(&mut self, batch: &[(u64, u32)]) -> Result<()> {
            self.batch_sizes.push(batch.len());
            for &(id, t) in batch {
                self.seqs.get_mut(&id).unwrap().0.push(t);
                self.set_logits(id);
            }
            Ok(())
        }
        fn logits(&self, id: u64) -> Option<&[f32]> {
            self.logits.get(&id).map(|v| v.as_slice())
        }
        fn remove(&mut self, id: u64) {
            self.seqs.remove(&id);
            self.logits.remove(&id);
            self.removed.push(id);
        }
        fn kv_usage(&self) -> KvUsage {
            KvUsage {
                blocks_total: self.blocks_total,
                blocks_in_use: self.used(),
                blocks_cached: 0,
            }
        }
    }

    fn job(prompt: Vec<u32>, max_new: usize) -> (Job, UnboundedReceiver<Event>) {
        let (tx, rx) = unbounded_channel();
        let j = Job {
            prompt,
            max_new,
            sampling: SamplerConfig::default(),
            stop: Vec::new(),
            logprobs: None,
            ignore_eos: false,
            events: tx,
            received: Instant::now(),
        };
        (j, rx)
    }

    /// Text, finish and usage of a finished request (or its error).
    fn collect(
        rx: &mut UnboundedReceiver<Event>,
    ) -> std::result::Result<(String, Finish, Usage), ApiError> {
        let mut text = String::new();
        while let Ok(ev) = rx.try_recv() {
            match ev {
                Event::Delta { text: t, .. } => text.push_str(&t),
                Event::Done { finish, usage } => return Ok((text, finish, usage)),
                Event::Error(e) => return Err(e),
            }
        }
        panic!("no end event; text so far {text:?}");
    }

    fn expected(tok: &Tokenizer, prompt: &[u32], n: usize) -> (String, Finish) {
        let mut t = prompt.to_vec();
        let mut out = Vec::new();
        for _ in 0..n {
            let next = Fake::next_of(&t, prompt.len(), 1501);
            if next == 0 {
                return (tok.decode(&out, true).unwrap(), Finish::Stop);
            }
            t.push(next);
            out.push(next);
        }
        (tok.decode(&out, true).unwrap(), Finish::Length)
    }

    fn drive(s: &mut Scheduler<'_, Fake>) {
        for _ in 0..10_000 {
            if !s.busy() {
                return;
            }
            s.step();
        }
        panic!("the scheduler did not finish");
    }

    #[test]
    fn concurrent_requests_are_batched_and_each_gets_its_own_answer() {
        let tok = tokenizer();
        let metrics = Arc::new(Metrics::default());
        let cfg = SchedulerConfig {
            eos_ids: vec![0],
            vocab: 1501,
        };
        let mut s = Scheduler::new(Fake::new(3), &tok, cfg, metrics.clone());
        let prompts: Vec<(Vec<u32>, usize)> = vec![
            (vec![5, 6, 7, 8, 9, 10, 11], 12),
            (vec![20], 5),
            (vec![1004, 30, 31], 10), // EOS after 4 tokens
            (vec![40, 41], 9),        // waits for a slot
        ];
        let mut rxs = Vec::new();
        for (p, n) in &prompts {
            let (j, rx) = job(p.clone(), *n);
            metrics.waiting.fetch_add(1, Relaxed);
            s.submit(j);
            rxs.push(rx);
        }
        drive(&mut s);
        for ((p, n), rx) in prompts.iter().zip(&mut rxs) {
            let (text, finish, usage) = collect(rx).unwrap();
            let (want, want_finish) = expected(&tok, p, *n);
            assert_eq!((&text, finish), (&want, want_finish), "prompt {p:?}");
            assert_eq!(usage.prompt_tokens, p.len());
            let gen = if finish == Finish::Length { *n } else { 4 };
            assert_eq!(usage.completion_tokens, gen);
        }
        let e = s.engine();
        assert!(e.batch_sizes.contains(&3), "{:?}", e.batch_sizes);
        assert!(e.batch_sizes.iter().all(|&b| b <= 3));
        assert!(e.seqs.is_empty() && e.used() == 0);
        assert_eq!(metrics.requests(Outcome::Ok), 4);
        assert_eq!(metrics.waiting.load(Relaxed), 0);
    }

    #[test]
    fn a_closed_channel_cancels_and_frees_at_once() {
        let tok = tokenizer();
        let metrics = Arc::new(Metrics::default());
        let cfg = SchedulerConfig {
            eos_ids: vec![0],
            vocab: 1501,
        };
        let mut s = Scheduler::new(Fake::new(4), &tok, cfg, metrics.clone());
        let (a, rx_a) = job(vec![5, 6], 100);
        let (b, mut rx_b) = job(vec![7], 20);
        s.submit(a);
        s.submit(b);
        for _ in 0..5 {
            s.step();
        }
        assert_eq!(s.engine().seqs.len(), 2);
        drop(rx_a);
        s.step();
        assert_eq!(
            s.engine().seqs.len(),
            1,
            "the cancelled sequence is removed"
        );
        assert_eq!(s.engine().removed, [1]);
        drive(&mut s);
        assert!(collect(&mut rx_b).is_ok());
        assert_eq!(metrics.requests(Outcome::Cancelled), 1);
        assert_eq!(metrics.requests(Outcome::Ok), 1);
        assert_eq!(metrics.kv().blocks_in_use, 0);
    }

    #[test]
    fn a_panic_fails_one_request_only() {
        let tok = tokenizer();
        let metrics = Arc::new(Metrics::default());
        let cfg = SchedulerConfig {
            eos_ids: vec![0],
            vocab: 1501,
        };
        let mut s = Scheduler::new(Fake::new(4), &tok, cfg, metrics.clone());
        let (a, mut rx_a) = job(vec![5, 6], 6);
        let (b, mut rx_b) = job(vec![999, 1], 6);
        s.submit(a);
        s.submit(b);
        drive(&mut s);
        assert!(collect(&mut rx_a).is_ok());
        let e = collect(&mut rx_b).unwrap_err();
        assert_eq!(e.status, 500);
        assert!(e.message.contains("planted panic"), "{e}");
        assert_eq!(metrics.requests(Outcome::ServerError), 1);
        assert!(s.engine().seqs.is_empty());
    }

    #[test]
    fn stop_strings_never_leak_and_cut_the_text() {
        let tok = tokenizer();
        let ids = tok
            .encode(
                "Hello world, this is a test of the stop strings. The end.",
                false,
            )
            .unwrap();
        let full = tok.decode(&ids, true).unwrap();
        let text = full.as_str();
        for stop in ["test", "is a t", "s. T", "zzz", "d."] {
            let mut st = TextState::new(&tok, vec![stop.to_string(), "qq".into()]);
            let mut out = String::new();
            let mut stopped = false;
            for &t in &ids {
                let (piece, s) = st.push(t).unwrap();
                out.push_str(&piece);
                assert!(!out.contains(stop), "{stop:?} leaked: {out:?}");
                if s {
                    stopped = true;
                    break;
                }
            }
            if !stopped {
                out.push_str(&st.flush());
            }
            let want = text.find(stop).map_or(text, |p| &text[..p]);
            assert_eq!(out, want, "stop {stop:?}");
            assert_eq!(stopped, text.contains(stop));
        }
    }

    #[test]
    fn top_logprobs_are_sorted_and_normalised() {
        let logits = [1.0f32, 3.0, 2.0, 3.0, -1.0];
        let (lse, top) = log_softmax_top(&logits, 3);
        let total: f32 = logits.iter().map(|&l| (l - lse).exp()).sum();
        assert!((total - 1.0).abs() < 1e-5);
        let ids: Vec<u32> = top.iter().map(|x| x.0).collect();
        assert_eq!(ids, [1, 3, 2]);
        assert!((top[0].1 - (3.0 - lse)).abs() < 1e-6);
        assert!(log_softmax_top(&logits, 0).1.is_empty());
    }
}
