//! The paged KV cache's bookkeeping: which pool blocks are free, which sequences use which, and
//! the prefix cache that lets a new sequence reuse the blocks of a prompt prefix computed before.
//!
//! The pool holds `n` blocks of `block_size` positions. A running sequence owns a block table
//! (one block per `block_size` positions). Blocks are reference-counted by the sequences that
//! use them. A *full* block never changes again, so several sequences may read it at once; a
//! partly filled block belongs to one sequence, which appends to it.
//!
//! The prefix cache is a tree of blocks keyed by their tokens: a block's key is (its parent
//! block, the tokens it holds), so a path from the root spells a token prefix, and two prompts
//! that share a prefix share the path's blocks. Full blocks are entered as soon as they are
//! computed; when a sequence ends its last, partly filled block is entered too. A new prompt
//! walks the tree: full blocks that match are shared by reference; where the walk stops, the
//! child with the longest common prefix (a partial match) is *copied* into a fresh block of the
//! new sequence (copy-on-write), since that sequence will append to it. Blocks no sequence uses
//! stay cached until the pool runs short; then the least recently used leaves are evicted.

use std::collections::HashMap;

/// Where a new sequence's cached prefix comes from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PrefixMatch {
    /// Full blocks shared by reference, in table order.
    pub shared: Vec<u32>,
    /// A cached block whose first `len` positions continue the shared prefix: copied into the
    /// sequence's next block.
    pub partial: Option<(u32, usize)>,
}

impl PrefixMatch {
    /// Positions whose keys and values come from the cache.
    pub fn len(&self, block_size: usize) -> usize {
        self.shared.len() * block_size + self.partial.map_or(0, |(_, n)| n)
    }

    /// Keep only the first `t` positions (t <= len): whole blocks below t stay shared, and the
    /// block holding position t, if t is inside it, becomes the partial copy.
    pub fn truncate(&mut self, t: usize, block_size: usize) {
        if t >= self.len(block_size) {
            return;
        }
        let (full, rest) = (t / block_size, t % block_size);
        let cut = if full < self.shared.len() {
            Some(self.shared[full])
        } else {
            self.partial.map(|(b, _)| b)
        };
        self.shared.truncate(full);
        self.partial = match cut {
            Some(b) if rest > 0 => Some((b, rest)),
            _ => None,
        };
    }
}

/// A cached block: its parent in the tree (None: the first block of a prompt) and its tokens
/// (`block_size` of them for a full block, fewer for a partial one).
#[derive(Clone, Debug)]
struct Entry {
    parent: Option<u32>,
    tokens: Vec<u32>,
}

pub struct BlockManager {
    block_size: usize,
    /// Sequences using each block.
    refs: Vec<u32>,
    /// The prefix-cache entry of each block, if it is in the tree.
    entry: Vec<Option<Entry>>,
    /// Children of each tree node (`None`: the root).
    children: HashMap<Option<u32>, Vec<u32>>,
    /// Blocks neither used nor cached.
    free: Vec<u32>,
    /// Last use of each block, for LRU eviction.
    last_used: Vec<u64>,
    clock: u64,
}

