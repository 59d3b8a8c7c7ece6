//! llama.cpp's own tokenizer test suite, run through `minfer::load_tokenizer`: for each
//! vocab-only GGUF `ggml-vocab-NAME.gguf`, `.inp` holds test strings separated by
//! `\n__ggml_vocab_test__\n` and `.out` the ids Hugging Face `tokenizers` gives for each
//! (without special tokens), one line per string. Every case of every decoder vocabulary must
//! match; the test prints a per-vocabulary count either way.
//!
//! The files are not in the repository: scripts/fetch-vocab-suite.sh puts them in
//! .cache/vocab-suite (or $MINFER_VOCAB_SUITE). Missing files fail the test, never skip it.

use std::io::Write;
use std::path::{Path, PathBuf};

const SEPARATOR: &str = "\n__ggml_vocab_test__\n";

/// Vocabularies of the suite that are not run, with the reason printed in the table.
const NOT_RUN: &[(&str, &str)] = &[(
    "bert-bge",
    "a WordPiece vocabulary for an embedding model, not a decoder's",
)];

fn suite_dir() -> PathBuf {
    std::env::var_os("MINFER_VOCAB_SUITE")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".cache/vocab-suite"))
}

/// The test strings of one `.inp` file. Most files end with the separator, which terminates
/// the last string rather than starting an empty one (gemma-4's does not).
fn cases(inp: &str) -> Vec<&str> {
    if inp.is_empty() {
        return Vec::new();
    }
    inp.strip_suffix(SEPARATOR)
        .unwrap_or(inp)
        .split(SEPARATOR)
        .collect()
}

/// The ids of each case, one line each (an empty line: no tokens).
fn expected(out: &str) -> Result<Vec<Vec<u32>>, String> {
    out.lines()
        .map(|line| {
            line.split_whitespace()
                .map(|t| t.parse::<u32>().map_err(|e| format!("{t:?}: {e}")))
                .collect()
        })
        .collect()
}

fn short(s: &str) -> String {
    let t: String = s.chars().take(50).collect();
    format!("{t:?}{}", if s.chars().count() > 50 { "…" } else { "" })
}

struct Outcome {
    name: String,
    passed: usize,
    total: usize,
    note: String,
}

fn run_vocab(name: &str, gguf: &Path, failures: &mut Vec<String>) -> Outcome {
    let mut outcome = Outcome {
        name: name.to_string(),
        passed: 0,
        total: 0,
        note: String::new(),
    };
    let read = |ext: &str| {
        let p = gguf.with_extension(format!("gguf.{ext}"));
        std::fs::read_to_string(&p).map_err(|e| format!("{}: {e}", p.display()))
    };
    let (inp, out) = match (read("inp"), read("out")) {
        (Ok(i), Ok(o)) => (i, o),
        (Err(e), _) | (_, Err(e)) => {
            outcome.note = e.clone();
            failures.push(format!("{name}: {e}"));
            return outcome;
        }
    };
    let texts = cases(&inp);
    let want = match expected(&out) {
        Ok(w) => w,
        Err(e) => {
            outcome.note = format!("bad .out: {e}");
            failures.push(format!("{name}: bad .out: {e}"));
            return outcome;
        }
    };
    outcome.total = texts.len();
    if texts.len() != want.len() {
        let e = format!(
            "{} strings in .inp, {} lines in .out",
            texts.len(),
            want.len()
        );
        outcome.note = e.clone();
        failures.push(format!("{name}: {e}"));
        return outcome;
    }
    let tok = match minfer::load_tokenizer(gguf) {
        Ok(t) => t,
        Err(e) => {
            outcome.note = format!("load: {e}");
            failures.push(format!("{name}: load: {e}"));
            return outcome;
        }
    };
    let mut shown = 0;
    for (text, want) in texts.iter().zip(&want) {
        match tok.encode(text, false) {
            Ok(got) if &got == want => outcome.passed += 1,
            Ok(got) => {
                if shown < 5 {
                    failures.push(format!(
                        "{name} {}:\n    got  {got:?}\n    want {want:?}",
                        short(text)
                    ));
                }
                shown += 1;
            }
            Err(e) => {
                if shown < 5 {
                    failures.push(format!("{name} {}: error {e}", short(text)));
                }
                shown += 1;
            }
        }
    }
    if shown > 5 {
        failures.push(format!("{name}: … and {} more", shown - 5));
    }
    outcome
}

#[test]
fn llama_cpp_vocab_suite() {
    let dir = suite_dir();
    let mut ggufs: Vec<PathBuf> = match std::fs::read_dir(&dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("ggml-vocab-") && n.ends_with(".gguf"))
            })
            .collect(),
        Err(e) => panic!(
            "llama.cpp's vocab suite is missing ({}: {e}); run scripts/fetch-vocab-suite.sh",
            dir.display()
        ),
    };
    ggufs.sort();
    assert!(
        !ggufs.is_empty(),
        "no ggml-vocab-*.gguf in {}; run scripts/fetch-vocab-suite.sh",
        dir.display()
    );

    let mut failures = Vec::new();
    let mut table = Vec::new();
    let (mut passed, mut total) = (0, 0);
    for gguf in &ggufs {
        let file = gguf
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        let name = &file["ggml-vocab-".len()..file.len() - ".gguf".len()];
        if let Some((_, why)) = NOT_RUN.iter().find(|(n, _)| *n == name) {
            table.push(format!("  {name:<16} not run: {why}"));
            continue;
        }
        // Some vocabularies ship without test strings (aquila, baichuan, ...): nothing to run.
        if !gguf.with_extension("gguf.inp").exists() {
            table.push(format!("  {name:<16} no test strings (.inp) in the suite"));
            continue;
        }
        let o = run_vocab(name, gguf, &mut failures);
        passed += o.passed;
        total += o.total;
        let mark = if o.passed == o.total && o.note.is_empty() {
            "ok"
        } else {
            "FAIL"
        };
        table.push(format!(
            "  {:<16} {:>3}/{:<3} {mark} {}",
            o.name, o.passed, o.total, o.note
        ));
    }
    // Straight to the process's stderr, past the test harness's capture: the table is the
    // point of the test even when it passes.
    let _ = writeln!(
        std::io::stderr(),
        "llama.cpp vocab suite ({}): {passed}/{total} cases\n{}",
        dir.display(),
        table.join("\n")
    );
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn case_splitting_keeps_empty_strings() {
    let inp = format!("a{SEPARATOR}{SEPARATOR} b{SEPARATOR}");
    assert_eq!(cases(&inp), ["a", "", " b"]);
    assert_eq!(cases(&format!("a{SEPARATOR}\n")), ["a", "\n"]);
    assert_eq!(
        expected("1 2\n\n3\n").unwrap(),
        [vec![1, 2], vec![], vec![3]]
    );
}
