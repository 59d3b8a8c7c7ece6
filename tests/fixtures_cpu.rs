//! Every tiny fixture model on the CPU backend against transformers (float32).

mod common;

use std::path::Path;

use minfer::{LoadOptions, Model};

fn load(dir: &Path, all_logits: bool) -> Model {
    // A small max_batch makes the 40-token prompts run in several chunks, so chunked prefill is
    // exercised too.
    let opts = LoadOptions {
        threads: 2,
        all_logits,
        max_batch: 16,
        ..LoadOptions::default()
    };
    Model::load(dir, &opts).unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
}

/// f32 arithmetic in a different order than PyTorch: differences are a few ulps of the
/// activations, far below 1e-4 of the largest logit; the fixtures guarantee top-1/top-2 gaps of
/// at least 1e-3 × max|logit|, so argmax and greedy tokens must agree exactly.
const REL_TOL: f32 = 1e-4;

#[test]
fn every_variant_matches_transformers() {
    let variants = common::variants();
    assert!(
        variants.len() >= 11,
        "expected the fixture set, found {}",
        variants.len()
    );
    for dir in variants {
        common::check_variant(&dir, REL_TOL, &load);
    }
}

#[test]
fn generation_reuses_the_cached_prefix() {
    let dir = common::fixtures_dir().join("llama_gqa_untied");
    let exp = common::expected(&dir);
    let case = &exp["cases"][2];
    let prompt = common::ids(&case["prompt"]);
    let greedy = common::ids(&case["greedy"]);
    let mut m = load(&dir, false);
    let opts = minfer::GenerateOptions {
        max_new_tokens: 8,
        ignore_eos: true,
        ..Default::default()
    };
    let mut first = Vec::new();
    m.generate(&prompt, &opts, |t| {
        first.push(t);
        true
    })
    .unwrap();
    // Continue the conversation: prompt + output so far; only the new tokens are computed.
    let mut longer = prompt.clone();
    longer.extend_from_slice(&first);
    let mut second = Vec::new();
    let stats = m
        .generate(&longer, &opts, |t| {
            second.push(t);
            true
        })
        .unwrap();
    assert_eq!(stats.reused_tokens, longer.len() - 1);
    first.extend(second);
    assert_eq!(first, greedy);
}

/// `--quantize q8_0`: weights rounded to 8 bits per 32-block and activations quantized the same
/// way. These tiny models are deliberately sharp (large init, so logits are well separated), and
/// rounding the weights alone, then computing in f32, already moves their logits by 4–7% of
/// max|logit| (measured: 3.7%, 6.7%, 4.2% for the three variants below); int8 activations add
/// about as much again (measured: 5.2%, 10.6%, 4.3%). We require ≤ 15%: a wrong block layout,
/// scale or sign gives errors of order 100%. The real-model test checks q8_0 by perplexity.
#[test]
fn quantized_q8_0_weights_stay_close_to_f32() {
    for variant in ["llama_gqa_untied", "qwen2_bias", "qwen3_norms"] {
        let dir = common::fixtures_dir().join(variant);
        let exp = common::expected(&dir);
        let opts = LoadOptions {
            threads: 2,
            all_logits: true,
            quantize: Some(minfer::DType::Q8_0),
            ..LoadOptions::default()
        };
        let mut m = Model::load(&dir, &opts).unwrap();
        let mut worst_rel = 0.0f32;
        for case in exp["cases"].as_array().unwrap() {
            let (_, logits) = m.score(&common::ids(&case["prompt"])).unwrap();
            let want = common::floats(&case["last_logits"]);
            let scale = case["max_abs_logit"].as_f64().unwrap() as f32;
            let worst = logits
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f32::max);
            worst_rel = worst_rel.max(worst / scale);
        }
        eprintln!("{variant}: q8_0 max |Δlogit| / max|logit| = {worst_rel:.4}");
        assert!(worst_rel <= 0.15, "{variant}: {worst_rel}");
    }
}
