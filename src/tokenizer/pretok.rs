//! Pre-tokenization: splitting normalized text into the pieces BPE runs on.
//!
//! The Split regexes of real tokenizers (GPT-2, Llama 3, Qwen2, Qwen3.5, Tekken, GPT-4o, and
//! the chains of partial patterns of DeepSeek LLM/Coder, Falcon and Gemma 4) are implemented as
//! hand-written matchers with the exact leftmost-first alternation and backtracking semantics
//! of the regex, instead of a regex engine. A Split with any other pattern is rejected at load,
//! naming the pattern. Also here: ByteLevel (add_prefix_space, use_regex), Digits, Punctuation,
//! Metaspace, Sequence. Not supported: Whitespace, WhitespaceSplit, BertPreTokenizer,
//! CharDelimiterSplit, UnicodeScripts, and Split behaviours other than Isolated.

use super::unicode::{is_letter, is_lowerish, is_mark, is_number, is_punct, is_space, is_upperish};

pub const GPT2_PATTERN: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
pub const LLAMA3_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
pub const QWEN2_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen3.5: like Qwen2, with combining marks counted as letters.
pub const QWEN35_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Mistral Nemo's Tekken: case-aware words (an uppercase run may only start a word).
pub const TEKKEN_PATTERN: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// GPT-4o (o200k; Llama 4): Tekken's words with contractions attached, digits in threes.
pub const GPT4O_PATTERN: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// A regex pattern we implement by hand.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum SplitPattern {
    Gpt2,
    /// Llama 3 (`\p{N}{1,3}`) and Qwen2 (`\p{N}`): max digits per piece; Qwen3.5 also
    /// counts `\p{M}` as letters.
    Llama3 {
        max_digits: usize,
        marks: bool,
    },
    /// Tekken (`\p{N}`, no contractions) and GPT-4o (`\p{N}{1,3}`, contraction suffixes).
    CaseAware {
        max_digits: usize,
        contractions: bool,
    },
}

impl SplitPattern {
    pub fn recognise(pattern: &str) -> Option<SplitPattern> {
        match pattern {
            GPT2_PATTERN => Some(SplitPattern::Gpt2),
            LLAMA3_PATTERN => Some(SplitPattern::Llama3 {
                max_digits: 3,
                marks: false,
            }),
            QWEN2_PATTERN => Some(SplitPattern::Llama3 {
                max_digits: 1,
                marks: false,
            }),
            QWEN35_PATTERN => Some(SplitPattern::Llama3 {
                max_digits: 1,
                marks: true,
            }),
            TEKKEN_PATTERN => Some(SplitPattern::CaseAware {
                max_digits: 1,
                contractions: false,
            }),
            GPT4O_PATTERN => Some(SplitPattern::CaseAware {
                max_digits: 3,
                contractions: true,
            }),
            _ => None,
        }
    }

    /// End (exclusive) of the match starting at `i`, which is always non-empty: every pattern
    /// here matches any character, so matches tile the text.
    fn match_at(self, s: &str, i: usize) -> usize {
        match self {
            SplitPattern::Gpt2 => gpt2_match(s, i),
            SplitPattern::Llama3 {
                max_digits,
                marks: false,
            } => llama3_match(s, i, max_digits, is_letter),
            SplitPattern::Llama3 {
                max_digits,
                marks: true,
            } => llama3_match(s, i, max_digits, |c| is_letter(c) || is_mark(c)),
            SplitPattern::CaseAware {
                max_digits,
                contractions,
            } => case_aware_match(s, i, max_digits, contractions),
        }
    }

    pub fn split(self, s: &str, base: usize, out: &mut Vec<(usize, usize)>) {
        let mut i = 0;
        while i < s.len() {
            let e = self.match_at(s, i);
            debug_assert!(e > i);
            out.push((base + i, base + e));
            i = e;
        }
    }
}

#[inline]
fn char_at(s: &str, i: usize) -> Option<char> {
    s.get(i..).and_then(|t| t.chars().next())
}

#[inline]
fn is_other(c: char) -> bool {
    !is_space(c) && !is_letter(c) && !is_number(c)
}

