//! Generation controls end to end on the tiny fixture models, each against what it must equal:
//! the transformers greedy continuation (expected.json), a fresh model, or a reference loop
//! written here.
//!
//! - stop ids, EOS (from a copy of the fixture whose config names a chosen token as EOS),
//!   max tokens, a full context and the caller's stop, each with its `StopReason`;
//! - the repetition penalty inside `generate`, against a loop that scores the whole sequence
//!   each step and applies the penalty itself;
//! - the KV cache reused across calls: a prompt that diverges from what is cached (truncate and
//!   recompute), one that is a strict prefix, and one that extends it, each equal to a fresh
//!   model's run, with the number of reused tokens checked;
//! - a multi-turn conversation equal to a fresh run over the whole conversation.

mod common;

use std::path::{Path, PathBuf};

use minfer::{GenerateOptions, GenerationStats, LoadOptions, Model, SamplerConfig, StopReason};

fn load(dir: &Path, opts: LoadOptions) -> Model {
    let opts = LoadOptions {
        threads: 2,
        max_batch: 16,
        ..opts
    };
    Model::load(dir, &opts).unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
}

fn model(variant: &str) -> Model {
    load(
        &common::fixtures_dir().join(variant),
        LoadOptions::default(),
    )
}

/// (prompt, transformers' 16 greedy tokens) of case `i` of `variant`.
fn case(variant: &str, i: usize) -> (Vec<u32>, Vec<u32>) {
    let exp = common::expected(&common::fixtures_dir().join(variant));
    let c = &exp["cases"][i];
    (common::ids(&c["prompt"]), common::ids(&c["greedy"]))
}

fn run(m: &mut Model, prompt: &[u32], opts: &GenerateOptions) -> (Vec<u32>, GenerationStats) {
    let mut got = Vec::new();
    let stats = m
        .generate(prompt, opts, |t| {
            got.push(t);
            true
        })
        .unwrap();
    assert_eq!(stats.generated_tokens, got.len());
    assert_eq!(stats.prompt_tokens, prompt.len());
    (got, stats)
}

fn greedy(max_new_tokens: usize) -> GenerateOptions {
    GenerateOptions {
        max_new_tokens,
        ignore_eos: true,
        ..Default::default()
    }
}

const V: &str = "llama_gqa_untied";

#[test]
fn stop_ids_end_generation_before_the_stop_token() {
    for i in 0..3 {
        let (prompt, g) = case(V, i);
        let mut m = model(V);
        // Each token of the greedy continuation in turn as the stop id: generation ends at its
        // first occurrence, which is not handed to the callback.
        for &stop in &g {
            let first = g.iter().position(|&t| t == stop).unwrap();
            let opts = GenerateOptions {
                stop_ids: vec![stop],
                ..greedy(16)
            };
            let (got, stats) = run(&mut m, &prompt, &opts);
            assert_eq!(got, g[..first], "case {i}, stop id {stop}");
            assert_eq!(
                stats.stop,
                StopReason::StopId(stop),
                "case {i}, stop id {stop}"
            );
        }
        // Two stop ids: the earlier one wins. An id that never comes: max tokens.
        let (a, b) = (g[3], g[9]);
        let opts = GenerateOptions {
            stop_ids: vec![b, a],
            ..greedy(16)
        };
        let (got, stats) = run(&mut m, &prompt, &opts);
        let first = g.iter().position(|&t| t == a || t == b).unwrap();
        assert_eq!(got, g[..first]);
        assert_eq!(stats.stop, StopReason::StopId(g[first]));
        let absent = (0..256u32).find(|t| !g.contains(t)).unwrap();
        let opts = GenerateOptions {
            stop_ids: vec![absent],
            ..greedy(16)
        };
        let (got, stats) = run(&mut m, &prompt, &opts);
        assert_eq!((got, stats.stop), (g.clone(), StopReason::MaxTokens));
    }
}

/// A copy of fixture `variant` whose config.json and generation_config.json name `eos` as the
/// EOS id.
fn with_eos(variant: &str, eos: u32) -> PathBuf {
    let src = common::fixtures_dir().join(variant);
    let dst = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("generation-{variant}-eos{eos}"));
    std::fs::create_dir_all(&dst).unwrap();
    for e in std::fs::read_dir(&src).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap();
        if name == "config.json" || name == "generation_config.json" {
            let mut v: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
            v["eos_token_id"] = eos.into();
            std::fs::write(dst.join(name), serde_json::to_string_pretty(&v).unwrap()).unwrap();
        } else {
            std::fs::copy(&p, dst.join(name)).unwrap();
        }
    }
    dst
}

