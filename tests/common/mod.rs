//! Shared by the integration tests: the transformers oracle fixtures and how to check a model
//! against them. One test body, instantiated per backend (CPU here; the PTX interpreter in
//! tests/cuda_*.rs).
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use minfer::{GenerateOptions, Model};
use serde_json::Value;

/// tests/fixtures/models of this checkout, or `$MINFER_FIXTURES` (test executables copied to a
/// GPU machine find the fixtures there).
pub fn fixtures_dir() -> PathBuf {
    match std::env::var_os("MINFER_FIXTURES") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models"),
    }
}

/// Every variant directory, sorted.
pub fn variants() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(fixtures_dir())
        .expect("tests/fixtures/models exists")
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("expected.json").is_file())
        .collect();
    v.sort();
    v
}

pub fn expected(dir: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap()
}

pub fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

pub fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

/// Check one fixture variant: last-position logits within `rel_tol × max|logit|` of
/// transformers, argmax at every prompt position and the 16-token greedy continuation identical.
/// `load(dir, all_logits)` builds the model on the backend under test.
pub fn check_variant(dir: &Path, rel_tol: f32, load: &dyn Fn(&Path, bool) -> Model) {
    let name = dir.file_name().unwrap().to_string_lossy().to_string();
    let exp = expected(dir);
    let mut scorer = load(dir, true);
    assert_eq!(
        scorer.num_parameters(),
        exp["num_parameters"].as_u64().unwrap(),
        "{name}: parameter count"
    );
    let mut generator = load(dir, false);
    for case in exp["cases"].as_array().unwrap() {
        let prompt = ids(&case["prompt"]);
        let want_logits = floats(&case["last_logits"]);
        let tol = rel_tol * case["max_abs_logit"].as_f64().unwrap() as f32;
        let (argmax, logits) = scorer.score(&prompt).unwrap();
        let worst = logits
            .iter()
            .zip(&want_logits)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(
            worst <= tol,
            "{name}, prompt len {}: max |Δlogit| = {worst:e} > tol {tol:e}",
            prompt.len()
        );
        assert_eq!(
            argmax,
            ids(&case["argmax"]),
            "{name}, prompt len {}: argmax per position",
            prompt.len()
        );

        let want_greedy = ids(&case["greedy"]);
        let got = greedy_ids(&mut generator, &prompt, want_greedy.len());
        assert_eq!(
            got,
            want_greedy,
            "{name}, prompt len {}: greedy continuation",
            prompt.len()
        );
    }
}

/// The real test model (SmolLM2-135M-Instruct, Q4_1), fetched by scripts/fetch-model.sh
/// (scripts/test.sh runs it). A missing file fails the test, unless `MINFER_ALLOW_SKIP=1`; see
/// [`require_file`].
pub fn real_model() -> Option<PathBuf> {
    require_file(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("models/SmolLM2-135M-Instruct.Q4_1.gguf"),
        "run scripts/fetch-model.sh; scripts/test.sh does",
    )
}

/// The real Gemma 3 270M (Q4_K_M), fetched by scripts/fetch-model.sh; as [`real_model`].
#[allow(dead_code)]
pub fn gemma_model() -> Option<PathBuf> {
    require_file(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("models/gemma-3-270m-q4_k_m.gguf"),
        "run scripts/fetch-model.sh; scripts/test.sh does",
    )
}

/// `n` greedy tokens after `prompt` from an empty cache, not stopping at EOS.
#[allow(dead_code)]
pub fn greedy_ids(model: &mut Model, prompt: &[u32], n: usize) -> Vec<u32> {
    let opts = GenerateOptions {
        max_new_tokens: n,
        ignore_eos: true,
        ..Default::default()
    };
    model.reset();
    let mut got = Vec::new();
    model
        .generate(prompt, &opts, |id| {
            got.push(id);
            true
        })
        .unwrap();
    got
}

/// Where skipped tests are listed, one line each (scripts/test.sh prints the file at the end).
pub fn skip_log() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("minfer-skipped.txt")
}

/// `path` if it is a file. Otherwise the test fails, naming the file and `how` to get it,
/// unless the environment sets `MINFER_ALLOW_SKIP=1`: then this returns None, after writing
/// "SKIPPED <test>: <path> is missing (<how>)" to stderr (unbuffered and not captured by the
/// test harness, so it shows in every run's output) and appending the same line to
/// [`skip_log`]. A skipped test must never be mistaken for a pass.
pub fn require_file(path: &Path, how: &str) -> Option<PathBuf> {
    if path.is_file() {
        return Some(path.to_path_buf());
    }
    let test = std::thread::current()
        .name()
        .unwrap_or("<unnamed test>")
        .to_string();
    let exe = std::env::current_exe()
        .ok()
        .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .unwrap_or_default();
    let exe = exe.split('-').next().unwrap_or_default().to_string();
    let reason = format!("{} is missing ({how})", path.display());
    if std::env::var("MINFER_ALLOW_SKIP").as_deref() != Ok("1") {
        panic!(
            "{reason}; set MINFER_ALLOW_SKIP=1 to skip the tests that need it (they are then listed as skipped)"
        );
    }
    let line = format!("SKIPPED {exe}::{test}: {reason}");
    record_skip(&line);
    None
}

/// Write `line` to the uncaptured stderr and append it to [`skip_log`].
pub fn record_skip(line: &str) {
    use std::io::Write;
    // io::stderr() bypasses libtest's output capture (only the print macros are captured).
    let _ = writeln!(std::io::stderr(), "\n{line}");
    let log = skip_log();
    if let Some(dir) = log.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
    {
        let _ = writeln!(f, "{line}");
    }
}

/// The library's SplitMix64 generator with the helpers the kernel tests use (one definition for
/// every test file).
pub struct Rng(minfer::internals::Rng);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(minfer::internals::Rng::new(seed))
    }
    pub fn next(&mut self) -> u64 {
        self.0.next_u64()
    }
    /// Uniform in [-1, 1).
    pub fn f32(&mut self) -> f32 {
        self.0.next_f32() * 2.0 - 1.0
    }
    pub fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.f32()).collect()
    }
    /// Uniform in 0..n.
    pub fn below(&mut self, n: u32) -> u32 {
        (self.next() % n as u64) as u32
    }
}

/// Print, uncaptured (so a passing run shows it too), which instruction sets a test ran and
/// which it could not run on this CPU: a path the machine lacks is reported as not run, never
/// passed silently.
#[allow(dead_code)]
pub fn report_isas(test: &str, ran: &[String], not_run: &[String]) {
    use std::io::Write;
    let not_run = if not_run.is_empty() {
        "none".to_string()
    } else {
        not_run.join(", ")
    };
    let _ = writeln!(
        std::io::stderr(),
        "\n{test}: instruction sets RUN: {}; NOT RUN: {not_run}",
        ran.join(", ")
    );
}