/// End of the run of characters satisfying `f` starting at `i`.
#[inline]
fn run_end(s: &str, i: usize, f: impl Fn(char) -> bool) -> usize {
    let mut j = i;
    for c in s[i..].chars() {
        if !f(c) {
            break;
        }
        j += c.len_utf8();
    }
    j
}

/// `'s|'t|'re|'ve|'m|'ll|'d`, optionally ASCII-case-insensitive. Returns the match end.
fn contraction(s: &str, i: usize, ci: bool) -> Option<usize> {
    let rest = s.as_bytes().get(i + 1..)?;
    let lower = |k: usize| {
        rest.get(k)
            .map(|b| if ci { b.to_ascii_lowercase() } else { *b })
    };
    match lower(0)? {
        b's' | b't' | b'm' | b'd' => Some(i + 2),
        b'r' | b'v' if lower(1) == Some(b'e') => Some(i + 3),
        b'l' if lower(1) == Some(b'l') => Some(i + 3),
        _ => None,
    }
}

/// `\s+(?!\S)|\s+` at a whitespace character: the run, less its last character when a
/// non-space follows and the run has more than one character.
fn whitespace_tail(s: &str, i: usize) -> usize {
    let end = run_end(s, i, is_space);
    if end == s.len() {
        return end;
    }
    let last = s[i..end].chars().next_back().map_or(0, |c| c.len_utf8());
    if end - last > i {
        end - last
    } else {
        end
    }
}

fn gpt2_match(s: &str, i: usize) -> usize {
    let Some(c0) = char_at(s, i) else {
        return s.len();
    };
    if c0 == '\'' {
        if let Some(e) = contraction(s, i, false) {
            return e;
        }
    }
    // ` ?X+` for X in letters, numbers, other: the optional space binds to what follows.
    let (c, j) = if c0 == ' ' {
        match char_at(s, i + 1) {
            Some(c1) if !is_space(c1) => (c1, i + 1),
            _ => (c0, i),
        }
    } else {
        (c0, i)
    };
    if is_letter(c) {
        return run_end(s, j, is_letter);
    }
    if is_number(c) {
        return run_end(s, j, is_number);
    }
    if !is_space(c) {
        return run_end(s, j, is_other);
    }
    whitespace_tail(s, i)
}

/// The Llama 3 family of patterns; `is_letter` is the letter class (`\p{L}`, or `[\p{L}\p{M}]`
/// for Qwen3.5, where "other" excludes marks too).
#[inline]
fn llama3_match(
    s: &str,
    i: usize,
    max_digits: usize,
    is_letter: impl Fn(char) -> bool + Copy,
) -> usize {
    let is_other = |c: char| !is_space(c) && !is_letter(c) && !is_number(c);
    let Some(c0) = char_at(s, i) else {
        return s.len();
    };
    if c0 == '\'' {
        if let Some(e) = contraction(s, i, true) {
            return e;
        }
    }
    // [^\r\n\p{L}\p{N}]?\p{L}+
    if is_letter(c0) {
        return run_end(s, i, is_letter);
    }
    let n0 = c0.len_utf8();
    if c0 != '\r' && c0 != '\n' && !is_number(c0) {
        if let Some(c1) = char_at(s, i + n0) {
            if is_letter(c1) {
                return run_end(s, i + n0, is_letter);
            }
        }
    }
    // \p{N}{1,max}
    if is_number(c0) {
        let mut j = i;
        for c in s[i..].chars().take(max_digits) {
            if !is_number(c) {
                break;
            }
            j += c.len_utf8();
        }
        return j;
    }
    //  ?[^\s\p{L}\p{N}]+[\r\n]*
    let start = if is_other(c0) {
        Some(i)
    } else if c0 == ' ' && char_at(s, i + 1).is_some_and(is_other) {
        Some(i + 1)
    } else {
        None
    };
    if let Some(j) = start {
        let e = run_end(s, j, is_other);
        return run_end(s, e, |c| c == '\r' || c == '\n');
    }
    // c0 is whitespace. \s*[\r\n]+ : up to the last line break of the run.
    let end = run_end(s, i, is_space);
    if let Some(k) = s[i..end].rfind(['\r', '\n']) {
        return i + k + 1;
    }
    whitespace_tail(s, i)
}

