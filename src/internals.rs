//! **Not part of the API.** What the integration tests and benchmarks need from inside the
//! crate: the SIMD and matmul kernels, the GGUF and safetensors readers, the CUDA backend and
//! its drivers, the reference (de)quantization. Hidden from the docs; it may change in any
//! release. Embedders use the crate root.

pub use crate::backend::cpu::{argmax, matmul, quant_kernels, simd, CpuBackend};
pub use crate::backend::cuda::{CudaBackend, CudaBuf, CudaKv, CudaMat};

/// The GPU path's pieces: the driver seam, the interpreter driver, the real driver.
pub mod cuda {
    #[cfg(feature = "cuda")]
    pub use crate::backend::cuda::cudarc_driver;
    pub use crate::backend::cuda::{driver, predict, registry, sim};
    pub use crate::backend::cuda::{CudaBackend, CudaBuf, CudaKv, CudaMat};
}
pub use crate::loader::{
    gguf, is_gguf, open as open_checkpoint, safetensors, Checkpoint, ModelFiles,
};
/// Reference (de)quantization of GGML blocks.
pub mod quant {
    pub use crate::quant::*;
}
pub use crate::error::fault;
pub use crate::rng::Rng;
pub use crate::sampler::Sampler;
/// Random-weight models with published shapes.
pub mod synthetic {
    pub use crate::synthetic::*;
}
pub use crate::tensor::{Storage, Weights};
