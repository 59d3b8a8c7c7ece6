//! The GPU path: host code that launches kernels/*.ptx through a [`driver::GpuDriver`].
//!
//! The same host code runs on a real GPU (`cudarc_driver`, feature `cuda`) and on the PTX
//! interpreter (`sim`), which is how the kernels are checked on machines without a GPU.

pub mod backend;
#[cfg(feature = "cuda")]
pub mod cudarc_driver;
pub mod driver;
pub mod predict;
pub mod registry;
pub mod sim;

pub use backend::{CudaBackend, CudaBuf, CudaKv, CudaMat};
