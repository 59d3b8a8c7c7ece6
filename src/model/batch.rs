//! [`Batcher`]: several sequences sharing one model and one paged KV pool, advanced together
//! (continuous batching, the engine under `minfer serve`).
//!
//! Each sequence owns a block table into the pool (see [`crate::backend::KvShape`]). Its prompt
//! is prefilled in chunks ([`Batcher::prefill`]); then each [`Batcher::decode`] call appends one
//! token to every listed sequence and runs them all as one forward step, so the weights are read
//! once for the whole batch. Sequences join and leave between steps. Prompts that begin like an
//! earlier one reuse its cached blocks (see `blocks.rs`).
//!
//! Batch invariance: a decode row's arithmetic does not depend on the other rows of its step
//! (the CPU matmul computes rows of a small batch exactly as it computes a single row, and each
//! row attends alone), so a sequence's greedy output is the same alone or beside others.

use std::collections::HashMap;

use super::blocks::BlockManager;
use super::Model;
use crate::backend::StepLayout;
use crate::error::{Error, Result};
use crate::transformer::Logits;

/// A sequence of a [`Batcher`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeqId(pub u64);

/// How the KV pool is used (for metrics and admission).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KvStats {
    /// Positions per block.
    pub block_size: usize,
    /// Blocks in the pool.
    pub blocks_total: usize,
    /// Blocks held by at least one sequence.
    pub blocks_in_use: usize,
    /// Blocks held only by the prefix cache (reusable, evicted under pressure).
    pub blocks_cached: usize,
}

struct Seq {
    /// Prompt and generated tokens; keys and values exist for the first `computed`.
    tokens: Vec<u32>,
    prompt_len: usize,
    computed: usize,
    /// Prompt positions that came from the prefix cache.
    cached: usize,
    /// The sequence's blocks, enough for prompt + max_new positions.
    table: Vec<u32>,
    /// The latest next-token logits (empty until the prompt is done).
    logits: Vec<f32>,
    /// Whether the full prompt blocks were entered into the prefix cache.
    registered: bool,
}

/// Several sequences over one [`Model`] loaded with `LoadOptions::max_seqs` > 0 (see the module
/// docs).
pub struct Batcher {
    model: Model,
    blocks: BlockManager,
    seqs: HashMap<SeqId, Seq>,
    next: u64,
    /// Entries per block table (a sequence of `context_len` positions).
    max_blocks: usize,
    prefix_cache: bool,
    /// Reuse cached prefixes only where the result is bit-identical (see `exact_resume_point`).
    exact: bool,
    layout: StepLayout,
}

/// Granule of exact prefix reuse: chunks of at least this many rows take the many-row paths
/// of matmul (more than the 16 rows of the batched matvec) and attention (8 or more rows).
const EXACT_GRANULE: usize = 32;

impl Batcher {
    /// Take `model` and serve up to its `max_seqs` sequences at once from its KV pool.
    pub fn new(mut model: Model) -> Result<Batcher> {
        model.reset();
        let kv = model.engine.kv_shape();
        let sizes = model.engine.sizes();
        Ok(Batcher {
            blocks: BlockManager::new(kv.blocks, kv.block_size),
            seqs: HashMap::new(),
            next: 0,
            max_blocks: sizes.ctx.div_ceil(kv.block_size),
            prefix_cache: true,
            exact: true,
            layout: StepLayout::default(),
            model,
        })
    }

    /// Turn prefix sharing on (the default) or off.
    pub fn set_prefix_cache(&mut self, on: bool) {
        self.prefix_cache = on;
    }

    /// Reuse cached prefixes only from positions where the continuation computes bit-identical
    /// values to a whole prefill (the default: outputs never depend on what was served before),
    /// or (false) from the end of the longest cached match (up to max_batch + 31 more tokens
    /// reused per prompt, with logits that can differ in the last bits).
    pub fn set_exact_prefix(&mut self, on: bool) {
        self.exact = on;
    }

    /// The model (config, tokenizer, EOS ids).
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// Give the model back (every sequence is dropped).
    pub fn into_model(mut self) -> Model {
        self.model.reset();
        self.model
    }