#[test]
fn eos_ends_generation_unless_ignored() {
    let (prompt, g) = case(V, 1);
    let eos = g[5];
    let first = g.iter().position(|&t| t == eos).unwrap();
    let mut m = load(&with_eos(V, eos), LoadOptions::default());
    assert_eq!(m.eos_ids(), [eos]);
    let opts = GenerateOptions {
        max_new_tokens: 16,
        ..Default::default()
    };
    assert!(!opts.ignore_eos);
    let (got, stats) = run(&mut m, &prompt, &opts);
    assert_eq!(got, g[..first]);
    assert_eq!(stats.stop, StopReason::Eos(eos));
    // ignore_eos runs through it.
    let (got, stats) = run(&mut m, &prompt, &greedy(16));
    assert_eq!((got, stats.stop), (g, StopReason::MaxTokens));
}

#[test]
fn max_new_tokens_is_exact() {
    let (prompt, g) = case(V, 2);
    let mut m = model(V);
    for n in [0, 1, 2, 7, 16] {
        m.reset();
        let (got, stats) = run(&mut m, &prompt, &greedy(n));
        assert_eq!(got, g[..n], "max_new_tokens {n}");
        assert_eq!(stats.stop, StopReason::MaxTokens, "max_new_tokens {n}");
    }
}

/// With a context of `ctx` positions and a prompt of P, the cache holds the prompt and the
/// first ctx − P generated tokens; the logits at the last position choose one more token, so
/// ctx − P + 1 tokens are handed out before `ContextFull`. They are transformers' greedy tokens.
#[test]
fn a_full_context_stops_with_context_full() {
    let (prompt, g) = case(V, 1);
    for extra in [1, 4, 9] {
        let ctx = prompt.len() + extra;
        let mut m = load(
            &common::fixtures_dir().join(V),
            LoadOptions {
                context_len: Some(ctx),
                ..LoadOptions::default()
            },
        );
        assert_eq!(m.context_len(), ctx);
        let (got, stats) = run(&mut m, &prompt, &greedy(100));
        assert_eq!(stats.stop, StopReason::ContextFull, "context {ctx}");
        assert_eq!(got, g[..extra + 1], "context {ctx}");
        // A prompt that fills the context leaves no room: an error, not a silent truncation.
        let full: Vec<u32> = prompt.iter().chain(&g).copied().take(ctx).collect();
        let e = m.generate(&full, &greedy(4), |_| true).unwrap_err();
        assert!(e.to_string().contains("context"), "{e}");
    }
}

#[test]
fn the_callback_can_stop_generation() {
    let (prompt, g) = case(V, 0);
    let mut m = model(V);
    let mut got = Vec::new();
    let stats = m
        .generate(&prompt, &greedy(16), |t| {
            got.push(t);
            got.len() < 3
        })
        .unwrap();
    assert_eq!(got, g[..3]);
    assert_eq!(stats.stop, StopReason::Caller);
    assert_eq!(stats.generated_tokens, 3);
}

/// The reference: score the whole sequence from scratch each step, penalize every distinct
/// token of the sequence so far (Hugging Face's rule, written out here), take the argmax.
fn penalized_greedy_reference(dir: &Path, prompt: &[u32], penalty: f32, n: usize) -> Vec<u32> {
    let mut scorer = load(
        dir,
        LoadOptions {
            all_logits: true,
            max_batch: 64,
            ..LoadOptions::default()
        },
    );
    let mut seq = prompt.to_vec();
    let mut out = Vec::new();
    for _ in 0..n {
        let (_, mut logits) = scorer.score(&seq).unwrap();
        let mut seen = std::collections::BTreeSet::new();
        for &t in &seq {
            if seen.insert(t) {
                let l = &mut logits[t as usize];
                *l = if *l > 0.0 { *l / penalty } else { *l * penalty };
            }
        }
        let mut best = 0;
        for (i, &l) in logits.iter().enumerate() {
            if l > logits[best] {
                best = i;
            }
        }
        seq.push(best as u32);
        out.push(best as u32);
    }
    out
}

#[test]
fn repetition_penalty_applies_inside_generate() {
    for variant in [V, "qwen2_bias"] {
        let dir = common::fixtures_dir().join(variant);
        for i in [0, 1] {
            let (prompt, g) = case(variant, i);
            let mut m = model(variant);
            let mut changed = false;
            for penalty in [1.3f32, 2.0, 0.7] {
                let opts = GenerateOptions {
                    sampling: SamplerConfig {
                        repetition_penalty: penalty,
                        ..Default::default()
                    },
                    ..greedy(16)
                };
                m.reset();
                let (got, _) = run(&mut m, &prompt, &opts);
                let want = penalized_greedy_reference(&dir, &prompt, penalty, 16);
                assert_eq!(got, want, "{variant} case {i}, penalty {penalty}");
                changed |= got != g;
            }
            // The penalty must matter for these prompts, or this test proves nothing.
            assert!(changed, "{variant} case {i}: no penalty changed the output");
        }
    }
}