/// `U*L+` at `j` (U = upper-ish, L = lower-ish, overlapping in Lm, Lo, M), with the regex's
/// backtracking: the longest U run, then L+; failing that, U* gives back characters until one
/// of them can serve as L+.
fn upper_star_lower_plus(s: &str, j: usize) -> Option<usize> {
    let u = run_end(s, j, is_upperish);
    if char_at(s, u).is_some_and(is_lowerish) {
        return Some(run_end(s, u, is_lowerish));
    }
    // The character after the U run is not L, so L+ ends right after the last U that is also L.
    s[j..u]
        .char_indices()
        .rev()
        .find(|&(_, c)| is_lowerish(c))
        .map(|(k, c)| j + k + c.len_utf8())
}

/// `U+L*` at `j`.
fn upper_plus_lower_star(s: &str, j: usize) -> Option<usize> {
    let u = run_end(s, j, is_upperish);
    (u > j).then(|| run_end(s, u, is_lowerish))
}

/// Tekken / GPT-4o: `P?U*L+C?|P?U+L*C?|\p{N}{1,max}| ?O+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+`
/// with P = `[^\r\n\p{L}\p{N}]`, C the optional case-insensitive contraction (GPT-4o only)
/// and O = `[^\s\p{L}\p{N}]`.
fn case_aware_match(s: &str, i: usize, max_digits: usize, contractions: bool) -> usize {
    let Some(c0) = char_at(s, i) else {
        return s.len();
    };
    let n0 = c0.len_utf8();
    let p0 = c0 != '\r' && c0 != '\n' && !is_letter(c0) && !is_number(c0);
    let suffix = |e: usize| {
        if contractions && s[e..].starts_with('\'') {
            contraction(s, e, true).unwrap_or(e)
        } else {
            e
        }
    };
    for word in [upper_star_lower_plus, upper_plus_lower_star] {
        if p0 {
            if let Some(e) = word(s, i + n0) {
                return suffix(e);
            }
        }
        if let Some(e) = word(s, i) {
            return suffix(e);
        }
    }
    if is_number(c0) {
        let mut j = i;
        for c in s[i..].chars().take(max_digits) {
            if !is_number(c) {
                break;
            }
            j += c.len_utf8();
        }
        return j;
    }
    let start = if is_other(c0) {
        Some(i)
    } else if c0 == ' ' && char_at(s, i + 1).is_some_and(is_other) {
        Some(i + 1)
    } else {
        None
    };
    if let Some(j) = start {
        let e = run_end(s, j, is_other);
        return run_end(s, e, |c| c == '\r' || c == '\n' || c == '/');
    }
    let end = run_end(s, i, is_space);
    if let Some(k) = s[i..end].rfind(['\r', '\n']) {
        return i + k + 1;
    }
    whitespace_tail(s, i)
}

// ---- Split patterns that match only part of the text -----------------------------------------
//
// DeepSeek's and Falcon's tokenizer.json chain several Split pre-tokenizers, each isolating the
// matches of a pattern that does not match everywhere: the matches and the text between them
// become pieces. Each pattern below is found leftmost-first, as Oniguruma scans.

