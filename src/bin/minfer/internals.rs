//! The calls that reach past the library's public API (into the loader, the engine, the CPU
//! SIMD module and the CUDA driver), one small function each, so that moving to the public
//! replacements touches only this file.

use std::path::Path;

use minfer::{Device, Result, Tokenizer};

use crate::args::{ConvertDType, QuantizeTo, SyntheticDType};

pub type DType = minfer::loader::DType;

pub fn quantize_dtype(q: QuantizeTo) -> DType {
    match q {
        QuantizeTo::Q8_0 => DType::Q8_0,
    }
}

pub fn convert_dtype(d: ConvertDType) -> DType {
    match d {
        ConvertDType::Bf16 => DType::BF16,
        ConvertDType::F32 => DType::F32,
    }
}

pub fn synthetic_dtype(d: SyntheticDType) -> DType {
    match d {
        SyntheticDType::F32 => DType::F32,
        SyntheticDType::F16 => DType::F16,
        SyntheticDType::Bf16 => DType::BF16,
    }
}

pub fn is_gguf(path: &Path) -> bool {
    minfer::engine::is_gguf(path)
}

/// A tokenizer from a model directory, a tokenizer.json, a .safetensors beside one, or a .gguf
/// (reading only the GGUF's metadata, not its tensors).
pub fn load_tokenizer(path: &Path) -> Result<Tokenizer> {
    if is_gguf(path) {
        let file = minfer::loader::gguf::read_header(path)?;
        let (json, config) = minfer::loader::gguf::hf_tokenizer(&file)?;
        return Tokenizer::from_json(&json, Some(&config));
    }
    let file = if path.is_dir() {
        path.join("tokenizer.json")
    } else if path.extension().is_some_and(|e| e == "json") {
        path.to_path_buf()
    } else {
        path.parent()
            .unwrap_or(Path::new("."))
            .join("tokenizer.json")
    };
    Tokenizer::from_file(&file)
}

/// Write a GGUF file out as a Hugging Face directory.
pub fn gguf_to_hf(src: &Path, out: &Path, dtype: DType) -> Result<()> {
    minfer::convert::gguf_to_hf(src, out, dtype)
}

/// The GPU's memory in bytes, when `device` (resolved) is one.
pub fn gpu_memory(device: Device) -> Result<Option<u64>> {
    match device.resolve()? {
        #[cfg(feature = "cuda")]
        Device::Cuda(i) => {
            use minfer::backend::cuda::driver::GpuDriver;
            Ok(Some(
                minfer::backend::cuda::cudarc_driver::CudarcDriver::new(i)?.total_memory(),
            ))
        }
        _ => Ok(None),
    }
}

/// The ceiling for decode: the CPU's read bandwidth with `threads` threads (0 = all cores), or
/// the GPU's copy bandwidth, in GB/s. The PTX interpreter has none (NaN).
pub fn read_bandwidth(device: Device, threads: usize) -> Result<f64> {
    match device.resolve()? {
        Device::Cpu | Device::Auto => {
            let pool = thread_pool(threads)?;
            Ok(pool.install(|| minfer::backend::cpu::simd::measure_read_bandwidth(512 << 20, 3)))
        }
        Device::Sim => Ok(f64::NAN),
        d => minfer::device::measure_bandwidth(d),
    }
}

/// In-cache f32 matmul GFLOP/s with `threads` threads (0 = all cores).
pub fn matmul_gflops(threads: usize) -> Result<f64> {
    Ok(thread_pool(threads)?.install(minfer::bench::measure_matmul_gflops))
}

fn thread_pool(threads: usize) -> Result<rayon::ThreadPool> {
    let n = if threads == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        threads
    };
    rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build()
        .map_err(|e| minfer::Error::Device(e.to_string()))
}
