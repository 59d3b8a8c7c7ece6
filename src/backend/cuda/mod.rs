//! The GPU path: host code that launches kernels/*.ptx through a [`driver::GpuDriver`].
//!
//! The same host code runs on a real GPU (`cudarc_driver`, feature `cuda`) and on the PTX
//! interpreter (`sim`), which is how the kernels are checked on machines without a GPU.

pub mod driver;
pub mod sim;
