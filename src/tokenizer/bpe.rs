//! The BPE model: a vocabulary, ranked merges, and the merge loop that turns one pre-tokenized
//! piece into ids, following the Hugging Face `tokenizers` BPE model exactly (unknown-character
//! handling, `byte_fallback`, `fuse_unk`, `ignore_merges`, merge-rank ties broken leftmost).
//!
//! The merge loop is a binary heap over a linked list of symbols, O(n log n) in the piece length,
//! so a 100 kB word or whitespace run costs milliseconds, not minutes. Results for short pieces
//! are cached. Not supported (rejected at load): `continuing_subword_prefix`,
//! `end_of_word_suffix`. `dropout` is ignored: inference wants the deterministic segmentation.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Mutex;

/// Pieces longer than this are not cached (they are rare and would bloat the cache).
const CACHE_MAX_PIECE: usize = 64;
/// The cache stops growing here, like the Hugging Face implementation's.
const CACHE_CAPACITY: usize = 20_000;

pub(crate) struct Bpe {
    pub vocab: HashMap<String, u32>,
    /// (left id, right id) -> (rank, merged id)
    merges: HashMap<(u32, u32), (u32, u32)>,
    unk_id: Option<u32>,
    fuse_unk: bool,
    byte_fallback: bool,
    ignore_merges: bool,
    /// `<0xNN>` ids, when byte_fallback is on and all 256 exist.
    byte_tokens: Option<Box<[u32; 256]>>,
    cache: Mutex<HashMap<Box<[u8]>, Box<[u32]>>>,
}

#[derive(Clone, Copy)]
struct Symbol {
    id: u32,
    prev: i32,
    next: i32,
    /// 0 once merged into its left neighbour.
    alive: bool,
}

pub(crate) struct BpeOptions {
    pub unk_id: Option<u32>,
    pub fuse_unk: bool,
    pub byte_fallback: bool,
    pub ignore_merges: bool,
}

