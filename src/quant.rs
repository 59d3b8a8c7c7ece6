//! Reference (scalar, readable) GGML block formats: dequantization of every block type minfer
//! reads from GGUF files, and a reference Q8_0 quantizer.
//!
//! These are the ground truth the fast CPU and GPU kernels are tested against, so they follow
//! ggml's `dequantize_row_*` (ggml-quants.c) line by line rather than being clever. Each block
//! layout is written out beside its function. All multi-byte fields are little-endian; f16 is
//! IEEE half precision.
//!
//! Deliberately not here: SIMD, multithreading, quantizers other than Q8_0 (minfer reads
//! quantized files, it does not make them), and the importance-matrix variants (IQ*).

use half::{bf16, f16};

use crate::error::{Error, Result};
use crate::tensor::DType;

/// Elements in one Q8_0 / Q4_0 / Q4_1 block.
pub const QK: usize = 32;
/// Elements in one K-quant super-block.
pub const QK_K: usize = 256;

#[inline]
fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// Q8_0, 34 bytes per 32 weights:
/// ```text
/// [0..2)   d   f16  scale
/// [2..34)  qs  i8 × 32
/// ```
/// `y[j] = d · qs[j]`.
pub fn dequantize_block_q8_0(b: &[u8; 34], y: &mut [f32; QK]) {
    let d = f16_at(b, 0);
    for j in 0..QK {
        y[j] = d * (b[2 + j] as i8) as f32;
    }
}

/// Q4_0, 18 bytes per 32 weights:
/// ```text
/// [0..2)   d   f16
/// [2..18)  qs  16 bytes; byte j holds weight j in its low nibble and weight j+16 in its high one
/// ```
/// `y = (q - 8) · d`.
pub fn dequantize_block_q4_0(b: &[u8; 18], y: &mut [f32; QK]) {
    let d = f16_at(b, 0);
    for j in 0..QK / 2 {
        let q = b[2 + j];
        y[j] = ((q & 0x0F) as i32 - 8) as f32 * d;
        y[j + QK / 2] = ((q >> 4) as i32 - 8) as f32 * d;
    }
}

/// Q4_1, 20 bytes per 32 weights:
/// ```text
/// [0..2)   d   f16  scale
/// [2..4)   m   f16  minimum
/// [4..20)  qs  16 bytes of nibbles, laid out as in Q4_0
/// ```
/// `y = q · d + m`.
pub fn dequantize_block_q4_1(b: &[u8; 20], y: &mut [f32; QK]) {
    let d = f16_at(b, 0);
    let m = f16_at(b, 2);
    for j in 0..QK / 2 {
        let q = b[4 + j];
        y[j] = (q & 0x0F) as f32 * d + m;
        y[j + QK / 2] = (q >> 4) as f32 * d + m;
    }
}

/// Q5_0, 22 bytes per 32 weights:
/// ```text
/// [0..2)   d   f16
/// [2..6)   qh  u32: bit j is the fifth (high) bit of weight j
/// [6..22)  qs  16 bytes; byte j holds the low 4 bits of weight j (low nibble) and j+16 (high)
/// ```
/// `y = (q - 16) · d`, q = low nibble | high bit << 4 (0..32).
pub fn dequantize_block_q5_0(b: &[u8; 22], y: &mut [f32; QK]) {
    let d = f16_at(b, 0);
    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    for j in 0..QK / 2 {
        let (lo, hi) = q5_pair(b[6 + j], qh, j);
        y[j] = (lo as i32 - 16) as f32 * d;
        y[j + QK / 2] = (hi as i32 - 16) as f32 * d;
    }
}

/// Q5_1, 24 bytes per 32 weights:
/// ```text
/// [0..2)   d   f16  scale
/// [2..4)   m   f16  minimum
/// [4..8)   qh  u32, as in Q5_0
/// [8..24)  qs  16 bytes of nibbles, as in Q5_0
/// ```
/// `y = q · d + m`.
pub fn dequantize_block_q5_1(b: &[u8; 24], y: &mut [f32; QK]) {
    let d = f16_at(b, 0);
    let m = f16_at(b, 2);
    let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    for j in 0..QK / 2 {
        let (lo, hi) = q5_pair(b[8 + j], qh, j);
        y[j] = lo as f32 * d + m;
        y[j + QK / 2] = hi as f32 * d + m;
    }
}

