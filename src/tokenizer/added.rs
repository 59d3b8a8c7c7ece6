//! Added tokens (special and user-defined) and how they are cut out of the input before the
//! model sees it: leftmost-longest matching, like the Aho-Corasick matcher of `tokenizers`,
//! with its `single_word`, `lstrip` and `rstrip` rules.

use super::unicode::is_space;

#[derive(Clone, Debug)]
pub struct AddedToken {
    pub id: u32,
    pub content: String,
    pub single_word: bool,
    pub lstrip: bool,
    pub rstrip: bool,
    pub normalized: bool,
    pub special: bool,
}

/// One set of patterns (the non-normalized tokens, or the normalized ones).
pub struct Matcher {
    /// Patterns grouped by first byte, longest first.
    by_first: Vec<Vec<(Box<[u8]>, usize)>>,
    first_bytes: [bool; 256],
}

/// A piece of the input: plain text to tokenize, or an added token (index into the list).
#[derive(Debug, PartialEq)]
pub enum Segment {
    Text(usize, usize),
    Token(usize, usize, usize),
}

fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

impl Matcher {
    /// `patterns`: (pattern text, index of the added token).
    pub fn new(patterns: impl IntoIterator<Item = (String, usize)>) -> Matcher {
        let mut by_first: Vec<Vec<(Box<[u8]>, usize)>> = (0..256).map(|_| Vec::new()).collect();
        let mut first_bytes = [false; 256];
        for (p, idx) in patterns {
            let Some(&b) = p.as_bytes().first() else {
                continue;
            };
            first_bytes[b as usize] = true;
            by_first[b as usize].push((p.into_bytes().into_boxed_slice(), idx));
        }
        // Longest first; among equal lengths the earlier-added token wins, as Aho-Corasick's
        // pattern order does.
        for v in &mut by_first {
            v.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.1.cmp(&b.1)));
        }
        Matcher {
            by_first,
            first_bytes,
        }
    }

    pub fn is_empty(&self) -> bool {
        !self.first_bytes.iter().any(|&b| b)
    }

    /// Splits `s[lo..hi]` into text and added-token segments (offsets into `s`).
    pub fn split(
        &self,
        s: &str,
        lo: usize,
        hi: usize,
        tokens: &[AddedToken],
        out: &mut Vec<Segment>,
    ) {
        let bytes = s.as_bytes();
        let text = &s[lo..hi];
        let mut start_offset = lo;
        let mut i = lo;
        while i < hi {
            if !self.first_bytes[bytes[i] as usize] {
                i += 1;
                continue;
            }
            let mut found = None;
            for (p, idx) in &self.by_first[bytes[i] as usize] {
                if bytes[i..hi].starts_with(p) {
                    found = Some((p.len(), *idx));
                    break;
                }
            }
            let Some((len, idx)) = found else {
                i += 1;
                continue;
            };
            let tok = &tokens[idx];
            let (mut start, mut stop) = (i, i + len);
            if tok.single_word {
                let before = text[..start - lo].chars().next_back();
                let after = text[stop - lo..].chars().next();
                if before.is_some_and(is_word_char) || after.is_some_and(is_word_char) {
                    // Not a whole word: tokenizers skips this match and resumes after it.
                    i = stop;
                    continue;
                }
            }
            if tok.lstrip {
                let prefix = &s[lo..start];
                let new_start = lo + prefix.trim_end_matches(is_space).len();
                start = new_start.max(start_offset);
            }
            if tok.rstrip {
                let rest = &s[stop..hi];
                stop += rest.len() - rest.trim_start_matches(is_space).len();
            }
            if start_offset < start {
                out.push(Segment::Text(start_offset, start));
            }
            out.push(Segment::Token(idx, start, stop));
            start_offset = stop;
            i = stop;
        }
        if start_offset < hi {
            out.push(Segment::Text(start_offset, hi));
        }
    }
}
