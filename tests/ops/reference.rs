//! The reference of every `Backend` op: the plain math in f64, one loop nest per op, written
//! from the contracts in src/backend/mod.rs and nothing else.
//!
//! Deliberately independent of minfer: no import from the crate, so a mistake shared by a
//! backend and its own helpers cannot hide here. Inputs are the f32 values the backend was
//! given (weights already rounded to their stored dtype by the caller); outputs are f64, so
//! the comparison's tolerance is the backend's error alone.

/// `x[r] / sqrt(mean(x[r]²) + eps) · w` for one row (or one head).
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32) -> Vec<f64> {
    assert_eq!(x.len(), w.len(), "rms_norm: row and weight widths");
    let n = x.len() as f64;
    let ss: f64 = x.iter().map(|&v| v as f64 * v as f64).sum();
    let inv = 1.0 / (ss / n + eps as f64).sqrt();
    x.iter()
        .zip(w)
        .map(|(&v, &w)| v as f64 * inv * w as f64)
        .collect()
}

/// `rms_norm` of every `width`-wide row (or head) of `x`.
pub fn rms_norm_rows(x: &[f32], w: &[f32], eps: f32) -> Vec<f64> {
    x.chunks_exact(w.len())
        .flat_map(|row| rms_norm(row, w, eps))
        .collect()
}

/// `x[i] + y[i]` rounded to f32 once, as the contract's f32 `+=` does: backends must match it
/// bit for bit.
pub fn add_f32(x: &[f32], y: &[f32]) -> Vec<f32> {
    assert_eq!(x.len(), y.len(), "add: lengths");
    x.iter().zip(y).map(|(a, b)| a + b).collect()
}

/// `out[r, :] = table[tokens[r], :]` for a `[vocab, dim]` table.
pub fn embed(table: &[f32], dim: usize, tokens: &[u32]) -> Vec<f64> {
    tokens
        .iter()
        .flat_map(|&t| table[t as usize * dim..(t as usize + 1) * dim].iter())
        .map(|&v| v as f64)
        .collect()
}

/// `out[r, o] = Σ_i x[r, i] · w[o, i] + bias[o]` (w is `[n, k]`), and for each output the
/// magnitude Σ_i |x[r, i] · w[o, i]| that floating-point error bounds scale with.
pub fn matmul(
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    rows: usize,
    n: usize,
    k: usize,
) -> (Vec<f64>, Vec<f64>) {
    assert_eq!((x.len(), w.len()), (rows * k, n * k), "matmul: shapes");
    let mut out = vec![0.0; rows * n];
    let mut mag = vec![0.0; rows * n];
    for r in 0..rows {
        for o in 0..n {
            let mut s = bias.map_or(0.0, |b| b[o] as f64);
            let mut m = 0.0;
            for i in 0..k {
                let p = x[r * k + i] as f64 * w[o * k + i] as f64;
                s += p;
                m += p.abs();
            }
            out[r * n + o] = s;
            mag[r * n + o] = m;
        }
    }
    (out, mag)
}

/// Hugging Face's rotate-half rotary embedding of `[rows, heads, head_dim]` at positions
/// `pos0 + r`. The angle is rounded to f32 once, as transformers computes it
/// (`position (f32) · inv_freq (f32)`); sin and cos are then exact.
pub fn rope(x: &[f32], heads: usize, hd: usize, pos0: usize, inv_freq: &[f32]) -> Vec<f64> {
    let half = hd / 2;
    let rows = x.len() / (heads * hd);
    let mut out = vec![0.0f64; x.len()];
    for r in 0..rows {
        for h in 0..heads {
            let base = (r * heads + h) * hd;
            for i in 0..half {
                let ang = ((pos0 + r) as f32 * inv_freq[i]) as f64;
                let (s, c) = ang.sin_cos();
                let (a, b) = (x[base + i] as f64, x[base + i + half] as f64);
                out[base + i] = a * c - b * s;
                out[base + i + half] = b * c + a * s;
            }
        }
    }
    out
}

/// `silu(g) · u` with silu(g) = g / (1 + e^-g).
pub fn silu_mul(gate: &[f32], up: &[f32]) -> Vec<f64> {
    gate.iter()
        .zip(up)
        .map(|(&g, &u)| g as f64 / (1.0 + (-g as f64).exp()) * u as f64)
        .collect()
}

/// Causal (optionally windowed) grouped-query attention of `rows` query rows at positions
/// `pos0..` over the keys and values of positions `0..=pos` (`keys`, `vals`: `[positions,
/// nkv · hd]`, the whole history). Query head h reads kv head h / (nh / nkv); a query at p
/// sees keys j with p - j < window.
#[allow(clippy::too_many_arguments)]
pub fn attention(
    q: &[f32],
    keys: &[f32],
    vals: &[f32],
    rows: usize,
    pos0: usize,
    nh: usize,
    nkv: usize,
    hd: usize,
    scale: f32,
    window: Option<usize>,
) -> Vec<f64> {
    let group = nh / nkv;
    let kvdim = nkv * hd;
    let mut out = vec![0.0; rows * nh * hd];
    for r in 0..rows {
        let p = pos0 + r;
        let lo = window.map_or(0, |w| (p + 1).saturating_sub(w));
        for h in 0..nh {
            let g = h / group;
            let qh = &q[(r * nh + h) * hd..(r * nh + h + 1) * hd];
            let s: Vec<f64> = (lo..=p)
                .map(|j| {
                    let kj = &keys[j * kvdim + g * hd..j * kvdim + (g + 1) * hd];
                    scale as f64
                        * qh.iter()
                            .zip(kj)
                            .map(|(&a, &b)| a as f64 * b as f64)
                            .sum::<f64>()
                })
                .collect();
            let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = s.iter().map(|&x| (x - m).exp()).collect();
            let l: f64 = e.iter().sum();
            for d in 0..hd {
                let mut acc = 0.0;
                for (t, j) in (lo..=p).enumerate() {
                    acc += e[t] * vals[j * kvdim + g * hd + d] as f64;
                }
                out[(r * nh + h) * hd + d] = acc / l;
            }
        }
    }
    out
}

/// Index of the largest value, the first one on ties; NaN never wins (None when every value is
/// NaN or there are none).
pub fn argmax(x: &[f32]) -> Option<usize> {
    let mut best: Option<usize> = None;
    for (i, &v) in x.iter().enumerate() {
        if v.is_nan() {
            continue;
        }
        if best.is_none_or(|b| v > x[b]) {
            best = Some(i);
        }
    }
    best
}

/// Rows `src_row..src_row + rows` of a `[_, width]` matrix.
pub fn copy_rows(src: &[f32], src_row: usize, rows: usize, width: usize) -> Vec<f32> {
    src[src_row * width..(src_row + rows) * width].to_vec()
}
