//! The ops Gemma 3 adds to the Backend trait (`gelu_tanh_mul`, `scale`) on every backend here —
//! the CPU and the PTX kernels of kernels/gemma.ptx through the interpreter — against plain f64
//! references on random inputs of awkward sizes.

mod common;

use minfer::backend::Backend;
use minfer::internals::cuda::sim::SimDriver;
use minfer::internals::{CpuBackend, CudaBackend};
use minfer::WeightTensor;

/// PyTorch's gelu(approximate="tanh"), in f64.
fn gelu_tanh(x: f64) -> f64 {
    let u = (2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x * x * x);
    0.5 * x * (1.0 + u.tanh())
}

/// Host values into an activation buffer, exactly (an embed of a one-row f32 table).
fn upload<B: Backend>(b: &B, v: &[f32]) -> B::Buf {
    let table = b
        .upload(&WeightTensor::from_f32(
            "values",
            vec![1, v.len().max(1)],
            &padded(v),
        ))
        .expect("upload");
    let mut out = b.alloc(v.len().max(1)).expect("alloc");
    b.embed(&mut out, &table, &[0]).expect("embed");
    out
}

fn padded(v: &[f32]) -> Vec<f32> {
    if v.is_empty() {
        vec![0.0]
    } else {
        v.to_vec()
    }
}

fn download<B: Backend>(b: &B, x: &B::Buf, n: usize) -> Vec<f32> {
    let mut v = vec![f32::NAN; n];
    b.read(x, 0, &mut v).expect("read");
    v
}

const LENS: &[usize] = &[0, 1, 7, 31, 63, 64, 65, 255, 257, 1000, 4099];

fn check_gelu_tanh_mul<B: Backend>(b: &B, what: &str) {
    let mut rng = common::Rng::new(11);
    for &len in LENS {
        // Gates over ±12 (both tails of GELU and its curved middle), ups over ±1.
        let g: Vec<f32> = rng.vec(len).iter().map(|v| v * 12.0).collect();
        let u = rng.vec(len);
        let mut gb = upload(b, &g);
        let ub = upload(b, &u);
        b.gelu_tanh_mul(&mut gb, &ub, len).expect("gelu_tanh_mul");
        let got = download(b, &gb, len);
        for i in 0..len {
            let want = gelu_tanh(g[i] as f64) * u[i] as f64;
            // An exp within a few ulps (CPU polynomial; ex2.approx's 2^-22 on the GPU), the cubic,
            // a division and a product, each rounded to f32: 1e-6 relative, with an absolute floor
            // for the tiny values of the negative tail.
            let tol = 1e-6 * (want.abs() + 1e-3);
            assert!(
                (got[i] as f64 - want).abs() <= tol,
                "{what} gelu_tanh_mul len {len} [{i}]: x {} u {}: got {} want {want}",
                g[i],
                u[i],
                got[i]
            );
        }
    }
}

fn check_scale<B: Backend>(b: &B, what: &str) {
    let mut rng = common::Rng::new(12);
    let s = (640f64).sqrt() as f32;
    for &len in LENS {
        let x = rng.vec(len);
        let mut xb = upload(b, &x);
        b.scale(&mut xb, s, len).expect("scale");
        let got = download(b, &xb, len);
        for i in 0..len {
            // One f32 product, compared with the same f32 product: exact.
            assert_eq!(got[i], x[i] * s, "{what} scale len {len} [{i}]");
        }
    }
}

#[test]
fn gelu_tanh_mul_cpu() {
    check_gelu_tanh_mul(&CpuBackend::new(2).expect("cpu"), "cpu");
}

#[test]
fn gelu_tanh_mul_sim() {
    let b = CudaBackend::new(SimDriver::new()).expect("sim");
    check_gelu_tanh_mul(&b, "sim");
}

#[test]
fn scale_cpu() {
    check_scale(&CpuBackend::new(2).expect("cpu"), "cpu");
}

#[test]
fn scale_sim() {
    let b = CudaBackend::new(SimDriver::new()).expect("sim");
    check_scale(&b, "sim");
}

#[test]
fn length_past_the_buffer_is_an_error_not_a_panic() {
    let b = CpuBackend::new(1).expect("cpu");
    let mut x = upload(&b, &[1.0, 2.0]);
    let y = upload(&b, &[1.0, 2.0]);
    assert!(b.gelu_tanh_mul(&mut x, &y, 3).is_err());
    assert!(b.scale(&mut x, 2.0, 3).is_err());
    let s = CudaBackend::new(SimDriver::new()).expect("sim");
    let mut x = upload(&s, &[1.0, 2.0]);
    let y = upload(&s, &[1.0, 2.0]);
    assert!(s.gelu_tanh_mul(&mut x, &y, 3).is_err());
    assert!(s.scale(&mut x, 2.0, 3).is_err());
}
