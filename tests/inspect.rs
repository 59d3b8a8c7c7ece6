//! `inspect` tests: exact parameter counts for the tiny fixtures (against transformers' own
//! count) and for header-only checkpoints with the published shapes of real models, whose data
//! regions are sparse files so nothing is allocated or read.

mod common;

use std::path::{Path, PathBuf};
use std::time::Instant;

use minfer::inspect::{self, human_count};
use serde_json::{json, Value};

fn tmp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir()
        .join(format!("minfer-inspect-{}", std::process::id()))
        .join(name);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn bytes_per(dtype: &str) -> u64 {
    match dtype {
        "F32" => 4,
        "BF16" | "F16" => 2,
        _ => panic!("{dtype}"),
    }
}

/// A real safetensors header for `tensors`; the data region exists only as a sparse hole.
fn write_header_only(path: &Path, tensors: &[(String, Vec<u64>)], dtype: &str) {
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), json!({"format": "pt"}));
    let mut off = 0u64;
    for (name, shape) in tensors {
        let n = shape.iter().product::<u64>() * bytes_per(dtype);
        header.insert(
            name.clone(),
            json!({"dtype": dtype, "shape": shape, "data_offsets": [off, off + n]}),
        );
        off += n;
    }
    let mut text = serde_json::to_string(&Value::Object(header)).unwrap();
    while !(8 + text.len()).is_multiple_of(8) {
        text.push(' ');
    }
    let mut bytes = (text.len() as u64).to_le_bytes().to_vec();
    bytes.extend(text.as_bytes());
    std::fs::write(path, &bytes).unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.set_len(bytes.len() as u64 + off).unwrap();
}

struct Shapes {
    arch: &'static str,
    hidden: u64,
    inter: u64,
    layers: u64,
    heads: u64,
    kv: u64,
    vocab: u64,
    ctx: u64,
    tied: bool,
    qkv_bias: bool,
}

/// The tensors of a llama-family checkpoint, named as Hugging Face names them.
fn tensors(s: &Shapes) -> Vec<(String, Vec<u64>)> {
    let hd = s.hidden / s.heads;
    let mut t = vec![(
        "model.embed_tokens.weight".to_string(),
        vec![s.vocab, s.hidden],
    )];
    for i in 0..s.layers {
        let p = format!("model.layers.{i}.");
        let mut add = |n: &str, shape: Vec<u64>| t.push((format!("{p}{n}"), shape));
        add("input_layernorm.weight", vec![s.hidden]);
        add("post_attention_layernorm.weight", vec![s.hidden]);
        add("self_attn.q_proj.weight", vec![s.heads * hd, s.hidden]);
        add("self_attn.k_proj.weight", vec![s.kv * hd, s.hidden]);
        add("self_attn.v_proj.weight", vec![s.kv * hd, s.hidden]);
        add("self_attn.o_proj.weight", vec![s.hidden, s.heads * hd]);
        if s.qkv_bias {
            add("self_attn.q_proj.bias", vec![s.heads * hd]);
            add("self_attn.k_proj.bias", vec![s.kv * hd]);
            add("self_attn.v_proj.bias", vec![s.kv * hd]);
        }
        add("mlp.gate_proj.weight", vec![s.inter, s.hidden]);
        add("mlp.up_proj.weight", vec![s.inter, s.hidden]);
        add("mlp.down_proj.weight", vec![s.hidden, s.inter]);
    }
    t.push(("model.norm.weight".into(), vec![s.hidden]));
    if !s.tied {
        t.push(("lm_head.weight".into(), vec![s.vocab, s.hidden]));
    }
    t
}

fn config(s: &Shapes) -> Value {
    json!({
        "architectures": [s.arch],
        "hidden_size": s.hidden, "intermediate_size": s.inter, "num_hidden_layers": s.layers,
        "num_attention_heads": s.heads, "num_key_value_heads": s.kv, "vocab_size": s.vocab,
        "max_position_embeddings": s.ctx, "tie_word_embeddings": s.tied, "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0, "torch_dtype": "bfloat16"
    })
}

/// Write the checkpoint as `shards` files (with an index when more than one).
fn header_only_checkpoint(name: &str, s: &Shapes, shards: usize) -> PathBuf {
    let dir = tmp_dir(name);
    std::fs::write(dir.join("config.json"), config(s).to_string()).unwrap();
    let all = tensors(s);
    if shards == 1 {
        write_header_only(&dir.join("model.safetensors"), &all, "BF16");
    } else {
        let per = all.len().div_ceil(shards);
        let mut weight_map = serde_json::Map::new();
        for (k, chunk) in all.chunks(per).enumerate() {
            let file = format!("model-{:05}-of-{shards:05}.safetensors", k + 1);
            write_header_only(&dir.join(&file), chunk, "BF16");
            for (n, _) in chunk {
                weight_map.insert(n.clone(), json!(file));
            }
        }
        std::fs::write(
            dir.join("model.safetensors.index.json"),
            json!({"metadata": {}, "weight_map": weight_map}).to_string(),
        )
        .unwrap();
    }
    dir
}

