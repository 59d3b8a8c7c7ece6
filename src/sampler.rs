//! Turning logits into the next token: greedy, temperature, top-k, top-p, min-p, a
//! repetition penalty and OpenAI's presence and frequency penalties, seeded and reproducible.
//!
//! The order follows Hugging Face's logits processors: repetition penalty on the raw logits
//! (then the presence and frequency penalties, over the tokens this sampler chose), then
//! temperature, then top-k, top-p and min-p filtering, then a draw. The sampler keeps its
//! candidate buffer between calls, so sampling allocates nothing per token.

use crate::error::{Error, Result};
use crate::rng::Rng;

#[derive(Clone, Debug, PartialEq)]
/// How the next token is chosen from the logits.
pub struct SamplerConfig {
    /// 0 = greedy (argmax).
    pub temperature: f32,
    /// Keep the k most likely tokens; 0 = off.
    pub top_k: usize,
    /// Keep the smallest set whose probability reaches p; 1.0 = off.
    pub top_p: f32,
    /// Drop tokens whose probability is below min_p × the top probability; 0 = off.
    pub min_p: f32,
    /// > 1 discourages tokens already seen (logit / r if positive, × r if negative); 1 = off.
    pub repetition_penalty: f32,
    /// Subtracted once from the logit of every token this sampler already chose (OpenAI's
    /// presence_penalty, in [-2, 2]); 0 = off.
    pub presence_penalty: f32,
    /// Subtracted from a token's logit once per time this sampler chose it (OpenAI's
    /// frequency_penalty, in [-2, 2]); 0 = off.
    pub frequency_penalty: f32,
    /// Seed of the random generator: the same seed gives the same text.
    pub seed: u64,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        SamplerConfig {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            seed: 0,
        }
    }
}

impl SamplerConfig {
    /// Check every field's range; the error names the field.
    pub fn validate(&self) -> Result<()> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return Err(Error::option(
                "temperature",
                self.temperature,
                "must be a finite number ≥ 0",
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(Error::option("top_p", self.top_p, "must be in (0, 1]"));
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return Err(Error::option("min_p", self.min_p, "must be in [0, 1]"));
        }
        if !(self.repetition_penalty > 0.0 && self.repetition_penalty.is_finite()) {
            return Err(Error::option(
                "repetition_penalty",
                self.repetition_penalty,
                "must be a positive number",
            ));
        }
        for (field, v) in [
            ("presence_penalty", self.presence_penalty),
            ("frequency_penalty", self.frequency_penalty),
        ] {
            if !(-2.0..=2.0).contains(&v) {
                return Err(Error::option(field, v, "must be in [-2, 2]"));
            }
        }
        Ok(())
    }

    /// Greedy decoding with no penalty: the argmax can be taken on the device.
    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0
            && self.repetition_penalty == 1.0
            && self.presence_penalty == 0.0
            && self.frequency_penalty == 0.0
    }
}

/// Chooses tokens from logits by a `SamplerConfig`, with its own seeded generator.
pub struct Sampler {
    /// The settings.
    pub config: SamplerConfig,
    rng: Rng,
    cand: Vec<(u32, f32)>,
    /// How often this sampler chose each token (for the presence and frequency penalties).
    chosen: std::collections::HashMap<u32, u32>,
}

impl Sampler {
    /// A sampler, after checking `config`.
    pub fn new(config: SamplerConfig) -> Result<Sampler> {
        config.validate()?;
        let rng = Rng::new(config.seed);
        Ok(Sampler {
            config,
            rng,
            cand: Vec::new(),
            chosen: Default::default(),
        })
    }

    /// Apply the repetition penalty in place to the logits of tokens in `history`.
    pub fn penalize(&self, logits: &mut [f32], history: &[u32]) {
        let r = self.config.repetition_penalty;
        if r == 1.0 {
            return;
        }
        // Each distinct token once, as Hugging Face's gather/scatter does.
        for (i, &t) in history.iter().enumerate() {
            if history[..i].contains(&t) {
                continue;
            }
            if let Some(l) = logits.get_mut(t as usize) {
                *l = if *l > 0.0 { *l / r } else { *l * r };
            }
        }
    }

    /// Choose the next token from `logits` (modified in place), given the tokens so far.
    pub fn sample(&mut self, logits: &mut [f32], history: &[u32]) -> u32 {
        self.penalize(logits, history);
        let (presence, frequency) = (self.config.presence_penalty, self.config.frequency_penalty);
        if presence != 0.0 || frequency != 0.0 {
            for (&t, &n) in &self.chosen {
                if let Some(l) = logits.get_mut(t as usize) {
                    *l -= presence + frequency * n as f32;
                }
            }
        }
        let id = self.draw(logits);
        if presence != 0.0 || frequency != 0.0 {
            *self.chosen.entry(id).or_insert(0) += 1;
        }
        id
    }

