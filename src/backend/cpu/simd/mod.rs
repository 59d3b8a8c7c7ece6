//! SIMD kernels with runtime CPU detection (AVX-512, AVX2+FMA, NEON, scalar), chosen once.