pub const LINE_BREAK_PATTERN: &str = r"[\r\n]";
/// DeepSeek LLM: a word of cased letters (the ranges of `DEEPSEEK_LETTERS`).
pub const DEEPSEEK_LETTERS_PATTERN: &str = "\\s?[A-Za-z\u{b5}\u{c0}-\u{d6}\u{d8}-\u{f6}\u{f8}-\u{1ba}\u{1bc}-\u{1bf}\u{1c4}-\u{293}\u{295}-\u{2af}\u{370}-\u{373}\u{376}\u{377}\u{37b}-\u{37d}\u{37f}\u{386}\u{388}-\u{38a}\u{38c}\u{38e}-\u{3a1}\u{3a3}-\u{3f5}\u{3f7}-\u{481}\u{48a}-\u{52f}\u{531}-\u{556}\u{10a0}-\u{10c5}\u{13a0}-\u{13f5}\u{13f8}-\u{13fd}\u{1c90}-\u{1cba}\u{1cbd}-\u{1cbf}\u{1d00}-\u{1d2b}\u{1d6b}-\u{1d77}\u{1d79}-\u{1d9a}\u{1e00}-\u{1f15}\u{1f18}-\u{1f1d}\u{1f20}-\u{1f45}\u{1f48}-\u{1f4d}\u{1f50}-\u{1f57}\u{1f59}\u{1f5b}\u{1f5d}\u{1f5f}-\u{1f7d}\u{1f80}-\u{1fb4}\u{1fb6}-\u{1fbc}\u{1fbe}\u{1fc2}-\u{1fc4}\u{1fc6}-\u{1fcc}\u{1fd0}-\u{1fd3}\u{1fd6}-\u{1fdb}\u{1fe0}-\u{1fec}\u{1ff2}-\u{1ff4}\u{1ff6}-\u{1ffc}\u{2102}\u{2107}\u{210a}-\u{2113}\u{2115}\u{2119}-\u{211d}\u{2124}\u{2126}\u{2128}\u{212a}-\u{212d}\u{212f}-\u{2134}\u{2139}\u{213c}-\u{213f}\u{2145}-\u{2149}\u{214e}\u{2183}\u{2184}\u{2c00}-\u{2c7b}\u{2c7e}-\u{2ce4}\u{2ceb}-\u{2cee}\u{2cf2}\u{2cf3}\u{a640}-\u{a66d}\u{a680}-\u{a69b}\u{a722}-\u{a76f}\u{a771}-\u{a787}\u{a78b}-\u{a78e}\u{ab70}-\u{abbf}\u{fb00}-\u{fb06}\u{fb13}-\u{fb17}\u{ff21}-\u{ff3a}\u{ff41}-\u{ff5a}\u{10400}-\u{1044f}\u{104b0}-\u{104d3}\u{104d8}-\u{104fb}\u{10c80}-\u{10cb2}\u{10cc0}-\u{10cf2}\u{118a0}-\u{118df}\u{1e900}-\u{1e943}]+";
/// DeepSeek LLM: ASCII and full-width punctuation, curly quotes, CJK space and stops.
pub const DEEPSEEK_PUNCT_PATTERN: &str =
    "\\s?[!-/:-~\u{ff01}-\u{ff0f}\u{ff1a}-\u{ff5e}\u{2018}-\u{201f}\u{3000}-\u{3002}]+";
pub const TRAILING_SPACE_PATTERN: &str = r"\s+$";
/// DeepSeek: CJK ideographs, then U+0800..U+4E00 (Samaritan to CJK Ext. A), then Hangul.
pub const DEEPSEEK_CJK_PATTERN: &str = "[\u{4e00}-\u{9fa5}\u{0800}-\u{4e00}\u{ac00}-\u{d7ff}]+";
pub const SPACE_LETTERS_PATTERN: &str = r"\s?\p{L}+";
pub const SPACE_PUNCT_PATTERN: &str = r"\s?\p{P}+";
pub const THREE_DIGITS_PATTERN: &str = "[0-9][0-9][0-9]";
/// Gemma 4 (as llama.cpp splits it): runs of line feeds, and the stretches between them.
pub const LINE_RUNS_PATTERN: &str = "[^\n]+|[\n]+";

