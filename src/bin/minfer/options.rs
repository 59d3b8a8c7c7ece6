//! From parsed arguments to the library's option structs, and loading a model with the checks
//! that belong to the command line (`--ctx` against the model's maximum).

use std::path::Path;

use minfer::{Device, GenerateOptions, LoadOptions, Model, SamplerConfig};

use crate::args::{GenArgs, LoadArgs, QuantizeTo, SamplingArgs};
use crate::{CliError, Res};

pub fn device(name: &str) -> Res<Device> {
    Ok(name.parse::<Device>()?)
}

pub fn load_options(a: &LoadArgs) -> Res<LoadOptions> {
    Ok(LoadOptions {
        device: device(&a.device)?,
        threads: a.threads,
        context_len: a.ctx,
        keep_quantized: !a.dequantize,
        quantize: a.quantize.map(QuantizeTo::dtype),
        ..LoadOptions::default()
    })
}

pub fn sampler_config(a: &SamplingArgs) -> SamplerConfig {
    let d = SamplerConfig::default();
    SamplerConfig {
        temperature: a.temperature.unwrap_or(d.temperature),
        top_k: a.top_k.unwrap_or(d.top_k),
        top_p: a.top_p.unwrap_or(d.top_p),
        min_p: a.min_p.unwrap_or(d.min_p),
        repetition_penalty: a.repeat_penalty.unwrap_or(d.repetition_penalty),
        seed: a.seed.unwrap_or(d.seed),
    }
}

pub fn generate_options(a: &GenArgs) -> GenerateOptions {
    GenerateOptions {
        max_new_tokens: a.max_new_tokens.unwrap_or(256),
        sampling: sampler_config(&a.sampling),
        stop_ids: a.stop.clone().map(|s| s.0).unwrap_or_default(),
        ignore_eos: a.ignore_eos,
    }
}

/// The model's maximum context (max_position_embeddings), from the file headers only.
pub fn max_context(path: &Path) -> Res<usize> {
    Ok(minfer::inspect::inspect(path)?
        .config
        .max_position_embeddings)
}

/// `--ctx N` above the model's maximum is an error.
pub fn check_ctx(ctx: Option<usize>, max: usize) -> Res {
    match ctx {
        Some(n) if n > max => Err(CliError::msg(
            format!("--ctx {n} is more than this model's maximum context of {max} tokens (max_position_embeddings)"),
            format!("pass --ctx {max} or less, or leave --ctx out (default: min({max}, 4096))"),
        )),
        Some(0) => Err(CliError::msg(
            "--ctx 0 leaves no room for any token",
            format!("pass --ctx between 1 and {max}"),
        )),
        _ => Ok(()),
    }
}

/// Load `path` with `lo`, first checking `--ctx` against the model's maximum (before the KV
/// cache is allocated for it).
pub fn load_model(path: &Path, lo: &LoadOptions) -> Res<Model> {
    if lo.context_len.is_some() {
        check_ctx(lo.context_len, max_context(path)?)?;
    }
    let model = Model::load(path, lo)?;
    check_ctx(lo.context_len, model.config().max_position_embeddings)?;
    Ok(model)
}
