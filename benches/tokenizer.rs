//! Tokenizer throughput: encodes the same ~1 MB text with each fixture tokenizer (or the one
//! given) and prints MB/s, best of several runs, single thread. scripts/bench-tokenizer.sh runs
//! this next to the Python `tokenizers` package on the same text and prints the ratio.
//!
//! Usage: cargo bench --bench tokenizer -- [TOKENIZER_JSON TEXT_FILE]

use std::path::{Path, PathBuf};
use std::time::Instant;

use minfer::Tokenizer;

const RUNS: usize = 5;

fn bench(name: &str, tok_path: &Path, text: &str) {
    let tok = match Tokenizer::from_file(tok_path) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{name}: {e}");
            std::process::exit(2);
        }
    };
    // A fresh tokenizer per run would measure cache warm-up; the Python side also keeps its
    // cache across runs, so both report the best of RUNS on a warm tokenizer.
    let mut best = f64::INFINITY;
    let mut n = 0;
    for _ in 0..RUNS {
        let t0 = Instant::now();
        let ids = tok.encode(text, false).expect("encode");
        let dt = t0.elapsed().as_secs_f64();
        n = ids.len();
        best = best.min(dt);
    }
    let mb = text.len() as f64 / 1e6;
    println!(
        "minfer {name}: {mb:.2} MB -> {n} tokens, best {best:.4} s = {:.2} MB/s",
        mb / best
    );
    // The same text line by line (many short encode calls), as chat prompts are encoded.
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let mut best = f64::INFINITY;
    for _ in 0..RUNS {
        let t0 = Instant::now();
        n = 0;
        for l in &lines {
            n += tok.encode(l, false).expect("encode").len();
        }
        best = best.min(t0.elapsed().as_secs_f64());
    }
    println!(
        "minfer {name} per line: {mb:.2} MB in {} lines -> {n} tokens, best {best:.4} s = {:.2} MB/s",
        lines.len(),
        mb / best
    );
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizers");
    let text_path = args
        .get(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("corpus.txt"));
    let corpus = std::fs::read_to_string(&text_path).expect("read text");
    // Repeat the corpus up to ~1 MB.
    let mut text = String::new();
    while text.len() < 1_000_000 {
        text.push_str(&corpus);
    }
    match args.first() {
        Some(p) => bench(p, Path::new(p), &text),
        None => {
            for name in ["qwen2", "smollm2", "llama3ish", "llama2ish"] {
                bench(name, &root.join(name).join("tokenizer.json"), &text);
            }
        }
    }
}
