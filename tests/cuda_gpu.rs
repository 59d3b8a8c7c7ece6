//! The op parity suite of tests/ops/ (the same cases as tests/ops_cpu.rs and
//! tests/cuda_kernels.rs), the CUDA-only preconditions, and the fixture models, on a real GPU
//! (feature `cuda`). Without the feature, a driver or a device, each test prints why it skips
//! and returns: CI has no GPU; scripts/gpu-check.sh runs these on a machine that has one.

#[cfg(feature = "cuda")]
mod common;
#[cfg(feature = "cuda")]
mod ops;

#[cfg(feature = "cuda")]
mod gpu {
    use std::path::Path;

    use super::{common, ops};
    use minfer::internals::cuda::cudarc_driver::CudarcDriver;
    use minfer::internals::CudaBackend;
    use minfer::{LoadOptions, Model};

    fn gpu() -> Option<CudaBackend<CudarcDriver>> {
        match CudarcDriver::new(0) {
            Ok(d) => Some(CudaBackend::new(d).expect("every kernel loads on the GPU")),
            Err(e) => {
                eprintln!("skipping: no usable CUDA device ({e})");
                None
            }
        }
    }

    ops::op_parity_tests!(gpu().map(|b| (b, ops::Numerics::CUDA)));

    /// The paged KV cache through the kernels (tests/ops attention_paged).
    #[test]
    fn attention_paged() {
        if let Some(b) = gpu() {
            ops::attention_paged(&b, &ops::Numerics::CUDA);
        }
    }

    /// The cases only the CUDA backend has (tests/ops/cuda_only.rs).
    mod cuda_only {
        crate::ops::cuda_only::cuda_only_tests!(super::gpu());
    }

    /// Block-quantized weights (tests/ops/cuda_quant.rs).
    mod cuda_quant {
        crate::ops::cuda_quant::cuda_quant_tests!(super::gpu());
    }

    /// Decode replayed from CUDA graphs (stream capture, cuGraphLaunch) gives the tokens of
    /// eager launches: the first run of the cudarc graph path.
    #[test]
    fn graph_decode() {
        ops::cuda_only::graph_decode(&|graphs| gpu().map(|b| b.with_graphs(graphs)));
    }

    fn load_gpu(dir: &Path, all_logits: bool, f32_prefill: bool) -> Option<Model> {
        let b = gpu()?.with_f32_prefill(f32_prefill);
        let opts = LoadOptions {
            all_logits,
            max_batch: 16,
            keep_quantized: false,
            ..LoadOptions::default()
        };
        Some(
            Model::load_with_backend(dir, &opts, b)
                .unwrap_or_else(|e| panic!("{}: {e}", dir.display())),
        )
    }

    #[test]
    fn every_variant_matches_transformers_on_gpu() {
        if gpu().is_none() {
            return;
        }
        for dir in common::variants() {
            // As on the interpreter, plus the GPU's approximate ex2/rsqrt/sin/cos (relative error
            // ~2^-22): still far below 1e-4 of the largest logit.
            common::check_variant(&dir, 1e-4, &|d, all| {
                load_gpu(d, all, true).expect("GPU vanished")
            });
        }
    }

    #[test]
    fn copy_bandwidth_is_measurable() {
        if let Some(b) = gpu() {
            let gb_s = b.measure_copy_bandwidth(256 << 20, 5).expect("copy");
            eprintln!("device copy bandwidth (copy_f32 kernel): {gb_s:.0} GB/s");
            assert!(gb_s > 0.0);
        }
    }
}

#[cfg(not(feature = "cuda"))]
#[test]
fn gpu_tests_need_the_cuda_feature() {
    eprintln!(
        "skipping: built without the `cuda` feature (cargo test --features cuda --test cuda_gpu)"
    );
}
