//! Normalizers: NFC, Prepend, Replace (literal pattern), Lowercase, Strip, Sequence.
//! Not supported (rejected at load, naming the type): NFD, NFKC, NFKD, Precompiled (the
//! SentencePiece charsmap of T5/ALBERT), BertNormalizer, StripAccents, Replace with a regex.

use super::unicode::nfc;

#[derive(Clone, Debug)]
pub enum Normalizer {
    Nfc,
    Prepend(String),
    Replace { pattern: String, content: String },
    Lowercase,
    Strip { left: bool, right: bool },
    Sequence(Vec<Normalizer>),
}

impl Normalizer {
    pub fn apply(&self, s: &str) -> String {
        match self {
            Normalizer::Nfc => nfc(s).into_owned(),
            // tokenizers' Prepend leaves the empty string alone.
            Normalizer::Prepend(p) if !s.is_empty() => format!("{p}{s}"),
            Normalizer::Prepend(_) => String::new(),
            Normalizer::Replace { pattern, content } if !pattern.is_empty() => {
                s.replace(pattern.as_str(), content)
            }
            Normalizer::Replace { .. } => s.to_string(),
            Normalizer::Lowercase => s.to_lowercase(),
            Normalizer::Strip { left, right } => {
                let mut t = s;
                if *left {
                    t = t.trim_start();
                }
                if *right {
                    t = t.trim_end();
                }
                t.to_string()
            }
            Normalizer::Sequence(v) => {
                let mut cur = s.to_string();
                for n in v {
                    cur = n.apply(&cur);
                }
                cur
            }
        }
    }

    /// True when `apply` is the identity on every input (saves a copy per segment).
    pub fn is_nfc_only(&self) -> bool {
        match self {
            Normalizer::Nfc => true,
            Normalizer::Sequence(v) => v.iter().all(|n| n.is_nfc_only()),
            _ => false,
        }
    }
}