    /// Sequences that may run at once.
    pub fn max_seqs(&self) -> usize {
        self.model.engine.sizes().max_seqs
    }

    /// Sequences registered now.
    pub fn len(&self) -> usize {
        self.seqs.len()
    }

    /// Whether no sequence is registered.
    pub fn is_empty(&self) -> bool {
        self.seqs.is_empty()
    }

    /// How the KV pool is used.
    pub fn kv_stats(&self) -> KvStats {
        KvStats {
            block_size: self.blocks.block_size(),
            blocks_total: self.blocks.total(),
            blocks_in_use: self.blocks.in_use(),
            blocks_cached: self.blocks.cached_only(),
        }
    }

    fn check_new(&self, prompt: &[u32], max_new: usize) -> Result<()> {
        let ctx = self.model.context_len();
        if prompt.is_empty() {
            return Err(Error::option("prompt", "[]", "needs at least one token"));
        }
        let vocab = self.model.config().vocab_size;
        if let Some(&bad) = prompt.iter().find(|&&t| t as usize >= vocab) {
            return Err(Error::option(
                "prompt",
                bad,
                format!("token id out of range for a vocabulary of {vocab}"),
            ));
        }
        if prompt.len().saturating_add(max_new) > ctx {
            return Err(Error::option(
                "max_new",
                max_new,
                format!(
                    "a prompt of {} tokens plus {max_new} new ones exceeds the context of {ctx}",
                    prompt.len()
                ),
            ));
        }
        Ok(())
    }

    /// The latest position at or below `t` from which prefilling the rest of a prompt of `len`
    /// tokens computes every row exactly as prefilling it whole would: a chunk boundary of a
    /// whole prefill (a multiple of max_batch), or a multiple of [`EXACT_GRANULE`] whose first
    /// chunk still has at least `EXACT_GRANULE` rows (so its rows take the same many-row
    /// kernels as in the whole prefill, and attention's key tiles sit at the same places).
    fn exact_resume_point(&self, len: usize, t: usize) -> usize {
        let mb = self.model.engine.sizes().max_batch;
        let mut t = t / EXACT_GRANULE * EXACT_GRANULE;
        while t > 0 && !t.is_multiple_of(mb) && len.min((t / mb + 1) * mb) - t < EXACT_GRANULE {
            t -= EXACT_GRANULE;
        }
        t
    }

    /// Blocks a new sequence needs beyond what the cache provides, and the match.
    fn plan(&self, prompt: &[u32], max_new: usize) -> (usize, super::blocks::PrefixMatch) {
        let bs = self.blocks.block_size();
        let hit = if self.prefix_cache {
            // At least the last prompt token is computed, for its logits.
            let mut hit = self.blocks.lookup(prompt, prompt.len() - 1);
            if self.exact {
                let t = self.exact_resume_point(prompt.len(), hit.len(bs));
                hit.truncate(t, bs);
            }
            hit
        } else {
            Default::default()
        };
        let total = (prompt.len() + max_new).div_ceil(bs).max(1);
        (total - hit.shared.len(), hit)
    }

    /// Whether a sequence of `prompt` and up to `max_new` new tokens can start now: a free
    /// sequence slot and enough free or evictable blocks.
    pub fn can_admit(&self, prompt: &[u32], max_new: usize) -> bool {
        if self.seqs.len() >= self.max_seqs() || self.check_new(prompt, max_new).is_err() {
            return false;
        }
        let (need, hit) = self.plan(prompt, max_new);
        // Shared blocks that only the cache holds stop being available once retained.
        let retained = hit
            .shared
            .iter()
            .filter(|&&b| self.blocks.is_unused(b))
            .count();
        need + retained <= self.blocks.available()
    }