impl BlockManager {
    pub fn new(blocks: usize, block_size: usize) -> BlockManager {
        BlockManager {
            block_size,
            refs: vec![0; blocks],
            entry: vec![None; blocks],
            children: HashMap::new(),
            free: (0..blocks as u32).rev().collect(),
            last_used: vec![0; blocks],
            clock: 0,
        }
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    pub fn total(&self) -> usize {
        self.refs.len()
    }

    /// Blocks used by at least one sequence.
    pub fn in_use(&self) -> usize {
        self.refs.iter().filter(|&&r| r > 0).count()
    }

    /// Blocks held only by the prefix cache.
    pub fn cached_only(&self) -> usize {
        (0..self.refs.len())
            .filter(|&b| self.refs[b] == 0 && self.entry[b].is_some())
            .count()
    }

    /// Whether no sequence uses block `b`.
    pub fn is_unused(&self, b: u32) -> bool {
        self.refs[b as usize] == 0
    }

    /// Blocks that an allocation could take: free ones and cached ones no sequence uses.
    pub fn available(&self) -> usize {
        self.free.len() + self.cached_only()
    }

    /// The longest cached prefix of `tokens`, at most `limit` positions long.
    pub fn lookup(&self, tokens: &[u32], limit: usize) -> PrefixMatch {
        let bs = self.block_size;
        let tokens = &tokens[..limit.min(tokens.len())];
        let mut m = PrefixMatch::default();
        let mut parent = None;
        let mut at = 0;
        loop {
            let rest = &tokens[at..];
            let Some(kids) = self.children.get(&parent) else {
                break;
            };
            let mut best: Option<(u32, usize)> = None;
            let mut full = None;
            for &b in kids {
                let e = self.entry[b as usize].as_ref().expect("child is cached");
                let common = e
                    .tokens
                    .iter()
                    .zip(rest)
                    .take_while(|(a, b)| a == b)
                    .count();
                if common == bs && e.tokens.len() == bs {
                    full = Some(b);
                    break;
                }
                if common > best.map_or(0, |(_, n)| n) {
                    best = Some((b, common));
                }
            }
            match full {
                Some(b) => {
                    m.shared.push(b);
                    parent = Some(b);
                    at += bs;
                }
                None => {
                    m.partial = best;
                    break;
                }
            }
        }
        m
    }

    /// Take references on a match's shared blocks (so they cannot be evicted) and touch them.
    pub fn retain(&mut self, blocks: &[u32]) {
        self.clock += 1;
        for &b in blocks {
            self.refs[b as usize] += 1;
            self.last_used[b as usize] = self.clock;
        }
    }

    /// `n` fresh blocks for one sequence (referenced once), evicting unused cached blocks,
    /// least recently used leaves first. None (and nothing taken) when the pool is short.
    pub fn allocate(&mut self, n: usize) -> Option<Vec<u32>> {
        if n > self.available() {
            return None;
        }
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let b = match self.free.pop() {
                Some(b) => b,
                None => self.evict_one()?,
            };
            self.refs[b as usize] = 1;
            out.push(b);
        }
        Some(out)
    }

    /// Uncache the least recently used cached leaf that no sequence uses; returns it (now free
    /// to take).
    fn evict_one(&mut self) -> Option<u32> {
        let victim = (0..self.refs.len())
            .filter(|&b| {
                self.refs[b] == 0
                    && self.entry[b].is_some()
                    && self
                        .children
                        .get(&Some(b as u32))
                        .is_none_or(|k| k.is_empty())
            })
            .min_by_key(|&b| self.last_used[b])?;
        self.uncache(victim as u32);
        Some(victim as u32)
    }

    /// Remove `b` from the tree (its parent's child list and its own entry).
    fn uncache(&mut self, b: u32) {
        if let Some(e) = self.entry[b as usize].take() {
            if let Some(kids) = self.children.get_mut(&e.parent) {
                kids.retain(|&k| k != b);
                if kids.is_empty() {
                    self.children.remove(&e.parent);
                }
            }
        }
    }

    /// Drop one sequence's reference on each of `blocks`. A block no one uses goes back to the
    /// free list unless the prefix cache holds it.
    pub fn release(&mut self, blocks: &[u32]) {
        for &b in blocks {
            let r = &mut self.refs[b as usize];
            debug_assert!(*r > 0, "release of a block nobody holds");
            *r = r.saturating_sub(1);
            if *r == 0 && self.entry[b as usize].is_none() {
                self.free.push(b);
            }
        }
    }

