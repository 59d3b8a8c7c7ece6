//! The transformer, written once over the [`Backend`] trait. It reads like the math:
//!
//! ```text
//! x = embed[tokens] (· √hidden)                       // (rows, hidden); scaled: Gemma
//! for each layer:
//!     h = rmsnorm(x) · attn_norm
//!     q, k, v = h·Wqᵀ (+bq), h·Wkᵀ (+bk), h·Wvᵀ (+bv)  // (rows, heads·hd), (rows, kv_heads·hd) ×2
//!     q, k = qk_norm(q), qk_norm(k)                   // Qwen3, Gemma
//!     q, k = rope(q, pos), rope(k, pos)               // per-layer base: Gemma's local layers
//!     a = attention(q, K-cache ++ k, V-cache ++ v)    // causal, GQA, optional sliding window
//!     o = a·Woᵀ (; o = rmsnorm(o) · post_attn_norm)   // sandwich norms: Gemma
//!     x = x + o ;  h = rmsnorm(x) · mlp_norm          // fused: add_rms_norm
//!     o = (act(h·Wgateᵀ) ⊙ h·Wupᵀ)·Wdownᵀ             // act: silu, or gelu_tanh (Gemma)
//!     (o = rmsnorm(o) · post_mlp_norm) ; x = x + o    // the add is fused into the next norm
//! logits = (rmsnorm(x) · final_norm) · Wlmᵀ           // Wlm = embed when tied
//! ```
//!
//! Architectures differ only by config flags (biases, q/k norms, windows, rope scaling and local
//! bases, sandwich norms, the MLP activation, the embedding scale, the norm weights' offset);
//! there is no per-architecture branch below. Buffers are allocated once in [`Transformer::new`], sized
//! for `max_batch` rows, so `forward` allocates nothing.

use std::sync::Arc;

use crate::backend::{AttnParams, Backend, KvShape, OpProfile, StepLayout};
use crate::config::{MlpActivation, ModelConfig};
use crate::error::{Error, Result};
use crate::tensor::{WeightTensor, Weights};

/// One decoder layer's weights, named as in the Hugging Face checkpoint.
struct Layer<M> {
    input_layernorm: M,        // (hidden)
    post_attn_norm: Option<M>, // (hidden)        Gemma: post_attention_layernorm
    q_proj: M,                 // (heads·hd, hidden)
    k_proj: M,                 // (kv_heads·hd, hidden)
    v_proj: M,                 // (kv_heads·hd, hidden)
    q_bias: Option<M>,         // (heads·hd)      Qwen2
    k_bias: Option<M>,         // (kv_heads·hd)   Qwen2
    v_bias: Option<M>,         // (kv_heads·hd)   Qwen2
    q_norm: Option<M>,         // (hd)            Qwen3
    k_norm: Option<M>,         // (hd)            Qwen3
    o_proj: M,                 // (hidden, heads·hd)
    pre_mlp_norm: M, // (hidden)        llama: post_attention_layernorm; Gemma: pre_feedforward_layernorm
    post_mlp_norm: Option<M>, // (hidden)        Gemma: post_feedforward_layernorm
    gate_proj: M,    // (intermediate, hidden)
    up_proj: M,      // (intermediate, hidden)
    down_proj: M,    // (hidden, intermediate)
}

/// Activation buffers, allocated once.
struct Scratch<B> {
    x: B,        // (max_batch, hidden)      the residual stream
    h: B,        // (max_batch, hidden)      normed input of a sub-block
    q: B,        // (max_batch, heads·hd)
    k: B,        // (max_batch, kv_heads·hd)
    v: B,        // (max_batch, kv_heads·hd)
    att: B,      // (max_batch, heads·hd)    attention output before o_proj
    o: B,        // (max_batch, hidden)      o_proj / down_proj output
    o_normed: B, // (max_batch, hidden)    o after a sandwich norm (Gemma; 1 element otherwise)
    gate: B,     // (max_batch, intermediate)
    up: B,       // (max_batch, intermediate)
    last: B,     // (1, hidden)              final-normed last row
    logits: B,   // (logits_rows, vocab)
}

/// Which positions get logits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Logits {
    /// Only the last position (generation).
    Last,
    /// Every row of the call (scoring, perplexity, `minfer logits`, a decode batch).
    All,
}