/// The 5-bit values of weights j and j+16 of a Q5 block: nibbles of `q`, fifth bits from `qh`
/// (ggml: `xh_0 = ((qh >> j) << 4) & 0x10`, `xh_1 = (qh >> (j + 12)) & 0x10`).
#[inline]
fn q5_pair(q: u8, qh: u32, j: usize) -> (u8, u8) {
    let h0 = (((qh >> j) << 4) & 0x10) as u8;
    let h1 = ((qh >> (j + 12)) & 0x10) as u8;
    ((q & 0x0F) | h0, (q >> 4) | h1)
}

/// Q5_0 → Q8_0, exactly: a Q5_0 weight is `d · (q - 16)` with q − 16 in −16..=15, which a Q8_0
/// block stores as the same f16 scale and the i8 `q - 16`. Lets Q5_0 tensors run on the Q8_0
/// kernels with bit-identical weights (at 34 instead of 22 bytes per 32 weights). `bytes` must
/// be whole blocks.
pub fn q5_0_to_q8_0(bytes: &[u8]) -> Result<Vec<u8>> {
    if !bytes.len().is_multiple_of(22) {
        return Err(Error::bad_weights(
            "",
            format!(
                "Q5_0 data of {} bytes is not whole 22-byte blocks",
                bytes.len()
            ),
        ));
    }
    let mut out = Vec::with_capacity(bytes.len() / 22 * 34);
    for b in bytes.chunks_exact(22) {
        out.extend_from_slice(&b[0..2]);
        let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
        let mut q = [0u8; QK];
        for j in 0..QK / 2 {
            let (lo, hi) = q5_pair(b[6 + j], qh, j);
            q[j] = (lo as i8 - 16) as u8;
            q[j + QK / 2] = (hi as i8 - 16) as u8;
        }
        out.extend_from_slice(&q);
    }
    Ok(out)
}

/// Dequantize whole Q5_0 (`q5_1 == false`) or Q5_1 blocks to f32. These two GGML types have no
/// [`DType`] of their own: the GGUF loader turns Q5_0 into Q8_0 ([`q5_0_to_q8_0`]) and Q5_1
/// into f32 with this.
pub fn dequantize_q5(q5_1: bool, bytes: &[u8]) -> Result<Vec<f32>> {
    let bb = if q5_1 { 24 } else { 22 };
    if !bytes.len().is_multiple_of(bb) {
        return Err(Error::bad_weights(
            "",
            format!(
                "Q5_{} data of {} bytes is not whole {bb}-byte blocks",
                u8::from(q5_1),
                bytes.len()
            ),
        ));
    }
    let mut out = vec![0f32; bytes.len() / bb * QK];
    for (b, y) in bytes.chunks_exact(bb).zip(out.chunks_exact_mut(QK)) {
        let y: &mut [f32; QK] = y.try_into().expect("chunk of QK");
        if q5_1 {
            dequantize_block_q5_1(b.try_into().expect("24-byte block"), y);
        } else {
            dequantize_block_q5_0(b.try_into().expect("22-byte block"), y);
        }
    }
    Ok(out)
}

