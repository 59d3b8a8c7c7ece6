//! **CUDA backend only** (interpreter and GPU): what the other backends have no counterpart
//! for, so it cannot be written over the `Backend` trait. The launch preconditions written in
//! the kernels' headers (a bf16 K a multiple of 8, head_dim a multiple of 4), which the CPU
//! backend does not have, and the device-side casts behind `CudaBackend`'s test helpers.
//! Instantiated by tests/cuda_kernels.rs and tests/cuda_gpu.rs with [`cuda_only_tests!`].

use half::bf16;
use minfer::backend::{AttnParams, Backend, KvShape, StepLayout};
use minfer::internals::cuda::driver::GpuDriver;
use minfer::internals::CudaBackend;
use minfer::DType;

use super::{weight, Rng};

/// Instantiate the CUDA-only cases as `#[test]`s. `$make` is evaluated per test and gives
/// `Option<CudaBackend<_>>`; None means no device here, and `$make` has printed why.
// Unused where the suite is built for the CPU alone (tests/ops_cpu.rs).
#[allow(unused_macros)]
macro_rules! cuda_only_tests {
    ($make:expr) => {
        $crate::ops::cuda_only::cuda_only_tests!(@cases $make;
            matmul_preconditions,
            attention_preconditions,
            casts,
        );
    };
    (@cases $make:expr; $($case:ident),* $(,)?) => {
        $(
            #[test]
            fn $case() {
                if let Some(backend) = $make {
                    $crate::ops::cuda_only::$case(&backend);
                }
            }
        )*
    };
}
#[allow(unused_imports)]
pub(crate) use cuda_only_tests;

pub fn matmul_preconditions<D: GpuDriver + 'static>(b: &CudaBackend<D>) {
    let (wt, _) = weight(DType::BF16, "odd", vec![4, 12], &[0.5; 48]);
    let wm = b.upload(&wt).expect("upload");
    let x = b.alloc(12 * 8).expect("alloc");
    let mut out = b.alloc(4 * 8).expect("alloc");
    let e = b
        .matmul(&mut out, &x, &wm, None, 1)
        .expect_err("K = 12 is not a multiple of 8");
    assert!(e.to_string().contains("odd"), "{e}");
    assert!(
        b.matmul(&mut out, &x, &wm, None, 100).is_err(),
        "x too short must be an error"
    );
}

pub fn attention_preconditions<D: GpuDriver + 'static>(b: &CudaBackend<D>) {
    let mut kv6 = b
        .alloc_kv(KvShape::contiguous(1, 4, 4, 1, 6))
        .expect("alloc_kv");
    let layout = b
        .layout_of(&StepLayout::contiguous(0, 1, 1))
        .expect("layout");
    let p6 = AttnParams {
        n_heads: 2,
        n_kv_heads: 1,
        head_dim: 6,
        scale: 0.3,
        window: None,
    };
    let q = b.alloc(16 * 8).expect("alloc");
    let k = b.alloc(8 * 8).expect("alloc");
    let mut out = b.alloc(16 * 8).expect("alloc");
    let e = b
        .attention(&mut out, &q, &k, &k, &mut kv6, 0, 1, &layout, &p6)
        .expect_err("head_dim 6 is not a multiple of 4");
    assert!(e.to_string().contains("head_dim"), "{e}");
}

pub fn casts<D: GpuDriver + 'static>(b: &CudaBackend<D>) {
    let mut rng = Rng::new(10);
    let mut v: Vec<f32> = rng.vec(777).iter().map(|x| x * 1000.0).collect();
    // halfway cases: round to nearest even
    v[0] = f32::from_bits(0x3f80_8000);
    v[1] = f32::from_bits(0x3f81_8000);
    v[2] = -0.0;
    let m = b
        .upload_f32_as_bf16("v", vec![777], &v)
        .expect("upload as bf16");
    let back = b.download_bf16_as_f32(&m).expect("download");
    for (i, (&x, &y)) in v.iter().zip(&back).enumerate() {
        // cvt.rn.bf16.f32 is IEEE round-to-nearest-even, as half::bf16::from_f32: bit-equal
        assert_eq!(
            bf16::from_f32(x).to_f32().to_bits(),
            y.to_bits(),
            "cast [{i}] {x}"
        );
    }
}

/// Greedy decoding through `Model::generate` with CUDA graphs on and off (`make(graphs)` gives
/// the backend, None: no device): the same tokens, and the graph path really replayed: after
/// the first steps, every decode step is one graph launch although its position changes.
pub fn graph_decode<D: GpuDriver + 'static>(make: &dyn Fn(bool) -> Option<CudaBackend<D>>) {
    let dir = crate::common::fixtures_dir().join("llama_gqa_untied");
    let tokens = |graphs: bool| {
        let b = make(graphs)?;
        let stats = b.graph_stats_handle();
        let opts = minfer::LoadOptions {
            context_len: Some(128),
            ..minfer::LoadOptions::default()
        };
        let mut m = minfer::Model::load_with_backend(&dir, &opts, b).expect("fixture loads");
        let gen = minfer::GenerateOptions {
            max_new_tokens: 40,
            ignore_eos: true,
            ..Default::default()
        };
        let mut out = Vec::new();
        m.generate(&[1, 2, 3, 4, 5], &gen, |t| {
            out.push(t);
            true
        })
        .expect("generate");
        Some((out, stats.get()))
    };
    let (Some((eager, off)), Some((replayed, on))) = (tokens(false), tokens(true)) else {
        return;
    };
    assert_eq!(off.captures + off.replays, 0, "graphs off: {off:?}");
    assert_eq!(on.capture_error, None);
    // 39 decode steps (the first token comes from the prefill): a few eager ones, one capture,
    // replays for the rest
    assert_eq!(on.captures, 1, "{on:?}");
    assert!(on.replays >= 35, "{on:?}");
    assert_eq!(replayed, eager);
}
