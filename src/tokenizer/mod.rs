//! Tokenizers loaded from tokenizer.json (byte-level BPE and SentencePiece-style BPE).
