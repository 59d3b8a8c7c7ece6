//! minfer: a from-scratch transformer inference runtime.
//!
//! Load a Hugging Face model directory (config.json, *.safetensors, tokenizer.json) or a GGUF
//! file, memory-map the weights, and run the llama-family forward pass on the CPU (rayon + SIMD)
//! or the GPU (hand-written PTX through the CUDA driver, or the PTX interpreter).

pub mod backend;
pub mod device;
pub mod error;
pub mod loader;
pub mod tokenizer;

pub use error::{Error, Result};