/// How the transformer's KV cache and buffers are sized.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sizes {
    /// Positions one sequence may hold.
    pub ctx: usize,
    /// Rows one forward step processes at most; longer inputs run in chunks.
    pub max_batch: usize,
    /// Sequences the paged KV pool is sized for (each up to `ctx` positions).
    pub max_seqs: usize,
    /// Positions per KV block.
    pub block_size: usize,
    /// Keep logits for every row of a full step (scoring), not only the last.
    pub all_logits: bool,
}

pub struct Transformer<B: Backend> {
    pub config: ModelConfig,
    backend: Arc<B>,
    embed_tokens: B::Mat, // (vocab, hidden)
    layers: Vec<Layer<B::Mat>>,
    norm: B::Mat,                   // (hidden)
    lm_head: Option<B::Mat>,        // (vocab, hidden); None when tied to embed_tokens
    inv_freq: B::Mat,               // (hd / 2) rotary frequencies, scaling applied
    inv_freq_local: Option<B::Mat>, // (hd / 2) sliding-window layers' own base (Gemma), unscaled
    kv: B::Kv,                      // (layers, blocks · block_size, kv_heads·hd) for K and V
    kv_shape: KvShape,
    layout: B::Layout, // the current step's positions and block tables, where the kernels read them
    s: Scratch<B::Buf>,
    sizes: Sizes,
    logits_rows: usize,
}

