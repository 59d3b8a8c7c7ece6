//! GGUF reader and quant reference tests: malformed files give their specific errors, a file
//! written by the reference gguf-py writer loads to the Hugging Face tensors it came from, the
//! q/k un-permutation is right, and the block dequantizers agree with gguf-py bit for bit.

mod common;

use std::path::{Path, PathBuf};

use minfer::internals::gguf::{self, GgufCheckpoint, GgufValue};
use minfer::internals::quant;
use minfer::DType;
use minfer::Error;
use serde_json::Value;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/gguf")
        .join(name)
}

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("minfer-gguf-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

// ---- a tiny GGUF writer, independent of the reader -----------------------------------------

struct Tensor {
    name: String,
    dims: Vec<u64>,
    ty: u32,
    data: Vec<u8>,
    offset: Option<u64>,
}

struct Writer {
    magic: [u8; 4],
    version: u32,
    kv: Vec<u8>,
    n_kv: u64,
    alignment: u64,
    tensors: Vec<Tensor>,
}

fn put_str(b: &mut Vec<u8>, s: &str) {
    b.extend((s.len() as u64).to_le_bytes());
    b.extend(s.as_bytes());
}

impl Writer {
    fn new(arch: &str) -> Writer {
        let mut w = Writer {
            magic: *b"GGUF",
            version: 3,
            kv: vec![],
            n_kv: 0,
            alignment: 32,
            tensors: vec![],
        };
        w.str("general.architecture", arch);
        w
    }
    fn key(&mut self, k: &str, ty: u32) {
        put_str(&mut self.kv, k);
        self.kv.extend(ty.to_le_bytes());
        self.n_kv += 1;
    }
    fn u32(&mut self, k: &str, v: u32) -> &mut Self {
        self.key(k, 4);
        self.kv.extend(v.to_le_bytes());
        self
    }
    fn f32(&mut self, k: &str, v: f32) -> &mut Self {
        self.key(k, 6);
        self.kv.extend(v.to_le_bytes());
        self
    }
    fn str(&mut self, k: &str, v: &str) -> &mut Self {
        self.key(k, 8);
        put_str(&mut self.kv, v);
        self
    }
    fn strs(&mut self, k: &str, v: &[&str]) -> &mut Self {
        self.key(k, 9);
        self.kv.extend(8u32.to_le_bytes());
        self.kv.extend((v.len() as u64).to_le_bytes());
        for s in v {
            put_str(&mut self.kv, s);
        }
        self
    }
    fn i32s(&mut self, k: &str, v: &[i32]) -> &mut Self {
        self.key(k, 9);
        self.kv.extend(5u32.to_le_bytes());
        self.kv.extend((v.len() as u64).to_le_bytes());
        for x in v {
            self.kv.extend(x.to_le_bytes());
        }
        self
    }
    fn llama_hparams(
        &mut self,
        arch: &str,
        hidden: u32,
        inter: u32,
        layers: u32,
        heads: u32,
        kv: u32,
    ) -> &mut Self {
        self.u32(&format!("{arch}.embedding_length"), hidden)
            .u32(&format!("{arch}.feed_forward_length"), inter)
            .u32(&format!("{arch}.block_count"), layers)
            .u32(&format!("{arch}.attention.head_count"), heads)
            .u32(&format!("{arch}.attention.head_count_kv"), kv)
            .f32(&format!("{arch}.attention.layer_norm_rms_epsilon"), 1e-5)
            .u32(&format!("{arch}.context_length"), 64)
    }
    fn gpt2_tokenizer(&mut self, pre: &str) -> &mut Self {
        self.str("tokenizer.ggml.model", "gpt2")
            .str("tokenizer.ggml.pre", pre)
            .strs(
                "tokenizer.ggml.tokens",
                &["<|endoftext|>", "a", "b", "ab", "Ġ", "Ġab", "<think>"],
            )
            .i32s("tokenizer.ggml.token_type", &[3, 1, 1, 1, 1, 1, 4])
            .strs("tokenizer.ggml.merges", &["a b", "Ġ ab"])
            .u32("tokenizer.ggml.eos_token_id", 0)
    }
    /// A tensor of f32 values, `dims` in ggml order.
    fn f32_tensor(&mut self, name: &str, dims: &[u64], values: &[f32]) -> &mut Self {
        let data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.tensors.push(Tensor {
            name: name.into(),
            dims: dims.to_vec(),
            ty: 0,
            data,
            offset: None,
        });
        self
    }
    fn raw_tensor(&mut self, name: &str, dims: &[u64], ty: u32, data: Vec<u8>) -> &mut Self {
        self.tensors.push(Tensor {
            name: name.into(),
            dims: dims.to_vec(),
            ty,
            data,
            offset: None,
        });
        self
    }
    fn bytes(&self) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend(self.magic);
        b.extend(self.version.to_le_bytes());
        b.extend((self.tensors.len() as u64).to_le_bytes());
        b.extend(self.n_kv.to_le_bytes());
        b.extend(&self.kv);
        let al = self.alignment.max(1);
        let mut offsets = Vec::new();
        let mut off = 0u64;
        for t in &self.tensors {
            offsets.push(t.offset.unwrap_or(off));
            off = (off + t.data.len() as u64).div_ceil(al) * al;
        }
        for (t, o) in self.tensors.iter().zip(&offsets) {
            put_str(&mut b, &t.name);
            b.extend((t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                b.extend(d.to_le_bytes());
            }
            b.extend(t.ty.to_le_bytes());
            b.extend(o.to_le_bytes());
        }
        while !(b.len() as u64).is_multiple_of(al) {
            b.push(0);
        }
        let data_start = b.len();
        for (t, &o) in self.tensors.iter().zip(&offsets) {
            if t.offset.is_some() {
                continue;
            }
            b.resize(data_start + o as usize, 0);
            b.extend(&t.data);
        }
        b
    }
    fn write(&self, name: &str) -> PathBuf {
        let p = tmp(name);
        std::fs::write(&p, self.bytes()).unwrap();
        p
    }
}

/// A complete tiny model: hidden 8, 2 heads of 4, 1 kv head, 1 layer, vocab 7. Row r of every
/// HF matrix holds r·100 + column, so rows can be identified after un-permutation.
fn tiny_model(arch: &str, permute_qk: bool) -> Writer {
    let (hidden, inter, heads, kv, vocab) = (8u64, 16u64, 2u64, 1u64, 7u64);
    let mut w = Writer::new(arch);
    w.llama_hparams(
        arch,
        hidden as u32,
        inter as u32,
        1,
        heads as u32,
        kv as u32,
    )
    .gpt2_tokenizer("smollm");
    let hf = |rows: u64, cols: u64| -> Vec<Vec<f32>> {
        (0..rows)
            .map(|r| (0..cols).map(|c| (r * 100 + c) as f32).collect())
            .collect()
    };
    // llama.cpp's permute: GGUF row h·d + 2i + j is HF row h·d + j·d/2 + i.
    let permute = |m: Vec<Vec<f32>>, n_head: u64| -> Vec<Vec<f32>> {
        let d = m.len() as u64 / n_head;
        let mut out = m.clone();
        for h in 0..n_head {
            for i in 0..d / 2 {
                for j in 0..2 {
                    out[(h * d + 2 * i + j) as usize] = m[(h * d + j * d / 2 + i) as usize].clone();
                }
            }
        }
        out
    };
    let mat = |w: &mut Writer, name: &str, rows: u64, cols: u64, perm: Option<u64>| {
        let mut m = hf(rows, cols);
        if let (Some(n), true) = (perm, permute_qk) {
            m = permute(m, n);
        }
        let flat: Vec<f32> = m.concat();
        w.f32_tensor(name, &[cols, rows], &flat);
    };
    mat(&mut w, "token_embd.weight", vocab, hidden, None);
    mat(
        &mut w,
        "blk.0.attn_q.weight",
        heads * 4,
        hidden,
        Some(heads),
    );
    mat(&mut w, "blk.0.attn_k.weight", kv * 4, hidden, Some(kv));
    mat(&mut w, "blk.0.attn_v.weight", kv * 4, hidden, None);
    mat(&mut w, "blk.0.attn_output.weight", hidden, heads * 4, None);
    mat(&mut w, "blk.0.ffn_gate.weight", inter, hidden, None);
    mat(&mut w, "blk.0.ffn_up.weight", inter, hidden, None);
    mat(&mut w, "blk.0.ffn_down.weight", hidden, inter, None);
    for n in [
        "blk.0.attn_norm.weight",
        "blk.0.ffn_norm.weight",
        "output_norm.weight",
    ] {
        w.f32_tensor(n, &[hidden], &[1.0; 8]);
    }
    w
}

fn bad_weights_message<T>(r: minfer::Result<T>) -> String {
    match r {
        Err(Error::BadWeights { message, .. }) => message,
        Err(e) => panic!("expected BadWeights, got {e}"),
        Ok(_) => panic!("expected BadWeights, got Ok"),
    }
}

// ---- malformed files -----------------------------------------------------------------------

#[test]
fn bad_magic() {
    let mut w = tiny_model("llama", true);
    w.magic = *b"GGML";
    let m = bad_weights_message(gguf::read_header(&w.write("magic.gguf")));
    assert!(m.contains("magic"), "{m}");
}

#[test]
fn unsupported_version() {
    let mut w = tiny_model("llama", true);
    w.version = 1;
    let m = bad_weights_message(gguf::read_header(&w.write("v1.gguf")));
    assert!(m.contains("version 1"), "{m}");
}

#[test]
fn truncated_header_at_every_length() {
    let w = tiny_model("llama", true);
    let full = w.bytes();
    let header_len = gguf::read_header(&w.write("full.gguf"))
        .unwrap()
        .data_offset as usize;
    // Cut the file inside the header at many points: each must be a clean BadWeights.
    for cut in (0..header_len).step_by(7) {
        let p = tmp("trunc.gguf");
        std::fs::write(&p, &full[..cut]).unwrap();
        let m = bad_weights_message(gguf::read_header(&p));
        assert!(
            m.contains("truncated") || m.contains("past the end") || m.contains("magic"),
            "cut {cut}: {m}"
        );
    }
}

#[test]
fn tensor_data_past_the_end() {
    let mut w = tiny_model("llama", true);
    w.tensors[3].offset = Some(1 << 20);
    let m = bad_weights_message(gguf::read_header(&w.write("past.gguf")));
    assert!(
        m.contains("blk.0.attn_v.weight") && m.contains("past the end"),
        "{m}"
    );
    // A file cut inside its data section: the last tensor runs past the end.
    let full = tiny_model("llama", true).bytes();
    let p = tmp("cut-data.gguf");
    std::fs::write(&p, &full[..full.len() - 4]).unwrap();
    let m = bad_weights_message(gguf::read_header(&p));
    assert!(
        m.contains("output_norm.weight") && m.contains("past the end"),
        "{m}"
    );
}

#[test]
fn unknown_tensor_type() {
    let mut w = tiny_model("llama", true);
    w.raw_tensor("blk.0.mystery.weight", &[32], 99, vec![0; 64]);
    match gguf::read_header(&w.write("type.gguf")) {
        Err(Error::UnsupportedDtype { name, dtype }) => {
            assert_eq!(name, "blk.0.mystery.weight");
            assert!(dtype.contains("99"), "{dtype}");
        }
        other => panic!("expected UnsupportedDtype, got {:?}", other.map(|_| ())),
    }
}

#[test]
fn known_but_unsupported_type_reads_but_does_not_load() {
    let mut w = tiny_model("llama", true);
    // Q5_0: 22 bytes per 32 weights. read_header sizes it; load refuses it by name.
    w.tensors.retain(|t| t.name != "blk.0.attn_v.weight");
    w.raw_tensor("blk.0.attn_v.weight", &[32, 1], 6, vec![0; 22]);
    let p = w.write("q5_0.gguf");
    let h = gguf::read_header(&p).unwrap();
    let t = h
        .tensors
        .iter()
        .find(|t| t.name == "blk.0.attn_v.weight")
        .expect("the Q5_0 tensor is listed");
    assert_eq!((t.dims.as_slice(), t.n_bytes), (&[32u64, 1][..], 22));
    assert_eq!((t.ggml_type.id, t.ggml_type.name), (6, "Q5_0"));
    assert_eq!(h.tensors.len(), tiny_model("llama", true).tensors.len());
    match gguf::load(&p, false) {
        Err(Error::UnsupportedDtype { name, dtype }) => {
            assert_eq!(name, "blk.0.attn_v.weight");
            assert_eq!(dtype, "Q5_0");
        }
        other => panic!("expected UnsupportedDtype, got {:?}", other.map(|_| ())),
    }
    // A row that is not a whole number of blocks is malformed, not merely unsupported.
    let mut w = tiny_model("llama", true);
    w.raw_tensor("blk.0.odd.weight", &[31], 8, vec![0; 34]);
    let m = bad_weights_message(gguf::read_header(&w.write("rows.gguf")));
    assert!(
        m.contains("blk.0.odd.weight") && m.contains("block size"),
        "{m}"
    );
}

#[test]
fn bad_alignment() {
    let mut w = tiny_model("llama", true);
    w.u32("general.alignment", 3);
    let m = bad_weights_message(gguf::read_header(&w.write("align3.gguf")));
    assert!(m.contains("alignment") && m.contains("power of two"), "{m}");

    let mut w = tiny_model("llama", true);
    w.tensors[1].offset = Some(4); // not a multiple of 32
    let m = bad_weights_message(gguf::read_header(&w.write("misaligned.gguf")));
    assert!(
        m.contains("blk.0.attn_q.weight") && m.contains("alignment"),
        "{m}"
    );

    // A legal non-default alignment is honoured.
    let mut w = tiny_model("llama", true);
    w.alignment = 64;
    w.u32("general.alignment", 64);
    let f = gguf::read_header(&w.write("align64.gguf")).unwrap();
    assert_eq!(f.alignment, 64);
    assert_eq!(f.data_offset % 64, 0);
    // ... and the tensors it places at 64-byte offsets are the ones the default layout holds.
    let got = gguf::load(&w.write("align64.gguf"), false).unwrap();
    let want = gguf::load(&tiny_model("llama", true).write("align32.gguf"), false).unwrap();
    assert_same_checkpoint(&got, &want, "alignment 64 vs 32");
}

/// Same config, same tensor names, dtypes, shapes and values (bit for bit).
fn assert_same_checkpoint(got: &GgufCheckpoint, want: &GgufCheckpoint, what: &str) {
    assert_eq!(got.config, want.config, "{what}: config");
    assert_eq!(got.generation_config, want.generation_config, "{what}");
    assert_eq!(got.tokenizer_json, want.tokenizer_json, "{what}: tokenizer");
    assert_eq!(got.tokenizer_config, want.tokenizer_config, "{what}");
    let names = |c: &GgufCheckpoint| c.weights.tensors.keys().cloned().collect::<Vec<_>>();
    assert_eq!(names(got), names(want), "{what}: tensor names");
    assert!(!got.weights.tensors.is_empty());
    for (name, g) in &got.weights.tensors {
        let w = &want.weights.tensors[name];
        assert_eq!((g.dtype, &g.shape), (w.dtype, &w.shape), "{what}: {name}");
        let (gv, wv) = (g.to_f32_vec().unwrap(), w.to_f32_vec().unwrap());
        assert!(
            gv.iter().zip(&wv).all(|(a, b)| a.to_bits() == b.to_bits()),
            "{what}: {name} values differ"
        );
        assert!(gv.iter().any(|v| *v != 0.0), "{what}: {name} is all zeros");
    }
}

#[test]
fn huge_counts_do_not_allocate() {
    // A header claiming 2^60 metadata entries / an array of 2^60 strings must fail fast.
    let mut b = b"GGUF".to_vec();
    b.extend(3u32.to_le_bytes());
    b.extend(0u64.to_le_bytes());
    b.extend(1u64.to_le_bytes());
    put_str(&mut b, "k");
    b.extend(9u32.to_le_bytes());
    b.extend(8u32.to_le_bytes());
    b.extend((1u64 << 60).to_le_bytes());
    let p = tmp("huge.gguf");
    std::fs::write(&p, &b).unwrap();
    let m = bad_weights_message(gguf::read_header(&p));
    assert!(m.contains("truncated"), "{m}");
}

#[test]
fn unknown_architecture_lists_supported() {
    let w = tiny_model("gpt-neox", false);
    match gguf::load(&w.write("arch.gguf"), false) {
        Err(Error::UnknownArchitecture { found, supported }) => {
            assert_eq!(found, "gpt-neox");
            assert!(supported.contains(&"qwen2") && supported.contains(&"llama"));
        }
        other => panic!("expected UnknownArchitecture, got {:?}", other.map(|_| ())),
    }
}

#[test]
fn unknown_pre_tokenizer_is_named() {
    let mut w = Writer::new("llama");
    w.llama_hparams("llama", 8, 16, 1, 2, 1)
        .gpt2_tokenizer("mystery-pre");
    let w2 = {
        let mut t = tiny_model("llama", true);
        t.kv = w.kv.clone();
        t.n_kv = w.n_kv;
        t
    };
    match gguf::load(&w2.write("pre.gguf"), false) {
        Err(Error::Tokenizer(m)) => assert!(m.contains("mystery-pre"), "{m}"),
        other => panic!("expected a tokenizer error, got {:?}", other.map(|_| ())),
    }
}

// ---- synthetic models ----------------------------------------------------------------------

fn rows_of(t: &minfer::WeightTensor) -> Vec<f32> {
    let v = t.to_f32_vec().unwrap();
    let cols = t.shape[1];
    v.chunks(cols).map(|r| r[0] / 100.0).collect()
}

#[test]
fn llama_names_shapes_and_qk_unpermutation() {
    let ck = gguf::load(&tiny_model("llama", true).write("llama.gguf"), false).unwrap();
    let w = &ck.weights;
    let q = w
        .get_shaped("model.layers.0.self_attn.q_proj.weight", &[8, 8])
        .unwrap();
    let k = w
        .get_shaped("model.layers.0.self_attn.k_proj.weight", &[4, 8])
        .unwrap();
    // After un-permutation row r is HF row r again.
    assert_eq!(rows_of(q), (0..8).map(|r| r as f32).collect::<Vec<_>>());
    assert_eq!(rows_of(k), (0..4).map(|r| r as f32).collect::<Vec<_>>());
    assert_eq!(k.to_f32_vec().unwrap()[8 + 3], 103.0); // row 1, column 3
    w.get_shaped("model.embed_tokens.weight", &[7, 8]).unwrap();
    w.get_shaped("model.layers.0.mlp.down_proj.weight", &[8, 16])
        .unwrap();
    w.get_shaped("model.layers.0.mlp.gate_proj.weight", &[16, 8])
        .unwrap();
    w.get_shaped("model.layers.0.self_attn.o_proj.weight", &[8, 8])
        .unwrap();
    w.get_shaped("model.layers.0.input_layernorm.weight", &[8])
        .unwrap();
    w.get_shaped("model.layers.0.post_attention_layernorm.weight", &[8])
        .unwrap();
    w.get_shaped("model.norm.weight", &[8]).unwrap();
    assert!(!w.contains("lm_head.weight"));
    assert_eq!(w.tensors.len(), 11);
    let c = &ck.config;
    assert_eq!(c["architectures"][0], "LlamaForCausalLM");
    assert_eq!(c["tie_word_embeddings"], true);
    assert_eq!(c["head_dim"], 4);
    assert_eq!(c["num_key_value_heads"], 1);
    assert_eq!(c["rms_norm_eps"], 1e-5);
    assert_eq!(c["vocab_size"], 7);
    assert_eq!(c["eos_token_id"], 0);
}

#[test]
fn qwen2_is_not_unpermuted() {
    let ck = gguf::load(&tiny_model("qwen2", false).write("qwen2.gguf"), false).unwrap();
    let q = ck
        .weights
        .get("model.layers.0.self_attn.q_proj.weight")
        .unwrap();
    assert_eq!(rows_of(q), (0..8).map(|r| r as f32).collect::<Vec<_>>());
    assert_eq!(ck.config["architectures"][0], "Qwen2ForCausalLM");
}

#[test]
fn gpt2_tokenizer_json() {
    let ck = gguf::load(&tiny_model("llama", true).write("tok.gguf"), false).unwrap();
    let t = &ck.tokenizer_json;
    assert_eq!(t["model"]["type"], "BPE");
    assert_eq!(t["model"]["vocab"]["Ġab"], 5);
    assert_eq!(t["model"]["merges"][1], serde_json::json!(["Ġ", "ab"]));
    assert_eq!(t["pre_tokenizer"]["pretokenizers"][0]["type"], "Digits");
    assert_eq!(
        t["pre_tokenizer"]["pretokenizers"][0]["individual_digits"],
        true
    );
    assert_eq!(t["pre_tokenizer"]["pretokenizers"][1]["type"], "ByteLevel");
    let added = t["added_tokens"].as_array().unwrap();
    assert_eq!(added.len(), 2);
    assert_eq!(
        (added[0]["content"].as_str(), added[0]["special"].as_bool()),
        (Some("<|endoftext|>"), Some(true))
    );
    assert_eq!(
        (added[1]["content"].as_str(), added[1]["special"].as_bool()),
        (Some("<think>"), Some(false))
    );
    assert_eq!(ck.tokenizer_config["eos_token"], "<|endoftext|>");
    assert_eq!(ck.tokenizer_config["add_bos_token"], false);
}

#[test]
fn keep_quantized_permutes_whole_block_rows() {
    // k_proj in Q8_0: 4 rows of 32 (one block per row), permuted for 1 kv head.
    let mut w = tiny_model("llama", true);
    w.tensors.retain(|t| t.name != "blk.0.attn_k.weight");
    // HF rows r = 0..4 with values r + small; quantize each row, then permute whole rows.
    let hf_rows: Vec<Vec<f32>> = (0..4)
        .map(|r| (0..32).map(|c| r as f32 + c as f32 / 64.0).collect())
        .collect();
    let q_rows: Vec<Vec<u8>> = hf_rows
        .iter()
        .map(|r| quant::quantize_q8_0_reference(r).unwrap())
        .collect();
    let perm_order = [0usize, 2, 1, 3]; // GGUF row 2i+j = HF row j·2+i for d=4
    let data: Vec<u8> = perm_order.iter().flat_map(|&r| q_rows[r].clone()).collect();
    w.raw_tensor("blk.0.attn_k.weight", &[32, 4], 8, data);
    // The model's hidden size is 8, which this k does not match, but the loader does not
    // check shapes against the config (the model does), so this isolates the permutation.
    let p = w.write("kq.gguf");
    let quantized = gguf::load(&p, true).unwrap();
    let k = quantized
        .weights
        .get("model.layers.0.self_attn.k_proj.weight")
        .unwrap();
    assert_eq!(k.dtype, DType::Q8_0);
    assert_eq!(k.shape, vec![4, 32]);
    let want: Vec<u8> = q_rows.concat();
    assert_eq!(k.bytes(), &want[..]);
    // F32 tensors stay mapped and typed.
    let e = quantized.weights.get("model.embed_tokens.weight").unwrap();
    assert_eq!(e.dtype, DType::F32);
    assert!(e.as_f32().is_some());
    // And the dequantized load agrees with dequantizing the kept blocks.
    let dense = gguf::load(&p, false).unwrap();
    let kd = dense
        .weights
        .get("model.layers.0.self_attn.k_proj.weight")
        .unwrap();
    assert_eq!(kd.dtype, DType::F32);
    assert_eq!(
        kd.to_f32_vec().unwrap(),
        quant::dequantize_to_vec(DType::Q8_0, k.bytes(), 128).unwrap()
    );
}

// ---- files written by gguf-py ----------------------------------------------------------------

fn json_file(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture(name)).unwrap()).unwrap()
}

