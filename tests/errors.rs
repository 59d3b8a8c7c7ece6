//! Bad input gets a clear, specific error naming the file, tensor or argument — never a panic.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use minfer::{Error, GenerateOptions, LoadOptions, Model};
use serde_json::{json, Value};

/// A scratch copy of a fixture model that a test may corrupt.
struct Scratch(PathBuf);

impl Scratch {
    fn of(variant: &str, tag: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("minfer-errors-{}-{tag}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        for e in fs::read_dir(common::fixtures_dir().join(variant)).unwrap() {
            let p = e.unwrap().path();
            fs::copy(&p, dir.join(p.file_name().unwrap())).unwrap();
        }
        Scratch(dir)
    }
    fn path(&self, f: &str) -> PathBuf {
        self.0.join(f)
    }
    fn config(&self) -> Value {
        serde_json::from_str(&fs::read_to_string(self.path("config.json")).unwrap()).unwrap()
    }
    fn set_config(&self, v: &Value) {
        fs::write(
            self.path("config.json"),
            serde_json::to_string_pretty(v).unwrap(),
        )
        .unwrap();
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn load(dir: &Path) -> Result<Model, Error> {
    Model::load(
        dir,
        &LoadOptions {
            threads: 1,
            ..LoadOptions::default()
        },
    )
}

/// Rewrite model.safetensors with `edit` applied to its header JSON and `data` as the data.
fn rewrite_safetensors(path: &Path, edit: impl FnOnce(&mut Value), data_len: Option<usize>) {
    let bytes = fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let mut data = bytes[8 + n..].to_vec();
    edit(&mut header);
    if let Some(l) = data_len {
        data.truncate(l);
    }
    let h = serde_json::to_vec(&header).unwrap();
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&h);
    out.extend_from_slice(&data);
    fs::write(path, out).unwrap();
}

#[test]
fn missing_model_directory() {
    let e = load(Path::new("/nonexistent/minfer-model")).err().unwrap();
    assert!(matches!(e, Error::MissingFile { .. }), "{e}");
    assert!(e.to_string().contains("/nonexistent/minfer-model"));
}

#[test]
fn missing_config_json() {
    let s = Scratch::of("llama_mha_tied", "noconfig");
    fs::remove_file(s.path("config.json")).unwrap();
    let e = load(&s.0).err().unwrap();
    assert!(matches!(e, Error::MissingFile { .. }), "{e}");
    assert!(e.to_string().contains("config.json"), "{e}");
}

#[test]
fn missing_weights_file() {
    let s = Scratch::of("llama_mha_tied", "noweights");
    fs::remove_file(s.path("model.safetensors")).unwrap();
    let e = load(&s.0).err().unwrap();
    assert!(matches!(e, Error::MissingFile { .. }), "{e}");
    assert!(e.to_string().contains("model.safetensors"), "{e}");
}

#[test]
fn malformed_config_json() {
    let s = Scratch::of("llama_mha_tied", "badjson");
    fs::write(s.path("config.json"), "{ \"architectures\": [").unwrap();
    let e = load(&s.0).err().unwrap();
    assert!(matches!(e, Error::Json { .. }), "{e}");
    assert!(e.to_string().contains("config.json"), "{e}");
}

#[test]
fn config_missing_a_field() {
    let s = Scratch::of("llama_mha_tied", "nofield");
    let mut c = s.config();
    c.as_object_mut().unwrap().remove("hidden_size");
    s.set_config(&c);
    let e = load(&s.0).err().unwrap();
    assert!(
        matches!(e, Error::Json { .. }) && e.to_string().contains("hidden_size"),
        "{e}"
    );
}

#[test]
fn unknown_architecture_lists_the_supported_ones() {
    let s = Scratch::of("llama_mha_tied", "arch");
    let mut c = s.config();
    c["architectures"] = json!(["GPTNeoXForCausalLM"]);
    s.set_config(&c);
    let e = load(&s.0).err().unwrap();
    assert!(matches!(e, Error::UnknownArchitecture { .. }), "{e}");
    let m = e.to_string();
    assert!(
        m.contains("GPTNeoXForCausalLM")
            && m.contains("LlamaForCausalLM")
            && m.contains("Qwen3ForCausalLM"),
        "{m}"
    );
}

#[test]
fn missing_tensor_is_named() {
    let s = Scratch::of("llama_mha_tied", "missing");
    rewrite_safetensors(
        &s.path("model.safetensors"),
        |h| {
            // Renaming keeps the data layout valid while the model's tensor disappears.
            let t = h
                .as_object_mut()
                .unwrap()
                .remove("model.layers.1.mlp.up_proj.weight")
                .unwrap();
            h["model.layers.1.mlp.up_projection.weight"] = t;
        },
        None,
    );
    let e = load(&s.0).err().unwrap();
    assert!(matches!(e, Error::MissingTensor { .. }), "{e}");
    assert!(
        e.to_string().contains("model.layers.1.mlp.up_proj.weight"),
        "{e}"
    );
}

#[test]
fn wrong_shape_says_expected_and_got() {
    let s = Scratch::of("llama_mha_tied", "shape");
    let mut c = s.config();
    c["intermediate_size"] = json!(96);
    s.set_config(&c);
    let e = load(&s.0).err().unwrap();
    assert!(matches!(e, Error::ShapeMismatch { .. }), "{e}");
    let m = e.to_string();
    assert!(
        m.contains("gate_proj") && m.contains("[96, 64]") && m.contains("[128, 64]"),
        "{m}"
    );
}

#[test]
fn unsupported_dtype_is_named() {
    let s = Scratch::of("llama_mha_tied", "dtype");
    rewrite_safetensors(
        &s.path("model.safetensors"),
        |h| {
            // Same byte count: F32 [64] → I32 [64].
            h["model.norm.weight"]["dtype"] = json!("I32");
        },
        None,
    );
    let e = load(&s.0).err().unwrap();
    assert!(matches!(e, Error::UnsupportedDtype { .. }), "{e}");
    assert!(
        e.to_string().contains("model.norm.weight") && e.to_string().contains("I32"),
        "{e}"
    );
}

#[test]
fn offsets_past_the_end_of_the_file() {
    let s = Scratch::of("llama_mha_tied", "trunc");
    let len = fs::metadata(s.path("model.safetensors")).unwrap().len();
    // Cut the data region short: the last tensor's offsets now lie past the end.
    rewrite_safetensors(
        &s.path("model.safetensors"),
        |_| {},
        Some((len / 2) as usize),
    );
    let e = load(&s.0).err().unwrap();
    assert!(matches!(e, Error::BadWeights { .. }), "{e}");
    assert!(
        e.to_string().contains("past the end") && e.to_string().contains("model.safetensors"),
        "{e}"
    );
}

#[test]
fn header_length_past_the_end_and_tiny_files() {
    let s = Scratch::of("llama_mha_tied", "hdr");
    let p = s.path("model.safetensors");
    let mut bytes = fs::read(&p).unwrap();
    bytes[..8].copy_from_slice(&(1u64 << 40).to_le_bytes());
    fs::write(&p, &bytes).unwrap();
    let e = load(&s.0).err().unwrap();
    assert!(matches!(e, Error::BadWeights { .. }), "{e}");
    fs::write(&p, [1u8, 2, 3]).unwrap();
    let e = load(&s.0).err().unwrap();
    assert!(
        matches!(e, Error::BadWeights { .. }) && e.to_string().contains("too short"),
        "{e}"
    );
    fs::write(&p, [2u8, 0, 0, 0, 0, 0, 0, 0, b'{', b'x']).unwrap();
    let e = load(&s.0).err().unwrap();
    assert!(
        matches!(e, Error::BadWeights { .. }) && e.to_string().contains("JSON"),
        "{e}"
    );
}

#[test]
fn shape_and_offsets_disagree() {
    let s = Scratch::of("llama_mha_tied", "span");
    rewrite_safetensors(
        &s.path("model.safetensors"),
        |h| h["model.norm.weight"]["shape"] = json!([65]),
        None,
    );
    let e = load(&s.0).err().unwrap();
    assert!(
        matches!(e, Error::BadWeights { .. }) && e.to_string().contains("model.norm.weight"),
        "{e}"
    );
}

#[test]
fn shard_index_naming_a_missing_shard() {
    let s = Scratch::of("llama_sharded", "shard");
    let files: Vec<_> = fs::read_dir(&s.0)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let shard = files
        .iter()
        .find(|p| p.to_string_lossy().contains("-of-"))
        .unwrap();
    fs::remove_file(shard).unwrap();
    let e = load(&s.0).err().unwrap();
    assert!(matches!(e, Error::MissingFile { .. }), "{e}");
}

#[test]
fn token_ids_out_of_range_and_prompts_too_long() {
    let dir = common::fixtures_dir().join("llama_mha_tied");
    let mut m = Model::load(
        &dir,
        &LoadOptions {
            threads: 1,
            context_len: Some(16),
            ..LoadOptions::default()
        },
    )
    .unwrap();
    let opts = GenerateOptions {
        max_new_tokens: 2,
        ..Default::default()
    };
    let e = m.generate(&[1, 256, 3], &opts, |_| true).err().unwrap();
    assert!(
        matches!(e, Error::InvalidArgument(_)) && e.to_string().contains("256"),
        "{e}"
    );
    let long: Vec<u32> = (0..16).collect();
    let e = m.generate(&long, &opts, |_| true).err().unwrap();
    assert!(
        matches!(e, Error::InvalidArgument(_)) && e.to_string().contains("context"),
        "{e}"
    );
    let e = m.generate(&[], &opts, |_| true).err().unwrap();
    assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
    // The model is still usable after the errors.
    let mut n = 0;
    m.generate(&[1, 2, 3], &opts, |_| {
        n += 1;
        true
    })
    .unwrap();
    assert_eq!(n, 2);
}

#[test]
fn generation_stops_at_the_context_end() {
    let dir = common::fixtures_dir().join("llama_mha_tied");
    let mut m = Model::load(
        &dir,
        &LoadOptions {
            threads: 1,
            context_len: Some(8),
            ..LoadOptions::default()
        },
    )
    .unwrap();
    let opts = GenerateOptions {
        max_new_tokens: 100,
        ignore_eos: true,
        ..Default::default()
    };
    let stats = m.generate(&[1, 2, 3], &opts, |_| true).unwrap();
    assert_eq!(stats.stop, minfer::StopReason::ContextFull);
    assert_eq!(stats.generated_tokens, 6); // positions 3..8 computed, one more token chosen
}

#[test]
fn zero_new_tokens_generates_nothing() {
    let dir = common::fixtures_dir().join("llama_mha_tied");
    let mut m = Model::load(
        &dir,
        &LoadOptions {
            threads: 1,
            ..LoadOptions::default()
        },
    )
    .unwrap();
    let opts = GenerateOptions {
        max_new_tokens: 0,
        ..Default::default()
    };
    let stats = m
        .generate(&[1, 2, 3], &opts, |_| panic!("no token expected"))
        .unwrap();
    assert_eq!(
        (stats.generated_tokens, stats.stop),
        (0, minfer::StopReason::MaxTokens)
    );
}

/// A context longer than the model was trained for is refused, naming the option and the limit.
#[test]
fn context_len_above_the_models_maximum_is_an_error() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/models/llama_gqa_untied");
    let opts = LoadOptions {
        context_len: Some(257),
        device: minfer::Device::Cpu,
        ..LoadOptions::default()
    };
    match Model::load(&dir, &opts) {
        Err(Error::InvalidOption {
            field,
            value,
            reason,
        }) => {
            assert_eq!(field, "context_len");
            assert_eq!(value, "257");
            assert!(reason.contains("256"), "{reason}");
        }
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("a 257-position context on a 256-position model was accepted"),
    }
    let ok = LoadOptions {
        context_len: Some(256),
        ..opts
    };
    // The limit itself is accepted, and the cache really has that many positions.
    let m = Model::load(&dir, &ok).unwrap();
    assert_eq!(m.context_len(), 256);
}
