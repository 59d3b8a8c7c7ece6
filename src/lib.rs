//! minfer: a from-scratch transformer inference runtime.
//!
//! Load a Hugging Face model directory (config.json, *.safetensors, tokenizer.json) or a GGUF
//! file, memory-map the weights, and run the llama-family forward pass on the CPU (rayon +
//! runtime-detected SIMD) or the GPU (hand-written PTX through the CUDA driver, or the PTX
//! interpreter).
//!
//! ```no_run
//! use minfer::{ChatMessage, GenerateOptions, LoadOptions, Model};
//!
//! fn main() {
//!     if let Err(e) = run() {
//!         eprintln!("error: {e}"); // every error names the file, tensor or option at fault
//!         std::process::exit(2);
//!     }
//! }
//!
//! fn run() -> minfer::Result<()> {
//!     let path = "models/SmolLM2-135M-Instruct.Q4_1.gguf";
//!     let mut model = Model::load(path.as_ref(), &LoadOptions::default())?;
//!     println!("{} parameters", model.num_parameters());
//!     let prompt = model.chat_prompt(&[ChatMessage::new("user", "What is 2 + 2?")])?;
//!     let out = model.generate_ids_as_text(&prompt, &GenerateOptions::default(), |piece| {
//!         print!("{piece}"); // streamed as soon as it is complete UTF-8
//!         true // false stops generation
//!     })?;
//!     println!("\n{:.1} tok/s ({:?})", out.stats.decode_tok_s, out.stats.stop);
//!     Ok(())
//! }
//! ```
//!
//! The layers, bottom to top (a module imports only modules below it):
//! `tensor` → `quant` → `config`, `tokenizer` → `loader` → `backend` → `transformer` →
//! `model` (this API) → the `minfer` binary. See docs/ARCHITECTURE.md.
//!
//! What is public: [`Model`] and its options and results, [`Tokenizer`], [`Device`],
//! [`Error`], [`inspect`] (the memory report), [`bench`](mod@bench) (measurement), and [`backend`] (the
//! trait a new backend implements, with [`Model::load_with_backend`] to run on it).

#![warn(missing_docs)]

pub mod backend;
pub mod bench;
mod config;
mod convert;
mod device;
mod error;
pub mod inspect;
mod loader;
mod model;
mod quant;
mod rng;
mod sampler;
#[cfg(feature = "server")]
pub mod server;
#[allow(missing_docs)]
mod synthetic;
mod tensor;
mod tokenizer;
mod transformer;

#[doc(hidden)]
pub mod internals;

pub use config::ModelConfig;
pub use convert::gguf_to_hf;
pub use device::Device;
pub use error::{Error, Result};
pub use loader::open_tokenizer as load_tokenizer;
pub use model::{
    Batcher, GenerateOptions, GenerationStats, KvStats, LoadOptions, Model, Perplexity, SeqId,
    StopReason, TextOutput,
};
pub use sampler::SamplerConfig;
pub use tensor::{DType, WeightTensor};
pub use tokenizer::{ChatMessage, Tokenizer};