impl<B: Backend> Transformer<B> {
    /// Check every tensor against the config, upload it, and allocate the buffers and a paged
    /// KV pool for `sizes.max_seqs` sequences of `sizes.ctx` positions.
    pub fn new(config: ModelConfig, weights: &Weights, backend: B, sizes: Sizes) -> Result<Self> {
        let c = &config;
        let Sizes {
            ctx,
            max_batch,
            max_seqs,
            block_size,
            all_logits,
        } = sizes;
        if ctx == 0 || max_batch == 0 || max_seqs == 0 || block_size == 0 {
            return Err(Error::arg(
                "context length, batch size, sequences and KV block size must be positive",
            ));
        }
        // Every tensor the schema names must be there with its shape; then each is uploaded.
        for (name, shape) in c.tensor_shapes() {
            weights.get_shaped(&name, &shape)?;
        }
        let (hidden, inter, vocab) = (c.hidden_size, c.intermediate_size, c.vocab_size);
        let (q_dim, kv_dim) = (c.q_dim(), c.kv_dim());
        let up = |name: &str| -> Result<B::Mat> { backend.upload(weights.get(name)?) };
        let opt = |name: &str, present: bool| -> Result<Option<B::Mat>> {
            present.then(|| up(name)).transpose()
        };
        // RMSNorm weights: Gemma's norms scale by (1 + w); the 1 is added here, once, in f32
        // (as Gemma3RMSNorm does: `output * (1.0 + self.weight.float())`).
        let norm = |name: &str| -> Result<B::Mat> {
            let w = weights.get(name)?;
            if c.norm_weight_offset == 0.0 {
                return backend.upload(w);
            }
            let v: Vec<f32> = w
                .to_f32_vec()?
                .into_iter()
                .map(|x| c.norm_weight_offset + x)
                .collect();
            backend.upload(&WeightTensor::from_f32(name, w.shape.clone(), &v))
        };
        let opt_norm = |name: &str, present: bool| -> Result<Option<B::Mat>> {
            present.then(|| norm(name)).transpose()
        };

        let embed_tokens = up("model.embed_tokens.weight")?;
        let mut layers = Vec::with_capacity(c.num_layers);
        for i in 0..c.num_layers {
            let p = format!("model.layers.{i}");
            let bias = c.attention_bias;
            let sandwich = c.sandwich_norms;
            // Gemma names the norm after attention post_attention_layernorm, and the one before
            // the MLP pre_feedforward_layernorm; llama calls the one before the MLP
            // post_attention_layernorm.
            let (pre_mlp, post_attn) = if sandwich {
                ("pre_feedforward_layernorm", "post_attention_layernorm")
            } else {
                ("post_attention_layernorm", "")
            };
            layers.push(Layer {
                input_layernorm: norm(&format!("{p}.input_layernorm.weight"))?,
                post_attn_norm: opt_norm(&format!("{p}.{post_attn}.weight"), sandwich)?,
                pre_mlp_norm: norm(&format!("{p}.{pre_mlp}.weight"))?,
                post_mlp_norm: opt_norm(
                    &format!("{p}.post_feedforward_layernorm.weight"),
                    sandwich,
                )?,
                q_proj: up(&format!("{p}.self_attn.q_proj.weight"))?,
                k_proj: up(&format!("{p}.self_attn.k_proj.weight"))?,
                v_proj: up(&format!("{p}.self_attn.v_proj.weight"))?,
                q_bias: opt(&format!("{p}.self_attn.q_proj.bias"), bias)?,
                k_bias: opt(&format!("{p}.self_attn.k_proj.bias"), bias)?,
                v_bias: opt(&format!("{p}.self_attn.v_proj.bias"), bias)?,
                q_norm: opt_norm(&format!("{p}.self_attn.q_norm.weight"), c.qk_norm)?,
                k_norm: opt_norm(&format!("{p}.self_attn.k_norm.weight"), c.qk_norm)?,
                o_proj: up(&format!("{p}.self_attn.o_proj.weight"))?,
                gate_proj: up(&format!("{p}.mlp.gate_proj.weight"))?,
                up_proj: up(&format!("{p}.mlp.up_proj.weight"))?,
                down_proj: up(&format!("{p}.mlp.down_proj.weight"))?,
            });
        }
        let final_norm = norm("model.norm.weight")?;
        let lm_head = if c.tie_word_embeddings {
            None
        } else {
            Some(up("lm_head.weight")?)
        };
        let inv = c.rope_inv_freq();
        let inv_freq = backend.upload(&WeightTensor::from_f32(
            "rope.inv_freq",
            vec![inv.len()],
            &inv,
        ))?;
        let inv_freq_local = match c.rope_local_inv_freq() {
            Some(inv) => Some(backend.upload(&WeightTensor::from_f32(
                "rope.inv_freq_local",
                vec![inv.len()],
                &inv,
            ))?),
            None => None,
        };
        let blocks_per_seq = ctx.div_ceil(block_size);
        let kv_shape = KvShape {
            layers: c.num_layers,
            blocks: blocks_per_seq
                .checked_mul(max_seqs)
                .ok_or_else(|| Error::arg("KV pool size overflows"))?,
            block_size,
            n_kv_heads: c.num_kv_heads,
            head_dim: c.head_dim,
        };
        let kv = backend.alloc_kv(kv_shape)?;
        let layout = backend.alloc_layout(max_batch.max(max_seqs), max_seqs, blocks_per_seq)?;
        let logits_rows = if all_logits { max_batch } else { 1 }.max(max_seqs);
        let a = |n: usize| backend.alloc(n);
        // A step has at most max_batch rows (prefill) or max_seqs rows (a decode batch).
        let max_batch = max_batch.max(max_seqs);
        let s = Scratch {
            x: a(max_batch * hidden)?,
            h: a(max_batch * hidden)?,
            q: a(max_batch * q_dim)?,
            k: a(max_batch * kv_dim)?,
            v: a(max_batch * kv_dim)?,
            att: a(max_batch * q_dim)?,
            o: a(max_batch * hidden)?,
            o_normed: a(if c.sandwich_norms {
                max_batch * hidden
            } else {
                1
            })?,
            gate: a(max_batch * inter)?,
            up: a(max_batch * inter)?,
            last: a(hidden)?,
            logits: a(logits_rows * vocab)?,
        };
        Ok(Transformer {
            config,
            backend: Arc::new(backend),
            embed_tokens,
            layers,
            norm: final_norm,
            lm_head,
            inv_freq,
            inv_freq_local,
            kv,
            kv_shape,
            layout,
            s,
            sizes,
            logits_rows,
        })
    }

    pub fn backend(&self) -> &B {
        &self.backend
    }

    pub fn context_len(&self) -> usize {
        self.sizes.ctx
    }

    pub fn max_batch(&self) -> usize {
        self.sizes.max_batch
    }

    pub fn sizes(&self) -> Sizes {
        self.sizes
    }

    pub fn kv_shape(&self) -> KvShape {
        self.kv_shape
    }

