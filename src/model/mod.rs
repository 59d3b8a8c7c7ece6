//! [`Model`]: the small public API. Load a checkpoint onto a device, count its parameters,
//! score token sequences and generate (see `generate.rs`).
//!
//! `Model` is not generic: it holds the transformer behind the object-safe [`Engine`] trait, so
//! an embedder writes `Model::load(path, &LoadOptions::default())` and never names a backend.

use std::path::{Path, PathBuf};

use crate::backend::{
    self, Activation, Backend, BackendOptions, KvShape, OpProfile, StepLayout, TraceEvent,
    WithBackend,
};
use crate::config::ModelConfig;
use crate::device::Device;
use crate::error::{catch_panic, Error, Result};
use crate::loader::{self, ModelFiles};
use crate::tensor::{DType, Weights};
use crate::tokenizer::Tokenizer;
use crate::transformer::{Logits, Sizes, Transformer};

mod batch;
mod blocks;
mod generate;

pub use batch::{Batcher, KvStats, SeqId};
pub use generate::{GenerateOptions, GenerationStats, StopReason, TextOutput};

/// The transformer on some backend, as the rest of the library sees it.
pub trait Engine: Send {
    fn config(&self) -> &ModelConfig;
    fn forward(&mut self, tokens: &[u32], pos0: usize, which: Logits) -> Result<()>;
    fn forward_step(&mut self, tokens: &[u32], layout: &StepLayout, which: Logits) -> Result<()>;
    fn copy_kv_blocks(&mut self, pairs: &[(u32, u32)]) -> Result<()>;
    fn sizes(&self) -> Sizes;
    fn kv_shape(&self) -> KvShape;
    fn read_logits(&self, row: usize, out: &mut [f32]) -> Result<()>;
    fn argmax(&self, row: usize) -> Result<u32>;
    fn context_len(&self) -> usize;
    /// Positions one forward step takes (logits for all positions cover one step).
    fn max_batch(&self) -> usize;
    fn backend_name(&self) -> String;
    fn take_profile(&self) -> Vec<OpProfile>;
    fn take_trace(&self) -> Vec<TraceEvent>;
    fn take_activations(&self) -> Vec<Activation>;
}

impl<B: Backend> Engine for Transformer<B>
where
    B::Buf: Send,
    B::Mat: Send,
    B::Kv: Send,
{
    fn config(&self) -> &ModelConfig {
        &self.config
    }
    fn forward(&mut self, tokens: &[u32], pos0: usize, which: Logits) -> Result<()> {
        Transformer::forward(self, tokens, pos0, which)
    }
    fn forward_step(&mut self, tokens: &[u32], layout: &StepLayout, which: Logits) -> Result<()> {
        Transformer::forward_step(self, tokens, layout, which)
    }
    fn copy_kv_blocks(&mut self, pairs: &[(u32, u32)]) -> Result<()> {
        Transformer::copy_kv_blocks(self, pairs)
    }
    fn sizes(&self) -> Sizes {
        Transformer::sizes(self)
    }
    fn kv_shape(&self) -> KvShape {
        Transformer::kv_shape(self)
    }
    fn read_logits(&self, row: usize, out: &mut [f32]) -> Result<()> {
        Transformer::read_logits(self, row, out)
    }
    fn argmax(&self, row: usize) -> Result<u32> {
        Transformer::argmax(self, row)
    }
    fn context_len(&self) -> usize {
        Transformer::context_len(self)
    }
    fn max_batch(&self) -> usize {
        Transformer::max_batch(self)
    }
    fn backend_name(&self) -> String {
        self.backend().name()
    }
    fn take_profile(&self) -> Vec<OpProfile> {
        Transformer::take_profile(self)
    }
    fn take_trace(&self) -> Vec<TraceEvent> {
        self.backend().take_trace()
    }
    fn take_activations(&self) -> Vec<Activation> {
        self.backend().take_activations()
    }
}