fn check_published(name: &str, s: Shapes, shards: usize, published: u64, human: &str) {
    let dir = header_only_checkpoint(name, &s, shards);
    let t0 = Instant::now();
    let r = inspect::inspect(&dir).unwrap();
    eprintln!("{name}: inspected in {:?}\n{r}", t0.elapsed());
    assert_eq!(r.parameters, published, "{name}");
    assert_eq!(r.parameters_human(), human, "{name}");
    assert_eq!(r.weight_bytes["bf16"], 2 * published, "{name}");
    // The sparse data region is part of the file sizes, so they exceed the weights only by
    // the headers.
    assert!(r.file_bytes > 2 * published && r.file_bytes < 2 * published + (1 << 20));
    let b = &r.breakdown;
    assert_eq!(
        b.embeddings + b.attention + b.mlp + b.norms + b.lm_head + b.other,
        published
    );
    assert_eq!(b.embeddings, s.vocab * s.hidden);
    assert_eq!(b.lm_head, if s.tied { 0 } else { s.vocab * s.hidden });
    assert_eq!(b.mlp, 3 * s.layers * s.hidden * s.inter);
    assert_eq!(b.norms, (2 * s.layers + 1) * s.hidden);
    assert_eq!(b.other, 0);
    let hd = s.hidden / s.heads;
    assert_eq!(
        r.kv_cache_bytes_per_token(2),
        2 * s.layers * s.kv * hd * 2,
        "{name}"
    );
    let j = r.to_json();
    assert_eq!(j["parameters"], published);
    assert_eq!(j["parameters_human"], human);
    assert_eq!(
        j["kv_cache_bytes_per_token"]["bf16"],
        2 * s.layers * s.kv * hd * 2
    );
    assert_eq!(j["architecture"], s.arch);
    assert_eq!(j["memory_bytes"]["bf16"], 2 * published);
    assert_eq!(j["memory_bytes"]["f32"], 4 * published);
    assert_eq!(j["memory_bytes"]["int8"], (published * 34).div_ceil(32));
    assert_eq!(j["memory_bytes"]["q4"], (published * 18).div_ceil(32));
    let text = r.to_string();
    assert!(text.contains(human) && text.contains(&inspect::group_digits(published)));
}

#[test]
fn deepseek_r1_distill_qwen_1_5b() {
    // config.json of deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B (untied, q/k/v biases).
    let s = Shapes {
        arch: "Qwen2ForCausalLM",
        hidden: 1536,
        inter: 8960,
        layers: 28,
        heads: 12,
        kv: 2,
        vocab: 151936,
        ctx: 131072,
        tied: false,
        qkv_bias: true,
    };
    check_published("ds-1.5b", s, 1, 1_777_088_000, "1.8B");
}

#[test]
fn deepseek_r1_distill_qwen_7b_sharded() {
    let s = Shapes {
        arch: "Qwen2ForCausalLM",
        hidden: 3584,
        inter: 18944,
        layers: 28,
        heads: 28,
        kv: 4,
        vocab: 152064,
        ctx: 131072,
        tied: false,
        qkv_bias: true,
    };
    check_published("ds-7b", s, 2, 7_615_616_512, "7.6B");
}

#[test]
fn deepseek_r1_distill_qwen_14b_sharded() {
    let s = Shapes {
        arch: "Qwen2ForCausalLM",
        hidden: 5120,
        inter: 13824,
        layers: 48,
        heads: 40,
        kv: 8,
        vocab: 152064,
        ctx: 131072,
        tied: false,
        qkv_bias: true,
    };
    check_published("ds-14b", s, 4, 14_770_033_664, "14.8B");
}

#[test]
fn meta_llama_3_8b() {
    let s = Shapes {
        arch: "LlamaForCausalLM",
        hidden: 4096,
        inter: 14336,
        layers: 32,
        heads: 32,
        kv: 8,
        vocab: 128256,
        ctx: 8192,
        tied: false,
        qkv_bias: false,
    };
    check_published("llama3-8b", s, 4, 8_030_261_248, "8.0B");
    // Llama 3 8B's KV cache: 2 × 32 layers × 8 kv heads × 128 × 2 bytes = 128 KiB per token.
    let r = inspect::inspect(&tmp_dir("llama3-8b")).unwrap();
    assert_eq!(r.kv_cache_bytes_per_token(2), 131_072);
    assert_eq!(r.kv_cache_bytes_per_token(2) * 8192, 1 << 30);
}

