//! Pre-tokenization: splitting normalized text into the pieces BPE runs on.
//!
//! The Split regexes of real tokenizers (GPT-2, Llama 3, Qwen2, Qwen3.5) are implemented as hand-written
//! matchers with the exact leftmost-first alternation and backtracking semantics of the regex,
//! instead of a regex engine. A Split with any other pattern is rejected at load, naming the
//! pattern. Also here: ByteLevel (add_prefix_space, use_regex), Digits, Metaspace, Sequence.
//! Not supported: Whitespace, WhitespaceSplit, BertPreTokenizer, Punctuation, CharDelimiterSplit,
//! UnicodeScripts, and Split behaviours other than Isolated.

use super::unicode::{is_letter, is_lowerish, is_mark, is_number, is_space, is_upperish};

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