    fn draw(&mut self, logits: &mut [f32]) -> u32 {
        let c = &self.config;
        if c.temperature == 0.0 {
            return crate::backend::cpu::argmax(logits) as u32;
        }
        self.cand.clear();
        self.cand.extend(
            logits
                .iter()
                .enumerate()
                .map(|(i, &l)| (i as u32, l / c.temperature)),
        );
        let by_logit_desc =
            |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        if c.top_k > 0 && c.top_k < self.cand.len() {
            self.cand.select_nth_unstable_by(c.top_k - 1, by_logit_desc);
            self.cand.truncate(c.top_k);
        }
        self.cand.sort_unstable_by(by_logit_desc);
        // Softmax over the survivors.
        let m = self.cand[0].1;
        let mut sum = 0.0f32;
        for x in self.cand.iter_mut() {
            x.1 = (x.1 - m).exp();
            sum += x.1;
        }
        for x in self.cand.iter_mut() {
            x.1 /= sum;
        }
        if c.top_p < 1.0 {
            let mut acc = 0.0;
            let mut keep = self.cand.len();
            for (i, x) in self.cand.iter().enumerate() {
                acc += x.1;
                if acc >= c.top_p {
                    keep = i + 1;
                    break;
                }
            }
            self.cand.truncate(keep);
        }
        if c.min_p > 0.0 {
            let floor = c.min_p * self.cand[0].1;
            let keep = self.cand.iter().take_while(|x| x.1 >= floor).count().max(1);
            self.cand.truncate(keep);
        }
        let total: f32 = self.cand.iter().map(|x| x.1).sum();
        let mut u = self.rng.next_f32() * total;
        for &(id, p) in &self.cand {
            if u < p {
                return id;
            }
            u -= p;
        }
        self.cand[self.cand.len() - 1].0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(t: f32) -> SamplerConfig {
        SamplerConfig {
            temperature: t,
            ..Default::default()
        }
    }

    #[test]
    fn greedy_takes_argmax() {
        let mut s = Sampler::new(cfg(0.0)).unwrap();
        assert_eq!(s.sample(&mut [0.1, 3.0, 2.9, -1.0], &[]), 1);
    }

    #[test]
    fn seeded_sampling_is_reproducible() {
        let logits: Vec<f32> = (0..100).map(|i| ((i * 37) % 17) as f32 * 0.3).collect();
        let run = |seed| {
            let mut s = Sampler::new(SamplerConfig {
                temperature: 1.0,
                seed,
                ..Default::default()
            })
            .unwrap();
            (0..50)
                .map(|_| s.sample(&mut logits.clone(), &[]))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }

    #[test]
    fn top_k_one_is_greedy() {
        let mut s = Sampler::new(SamplerConfig {
            temperature: 5.0,
            top_k: 1,
            ..Default::default()
        })
        .unwrap();
        for _ in 0..20 {
            assert_eq!(s.sample(&mut [0.0, 1.0, 0.5, 0.99], &[]), 1);
        }
    }

    #[test]
    fn top_p_and_min_p_cut_the_tail() {
        // probabilities ≈ [0.64, 0.24, 0.09, 0.03]: top_p 0.7 keeps two, min_p 0.3 keeps two.
        let logits = [2.0f32, 1.0, 0.0, -1.0];
        for conf in [
            SamplerConfig {
                temperature: 1.0,
                top_p: 0.7,
                ..Default::default()
            },
            SamplerConfig {
                temperature: 1.0,
                min_p: 0.3,
                ..Default::default()
            },
        ] {
            let mut s = Sampler::new(conf).unwrap();
            let mut seen = [0; 4];
            for _ in 0..2000 {
                seen[s.sample(&mut logits.clone(), &[]) as usize] += 1;
            }
            assert!(
                seen[0] > 0 && seen[1] > 0 && seen[2] == 0 && seen[3] == 0,
                "{seen:?}"
            );
        }
    }

    #[test]
    fn temperature_sampling_follows_the_distribution() {
        let logits = [0.0f32, (3.0f32).ln()]; // p = [0.25, 0.75]
        let mut s = Sampler::new(cfg(1.0)).unwrap();
        let ones = (0..20000)
            .filter(|_| s.sample(&mut logits.clone(), &[]) == 1)
            .count();
        let p = ones as f64 / 20000.0;
        assert!((p - 0.75).abs() < 0.02, "p = {p}"); // 0.02 ≈ 6.5 standard errors
    }

    #[test]
    fn repetition_penalty_matches_hugging_face() {
        let s = Sampler::new(SamplerConfig {
            repetition_penalty: 2.0,
            ..Default::default()
        })
        .unwrap();
        let mut l = [4.0f32, -4.0, 1.0];
        s.penalize(&mut l, &[0, 1, 0]);
        assert_eq!(l, [2.0, -8.0, 1.0]);
    }

    #[test]
    fn presence_and_frequency_penalties_count_the_chosen_tokens() {
        let mut s = Sampler::new(SamplerConfig {
            presence_penalty: 0.5,
            frequency_penalty: 1.0,
            ..Default::default()
        })
        .unwrap();
        // Token 0 leads by 2.4: chosen twice (penalty 1.5 after the first, 2.5 after the
        // second), then token 1 wins.
        let logits = [3.4f32, 1.0, 0.0];
        let got: Vec<u32> = (0..3).map(|_| s.sample(&mut logits.clone(), &[])).collect();
        assert_eq!(got, [0, 0, 1]);
        assert!(!s.config.is_greedy());
    }

    #[test]
    fn invalid_settings_are_errors() {
        assert!(Sampler::new(SamplerConfig {
            presence_penalty: 2.5,
            ..Default::default()
        })
        .is_err());
        assert!(Sampler::new(SamplerConfig {
            top_p: 0.0,
            ..Default::default()
        })
        .is_err());
        assert!(Sampler::new(SamplerConfig {
            temperature: -1.0,
            ..Default::default()
        })
        .is_err());
        assert!(Sampler::new(SamplerConfig {
            repetition_penalty: 0.0,
            ..Default::default()
        })
        .is_err());
    }
}
