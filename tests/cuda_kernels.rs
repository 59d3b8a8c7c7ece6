//! Every CUDA kernel through `CudaBackend<SimDriver>` (the PTX interpreter, which also checks
//! each memory access, shared-memory races and barriers): the op parity suite of tests/ops/
//! (plain f64 references on random inputs of awkward sizes, the same cases as tests/ops_cpu.rs
//! and tests/cuda_gpu.rs), the CUDA-only preconditions, and every fixture model on the
//! interpreter.

mod common;
mod ops;

use minfer::internals::cuda::sim::SimDriver;
use minfer::internals::CudaBackend;
use ops::Numerics;

fn sim() -> CudaBackend<SimDriver> {
    CudaBackend::new(SimDriver::new()).expect("every kernel loads into the interpreter")
}

ops::op_parity_tests!(Some((sim(), Numerics::CUDA)));

/// The paged KV cache through the kernels: shuffled block tables, sequences of different
/// lengths, prefill chunks and decode rows in one step, a window, copy-on-write of a block.
#[test]
fn attention_paged() {
    ops::attention_paged(&sim(), &Numerics::CUDA);
}

/// The cases only the CUDA backend has (tests/ops/cuda_only.rs).
mod cuda_only {
    crate::ops::cuda_only::cuda_only_tests!(Some(super::sim()));
}

/// Block-quantized weights (tests/ops/cuda_quant.rs).
mod cuda_quant {
    crate::ops::cuda_quant::cuda_quant_tests!(Some(super::sim()));
}

/// Decode replayed from graphs (the interpreter's recorded launch lists) gives the tokens of
/// eager launches.
#[test]
fn graph_decode() {
    ops::cuda_only::graph_decode(&|graphs| Some(sim().with_graphs(graphs)));
}

#[test]
fn buffers_are_freed() {
    use minfer::backend::Backend;
    let drv = SimDriver::new();
    let b = CudaBackend::new(drv).expect("load");
    let before = b.driver().bytes_allocated();
    {
        let _x = b.alloc(1000).expect("alloc");
        let _w = b
            .upload(&minfer::WeightTensor::from_f32("w", vec![3, 4], &[1.0; 12]))
            .expect("upload");
        assert!(b.driver().bytes_allocated() > before);
    }
    assert_eq!(
        b.driver().bytes_allocated(),
        before,
        "CudaBuf / CudaMat free on drop"
    );
}

/// Every tiny fixture model through the real kernels on the interpreter (`--device sim`),
/// against transformers.
mod fixtures {
    use std::path::Path;

    use super::{common, sim};
    use minfer::{LoadOptions, Model};

    fn load_sim(dir: &Path, all_logits: bool, f32_prefill: bool) -> Model {
        // max_batch 16: 40-token prompts run in chunks of up to 16 rows.
        let opts = LoadOptions {
            all_logits,
            max_batch: 16,
            keep_quantized: false,
            ..LoadOptions::default()
        };
        let backend = sim().with_f32_prefill(f32_prefill);
        Model::load_with_backend(dir, &opts, backend)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
    }

    #[test]
    fn every_variant_matches_transformers_on_sim() {
        let variants = common::variants();
        assert!(
            variants.len() >= 11,
            "expected the fixture set, found {}",
            variants.len()
        );
        for dir in variants {
            // f32 activations and f32 accumulation as on the CPU, in a different order: a few
            // ulps, far below 1e-4 of the largest logit (the CPU backend's tolerance); argmax and
            // greedy tokens must agree exactly. f32 prefill keeps bf16 weights exact too.
            common::check_variant(&dir, 1e-4, &|d, all| load_sim(d, all, true));
        }
    }

    /// The bf16 and f16 variants with the tensor-core GEMM in prefill (chunks of 5..16 rows). It
    /// rounds activations to bf16 / f16, so against the f32 oracle only the logits are compared, loosely:
    /// 2^-9 relative per operand compounds through the layers of these sharp random models to a
    /// few percent of the largest logit (argmax can flip where the fixtures' top-2 gap is 1e-3).
    /// A layout or indexing error in the GEMM would be off by the logits' full scale.
    #[test]
    fn bf16_and_f16_variants_with_the_tensor_core_prefill() {
        for dir in common::variants() {
            let exp = common::expected(&dir);
            if !matches!(
                exp["stored_dtype"].as_str(),
                Some("bfloat16") | Some("float16")
            ) {
                continue;
            }
            let mut m = load_sim(&dir, true, false);
            for case in exp["cases"].as_array().expect("cases") {
                let prompt = common::ids(&case["prompt"]);
                if prompt.len() <= 4 {
                    continue;
                }
                let want = common::floats(&case["last_logits"]);
                let max = case["max_abs_logit"].as_f64().expect("max_abs_logit") as f32;
                let (_, got) = m.score(&prompt).expect("score");
                let worst = got
                    .iter()
                    .zip(&want)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0.0f32, f32::max);
                assert!(
                    worst <= 0.05 * max,
                    "{}: prompt len {}: max |dlogit| {worst} > 5% of {max}",
                    dir.display(),
                    prompt.len()
                );
            }
        }
    }
}

/// The real GGUF models with their quantized weights kept on the device (kernels/matvec_q.ptx,
/// embed_q.ptx): SmolLM2 Q4_1 (Q4_1 + Q8_0 tensors) and Gemma 3 Q4_K_M (Q4_K, Q6_K, Q8_0 and
/// Q5_0 as Q8_0) on the interpreter give the CPU's greedy tokens. Short prompt, two tokens:
/// the interpreter runs the whole model (lm_head included) per step, 8-10 minutes per model on
/// a loaded 2-core machine, so they are opt-in (`--ignored`).
mod real_quantized {
    use super::common;
    use minfer::{Device, LoadOptions, Model};
    use std::path::Path;

    fn greedy(path: &Path, device: Device, prompt: &[u32]) -> Vec<u32> {
        let opts = LoadOptions {
            device,
            context_len: Some(64),
            max_batch: 8,
            keep_quantized: true,
            ..LoadOptions::default()
        };
        let mut m = Model::load(path, &opts).unwrap_or_else(|e| panic!("{device}: {e}"));
        common::greedy_ids(&mut m, prompt, 2)
    }

    fn check(path: &Path, prompt: &[u32]) {
        let t = std::time::Instant::now();
        let sim = greedy(path, Device::Sim, prompt);
        let sim_s = t.elapsed().as_secs_f64();
        let cpu = greedy(path, Device::Cpu, prompt);
        eprintln!(
            "{}: sim {sim:?} ({sim_s:.1} s), cpu {cpu:?}",
            path.display()
        );
        assert_eq!(sim, cpu, "{}: greedy tokens, sim vs cpu", path.display());
    }

    #[test]
    #[ignore = "minutes on the interpreter: cargo test --release --test cuda_kernels -- --ignored real_quantized"]
    fn smollm2_q4_1_on_sim_matches_cpu() {
        let Some(path) = common::real_model() else {
            return;
        };
        // "The capital of France is" in SmolLM2's vocabulary
        check(&path, &[504, 3575, 282, 4649, 314]);
    }

    #[test]
    #[ignore = "minutes on the interpreter: cargo test --release --test cuda_kernels -- --ignored real_quantized"]
    fn gemma3_q4_k_m_on_sim_matches_cpu() {
        let Some(path) = common::gemma_model() else {
            return;
        };
        check(&path, &[2, 818, 5279, 529, 7001, 563]);
    }
}