/// The character ranges of `DEEPSEEK_LETTERS_PATTERN` (a subset of the cased letters).
static DEEPSEEK_LETTERS: [(u32, u32); 84] = [
    (0x41, 0x5A),
    (0x61, 0x7A),
    (0xB5, 0xB5),
    (0xC0, 0xD6),
    (0xD8, 0xF6),
    (0xF8, 0x1BA),
    (0x1BC, 0x1BF),
    (0x1C4, 0x293),
    (0x295, 0x2AF),
    (0x370, 0x373),
    (0x376, 0x377),
    (0x37B, 0x37D),
    (0x37F, 0x37F),
    (0x386, 0x386),
    (0x388, 0x38A),
    (0x38C, 0x38C),
    (0x38E, 0x3A1),
    (0x3A3, 0x3F5),
    (0x3F7, 0x481),
    (0x48A, 0x52F),
    (0x531, 0x556),
    (0x10A0, 0x10C5),
    (0x13A0, 0x13F5),
    (0x13F8, 0x13FD),
    (0x1C90, 0x1CBA),
    (0x1CBD, 0x1CBF),
    (0x1D00, 0x1D2B),
    (0x1D6B, 0x1D77),
    (0x1D79, 0x1D9A),
    (0x1E00, 0x1F15),
    (0x1F18, 0x1F1D),
    (0x1F20, 0x1F45),
    (0x1F48, 0x1F4D),
    (0x1F50, 0x1F57),
    (0x1F59, 0x1F59),
    (0x1F5B, 0x1F5B),
    (0x1F5D, 0x1F5D),
    (0x1F5F, 0x1F7D),
    (0x1F80, 0x1FB4),
    (0x1FB6, 0x1FBC),
    (0x1FBE, 0x1FBE),
    (0x1FC2, 0x1FC4),
    (0x1FC6, 0x1FCC),
    (0x1FD0, 0x1FD3),
    (0x1FD6, 0x1FDB),
    (0x1FE0, 0x1FEC),
    (0x1FF2, 0x1FF4),
    (0x1FF6, 0x1FFC),
    (0x2102, 0x2102),
    (0x2107, 0x2107),
    (0x210A, 0x2113),
    (0x2115, 0x2115),
    (0x2119, 0x211D),
    (0x2124, 0x2124),
    (0x2126, 0x2126),
    (0x2128, 0x2128),
    (0x212A, 0x212D),
    (0x212F, 0x2134),
    (0x2139, 0x2139),
    (0x213C, 0x213F),
    (0x2145, 0x2149),
    (0x214E, 0x214E),
    (0x2183, 0x2184),
    (0x2C00, 0x2C7B),
    (0x2C7E, 0x2CE4),
    (0x2CEB, 0x2CEE),
    (0x2CF2, 0x2CF3),
    (0xA640, 0xA66D),
    (0xA680, 0xA69B),
    (0xA722, 0xA76F),
    (0xA771, 0xA787),
    (0xA78B, 0xA78E),
    (0xAB70, 0xABBF),
    (0xFB00, 0xFB06),
    (0xFB13, 0xFB17),
    (0xFF21, 0xFF3A),
    (0xFF41, 0xFF5A),
    (0x10400, 0x1044F),
    (0x104B0, 0x104D3),
    (0x104D8, 0x104FB),
    (0x10C80, 0x10CB2),
    (0x10CC0, 0x10CF2),
    (0x118A0, 0x118DF),
    (0x1E900, 0x1E943),
];

fn is_deepseek_letter(c: char) -> bool {
    if c.is_ascii() {
        return c.is_ascii_alphabetic();
    }
    let c = c as u32;
    DEEPSEEK_LETTERS
        .binary_search_by(|&(lo, hi)| {
            if hi < c {
                std::cmp::Ordering::Less
            } else if lo > c {
                std::cmp::Ordering::Greater
            } else {
                std::cmp::Ordering::Equal
            }
        })
        .is_ok()
}

fn is_deepseek_punct(c: char) -> bool {
    matches!(c, '!'..='/' | ':'..='~' | '\u{ff01}'..='\u{ff0f}' | '\u{ff1a}'..='\u{ff5e}'
        | '\u{2018}'..='\u{201f}' | '\u{3000}'..='\u{3002}')
}

fn is_deepseek_cjk(c: char) -> bool {
    matches!(c, '\u{0800}'..='\u{9fa5}' | '\u{ac00}'..='\u{d7ff}')
}

/// Punctuation as the `Punctuation` pre-tokenizer sees it: ASCII punctuation (which includes
/// symbols such as `$+<=>^`|~`) or Unicode `\p{P}`.
pub fn is_punctuation(c: char) -> bool {
    c.is_ascii_punctuation() || (!c.is_ascii() && is_punct(c))
}

/// A Split regex that need not match everywhere (see the section comment).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum IsolatePattern {
    /// `[\r\n]`
    LineBreak,
    /// `\s?[A-Za-zµÀ-Ö…]+`
    DeepseekLetters,
    /// `\s?[!-/:-~！-／：-～‘-‟　-。]+`
    DeepseekPunct,
    /// `\s+$`
    TrailingSpace,
    /// `[一-龥ࠀ-一가-퟿]+`
    DeepseekCjk,
    /// `\s?\p{L}+`
    SpaceLetters,
    /// `\s?\p{P}+`
    SpacePunct,
    /// `[0-9][0-9][0-9]`
    ThreeDigits,
    /// `[^\n]+|[\n]+` (matches everywhere)
    LineRuns,
}

