//! Streaming generation: prefill the prompt (reusing whatever prefix is already in the KV
//! cache), then decode one token at a time, handing each to the caller as it is chosen.
//! Stops at an EOS id, a caller-given stop id, `max_new_tokens`, a full context, or when the
//! caller's callback says so. Returns the counts and speeds.

use std::time::Instant;

use super::Model;
use crate::error::{catch_panic, Error, Result};
use crate::sampler::{Sampler, SamplerConfig};
use crate::transformer::Logits;

#[derive(Clone, Debug)]
/// How to generate.
pub struct GenerateOptions {
    /// Stop after this many new tokens.
    pub max_new_tokens: usize,
    /// Sampling settings (greedy by default).
    pub sampling: SamplerConfig,
    /// Extra ids that end generation (besides the model's EOS ids).
    pub stop_ids: Vec<u32>,
    /// Ignore the model's EOS ids (benchmarks, fixed-length runs).
    pub ignore_eos: bool,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            max_new_tokens: 256,
            sampling: SamplerConfig::default(),
            stop_ids: Vec::new(),
            ignore_eos: false,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
/// Why generation stopped.
pub enum StopReason {
    /// An end-of-sequence id of the model was produced (it is not passed to the callback).
    Eos(u32),
    /// One of `GenerateOptions::stop_ids` was produced (not passed to the callback either).
    StopId(u32),
    /// `max_new_tokens` were generated.
    MaxTokens,
    /// The KV cache is full (`LoadOptions::context_len`).
    ContextFull,
    /// The callback returned false.
    Caller,
}

#[derive(Clone, Debug, PartialEq)]
/// Counts, timings and the stop reason of one `generate` call.
pub struct GenerationStats {
    /// Tokens in the prompt.
    pub prompt_tokens: usize,
    /// Of those, how many were already in the KV cache and not computed again.
    pub reused_tokens: usize,
    /// Tokens handed to the callback.
    pub generated_tokens: usize,
    /// Time to process the prompt (the part not already cached).
    pub prefill_seconds: f64,
    /// Time to generate the new tokens.
    pub decode_seconds: f64,
    /// Prompt tokens computed per second of prefill.
    pub prefill_tok_s: f64,
    /// Tokens per second of the decode loop (one forward step per token).
    pub decode_tok_s: f64,
    /// Why generation stopped.
    pub stop: StopReason,
}

impl Model {
    /// Generate after `prompt`, calling `on_token` with each new id as soon as it is chosen;
    /// return false from the callback to stop. The KV cache keeps the conversation: a later
    /// call whose prompt extends this one's prompt and output only computes the new tokens.
    /// A panic inside minfer (a bug) is returned as [`Error::Internal`] and the model stays
    /// usable; one in `on_token` is the caller's and unwinds as usual.
    pub fn generate(
        &mut self,
        prompt: &[u32],
        opts: &GenerateOptions,
        mut on_token: impl FnMut(u32) -> bool,
    ) -> Result<GenerationStats> {
        let ctx = self.context_len();
        if prompt.is_empty() {
            return Err(Error::arg("the prompt is empty"));
        }
        if prompt.len() >= ctx {
            return Err(Error::arg(format!(
                "the prompt has {} tokens but the context holds {ctx} (leave room for at least one new token; raise LoadOptions::context_len)",
                prompt.len()
            )));
        }
        let vocab = self.config().vocab_size as u32;
        if let Some(&bad) = prompt.iter().find(|&&t| t >= vocab) {
            return Err(Error::arg(format!(
                "token id {bad} is out of range for a vocabulary of {vocab}"
            )));
        }
        let mut sampler = Sampler::new(opts.sampling.clone())?;

        // Reuse the longest cached prefix; always recompute at least the last prompt token,
        // whose logits we need.
        let mut reuse = self
            .cached
            .iter()
            .zip(prompt)
            .take_while(|(a, b)| a == b)
            .count();
        reuse = reuse.min(prompt.len() - 1);
        self.cached.truncate(reuse);

        let t0 = Instant::now();
        let engine = &mut self.engine;
        catch_panic("forward (prefill)", || {
            engine.forward(&prompt[reuse..], reuse, Logits::Last)
        })?;
        self.cached.extend_from_slice(&prompt[reuse..]);
        let mut history: Vec<u32> = prompt.to_vec();
        let mut next = self.choose(&mut sampler, &history)?;
        let prefill_seconds = t0.elapsed().as_secs_f64();

        let t1 = Instant::now();
        let mut generated = 0usize;
        let mut steps = 0usize;
        let stop = loop {
            if opts.max_new_tokens == 0 {
                break StopReason::MaxTokens;
            }
            if opts.stop_ids.contains(&next) {
                break StopReason::StopId(next);
            }
            if !opts.ignore_eos && self.eos_ids.contains(&next) {
                break StopReason::Eos(next);
            }
            generated += 1;
            history.push(next);
            if !on_token(next) {
                break StopReason::Caller;
            }
            if generated >= opts.max_new_tokens {
                break StopReason::MaxTokens;
            }
            if self.cached.len() >= ctx {
                break StopReason::ContextFull;
            }
            let (engine, pos) = (&mut self.engine, self.cached.len());
            catch_panic("forward (decode)", || {
                engine.forward(&[next], pos, Logits::Last)
            })?;
            self.cached.push(next);
            steps += 1;
            next = self.choose(&mut sampler, &history)?;
        };
        let decode_seconds = t1.elapsed().as_secs_f64();
        let computed = prompt.len() - reuse;
        Ok(GenerationStats {
            prompt_tokens: prompt.len(),
            reused_tokens: reuse,
            generated_tokens: generated,
            prefill_seconds,
            decode_seconds,
            prefill_tok_s: rate(computed, prefill_seconds),
            decode_tok_s: rate(steps, decode_seconds),
            stop,
        })
    }