/// How to load a model.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Where to run: `Auto` takes the first CUDA GPU when the build and machine have one.
    pub device: Device,
    /// CPU threads; 0 = all cores.
    pub threads: usize,
    /// KV-cache length in positions; None = min(max_position_embeddings, 4096). More than
    /// max_position_embeddings is an error.
    pub context_len: Option<usize>,
    /// Positions per forward step during prefill (buffers are sized for this).
    pub max_batch: usize,
    /// Keep logits for every position of a step (scoring, perplexity); costs max_batch × vocab floats.
    pub all_logits: bool,
    /// Record per-op timings (see [`Model::take_profile`]).
    pub profile: bool,
    /// CPU only: quantize every f32/f16/bf16 weight matrix at load (`Some(DType::Q8_0)` is the one
    /// supported target), to run on the integer kernels.
    pub quantize: Option<DType>,
    /// CPU only: keep a copy of every op's output (see [`Model::take_activations`]). Slow.
    pub record_activations: bool,
    /// Sequences the KV cache is sized for: 1 for [`Model::generate`]; N for a [`Batcher`]
    /// serving N sequences at once (a paged pool of N × context_len positions).
    pub max_seqs: usize,
    /// Positions per KV-cache block (the unit of paging and of prefix sharing).
    pub kv_block_size: usize,
    /// GGUF only: keep quantized tensors in their block format and compute on them with the
    /// integer kernels (CPU) or the quantized matvec kernels (CUDA and `sim`: Q8_0, Q4_0, Q4_1,
    /// Q4_K, Q6_K; Q5_0 runs as the exactly equal Q8_0); false dequantizes them to f32 at load.
    pub keep_quantized: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            device: Device::Auto,
            threads: 0,
            context_len: None,
            max_batch: 128,
            all_logits: false,
            profile: false,
            keep_quantized: true,
            quantize: None,
            record_activations: false,
            max_seqs: 1,
            kv_block_size: 32,
        }
    }
}

/// The exact parameter count: every tensor the model uses, tied embeddings once.
fn count_parameters(config: &ModelConfig, weights: &Weights) -> u64 {
    let tensors = weights
        .tensors
        .iter()
        .map(|(n, t)| (n.as_str(), t.numel() as u64));
    crate::inspect::Breakdown::of(config.tie_word_embeddings, tensors).total()
}

/// Bytes of weights read by one decode step: every tensor once, except that an untied
/// embedding table contributes one row only.
pub fn decode_weight_bytes(config: &ModelConfig, weights: &Weights) -> u64 {
    weights
        .tensors
        .iter()
        .filter(|(name, _)| !(config.tie_word_embeddings && name.as_str() == "lm_head.weight"))
        .map(|(name, t)| {
            let b = t.bytes().len() as u64;
            if name == "model.embed_tokens.weight" && !config.tie_word_embeddings {
                b / config.vocab_size as u64
            } else {
                b
            }
        })
        .sum()
}

/// A loaded model on a device, with its tokenizer and KV cache: the library's entry point.
pub struct Model {
    pub(crate) engine: Box<dyn Engine>,
    pub(crate) eos_ids: Vec<u32>,
    num_parameters: u64,
    /// Weight bytes one decode step reads (every matrix and vector; one embedding row).
    decode_weight_bytes: u64,
    /// Tokens whose keys and values are in the cache, in order (reused across calls).
    pub(crate) cached: Vec<u32>,
    /// Host copy of one row of logits.
    pub(crate) logits: Vec<f32>,
    files: ModelFiles,
    tokenizer: Option<Tokenizer>,
}

impl Model {
    /// Load a checkpoint (Hugging Face directory, .safetensors file with config.json beside it,
    /// or .gguf file) onto the CPU.
    ///
    /// A panic inside minfer while loading (a bug) is returned as [`Error::Internal`].
    pub fn load(path: &Path, opts: &LoadOptions) -> Result<Model> {
        catch_panic("Model::load", || Self::load_unguarded(path, opts))
    }

    fn load_unguarded(path: &Path, opts: &LoadOptions) -> Result<Model> {
        let device = opts.device.resolve()?;
        // Every backend computes on block-quantized weights (the CUDA backend dequantizes the
        // block types it has no kernel for at upload).
        let keep_quantized = opts.keep_quantized;
        let opts = &LoadOptions {
            device,
            ..opts.clone()
        };
        let mut ck = loader::open(path, keep_quantized)?;
        if let Some(target) = opts.quantize {
            if device != Device::Cpu {
                return Err(Error::option(
                    "quantize",
                    target,
                    format!(
                        "weights are quantized at load on the CPU backend only, not on {device}"
                    ),
                ));
            }
            quantize_weights(&mut ck.weights, target)?;
        }
        let tokenizer = ck.tokenizer.take();
        let eos = ck.eos_ids;
        let mut model = Self::on_device(ck.config, &ck.weights, eos, opts, ck.files)?;
        model.tokenizer = tokenizer;
        Ok(model)
    }

