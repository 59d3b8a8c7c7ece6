//! Decoders (ids' pieces -> text), written once as a streaming pipeline: each step consumes
//! chunks and emits chunks as soon as they can no longer change. `Tokenizer::decode` runs the
//! same pipeline over all tokens and flushes, so streamed text concatenated equals the full
//! decode by construction.
//!
//! Steps follow Hugging Face `tokenizers` decoders: ByteLevel, Replace, ByteFallback, Fuse,
//! Strip, Metaspace, Sequence. Before the first fusing step (Fuse or ByteLevel) chunks are whole
//! tokens and steps act per token, as in `tokenizers`; after it the chunks are pieces of one
//! text and Strip acts on the start and end of that text. Held back: a partial UTF-8 character
//! (ByteLevel), a run of `<0xNN>` tokens until a non-byte token ends it (ByteFallback decodes a
//! run as a whole: valid UTF-8, or one U+FFFD per byte), and trailing characters a Strip `stop`
//! may remove. Not supported (rejected at load): WordPiece, BPEDecoder, CTC, a multi-character
//! Replace or a ByteFallback after a fusing step.

#[derive(Clone, Debug)]
pub enum Step {
    ByteLevel,
    Replace {
        pattern: String,
        content: String,
    },
    ByteFallback,
    Fuse,
    Strip {
        content: char,
        start: usize,
        stop: usize,
    },
    Metaspace {
        replacement: char,
        prepend: bool,
    },
}

impl Step {
    fn fuses(&self) -> bool {
        matches!(self, Step::ByteLevel | Step::Fuse)
    }
}

/// A decoder definition: the steps, flattened from any Sequence. An empty list means "no
/// decoder": tokens are joined with spaces, as `tokenizers` does.
#[derive(Clone, Debug, Default)]
pub struct Decoder {
    pub steps: Vec<Step>,
}

impl Decoder {
    pub fn validate(&self) -> Result<(), String> {
        let mut fused = false;
        for s in &self.steps {
            match s {
                Step::ByteFallback if fused => {
                    return Err("decoder ByteFallback after Fuse/ByteLevel is not supported".into())
                }
                Step::ByteLevel if fused => {
                    return Err("decoder ByteLevel after Fuse/ByteLevel is not supported".into())
                }
                Step::Replace { pattern, .. } if fused && pattern.chars().count() != 1 => {
                    return Err("decoder Replace with a multi-character pattern after Fuse is not supported".into())
                }
                _ => {}
            }
            fused |= s.fuses();
        }
        Ok(())
    }

    pub fn state(&self) -> DecoderState {
        let mut fused = false;
        let states = self
            .steps
            .iter()
            .map(|s| {
                let st = StepState {
                    step: s.clone(),
                    text_mode: fused,
                    count: 0,
                    bytes: Vec::new(),
                    held: String::new(),
                };
                fused |= s.fuses();
                st
            })
            .collect();
        DecoderState {
            steps: states,
            join_with_space: self.steps.is_empty(),
            tokens_seen: 0,
        }
    }
}

struct StepState {
    step: Step,
    /// After a fusing step: chunks are pieces of one text, not tokens.
    text_mode: bool,
    /// Tokens (or, in text mode, characters stripped so far) this step has seen.
    count: usize,
    /// ByteLevel: an incomplete UTF-8 tail; ByteFallback: the current run of byte tokens.
    bytes: Vec<u8>,
    /// Strip in text mode: trailing `content` characters that `stop` may yet remove.
    held: String,
}

pub struct DecoderState {
    steps: Vec<StepState>,
    join_with_space: bool,
    tokens_seen: usize,
}

impl DecoderState {
    /// Feeds one token's piece; appends whatever text became final to `out`.
    pub fn push(&mut self, piece: &str, out: &mut String) {
        if self.join_with_space {
            if self.tokens_seen > 0 {
                out.push(' ');
            }
            out.push_str(piece);
            self.tokens_seen += 1;
            return;
        }
        self.tokens_seen += 1;
        let mut chunks = vec![piece.to_string()];
        for st in &mut self.steps {
            let mut next = Vec::with_capacity(chunks.len());
            for c in chunks {
                st.push(c, &mut next);
            }
            chunks = next;
            if chunks.is_empty() {
                return;
            }
        }
        for c in chunks {
            out.push_str(&c);
        }
    }

    /// End of input: releases everything held back.
    pub fn finish(&mut self, out: &mut String) {
        let mut chunks: Vec<String> = Vec::new();
        for st in &mut self.steps {
            let mut next = Vec::new();
            for c in chunks {
                st.push(c, &mut next);
            }
            st.finish(&mut next);
            chunks = next;
        }
        for c in chunks {
            out.push_str(&c);
        }
    }
}

fn byte_token(tok: &str) -> Option<u8> {
    let b = tok.as_bytes();
    if b.len() == 6 && tok.starts_with("<0x") && b[5] == b'>' {
        u8::from_str_radix(&tok[3..5], 16).ok()
    } else {
        None
    }
}