    /// The next token from the logits of the last forward step.
    fn choose(&mut self, sampler: &mut Sampler, history: &[u32]) -> Result<u32> {
        catch_panic("sampling", || {
            if sampler.config.is_greedy() {
                return self.engine.argmax(0);
            }
            self.engine.read_logits(0, &mut self.logits)?;
            Ok(sampler.sample(&mut self.logits, history))
        })
    }
}

fn rate(n: usize, secs: f64) -> f64 {
    if secs > 0.0 {
        n as f64 / secs
    } else {
        0.0
    }
}

/// The result of a text generation.
#[derive(Clone, Debug)]
pub struct TextOutput {
    /// The generated text.
    pub text: String,
    /// The generated ids.
    pub ids: Vec<u32>,
    /// Counts, timings, stop reason.
    pub stats: GenerationStats,
}

impl Model {
    /// Tokenize `prompt` (with the special tokens the tokenizer adds, e.g. BOS) and generate,
    /// calling `on_text` with each piece of text as soon as it is complete UTF-8; return false
    /// to stop. Special tokens are not shown.
    pub fn generate_text(
        &mut self,
        prompt: &str,
        opts: &GenerateOptions,
        on_text: impl FnMut(&str) -> bool,
    ) -> Result<TextOutput> {
        let ids = self.require_tokenizer()?.encode(prompt, true)?;
        self.generate_ids_as_text(&ids, opts, on_text)
    }

    /// Render `messages` with the checkpoint's chat template (ending with the assistant's turn
    /// opening) and tokenize it exactly as rendered.
    pub fn chat_prompt(&self, messages: &[crate::tokenizer::ChatMessage]) -> Result<Vec<u32>> {
        let tok = self.require_tokenizer()?;
        let text = tok.apply_chat_template(messages, true)?;
        tok.encode(&text, false)
    }

    /// Generate after already-tokenized `prompt`, streaming decoded text.
    pub fn generate_ids_as_text(
        &mut self,
        prompt: &[u32],
        opts: &GenerateOptions,
        mut on_text: impl FnMut(&str) -> bool,
    ) -> Result<TextOutput> {
        // The tokenizer lives in the model; hold it aside while the model generates.
        let tok = self.take_tokenizer()?;
        let result = (|| {
            let mut stream = tok.decode_stream(true);
            let mut ids = Vec::new();
            let mut text = String::new();
            let mut failure = None;
            let stats = self.generate(prompt, opts, |id| {
                ids.push(id);
                match stream.step(id) {
                    Ok(Some(piece)) => {
                        text.push_str(&piece);
                        on_text(&piece)
                    }
                    Ok(None) => true,
                    Err(e) => {
                        failure = Some(e);
                        false
                    }
                }
            })?;
            if let Some(e) = failure {
                return Err(e);
            }
            if let Some(rest) = stream.flush() {
                text.push_str(&rest);
                on_text(&rest);
            }
            Ok(TextOutput { text, ids, stats })
        })();
        self.put_tokenizer(tok);
        result
    }
}
