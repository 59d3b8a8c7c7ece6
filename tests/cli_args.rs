//! The `minfer` command line as a user meets it: help and version, `--` ending the options,
//! suggestions for misspelt flags, a stdout closed early (`| head`), errors that name the right
//! culprit (a missing text file, `--ctx` above the model's maximum, flags rather than the
//! library's field names), and why generation stopped, for people and in `--json`.

mod common;

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_minfer"))
}

/// Exit code, stdout, stderr.
fn minfer(args: &[&str]) -> (i32, String, String) {
    let out = bin().args(args).output().expect("run minfer");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

/// A usage or input error: exit 2, nothing on stdout, one error line and one hint line.
fn assert_error(args: &[&str]) -> String {
    let (code, stdout, stderr) = minfer(args);
    assert_eq!(code, 2, "{args:?}: {stderr}");
    assert!(stdout.is_empty(), "{args:?}: {stdout}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(
        lines.len(),
        2,
        "{args:?}: one error line and one hint: {stderr}"
    );
    assert!(
        lines[0].starts_with("error: ") && lines[1].starts_with("hint: "),
        "{args:?}: {stderr}"
    );
    stderr
}

fn fixture(name: &str) -> String {
    common::fixtures_dir()
        .join(name)
        .to_string_lossy()
        .into_owned()
}

fn tokenizer_json() -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/real/smollm2_tokenizer.json")
        .to_string_lossy()
        .into_owned()
}