/// Decodes `bytes` lossily into `out`, keeping an incomplete trailing character in `bytes`.
fn drain_utf8(bytes: &mut Vec<u8>, out: &mut String, final_: bool) {
    let mut rest: &[u8] = bytes;
    loop {
        match std::str::from_utf8(rest) {
            Ok(s) => {
                out.push_str(s);
                rest = &[];
                break;
            }
            Err(e) => {
                let (ok, bad) = rest.split_at(e.valid_up_to());
                // SAFETY-free: valid_up_to guarantees `ok` is UTF-8.
                out.push_str(std::str::from_utf8(ok).unwrap_or_default());
                match e.error_len() {
                    Some(n) => {
                        out.push('\u{FFFD}');
                        rest = &bad[n..];
                    }
                    None if final_ => {
                        out.push('\u{FFFD}');
                        rest = &[];
                        break;
                    }
                    None => {
                        rest = bad;
                        break;
                    }
                }
            }
        }
    }
    let keep = rest.len();
    let n = bytes.len();
    bytes.drain(..n - keep);
}

impl StepState {
    fn push(&mut self, chunk: String, out: &mut Vec<String>) {
        match &self.step {
            Step::Replace { pattern, content } => {
                out.push(chunk.replace(pattern.as_str(), content))
            }
            Step::Fuse => out.push(chunk),
            Step::ByteLevel => {
                let mut mapped = true;
                for c in chunk.chars() {
                    match super::byte_of_level_char(c) {
                        Some(b) => self.bytes.push(b),
                        None => {
                            mapped = false;
                            break;
                        }
                    }
                }
                if !mapped {
                    // tokenizers takes a token with any unmapped character as its raw bytes.
                    let n = self.bytes.len()
                        - chunk
                            .chars()
                            .take_while(|&c| super::byte_of_level_char(c).is_some())
                            .count();
                    self.bytes.truncate(n);
                    self.bytes.extend_from_slice(chunk.as_bytes());
                }
                let mut s = String::new();
                drain_utf8(&mut self.bytes, &mut s, false);
                if !s.is_empty() {
                    out.push(s);
                }
            }
            Step::ByteFallback => match byte_token(&chunk) {
                Some(b) => self.bytes.push(b),
                None => {
                    self.flush_bytes(out);
                    out.push(chunk);
                }
            },
            Step::Metaspace {
                replacement,
                prepend,
            } => {
                // After a fusing step the whole text is `tokenizers`' token 0.
                let first = self.count == 0 || self.text_mode;
                self.count += 1;
                let r = *replacement;
                let s: String = chunk
                    .chars()
                    .filter_map(|c| {
                        if c == r {
                            if first && *prepend {
                                None
                            } else {
                                Some(' ')
                            }
                        } else {
                            Some(c)
                        }
                    })
                    .collect();
                out.push(s);
            }
            Step::Strip {
                content,
                start,
                stop,
            } => {
                let (content, start, stop) = (*content, *start, *stop);
                if !self.text_mode {
                    out.push(strip_token(&chunk, content, start, stop));
                    return;
                }
                let mut s = chunk.as_str();
                while self.count < start {
                    match s.strip_prefix(content) {
                        Some(t) => {
                            s = t;
                            self.count += 1;
                        }
                        None if s.is_empty() => break,
                        None => {
                            self.count = start;
                        }
                    }
                }
                if s.is_empty() {
                    return;
                }
                if stop == 0 {
                    out.push(s.to_string());
                    return;
                }
                // Hold back up to `stop` trailing content characters: they are dropped if the
                // text ends here.
                self.held.push_str(s);
                let trailing = self
                    .held
                    .chars()
                    .rev()
                    .take_while(|&c| c == content)
                    .take(stop)
                    .count();
                let cut = self.held.len() - trailing * content.len_utf8();
                if cut > 0 {
                    out.push(self.held[..cut].to_string());
                    self.held.drain(..cut);
                }
            }
        }
    }

    fn flush_bytes(&mut self, out: &mut Vec<String>) {
        if self.bytes.is_empty() {
            return;
        }
        match String::from_utf8(std::mem::take(&mut self.bytes)) {
            Ok(s) => out.push(s),
            Err(e) => out.push("\u{FFFD}".repeat(e.as_bytes().len())),
        }
    }

    fn finish(&mut self, out: &mut Vec<String>) {
        match self.step {
            Step::ByteFallback => self.flush_bytes(out),
            Step::ByteLevel => {
                let mut s = String::new();
                drain_utf8(&mut self.bytes, &mut s, true);
                if !s.is_empty() {
                    out.push(s);
                }
            }
            // Held characters are exactly what Strip's `stop` removes at the end.
            Step::Strip { .. } => self.held.clear(),
            _ => {}
        }
    }
}

fn strip_token(tok: &str, content: char, start: usize, stop: usize) -> String {
    let chars: Vec<char> = tok.chars().collect();
    let mut a = 0;
    while a < start.min(chars.len()) && chars[a] == content {
        a += 1;
    }
    let mut b = chars.len();
    let mut k = 0;
    while k < stop && b > a && chars[b - 1] == content {
        b -= 1;
        k += 1;
    }
    chars[a..b].iter().collect()
}