#[test]
fn reads_every_metadata_type_written_by_gguf_py() {
    let f = gguf::read_header(&fixture("tiny-llama.gguf")).unwrap();
    assert_eq!(f.version, 3);
    let m = &f.metadata;
    assert_eq!(m["test.u8"], GgufValue::U8(200));
    assert_eq!(m["test.i8"], GgufValue::I8(-100));
    assert_eq!(m["test.u16"], GgufValue::U16(60000));
    assert_eq!(m["test.i16"], GgufValue::I16(-30000));
    assert_eq!(m["test.i32"], GgufValue::I32(-2000000000));
    assert_eq!(m["test.u64"], GgufValue::U64((1 << 40) + 3));
    assert_eq!(m["test.i64"], GgufValue::I64(-(1 << 40)));
    assert_eq!(m["test.f64"], GgufValue::F64(0.125));
    assert_eq!(m["test.bool"], GgufValue::Bool(true));
    let s: Vec<&str> = m["test.strings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(s, ["x", "", "é中"]);
    assert_eq!(m["llama.block_count"].as_u64(), Some(2));
    assert_eq!(f.tensors.len(), 2 * 9 + 3);
}

#[test]
fn gguf_py_file_loads_to_its_hf_tensors() {
    let expected = json_file("tiny-llama.expected.json");
    for keep in [false, true] {
        let ck = gguf::load(&fixture("tiny-llama.gguf"), keep).unwrap();
        assert_eq!(
            ck.weights.tensors.len(),
            expected.as_object().unwrap().len()
        );
        for (name, e) in expected.as_object().unwrap() {
            let t = ck.weights.get(name).unwrap();
            let shape: Vec<usize> = e["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as usize)
                .collect();
            assert_eq!(t.shape, shape, "{name}");
            let v = if t.dtype.is_quantized() {
                quant::dequantize_to_vec(t.dtype, t.bytes(), t.numel()).unwrap()
            } else {
                t.to_f32_vec().unwrap()
            };
            let first: Vec<f32> = e["first"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap() as f32)
                .collect();
            assert_eq!(
                &v[..first.len()],
                &first[..],
                "{name} (keep_quantized={keep})"
            );
            if shape.len() == 2 {
                let row1: Vec<f32> = e["row1"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_f64().unwrap() as f32)
                    .collect();
                assert_eq!(
                    &v[shape[1]..shape[1] + row1.len()],
                    &row1[..],
                    "{name} row 1"
                );
            }
            // The sum was taken in f64 over the same f32 values: only summation order differs.
            let sum: f64 = v.iter().map(|&x| x as f64).sum();
            assert!(
                (sum - e["sum"].as_f64().unwrap()).abs() < 1e-9 * v.len() as f64,
                "{name}"
            );
        }
        assert_eq!(ck.config["num_hidden_layers"], 2);
        assert_eq!(ck.config["tie_word_embeddings"], false);
        assert_eq!(
            ck.tokenizer_config["chat_template"],
            "{{ messages[0]['content'] }}"
        );
        assert_eq!(ck.tokenizer_config["add_bos_token"], true);
    }
}

#[test]
fn sentencepiece_tokenizer_matches_transformers() {
    let ck = gguf::load(&fixture("tiny-llama.gguf"), false).unwrap();
    let ours = &ck.tokenizer_json;
    let theirs = json_file("tiny-llama.transformers-tokenizer.json");
    for key in ["merges", "vocab", "fuse_unk", "byte_fallback", "type"] {
        assert_eq!(ours["model"][key], theirs["model"][key], "model.{key}");
    }
    for key in ["added_tokens", "normalizer", "pre_tokenizer", "decoder"] {
        assert_eq!(ours[key], theirs[key], "{key}");
    }
    // transformers' GGUF path adds BOS in its Python wrapper (add_bos_token) and leaves the
    // post-processor empty; a real Llama tokenizer.json adds it in the post-processor, as ours.
    assert_eq!(
        ours["post_processor"]["single"][0]["SpecialToken"]["id"],
        "<s>"
    );
    assert_eq!(ours["post_processor"]["special_tokens"]["<s>"]["ids"][0], 1);
    // transformers leaves the BPE unk_token unset; a real Llama tokenizer.json names it.
    assert_eq!(ours["model"]["unk_token"], "<unk>");
}

// ---- quant reference vs gguf-py --------------------------------------------------------------

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn dequantize_matches_gguf_py_bit_for_bit() {
    let fx = json_file("quant_blocks.json");
    for (name, dtype) in [
        ("q8_0", DType::Q8_0),
        ("q4_0", DType::Q4_0),
        ("q4_1", DType::Q4_1),
        ("q4_k", DType::Q4K),
        ("q5_k", DType::Q5K),
        ("q6_k", DType::Q6K),
        ("f16", DType::F16),
        ("bf16", DType::BF16),
    ] {
        let case = &fx[name];
        let bytes: Vec<u8> = case["blocks"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|b| unhex(b.as_str().unwrap()))
            .collect();
        let want: Vec<f32> = case["expected"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        let got = quant::dequantize_to_vec(dtype, &bytes, want.len()).unwrap();
        // Same operations in the same order in f32 as gguf-py's numpy code: exact equality.
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(g.to_bits(), w.to_bits(), "{name}[{i}]: {g} vs {w}");
        }
    }
}

// ---- the real model ---------------------------------------------------------------------------

#[test]
fn real_smollm2_loads() {
    let Some(path) = common::real_model() else {
        return; // MINFER_ALLOW_SKIP=1 and no model: listed as skipped
    };
    let t0 = std::time::Instant::now();
    let header = gguf::read_header(&path).unwrap();
    assert_eq!(header.tensors.len(), 272);
    let ck = gguf::load(&path, false).unwrap();
    eprintln!("loaded and dequantized in {:?}", t0.elapsed());
    let c = &ck.config;
    assert_eq!(c["num_hidden_layers"], 30);
    assert_eq!(c["hidden_size"], 576);
    assert_eq!(c["num_attention_heads"], 9);
    assert_eq!(c["num_key_value_heads"], 3);
    assert_eq!(c["vocab_size"], 49152);
    assert_eq!(c["intermediate_size"], 1536);
    assert_eq!(c["tie_word_embeddings"], true);
    assert_eq!(c["rope_theta"], 100000.0);
    ck.weights
        .get_shaped("model.embed_tokens.weight", &[49152, 576])
        .unwrap();
    ck.weights
        .get_shaped("model.layers.29.self_attn.k_proj.weight", &[192, 576])
        .unwrap();
    assert_eq!(ck.weights.tensors.len(), 272);
    let tok = &ck.tokenizer_json;
    assert_eq!(tok["model"]["vocab"].as_object().unwrap().len(), 49152);
    assert_eq!(tok["model"]["merges"].as_array().unwrap().len(), 48900);
    assert_eq!(tok["added_tokens"].as_array().unwrap().len(), 17);
    assert!(ck.tokenizer_config["chat_template"]
        .as_str()
        .unwrap()
        .contains("<|im_start|>"));
    // The tokenizer.json the reference fixture holds (SmolLM2's own pre-tokenizer, with the
    // Digits step transformers' GGUF conversion drops).
    let reference =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/real/smollm2_tokenizer.json");
    let r: Value = serde_json::from_str(&std::fs::read_to_string(&reference).unwrap()).unwrap();
    same_tokenizer(tok, &r);
    let quantized = gguf::load(&path, true).unwrap();
    assert_eq!(
        quantized
            .weights
            .get("model.layers.0.mlp.up_proj.weight")
            .unwrap()
            .dtype,
        DType::Q4_1
    );
    assert_eq!(
        quantized
            .weights
            .get("model.embed_tokens.weight")
            .unwrap()
            .dtype,
        DType::Q8_0
    );
}

// ---- convert -------------------------------------------------------------------------------------

#[test]
fn convert_round_trips_through_safetensors() {
    use minfer::internals::safetensors;
    use minfer::ModelConfig;
    let src = fixture("tiny-llama.gguf");
    let ck = gguf::load(&src, false).unwrap();
    for (dtype, name) in [(DType::F32, "conv-f32"), (DType::BF16, "conv-bf16")] {
        let out = tmp(name);
        minfer::gguf_to_hf(&src, &out, dtype).unwrap();
        let cfg = ModelConfig::from_file(&out.join("config.json")).unwrap();
        assert_eq!(
            (cfg.num_layers, cfg.hidden_size, cfg.num_kv_heads),
            (2, 32, 2)
        );
        let w = safetensors::load(&out).unwrap();
        assert_eq!(w.tensors.len(), ck.weights.tensors.len());
        for (n, t) in &ck.weights.tensors {
            let c = w.get(n).unwrap();
            assert_eq!(c.shape, t.shape, "{n}");
            assert_eq!(c.dtype, dtype, "{n}");
            let want: Vec<f32> = t.to_f32_vec().unwrap();
            let got = c.to_f32_vec().unwrap();
            for (g, v) in got.iter().zip(&want) {
                // f32 is copied exactly; bf16 is the round-to-nearest-even of the same value.
                let v = if dtype == DType::BF16 {
                    half::bf16::from_f32(*v).to_f32()
                } else {
                    *v
                };
                assert_eq!(g.to_bits(), v.to_bits(), "{n}");
            }
        }
        let tok: Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("tokenizer.json")).unwrap())
                .unwrap();
        assert_eq!(tok, ck.tokenizer_json);
        let tc: Value = serde_json::from_str(
            &std::fs::read_to_string(out.join("tokenizer_config.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(tc["chat_template"], "{{ messages[0]['content'] }}");
        let gc: Value = serde_json::from_str(
            &std::fs::read_to_string(out.join("generation_config.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(gc["eos_token_id"], 2);
        let a = minfer::inspect::inspect(&out).unwrap();
        let b = minfer::inspect::inspect(&src).unwrap();
        assert_eq!(a.parameters, b.parameters);
    }
    assert!(matches!(
        minfer::gguf_to_hf(&src, &tmp("conv-q8"), DType::Q8_0),
        Err(Error::InvalidOption { field: "dtype", .. })
    ));
}

/// Two tokenizer.json files that tokenize identically: same vocabulary, merges (either
/// serialization: "a b" or ["a", "b"]), added tokens, normalizer, pre-tokenizer and decoder.
fn same_tokenizer(ours: &Value, theirs: &Value) {
    let merges = |v: &Value| -> Vec<String> {
        v["model"]["merges"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| match m {
                Value::String(s) => s.clone(),
                Value::Array(p) => format!("{} {}", p[0].as_str().unwrap(), p[1].as_str().unwrap()),
                other => panic!("merge {other}"),
            })
            .collect()
    };
    assert_eq!(ours["model"]["vocab"], theirs["model"]["vocab"], "vocab");
    assert!(merges(ours) == merges(theirs), "merges differ");
    for key in ["added_tokens", "normalizer", "pre_tokenizer", "decoder"] {
        assert_eq!(ours[key], theirs[key], "{key}");
    }
    for key in ["type", "byte_fallback", "fuse_unk", "ignore_merges"] {
        assert_eq!(ours["model"][key], theirs["model"][key], "model.{key}");
    }
}

#[test]
fn end_of_turn_token_joins_eos_in_generation_config() {
    let ck = gguf::load(&tiny_model("llama", true).write("noeot.gguf"), false).unwrap();
    assert_eq!(ck.generation_config["eos_token_id"], 0);
    let mut w = tiny_model("llama", true);
    w.u32("tokenizer.ggml.eot_token_id", 6);
    let ck = gguf::load(&w.write("eot.gguf"), false).unwrap();
    assert_eq!(
        ck.generation_config["eos_token_id"],
        serde_json::json!([0, 6])
    );
    assert_eq!(ck.tokenizer_config["eot_token"], "<think>");
}

/// splitmix64, for deterministic corruption.
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[test]
fn corrupted_files_error_and_never_panic() {
    // Flip bytes of the gguf-py file (mostly in the header, where the structure is) and load
    // every result both ways: each must be Ok or a typed error, never a panic or an abort.
    let original = std::fs::read(fixture("tiny-llama.gguf")).unwrap();
    let header_len = gguf::read_header(&fixture("tiny-llama.gguf"))
        .unwrap()
        .data_offset as usize;
    let mut rng = 20261128u64;
    let p = tmp("corrupt.gguf");
    let mut errors = 0;
    for round in 0..400 {
        let mut bytes = original.clone();
        for _ in 0..1 + round % 4 {
            let at = (splitmix(&mut rng) as usize) % header_len;
            bytes[at] = match splitmix(&mut rng) % 4 {
                0 => 0xFF,
                1 => 0,
                2 => bytes[at] ^ (1 << (splitmix(&mut rng) % 8)),
                _ => splitmix(&mut rng) as u8,
            };
        }
        std::fs::write(&p, &bytes).unwrap();
        if gguf::read_header(&p).is_err() {
            errors += 1;
        }
        let _ = gguf::load(&p, false);
        let _ = gguf::load(&p, true);
        let _ = minfer::inspect::inspect(&p);
    }
    // Most corruptions of a header are detected; some (a byte of a float, a character of a
    // string) are legal values.
    assert!(errors > 50, "only {errors} of 400 corruptions detected");
}

#[test]
fn version_2_reads_like_version_3() {
    let mut w = tiny_model("qwen2", false);
    w.version = 2;
    let f = gguf::read_header(&w.write("v2.gguf")).unwrap();
    assert_eq!(f.version, 2);
    let got = gguf::load(&w.write("v2.gguf"), false).unwrap();
    let want = gguf::load(&tiny_model("qwen2", false).write("v3.gguf"), false).unwrap();
    assert_eq!(
        gguf::read_header(&tiny_model("qwen2", false).write("v3.gguf"))
            .unwrap()
            .version,
        3
    );
    assert_same_checkpoint(&got, &want, "version 2 vs 3");
}

#[test]
fn llama31_rope_freqs_is_refused_by_load_but_inspected() {
    let mut w = tiny_model("llama", true);
    w.f32_tensor("rope_freqs.weight", &[2], &[1.0, 8.0]);
    let p = w.write("rope_freqs.gguf");
    let m = bad_weights_message(gguf::load(&p, false));
    assert!(m.contains("rope_freqs"), "{m}");
    let r = minfer::inspect::inspect(&p).unwrap();
    assert_eq!(r.breakdown.other, 2);
}

#[test]
fn sentencepiece_tokenizer_encodes_like_hf_tokenizers() {
    let ck = gguf::load(&fixture("tiny-llama.gguf"), false).unwrap();
    let tok = minfer::Tokenizer::from_json(&ck.tokenizer_json, Some(&ck.tokenizer_config)).unwrap();
    let cases = json_file("tiny-llama.encodings.json");
    for case in cases.as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let want: Vec<u32> = case["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(tok.encode(text, false).unwrap(), want, "{text:?}");
        // With special tokens, our post-processor adds BOS as a real Llama tokenizer.json does.
        let with_bos = tok.encode(text, true).unwrap();
        assert_eq!(with_bos[0], 1, "{text:?}");
        assert_eq!(&with_bos[1..], &want[..], "{text:?}");
    }
}
