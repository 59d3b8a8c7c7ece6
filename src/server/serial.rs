//! TEMPORARY: one sequence at a time on a plain `Model`, until the Batcher lands.

use super::scheduler::{Engine, KvUsage};
use crate::error::{Error, Result};
use crate::model::Model;
use crate::transformer::Logits;

pub struct Serial {
    pub model: Model,
    id: u64,
    tokens: Vec<u32>,
    done: usize,
    logits: Vec<f32>,
    live: bool,
}

impl Serial {
    pub fn new(model: Model) -> Serial {
        let v = model.config().vocab_size;
        Serial {
            model,
            id: 0,
            tokens: Vec::new(),
            done: 0,
            logits: vec![0.0; v],
            live: false,
        }
    }
}

impl Engine for Serial {
    fn max_seqs(&self) -> usize {
        1
    }
    fn prefill_chunk(&self) -> usize {
        self.model.engine.max_batch()
    }
    fn can_admit(&self, p: &[u32], n: usize) -> bool {
        !self.live && p.len() + n <= self.model.context_len()
    }
    fn add(&mut self, prompt: &[u32], _max_new: usize) -> Result<u64> {
        if self.live {
            return Err(Error::arg("busy"));
        }
        self.live = true;
        self.id += 1;
        self.tokens = prompt.to_vec();
        self.done = 0;
        Ok(self.id)
    }
    fn cached_tokens(&self, _id: u64) -> usize {
        0
    }
    fn prefill(&mut self, _id: u64, budget: usize) -> Result<bool> {
        let end = (self.done + budget).min(self.tokens.len());
        self.model
            .engine
            .forward(&self.tokens[self.done..end], self.done, Logits::Last)?;
        self.done = end;
        if end == self.tokens.len() {
            self.model.engine.read_logits(0, &mut self.logits)?;
            return Ok(true);
        }
        Ok(false)
    }
    fn decode(&mut self, batch: &[(u64, u32)]) -> Result<()> {
        for &(_, t) in batch {
            self.model.engine.forward(&[t], self.tokens.len(), Logits::Last)?;
            self.tokens.push(t);
            self.model.engine.read_logits(0, &mut self.logits)?;
        }
        Ok(())
    }
    fn logits(&self, _id: u64) -> Option<&[f32]> {
        Some(&self.logits)
    }
    fn remove(&mut self, _id: u64) {
        self.live = false;
    }
    fn kv_usage(&self) -> KvUsage {
        KvUsage::default()
    }
}
