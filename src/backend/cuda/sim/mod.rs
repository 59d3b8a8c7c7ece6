//! A PTX interpreter implementing [`super::driver::GpuDriver`] on the CPU.
