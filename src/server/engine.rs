//! The [`Batcher`] as the scheduler's [`Engine`]: a thin mapping of ids and stats.

use super::scheduler::{Engine, KvUsage};
use crate::error::Result;
use crate::model::{Batcher, SeqId};

impl Engine for Batcher {
    fn max_seqs(&self) -> usize {
        Batcher::max_seqs(self)
    }
    fn prefill_chunk(&self) -> usize {
        self.model().engine.sizes().max_batch
    }
    fn can_admit(&self, prompt: &[u32], max_new: usize) -> bool {
        Batcher::can_admit(self, prompt, max_new)
    }
    fn add(&mut self, prompt: &[u32], max_new: usize) -> Result<u64> {
        Batcher::add(self, prompt, max_new).map(|id| id.0)
    }
    fn cached_tokens(&self, id: u64) -> usize {
        Batcher::cached_tokens(self, SeqId(id))
    }
    fn prefill(&mut self, id: u64, budget: usize) -> Result<bool> {
        Batcher::prefill(self, SeqId(id), budget)
    }
    fn decode(&mut self, batch: &[(u64, u32)]) -> Result<()> {
        let batch: Vec<(SeqId, u32)> = batch.iter().map(|&(id, t)| (SeqId(id), t)).collect();
        Batcher::decode(self, &batch)
    }
    fn logits(&self, id: u64) -> Option<&[f32]> {
        Batcher::logits(self, SeqId(id))
    }
    fn remove(&mut self, id: u64) {
        Batcher::remove(self, SeqId(id))
    }
    fn kv_usage(&self) -> KvUsage {
        let s = self.kv_stats();
        KvUsage {
            blocks_total: s.blocks_total,
            blocks_in_use: s.blocks_in_use,
            blocks_cached: s.blocks_cached,
        }
    }
}