    /// Run `tokens` at positions `pos0..` of the one sequence that owns the KV pool in order
    /// (identity block table), appending to its cache. Afterwards the logits of the last
    /// position (or of every position of the final chunk, see [`Logits::All`]) are in the
    /// logits buffer. Inputs longer than `max_batch` run in chunks.
    pub fn forward(&mut self, tokens: &[u32], pos0: usize, which: Logits) -> Result<()> {
        if tokens.is_empty() {
            return Err(Error::arg("forward needs at least one token"));
        }
        let ctx = self.sizes.ctx;
        if pos0 + tokens.len() > ctx {
            return Err(Error::arg(format!(
                "{} tokens at position {pos0} exceed the context length {ctx}",
                tokens.len(),
            )));
        }
        if which == Logits::All && self.logits_rows < self.sizes.max_batch {
            return Err(Error::arg(
                "this model was loaded without all-position logits",
            ));
        }
        let mut pos = pos0;
        for chunk in tokens.chunks(self.sizes.max_batch) {
            let layout =
                StepLayout::contiguous(pos, chunk.len(), ctx.div_ceil(self.kv_shape.block_size));
            self.forward_step(chunk, &layout, which)?;
            pos += chunk.len();
        }
        Ok(())
    }

    /// One forward step over rows placed by `layout` (at most `max_batch` rows; any mix of
    /// sequences, see [`StepLayout`]). Afterwards the logits of the last row
    /// ([`Logits::Last`]) or of every row ([`Logits::All`], at most [`Self::logits_rows`])
    /// are in the logits buffer.
    pub fn forward_step(
        &mut self,
        tokens: &[u32],
        layout: &StepLayout,
        which: Logits,
    ) -> Result<()> {
        let n = tokens.len();
        if n == 0 || n > self.sizes.max_batch.max(self.sizes.max_seqs) {
            return Err(Error::arg(format!(
                "a forward step takes 1..={} rows, not {n}",
                self.sizes.max_batch.max(self.sizes.max_seqs)
            )));
        }
        if which == Logits::All && n > self.logits_rows {
            return Err(Error::arg(format!(
                "logits for {n} rows asked, the model keeps {}",
                self.logits_rows
            )));
        }
        let vocab = self.config.vocab_size as u32;
        if let Some(&bad) = tokens.iter().find(|&&t| t >= vocab) {
            return Err(Error::arg(format!(
                "token id {bad} is out of range for a vocabulary of {vocab}"
            )));
        }
        layout.validate(n, &self.kv_shape)?;
        if let Some(&p) = layout
            .positions
            .iter()
            .find(|&&p| p as usize >= self.sizes.ctx)
        {
            return Err(Error::arg(format!(
                "position {p} is beyond the context length {}",
                self.sizes.ctx
            )));
        }
        self.backend.set_layout(&mut self.layout, layout)?;
        let backend = Arc::clone(&self.backend);
        backend.scoped(&mut || self.step(tokens, which))
    }

    /// Copy KV blocks (every layer, K and V): copy-on-write of shared blocks.
    pub fn copy_kv_blocks(&mut self, pairs: &[(u32, u32)]) -> Result<()> {
        self.backend.copy_kv_blocks(&mut self.kv, pairs)
    }