impl IsolatePattern {
    pub fn recognise(pattern: &str) -> Option<IsolatePattern> {
        Some(match pattern {
            LINE_BREAK_PATTERN => IsolatePattern::LineBreak,
            DEEPSEEK_LETTERS_PATTERN => IsolatePattern::DeepseekLetters,
            DEEPSEEK_PUNCT_PATTERN => IsolatePattern::DeepseekPunct,
            TRAILING_SPACE_PATTERN => IsolatePattern::TrailingSpace,
            DEEPSEEK_CJK_PATTERN => IsolatePattern::DeepseekCjk,
            SPACE_LETTERS_PATTERN => IsolatePattern::SpaceLetters,
            SPACE_PUNCT_PATTERN => IsolatePattern::SpacePunct,
            THREE_DIGITS_PATTERN => IsolatePattern::ThreeDigits,
            LINE_RUNS_PATTERN => IsolatePattern::LineRuns,
            _ => return None,
        })
    }

    /// The leftmost match at or after `from`, as (start, end); never empty.
    fn find(self, s: &str, from: usize) -> Option<(usize, usize)> {
        let mut i = from;
        while i < s.len() {
            let c = char_at(s, i)?;
            match self.match_at(s, i, c) {
                Ok(e) => return Some((i, e)),
                Err(next) => i = next,
            }
        }
        None
    }

    /// The end of the match starting at `i` (whose character is `c`), or where to try next.
    fn match_at(self, s: &str, i: usize, c: char) -> Result<usize, usize> {
        let next = i + c.len_utf8();
        // `\s?X+`: an optional whitespace character, then a run of X.
        let space_run = |x: fn(char) -> bool| {
            if x(c) {
                return Ok(run_end(s, i, x));
            }
            if is_space(c) && char_at(s, next).is_some_and(x) {
                return Ok(run_end(s, next, x));
            }
            Err(next)
        };
        match self {
            IsolatePattern::LineBreak if c == '\r' || c == '\n' => Ok(next),
            IsolatePattern::LineBreak => Err(next),
            IsolatePattern::DeepseekLetters => space_run(is_deepseek_letter),
            IsolatePattern::DeepseekPunct => space_run(is_deepseek_punct),
            IsolatePattern::SpaceLetters => space_run(is_letter),
            IsolatePattern::SpacePunct => space_run(is_punct),
            IsolatePattern::DeepseekCjk if is_deepseek_cjk(c) => Ok(run_end(s, i, is_deepseek_cjk)),
            IsolatePattern::DeepseekCjk => Err(next),
            IsolatePattern::ThreeDigits => {
                let b = s.as_bytes();
                if b.len() >= i + 3 && b[i..i + 3].iter().all(u8::is_ascii_digit) {
                    Ok(i + 3)
                } else {
                    Err(next)
                }
            }
            IsolatePattern::LineRuns if c == '\n' => Ok(run_end(s, i, |c| c == '\n')),
            IsolatePattern::LineRuns => Ok(run_end(s, i, |c| c != '\n')),
            IsolatePattern::TrailingSpace => {
                if !is_space(c) {
                    return Err(next);
                }
                // Greedy `\s+` backs off to the last place `$` holds: the end of the text or
                // (Oniguruma's Ruby syntax) just before a line feed. Every later start in the
                // same run fails too when this one does.
                let end = run_end(s, i, is_space);
                if end == s.len() {
                    return Ok(end);
                }
                match s[next..end].rfind('\n') {
                    Some(k) => Ok(next + k),
                    None => Err(end),
                }
            }
        }
    }

    /// Isolated: the matches and the stretches between them, in order.
    pub fn split(self, s: &str, base: usize, out: &mut Vec<(usize, usize)>) {
        let mut at = 0;
        while let Some((a, b)) = self.find(s, at) {
            if a > at {
                out.push((base + at, base + a));
            }
            out.push((base + a, base + b));
            at = b;
        }
        if at < s.len() {
            out.push((base + at, base + s.len()));
        }
    }
}

