//! Unicode character classes (`\p{L}`, `\p{N}`, `\s`) and NFC normalization, over the generated
//! tables in `unicode_tables.rs`. Only what the pre-tokenizers and normalizers of real
//! tokenizer.json files need: no NFD/NFKC/NFKD, no case folding beyond std.

use super::unicode_tables as t;

fn in_ranges(table: &[(u32, u32)], c: u32) -> bool {
    table
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

/// `\p{L}`: general category Letter.
#[inline]
pub fn is_letter(c: char) -> bool {
    if c.is_ascii() {
        return c.is_ascii_alphabetic();
    }
    in_ranges(&t::LETTER, c as u32)
}

/// `\p{N}`: general category Number.
#[inline]
pub fn is_number(c: char) -> bool {
    if c.is_ascii() {
        return c.is_ascii_digit();
    }
    in_ranges(&t::NUMBER, c as u32)
}

/// `\p{M}`: general category Mark.
#[inline]
pub fn is_mark(c: char) -> bool {
    !c.is_ascii() && in_ranges(&t::MARK, c as u32)
}

/// `\p{P}`: general category Punctuation.
#[inline]
pub fn is_punct(c: char) -> bool {
    in_ranges(&t::PUNCT, c as u32)
}

/// `[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]`
#[inline]
pub fn is_upperish(c: char) -> bool {
    if c.is_ascii() {
        return c.is_ascii_uppercase();
    }
    in_ranges(&t::UPPERISH, c as u32)
}

/// `[\p{Ll}\p{Lm}\p{Lo}\p{M}]`
#[inline]
pub fn is_lowerish(c: char) -> bool {
    if c.is_ascii() {
        return c.is_ascii_lowercase();
    }
    in_ranges(&t::LOWERISH, c as u32)
}

/// `\s` as Oniguruma (and Rust's regex) define it for Unicode text: the White_Space property,
/// which std's `char::is_whitespace` implements (this set has not changed in many versions).
#[inline]
pub fn is_space(c: char) -> bool {
    c.is_whitespace()
}

fn ccc(c: char) -> u8 {
    let c = c as u32;
    if c < 0x300 {
        return 0;
    }
    match t::CCC.binary_search_by(|&(lo, hi, _)| {
        if hi < c {
            std::cmp::Ordering::Less
        } else if lo > c {
            std::cmp::Ordering::Greater
        } else {
            std::cmp::Ordering::Equal
        }
    }) {
        Ok(i) => t::CCC[i].2,
        Err(_) => 0,
    }
}

const S_BASE: u32 = 0xAC00;
const L_BASE: u32 = 0x1100;
const V_BASE: u32 = 0x1161;
const T_BASE: u32 = 0x11A7;
const L_COUNT: u32 = 19;
const V_COUNT: u32 = 21;
const T_COUNT: u32 = 28;
const N_COUNT: u32 = V_COUNT * T_COUNT;
const S_COUNT: u32 = L_COUNT * N_COUNT;

fn decompose_into(c: char, out: &mut Vec<char>) {
    let cp = c as u32;
    if (S_BASE..S_BASE + S_COUNT).contains(&cp) {
        let s = cp - S_BASE;
        let l = L_BASE + s / N_COUNT;
        let v = V_BASE + (s % N_COUNT) / T_COUNT;
        let tt = T_BASE + s % T_COUNT;
        for x in [l, v] {
            out.extend(char::from_u32(x));
        }
        if tt != T_BASE {
            out.extend(char::from_u32(tt));
        }
        return;
    }
    match t::DECOMP.binary_search_by_key(&cp, |&(k, _, _)| k) {
        Ok(i) => {
            let (_, off, len) = t::DECOMP[i];
            let s = &t::DECOMP_CHARS[off as usize..off as usize + len as usize];
            out.extend(s.iter().filter_map(|&x| char::from_u32(x)));
        }
        Err(_) => out.push(c),
    }
}

fn compose_pair(a: char, b: char) -> Option<char> {
    let (a32, b32) = (a as u32, b as u32);
    // Hangul L+V and LV+T are algorithmic.
    if (L_BASE..L_BASE + L_COUNT).contains(&a32) && (V_BASE..V_BASE + V_COUNT).contains(&b32) {
        let lv = S_BASE + ((a32 - L_BASE) * V_COUNT + (b32 - V_BASE)) * T_COUNT;
        return char::from_u32(lv);
    }
    if (S_BASE..S_BASE + S_COUNT).contains(&a32)
        && (a32 - S_BASE).is_multiple_of(T_COUNT)
        && (T_BASE + 1..T_BASE + T_COUNT).contains(&b32)
    {
        return char::from_u32(a32 + (b32 - T_BASE));
    }
    let key = ((a32 as u64) << 21) | b32 as u64;
    t::COMPOSE
        .binary_search_by_key(&key, |&(k, _)| k)
        .ok()
        .and_then(|i| char::from_u32(t::COMPOSE[i].1))
}

/// The NFC quick check of UAX #15: true when `s` is certainly NFC already (no character with
/// NFC_Quick_Check No or Maybe, and combining classes never decrease).
fn is_nfc_quick(s: &str) -> bool {
    let mut last = 0u8;
    for c in s.chars() {
        // Nothing below U+0300 is No/Maybe or has a non-zero combining class.
        if (c as u32) < 0x300 {
            last = 0;
            continue;
        }
        let cc = ccc(c);
        if (cc != 0 && last > cc) || in_ranges(&t::NFC_QC_NO_MAYBE, c as u32) {
            return false;
        }
        last = cc;
    }
    true
}

/// Unicode Normalization Form C. Text that passes the quick check (nearly all real text) is
/// returned borrowed without work.
pub fn nfc(s: &str) -> std::borrow::Cow<'_, str> {
    if is_nfc_quick(s) {
        return std::borrow::Cow::Borrowed(s);
    }
    // 1. Full canonical decomposition.
    let mut d: Vec<char> = Vec::with_capacity(s.len());
    for c in s.chars() {
        decompose_into(c, &mut d);
    }
    // 2. Canonical ordering: stable sort of each run of non-starters by combining class.
    let mut i = 0;
    while i < d.len() {
        if ccc(d[i]) == 0 {
            i += 1;
            continue;
        }
        let start = i;
        while i < d.len() && ccc(d[i]) != 0 {
            i += 1;
        }
        d[start..i].sort_by_key(|&c| ccc(c));
    }
    // 3. Canonical composition.
    let mut out: Vec<char> = Vec::with_capacity(d.len());
    let mut starter: Option<usize> = None;
    let mut last_ccc: i16 = -1;
    for &c in &d {
        let cc = ccc(c) as i16;
        if let Some(si) = starter {
            // c is not blocked from the starter if nothing between has a class >= c's class
            // (and, for a starter c, nothing at all lies between).
            let blocked = if out.len() - 1 == si {
                false
            } else {
                last_ccc == 0 || last_ccc >= cc
            };
            if !blocked {
                if let Some(comp) = compose_pair(out[si], c) {
                    out[si] = comp;
                    continue;
                }
            }
        }
        if cc == 0 {
            starter = Some(out.len());
            last_ccc = -1;
        } else {
            last_ccc = cc;
        }
        out.push(c);
        if cc == 0 {
            last_ccc = 0;
        }
    }
    std::borrow::Cow::Owned(out.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes() {
        assert!(is_letter('a') && is_letter('é') && is_letter('中') && is_letter('ß'));
        assert!(!is_letter('1') && !is_letter(' ') && !is_letter('\u{301}'));
        assert!(is_number('7') && is_number('٣') && is_number('½') && is_number('Ⅻ'));
        assert!(!is_number('a'));
        assert!(is_space('\u{3000}') && is_space('\u{85}') && !is_space('\u{200B}'));
    }

    #[test]
    fn nfc_examples() {
        assert_eq!(nfc("e\u{301}"), "é");
        assert_eq!(nfc("\u{1100}\u{1161}\u{11A8}"), "각");
        assert_eq!(nfc("a\u{323}\u{302}"), "\u{1EAD}"); // ậ: reorder then compose
        assert_eq!(nfc("\u{212B}"), "\u{C5}"); // Angstrom sign -> Å
        assert_eq!(nfc("\u{0344}"), "\u{308}\u{301}"); // composition exclusion stays split
        assert_eq!(nfc("plain ascii"), "plain ascii");
        assert_eq!(nfc("e\u{301}\u{301}"), "é\u{301}");
    }
}

#[cfg(test)]
mod nfc_oracle {
    /// Every case of tests/fixtures/tokenizers/nfc.json (Python's unicodedata.normalize).
    #[test]
    fn matches_python() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/tokenizers/nfc.json");
        let text = std::fs::read_to_string(&path).expect("nfc.json");
        let v: serde_json::Value = serde_json::from_str(&text).expect("nfc.json parses");
        let cases = v["cases"].as_array().expect("cases");
        assert!(cases.len() > 5000);
        let mut bad = Vec::new();
        for c in cases {
            let (input, want) = (
                c[0].as_str().unwrap_or_default(),
                c[1].as_str().unwrap_or_default(),
            );
            let got = super::nfc(input);
            if got != want {
                bad.push(format!("{input:?}: got {got:?} want {want:?}"));
            }
        }
        assert!(
            bad.is_empty(),
            "{} of {} differ:\n{}",
            bad.len(),
            cases.len(),
            bad[..bad.len().min(20)].join("\n")
        );
    }
}
