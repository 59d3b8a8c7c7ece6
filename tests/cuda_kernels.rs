//! Every CUDA kernel through `CudaBackend<SimDriver>` (the PTX interpreter, which also checks
//! each memory access, shared-memory races and barriers) against plain f64 references on
//! random inputs of awkward sizes. The cases live in cuda_cases/ and run on a real GPU too
//! (tests/cuda_gpu.rs).

mod cuda_cases;

use minfer::backend::cuda::sim::SimDriver;
use minfer::backend::cuda::CudaBackend;

fn sim() -> CudaBackend<SimDriver> {
    CudaBackend::new(SimDriver::new()).expect("every kernel loads into the interpreter")
}

macro_rules! sim_cases {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                cuda_cases::$name(&sim());
            }
        )*
    };
}

sim_cases!(
    embed,
    rms_norm,
    add_rms_norm,
    head_rms_norm,
    rope,
    matvec,
    gemm,
    matmul_preconditions,
    silu_mul_add,
    argmax,
    casts,
    attention,
    attention_splits,
    attention_preconditions,
);

#[test]
fn buffers_are_freed() {
    use minfer::backend::Backend;
    let drv = SimDriver::new();
    let b = CudaBackend::new(drv).expect("load");
    let before = b.driver().bytes_allocated();
    {
        let _x = b.alloc(1000).expect("alloc");
        let _w = b
            .upload(&minfer::loader::WeightTensor::from_f32(
                "w",
                vec![3, 4],
                &[1.0; 12],
            ))
            .expect("upload");
        assert!(b.driver().bytes_allocated() > before);
    }
    assert_eq!(
        b.driver().bytes_allocated(),
        before,
        "CudaBuf / CudaMat free on drop"
    );
}