/// The `Punctuation` pre-tokenizer: runs of punctuation (`contiguous`) or each punctuation
/// character (isolated) become their own pieces.
pub fn split_punctuation(s: &str, base: usize, contiguous: bool, out: &mut Vec<(usize, usize)>) {
    let mut i = 0;
    while i < s.len() {
        let Some(c) = char_at(s, i) else { break };
        let e = if !is_punctuation(c) {
            run_end(s, i, |c| !is_punctuation(c))
        } else if contiguous {
            run_end(s, i, is_punctuation)
        } else {
            i + c.len_utf8()
        };
        out.push((base + i, base + e));
        i = e;
    }
}

/// Digits pre-tokenizer: isolates runs of `\p{N}` (each digit alone when `individual`).
pub fn split_digits(s: &str, base: usize, individual: bool, out: &mut Vec<(usize, usize)>) {
    let mut i = 0;
    while i < s.len() {
        let Some(c) = char_at(s, i) else { break };
        let e = if is_number(c) {
            if individual {
                i + c.len_utf8()
            } else {
                run_end(s, i, is_number)
            }
        } else {
            run_end(s, i, |c| !is_number(c))
        };
        out.push((base + i, base + e));
        i = e;
    }
}

/// The GPT-2 byte-to-unicode map: printable bytes stand for themselves, the rest are shifted
/// to U+0100.. so that every byte is a visible character in the vocabulary.
pub fn byte_to_char_table() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut n = 0u32;
    for b in 0..256u32 {
        let printable =
            (0x21..=0x7E).contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b);
        let c = if printable {
            b
        } else {
            n += 1;
            255 + n
        };
        table[b as usize] = char::from_u32(c).unwrap_or('\0');
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pieces(p: SplitPattern, s: &str) -> Vec<&str> {
        let mut r = Vec::new();
        p.split(s, 0, &mut r);
        r.into_iter().map(|(a, b)| &s[a..b]).collect()
    }

    #[test]
    fn gpt2_examples() {
        let p = SplitPattern::Gpt2;
        assert_eq!(
            pieces(p, "Hello world's  end  "),
            ["Hello", " world", "'s", " ", " end", "  "]
        );
        assert_eq!(
            pieces(p, "a\n\nb 123 ?!x"),
            ["a", "\n", "\n", "b", " 123", " ?!", "x"]
        );
        assert_eq!(pieces(p, "I'M"), ["I", "'", "M"]);
    }

    #[test]
    fn llama3_examples() {
        let p = SplitPattern::Llama3 {
            max_digits: 3,
            marks: false,
        };
        assert_eq!(
            pieces(p, "I'M 12345 x"),
            ["I", "'M", " ", "123", "45", " x"]
        );
        assert_eq!(pieces(p, "a  \n  b"), ["a", "  \n", " ", " b"]);
        assert_eq!(pieces(p, "x.\n\ny\tz"), ["x", ".\n\n", "y", "\tz"]);
        let q = SplitPattern::Llama3 {
            max_digits: 1,
            marks: false,
        };
        assert_eq!(pieces(q, "12"), ["1", "2"]);
    }

    fn isolated(p: IsolatePattern, s: &str) -> Vec<&str> {
        let mut r = Vec::new();
        p.split(s, 0, &mut r);
        r.into_iter().map(|(a, b)| &s[a..b]).collect()
    }

    #[test]
    fn deepseek_llm_patterns() {
        use IsolatePattern::*;
        assert_eq!(
            isolated(LineBreak, "a\r\nb\n"),
            ["a", "\r", "\n", "b", "\n"]
        );
        // `\s?` takes one whitespace character before the run, never two.
        assert_eq!(
            isolated(DeepseekLetters, "Hello  wörld, µΩ ʔx"),
            ["Hello", " ", " wörld", ",", " µΩ", " ʔ", "x"]
        );
        assert_eq!(
            isolated(DeepseekPunct, "1 ... 2！？3"),
            ["1", " ...", " 2", "！？", "3"]
        );
        assert_eq!(
            isolated(DeepseekCjk, "ab你好x가"),
            ["ab", "你好", "x", "가"]
        );
    }

    #[test]
    fn trailing_space_is_anchored_to_the_end_or_a_line_feed() {
        use IsolatePattern::TrailingSpace as T;
        assert_eq!(isolated(T, "a  "), ["a", "  "]);
        assert_eq!(isolated(T, "a  b"), ["a  b"]);
        // Oniguruma's `$` also holds before a line feed; greedy `\s+` backs off to it.
        assert_eq!(isolated(T, " \n "), [" \n "]);
        assert_eq!(isolated(T, "a \nb"), ["a", " ", "\nb"]);
        // A long run in the middle is one failed attempt, not one per character.
        let s = format!("x{}y", " ".repeat(100_000));
        assert_eq!(isolated(T, &s), [s.as_str()]);
    }

    #[test]
    fn deepseek_coder_and_falcon_patterns() {
        use IsolatePattern::*;
        assert_eq!(isolated(SpaceLetters, "ab  cd1"), ["ab", " ", " cd", "1"]);
        assert_eq!(isolated(SpacePunct, "a ..$b"), ["a", " ..", "$b"]);
        assert_eq!(isolated(ThreeDigits, "12345678"), ["123", "456", "78"]);
        assert_eq!(isolated(ThreeDigits, "١٢٣"), ["١٢٣"]);
        let mut r = Vec::new();
        split_punctuation("a$+b.,c", 0, true, &mut r);
        assert_eq!(r, [(0, 1), (1, 3), (3, 4), (4, 6), (6, 7)]);
        r.clear();
        split_punctuation("«a»", 0, false, &mut r);
        assert_eq!(r, [(0, 2), (2, 3), (3, 5)]);
        assert!(is_punctuation('`') && is_punctuation('¿') && !is_punctuation('€'));
    }

    /// Every pattern on random text: pieces are non-empty, on character boundaries, and tile it.
    #[test]
    fn isolate_patterns_tile_any_text() {
        use IsolatePattern::*;
        let alphabet: Vec<char> = "aZ µ9\n\r\t.!$¿你가١½\u{301}\u{3000}\u{ff01}ʔ"
            .chars()
            .collect();
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for len in 0..200 {
            let s: String = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    alphabet[(x % alphabet.len() as u64) as usize]
                })
                .collect();
            for p in [
                LineBreak,
                DeepseekLetters,
                DeepseekPunct,
                TrailingSpace,
                DeepseekCjk,
                SpaceLetters,
                SpacePunct,
                ThreeDigits,
                LineRuns,
            ] {
                let mut r = Vec::new();
                p.split(&s, 7, &mut r);
                let mut at = 7;
                for &(a, b) in &r {
                    assert!(a == at && b > a && s.is_char_boundary(b - 7), "{p:?} {s:?}");
                    at = b;
                }
                assert_eq!(at, 7 + s.len(), "{p:?} {s:?}");
            }
        }
    }

    #[test]
    fn byte_map() {
        let t = byte_to_char_table();
        assert_eq!(t[b' ' as usize], 'Ġ');
        assert_eq!(t[b'\n' as usize], 'Ċ');
        assert_eq!(t[b'a' as usize], 'a');
    }
}

