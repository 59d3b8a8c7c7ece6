//! The resource bounds, each stated and tested on its worst case: header counts checked before
//! allocating, overlapping tensors refused, config sizes capped, chat templates stopped by fuel
//! and an output limit, and long or pathological tokenizer inputs finishing in bounded time.

use std::time::{Duration, Instant};

use minfer::internals::{gguf, safetensors};
use minfer::{ChatMessage, ModelConfig, Tokenizer};
use serde_json::{json, Value};

use super::engine::scratch;

fn gguf_header(n_tensors: u64, kvs: &[u8], n_kv: u64, tensors: &[u8]) -> Vec<u8> {
    let mut b = b"GGUF".to_vec();
    b.extend_from_slice(&3u32.to_le_bytes());
    b.extend_from_slice(&n_tensors.to_le_bytes());
    b.extend_from_slice(&n_kv.to_le_bytes());
    b.extend_from_slice(kvs);
    b.extend_from_slice(tensors);
    b
}

fn gguf_str(s: &str) -> Vec<u8> {
    let mut b = (s.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(s.as_bytes());
    b
}

fn tensor_info(name: &str, dims: &[u64], ty: u32, offset: u64) -> Vec<u8> {
    let mut b = gguf_str(name);
    b.extend_from_slice(&(dims.len() as u32).to_le_bytes());
    for d in dims {
        b.extend_from_slice(&d.to_le_bytes());
    }
    b.extend_from_slice(&ty.to_le_bytes());
    b.extend_from_slice(&offset.to_le_bytes());
    b
}

fn gguf_error(name: &str, bytes: &[u8]) -> String {
    let path = scratch("bounds-gguf").join(name);
    std::fs::write(&path, bytes).unwrap();
    match gguf::read_header(&path) {
        Ok(_) => panic!("{name}: a hostile header was accepted"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn gguf_counts_and_extents_are_checked() {
    // 2^40 tensors in a 24-byte header.
    let e = gguf_error("many-tensors.gguf", &gguf_header(1 << 40, &[], 0, &[]));
    assert!(e.contains("tensor table of 1099511627776 entries"), "{e}");
    // A 2^62 x 4 shape: the element count overflows u64 arithmetic.
    let t = tensor_info("w", &[1 << 62, 4], 0, 0);
    let e = gguf_error("huge-dims.gguf", &gguf_header(1, &[], 0, &t));
    assert!(e.contains("overflow"), "{e}");
    // A key whose length is u64::MAX.
    let mut kv = u64::MAX.to_le_bytes().to_vec();
    kv.extend_from_slice(b"key");
    let e = gguf_error("long-key.gguf", &gguf_header(0, &kv, 1, &[]));
    assert!(e.contains("runs past the end"), "{e}");
    // An array of strings claiming one element per remaining byte (each needs 8).
    let mut kv = gguf_str("a");
    kv.extend_from_slice(&9u32.to_le_bytes());
    kv.extend_from_slice(&8u32.to_le_bytes());
    kv.extend_from_slice(&1000u64.to_le_bytes());
    kv.extend_from_slice(&[0u8; 1000]);
    let e = gguf_error("string-array.gguf", &gguf_header(0, &kv, 1, &[]));
    assert!(e.contains("runs past the end"), "{e}");
    // Two tensors sharing bytes.
    let mut t = tensor_info("a", &[8], 0, 0);
    t.extend(tensor_info("b", &[8], 0, 0));
    let mut file = gguf_header(2, &[], 0, &t);
    file.resize(file.len().div_ceil(32) * 32 + 64, 0);
    let e = gguf_error("overlap.gguf", &file);
    assert!(e.contains("overlap"), "{e}");
    let _ = std::fs::remove_dir_all(scratch("bounds-gguf"));
    // An empty q_proj in a file claiming 2^32 - 2 heads: refused at once, not a loop over the
    // heads (the campaign's hang-59674e49e56cd06d: seconds of CPU in the test profile).
    let start = Instant::now();
    assert!(gguf::unpermute_rows(0, u32::MAX as usize - 1).is_none());
    assert!(gguf::unpermute_rows(8, 2).is_some());
    assert!(start.elapsed() < Duration::from_millis(100));
}

#[test]
fn safetensors_overlap_is_refused() {
    let header = json!({
        "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
        "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
    })
    .to_string();
    let mut file = (header.len() as u64).to_le_bytes().to_vec();
    file.extend_from_slice(header.as_bytes());
    file.extend_from_slice(&[0u8; 12]);
    let path = scratch("bounds-safetensors").join("overlap.safetensors");
    std::fs::write(&path, file).unwrap();
    let e = safetensors::read_header(&path).unwrap_err().to_string();
    assert!(e.contains("overlap"), "{e}");
    let _ = std::fs::remove_dir_all(scratch("bounds-safetensors"));
}

#[test]
fn config_sizes_are_capped() {
    let base = json!({
        "architectures": ["LlamaForCausalLM"], "hidden_size": 64, "intermediate_size": 128,
        "num_attention_heads": 4, "num_hidden_layers": 2, "vocab_size": 256,
    });
    let path = std::path::Path::new("config.json");
    assert!(ModelConfig::from_json(&base, path).is_ok());
    for (key, value) in [
        ("num_hidden_layers", json!(1u64 << 40)),
        ("vocab_size", json!(0)),
        ("hidden_size", json!(u64::MAX)),
        ("intermediate_size", json!(1u64 << 62)),
    ] {
        let mut v = base.clone();
        v[key] = value;
        let e = ModelConfig::from_json(&v, path).unwrap_err().to_string();
        assert!(e.contains(key), "{key}: {e}");
    }
}

fn tokenizer_with_template(template: &str) -> Tokenizer {
    let tok = json!({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}});
    let cfg = json!({"chat_template": template, "bos_token": "<s>"});
    Tokenizer::from_json(&tok, Some(&cfg)).unwrap()
}

/// Each hostile template ends (an error, or output within the limit) in under 2 s of CPU (a few
/// hundred ms here): fuel stops
/// loops, recursion and memory bombs; the writer stops oversized output.
#[test]
fn hostile_templates_are_bounded() {
    let messages = vec![ChatMessage::new("user", "hi"); 3];
    for template in [
        "{% for i in range(1000000000) %}x{% endfor %}",
        "{% for i in range(100000) %}{% for j in range(100000) %}{{ i }}{% endfor %}{% endfor %}",
        "{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}",
        "{% for i in range(100000) %}{{ 'x' * 99999999 }}{% endfor %}",
        "{% set s = 'ab' * 40000000 %}{% set s = s ~ s %}{% set s = s ~ s %}{{ s ~ s ~ s }}",
        "{{ messages | tojson(indent=999999999) }}",
        "{% set ns = namespace(s='x') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
        "{% for x in messages recursive %}{{ loop(messages) }}{% endfor %}",
    ] {
        let t = tokenizer_with_template(template);
        let start = thread_time();
        let r = t.apply_chat_template(&messages, true);
        let took = thread_time().saturating_sub(start);
        assert!(
            took < Duration::from_secs(2),
            "{template}: took {took:?} ({r:?})"
        );
        if let Ok(s) = r {
            assert!(s.len() <= 1 << 20, "{template}: {} bytes", s.len());
        }
    }
    // A real template on a long conversation stays well inside the fuel.
    let t = tokenizer_with_template(
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content | trim }}<|im_end|>\n{% endfor %}",
    );
    let long = vec![ChatMessage::new("user", "word ".repeat(200)); 2000];
    assert!(t.apply_chat_template(&long, true).is_ok());
}

fn chain_tokenizer(letters: &str, depth: usize) -> Tokenizer {
    // "a", "aa", "aaa", ...: merges that grow one symbol left to right, the worst case for a
    // merge loop that rescans the word after each merge.
    let mut vocab = serde_json::Map::new();
    let mut merges = Vec::new();
    for c in letters.chars() {
        let mut prev = c.to_string();
        vocab.insert(prev.clone(), json!(vocab.len()));
        for _ in 1..depth {
            let next = format!("{prev}{c}");
            merges.push(json!(format!("{prev} {c}")));
            vocab.insert(next.clone(), json!(vocab.len()));
            prev = next;
        }
    }
    let tok: Value = json!({"model": {"type": "BPE", "vocab": vocab, "merges": merges}});
    Tokenizer::from_json(&tok, None).unwrap()
}

/// CPU time of this thread (Linux's schedstat), so that a loaded machine does not distort the
/// ratio below; wall-clock time elsewhere.
fn thread_time() -> Duration {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .map(Duration::from_nanos)
        .unwrap_or_else(|| {
            static T0: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
            T0.get_or_init(Instant::now).elapsed()
        })
}

/// Encode time of `text` (CPU time of this thread), and its ids.
fn timed(tok: &Tokenizer, text: &str) -> (Duration, Vec<u32>) {
    let start = thread_time();
    let ids = tok.encode(text, false).unwrap();
    (thread_time().saturating_sub(start), ids)
}

/// The bound: encoding a single word is linearithmic in its length. A 10 MB word takes at most
/// 30x the CPU time of a 1 MB one (n log n gives about 12x, quadratic 100x) and under 60 s
/// absolute (release profile; 2-5 s of CPU here), with a pathological chain of
/// merges ("a", "aa", "aaa" ... 512 deep), and with real byte-level and SentencePiece-style
/// vocabularies; and it decodes back to the word. Every fixture tokenizer also takes a 1 MB word
/// of letters and a 1 MB run of one digit without trouble.
#[test]
fn ten_megabyte_word_is_bounded() {
    let dirs = super::tokenizer_dirs();
    let real = |name: &str| {
        let d = dirs.iter().find(|d| d.ends_with(name)).unwrap();
        minfer::load_tokenizer(d).unwrap()
    };
    let cases = [
        ("chain merges", chain_tokenizer("a", 512), "a"),
        ("smollm2", real("smollm2"), "abcdefghij"),
        ("llama2ish", real("llama2ish"), "abcdefghij"),
    ];
    for (name, tok, unit) in &cases {
        let small = unit.repeat((1 << 20) / unit.len());
        let big = unit.repeat((10 << 20) / unit.len());
        let (t1, _) = timed(tok, &small);
        let (t10, ids) = timed(tok, &big);
        eprintln!("{name}: 1 MB word in {t1:.2?}, 10 MB in {t10:.2?}");
        assert!(t10 < Duration::from_secs(60), "{name}: {t10:?}");
        assert!(
            t10.as_secs_f64() < 30.0 * t1.as_secs_f64().max(0.01),
            "{name}: 1 MB in {t1:?} but 10 MB in {t10:?}: superlinear"
        );
        // Without a decoder, pieces are joined with spaces (as in Hugging Face); SentencePiece
        // decoders strip the space their normalizer prepends.
        let back = tok.decode(&ids, false).unwrap().replace(' ', "");
        assert!(back == big, "{name}: the word does not come back");
    }
    for dir in dirs {
        let tok = minfer::load_tokenizer(&dir).unwrap();
        for text in ["abcdefghij".repeat(1 << 17), "7".repeat(1 << 20)] {
            let (took, ids) = timed(&tok, &text);
            assert!(
                took < Duration::from_secs(20),
                "{}: {took:?}",
                dir.display()
            );
            assert!(!ids.is_empty());
        }
    }
}

/// A BPE tokenizer.json with `n` merges "t{a} t{b}", b given by `right(a)` (< 2^19), and filler
/// tokens so that every id below 2^19 is defined.
fn merge_table(n: u32, right: impl Fn(u32) -> u32) -> Value {
    const IDS: u32 = 1 << 19;
    let mut merges = Vec::with_capacity(n as usize);
    let mut merged = Vec::with_capacity(n as usize);
    for a in 0..n {
        let b = right(a);
        merges.push(json!(format!("t{a} t{b}")));
        merged.push(format!("t{a}t{b}"));
    }
    let mut vocab = serde_json::Map::new();
    for id in 0..IDS {
        vocab.insert(format!("t{id}"), json!(id));
    }
    for (i, m) in merged.into_iter().enumerate() {
        vocab.insert(m, json!(IDS + i as u32));
    }
    json!({"model": {"type": "BPE", "vocab": vocab, "merges": merges}})
}

/// rustc's FxHash of a (left id, right id) pair, as a `HashMap<(u32, u32), _>` with an unkeyed
/// FxHash would compute it: a hostile file can choose ids whose hashes agree in their low bits.
fn fx_pair(a: u32, b: u32) -> u64 {
    const K: u64 = 0x51_7c_c1_b7_27_22_0a_95;
    let h = (a as u64).wrapping_mul(K);
    (h.rotate_left(5) ^ b as u64).wrapping_mul(K)
}

/// A huge merge table (2^17 merges over 2^19 tokens) loads in time linear in its size, and one
/// crafted so that every (left, right) pair's FxHash agrees in its low 19 bits (every merge in
/// one hash-table bucket: quadratic for an unkeyed hash) loads about as fast as an ordinary one.
/// The bound: at most 3x the CPU time of the ordinary table, plus 0.5 s, and under 30 s.
#[test]
fn huge_and_colliding_merge_tables_are_bounded() {
    let n = 1 << 17;
    let low = (1u64 << 19) - 1;
    // rotl5(a·K) ^ b has the same low 19 bits (zero) for every a when b = rotl5(a·K) & low.
    let crafted = |a: u32| {
        ((a as u64)
            .wrapping_mul(0x51_7c_c1_b7_27_22_0a_95)
            .rotate_left(5)
            & low) as u32
    };
    assert!((0..64).all(|a| fx_pair(a, crafted(a)) & low == fx_pair(0, crafted(0)) & low));
    let ordinary = |a: u32| a.wrapping_mul(2_654_435_761) >> 13;
    let mut times = Vec::new();
    for (name, right) in [
        ("ordinary", &ordinary as &dyn Fn(u32) -> u32),
        ("colliding", &crafted),
    ] {
        let json = merge_table(n, right);
        let start = thread_time();
        let tok = Tokenizer::from_json(&json, None);
        let load = thread_time().saturating_sub(start);
        assert!(tok.is_ok(), "{name}: {:?}", tok.err());
        eprintln!("{name} merge table ({n} merges): loaded in {load:.2?}");
        times.push(load);
    }
    assert!(
        times[1] < Duration::from_secs(30),
        "colliding merges: load {:?}",
        times[1]
    );
    assert!(
        times[1].as_secs_f64() < 3.0 * times[0].as_secs_f64() + 0.5,
        "colliding merges load in {:?}, ordinary ones in {:?}",
        times[1],
        times[0]
    );
}
