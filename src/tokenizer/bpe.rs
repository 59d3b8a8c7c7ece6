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
use std::hash::Hasher;
use std::sync::Mutex;

/// A fast keyed hash for the maps built from a tokenizer file (vocabulary, merges) and the
/// piece cache: one 64x64->128-bit multiply per 8 bytes, folded (as in aHash's fallback and
/// foldhash), with two keys drawn once per process from the standard library's random source.
/// Unkeyed FxHash let a hostile tokenizer.json choose merge pairs (or token strings) whose hashes
/// agree in their low bits, every entry in one bucket: a quadratic load (tests/fuzz/bounds.rs
/// `huge_and_colliding_merge_tables_are_bounded`). The keys hide the bucket of any id or string.
#[derive(Clone, Copy)]
pub(crate) struct KeyedHasher {
    h: u64,
    k: u64,
}

#[inline]
fn folded_multiply(a: u64, b: u64) -> u64 {
    let p = (a as u128).wrapping_mul(b as u128);
    (p as u64) ^ ((p >> 64) as u64)
}

const MUL: u64 = 0x5851_f42d_4c95_7f2d;

impl KeyedHasher {
    #[inline]
    fn add(&mut self, x: u64) {
        self.h = folded_multiply(self.h ^ x, MUL ^ self.k);
    }
}

impl Hasher for KeyedHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut b = [0u8; 8];
            b.copy_from_slice(c);
            self.add(u64::from_le_bytes(b));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut b = [0u8; 8];
            b[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(b) ^ ((rest.len() as u64) << 59));
        }
    }
    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(i as u64)
    }
    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.add(i as u64)
    }
    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.add(i)
    }
    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64)
    }
    #[inline]
    fn finish(&self) -> u64 {
        folded_multiply(self.h, self.k.rotate_left(32) | 1)
    }
}

/// Builds [`KeyedHasher`]s with this process's keys.
#[derive(Clone, Copy)]
pub(crate) struct KeyedState {
    k0: u64,
    k1: u64,
}

impl Default for KeyedState {
    fn default() -> Self {
        static KEYS: std::sync::OnceLock<(u64, u64)> = std::sync::OnceLock::new();
        let &(k0, k1) = KEYS.get_or_init(|| {
            use std::hash::BuildHasher;
            let s = std::collections::hash_map::RandomState::new();
            (s.hash_one(0x6b65_7930u64), s.hash_one(0x6b65_7931u64))
        });
        KeyedState { k0, k1 }
    }
}

impl std::hash::BuildHasher for KeyedState {
    type Hasher = KeyedHasher;
    #[inline]
    fn build_hasher(&self) -> KeyedHasher {
        KeyedHasher {
            h: self.k0,
            k: self.k1,
        }
    }
}

pub(crate) type FastMap<K, V> = HashMap<K, V, KeyedState>;

/// Piece text -> its ids.
type PieceCache = FastMap<Box<[u8]>, Box<[u32]>>;

/// Pieces longer than this are not cached (they are rare and would bloat the cache).
const CACHE_MAX_PIECE: usize = 64;
/// The cache stops growing here, like the Hugging Face implementation's.
const CACHE_CAPACITY: usize = 20_000;

pub(crate) struct Bpe {
    pub vocab: FastMap<String, u32>,
    /// (left id, right id) -> (rank, merged id)
    merges: FastMap<(u32, u32), (u32, u32)>,
    /// Byte-level models: the id of each byte's mapped character, when all 256 exist.
    byte_level_ids: Option<Box<[u32; 256]>>,
    unk_id: Option<u32>,
    fuse_unk: bool,
    byte_fallback: bool,
    ignore_merges: bool,
    /// `<0xNN>` ids, when byte_fallback is on and all 256 exist.
    byte_tokens: Option<Box<[u32; 256]>>,
    cache: Mutex<PieceCache>,
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
        vocab: FastMap<String, u32>,
        merges: &[(String, String)],
        opts: BpeOptions,
        byte_chars: Option<&[char; 256]>,
    ) -> Result<Bpe, String> {
        let mut map = FastMap::default();
        map.reserve(merges.len());
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
        let byte_level_ids = byte_chars.and_then(|chars| {
            let mut t = Box::new([0u32; 256]);
            for (b, c) in chars.iter().enumerate() {
                t[b] = *vocab.get(c.to_string().as_str())?;
            }
            Some(t)
        });
        Ok(Bpe {
            vocab,
            merges: map,
            byte_level_ids,
            unk_id: opts.unk_id,
            fuse_unk: opts.fuse_unk,
            byte_fallback: opts.byte_fallback,
            ignore_merges: opts.ignore_merges,
            byte_tokens,
            cache: Mutex::new(FastMap::default()),
        })
    }

    pub fn ignore_merges(&self) -> bool {
        self.ignore_merges
    }

    pub fn has_byte_level_ids(&self) -> bool {
        self.byte_level_ids.is_some()
    }

    /// Tokenizes one piece. `key` is the piece's text (for the cache, and for byte-level
    /// models the bytes whose mapped characters are the initial symbols); `whole` is the piece
    /// as the vocabulary spells it: the text itself, or for byte-level models its mapped form
    /// (needed only for `ignore_merges` or when some byte has no token).
    pub fn tokenize_piece(&self, key: &[u8], whole: &str, byte_level: bool, out: &mut Vec<u32>) {
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
        let mut symbols = match (&self.byte_level_ids, byte_level) {
            (Some(t), true) => symbols_from(key.iter().map(|&b| t[b as usize]).collect()),
            _ => self.initial_symbols(whole),
        };
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
        symbols_from(ids)
    }
}

/// Links ids into the doubly-linked symbol list the merge loop works on.
fn symbols_from(ids: Vec<u32>) -> Vec<Symbol> {
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

impl Bpe {
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