    /// Enter a sequence's computed blocks into the prefix cache: `table[i]` holds
    /// `tokens[i·bs..]` (the last one possibly partial). Blocks already in the tree are
    /// touched; a block whose content another cached block already has stays out (it is freed
    /// with its sequence).
    pub fn insert(&mut self, table: &[u32], tokens: &[u32]) {
        let bs = self.block_size;
        self.clock += 1;
        let mut parent = None;
        for (i, &b) in table.iter().enumerate() {
            let lo = i * bs;
            if lo >= tokens.len() {
                break;
            }
            let chunk = &tokens[lo..(lo + bs).min(tokens.len())];
            if let Some(e) = &self.entry[b as usize] {
                // Already cached (shared from the cache, or entered at the end of its prefill).
                if e.parent != parent || e.tokens != chunk {
                    // The sequence appended to it after it was cached as partial: uncache (only
                    // a block this sequence alone holds can have changed).
                    self.uncache(b);
                } else {
                    self.last_used[b as usize] = self.clock;
                    parent = Some(b);
                    continue;
                }
            }
            let dup = self.children.get(&parent).and_then(|kids| {
                kids.iter().copied().find(|&k| {
                    self.entry[k as usize]
                        .as_ref()
                        .is_some_and(|e| e.tokens == chunk)
                })
            });
            if let Some(d) = dup {
                self.last_used[d as usize] = self.clock;
                if chunk.len() < bs {
                    break;
                }
                // Continue the path through the cached twin; this block stays uncached.
                parent = Some(d);
                continue;
            }
            self.entry[b as usize] = Some(Entry {
                parent,
                tokens: chunk.to_vec(),
            });
            self.children.entry(parent).or_default().push(b);
            self.last_used[b as usize] = self.clock;
            if chunk.len() < bs {
                break;
            }
            parent = Some(b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(r: std::ops::Range<u32>) -> Vec<u32> {
        r.collect()
    }

    #[test]
    fn a_cached_prefix_is_shared_and_its_partial_block_is_offered_for_copy() {
        let mut m = BlockManager::new(8, 4);
        let a = m.allocate(3).unwrap();
        // sequence A computed 10 tokens: blocks 0,1 full, block 2 holds 2.
        m.insert(&a, &toks(0..10));
        m.release(&a);
        assert_eq!(m.in_use(), 0);
        assert_eq!(m.cached_only(), 3);
        // B shares 9 tokens: two full blocks by reference, 1 position copied from A's third.
        let mut b = toks(0..9);
        b.push(99);
        let hit = m.lookup(&b, b.len() - 1);
        assert_eq!(hit.shared, vec![a[0], a[1]]);
        assert_eq!(hit.partial, Some((a[2], 1)));
        assert_eq!(hit.len(4), 9);
        let mut cut = hit.clone();
        cut.truncate(6, 4);
        assert_eq!(cut.shared, vec![a[0]]);
        assert_eq!(cut.partial, Some((a[1], 2)));
        cut.truncate(4, 4);
        assert_eq!((cut.shared.len(), cut.partial), (1, None));
        // A different first token matches nothing.
        assert_eq!(m.lookup(&[7, 1, 2, 3, 4], 4), PrefixMatch::default());
        // The limit stops the walk (a prompt must leave one token to compute).
        let hit = m.lookup(&toks(0..8), 7);
        assert_eq!(hit.shared, vec![a[0]]);
        assert_eq!(hit.partial, Some((a[1], 3)));
    }

    #[test]
    fn eviction_takes_unused_leaves_least_recently_used_first_and_never_shared_blocks() {
        let mut m = BlockManager::new(4, 2);
        let a = m.allocate(2).unwrap();
        m.insert(&a, &toks(0..4));
        m.release(&a);
        let b = m.allocate(2).unwrap();
        m.insert(&b, &toks(10..14));
        m.release(&b);
        assert_eq!(m.available(), 4);
        // Hold A's path; allocating 2 must evict B's blocks (leaf first), not A's.
        let hit = m.lookup(&toks(0..5), 4);
        assert_eq!(hit.shared, a);
        m.retain(&hit.shared);
        let c = m.allocate(2).unwrap();
        let mut c_sorted = c.clone();
        c_sorted.sort();
        let mut b_sorted = b.clone();
        b_sorted.sort();
        assert_eq!(c_sorted, b_sorted);
        assert!(m.lookup(&toks(10..14), 4).shared.is_empty());
        // Nothing left to take while A's blocks are held.
        assert!(m.allocate(1).is_none());
        m.release(&hit.shared);
        assert_eq!(m.available(), 2);
    }

    #[test]
    fn duplicate_content_is_not_cached_twice_and_frees_with_its_sequence() {
        let mut m = BlockManager::new(6, 2);
        let a = m.allocate(2).unwrap();
        let b = m.allocate(2).unwrap();
        m.insert(&a, &toks(0..4));
        m.insert(&b, &toks(0..4)); // computed the same prefix concurrently
        m.release(&a);
        m.release(&b);
        assert_eq!(m.cached_only(), 2);
        assert_eq!(m.available(), 6);
        assert_eq!(m.in_use(), 0);
    }

    #[test]
    fn a_block_appended_to_after_caching_is_recached_with_its_new_content() {
        let mut m = BlockManager::new(4, 4);
        let a = m.allocate(2).unwrap();
        m.insert(&a, &toks(0..6)); // second block partial: [4, 5]
        m.insert(&a, &toks(0..8)); // then full: [4, 5, 6, 7]
        m.release(&a);
        let hit = m.lookup(&toks(0..9), 8);
        assert_eq!(hit.shared, a);
        assert_eq!(hit.partial, None);
    }
}
