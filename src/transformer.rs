//! The transformer, written once over the [`Backend`] trait. It reads like the math:
//!
//! ```text
//! x = embed[tokens] (· √hidden)                       // (rows, hidden); scaled: Gemma
//! for each layer:
//!     h = rmsnorm(x) · attn_norm
//!     q, k, v = h·Wqᵀ (+bq), h·Wkᵀ (+bk), h·Wvᵀ (+bv)  // (rows, heads·hd), (rows, kv_heads·hd) ×2
//!                                                     // one matmul: Wqkv = Wq ++ Wk ++ Wv
//!     q, k = qk_norm(q), qk_norm(k)                   // Qwen3, Gemma
//!     q, k = rope(q, pos), rope(k, pos)               // per-layer base: Gemma's local layers
//!     a = attention(q, K-cache ++ k, V-cache ++ v)    // causal, GQA, optional sliding window
//!     o = a·Woᵀ (; o = rmsnorm(o) · post_attn_norm)   // sandwich norms: Gemma
//!     x = x + o ;  h = rmsnorm(x) · mlp_norm          // fused: add_rms_norm
//!     o = (act(h·Wgateᵀ) ⊙ h·Wupᵀ)·Wdownᵀ             // act: silu, or gelu_tanh (Gemma)
//!                                                     // one matmul: Wgate ++ Wup
//!     (o = rmsnorm(o) · post_mlp_norm) ; x = x + o    // the add is fused into the next norm
//! logits = (rmsnorm(x) · final_norm) · Wlmᵀ           // Wlm = embed when tied
//! ```
//!
//! Architectures differ only by config flags (biases, q/k norms, windows, rope scaling and local
//! bases, sandwich norms, the MLP activation, the embedding scale, the norm weights' offset);
//! there is no per-architecture branch below. Buffers are allocated once in [`Transformer::new`], sized
//! for `max_batch` rows, so `forward` allocates nothing.
//!
//! Linear layers that read the same input are fused at load ([`Fused`]): q/k/v into one matrix
//! with their rows concatenated, gate/up likewise, so each is one matmul (one pass over the
//! input, one kernel launch). A checkpoint that stores them in different dtypes (Gemma's
//! Q4_K_M keeps v in Q6_K) keeps them apart.

use std::sync::Arc;

use crate::backend::{AttnParams, Backend, KvShape, OpProfile, StepLayout};
use crate::config::{MlpActivation, ModelConfig};
use crate::error::{Error, Result};
use crate::tensor::{WeightTensor, Weights};

/// One decoder layer's weights, named as in the Hugging Face checkpoint.
struct Layer<M> {
    input_layernorm: M,        // (hidden)
    post_attn_norm: Option<M>, // (hidden)        Gemma: post_attention_layernorm
    qkv: Fused<M>, // q_proj (heads·hd, hidden) ++ k_proj, v_proj (kv_heads·hd, hidden); biases: Qwen2
    q_norm: Option<M>, // (hd)            Qwen3
    k_norm: Option<M>, // (hd)            Qwen3
    o_proj: M,     // (hidden, heads·hd)
    pre_mlp_norm: M, // (hidden)        llama: post_attention_layernorm; Gemma: pre_feedforward_layernorm
    post_mlp_norm: Option<M>, // (hidden)        Gemma: post_feedforward_layernorm
    gate_up: Fused<M>, // gate_proj ++ up_proj (intermediate, hidden) each
    down_proj: M,    // (hidden, intermediate)
}

/// Linear layers that read the same input: fused at load into one matrix whose rows are the
/// parts' rows one after another (`q_proj+k_proj+v_proj`, `gate_proj+up_proj`), or kept apart
/// when the checkpoint stores them in different dtypes.
enum Fused<M> {
    One { w: M, bias: Option<M> }, // (Σ out, in), (Σ out)
    Apart(Vec<(M, Option<M>)>),    // (out_j, in), (out_j) each
}

impl<M> Fused<M> {
    fn is_fused(&self) -> bool {
        matches!(self, Fused::One { .. })
    }
}

/// Activation buffers, allocated once.
struct Scratch<B> {
    x: B,        // (max_batch, hidden)      the residual stream
    h: B,        // (max_batch, hidden)      normed input of a sub-block
    qkv: B,      // (max_batch, (heads + 2·kv_heads)·hd)  fused q/k/v output (1 element if none)
    q: B,        // (max_batch, heads·hd)
    k: B,        // (max_batch, kv_heads·hd)
    v: B,        // (max_batch, kv_heads·hd)
    att: B,      // (max_batch, heads·hd)    attention output before o_proj
    o: B,        // (max_batch, hidden)      o_proj / down_proj output
    o_normed: B, // (max_batch, hidden)    o after a sandwich norm (Gemma; 1 element otherwise)
    gate_up: B,  // (max_batch, 2·intermediate)  fused gate/up output (1 element if none)
    gate: B,     // (max_batch, intermediate)
    up: B,       // (max_batch, intermediate)    (1 element if every layer is fused)
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