/// Sampling inside generate draws from the logits of the right position with the prompt and
/// the generated tokens as history: equal to the library's sampler fed by a scoring loop.
#[test]
fn sampled_generation_equals_a_sampler_fed_by_a_scoring_loop() {
    let dir = common::fixtures_dir().join(V);
    let (prompt, _) = case(V, 1);
    let cfg = SamplerConfig {
        temperature: 1.3,
        top_k: 40,
        top_p: 0.95,
        min_p: 0.01,
        repetition_penalty: 1.2,
        seed: 99,
        ..Default::default()
    };
    let mut m = model(V);
    let opts = GenerateOptions {
        sampling: cfg.clone(),
        ..greedy(12)
    };
    let (got, _) = run(&mut m, &prompt, &opts);
    let mut scorer = load(
        &dir,
        LoadOptions {
            all_logits: true,
            max_batch: 64,
            ..LoadOptions::default()
        },
    );
    let mut sampler = minfer::internals::Sampler::new(cfg).unwrap();
    let mut seq = prompt.clone();
    let mut want = Vec::new();
    for _ in 0..12 {
        let (_, mut logits) = scorer.score(&seq).unwrap();
        let t = sampler.sample(&mut logits, &seq);
        seq.push(t);
        want.push(t);
    }
    assert_eq!(got, want);
}

/// `a` then `b` on one model (the cache carries over) equals `b` on a fresh model; returns the
/// reused count of the second call.
fn second_call_equals_fresh(variant: &str, a: &[u32], b: &[u32], opts: &GenerateOptions) -> usize {
    let mut m = model(variant);
    run(&mut m, a, opts);
    let (got, stats) = run(&mut m, b, opts);
    let (want, fresh) = run(&mut model(variant), b, opts);
    assert_eq!(fresh.reused_tokens, 0);
    assert_eq!(got, want, "{variant}: second call vs a fresh model");
    assert_eq!(stats.stop, fresh.stop);
    stats.reused_tokens
}

#[test]
fn a_diverging_prompt_truncates_the_cache_and_equals_a_fresh_run() {
    // Windowed variants too: with a window of 8, positions beyond it must be masked the same
    // way after a truncation as in a fresh run.
    for variant in [V, "mistral_sliding_window", "qwen2_sliding", "qwen3_norms"] {
        let (p, _) = case(variant, 2); // 40 tokens
        let opts = greedy(8);
        let a = &p[..30];
        for split in [0usize, 1, 12, 20, 29] {
            // Same first `split` tokens, then different ones.
            let mut b = p[..split].to_vec();
            b.extend(p[split..34].iter().map(|t| (t + 1) % 256));
            let reused = second_call_equals_fresh(variant, a, &b, &opts);
            assert_eq!(reused, split, "{variant}: diverging at {split}");
        }
        // A strict prefix of what is cached: reuse all but the last token (its logits are
        // needed), drop the rest.
        for len in [1usize, 9, 25] {
            let reused = second_call_equals_fresh(variant, a, &p[..len], &opts);
            assert_eq!(reused, len - 1, "{variant}: prefix of {len}");
        }
        // The same prompt again.
        let reused = second_call_equals_fresh(variant, a, a, &opts);
        assert_eq!(reused, a.len() - 1, "{variant}: same prompt");
    }
}

#[test]
fn a_multi_turn_conversation_equals_a_fresh_run_over_the_whole_conversation() {
    for variant in [V, "mistral_sliding_window"] {
        let (p, _) = case(variant, 2);
        let opts = greedy(6);
        let mut m = model(variant);
        // Turn 1: the first 12 tokens; each later turn appends the reply and 7 new "user" tokens.
        let mut convo = p[..12].to_vec();
        for turn in 0..4 {
            let (reply, stats) = run(&mut m, &convo, &opts);
            let (fresh, _) = run(&mut model(variant), &convo, &opts);
            assert_eq!(reply, fresh, "{variant} turn {turn}");
            if turn > 0 {
                // Everything but the last reply token (never fed back) and the new user tokens.
                assert_eq!(
                    stats.reused_tokens,
                    convo.len() - 8,
                    "{variant} turn {turn}"
                );
            }
            convo.extend(&reply);
            convo.extend(p[12 + 7 * turn..19 + 7 * turn].iter());
        }
    }
}