    /// One forward step over the rows of the current layout.
    fn step(&mut self, tokens: &[u32], which: Logits) -> Result<()> {
        let c = &self.config;
        let (b, s) = (&self.backend, &mut self.s);
        let n = tokens.len();
        let eps = c.rms_norm_eps;
        let (hidden, inter, hd) = (c.hidden_size, c.intermediate_size, c.head_dim);

        b.embed(&mut s.x, &self.embed_tokens, tokens)?;
        if let Some(scale) = c.embed_scale {
            b.scale(&mut s.x, scale, n * hidden)?;
        }
        for (l, w) in self.layers.iter().enumerate() {
            // Attention block. The previous block's residual add (x += o) is fused into this
            // norm: one pass over x instead of two, one kernel launch instead of two.
            if l == 0 {
                b.rms_norm(&mut s.h, &s.x, &w.input_layernorm, n, eps)?;
            } else {
                let post = self.layers[l - 1].post_mlp_norm.as_ref();
                add_normed_then_norm(&**b, s, post, &w.input_layernorm, n, eps)?;
            }
            b.matmul(&mut s.q, &s.h, &w.q_proj, w.q_bias.as_ref(), n)?;
            b.matmul(&mut s.k, &s.h, &w.k_proj, w.k_bias.as_ref(), n)?;
            b.matmul(&mut s.v, &s.h, &w.v_proj, w.v_bias.as_ref(), n)?;
            if let (Some(qn), Some(kn)) = (&w.q_norm, &w.k_norm) {
                b.head_rms_norm(&mut s.q, qn, n, c.num_heads, eps)?;
                b.head_rms_norm(&mut s.k, kn, n, c.num_kv_heads, eps)?;
            }
            let inv_freq = match &self.inv_freq_local {
                Some(local) if c.layer_uses_local_rope(l) => local,
                _ => &self.inv_freq,
            };
            b.rope(&mut s.q, n, c.num_heads, hd, &self.layout, inv_freq)?;
            b.rope(&mut s.k, n, c.num_kv_heads, hd, &self.layout, inv_freq)?;
            let p = AttnParams {
                n_heads: c.num_heads,
                n_kv_heads: c.num_kv_heads,
                head_dim: c.head_dim,
                scale: c.attention_scale,
                window: c.layer_windows[l],
            };
            let kv = &mut self.kv;
            b.attention(&mut s.att, &s.q, &s.k, &s.v, kv, l, n, &self.layout, &p)?;
            b.matmul(&mut s.o, &s.att, &w.o_proj, None, n)?;

            // MLP block: x += o (post-attention-normed when the model has sandwich norms),
            // h = norm(x), then the gated MLP.
            let post = w.post_attn_norm.as_ref();
            add_normed_then_norm(&**b, s, post, &w.pre_mlp_norm, n, eps)?;
            b.matmul(&mut s.gate, &s.h, &w.gate_proj, None, n)?;
            b.matmul(&mut s.up, &s.h, &w.up_proj, None, n)?;
            match c.mlp_activation {
                MlpActivation::Silu => b.silu_mul(&mut s.gate, &s.up, n * inter)?,
                MlpActivation::GeluTanh => b.gelu_tanh_mul(&mut s.gate, &s.up, n * inter)?,
            }
            b.matmul(&mut s.o, &s.gate, &w.down_proj, None, n)?; // x += o happens in the next norm
        }

        // x += o (the last MLP's output); h = rmsnorm(x) · final norm; logits = h · Wlmᵀ.
        let post = self.layers.last().and_then(|w| w.post_mlp_norm.as_ref());
        add_normed_then_norm(&**b, s, post, &self.norm, n, eps)?;
        let lm_head = self.lm_head.as_ref().unwrap_or(&self.embed_tokens);
        match which {
            Logits::Last => {
                b.copy_rows(&mut s.last, &s.h, n - 1, 1, hidden)?;
                b.matmul(&mut s.logits, &s.last, lm_head, None, 1)?;
            }
            Logits::All => b.matmul(&mut s.logits, &s.h, lm_head, None, n)?,
        }
        Ok(())
    }

    /// Copy the logits of `row` (0 for [`Logits::Last`]) to `out` (length vocab).
    pub fn read_logits(&self, row: usize, out: &mut [f32]) -> Result<()> {
        let v = self.config.vocab_size;
        if out.len() != v || row >= self.logits_rows {
            return Err(Error::arg("read_logits: bad row or output length"));
        }
        self.backend.read(&self.s.logits, row * v, out)
    }

    /// Greedy choice at `row`, computed on the backend (one integer crosses to the host).
    pub fn argmax(&self, row: usize) -> Result<u32> {
        let v = self.config.vocab_size;
        if row >= self.logits_rows {
            return Err(Error::arg("argmax: bad row"));
        }
        self.backend.argmax(&self.s.logits, row * v, v)
    }

    pub fn take_profile(&self) -> Vec<OpProfile> {
        self.backend.take_profile()
    }
}

/// `x += post_norm(o)` (or `x += o` without a post norm), then `h = rmsnorm(x) · next`: a
/// sub-block's residual add fused with the next norm. The post norm (Gemma's sandwich norms)
/// writes to its own buffer, as the norm ops never work in place.
fn add_normed_then_norm<B: Backend>(
    b: &B,
    s: &mut Scratch<B::Buf>,
    post: Option<&B::Mat>,
    next: &B::Mat,
    n: usize,
    eps: f32,
) -> Result<()> {
    match post {
        Some(p) => {
            b.rms_norm(&mut s.o_normed, &s.o, p, n, eps)?;
            b.add_rms_norm(&mut s.h, &mut s.x, &s.o_normed, next, n, eps)
        }
        None => b.add_rms_norm(&mut s.h, &mut s.x, &s.o, next, n, eps),
    }
}