impl Bpe {
    pub fn new(
        vocab: HashMap<String, u32>,
        merges: &[(String, String)],
        opts: BpeOptions,
    ) -> Result<Bpe, String> {
        let mut map = HashMap::with_capacity(merges.len());
        for (rank, (a, b)) in merges.iter().enumerate() {
            let id = |s: &str| {
                vocab.get(s).copied().ok_or_else(|| {
                    format!("merge {rank} ({a:?} {b:?}): {s:?} is not in the vocabulary")
                })
            };
            let (ia, ib) = (id(a)?, id(b)?);
            let merged = format!("{a}{b}");
            let im = id(&merged)?;
            // Like a HashMap collected from the list: a repeated pair keeps its last rank.
            map.insert((ia, ib), (rank as u32, im));
        }
        let byte_tokens = if opts.byte_fallback {
            let mut t = Box::new([0u32; 256]);
            let mut all = true;
            for b in 0..256usize {
                match vocab.get(&format!("<0x{b:02X}>")) {
                    Some(&id) => t[b] = id,
                    None => all = false,
                }
            }
            all.then_some(t)
        } else {
            None
        };
        Ok(Bpe {
            vocab,
            merges: map,
            unk_id: opts.unk_id,
            fuse_unk: opts.fuse_unk,
            byte_fallback: opts.byte_fallback,
            ignore_merges: opts.ignore_merges,
            byte_tokens,
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// Tokenizes one piece. `initial` yields the piece's characters as (vocab string, byte
    /// length) pairs: for byte-level models the byte-mapped characters, otherwise the text's.
    /// `whole` is the piece as the vocabulary spells it (for `ignore_merges`); `key` identifies
    /// the piece for the cache.
    pub fn tokenize_piece(&self, key: &[u8], whole: &str, out: &mut Vec<u32>) {
        if self.ignore_merges {
            if let Some(&id) = self.vocab.get(whole) {
                out.push(id);
                return;
            }
        }
        let cacheable = key.len() <= CACHE_MAX_PIECE;
        if cacheable {
            if let Ok(cache) = self.cache.lock() {
                if let Some(ids) = cache.get(key) {
                    out.extend_from_slice(ids);
                    return;
                }
            }
        }
        let start = out.len();
        let mut symbols = self.initial_symbols(whole);
        self.merge_all(&mut symbols);
        out.extend(symbols.iter().filter(|s| s.alive).map(|s| s.id));
        if cacheable {
            if let Ok(mut cache) = self.cache.lock() {
                if cache.len() < CACHE_CAPACITY {
                    cache.insert(key.into(), out[start..].into());
                }
            }
        }
    }

    fn initial_symbols(&self, word: &str) -> Vec<Symbol> {
        let mut ids: Vec<u32> = Vec::with_capacity(word.len());
        // Pending unknown run: (unk id). Mirrors tokenizers' handling, including that a pending
        // unk is only flushed by the next known character, not by byte-fallback tokens.
        let mut unk: Option<u32> = None;
        let mut buf = [0u8; 4];
        for c in word.chars() {
            let s: &str = c.encode_utf8(&mut buf);
            if let Some(&id) = self.vocab.get(s) {
                if let Some(u) = unk.take() {
                    ids.push(u);
                }
                ids.push(id);
                continue;
            }
            if self.byte_fallback {
                if let Some(bt) = &self.byte_tokens {
                    ids.extend(s.bytes().map(|b| bt[b as usize]));
                    continue;
                }
                // Some <0xNN> missing: tokenizers falls back only if every byte exists.
                if s.bytes()
                    .all(|b| self.vocab.contains_key(&format!("<0x{b:02X}>")))
                {
                    ids.extend(
                        s.bytes()
                            .filter_map(|b| self.vocab.get(&format!("<0x{b:02X}>")).copied()),
                    );
                    continue;
                }
            }
            if let Some(u) = self.unk_id {
                match unk {
                    Some(_) if self.fuse_unk => {}
                    Some(prev) => {
                        ids.push(prev);
                        unk = Some(u);
                    }
                    None => unk = Some(u),
                }
            }
            // No unk token: tokenizers silently drops the character.
        }
        if let Some(u) = unk {
            ids.push(u);
        }
        let n = ids.len() as i32;
        ids.into_iter()
            .enumerate()
            .map(|(i, id)| Symbol {
                id,
                prev: i as i32 - 1,
                next: if i as i32 + 1 < n { i as i32 + 1 } else { -1 },
                alive: true,
            })
            .collect()
    }

    fn merge_all(&self, sym: &mut [Symbol]) {
        if sym.len() < 2 {
            return;
        }
        // Min-heap on (rank, position): lowest rank first, leftmost on ties.
        let mut heap: BinaryHeap<Reverse<(u32, u32, u32)>> = BinaryHeap::with_capacity(sym.len());
        for i in 0..sym.len() - 1 {
            if let Some(&(rank, new_id)) = self.merges.get(&(sym[i].id, sym[i + 1].id)) {
                heap.push(Reverse((rank, i as u32, new_id)));
            }
        }
        while let Some(Reverse((_, pos, new_id))) = heap.pop() {
            let pos = pos as usize;
            if !sym[pos].alive || sym[pos].next < 0 {
                continue;
            }
            let next = sym[pos].next as usize;
            // A stale entry: the pair at pos changed since it was queued.
            match self.merges.get(&(sym[pos].id, sym[next].id)) {
                Some(&(_, id)) if id == new_id => {}
                _ => continue,
            }
            sym[pos].id = new_id;
            sym[next].alive = false;
            let after = sym[next].next;
            sym[pos].next = after;
            if after >= 0 {
                sym[after as usize].prev = pos as i32;
            }
            let prev = sym[pos].prev;
            if prev >= 0 {
                if let Some(&(rank, id)) = self.merges.get(&(sym[prev as usize].id, new_id)) {
                    heap.push(Reverse((rank, prev as u32, id)));
                }
            }
            if after >= 0 {
                if let Some(&(rank, id)) = self.merges.get(&(new_id, sym[after as usize].id)) {
                    heap.push(Reverse((rank, pos as u32, id)));
                }
            }
        }
    }
}
