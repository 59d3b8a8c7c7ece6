//! From parsed arguments to the library's option structs.

use std::path::Path;

use minfer::{Device, GenerateOptions, LoadOptions, SamplerConfig};

use crate::args::{GenArgs, LoadArgs, QuantizeTo, SamplingArgs};
use crate::Res;

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
        ..d
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
