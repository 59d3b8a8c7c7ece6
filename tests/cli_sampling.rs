//! The binary's sampling flags reach the sampler: every flag, set on its own against a common
//! baseline, changes the generated ids; the output equals the library's `generate` with the same
//! settings (so a flag cannot be parsed into the wrong field); different seeds differ and equal
//! seeds agree; `--stop` ends at the given id.

mod common;

use std::process::Command;

use minfer::{GenerateOptions, LoadOptions, Model, SamplerConfig};

const V: &str = "llama_gqa_untied";
const N: usize = 24;

fn prompt() -> Vec<u32> {
    let exp = common::expected(&common::fixtures_dir().join(V));
    common::ids(&exp["cases"][2]["prompt"])
}

fn cli(extra: &[&str]) -> Vec<u32> {
    let ids: Vec<String> = prompt().iter().map(u32::to_string).collect();
    let dir = common::fixtures_dir().join(V);
    let n = N.to_string();
    let ids_arg = ids.join(",");
    let mut args = vec![
        "generate",
        dir.to_str().unwrap(),
        "--ids",
        &ids_arg,
        "--max-new-tokens",
        &n,
        "--threads",
        "2",
        "--json",
    ];
    args.extend_from_slice(extra);
    let out = Command::new(env!("CARGO_BIN_EXE_minfer"))
        .args(&args)
        .output()
        .expect("run minfer");
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "minfer {args:?}: {stderr}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    common::ids(&v["ids"])
}

fn library(cfg: &SamplerConfig) -> Vec<u32> {
    let mut m = Model::load(
        &common::fixtures_dir().join(V),
        &LoadOptions {
            threads: 2,
            ..LoadOptions::default()
        },
    )
    .unwrap();
    let mut got = Vec::new();
    m.generate(
        &prompt(),
        &GenerateOptions {
            max_new_tokens: N,
            sampling: cfg.clone(),
            ..Default::default()
        },
        |t| {
            got.push(t);
            true
        },
    )
    .unwrap();
    got
}

#[test]
fn each_sampling_flag_changes_the_output_and_matches_the_library() {
    let base_cfg = SamplerConfig {
        temperature: 1.0,
        seed: 42,
        ..Default::default()
    };
    let base_flags = ["--temperature", "1.0", "--seed", "42"];
    let base = cli(&base_flags);
    assert_eq!(base, library(&base_cfg), "baseline");
    assert!(base.len() >= 8, "baseline stopped early: {base:?}");
    let variants: Vec<(&str, &str, SamplerConfig)> = vec![
        (
            "--temperature",
            "0.4",
            SamplerConfig {
                temperature: 0.4,
                ..base_cfg.clone()
            },
        ),
        (
            "--top-k",
            "3",
            SamplerConfig {
                top_k: 3,
                ..base_cfg.clone()
            },
        ),
        (
            "--top-p",
            "0.5",
            SamplerConfig {
                top_p: 0.5,
                ..base_cfg.clone()
            },
        ),
        (
            "--min-p",
            "0.3",
            SamplerConfig {
                min_p: 0.3,
                ..base_cfg.clone()
            },
        ),
        (
            "--repeat-penalty",
            "1.8",
            SamplerConfig {
                repetition_penalty: 1.8,
                ..base_cfg.clone()
            },
        ),
        (
            "--seed",
            "43",
            SamplerConfig {
                seed: 43,
                ..base_cfg.clone()
            },
        ),
    ];
    for (flag, value, cfg) in variants {
        // The flag given last wins over the baseline's (for --temperature and --seed).
        let mut flags = base_flags.to_vec();
        flags.extend([flag, value]);
        let got = cli(&flags);
        assert_ne!(got, base, "{flag} {value} did not change the output");
        assert_eq!(got, library(&cfg), "{flag} {value}: CLI vs library");
    }
}

#[test]
fn seeds_decide_the_sample() {
    let run = |seed: &str| cli(&["--temperature", "1.0", "--seed", seed]);
    let a = run("7");
    assert_eq!(a, run("7"));
    for other in ["8", "1000", "18446744073709551615"] {
        assert_ne!(a, run(other), "seed 7 vs {other}");
    }
}

#[test]
fn stop_flag_ends_at_the_given_id() {
    let greedy = cli(&[]);
    let stop = greedy[6];
    let first = greedy.iter().position(|&t| t == stop).unwrap();
    // Two ids, one never generated: the other one stops.
    let absent = (0..256u32).find(|t| !greedy.contains(t)).unwrap();
    let got = cli(&["--stop", &format!("{absent},{stop}")]);
    assert_eq!(got, greedy[..first]);
}