    /// Register a sequence: reserve blocks for `prompt` plus `max_new` tokens, reusing the
    /// cached blocks of its longest known prefix. Errors: an empty prompt, a token out of
    /// range, more than the context, no free slot or not enough blocks (see
    /// [`Batcher::can_admit`]).
    pub fn add(&mut self, prompt: &[u32], max_new: usize) -> Result<SeqId> {
        self.check_new(prompt, max_new)?;
        if self.seqs.len() >= self.max_seqs() {
            return Err(Error::option(
                "max_seqs",
                self.max_seqs(),
                "every sequence slot is taken",
            ));
        }
        let (need, hit) = self.plan(prompt, max_new);
        self.blocks.retain(&hit.shared);
        let Some(mut fresh) = self.blocks.allocate(need) else {
            self.blocks.release(&hit.shared);
            return Err(Error::option(
                "max_new",
                max_new,
                format!(
                    "the KV pool has {} free blocks, the sequence needs {need}",
                    self.blocks.available()
                ),
            ));
        };
        let bs = self.blocks.block_size();
        let mut cached = hit.shared.len() * bs;
        if let Some((src, n)) = hit.partial {
            // Copy-on-write: the cached block's first n positions continue the prefix; this
            // sequence appends to its own copy.
            if let Err(e) = self.model.engine.copy_kv_blocks(&[(src, fresh[0])]) {
                self.blocks.release(&hit.shared);
                self.blocks.release(&fresh);
                return Err(e);
            }
            cached += n;
        }
        let mut table = hit.shared;
        table.append(&mut fresh);
        let id = SeqId(self.next);
        self.next += 1;
        self.seqs.insert(
            id,
            Seq {
                tokens: prompt.to_vec(),
                prompt_len: prompt.len(),
                computed: cached,
                cached,
                table,
                logits: Vec::new(),
                registered: false,
            },
        );
        Ok(id)
    }

    fn seq(&self, id: SeqId) -> Result<&Seq> {
        self.seqs
            .get(&id)
            .ok_or_else(|| Error::arg(format!("no sequence {id:?}")))
    }

    /// Prompt tokens of `id` that came from the prefix cache.
    pub fn cached_tokens(&self, id: SeqId) -> usize {
        self.seqs.get(&id).map_or(0, |s| s.cached)
    }

    /// Prompt tokens of `id` still to prefill.
    pub fn pending_prompt(&self, id: SeqId) -> usize {
        self.seqs
            .get(&id)
            .map_or(0, |s| s.prompt_len.saturating_sub(s.computed))
    }

    /// Tokens (prompt and generated) of `id` so far.
    pub fn tokens(&self, id: SeqId) -> Option<&[u32]> {
        self.seqs.get(&id).map(|s| &s.tokens[..])
    }

    /// The latest next-token logits of `id` (after its prompt is done).
    pub fn logits(&self, id: SeqId) -> Option<&[f32]> {
        self.seqs
            .get(&id)
            .filter(|s| !s.logits.is_empty())
            .map(|s| &s.logits[..])
    }

    /// Prefill up to `budget` pending prompt tokens of `id`, one forward step of at most
    /// `max_batch` positions per chunk (chunks end at multiples of `max_batch`, as
    /// [`Model::generate`]'s do; with exact prefix reuse on, the default, a chunk is never cut
    /// short by the budget, so the budget is rounded up to whole chunks). Returns true once the whole prompt is in the cache and
    /// [`Batcher::logits`] holds the distribution of the first new token.
    pub fn prefill(&mut self, id: SeqId, budget: usize) -> Result<bool> {
        let max_batch = self.model.engine.sizes().max_batch;
        let mut left = budget.max(1);
        loop {
            let s = self.seq(id)?;
            if s.computed >= s.prompt_len {
                return Ok(true);
            }
            if left == 0 {
                return Ok(false);
            }
            let start = s.computed;
            let mut end = s.prompt_len.min((start / max_batch + 1) * max_batch);
            if !self.exact {
                // Exact mode runs whole chunks whatever the budget: a chunk cut short would
                // take the few-row kernels and change the prompt's values in the last bits.
                end = end.min(start + left);
            }
            let chunk = s.tokens[start..end].to_vec();
            let table: Vec<u32> = table_row(&s.table, self.max_blocks).collect();
            let mut layout = std::mem::take(&mut self.layout);
            layout.positions.clear();
            layout.positions.extend((start..end).map(|p| p as u32));
            layout.seq_of_row.clear();
            layout.seq_of_row.resize(end - start, 0);
            layout.tables.clear();
            layout.tables.extend(table);
            layout.max_blocks = self.max_blocks;
            let r = self
                .model
                .engine
                .forward_step(&chunk, &layout, Logits::Last);
            self.layout = layout;
            r?;
            left = left.saturating_sub(end - start);
            let vocab = self.model.config().vocab_size;
            let done = end == self.seq(id)?.prompt_len;
            let mut row = Vec::new();
            if done {
                row = vec![0.0; vocab];
                self.model.engine.read_logits(0, &mut row)?;
            }
            let s = self.seqs.get_mut(&id).expect("checked above");
            s.computed = end;
            if done {
                s.logits = row;
                if self.prefix_cache && !s.registered {
                    // The prompt's full blocks can serve other prompts from now on.
                    let bs = self.blocks.block_size();
                    let full = s.prompt_len / bs;
                    self.blocks.insert(&s.table[..full], &s.tokens[..full * bs]);
                    s.registered = true;
                }
            }
        }
    }

