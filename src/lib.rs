//! minfer: a from-scratch transformer inference runtime.
//!
//! Load a Hugging Face model directory (config.json, *.safetensors, tokenizer.json) or a GGUF
//! file, memory-map the weights, and run the llama-family forward pass on the CPU (rayon + SIMD)
//! or the GPU (hand-written PTX through the CUDA driver, or the PTX interpreter).
//!
//! ```no_run
//! use minfer::{GenerateOptions, LoadOptions, Model};
//! let mut model = Model::load("models/my-model".as_ref(), &LoadOptions::default())?;
//! println!("{} parameters", model.num_parameters());
//! let stats = model.generate(&[1, 2, 3], &GenerateOptions::default(), |id| {
//!     print!("{id} ");
//!     true
//! })?;
//! println!("\n{:.1} tok/s", stats.decode_tok_s);
//! # Ok::<(), minfer::Error>(())
//! ```

pub mod backend;
pub mod bench;
pub mod config;
pub mod convert;
pub mod device;
pub mod engine;
pub mod error;
pub mod generate;
pub mod inspect;
pub mod loader;
pub mod model;
pub mod quant;
pub mod sampler;
pub mod synthetic;
pub mod tokenizer;

pub use config::ModelConfig;
pub use device::Device;
pub use engine::{LoadOptions, Model};
pub use error::{Error, Result};
pub use generate::{GenerateOptions, GenerationStats, StopReason, TextOutput};
pub use sampler::SamplerConfig;
pub use tokenizer::{ChatMessage, Tokenizer};