        // Fuse layers that read the same input when their dtypes agree (the parts are checked
        // against the schema above); else upload them apart.
        let fused = |name: &str, parts: &[&str], bias: bool| -> Result<Fused<B::Mat>> {
            let get = |p: &str, what: &str| weights.get(&format!("{p}.{what}"));
            let ws = parts
                .iter()
                .map(|p| get(p, "weight"))
                .collect::<Result<Vec<_>>>()?;
            let bs = match bias {
                true => parts
                    .iter()
                    .map(|p| get(p, "bias"))
                    .collect::<Result<Vec<_>>>()?,
                false => Vec::new(),
            };
            let one = WeightTensor::concat_rows(format!("{name}.weight"), &ws);
            let one_bias = match bias {
                true => WeightTensor::concat_rows(format!("{name}.bias"), &bs).map(Some),
                false => Some(None),
            };
            if let (Some(w), Some(b)) = (one, one_bias) {
                let bias = b.map(|b| backend.upload(&b)).transpose()?;
                let w = backend.upload(&w)?;
                // The parts are never read again: their mapped pages need not stay resident
                // beside the fused copy.
                ws.iter().chain(&bs).for_each(|p| p.release_pages());
                return Ok(Fused::One { w, bias });
            }
            let apart = ws.iter().enumerate().map(|(j, w)| {
                let b = bs.get(j).map(|b| backend.upload(b)).transpose()?;
                Ok((backend.upload(w)?, b))
            });
            Ok(Fused::Apart(apart.collect::<Result<Vec<_>>>()?))
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
                qkv: fused(
                    &format!("{p}.self_attn.q_proj+k_proj+v_proj"),
                    &[
                        &format!("{p}.self_attn.q_proj"),
                        &format!("{p}.self_attn.k_proj"),
                        &format!("{p}.self_attn.v_proj"),
                    ],
                    bias,
                )?,
                q_norm: opt_norm(&format!("{p}.self_attn.q_norm.weight"), c.qk_norm)?,
                k_norm: opt_norm(&format!("{p}.self_attn.k_norm.weight"), c.qk_norm)?,
                o_proj: up(&format!("{p}.self_attn.o_proj.weight"))?,
                gate_up: fused(
                    &format!("{p}.mlp.gate_proj+up_proj"),
                    &[&format!("{p}.mlp.gate_proj"), &format!("{p}.mlp.up_proj")],
                    false,
                )?,
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
        let any = |f: fn(&Layer<B::Mat>) -> bool| layers.iter().any(f);
        let qkv_width = if any(|l| l.qkv.is_fused()) {
            q_dim + 2 * kv_dim
        } else {
            0
        };
        let gate_up_width = if any(|l| l.gate_up.is_fused()) {
            2 * inter
        } else {
            0
        };
        let up_width = if any(|l| !l.gate_up.is_fused()) {
            inter
        } else {
            0
        };
        let s = Scratch {
            x: a(max_batch * hidden)?,
            h: a(max_batch * hidden)?,
            qkv: a((max_batch * qkv_width).max(1))?,
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
            gate_up: a((max_batch * gate_up_width).max(1))?,
            gate: a(max_batch * inter)?,
            up: a((max_batch * up_width).max(1))?,
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
        let mut step = || self.step(tokens, which);
        // A one-row step (decode) launches the same kernels every time: a GPU backend may
        // replay it from a CUDA graph.
        match n {
            1 => backend.repeated_step(&mut step),
            _ => backend.scoped(&mut step),
        }
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
            // q, k, v = h·Wqᵀ (+bq), h·Wkᵀ (+bk), h·Wvᵀ (+bv): one matmul when fused at load
            let (q_dim, kv_dim) = (c.q_dim(), c.kv_dim());
            let mut qkv = [(&mut s.q, q_dim), (&mut s.k, kv_dim), (&mut s.v, kv_dim)];
            project(&**b, &w.qkv, &s.h, n, &mut s.qkv, &mut qkv)?;
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
            gated_mlp(&**b, &w.gate_up, s, n, inter, c.mlp_activation)?; // s.gate = act(gate) ⊙ up
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

/// `x · Wᵀ (+ bias)` for each linear layer of `f`, into `parts` (buffer, width) in order. Fused:
/// one matmul into `joint` (`[rows, Σ widths]`), then split into `parts`, unless `parts` is
/// empty (the caller reads `joint` itself). Apart: one matmul per part.
fn project<B: Backend>(
    b: &B,
    f: &Fused<B::Mat>,
    x: &B::Buf,
    rows: usize,
    joint: &mut B::Buf,
    parts: &mut [(&mut B::Buf, usize)],
) -> Result<()> {
    match f {
        Fused::One { w, bias } => {
            b.matmul(joint, x, w, bias.as_ref(), rows)?;
            match parts.is_empty() {
                true => Ok(()),
                false => b.split_columns(joint, rows, parts),
            }
        }
        Fused::Apart(ws) => {
            if ws.len() != parts.len() {
                return Err(Error::arg(format!(
                    "{} linear layers for {} outputs",
                    ws.len(),
                    parts.len()
                )));
            }
            for ((w, bias), (out, _)) in ws.iter().zip(parts.iter_mut()) {
                b.matmul(out, x, w, bias.as_ref(), rows)?;
            }
            Ok(())
        }
    }
}

/// `s.gate = act(h·Wgateᵀ) ⊙ h·Wupᵀ`: fused, one matmul into `s.gate_up` and the activation
/// reading both halves; apart, two matmuls and the activation.
fn gated_mlp<B: Backend>(
    b: &B,
    gate_up: &Fused<B::Mat>,
    s: &mut Scratch<B::Buf>,
    n: usize,
    inter: usize,
    act: MlpActivation,
) -> Result<()> {
    if gate_up.is_fused() {
        project(b, gate_up, &s.h, n, &mut s.gate_up, &mut [])?;
        return b.gated_act(&mut s.gate, &mut s.gate_up, n, inter, act);
    }
    let mut parts = [(&mut s.gate, inter), (&mut s.up, inter)];
    project(b, gate_up, &s.h, n, &mut s.gate_up, &mut parts)?;
    match act {
        MlpActivation::Silu => b.silu_mul(&mut s.gate, &s.up, n * inter),
        MlpActivation::GeluTanh => b.gelu_tanh_mul(&mut s.gate, &s.up, n * inter),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::CpuBackend;
    use crate::backend::cuda::{backend::GraphStats, sim::SimDriver, CudaBackend};
    use crate::tensor::DType;
    use std::path::Path;

    /// The fixture's weights twice, with the same values: once with q/k/v and gate/up in one
    /// dtype (fused at load), once with v_proj and up_proj stored as bf16 (kept apart). Both
    /// hold v_proj and up_proj rounded to bf16, so only the fusion differs.
    fn fused_and_apart(fixture: &str) -> (ModelConfig, Weights, Weights) {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/models")
            .join(fixture);
        let mut a = crate::loader::open(&dir, true).expect("fixture");
        let mut b = crate::loader::open(&dir, true).expect("fixture").weights;
        for name in a.weights.tensors.keys().cloned().collect::<Vec<_>>() {
            if !(name.ends_with("v_proj.weight") || name.ends_with("up_proj.weight")) {
                continue;
            }
            let t = &a.weights.tensors[&name];
            assert_eq!(t.dtype, DType::F32, "{name}: the test wants f32 fixtures");
            let v: Vec<half::bf16> = t
                .to_f32_vec()
                .unwrap()
                .iter()
                .map(|&x| half::bf16::from_f32(x))
                .collect();
            let rounded: Vec<f32> = v.iter().map(|x| x.to_f32()).collect();
            let shape = t.shape.clone();
            b.tensors.insert(
                name.clone(),
                WeightTensor::from_bytes(
                    &name,
                    DType::BF16,
                    shape.clone(),
                    bytemuck::cast_slice(&v),
                )
                .unwrap(),
            );
            a.weights
                .tensors
                .insert(name.clone(), WeightTensor::from_f32(&name, shape, &rounded));
        }
        (a.config, a.weights, b)
    }

    /// Logits of every position of a 5-token prompt, then of 3 single-token steps.
    fn run<B: Backend>(config: &ModelConfig, w: &Weights, backend: B) -> (bool, Vec<f32>) {
        let sizes = Sizes {
            ctx: 16,
            max_batch: 8,
            max_seqs: 1,
            block_size: 4,
            all_logits: true,
        };
        let mut t = Transformer::new(config.clone(), w, backend, sizes).unwrap();
        let fused = t
            .layers
            .iter()
            .all(|l| l.qkv.is_fused() && l.gate_up.is_fused());
        let vocab = config.vocab_size;
        let mut out = Vec::new();
        let mut row = vec![0f32; vocab];
        t.forward(&[1, 5, 9, 2, 7], 0, Logits::All).unwrap();
        for r in 0..5 {
            t.read_logits(r, &mut row).unwrap();
            out.extend_from_slice(&row);
        }
        for (i, tok) in [3u32, 4, 11].into_iter().enumerate() {
            t.forward(&[tok], 5 + i, Logits::Last).unwrap();
            t.read_logits(0, &mut row).unwrap();
            out.extend_from_slice(&row);
        }
        (fused, out)
    }

    fn assert_close(a: &[f32], b: &[f32], what: &str) {
        assert_eq!(a.len(), b.len());
        let max = a.iter().fold(0f32, |m, x| m.max(x.abs()));
        let diff = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        // Same weights, same f32 arithmetic per output; only the f32 and bf16 kernels' sum
        // orders differ (a few ulps of each dot product).
        assert!(
            diff <= 1e-5 * max,
            "{what}: fused vs apart differ by {diff} (max {max})"
        );
    }

    /// Greedy decode of `steps` tokens after a 30-token prompt on the interpreter, graphs on
    /// or off: the logits of every step, and the graph statistics.
    fn decode_on_sim(graphs: bool, steps: usize) -> (Vec<Vec<f32>>, Vec<u32>, GraphStats) {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models/qwen2_bias");
        let ck = crate::loader::open(&dir, true).expect("fixture");
        let backend = CudaBackend::new(SimDriver::new())
            .unwrap()
            .with_f32_prefill(true)
            .with_graphs(graphs);
        let sizes = Sizes {
            ctx: 64,
            max_batch: 32,
            max_seqs: 1,
            block_size: 4,
            all_logits: false,
        };
        let mut t = Transformer::new(ck.config.clone(), &ck.weights, backend, sizes).unwrap();
        let prompt: Vec<u32> = (0..30).map(|i| (i * 7 + 3) % 50).collect();
        t.forward(&prompt, 0, Logits::Last).unwrap();
        let mut row = vec![0f32; ck.config.vocab_size];
        let (mut logits, mut tokens) = (Vec::new(), Vec::new());
        let mut next = t.argmax(0).unwrap();
        for i in 0..steps {
            // positions 30..: the attention range crosses a 32-key chunk on the way
            t.forward(&[next], prompt.len() + i, Logits::Last).unwrap();
            t.read_logits(0, &mut row).unwrap();
            logits.push(row.clone());
            next = t.argmax(0).unwrap();
            tokens.push(next);
        }
        let stats = t.backend().graph_stats();
        (logits, tokens, stats)
    }

    #[test]
    fn replayed_decode_steps_equal_eager_launches_bit_for_bit() {
        let steps = 8;
        let (eager, eager_tokens, off) = decode_on_sim(false, steps);
        let (replayed, tokens, on) = decode_on_sim(true, steps);
        assert_eq!(off, GraphStats::default(), "graphs off: no graph work");
        // Step 1 allocates attention's split scratch (the prompt ran the prefill kernel): a
        // device operation among its launches, so it runs eagerly. Step 2 runs eagerly and is
        // remembered, step 3 repeats its launches and is captured, and every later step
        // replays that one graph although its position differs. A launch argument that changed
        // with the position (a position passed by value, a split count following the context)
        // would make each step's launches differ: more captures, fewer replays.
        assert_eq!(
            (on.eager_steps, on.captures, on.replays),
            (2, 1, steps as u64 - 3),
            "{on:?}"
        );
        assert!(on.replayed_launches > 0);
        assert_eq!(tokens, eager_tokens);
        for (i, (a, b)) in replayed.iter().zip(&eager).enumerate() {
            let same = a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
            assert!(
                same,
                "decode step {i}: replayed logits differ from eager ones"
            );
        }
    }

    #[test]
    fn fused_projections_match_separate_ones_on_cpu_and_interpreter() {
        // qwen2_bias: q/k/v biases are fused too; gemma3_mixed: GeGLU and sandwich norms.
        for fixture in ["qwen2_bias", "llama_gqa_untied", "gemma3_mixed"] {
            let (config, fused_w, apart_w) = fused_and_apart(fixture);
            let (f, cpu_fused) = run(&config, &fused_w, CpuBackend::new(1).unwrap());
            let (a, cpu_apart) = run(&config, &apart_w, CpuBackend::new(1).unwrap());
            assert!(f && !a, "{fixture}: the dtypes should decide the fusion");
            assert_close(&cpu_fused, &cpu_apart, &format!("{fixture} cpu"));
            let sim = || {
                CudaBackend::new(SimDriver::new())
                    .unwrap()
                    .with_f32_prefill(true)
            };
            let (_, sim_fused) = run(&config, &fused_w, sim());
            let (_, sim_apart) = run(&config, &apart_w, sim());
            assert_close(&sim_fused, &sim_apart, &format!("{fixture} sim"));
            assert_close(&sim_fused, &cpu_fused, &format!("{fixture} sim vs cpu"));
        }
    }
}
