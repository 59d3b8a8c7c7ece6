//! The `minfer` binary: JSON outputs, and errors as one line + hint with exit code 2.

mod common;

use std::process::Command;

fn minfer(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_minfer"))
        .args(args)
        .output()
        .expect("run minfer");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn logits_json_matches_the_oracle() {
    let dir = common::fixtures_dir().join("qwen2_bias");
    let exp = common::expected(&dir);
    let case = &exp["cases"][1];
    let ids: Vec<String> = common::ids(&case["prompt"])
        .iter()
        .map(u32::to_string)
        .collect();
    let (code, stdout, stderr) = minfer(&[
        "logits",
        dir.to_str().unwrap(),
        "--ids",
        &ids.join(","),
        "--json",
        "--threads",
        "1",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(common::ids(&v["argmax"]), common::ids(&case["argmax"]));
    let got = common::floats(&v["logits"]);
    let want = common::floats(&case["last_logits"]);
    let tol = 1e-4 * case["max_abs_logit"].as_f64().unwrap() as f32;
    assert_eq!(got.len(), want.len());
    assert!(got.iter().zip(&want).all(|(a, b)| (a - b).abs() <= tol));
}

#[test]
fn generate_json_is_greedy_by_default_and_seeded_sampling_is_reproducible() {
    let dir = common::fixtures_dir().join("llama_gqa_untied");
    let exp = common::expected(&dir);
    let case = &exp["cases"][2];
    let ids: Vec<String> = common::ids(&case["prompt"])
        .iter()
        .map(u32::to_string)
        .collect();
    let d = dir.to_str().unwrap();
    let (code, stdout, stderr) = minfer(&[
        "generate",
        d,
        "--ids",
        &ids.join(","),
        "--max-new-tokens",
        "16",
        "--json",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(common::ids(&v["ids"]), common::ids(&case["greedy"]));
    assert!(
        v["prefill_tok_s"].as_f64().unwrap() > 0.0 && v["decode_tok_s"].as_f64().unwrap() > 0.0
    );

    let sample = |seed: &str| {
        let (code, stdout, stderr) = minfer(&[
            "generate",
            d,
            "--ids",
            "1,2,3",
            "--max-new-tokens",
            "12",
            "--temperature",
            "1.0",
            "--top-k",
            "50",
            "--top-p",
            "0.95",
            "--min-p",
            "0.01",
            "--repeat-penalty",
            "1.1",
            "--seed",
            seed,
            "--json",
        ]);
        assert_eq!(code, 0, "{stderr}");
        let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        common::ids(&v["ids"])
    };
    assert_eq!(sample("42"), sample("42"));
}

#[test]
fn errors_exit_2_with_a_hint() {
    let d = common::fixtures_dir().join("llama_mha_tied");
    let d = d.to_str().unwrap();
    for args in [
        vec!["logits", "/nonexistent-model", "--ids", "1"],
        vec!["logits", d, "--ids", "1,x"],
        vec!["generate", d, "--ids", "1,999999"],
        vec!["generate", d, "--ids", "1", "--top-p", "0"],
        vec!["generate", d, "--ids", "1", "--bogus"],
        vec!["frobnicate"],
    ] {
        let (code, stdout, stderr) = minfer(&args);
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert!(stdout.is_empty(), "{args:?}");
        assert!(
            stderr.starts_with("error: ") && stderr.contains("\nhint: "),
            "{args:?}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}

#[test]
fn bench_reports_speeds_profile_and_trace() {
    let d = common::fixtures_dir().join("qwen3_norms");
    let trace = std::env::temp_dir().join(format!("minfer-trace-{}.json", std::process::id()));
    let (code, stdout, stderr) = minfer(&[
        "bench",
        d.to_str().unwrap(),
        "--prompt-len",
        "9",
        "--gen-len",
        "5",
        "--repeats",
        "1",
        "--threads",
        "1",
        "--json",
        "--profile",
        "--trace",
        trace.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    for k in [
        "prefill_tok_s",
        "decode_tok_s",
        "decode_gb_s",
        "read_bandwidth_gb_s",
    ] {
        assert!(v[k].as_f64().unwrap() > 0.0, "{k}: {v}");
    }
    // The profile lists the ops of both phases.
    assert!(
        stderr.contains("attention")
            && stderr.contains("matmul mlp.down_proj")
            && stderr.contains("head_rms_norm"),
        "{stderr}"
    );
    let t: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&trace).unwrap()).unwrap();
    let events = t["traceEvents"].as_array().unwrap();
    assert!(
        events.len() > 20
            && events
                .iter()
                .all(|e| e["ph"] == "X" && e["dur"].as_f64().unwrap() >= 0.0)
    );
    let _ = std::fs::remove_file(trace);
}

#[test]
fn bench_on_a_synthetic_model() {
    let (code, stdout, stderr) = minfer(&[
        "bench",
        "synthetic:smollm2-135m",
        "--dtype",
        "f16",
        "--prompt-len",
        "4",
        "--gen-len",
        "2",
        "--repeats",
        "1",
        "--json",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["parameters"], 134515008); // SmolLM2-135M's published count
}

#[test]
fn logits_can_show_every_intermediate_value() {
    let d = common::fixtures_dir().join("qwen3_norms");
    let (code, stdout, stderr) = minfer(&[
        "logits",
        d.to_str().unwrap(),
        "--ids",
        "5,6,7",
        "--activations",
        "--json",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let acts = v["activations"].as_array().unwrap();
    let ops: Vec<&str> = acts.iter().map(|a| a["op"].as_str().unwrap()).collect();
    // embed, 2 layers × (norm, q+k+v (fused at load: one matmul), q_norm, k_norm, rope q,
    // rope k, attention, o, residual, norm, gate+up (fused), silu, down, add) = 14, final norm,
    // lm_head.
    assert_eq!(ops.len(), 1 + 2 * 14 + 2, "{ops:?}");
    assert_eq!(ops[0], "embed");
    // The fused projection is named after the checkpoint tensors it joins.
    assert_eq!(ops[2], "model.layers.0.self_attn.q_proj+k_proj+v_proj");
    assert_eq!(ops[ops.len() - 1], "model.embed_tokens"); // tied lm_head
                                                          // Its output is [3 rows, q (4 heads × 32) | k (2 × 32) | v (2 × 32)]: mean and rms are
                                                          // consistent with its values.
    assert_eq!(acts[2]["len"], 3 * (128 + 64 + 64));
    assert!(acts[2]["rms"].as_f64().unwrap() > 0.0);
    assert!(
        ops.contains(&"model.layers.1.mlp.gate_proj+up_proj"),
        "{ops:?}"
    );
}
