//! The element-wise ops Gemma adds to the llama family: the GeGLU gate (GELU, tanh
//! approximation, times up) and a scalar scale (the embedding's √hidden). Kept apart from the
//! SwiGLU path so the llama family's kernels are untouched.
//!
//! gelu_tanh(x) = x/2 · (1 + tanh(u)), u = √(2/π) · (x + 0.044715 x³). With
//! 1 + tanh(u) = 2 / (1 + e^(−2u)) this is x / (1 + e^(−2u)): the silu form at 2u, so it shares
//! the vectorized [`super::exp_inplace`] and never overflows (e^(−2u) → ∞ gives −0, as it should).

use super::exp_inplace;

/// √(2/π), rounded to f32 as PyTorch's kernel uses it.
const SQRT_2_OVER_PI: f32 = 0.797_884_6;
const GELU_C: f32 = 0.044_715;

/// `gate[i] = gelu_tanh(gate[i]) · up[i]`, 64 elements at a time.
pub fn gelu_tanh_mul(gate: &mut [f32], up: &[f32]) {
    for (gs, us) in gate.chunks_mut(64).zip(up.chunks(64)) {
        let mut e = [0f32; 64];
        let e = &mut e[..gs.len()];
        e.iter_mut().zip(gs.iter()).for_each(|(e, &g)| {
            *e = -2.0 * SQRT_2_OVER_PI * (g + GELU_C * g * g * g);
        });
        exp_inplace(e);
        for ((g, u), e) in gs.iter_mut().zip(us).zip(e.iter()) {
            *g = *g / (1.0 + e) * u;
        }
    }
}

/// The plain reference: PyTorch's formula, in f64.
#[cfg(test)]
pub fn gelu_tanh_reference(x: f32) -> f32 {
    let x = x as f64;
    let u = (2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x * x * x);
    (0.5 * x * (1.0 + u.tanh())) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gelu_tanh_mul_matches_the_reference_on_every_tail() {
        let mut seed = 0x1234_5678_u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            ((seed >> 40) as f32 / (1u64 << 24) as f32) * 20.0 - 10.0
        };
        for len in (0..200).chain([1000, 4099]) {
            let g: Vec<f32> = (0..len).map(|_| next()).collect();
            let u: Vec<f32> = (0..len).map(|_| next() / 5.0).collect();
            let mut out = g.clone();
            gelu_tanh_mul(&mut out, &u);
            for i in 0..len {
                let want = gelu_tanh_reference(g[i]) * u[i];
                // exp within 2 ulp and one division: a few f32 ulps of the larger magnitude.
                let tol = 1e-6 * want.abs().max(1e-3) * 8.0 + 1e-9;
                assert!(
                    (out[i] - want).abs() <= tol,
                    "len {len} i {i}: x {} got {} want {want}",
                    g[i],
                    out[i]
                );
            }
        }
    }

    #[test]
    fn gelu_tanh_extremes() {
        let mut g = vec![-1e4f32, -30.0, 0.0, 30.0, 1e4];
        let u = vec![1.0f32; 5];
        gelu_tanh_mul(&mut g, &u);
        assert_eq!(g[2], 0.0);
        assert!(g[0].abs() < 1e-30 && g[1].abs() < 1e-30, "{g:?}");
        assert_eq!(g[3], 30.0);
        assert_eq!(g[4], 1e4);
    }
}