    /// Build the backend `opts.device` names and the model on it.
    fn on_device(
        config: ModelConfig,
        weights: &Weights,
        eos_ids: Vec<u32>,
        opts: &LoadOptions,
        files: ModelFiles,
    ) -> Result<Model> {
        struct Build<'a> {
            config: ModelConfig,
            weights: &'a Weights,
            eos_ids: Vec<u32>,
            opts: &'a LoadOptions,
            files: ModelFiles,
        }
        impl WithBackend for Build<'_> {
            type Out = Model;
            fn run<B: Backend + 'static>(self, backend: B) -> Result<Model> {
                Model::from_parts(
                    self.config,
                    self.weights,
                    backend,
                    self.eos_ids,
                    self.opts,
                    self.files,
                )
            }
        }
        let backend_opts = BackendOptions {
            threads: opts.threads,
            profile: opts.profile,
            record_activations: opts.record_activations,
        };
        let job = Build {
            config,
            weights,
            eos_ids,
            opts,
            files,
        };
        backend::on_device(opts.device, &backend_opts, job)
    }

    /// Load a checkpoint as [`Model::load`] does, onto a backend the caller built (a backend of
    /// one's own, or a configured CUDA backend). `opts.device` and the backend settings in
    /// `opts` (threads, profiling) are not used: the backend is as given.
    pub fn load_with_backend<B: Backend + 'static>(
        path: &Path,
        opts: &LoadOptions,
        backend: B,
    ) -> Result<Model> {
        catch_panic("Model::load_with_backend", || {
            let mut ck = loader::open(path, opts.keep_quantized)?;
            let tokenizer = ck.tokenizer.take();
            let mut model =
                Self::from_parts(ck.config, &ck.weights, backend, ck.eos_ids, opts, ck.files)?;
            model.tokenizer = tokenizer;
            Ok(model)
        })
    }

    /// Build a model from already-loaded weights on any backend.
    pub(crate) fn from_parts<B: Backend + 'static>(
        config: ModelConfig,
        weights: &Weights,
        backend: B,
        eos_ids: Vec<u32>,
        opts: &LoadOptions,
        files: ModelFiles,
    ) -> Result<Model>
    where
        B::Buf: Send + 'static,
        B::Mat: Send + 'static,
        B::Kv: Send + 'static,
    {
        let max = config.max_position_embeddings;
        let ctx = opts.context_len.unwrap_or(max.min(4096));
        if ctx > max {
            // Past the trained length RoPE positions were never seen: output degrades silently.
            return Err(Error::option(
                "context_len",
                ctx,
                format!(
                    "the model was trained for at most {max} positions (max_position_embeddings)"
                ),
            ));
        }
        let num_parameters = count_parameters(&config, weights);
        let decode_weight_bytes = decode_weight_bytes(&config, weights);
        let vocab = config.vocab_size;
        if opts.max_seqs == 0 || opts.max_seqs > 4096 {
            return Err(Error::option(
                "max_seqs",
                opts.max_seqs,
                "must be between 1 and 4096",
            ));
        }
        if opts.kv_block_size == 0 || opts.kv_block_size > 4096 {
            return Err(Error::option(
                "kv_block_size",
                opts.kv_block_size,
                "must be between 1 and 4096",
            ));
        }
        if opts.max_batch == 0 {
            return Err(Error::option("max_batch", 0, "must be positive"));
        }
        let sizes = Sizes {
            ctx,
            max_batch: opts.max_batch.min(ctx),
            max_seqs: opts.max_seqs,
            block_size: opts.kv_block_size,
            all_logits: opts.all_logits,
        };
        let t = Transformer::new(config, weights, backend, sizes)?;
        Ok(Model {
            engine: Box::new(t),
            eos_ids,
            num_parameters,
            decode_weight_bytes,
            cached: Vec::new(),
            logits: vec![0.0; vocab],
            files,
            tokenizer: None,
        })
    }

    /// The model's shape and flags.
    pub fn config(&self) -> &ModelConfig {
        self.engine.config()
    }

    /// The exact number of parameters (tied embeddings counted once).
    pub fn num_parameters(&self) -> u64 {
        self.num_parameters
    }

    /// The ids that end generation.
    pub fn eos_ids(&self) -> &[u32] {
        &self.eos_ids
    }

    /// Positions the KV cache holds.
    pub fn context_len(&self) -> usize {
        self.engine.context_len()
    }

    /// "cpu (avx512, 2 threads)" etc.
    pub fn backend_name(&self) -> String {
        self.engine.backend_name()
    }

    /// Where the checkpoint's files are.
    pub fn files(&self) -> &ModelFiles {
        &self.files
    }

    /// The tokenizer shipped with the checkpoint (tokenizer.json beside config.json, or the one
    /// embedded in a GGUF file), if any.
    pub fn tokenizer(&self) -> Option<&Tokenizer> {
        self.tokenizer.as_ref()
    }

    pub(crate) fn take_tokenizer(&mut self) -> Result<Tokenizer> {
        self.require_tokenizer()?;
        self.tokenizer
            .take()
            .ok_or_else(|| Error::Tokenizer("no tokenizer".into()))
    }

    pub(crate) fn put_tokenizer(&mut self, t: Tokenizer) {
        self.tokenizer = Some(t);
    }

    /// The tokenizer, or an error saying the checkpoint has none.
    pub fn require_tokenizer(&self) -> Result<&Tokenizer> {
        self.tokenizer.as_ref().ok_or_else(|| Error::MissingFile {
            path: self.files.dir.join("tokenizer.json"),
            what: "tokenizer.json (text prompts need one; token ids work without)".into(),
        })
    }

    /// Weight bytes one decode step reads (for GB/s figures).
    pub fn decode_weight_bytes(&self) -> u64 {
        self.decode_weight_bytes
    }

    /// KV-cache bytes one decode step reads at position `pos` (K and V of every layer, f32).
    pub fn kv_bytes_read_at(&self, pos: usize) -> u64 {
        let c = self.config();
        (2 * c.num_layers * c.kv_dim() * 4 * pos) as u64
    }

    /// A random-weight model with the published shapes of `preset` (`synthetic:NAME` in the CLI):
    /// for benchmarks without a download.
    pub fn synthetic(preset: &str, dtype: DType, opts: &LoadOptions) -> Result<Model> {
        catch_panic("Model::synthetic", || {
            let config = crate::synthetic::preset_config(preset)?;
            let weights = crate::synthetic::random_weights(&config, dtype, 0x5eed)?;
            let files = ModelFiles {
                dir: PathBuf::from(format!("synthetic:{preset}")),
                weights: PathBuf::new(),
            };
            let eos = config.eos_token_ids.clone();
            Self::on_device(config, &weights, eos, opts, files)
        })
    }

    /// Every op's output since the last call, in execution order (needs
    /// `LoadOptions::record_activations`): the intermediate values of the forward pass.
    pub fn take_activations(&self) -> Vec<Activation> {
        self.engine.take_activations()
    }

    /// Timeline of individual op executions since the last call (needs `LoadOptions::profile`).
    pub fn take_trace(&self) -> Vec<TraceEvent> {
        self.engine.take_trace()
    }

    /// Forget the KV cache.
    pub fn reset(&mut self) {
        self.cached.clear();
    }

    /// Per-op timings since the last call (needs `LoadOptions::profile`).
    pub fn take_profile(&self) -> Vec<OpProfile> {
        self.engine.take_profile()
    }

    /// Run `tokens` from an empty cache; returns the argmax at every position and the full
    /// logits at the last one. Needs `LoadOptions::all_logits`.
    pub fn score(&mut self, tokens: &[u32]) -> Result<(Vec<u32>, Vec<f32>)> {
        let mut argmax = Vec::with_capacity(tokens.len());
        let mut last = vec![0.0; self.config().vocab_size];
        self.for_each_position_logits(tokens, |_, row_logits| {
            argmax.push(crate::backend::cpu::argmax(row_logits) as u32);
            last.copy_from_slice(row_logits);
        })?;
        Ok((argmax, last))
    }

    /// Run `tokens` from an empty cache and hand the logits of every position to `f`
    /// (position, logits). Needs `LoadOptions::all_logits`. A panic inside minfer (a bug)
    /// is returned as [`Error::Internal`]; one in `f` is the caller's and unwinds as usual.
    pub fn for_each_position_logits(
        &mut self,
        tokens: &[u32],
        mut f: impl FnMut(usize, &[f32]),
    ) -> Result<()> {
        self.reset();
        if tokens.len() > self.context_len() {
            return Err(Error::arg(format!(
                "{} tokens exceed the context length {}",
                tokens.len(),
                self.context_len()
            )));
        }
        let mut row = std::mem::take(&mut self.logits);
        let chunk = self.engine.max_batch();
        let mut pos = 0;
        let result = (|| {
            for part in tokens.chunks(chunk) {
                let engine = &mut self.engine;
                catch_panic("forward", || engine.forward(part, pos, Logits::All))?;
                for r in 0..part.len() {
                    catch_panic("read_logits", || engine.read_logits(r, &mut row))?;
                    f(pos + r, &row);
                }
                pos += part.len();
                self.cached.extend_from_slice(part);
            }
            Ok(())
        })();
        self.logits = row;
        result
    }
}

