//! Counters and gauges for GET /metrics, in the Prometheus text format. Written with relaxed
//! atomics by the HTTP handlers and the scheduler thread; read when scraped.

use std::fmt::Write;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;

use super::scheduler::KvUsage;

/// How a request ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Completed (stop or length).
    Ok,
    /// 4xx: bad input, unknown model.
    Invalid,
    /// 503: the waiting queue was full.
    Rejected,
    /// The client went away before the end.
    Cancelled,
    /// 5xx: failed on our side.
    ServerError,
}

const OUTCOMES: [(Outcome, &str); 5] = [
    (Outcome::Ok, "ok"),
    (Outcome::Invalid, "invalid"),
    (Outcome::Rejected, "rejected"),
    (Outcome::Cancelled, "cancelled"),
    (Outcome::ServerError, "error"),
];

/// Time-to-first-token histogram bounds, seconds.
const TTFT_BOUNDS: [f64; 10] = [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

/// Everything /metrics reports.
#[derive(Default)]
pub struct Metrics {
    requests: [AtomicU64; 5],
    /// Prompt tokens of admitted requests.
    pub prompt_tokens: AtomicU64,
    /// Of those, reused from the prefix cache.
    pub cached_prompt_tokens: AtomicU64,
    /// Tokens generated.
    pub generated_tokens: AtomicU64,
    /// Sequences in the engine now.
    pub running: AtomicU64,
    /// Requests queued for admission now.
    pub waiting: AtomicU64,
    /// Prefill forward steps.
    pub prefill_steps: AtomicU64,
    /// Batched decode steps.
    pub decode_steps: AtomicU64,
    /// Rows over all decode steps (÷ decode_steps = mean batch).
    pub decode_rows: AtomicU64,
    kv_total: AtomicU64,
    kv_in_use: AtomicU64,
    kv_cached: AtomicU64,
    tokens_per_second: AtomicU64,
    ttft_buckets: [AtomicU64; TTFT_BOUNDS.len()],
    ttft_count: AtomicU64,
    ttft_sum_us: AtomicU64,
}

impl Metrics {
    /// Count one finished request.
    pub fn count(&self, o: Outcome) {
        let i = OUTCOMES.iter().position(|(x, _)| *x == o).unwrap_or(0);
        self.requests[i].fetch_add(1, Relaxed);
    }

    /// Requests that ended with `o` so far.
    #[cfg(test)]
    pub fn requests(&self, o: Outcome) -> u64 {
        let i = OUTCOMES.iter().position(|(x, _)| *x == o).unwrap_or(0);
        self.requests[i].load(Relaxed)
    }

    /// Latest pool occupancy.
    pub fn set_kv(&self, kv: KvUsage) {
        self.kv_total.store(kv.blocks_total as u64, Relaxed);
        self.kv_in_use.store(kv.blocks_in_use as u64, Relaxed);
        self.kv_cached.store(kv.blocks_cached as u64, Relaxed);
    }

    /// The pool occupancy last published.
    #[cfg(test)]
    pub fn kv(&self) -> KvUsage {
        KvUsage {
            blocks_total: self.kv_total.load(Relaxed) as usize,
            blocks_in_use: self.kv_in_use.load(Relaxed) as usize,
            blocks_cached: self.kv_cached.load(Relaxed) as usize,
        }
    }

    /// Generated tokens per second over the last seconds.
    pub fn set_tokens_per_second(&self, v: f64) {
        self.tokens_per_second.store(v.to_bits(), Relaxed);
    }

    /// One time-to-first-token observation.
    pub fn observe_ttft(&self, secs: f64) {
        for (b, &le) in self.ttft_buckets.iter().zip(&TTFT_BOUNDS) {
            if secs <= le {
                b.fetch_add(1, Relaxed);
            }
        }
        self.ttft_count.fetch_add(1, Relaxed);
        self.ttft_sum_us.fetch_add((secs * 1e6) as u64, Relaxed);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, lines: &[(String, String)]| {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, v) in lines {
                let _ = writeln!(s, "{name}{labels} {v}");
            }
        };
        let one = |v: u64| vec![(String::new(), v.to_string())];
        let reqs: Vec<(String, String)> = OUTCOMES
            .iter()
            .zip(&self.requests)
            .map(|((_, name), c)| {
                (
                    format!("{{outcome=\"{name}\"}}"),
                    c.load(Relaxed).to_string(),
                )
            })
            .collect();
        metric(
            "minfer_requests_total",
            "counter",
            "Completion requests by how they ended.",
            &reqs,
        );
        metric(
            "minfer_prompt_tokens_total",
            "counter",
            "Prompt tokens of admitted requests.",
            &one(self.prompt_tokens.load(Relaxed)),
        );
        metric(
            "minfer_prompt_tokens_cached_total",
            "counter",
            "Prompt tokens reused from the prefix cache.",
            &one(self.cached_prompt_tokens.load(Relaxed)),
        );
        metric(
            "minfer_generated_tokens_total",
            "counter",
            "Tokens generated.",
            &one(self.generated_tokens.load(Relaxed)),
        );
        metric(
            "minfer_generation_tokens_per_second",
            "gauge",
            "Generated tokens per second over the last 10 s.",
            &[(
                String::new(),
                format!(
                    "{:.3}",
                    f64::from_bits(self.tokens_per_second.load(Relaxed))
                ),
            )],
        );
        metric(
            "minfer_sequences_running",
            "gauge",
            "Sequences in the batch (prefilling or decoding).",
            &one(self.running.load(Relaxed)),
        );
        metric(
            "minfer_sequences_waiting",
            "gauge",
            "Requests waiting for a slot.",
            &one(self.waiting.load(Relaxed)),
        );
        metric(
            "minfer_kv_blocks_total",
            "gauge",
            "Blocks in the paged KV pool.",
            &one(self.kv_total.load(Relaxed)),
        );
        metric(
            "minfer_kv_blocks_in_use",
            "gauge",
            "KV blocks held by sequences or the prefix cache.",
            &one(self.kv_in_use.load(Relaxed)),
        );
        metric(
            "minfer_kv_blocks_cached",
            "gauge",
            "KV blocks held only by the prefix cache (evictable).",
            &one(self.kv_cached.load(Relaxed)),
        );
        metric(
            "minfer_prefill_steps_total",
            "counter",
            "Prefill forward steps (one chunk each).",
            &one(self.prefill_steps.load(Relaxed)),
        );
        metric(
            "minfer_decode_steps_total",
            "counter",
            "Batched decode steps.",
            &one(self.decode_steps.load(Relaxed)),
        );
        metric(
            "minfer_decode_rows_total",
            "counter",
            "Sequences over all decode steps (divided by the steps: the mean batch).",
            &one(self.decode_rows.load(Relaxed)),
        );
        let mut ttft: Vec<(String, String)> = TTFT_BOUNDS
            .iter()
            .zip(&self.ttft_buckets)
            .map(|(le, b)| {
                (
                    format!("_bucket{{le=\"{le}\"}}"),
                    b.load(Relaxed).to_string(),
                )
            })
            .collect();
        let n = self.ttft_count.load(Relaxed);
        ttft.push(("_bucket{le=\"+Inf\"}".into(), n.to_string()));
        ttft.push((
            "_sum".into(),
            format!("{:.6}", self.ttft_sum_us.load(Relaxed) as f64 / 1e6),
        ));
        ttft.push(("_count".into(), n.to_string()));
        metric(
            "minfer_time_to_first_token_seconds",
            "histogram",
            "From receiving a request to its first token.",
            &ttft,
        );
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        m.count(Outcome::Ok);
        m.count(Outcome::Rejected);
        m.observe_ttft(0.3);
        m.set_kv(KvUsage {
            blocks_total: 64,
            blocks_in_use: 5,
            blocks_cached: 2,
        });
        let t = m.render();
        for line in [
            "minfer_requests_total{outcome=\"ok\"} 1",
            "minfer_requests_total{outcome=\"rejected\"} 1",
            "minfer_kv_blocks_in_use 5",
            "minfer_time_to_first_token_seconds_bucket{le=\"0.25\"} 0",
            "minfer_time_to_first_token_seconds_bucket{le=\"0.5\"} 1",
            "minfer_time_to_first_token_seconds_count 1",
            "# TYPE minfer_generated_tokens_total counter",
        ] {
            assert!(t.lines().any(|l| l == line), "{line} missing from\n{t}");
        }
    }
}
