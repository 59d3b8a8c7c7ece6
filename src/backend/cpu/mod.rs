//! The CPU backend: rayon-parallel ops over f32 activations, SIMD dot products.
pub mod matmul;
pub mod simd;