#[test]
fn tied_lm_head_stored_anyway_counts_once() {
    let s = Shapes {
        arch: "LlamaForCausalLM",
        hidden: 64,
        inter: 128,
        layers: 2,
        heads: 4,
        kv: 2,
        vocab: 100,
        ctx: 256,
        tied: true,
        qkv_bias: false,
    };
    let dir = tmp_dir("tied-stored");
    std::fs::write(dir.join("config.json"), config(&s).to_string()).unwrap();
    let mut t = tensors(&s);
    t.push(("lm_head.weight".into(), vec![100, 64]));
    write_header_only(&dir.join("model.safetensors"), &t, "F32");
    let r = inspect::inspect(&dir).unwrap();
    // embed 6400 + layers 2 × (norms 128 + q 4096 + k 2048 + v 2048 + o 4096 + mlp 24576) + norm 64
    assert_eq!(
        r.parameters,
        6400 + 2 * (128 + 4096 + 2048 + 2048 + 4096 + 24576) + 64
    );
    assert_eq!(r.breakdown.lm_head, 0);
    // The stored copy is still on disk.
    assert_eq!(r.weight_bytes["f32"], 4 * (r.parameters + 6400));
    // A single .safetensors file with config.json beside it works too.
    let r2 = inspect::inspect(&dir.join("model.safetensors")).unwrap();
    assert_eq!(r2.parameters, r.parameters);
}

#[test]
fn tiny_fixtures_match_transformers_counts() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models");
    let mut checked = 0;
    for entry in std::fs::read_dir(&root).unwrap() {
        let dir = entry.unwrap().path();
        let Ok(text) = std::fs::read_to_string(dir.join("expected.json")) else {
            continue;
        };
        let expected: Value = serde_json::from_str(&text).unwrap();
        let r = inspect::inspect(&dir).unwrap();
        // transformers' sum over named_parameters(), which counts tied embeddings once.
        assert_eq!(
            r.parameters,
            expected["num_parameters"].as_u64().unwrap(),
            "{}",
            dir.display()
        );
        assert_eq!(r.to_json()["architecture"], expected["architecture"]);
        checked += 1;
    }
    assert!(
        checked >= 5,
        "only {checked} fixtures found under {}",
        root.display()
    );
}

#[test]
fn gguf_fixture_counts() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gguf/tiny-llama.gguf");
    let r = inspect::inspect(&path).unwrap();
    // vocab 40 × hidden 32, untied; 2 layers of norms 64, q 1024, k 512, v 512, o 1024, mlp 6144.
    assert_eq!(
        r.parameters,
        1280 + 1280 + 32 + 2 * (64 + 1024 + 512 + 512 + 1024 + 6144)
    );
    assert_eq!(r.format, "gguf");
    assert_eq!(r.breakdown.lm_head, 1280);
    // Stored dtypes as the fixture script wrote them: Q8_0 for k and the MLP, F16 for v.
    assert_eq!(r.parameters_by_dtype["q8_0"], 2 * (512 + 6144));
    assert_eq!(r.weight_bytes["q8_0"], 2 * (512 + 6144) / 32 * 34);
    assert_eq!(r.weight_bytes["f16"], 2 * 512 * 2);
    assert_eq!(r.to_json()["architecture"], "LlamaForCausalLM");
}

#[test]
fn real_smollm2() {
    let Some(path) = common::real_model() else {
        return; // MINFER_ALLOW_SKIP=1 and no model: listed as skipped
    };
    let t0 = Instant::now();
    let r = inspect::inspect(&path).unwrap();
    eprintln!("SmolLM2 GGUF inspected in {:?}\n{r}", t0.elapsed());
    assert_eq!(r.parameters, 134_515_008);
    assert_eq!(r.parameters_human(), "135M");
    assert_eq!(r.breakdown.lm_head, 0);
    // 2 × 30 layers × 3 kv heads × 64 × 4 bytes.
    assert_eq!(r.kv_cache_bytes_per_token(4), 46_080);
}

#[test]
fn human_counts() {
    assert_eq!(human_count(134_515_008), "135M");
    assert_eq!(human_count(494_032_768), "494M");
    assert_eq!(human_count(7_615_616_512), "7.6B");
    assert_eq!(human_count(70_553_706_496), "70.6B");
    assert_eq!(human_count(999), "999");
}

#[test]
fn missing_config_is_named() {
    let dir = tmp_dir("no-config");
    write_header_only(
        &dir.join("model.safetensors"),
        &[("x".into(), vec![2])],
        "F32",
    );
    match inspect::inspect(&dir) {
        Err(minfer::Error::MissingFile { path, .. }) => assert!(path.ends_with("config.json")),
        other => panic!(
            "expected MissingFile, got {:?}",
            other.map(|r| r.parameters)
        ),
    }
}