#[cfg(test)]
mod oracle {
    use super::SplitPattern;

    /// Every case of tests/fixtures/tokenizers/splits.json: 2000 random strings per pattern,
    /// split by Oniguruma (through the tokenizers package).
    #[test]
    fn matches_oniguruma() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/tokenizers/splits.json");
        let text = std::fs::read_to_string(&path).expect("splits.json");
        let v: serde_json::Value = serde_json::from_str(&text).expect("splits.json parses");
        let obj = v.as_object().expect("object");
        assert_eq!(obj.len(), 6);
        let mut bad = Vec::new();
        for (name, p) in obj {
            let re = p["regex"].as_str().unwrap_or_default();
            let pat = SplitPattern::recognise(re)
                .unwrap_or_else(|| panic!("{name}: pattern not recognised"));
            for c in p["cases"].as_array().expect("cases") {
                let input = c[0].as_str().unwrap_or_default();
                let want: Vec<&str> = c[1]
                    .as_array()
                    .expect("pieces")
                    .iter()
                    .filter_map(|x| x.as_str())
                    .collect();
                let mut r = Vec::new();
                pat.split(input, 0, &mut r);
                let got: Vec<&str> = r.iter().map(|&(a, b)| &input[a..b]).collect();
                if got != want {
                    bad.push(format!("{name} {input:?}: got {got:?} want {want:?}"));
                }
            }
        }
        assert!(
            bad.is_empty(),
            "{} mismatches:\n{}",
            bad.len(),
            bad[..bad.len().min(20)].join("\n")
        );
    }
}