/// Quantize every plain-dtype weight matrix whose rows are whole Q8_0 blocks to `target`
/// (Q8_0: 32 weights → 34 bytes, ~3.8× smaller than f32). Vectors (norms, biases) stay f32.
pub fn quantize_weights(weights: &mut Weights, target: DType) -> Result<()> {
    if target != DType::Q8_0 {
        return Err(Error::arg(format!(
            "cannot quantize to {target}: only q8_0 is supported"
        )));
    }
    for t in weights.tensors.values_mut() {
        if t.shape.len() != 2 || t.dtype.is_quantized() || t.shape[1] % 32 != 0 {
            continue;
        }
        let bytes = crate::backend::cpu::quant_kernels::quantize_q8_0(&t.to_f32_vec()?)?;
        *t = crate::tensor::WeightTensor::from_bytes(
            t.name.clone(),
            DType::Q8_0,
            t.shape.clone(),
            &bytes,
        )?;
    }
    Ok(())
}

/// Perplexity of a token sequence under the model.
#[derive(Clone, Debug, PartialEq)]
pub struct Perplexity {
    /// exp(mean NLL) over tokens 1..n, each predicted from its prefix.
    pub ppl: f64,
    /// Mean negative log-likelihood per token, in nats.
    pub mean_nll: f64,
    /// Standard error of the mean NLL (sample standard deviation / √count).
    pub nll_stderr: f64,
    /// ppl's standard error by the delta method: ppl × nll_stderr.
    pub ppl_stderr: f64,
    /// Tokens scored.
    pub count: usize,
}

impl Model {
    /// Perplexity of `tokens` (needs `LoadOptions::all_logits`): every token after the first is
    /// scored given all the tokens before it, in one pass over the sequence.
    pub fn perplexity(&mut self, tokens: &[u32]) -> Result<Perplexity> {
        if tokens.len() < 2 {
            return Err(Error::arg("perplexity needs at least two tokens"));
        }
        let mut nll = Vec::with_capacity(tokens.len() - 1);
        self.for_each_position_logits(tokens, |pos, logits| {
            if let Some(&next) = tokens.get(pos + 1) {
                let m = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
                let lse = m + logits
                    .iter()
                    .map(|&l| (l as f64 - m).exp())
                    .sum::<f64>()
                    .ln();
                nll.push(lse - logits[next as usize] as f64);
            }
        })?;
        let n = nll.len() as f64;
        let mean = nll.iter().sum::<f64>() / n;
        let var = nll.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
        let se = (var / n).sqrt();
        let ppl = mean.exp();
        Ok(Perplexity {
            ppl,
            mean_nll: mean,
            nll_stderr: se,
            ppl_stderr: ppl * se,
            count: nll.len(),
        })
    }
}