/// The 6-bit scale and min of sub-block `j` (0..8) of a Q4_K / Q5_K super-block, packed into 12
/// bytes (ggml's `get_scale_min_k4`). Upper-case letters are the two high bits of scales 4..8,
/// lower-case of mins 4..8:
/// ```text
///  0 EEAAAAAA   scale 0 (A) + high bits of scale 4   4 eeaaaaaa  min 0 + high bits of min 4
///  1 FFBBBBBB   scale 1                              5 ffbbbbbb  min 1
///  2 GGCCCCCC   scale 2                              6 ggcccccc  min 2
///  3 HHDDDDDD   scale 3                              7 hhdddddd  min 3
///  8 eeeeEEEE   low 4 bits of min 4 / scale 4  ...  11 hhhhHHHH  min 7 / scale 7
/// ```
#[inline]
pub fn scale_min_k4(j: usize, q: &[u8; 12]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

fn scales12(b: &[u8]) -> &[u8; 12] {
    // Callers pass a slice of a fixed-size block at a constant offset, so this cannot fail.
    b[4..16]
        .try_into()
        .expect("12-byte scales inside a fixed-size block")
}

/// Q4_K, 144 bytes per 256 weights: 8 sub-blocks of 32, each with a 6-bit scale and min.
/// ```text
/// [0..2)     d       f16  super-block scale of the scales
/// [2..4)     dmin    f16  super-block scale of the mins
/// [4..16)    scales  12 bytes: 8 × (6-bit scale, 6-bit min), see `scale_min_k4`
/// [16..144)  qs      128 bytes: for each 64 weights, 32 bytes whose low nibbles are the first
///                    32 weights and high nibbles the next 32
/// ```
/// `y = d · scale[s] · q - dmin · min[s]`.
pub fn dequantize_block_q4_k(b: &[u8; 144], y: &mut [f32; QK_K]) {
    let d = f16_at(b, 0);
    let dmin = f16_at(b, 2);
    let sc = scales12(b);
    let qs = &b[16..144];
    for chunk in 0..4 {
        let (s1, m1) = scale_min_k4(2 * chunk, sc);
        let (s2, m2) = scale_min_k4(2 * chunk + 1, sc);
        let (d1, m1) = (d * s1 as f32, dmin * m1 as f32);
        let (d2, m2) = (d * s2 as f32, dmin * m2 as f32);
        let q = &qs[32 * chunk..32 * chunk + 32];
        let out = &mut y[64 * chunk..64 * chunk + 64];
        for l in 0..32 {
            out[l] = d1 * (q[l] & 0x0F) as f32 - m1;
            out[l + 32] = d2 * (q[l] >> 4) as f32 - m2;
        }
    }
}

/// Q5_K, 176 bytes per 256 weights: Q4_K plus a fifth bit per weight.
/// ```text
/// [0..2)     d       f16
/// [2..4)     dmin    f16
/// [4..16)    scales  12 bytes, as Q4_K
/// [16..48)   qh      32 bytes: bit k of qh[l] is the high bit of weight 32·k + l
/// [48..176)  qs      128 bytes of low nibbles, laid out as in Q4_K
/// ```
/// `y = d · scale[s] · (q_lo + 16 · q_hi) - dmin · min[s]`.
pub fn dequantize_block_q5_k(b: &[u8; 176], y: &mut [f32; QK_K]) {
    let d = f16_at(b, 0);
    let dmin = f16_at(b, 2);
    let sc = scales12(b);
    let qh = &b[16..48];
    let qs = &b[48..176];
    for chunk in 0..4 {
        let (s1, m1) = scale_min_k4(2 * chunk, sc);
        let (s2, m2) = scale_min_k4(2 * chunk + 1, sc);
        let (d1, m1) = (d * s1 as f32, dmin * m1 as f32);
        let (d2, m2) = (d * s2 as f32, dmin * m2 as f32);
        let (u1, u2) = (1u8 << (2 * chunk), 1u8 << (2 * chunk + 1));
        let q = &qs[32 * chunk..32 * chunk + 32];
        let out = &mut y[64 * chunk..64 * chunk + 64];
        for l in 0..32 {
            let h1 = if qh[l] & u1 != 0 { 16 } else { 0 };
            let h2 = if qh[l] & u2 != 0 { 16 } else { 0 };
            out[l] = d1 * ((q[l] & 0x0F) + h1) as f32 - m1;
            out[l + 32] = d2 * ((q[l] >> 4) + h2) as f32 - m2;
        }
    }
}

/// Q6_K, 210 bytes per 256 weights: 16 sub-blocks of 16 with signed 8-bit scales.
/// ```text
/// [0..128)    ql      low 4 bits: per 128 weights, 64 bytes; byte l (l < 32) holds weight l
///                     (low nibble) and l+64 (high), byte l+32 holds l+32 and l+96
/// [128..192)  qh      high 2 bits: per 128 weights, 32 bytes; byte l holds bits of weights
///                     l, l+32, l+64, l+96 at shifts 0, 2, 4, 6
/// [192..208)  scales  i8 × 16, one per 16 weights
/// [208..210)  d       f16
/// ```
/// `y = d · scale[i/16] · (q - 32)` with q the 6-bit value.
pub fn dequantize_block_q6_k(b: &[u8; 210], y: &mut [f32; QK_K]) {
    let d = f16_at(b, 208);
    for half in 0..2 {
        let ql = &b[64 * half..64 * half + 64];
        let qh = &b[128 + 32 * half..128 + 32 * half + 32];
        let sc = &b[192 + 8 * half..192 + 8 * half + 8];
        let out = &mut y[128 * half..128 * half + 128];
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0x0F) | ((qh[l] & 3) << 4)) as i32 - 32;
            let q2 = ((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
            out[l] = d * (sc[is] as i8) as f32 * q1 as f32;
            out[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
            out[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
            out[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
        }
    }
}

/// Apply a per-block dequantizer to every block of `bytes`.
fn blocks<const B: usize, const E: usize>(
    bytes: &[u8],
    out: &mut [f32],
    f: fn(&[u8; B], &mut [f32; E]),
) {
    for (b, y) in bytes.chunks_exact(B).zip(out.chunks_exact_mut(E)) {
        // chunks_exact yields exactly B / E items, so the conversions cannot fail.
        f(
            b.try_into().expect("B-byte chunk"),
            y.try_into().expect("E-element chunk"),
        );
    }
}

/// Dequantize `bytes` of `dtype` into `out` (which must hold exactly the elements `bytes`
/// encodes). F32/F16/BF16 are converted; block types are expanded block by block.
pub fn dequantize(dtype: DType, bytes: &[u8], out: &mut [f32]) -> Result<()> {
    if dtype.bytes_for(out.len()) != Some(bytes.len()) {
        return Err(Error::arg(format!(
            "dequantize {dtype}: {} bytes do not encode {} elements",
            bytes.len(),
            out.len()
        )));
    }
    match dtype {
        DType::F32 => {
            for (c, y) in bytes.chunks_exact(4).zip(out.iter_mut()) {
                *y = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        DType::F16 => {
            for (c, y) in bytes.chunks_exact(2).zip(out.iter_mut()) {
                *y = f16::from_le_bytes([c[0], c[1]]).to_f32();
            }
        }
        DType::BF16 => {
            for (c, y) in bytes.chunks_exact(2).zip(out.iter_mut()) {
                *y = bf16::from_le_bytes([c[0], c[1]]).to_f32();
            }
        }
        DType::Q8_0 => blocks(bytes, out, dequantize_block_q8_0),
        DType::Q4_0 => blocks(bytes, out, dequantize_block_q4_0),
        DType::Q4_1 => blocks(bytes, out, dequantize_block_q4_1),
        DType::Q4K => blocks(bytes, out, dequantize_block_q4_k),
        DType::Q5K => blocks(bytes, out, dequantize_block_q5_k),
        DType::Q6K => blocks(bytes, out, dequantize_block_q6_k),
    }
    Ok(())
}

/// Dequantize into a new vector of `n` elements.
pub fn dequantize_to_vec(dtype: DType, bytes: &[u8], n: usize) -> Result<Vec<f32>> {
    let mut out = vec![0f32; n];
    dequantize(dtype, bytes, &mut out)?;
    Ok(out)
}

/// Quantize to Q8_0 exactly as ggml's `quantize_row_q8_0_ref` does: per block of 32,
/// `d = max|x| / 127`, `q = round(x / d)` (half away from zero), d stored as f16.
/// `x.len()` must be a multiple of 32.
pub fn quantize_q8_0_reference(x: &[f32]) -> Result<Vec<u8>> {
    if !x.len().is_multiple_of(QK) {
        return Err(Error::arg(format!(
            "quantize_q8_0: length {} is not a multiple of {QK}",
            x.len()
        )));
    }
    let mut out = Vec::with_capacity(x.len() / QK * 34);
    for blk in x.chunks_exact(QK) {
        let amax = blk.iter().fold(0f32, |a, v| a.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
        // The scale is rounded to f16 after the quotients are taken with the f32 scale, as ggml
        // does; the stored values therefore round-trip to within d/2 + f16 rounding of d.
        out.extend(blk.iter().map(|v| (v * id).round() as i8 as u8));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q8_0_hand_block() {
        let mut b = [0u8; 34];
        b[0..2].copy_from_slice(&f16::from_f32(0.5).to_le_bytes());
        for j in 0..32 {
            b[2 + j] = (j as i8 - 16) as u8;
        }
        let mut y = [0f32; 32];
        dequantize_block_q8_0(&b, &mut y);
        for (j, v) in y.iter().enumerate() {
            assert_eq!(*v, 0.5 * (j as f32 - 16.0));
        }
    }

    #[test]
    fn q4_0_and_q4_1_hand_blocks() {
        let mut b = [0u8; 18];
        b[0..2].copy_from_slice(&f16::from_f32(2.0).to_le_bytes());
        b[2] = 0xF1; // weight 0 = (1-8)·2 = -14, weight 16 = (15-8)·2 = 14
        let mut y = [0f32; 32];
        dequantize_block_q4_0(&b, &mut y);
        assert_eq!((y[0], y[16], y[1]), (-14.0, 14.0, -16.0));

        let mut b = [0u8; 20];
        b[0..2].copy_from_slice(&f16::from_f32(0.25).to_le_bytes());
        b[2..4].copy_from_slice(&f16::from_f32(-1.0).to_le_bytes());
        b[4 + 3] = 0x4C; // weight 3 = 12·0.25 - 1 = 2, weight 19 = 4·0.25 - 1 = 0
        dequantize_block_q4_1(&b, &mut y);
        assert_eq!((y[3], y[19], y[0]), (2.0, 0.0, -1.0));
    }

    #[test]
    fn q5_0_and_q5_1_hand_blocks() {
        // Q5_0: weight 0 has nibble 0x1 and high bit 1 → q = 17 → (17-16)·2 = 2; weight 16 has
        // nibble 0xF and high bit 0 → q = 15 → -2; weight 1: nibble 0, no high bit → -32.
        let mut b = [0u8; 22];
        b[0..2].copy_from_slice(&f16::from_f32(2.0).to_le_bytes());
        b[2..6].copy_from_slice(&1u32.to_le_bytes()); // bit 0: high bit of weight 0
        b[6] = 0xF1;
        let mut y = [0f32; 32];
        dequantize_block_q5_0(&b, &mut y);
        assert_eq!((y[0], y[16], y[1]), (2.0, -2.0, -32.0));
        // High bit of weight 16 + j is bit 16 + j of qh.
        b[2..6].copy_from_slice(&(1u32 << 16).to_le_bytes());
        dequantize_block_q5_0(&b, &mut y);
        assert_eq!((y[0], y[16]), (-30.0, 30.0)); // q 1 → -15·2; q 31 → 15·2
                                                  // The exact Q8_0 repack gives the same values.
        let q8 = q5_0_to_q8_0(&b).unwrap();
        let mut y8 = [0f32; 32];
        dequantize_block_q8_0(q8[..34].try_into().unwrap(), &mut y8);
        assert_eq!(y, y8);

        // Q5_1: weight 3 nibble 0xC + high bit (bit 3) → 28 · 0.25 - 1 = 6; weight 19 nibble 4,
        // no high bit → 4 · 0.25 - 1 = 0.
        let mut b = [0u8; 24];
        b[0..2].copy_from_slice(&f16::from_f32(0.25).to_le_bytes());
        b[2..4].copy_from_slice(&f16::from_f32(-1.0).to_le_bytes());
        b[4..8].copy_from_slice(&(1u32 << 3).to_le_bytes());
        b[8 + 3] = 0x4C;
        dequantize_block_q5_1(&b, &mut y);
        assert_eq!((y[3], y[19], y[0]), (6.0, 0.0, -1.0));
        assert!(dequantize_q5(true, &b[..23]).is_err());
        assert!(q5_0_to_q8_0(&[0u8; 21]).is_err());
    }

    #[test]
    fn q5_0_repack_is_exact_on_every_code() {
        // Every 5-bit code in every position, through both paths.
        let mut rng = 0x9E37_79B9_7F4A_7C15_u64;
        let mut bytes = Vec::new();
        for _ in 0..64 {
            let mut b = [0u8; 22];
            for x in b.iter_mut() {
                rng = rng
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                *x = (rng >> 56) as u8;
            }
            b[0..2].copy_from_slice(&f16::from_f32(0.037).to_le_bytes());
            bytes.extend_from_slice(&b);
        }
        let want = dequantize_q5(false, &bytes).unwrap();
        let q8 = q5_0_to_q8_0(&bytes).unwrap();
        let got = dequantize_to_vec(DType::Q8_0, &q8, want.len()).unwrap();
        assert_eq!(got, want);
    }

    #[test]
    fn q4_k_hand_block() {
        let mut b = [0u8; 144];
        b[0..2].copy_from_slice(&f16::from_f32(1.0).to_le_bytes());
        b[2..4].copy_from_slice(&f16::from_f32(0.5).to_le_bytes());
        // sub-block 0: scale 3, min 2; sub-block 5: scale 0b10_0001 = 33, min 0b01_0100 = 20.
        b[4] = 3;
        b[8] = 2;
        b[4 + 1] = 0b1000_0000; // high bits of scale 5 = 0b10
        b[4 + 5] = 0b0100_0000; // high bits of min 5 = 0b01
        b[4 + 9] = 0x4 << 4 | 0x1; // low bits: min 5 = 0x4, scale 5 = 0x1
        assert_eq!(scale_min_k4(5, b[4..16].try_into().unwrap()), (33, 20));
        b[16] = 0x07; // weight 0 (sub-block 0) q=7; high nibble → weight 32 (sub-block 1)
        b[16 + 64 + 5] = 0x90; // chunk 2, byte 5: high nibble 9 → weight 128+32+5 (sub-block 5)
        let mut y = [0f32; 256];
        dequantize_block_q4_k(&b, &mut y);
        assert_eq!(y[0], 3.0 * 7.0 - 0.5 * 2.0);
        assert_eq!(y[165], 33.0 * 9.0 - 0.5 * 20.0);
    }

    #[test]
    fn q6_k_hand_block() {
        let mut b = [0u8; 210];
        b[208..210].copy_from_slice(&f16::from_f32(0.5).to_le_bytes());
        b[192 + 8 + 6] = (-3i8) as u8; // scale of weights 224..240 (second half, l/16=0, +6)
        b[64 + 32 + 1] = 0xA0; // second half, byte l+32 for l=1: high nibble 10 → weight 128+96+1
        b[128 + 32 + 1] = 0b11 << 6; // high bits of weight 128+96+1 = 3 → q = 10 + 48 - 32 = 26
        let mut y = [0f32; 256];
        dequantize_block_q6_k(&b, &mut y);
        assert_eq!(y[225], 0.5 * -3.0 * 26.0);
    }

    #[test]
    fn q8_0_quantize_round_trips() {
        let x: Vec<f32> = (0..64)
            .map(|i| ((i * 37 % 23) as f32 - 11.0) / 7.0)
            .collect();
        let q = quantize_q8_0_reference(&x).unwrap();
        assert_eq!(q.len(), 68);
        let y = dequantize_to_vec(DType::Q8_0, &q, 64).unwrap();
        for blk in 0..2 {
            let amax = x[blk * 32..blk * 32 + 32]
                .iter()
                .fold(0f32, |a, v| a.max(v.abs()));
            // Rounding to the nearest of 255 levels errs by at most half a step (amax/254), plus
            // the f16 rounding of the scale (relative 2^-11) applied to values up to amax.
            let tol = amax / 254.0 + amax * 1e-3;
            for j in blk * 32..blk * 32 + 32 {
                assert!((x[j] - y[j]).abs() <= tol, "{j}: {} vs {}", x[j], y[j]);
            }
        }
        assert!(quantize_q8_0_reference(&x[..31]).is_err());
        assert_eq!(quantize_q8_0_reference(&[0.0; 32]).unwrap()[2..], [0u8; 32]);
    }

    #[test]
    fn size_mismatch_is_an_error() {
        let mut out = [0f32; 32];
        assert!(dequantize(DType::Q4_0, &[0u8; 17], &mut out).is_err());
    }
}