    /// One decode step: append token `t` to each listed sequence and run them all as one
    /// forward step. Afterwards [`Batcher::logits`] holds each one's next distribution. Each id
    /// at most once, every one past its prompt, with room for one more token.
    pub fn decode(&mut self, batch: &[(SeqId, u32)]) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let vocab = self.model.config().vocab_size;
        let bs = self.blocks.block_size();
        let mut layout = std::mem::take(&mut self.layout);
        layout.positions.clear();
        layout.seq_of_row.clear();
        layout.tables.clear();
        layout.max_blocks = self.max_blocks;
        let mut tokens = Vec::with_capacity(batch.len());
        let check = (|| {
            for (i, &(id, t)) in batch.iter().enumerate() {
                if batch[..i].iter().any(|&(other, _)| other == id) {
                    return Err(Error::arg(format!("{id:?} appears twice in one step")));
                }
                let s = self.seq(id)?;
                if s.computed < s.prompt_len {
                    return Err(Error::arg(format!("{id:?} has not finished its prompt")));
                }
                if s.computed >= s.table.len() * bs {
                    return Err(Error::arg(format!(
                        "{id:?} has used the {} positions it reserved",
                        s.table.len() * bs
                    )));
                }
                if t as usize >= vocab {
                    return Err(Error::arg(format!(
                        "token id {t} is out of range for a vocabulary of {vocab}"
                    )));
                }
                layout.positions.push(s.computed as u32);
                layout.seq_of_row.push(i as u32);
                layout.tables.extend(table_row(&s.table, self.max_blocks));
                tokens.push(t);
            }
            Ok(())
        })();
        let r = check.and_then(|()| {
            self.model
                .engine
                .forward_step(&tokens, &layout, Logits::All)
        });
        self.layout = layout;
        r?;
        for (i, &(id, t)) in batch.iter().enumerate() {
            let mut row = std::mem::take(&mut self.seqs.get_mut(&id).expect("checked").logits);
            row.resize(vocab, 0.0);
            let read = self.model.engine.read_logits(i, &mut row);
            let s = self.seqs.get_mut(&id).expect("checked");
            s.logits = row;
            s.tokens.push(t);
            s.computed += 1;
            read?;
        }
        Ok(())
    }

    /// Drop `id` and free its blocks at once; its computed blocks stay in the prefix cache
    /// until the pool needs them.
    pub fn remove(&mut self, id: SeqId) {
        let Some(s) = self.seqs.remove(&id) else {
            return;
        };
        if self.prefix_cache {
            self.blocks.insert(&s.table, &s.tokens[..s.computed]);
        }
        self.blocks.release(&s.table);
    }
}

/// A sequence's block table padded to `max_blocks` entries (entries past its reserved blocks
/// are never read: they repeat the first block).
fn table_row(table: &[u32], max_blocks: usize) -> impl Iterator<Item = u32> + '_ {
    let pad = table[0];
    table
        .iter()
        .copied()
        .chain(std::iter::repeat(pad))
        .take(max_blocks)
}