fn json(stdout: &str) -> serde_json::Value {
    serde_json::from_str(stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

const COMMANDS: &[(&str, &str)] = &[
    ("demo", "--prompt"),
    ("generate", "--max-new-tokens"),
    ("chat", "--system"),
    ("tokenize", "--special"),
    ("logits", "--activations"),
    ("perplexity", "--ctx"),
    ("inspect", "--json"),
    ("convert", "--dtype"),
    ("bench", "--prompt-len"),
];

#[test]
fn every_command_has_help_with_its_options_and_an_example() {
    for &(cmd, option) in COMMANDS {
        for args in [vec![cmd, "--help"], vec![cmd, "-h"], vec!["help", cmd]] {
            let (code, stdout, stderr) = minfer(&args);
            assert_eq!(code, 0, "{args:?}: {stderr}");
            assert!(
                stdout.contains(&format!("Usage: minfer {cmd}")),
                "{args:?}: {stdout}"
            );
            assert!(stdout.contains(option), "{args:?} lists {option}: {stdout}");
            assert!(
                stdout.contains("Example") && stdout.contains(&format!("minfer {cmd}")),
                "{args:?} shows an example: {stdout}"
            );
        }
    }
    // The model options are on every command that loads a model.
    let (_, stdout, _) = minfer(&["generate", "--help"]);
    for flag in [
        "--device",
        "--threads",
        "--ctx",
        "--dequantize",
        "--quantize",
        "--temperature",
        "--top-k",
        "--top-p",
        "--min-p",
        "--repeat-penalty",
        "--seed",
        "--stop",
        "--ignore-eos",
        "--ids",
        "--prompt",
        "--chat",
        "--system",
        "--json",
        "stop_reason",
        "context_full",
    ] {
        assert!(stdout.contains(flag), "generate --help lists {flag}");
    }
}

#[test]
fn top_level_help_and_version() {
    for args in [vec!["-h"], vec!["--help"], vec!["help"], vec![]] {
        let (code, stdout, stderr) = minfer(&args);
        assert_eq!(code, 0, "{args:?}: {stderr}");
        for &(cmd, _) in COMMANDS {
            assert!(stdout.contains(cmd), "{args:?} lists {cmd}: {stdout}");
        }
        // scripts/gpu-check.sh looks for --device in `minfer help`.
        assert!(stdout.contains("--device"), "{args:?}: {stdout}");
    }
    let (code, stdout, _) = minfer(&["--version"]);
    assert_eq!(code, 0);
    assert_eq!(
        stdout.trim(),
        format!("minfer {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn double_dash_ends_the_options() {
    let tok = tokenizer_json();
    let (code, stdout, stderr) = minfer(&["tokenize", &tok, "--json", "--", "--- ***"]);
    assert_eq!(code, 0, "{stderr}");
    let v = json(&stdout);
    let pieces: Vec<&str> = v["pieces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert_eq!(pieces.concat(), "---Ġ***", "{v}");
    // Without `--` the text reads as an option; the hint says how to pass it.
    let stderr = assert_error(&["tokenize", &tok, "--- ***"]);
    assert!(stderr.contains("-- "), "{stderr}");
}

#[test]
fn misspelt_flags_and_commands_get_a_suggestion() {
    let d = fixture("llama_mha_tied");
    let stderr = assert_error(&["generate", &d, "--ids", "1", "--max-new-token", "3"]);
    assert!(
        stderr.contains("did you mean '--max-new-tokens'?"),
        "{stderr}"
    );
    assert!(stderr.contains("minfer generate --help"), "{stderr}");
    let stderr = assert_error(&["generat", &d]);
    assert!(
        stderr.contains("did you mean") && stderr.contains("'generate'"),
        "{stderr}"
    );
    let stderr = assert_error(&["chat", &d, "--temprature", "1"]);
    assert!(stderr.contains("'--temperature'"), "{stderr}");
    let stderr = assert_error(&["logits", &d, "--ids", "1", "--jsn"]);
    assert!(stderr.contains("'--json'"), "{stderr}");
    // An option of another command (logits does not sample).
    let stderr = assert_error(&["logits", &d, "--ids", "1", "--temperature", "1"]);
    assert!(stderr.contains("minfer logits --help"), "{stderr}");
}

/// Run with stdout a pipe whose reader is already gone: the first write fails with EPIPE.
fn with_stdout_closed(args: &[&str]) -> Output {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    bin()
        .args(args)
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .unwrap()
}

fn assert_quiet_exit(args: &[&str], out: &Output) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{args:?}: {stderr}");
    assert!(
        !stderr.contains("panicked") && !stderr.to_lowercase().contains("broken pipe"),
        "{args:?}: {stderr}"
    );
}

#[test]
fn a_closed_stdout_ends_quietly() {
    let d = fixture("llama_mha_tied");
    let q = fixture("qwen3_norms");
    let tok = tokenizer_json();
    for args in [
        vec!["logits", &d, "--ids", "1,2,3", "--json"],
        vec!["logits", &q, "--ids", "1,2,3", "--activations"],
        vec!["generate", &d, "--ids", "1,2,3", "--max-new-tokens", "50"],
        vec!["generate", &d, "--ids", "1,2,3", "--json"],
        vec!["tokenize", &tok, "Hello world 123"],
        vec!["inspect", &d],
        vec!["--help"],
        vec!["generate", "--help"],
    ] {
        let out = with_stdout_closed(&args);
        assert_quiet_exit(&args, &out);
        // Nothing more is said once the reader is gone (no statistics line).
        if args[0] == "generate" {
            assert!(out.stderr.is_empty(), "{args:?}");
        }
    }
}

#[test]
fn head_on_a_long_generation_ends_it_quietly() {
    let Some(g) = common::real_model() else {
        return;
    };
    let g = g.to_str().unwrap();
    // `minfer generate ... | head -c 10`: read 10 bytes, close the pipe, the rest of the
    // 500 tokens is not generated.
    let args = [
        "generate",
        g,
        "--prompt",
        "Once upon a time",
        "--max-new-tokens",
        "500",
        "--ignore-eos",
        "--threads",
        "2",
    ];
    let mut child = bin()
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut head = [0u8; 10];
    stdout.read_exact(&mut head).unwrap();
    drop(stdout);
    let t = std::time::Instant::now();
    let out = child.wait_with_output().unwrap();
    assert_quiet_exit(&args, &out);
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        t.elapsed().as_secs() < 20,
        "generation went on after the pipe closed"
    );
    // `minfer logits ... --json | head -c 300`
    let args = ["logits", g, "--prompt", "Hello", "--json"];
    let mut child = bin()
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut head = [0u8; 300];
    stdout.read_exact(&mut head).unwrap();
    drop(stdout);
    assert_quiet_exit(&args, &child.wait_with_output().unwrap());
}

#[test]
fn perplexity_names_a_missing_text_file() {
    let d = fixture("llama_mha_tied");
    let missing = std::env::temp_dir().join("minfer-no-such-text.txt");
    let stderr = assert_error(&["perplexity", &d, missing.to_str().unwrap()]);
    assert!(
        stderr.contains("minfer-no-such-text.txt") && stderr.contains("text file"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("config.json"),
        "no model-directory hint: {stderr}"
    );
}

#[test]
fn ctx_above_the_models_maximum_is_an_error() {
    let d = fixture("llama_mha_tied"); // max_position_embeddings 256
    for args in [
        vec!["generate", &d, "--ids", "1", "--ctx", "100000"],
        vec!["logits", &d, "--ids", "1", "--ctx", "257"],
        vec!["perplexity", &d, &tokenizer_json(), "--ctx", "300"],
        vec![
            "bench",
            &d,
            "--ctx",
            "1000",
            "--prompt-len",
            "4",
            "--gen-len",
            "2",
        ],
    ] {
        let stderr = assert_error(&args);
        assert!(
            stderr.contains("--ctx") && stderr.contains("256"),
            "{args:?}: {stderr}"
        );
    }
    let stderr = assert_error(&[
        "bench",
        "synthetic:smollm2-135m",
        "--ctx",
        "100000",
        "--prompt-len",
        "4",
        "--gen-len",
        "2",
    ]);
    assert!(
        stderr.contains("--ctx") && stderr.contains("8192"),
        "{stderr}"
    );
    // bench sizes the cache for its run when --ctx is not given: too long a run is named.
    let stderr = assert_error(&["bench", &d, "--prompt-len", "300", "--gen-len", "2"]);
    assert!(
        stderr.contains("--prompt-len 300") && stderr.contains("256"),
        "{stderr}"
    );
    // At the maximum is fine.
    let (code, _, stderr) = minfer(&[
        "generate",
        &d,
        "--ids",
        "1",
        "--ctx",
        "256",
        "--max-new-tokens",
        "2",
    ]);
    assert_eq!(code, 0, "{stderr}");
}

#[test]
fn library_errors_name_the_flags() {
    let d = fixture("llama_mha_tied");
    let q = fixture("qwen3_norms");
    let field_names = [
        "temperature =",
        "top_p",
        "min_p",
        "repetition_penalty",
        "context_len",
        "LoadOptions",
        "SamplerConfig",
        "record_activations",
        "quantize =",
        "device =",
    ];
    for (args, flag) in [
        (
            vec!["generate", &d, "--ids", "1", "--temperature", "-1"],
            "--temperature",
        ),
        (
            vec!["generate", &d, "--ids", "1", "--top-p", "0"],
            "--top-p",
        ),
        (
            vec!["generate", &d, "--ids", "1", "--min-p", "2"],
            "--min-p",
        ),
        (
            vec!["generate", &d, "--ids", "1", "--repeat-penalty", "0"],
            "--repeat-penalty",
        ),
        (
            vec!["generate", &d, "--ids", "1,2,3,4,5", "--ctx", "3"],
            "--ctx",
        ),
        (
            vec!["generate", &d, "--ids", "1", "--device", "tpu"],
            "--device",
        ),
        (
            vec![
                "generate",
                &d,
                "--ids",
                "1",
                "--device",
                "sim",
                "--quantize",
                "q8_0",
            ],
            "--quantize",
        ),
        (
            vec![
                "logits",
                &q,
                "--ids",
                "1",
                "--device",
                "sim",
                "--activations",
            ],
            "--activations",
        ),
    ] {
        let stderr = assert_error(&args);
        let line = stderr.lines().next().unwrap();
        assert!(line.contains(flag), "{args:?}: {stderr}");
        for name in field_names {
            assert!(
                !line.contains(name),
                "{args:?} names a library field: {stderr}"
            );
        }
    }
}

/// `generate --json` on a fixture with ids: the new ids and the stop reason.
fn generate_json(args: &[&str]) -> serde_json::Value {
    let d = fixture("llama_mha_tied");
    let mut all = vec!["generate", d.as_str(), "--json"];
    all.extend_from_slice(args);
    let (code, stdout, stderr) = minfer(&all);
    assert_eq!(code, 0, "{all:?}: {stderr}");
    json(&stdout)
}

fn generate_stats_line(args: &[&str]) -> String {
    let d = fixture("llama_mha_tied");
    let mut all = vec!["generate", d.as_str()];
    all.extend_from_slice(args);
    let (code, _, stderr) = minfer(&all);
    assert_eq!(code, 0, "{all:?}: {stderr}");
    stderr
}

#[test]
fn every_stop_reason_is_reported() {
    let exp = common::expected(&common::fixtures_dir().join("llama_mha_tied"));
    let case = &exp["cases"][0];
    let prompt: Vec<String> = common::ids(&case["prompt"])
        .iter()
        .map(u32::to_string)
        .collect();
    let prompt = prompt.join(",");
    let greedy = common::ids(&case["greedy"]);

    // max_tokens
    let v = generate_json(&["--ids", &prompt, "--max-new-tokens", "3", "--ignore-eos"]);
    assert_eq!(v["stop_reason"], "max_tokens", "{v}");
    assert_eq!(common::ids(&v["ids"]), greedy[..3]);
    let s = generate_stats_line(&["--ids", &prompt, "--max-new-tokens", "3", "--ignore-eos"]);
    assert!(s.contains("stopped: --max-new-tokens 3 reached"), "{s}");

    // stop_id: the third greedy token, given with --stop, ends generation before it.
    let stop = greedy[2].to_string();
    let v = generate_json(&["--ids", &prompt, "--stop", &stop, "--ignore-eos"]);
    assert_eq!(v["stop_reason"], "stop_id", "{v}");
    assert_eq!(v["stop_token"], greedy[2]);
    assert_eq!(common::ids(&v["ids"]), greedy[..2]);
    let s = generate_stats_line(&["--ids", &prompt, "--stop", &stop, "--ignore-eos"]);
    assert!(s.contains(&format!("stopped: stop id {stop}")), "{s}");

    // context_full: 7 prompt tokens in --ctx 10.
    let args = ["--ids", "1,2,3,4,5,6,7", "--ctx", "10", "--ignore-eos"];
    let v = generate_json(&args);
    assert_eq!(v["stop_reason"], "context_full", "{v}");
    assert_eq!(v["ids"].as_array().unwrap().len(), 4, "{v}");
    let s = generate_stats_line(&args);
    assert!(
        s.contains("stopped: context full") && s.contains("--ctx 10") && s.contains("raise --ctx"),
        "{s}"
    );
}

#[test]
fn eos_is_reported_on_the_real_model() {
    let Some(g) = common::real_model() else {
        return;
    };
    let g = g.to_str().unwrap();
    let args = [
        "generate",
        g,
        "--chat",
        "--prompt",
        "Say hi.",
        "--threads",
        "2",
    ];
    let (code, stdout, stderr) = minfer(&[&args[..], &["--json"]].concat());
    assert_eq!(code, 0, "{stderr}");
    let v = json(&stdout);
    assert_eq!(v["stop_reason"], "eos", "{v}");
    assert_eq!(v["stop_token"], 2, "{v}"); // <|im_end|>
    let (code, _, stderr) = minfer(&args);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("stopped: end of sequence"), "{stderr}");
}

#[test]
fn demo_answers_with_its_stop_reason() {
    if common::real_model().is_none() {
        return;
    }
    let (code, stdout, stderr) = minfer(&["demo", "--max-new-tokens", "8", "--threads", "2"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(!stdout.trim().is_empty(), "{stderr}");
    assert!(
        stderr.contains("parameters on") && stderr.contains("stopped: --max-new-tokens 8"),
        "{stderr}"
    );
}
