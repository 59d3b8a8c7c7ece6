//! The CPU backend: f32 activations, weights used in place from the memory map, rayon threads,
//! SIMD dot products (runtime-detected, see `simd`).
//!
//! Every op here is the plain math; the heavy lifting (matrix products over each weight dtype)
//! lives in `matmul`. The KV cache is f32, laid out `[layer][position][kv_head][head_dim]`.
//! Nothing here allocates per token: buffers come from the model, attention keeps its scores
//! in a fixed-size stack block (online softmax over blocks of keys).

pub(crate) mod gemm;
mod gemma_ops;
pub mod matmul;
pub mod quant_kernels;
pub mod simd;

use simd::Kernels;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Instant;

use rayon::prelude::*;

use super::{
    Activation, AttnParams, Backend, KvShape, MlpActivation, OpProfile, StepLayout, TraceEvent,
};
use crate::error::{Error, Result};
use crate::tensor::{DType, WeightTensor};

/// The paged KV cache: K and V for every layer, `[layer][slot][n_kv_heads · head_dim]` (see
/// [`KvShape`] for how positions map to slots).
pub struct CpuKv {
    shape: KvShape,
    k: Vec<f32>,
    v: Vec<f32>,
}

pub struct CpuBackend {
    pool: rayon::ThreadPool,
    threads: usize,
    profile: Option<Mutex<Profile>>,
    activations: Option<Mutex<Vec<Activation>>>,
}

/// Per-op totals and a bounded timeline of individual executions.
struct Profile {
    origin: Instant,
    totals: BTreeMap<String, OpProfile>,
    events: Vec<TraceEvent>,
}

/// The timeline keeps at most this many events (a few decode steps of a large model).
const MAX_TRACE_EVENTS: usize = 100_000;

impl CpuBackend {
    /// `threads == 0` uses every core.
    pub fn new(threads: usize) -> Result<CpuBackend> {
        let threads = if threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            threads
        };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("minfer-cpu-{i}"))
            .build()
            .map_err(|e| Error::Device(format!("cannot start {threads} CPU threads: {e}")))?;
        Ok(CpuBackend {
            pool,
            threads,
            profile: None,
            activations: None,
        })
    }

    /// Keep a copy of every op's output (see [`Backend::take_activations`]). Slow; for study.
    pub fn with_activations(mut self, on: bool) -> Self {
        self.activations = on.then(|| Mutex::new(Vec::new()));
        self
    }

    fn observe(&self, op: impl FnOnce() -> String, rows: usize, values: &[f32]) {
        if let Some(a) = &self.activations {
            let mut a = a.lock().unwrap_or_else(|e| e.into_inner());
            a.push(Activation {
                op: op(),
                rows,
                values: values.to_vec(),
            });
        }
    }

    /// Record time, bytes and flops per op (see [`Backend::take_profile`]).
    pub fn with_profiling(mut self, on: bool) -> Self {
        self.profile = on.then(|| {
            Mutex::new(Profile {
                origin: Instant::now(),
                totals: BTreeMap::new(),
                events: Vec::new(),
            })
        });
        self
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    fn begin(&self) -> Option<Instant> {
        self.profile.as_ref().map(|_| Instant::now())
    }

    fn end(&self, t: Option<Instant>, op: impl FnOnce() -> String, bytes: f64, flops: f64) {
        let (Some(t), Some(p)) = (t, &self.profile) else {
            return;
        };
        let dt = t.elapsed().as_secs_f64();
        let mut p = p.lock().unwrap_or_else(|e| e.into_inner());
        let name = op();
        if p.events.len() < MAX_TRACE_EVENTS {
            let start_us = (t - p.origin).as_secs_f64() * 1e6;
            p.events.push(TraceEvent {
                name: name.clone(),
                start_us,
                dur_us: dt * 1e6,
            });
        }
        let e = p.totals.entry(name.clone()).or_insert_with(|| OpProfile {
            op: name,
            ..Default::default()
        });
        e.calls += 1;
        e.seconds += dt;
        e.bytes += bytes;
        e.flops += flops;
    }

    /// Run `f` on this backend's thread pool, timed when profiling.
    fn run<T: Send>(
        &self,
        op: impl FnOnce() -> String,
        bytes: f64,
        flops: f64,
        f: impl FnOnce() -> T + Send,
    ) -> T {
        let t = self.begin();
        let inject = crate::error::fault::tick();
        // A panic in the op, on whichever worker, comes back here through rayon; re-raise it
        // naming the op, for `scoped` (or the Model API) to turn into Error::Internal.
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.pool.install(|| {
                if inject {
                    let last = self.threads.max(2) - 1;
                    (0..=last).into_par_iter().for_each(|i| {
                        if i == last {
                            panic!("injected fault (minfer::internals::fault)");
                        }
                    });
                }
                f()
            })
        }));
        match r {
            Ok(r) => {
                self.end(t, op, bytes, flops);
                r
            }
            Err(p) => std::panic::resume_unwind(Box::new(crate::error::OpPanic {
                op: op(),
                message: crate::error::panic_message(&*p),
            })),
        }
    }
}

/// "model.layers.7.mlp.down_proj.weight" → "mlp.down_proj": one profile row per kind of weight.
fn op_label(prefix: &str, name: &str) -> String {
    let short = name
        .strip_prefix("model.layers.")
        .map_or(name, |rest| rest.split_once('.').map_or(rest, |(_, r)| r));
    format!(
        "{prefix} {}",
        short.strip_suffix(".weight").unwrap_or(short)
    )
}

fn check_len(what: &str, have: usize, need: usize) -> Result<()> {
    if have < need {
        return Err(Error::arg(format!(
            "{what}: buffer holds {have} values, the op needs {need}"
        )));
    }
    Ok(())
}

/// Rows per parallel task of the row-wise ops (norms, rope): one task per ~16K values, so
/// decode (one row) stays on the calling thread and a 128-row prefill is split in a few tasks.
fn par_rows(rows: usize, width: usize) -> usize {
    (16_384 / width.max(1)).clamp(1, rows.max(1))
}

/// Rotary embedding of one row (`heads × head_dim`) at position `pos` (see `Backend::rope`).
/// `head_dim / 2 <= 256` (checked by the caller).
fn rope_row(row: &mut [f32], pos: usize, head_dim: usize, inv: &[f32]) {
    let half = head_dim / 2;
    // cos/sin of one position, shared by every head of the row (stack, no allocation).
    let (mut cos, mut sin) = ([0f32; 256], [0f32; 256]);
    let pos = pos as f32;
    for i in 0..half {
        // transformers forms the angle in f32, then takes cos/sin.
        let (s, c) = ((pos * inv[i]) as f64).sin_cos();
        (sin[i], cos[i]) = (s as f32, c as f32);
    }
    for v in row.chunks_exact_mut(head_dim) {
        for i in 0..half {
            let (a, b) = (v[i], v[i + half]);
            v[i] = a * cos[i] - b * sin[i];
            v[i + half] = b * cos[i] + a * sin[i];
        }
    }
}

fn rms_norm_row(out: &mut [f32], x: &[f32], w: &[f32], eps: f32) {
    let ss: f32 = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    let inv = 1.0 / (ss + eps).sqrt();
    for ((o, &xi), &wi) in out.iter_mut().zip(x).zip(w) {
        *o = wi * (xi * inv);
    }
}

impl Backend for CpuBackend {
    type Buf = Vec<f32>;
    type Mat = WeightTensor;
    type Kv = CpuKv;
    type Layout = StepLayout;

    fn name(&self) -> String {
        format!("cpu ({}, {} threads)", simd::describe(), self.threads)
    }

    fn upload(&self, w: &WeightTensor) -> Result<WeightTensor> {
        if w.shape.len() == 1 && w.dtype != DType::F32 {
            // Vectors (norms, biases, tables) are tiny: hold them as f32.
            return Ok(WeightTensor::from_f32(
                w.name.clone(),
                w.shape.clone(),
                &w.to_f32_vec()?,
            ));
        }
        Ok(if w.is_aligned() {
            w.clone()
        } else {
            w.to_owned_aligned()
        })
    }

    fn alloc(&self, len: usize) -> Result<Vec<f32>> {
        Ok(vec![0.0; len])
    }

    fn alloc_kv(&self, shape: KvShape) -> Result<CpuKv> {
        let n = shape
            .layer_len()?
            .checked_mul(shape.layers)
            .ok_or_else(|| Error::arg("KV cache size overflows"))?;
        Ok(CpuKv {
            shape,
            k: vec![0.0; n],
            v: vec![0.0; n],
        })
    }

    fn alloc_layout(
        &self,
        max_rows: usize,
        max_tables: usize,
        max_blocks: usize,
    ) -> Result<StepLayout> {
        Ok(StepLayout {
            positions: Vec::with_capacity(max_rows),
            seq_of_row: Vec::with_capacity(max_rows),
            tables: Vec::with_capacity(max_tables * max_blocks),
            max_blocks,
        })
    }

    fn set_layout(&self, dst: &mut StepLayout, src: &StepLayout) -> Result<()> {
        dst.clone_from(src);
        Ok(())
    }

    fn copy_kv_blocks(&self, kv: &mut CpuKv, pairs: &[(u32, u32)]) -> Result<()> {
        let s = kv.shape;
        let layer = s.layer_len()?;
        let block = s.block_size * s.n_kv_heads * s.head_dim;
        s.check_block_pairs(pairs)?;
        for l in 0..s.layers {
            for &(src, dst) in pairs {
                let (src, dst) = (
                    l * layer + src as usize * block,
                    l * layer + dst as usize * block,
                );
                kv.k.copy_within(src..src + block, dst);
                kv.v.copy_within(src..src + block, dst);
            }
        }
        Ok(())
    }

    fn embed(&self, out: &mut Vec<f32>, table: &WeightTensor, tokens: &[u32]) -> Result<()> {
        let t0 = self.begin();
        let [vocab, dim] = table.shape[..] else {
            return Err(Error::ShapeMismatch {
                name: table.name.clone(),
                expected: vec![0, 0],
                got: table.shape.clone(),
            });
        };
        check_len("embed", out.len(), tokens.len() * dim)?;
        for (r, &t) in tokens.iter().enumerate() {
            let t = t as usize;
            if t >= vocab {
                return Err(Error::arg(format!(
                    "token id {t} is out of range for a vocabulary of {vocab}"
                )));
            }
            let row = &mut out[r * dim..(r + 1) * dim];
            match table.dtype {
                DType::F32 => row.copy_from_slice(
                    &table.as_f32().ok_or_else(|| misaligned(table))?[t * dim..(t + 1) * dim],
                ),
                DType::BF16 => {
                    let src =
                        &table.as_bf16().ok_or_else(|| misaligned(table))?[t * dim..(t + 1) * dim];
                    row.iter_mut().zip(src).for_each(|(o, s)| *o = s.to_f32());
                }
                DType::F16 => {
                    let src =
                        &table.as_f16().ok_or_else(|| misaligned(table))?[t * dim..(t + 1) * dim];
                    row.iter_mut().zip(src).for_each(|(o, s)| *o = s.to_f32());
                }
                _ => matmul::dequantize_row(table, t, row)?,
            }
        }
        self.end(t0, || "embed".into(), (tokens.len() * dim * 4) as f64, 0.0);
        self.observe(|| "embed".into(), tokens.len(), &out[..tokens.len() * dim]);
        Ok(())
    }

    fn rms_norm(
        &self,
        out: &mut Vec<f32>,
        x: &Vec<f32>,
        w: &WeightTensor,
        rows: usize,
        eps: f32,
    ) -> Result<()> {
        // Borrowed, not formatted: the label is built only when activations are recorded.
        let w_name: &str = w.name.trim_end_matches(".weight");
        let t0 = self.begin();
        let w = w.as_f32().ok_or_else(|| misaligned(w))?;
        let dim = w.len();
        check_len("rms_norm", out.len().min(x.len()), rows * dim)?;
        let rows_par = par_rows(rows, dim);
        self.pool.install(|| {
            out[..rows * dim]
                .par_chunks_mut(dim)
                .with_min_len(rows_par)
                .zip(x[..rows * dim].par_chunks(dim))
                .for_each(|(o, x)| rms_norm_row(o, x, w, eps));
        });
        self.end(
            t0,
            || "rms_norm".into(),
            (rows * dim * 8) as f64,
            (rows * dim * 3) as f64,
        );
        self.observe(|| w_name.to_string(), rows, &out[..rows * dim]);
        Ok(())
    }

    fn add_rms_norm(
        &self,
        out: &mut Vec<f32>,
        residual: &mut Vec<f32>,
        x: &Vec<f32>,
        w: &WeightTensor,
        rows: usize,
        eps: f32,
    ) -> Result<()> {
        // Borrowed, not formatted: the label is built only when activations are recorded.
        let w_name: &str = w.name.trim_end_matches(".weight");
        let t0 = self.begin();
        let w = w.as_f32().ok_or_else(|| misaligned(w))?;
        let dim = w.len();
        check_len(
            "add_rms_norm",
            out.len().min(x.len()).min(residual.len()),
            rows * dim,
        )?;
        let rows_par = par_rows(rows, dim);
        self.pool.install(|| {
            residual[..rows * dim]
                .par_chunks_mut(dim)
                .with_min_len(rows_par)
                .zip(out[..rows * dim].par_chunks_mut(dim))
                .zip(x[..rows * dim].par_chunks(dim))
                .for_each(|((res, o), x)| {
                    res.iter_mut().zip(x).for_each(|(a, b)| *a += b);
                    rms_norm_row(o, res, w, eps);
                });
        });
        self.end(
            t0,
            || "add_rms_norm".into(),
            (rows * dim * 16) as f64,
            (rows * dim * 4) as f64,
        );
        self.observe(
            || "residual += sublayer".to_string(),
            rows,
            &residual[..rows * dim],
        );
        self.observe(|| w_name.to_string(), rows, &out[..rows * dim]);
        Ok(())
    }

    fn matmul(
        &self,
        out: &mut Vec<f32>,
        x: &Vec<f32>,
        w: &WeightTensor,
        bias: Option<&WeightTensor>,
        rows: usize,
    ) -> Result<()> {
        let bias = match bias {
            Some(b) => Some(b.as_f32().ok_or_else(|| misaligned(b))?),
            None => None,
        };
        let bytes = w.bytes().len() as f64;
        let flops = 2.0 * rows as f64 * w.numel() as f64;
        self.run(
            || op_label("matmul", &w.name),
            bytes,
            flops,
            || matmul::matmul(out, x, rows, w, bias),
        )?;
        if self.activations.is_some() {
            let n = rows * w.shape[0];
            self.observe(
                || w.name.trim_end_matches(".weight").to_string(),
                rows,
                &out[..n],
            );
        }
        Ok(())
    }

    fn head_rms_norm(
        &self,
        x: &mut Vec<f32>,
        w: &WeightTensor,
        rows: usize,
        heads: usize,
        eps: f32,
    ) -> Result<()> {
        // Borrowed, not formatted: the label is built only when activations are recorded.
        let w_name: &str = w.name.trim_end_matches(".weight");
        let t0 = self.begin();
        let w = w.as_f32().ok_or_else(|| misaligned(w))?;
        let hd = w.len();
        check_len("head_rms_norm", x.len(), rows * heads * hd)?;
        let mut tmp = [0f32; 512];
        if hd > tmp.len() {
            return Err(Error::arg(format!("head_dim {hd} exceeds 512")));
        }
        for head in x[..rows * heads * hd].chunks_exact_mut(hd) {
            tmp[..hd].copy_from_slice(head);
            rms_norm_row(head, &tmp[..hd], w, eps);
        }
        self.end(
            t0,
            || "head_rms_norm".into(),
            (rows * heads * hd * 8) as f64,
            (rows * heads * hd * 3) as f64,
        );
        self.observe(|| w_name.to_string(), rows, &x[..rows * heads * hd]);
        Ok(())
    }

    fn rope(
        &self,
        x: &mut Vec<f32>,
        rows: usize,
        heads: usize,
        head_dim: usize,
        layout: &StepLayout,
        inv_freq: &WeightTensor,
    ) -> Result<()> {
        let t0 = self.begin();
        check_len("rope positions", layout.positions.len(), rows)?;
        let inv = inv_freq.as_f32().ok_or_else(|| misaligned(inv_freq))?;
        let half = head_dim / 2;
        check_len("rope table", inv.len(), half)?;
        check_len("rope", x.len(), rows * heads * head_dim)?;
        if half > 256 {
            return Err(Error::arg(format!("rope: head_dim {head_dim} exceeds 512")));
        }
        let width = heads * head_dim;
        let rows_par = par_rows(rows, width);
        self.pool.install(|| {
            x[..rows * width]
                .par_chunks_mut(width)
                .with_min_len(rows_par)
                .enumerate()
                .for_each(|(r, row)| rope_row(row, layout.positions[r] as usize, head_dim, inv))
        });
        self.end(
            t0,
            || "rope".into(),
            (rows * heads * head_dim * 8) as f64,
            (rows * heads * head_dim * 3) as f64,
        );
        self.observe(
            || format!("rope ({heads} heads)"),
            rows,
            &x[..rows * heads * head_dim],
        );
        Ok(())
    }

    fn attention(
        &self,
        out: &mut Vec<f32>,
        q: &Vec<f32>,
        k: &Vec<f32>,
        v: &Vec<f32>,
        kv: &mut CpuKv,
        layer: usize,
        rows: usize,
        layout: &StepLayout,
        p: &AttnParams,
    ) -> Result<()> {
        let s = kv.shape;
        let kv_dim = s.n_kv_heads * s.head_dim;
        if p.n_kv_heads != s.n_kv_heads || p.head_dim != s.head_dim || layer >= s.layers {
            return Err(Error::arg("attention parameters do not match the KV cache"));
        }
        layout.validate(rows, &s)?;
        check_len("attention k/v", k.len().min(v.len()), rows * kv_dim)?;
        let q_dim = p.n_heads * p.head_dim;
        check_len("attention q/out", q.len().min(out.len()), rows * q_dim)?;

        // Write this step's K and V to their slots.
        let base = layer * s.slots() * kv_dim;
        for r in 0..rows {
            let at = base + layout.slot_of(r, s.block_size) * kv_dim;
            kv.k[at..at + kv_dim].copy_from_slice(&k[r * kv_dim..(r + 1) * kv_dim]);
            kv.v[at..at + kv_dim].copy_from_slice(&v[r * kv_dim..(r + 1) * kv_dim]);
        }

        let kc = &kv.k[base..base + s.slots() * kv_dim];
        let vc = &kv.v[base..base + s.slots() * kv_dim];
        let group = p.n_heads / p.n_kv_heads;
        let hd = p.head_dim;
        let keys: f64 = layout.positions.iter().map(|&x| x as f64 + 1.0).sum();
        let kv_bytes = keys * 2.0 * kv_dim as f64 * 4.0;
        let flops = 4.0 * keys * q_dim as f64;
        // The geometry of the segment (one sequence's consecutive rows) starting at row r0.
        let geo = |r0: usize| AttnGeometry {
            kc,
            vc,
            table: layout.table_of(r0),
            block_size: s.block_size,
            q: &q[r0 * q_dim..rows * q_dim],
            q_dim,
            kv_dim,
            group,
            hd,
            pos0: layout.positions[r0] as usize,
            window: p.window,
            scale: p.scale,
        };
        // Segments: maximal runs of rows of one sequence at consecutive positions.
        let mut segments = Vec::new();
        let mut r0 = 0;
        while r0 < rows {
            let mut r1 = r0 + 1;
            while r1 < rows
                && layout.seq_of_row[r1] == layout.seq_of_row[r0]
                && layout.positions[r1] == layout.positions[r1 - 1] + 1
            {
                r1 += 1;
            }
            segments.push((r0, r1));
            r0 = r1;
        }
        // Rows of short segments (decode rows, tiny chunks) attend one (row, head) at a time;
        // long segments (prefill) go through the blocked paths.
        let mut per_row = vec![false; rows];
        for &(r0, r1) in &segments {
            if r1 - r0 < ROW_BLOCK {
                per_row[r0..r1].iter_mut().for_each(|x| *x = true);
            }
        }
        self.run(
            || "attention".to_string(),
            kv_bytes,
            flops,
            || {
                let out = &mut out[..rows * q_dim];
                if per_row.iter().any(|&x| x) {
                    // Decode: one task per (row, head); a group's K/V rows stay in L2 between
                    // the heads that share them. Each row's arithmetic is its own, whatever
                    // else is in the step (batch invariance).
                    out.par_chunks_mut(hd)
                        .enumerate()
                        .filter(|(idx, _)| per_row[idx / p.n_heads])
                        .for_each(|(idx, o)| {
                            let (r, h) = (idx / p.n_heads, idx % p.n_heads);
                            geo(r).attend(o, 0, h);
                        });
                }
                for &(r0, r1) in segments.iter().filter(|(r0, _)| !per_row[*r0]) {
                    let g0 = geo(r0);
                    let n = r1 - r0;
                    if g0.gemm_fits(simd::kernels()) {
                        // Prefill: one task per (block of query rows, kv head); inside it, the
                        // block's queries meet each block of keys through the GEMM micro-kernel.
                        let kern = simd::kernels();
                        let br = (MAX_QUERIES / group).max(1);
                        let n_kv = s.n_kv_heads;
                        let blocks = n.div_ceil(br);
                        let dst = gemm::SyncPtr(out[r0 * q_dim..].as_mut_ptr());
                        (0..blocks * n_kv).into_par_iter().for_each(|t| {
                            let (b, g) = (t / n_kv, t % n_kv);
                            let e = ((b + 1) * br).min(n);
                            with_attn_bufs(|bufs| {
                                // SAFETY: dst is out from row r0 (n rows of q_dim follow); this
                                // task writes only segment rows b·br..e, heads of kv head g,
                                // which no other task writes.
                                unsafe { g0.attend_gemm(kern, dst, b * br, e, g, bufs) }
                            });
                        });
                    } else {
                        // Prefill: one task per block of query rows; inside it, each block of
                        // keys is swept by every row and every head of its group while it sits
                        // in L1.
                        out[r0 * q_dim..r1 * q_dim]
                            .par_chunks_mut(ROW_BLOCK * q_dim)
                            .enumerate()
                            .for_each(|(b, o)| g0.attend_rows(o, b * ROW_BLOCK));
                    }
                }
            },
        );
        self.observe(
            || format!("attention layer {layer}"),
            rows,
            &out[..rows * q_dim],
        );
        Ok(())
    }

    fn silu_mul(&self, gate: &mut Vec<f32>, up: &Vec<f32>, len: usize) -> Result<()> {
        let t0 = self.begin();
        check_len("silu_mul", gate.len().min(up.len()), len)?;
        // silu(g) · u = g / (1 + e^-g) · u, with e^-g computed 64 at a time (vectorized), in
        // tasks of 16K values (decode's few thousand stay on the calling thread).
        self.pool.install(|| {
            gate[..len]
                .par_chunks_mut(16_384)
                .zip(up[..len].par_chunks(16_384))
                .for_each(|(gs, us)| silu_mul_chunk(gs, us))
        });
        self.end(
            t0,
            || "silu_mul".into(),
            (len * 12) as f64,
            (len * 5) as f64,
        );
        self.observe(|| "silu_mul".into(), 0, &gate[..len]);
        Ok(())
    }

    fn gelu_tanh_mul(&self, gate: &mut Vec<f32>, up: &Vec<f32>, len: usize) -> Result<()> {
        let t0 = self.begin();
        check_len("gelu_tanh_mul", gate.len().min(up.len()), len)?;
        gemma_ops::gelu_tanh_mul(&mut gate[..len], &up[..len]);
        self.end(
            t0,
            || "gelu_tanh_mul".into(),
            (len * 12) as f64,
            (len * 9) as f64,
        );
        self.observe(|| "gelu_tanh_mul".into(), 0, &gate[..len]);
        Ok(())
    }

    fn gated_act(
        &self,
        out: &mut Vec<f32>,
        gate_up: &mut Vec<f32>,
        rows: usize,
        width: usize,
        act: MlpActivation,
    ) -> Result<()> {
        let t0 = self.begin();
        if width == 0 {
            return Ok(());
        }
        check_len("gated_act out", out.len(), rows * width)?;
        check_len("gated_act gate_up", gate_up.len(), rows * 2 * width)?;
        // Row by row, in parallel over rows (prefill): the row's gate half is copied to its
        // output row and activated there against the up half in place, so the fused
        // projection's output is read once and nothing is moved single-threaded.
        let f = match act {
            MlpActivation::Silu => silu_mul_chunk,
            MlpActivation::GeluTanh => gemma_ops::gelu_tanh_mul,
        };
        let rows_par = par_rows(rows, 2 * width);
        self.pool.install(|| {
            out[..rows * width]
                .par_chunks_mut(width)
                .with_min_len(rows_par)
                .zip(gate_up[..rows * 2 * width].par_chunks(2 * width))
                .for_each(|(o, gu)| {
                    o.copy_from_slice(&gu[..width]);
                    f(o, &gu[width..]);
                })
        });
        let name = match act {
            MlpActivation::Silu => "silu_mul",
            MlpActivation::GeluTanh => "gelu_tanh_mul",
        };
        self.end(
            t0,
            || name.into(),
            (rows * width * 12) as f64,
            (rows * width * if act == MlpActivation::Silu { 5 } else { 9 }) as f64,
        );
        self.observe(|| name.into(), 0, &out[..rows * width]);
        Ok(())
    }

    fn scale(&self, x: &mut Vec<f32>, s: f32, len: usize) -> Result<()> {
        let t0 = self.begin();
        check_len("scale", x.len(), len)?;
        x[..len].iter_mut().for_each(|v| *v *= s);
        self.end(t0, || "scale".into(), (len * 8) as f64, len as f64);
        self.observe(|| "scale".into(), 0, &x[..len]);
        Ok(())
    }

    fn add(&self, x: &mut Vec<f32>, y: &Vec<f32>, len: usize) -> Result<()> {
        let t0 = self.begin();
        check_len("add", x.len().min(y.len()), len)?;
        x[..len]
            .iter_mut()
            .zip(&y[..len])
            .for_each(|(a, b)| *a += b);
        self.end(t0, || "add".into(), (len * 12) as f64, len as f64);
        self.observe(|| "residual add".into(), 0, &x[..len]);
        Ok(())
    }

    fn copy_rows(
        &self,
        dst: &mut Vec<f32>,
        src: &Vec<f32>,
        src_row: usize,
        rows: usize,
        width: usize,
    ) -> Result<()> {
        check_len("copy_rows src", src.len(), (src_row + rows) * width)?;
        check_len("copy_rows dst", dst.len(), rows * width)?;
        dst[..rows * width].copy_from_slice(&src[src_row * width..(src_row + rows) * width]);
        Ok(())
    }

    fn read(&self, buf: &Vec<f32>, offset: usize, out: &mut [f32]) -> Result<()> {
        check_len("read", buf.len(), offset + out.len())?;
        out.copy_from_slice(&buf[offset..offset + out.len()]);
        Ok(())
    }

    fn argmax(&self, buf: &Vec<f32>, offset: usize, len: usize) -> Result<u32> {
        check_len("argmax", buf.len(), offset + len)?;
        Ok(argmax(&buf[offset..offset + len]) as u32)
    }

    fn take_profile(&self) -> Vec<OpProfile> {
        match &self.profile {
            None => Vec::new(),
            Some(p) => std::mem::take(&mut p.lock().unwrap_or_else(|e| e.into_inner()).totals)
                .into_values()
                .collect(),
        }
    }

    fn scoped(&self, f: &mut (dyn FnMut() -> Result<()> + Send)) -> Result<()> {
        // A panic in any op of the step is an error for this call, not a dead process.
        crate::error::catch_panic("forward step", || self.pool.install(f))
    }

    fn take_activations(&self) -> Vec<Activation> {
        match &self.activations {
            None => Vec::new(),
            Some(a) => std::mem::take(&mut *a.lock().unwrap_or_else(|e| e.into_inner())),
        }
    }

    fn take_trace(&self) -> Vec<TraceEvent> {
        match &self.profile {
            None => Vec::new(),
            Some(p) => std::mem::take(&mut p.lock().unwrap_or_else(|e| e.into_inner()).events),
        }
    }
}

fn misaligned(w: &WeightTensor) -> Error {
    Error::UnsupportedDtype {
        name: w.name.clone(),
        dtype: format!("{} (expected f32 after upload)", w.dtype),
    }
}

/// `x[i] = e^x[i]` for a slice, written so the compiler vectorizes it (libm's `expf` is one call
/// per element). Cephes' single-precision scheme: e^x = 2^n · e^r with n = round(x·log2 e),
/// r = x − n·ln 2 in two parts, e^r by a degree-6 polynomial; within 2 ulp of `f32::exp` over
/// the whole range (tested). Inputs below −87.3 give ~1e-38 instead of 0 (irrelevant where it is
/// used: softmax weights relative to a sum ≥ 1, and silu).
pub fn exp_inplace(x: &mut [f32]) {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const C1: f32 = 0.693_359_4;
    const C2: f32 = -2.121_944_4e-4;
    const ROUND: f32 = 12_582_912.0; // 1.5 · 2^23: adding and subtracting it rounds to an integer
    for v in x.iter_mut() {
        let t = v.clamp(-87.336_55, 88.376_26);
        let n = (t * LOG2E + ROUND) - ROUND;
        let r = t - n * C1 - n * C2;
        let mut p = 1.987_569_1e-4f32;
        p = p * r + 1.398_199_9e-3;
        p = p * r + 8.333_452e-3;
        p = p * r + 4.166_579_6e-2;
        p = p * r + 1.666_666_5e-1;
        p = p * r + 0.5;
        let e = p * r * r + r + 1.0;
        let scale = f32::from_bits(((n as i32 + 127) as u32) << 23);
        *v = if v.is_nan() { f32::NAN } else { e * scale };
    }
}

/// `g = silu(g) · u` elementwise.
fn silu_mul_chunk(gate: &mut [f32], up: &[f32]) {
    for (gs, us) in gate.chunks_mut(64).zip(up.chunks(64)) {
        let mut e = [0f32; 64];
        let e = &mut e[..gs.len()];
        e.iter_mut().zip(gs.iter()).for_each(|(e, g)| *e = -g);
        exp_inplace(e);
        for ((g, u), e) in gs.iter_mut().zip(us).zip(e.iter()) {
            *g = *g / (1.0 + e) * u;
        }
    }
}

/// Index of the first maximum (NaN never wins).
pub fn argmax(x: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] || x[best].is_nan() {
            best = i;
        }
    }
    best
}

/// Keys per online-softmax block: scores live in a stack array of this size.
const KEY_BLOCK: usize = 64;
/// Query rows per prefill attention task.
const ROW_BLOCK: usize = 8;
/// (row, head) queries per prefill attention task, at most: they share one transposed copy of
/// each key block, so more queries amortise it (48: 16 rows of SmolLM2's 3-head groups).
const MAX_QUERIES: usize = 48;

/// Scratch of one prefill attention task (see `AttnGeometry::attend_gemm`).
#[derive(Default)]
struct AttnBufs {
    /// queries × head_dim: the scaled queries
    q: Vec<f32>,
    /// queries × head_dim: the running Σ p·V
    o: Vec<f32>,
    /// queries × nr: the probabilities of the current key block
    p: Vec<f32>,
    /// head_dim × nr: the current key block, transposed
    kt: Vec<f32>,
    /// queries: running max and sum of the online softmax
    m: Vec<f32>,
    l: Vec<f32>,
}

thread_local! {
    static ATTN_BUFS: RefCell<AttnBufs> = RefCell::new(AttnBufs::default());
}

fn with_attn_bufs<R>(f: impl FnOnce(&mut AttnBufs) -> R) -> R {
    ATTN_BUFS.with(|cell| match cell.try_borrow_mut() {
        Ok(mut b) => f(&mut b),
        Err(_) => f(&mut AttnBufs::default()),
    })
}

/// Most query heads per KV head that the tiled path keeps state for on the stack.
const MAX_GROUP: usize = 16;
/// GEMM tiles of `nr` keys per prefill attention key block (`attend_gemm`).
const KEY_TILES: usize = 2;

/// Where one sequence's rows read from in one layer: the layer's pools (`[slots, kv_dim]` for K
/// and V) through the sequence's block table, its queries (`[rows, q_dim]`, row 0 at position
/// `pos0`), and the masking rule.
struct AttnGeometry<'a> {
    kc: &'a [f32],
    vc: &'a [f32],
    table: &'a [u32],
    block_size: usize,
    q: &'a [f32],
    q_dim: usize,
    kv_dim: usize,
    group: usize,
    hd: usize,
    pos0: usize,
    window: Option<usize>,
    scale: f32,
}

/// Running state of one query's online softmax: the maximum score so far and the sum of
/// exp(score - max); the weighted sum of values lives in the output slice.
#[derive(Clone, Copy)]
struct Softmax {
    m: f32,
    l: f32,
}

impl Softmax {
    const EMPTY: Softmax = Softmax {
        m: f32::NEG_INFINITY,
        l: 0.0,
    };
}

impl AttnGeometry<'_> {
    /// Keys visible to query row `r`: `first..=last` (causal, and within the window).
    fn key_range(&self, r: usize) -> (usize, usize) {
        let pos = self.pos0 + r;
        (self.window.map_or(0, |w| (pos + 1).saturating_sub(w)), pos)
    }

    /// Offset in the pools of position `j`'s kv head at column `off`.
    #[inline]
    fn at(&self, j: usize, off: usize) -> usize {
        let bs = self.block_size;
        let slot = if bs.is_power_of_two() {
            // The usual case: a shift and a mask, not a division per key.
            let shift = bs.trailing_zeros();
            ((self.table[j >> shift] as usize) << shift) | (j & (bs - 1))
        } else {
            self.table[j / bs] as usize * bs + j % bs
        };
        slot * self.kv_dim + off
    }

    fn query(&self, r: usize, h: usize) -> &[f32] {
        &self.q[r * self.q_dim + h * self.hd..r * self.q_dim + (h + 1) * self.hd]
    }

    /// Fold keys `j0..j1` (at most KEY_BLOCK) of kv head `g` into one query's state.
    #[allow(clippy::too_many_arguments)]
    fn fold(&self, acc: &mut [f32], st: &mut Softmax, q: &[f32], g: usize, j0: usize, j1: usize) {
        let (hd, off) = (self.hd, g * self.hd);
        let kern = simd::kernels();
        let mut scores = [0f32; KEY_BLOCK];
        // Keys in runs of consecutive slots (one KV block each): one kernel call per run.
        self.for_runs(j0, j1, off, |j, n, at| {
            let out = &mut scores[j - j0..j - j0 + n];
            kern.dots_strided(q, &self.kc[at..], self.kv_dim, out);
        });
        let mut bm = f32::NEG_INFINITY;
        for sc in &mut scores[..j1 - j0] {
            *sc *= self.scale;
            bm = bm.max(*sc);
        }
        let new_m = st.m.max(bm);
        let correction = (st.m - new_m).exp();
        if correction != 1.0 {
            acc.iter_mut().for_each(|o| *o *= correction);
        }
        st.l *= correction;
        let p = &mut scores[..j1 - j0];
        p.iter_mut().for_each(|x| *x -= new_m);
        exp_inplace(p);
        for pj in p.iter() {
            st.l += pj;
        }
        self.for_runs(j0, j1, off, |j, n, at| {
            kern.axpy_strided(acc, &p[j - j0..j - j0 + n], &self.vc[at..], self.kv_dim);
        });
        debug_assert_eq!(acc.len(), hd);
        st.m = new_m;
    }

    /// Calls `f(j, n, at)` for each run of keys `j..j + n` inside `j0..j1` that sit in
    /// consecutive slots (one KV block), `at` being key j's offset at column `off`.
    fn for_runs(&self, j0: usize, j1: usize, off: usize, mut f: impl FnMut(usize, usize, usize)) {
        let bs = self.block_size.max(1);
        let mut j = j0;
        while j < j1 {
            let end = j1.min((j / bs + 1) * bs);
            f(j, end - j, self.at(j, off));
            j = end;
        }
    }

    /// softmax(q·Kᵀ · scale) · V for query row `r`, head `h`, into `out` (`[hd]`).
    fn attend(&self, out: &mut [f32], r: usize, h: usize) {
        let (first, last) = self.key_range(r);
        let g = h / self.group;
        out.fill(0.0);
        let mut st = Softmax::EMPTY;
        let mut j0 = first;
        while j0 <= last {
            let j1 = (j0 + KEY_BLOCK).min(last + 1);
            self.fold(out, &mut st, self.query(r, h), g, j0, j1);
            j0 = j1;
        }
        let inv = 1.0 / st.l;
        out.iter_mut().for_each(|o| *o *= inv);
    }

    /// Whether `attend_gemm` can run with these kernels: head_dim in whole vectors.
    fn gemm_fits(&self, k: &Kernels) -> bool {
        self.hd > 0 && self.hd.is_multiple_of(k.gemm.lanes)
    }

    /// Prefill attention of query rows `r0..r1`, every query head of kv head `g`, written to
    /// `dst` (`[rows, q_dim]`). The task's (row, head) queries, scaled, form the weight operand of
    /// the GEMM micro-kernel; each block of `nr` keys is transposed once (`kt`, `[hd][nr]`), so
    /// `S = Q·Kᵀ` is one micro-kernel call per `mr` queries. After the online-softmax update of
    /// each query, `O += P·V` is another call per `nr` columns of head_dim, reading V in place.
    ///
    /// # Safety
    /// `dst` points at `out` (`[rows, q_dim]` with r1 <= rows) and no other thread writes rows
    /// `r0..r1`, heads `g·group..(g+1)·group` meanwhile.
    unsafe fn attend_gemm(
        &self,
        kern: &Kernels,
        dst: gemm::SyncPtr<f32>,
        r0: usize,
        r1: usize,
        g: usize,
        b: &mut AttnBufs,
    ) {
        let gm = kern.gemm;
        let (mr, nr, lanes) = (gm.mr, gm.nr(), gm.lanes);
        // Keys per block: KEY_TILES tiles of nr. Each block pays a fixed online-softmax cost per
        // query (max, exp of the correction, rescaling o) and one P·V call per nr columns of
        // head_dim; two tiles per block halve both against one (F32 pp512: attention was 20%
        // of prefill at 16 keys per block).
        let kb = KEY_TILES * nr;
        let (hd, group) = (self.hd, self.group);
        let nq = (r1 - r0) * group;
        let nq_pad = nq.next_multiple_of(mr);
        b.q.clear();
        b.q.resize(nq_pad * hd, 0.0);
        b.o.clear();
        b.o.resize(nq_pad * hd, 0.0);
        b.p.clear();
        b.p.resize(nq_pad * kb, 0.0);
        b.kt.resize(KEY_TILES * hd * nr, 0.0);
        b.m.clear();
        b.m.resize(nq_pad, f32::NEG_INFINITY);
        b.l.clear();
        b.l.resize(nq_pad, 0.0);
        for qi in 0..nq {
            let (r, h) = (r0 + qi / group, g * group + qi % group);
            for (d, v) in b.q[qi * hd..(qi + 1) * hd].iter_mut().zip(self.query(r, h)) {
                *d = v * self.scale;
            }
        }
        let off = g * hd;
        let lo = self.key_range(r0).0;
        let hi = self.key_range(r1 - 1).1;
        let mut tmp = [0f32; gemm::TMP_MAX];
        let mut scores = [0f32; KEY_TILES * gemm::TMP_MAX];
        // Key blocks start at multiples of kb (whatever the chunk) and never cross a KV block,
        // so the keys of one block are consecutive slots.
        let mut j0 = lo - lo % kb;
        while j0 <= hi {
            let block_end = (j0 / self.block_size + 1) * self.block_size;
            let bk = kb.min(hi + 1 - j0).min(block_end - j0);
            let tiles = bk.div_ceil(nr);
            // kt: `tiles` panels of [hd][nr], the keys transposed (past bk: zero).
            for j in 0..bk {
                let krow = &self.kc[self.at(j0 + j, off)..][..hd];
                let panel = &mut b.kt[(j / nr) * hd * nr..];
                for (d, v) in krow.iter().enumerate() {
                    panel[d * nr + j % nr] = *v;
                }
            }
            if !bk.is_multiple_of(nr) {
                let panel = &mut b.kt[(bk / nr) * hd * nr..];
                for d in 0..hd {
                    panel[d * nr + bk % nr..(d + 1) * nr].fill(0.0);
                }
            }
            for c0 in (0..nq_pad).step_by(mr) {
                for t in 0..tiles {
                    // SAFETY: q holds mr rows of hd from c0 (nq_pad is a multiple of mr), panel t
                    // of kt holds hd rows of nr (t < tiles <= KEY_TILES), tmp holds TMP_MAX >=
                    // mr·nr; CPU-checked table.
                    unsafe {
                        (gm.tiles[1])(
                            b.q[c0 * hd..].as_ptr(),
                            hd,
                            b.kt[t * hd * nr..].as_ptr(),
                            nr,
                            hd,
                            tmp.as_mut_ptr(),
                        )
                    };
                    for i in 0..mr {
                        scores[i * kb + t * nr..i * kb + (t + 1) * nr]
                            .copy_from_slice(&tmp[i * nr..(i + 1) * nr]);
                    }
                }
                for i in 0..mr {
                    let qi = c0 + i;
                    let p = &mut b.p[qi * kb..(qi + 1) * kb];
                    let (ja, jb) = if qi < nq {
                        let (first, last) = self.key_range(r0 + qi / group);
                        (
                            first.clamp(j0, j0 + bk) - j0,
                            (last + 1).clamp(j0, j0 + bk) - j0,
                        )
                    } else {
                        (0, 0)
                    };
                    if ja >= jb {
                        p.fill(0.0);
                        continue;
                    }
                    let s = &scores[i * kb..(i + 1) * kb];
                    let bm = s[ja..jb].iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let new_m = b.m[qi].max(bm);
                    let correction = (b.m[qi] - new_m).exp();
                    p.fill(0.0);
                    for (pj, sj) in p[ja..jb].iter_mut().zip(&s[ja..jb]) {
                        *pj = sj - new_m;
                    }
                    exp_inplace(&mut p[ja..jb]);
                    let sum: f32 = p[ja..jb].iter().sum();
                    b.l[qi] = b.l[qi] * correction + sum;
                    if correction != 1.0 {
                        b.o[qi * hd..(qi + 1) * hd]
                            .iter_mut()
                            .for_each(|o| *o *= correction);
                    }
                    b.m[qi] = new_m;
                }
                let mut d0 = 0;
                while d0 < hd {
                    let w = nr.min(hd - d0);
                    // SAFETY: p holds mr rows of kb from c0 (bk <= kb read); positions
                    // j0..j0+bk sit in consecutive slots of one KV block (bk stops at the block
                    // end), each holding columns off+d0..off+d0+w (d0 + w <= hd); tmp as above;
                    // CPU-checked table.
                    unsafe {
                        (gm.tiles[w / lanes - 1])(
                            b.p[c0 * kb..].as_ptr(),
                            kb,
                            self.vc[self.at(j0, off) + d0..].as_ptr(),
                            self.kv_dim,
                            bk,
                            tmp.as_mut_ptr(),
                        )
                    };
                    for i in 0..mr.min(nq.saturating_sub(c0)) {
                        let o = &mut b.o[(c0 + i) * hd + d0..(c0 + i) * hd + d0 + w];
                        for (o, t) in o.iter_mut().zip(&tmp[i * w..(i + 1) * w]) {
                            *o += t;
                        }
                    }
                    d0 += w;
                }
            }
            j0 += bk;
        }
        for qi in 0..nq {
            let (r, h) = (r0 + qi / group, g * group + qi % group);
            let inv = 1.0 / b.l[qi];
            for (d, o) in b.o[qi * hd..(qi + 1) * hd].iter().enumerate() {
                // SAFETY: (r, h·hd + d) is inside out and in this task's rows and heads
                // (caller's contract).
                unsafe { *dst.0.add(r * self.q_dim + h * hd + d) = o * inv };
            }
        }
    }

    /// Every head of query rows `r0..r0 + out.len() / q_dim`, key block by key block.
    fn attend_rows(&self, out: &mut [f32], r0: usize) {
        let rows = out.len() / self.q_dim;
        if self.group > MAX_GROUP {
            for (i, o) in out.chunks_exact_mut(self.hd).enumerate() {
                self.attend(
                    o,
                    r0 + i / (self.q_dim / self.hd),
                    i % (self.q_dim / self.hd),
                );
            }
            return;
        }
        out.fill(0.0);
        let n_kv = self.kv_dim / self.hd;
        for g in 0..n_kv {
            let mut st = [[Softmax::EMPTY; MAX_GROUP]; ROW_BLOCK];
            let lo = (0..rows)
                .map(|i| self.key_range(r0 + i).0)
                .min()
                .unwrap_or(0);
            let hi = self.key_range(r0 + rows - 1).1;
            let mut j0 = lo - lo % KEY_BLOCK;
            while j0 <= hi {
                let j1 = j0 + KEY_BLOCK;
                for (i, st_row) in st.iter_mut().enumerate().take(rows) {
                    let (first, last) = self.key_range(r0 + i);
                    let (a, b) = (j0.max(first), j1.min(last + 1));
                    if a >= b {
                        continue;
                    }
                    for (hh, st_h) in st_row.iter_mut().enumerate().take(self.group) {
                        let h = g * self.group + hh;
                        let o = &mut out
                            [i * self.q_dim + h * self.hd..i * self.q_dim + (h + 1) * self.hd];
                        self.fold(o, st_h, self.query(r0 + i, h), g, a, b);
                    }
                }
                j0 = j1;
            }
            for (i, st_row) in st.iter().enumerate().take(rows) {
                for (hh, st_h) in st_row.iter().enumerate().take(self.group) {
                    let h = g * self.group + hh;
                    let inv = 1.0 / st_h.l;
                    out[i * self.q_dim + h * self.hd..i * self.q_dim + (h + 1) * self.hd]
                        .iter_mut()
                        .for_each(|o| *o *= inv);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn random(n: usize, rng: &mut Rng) -> Vec<f32> {
        (0..n).map(|_| rng.next_f32() * 2.0 - 1.0).collect()
    }

    /// Plain attention for one (row, head): scores, softmax, weighted sum — the reference.
    fn reference(g: &AttnGeometry, r: usize, h: usize) -> Vec<f32> {
        let (first, last) = g.key_range(r);
        let off = (h / g.group) * g.hd;
        let q = g.query(r, h);
        let scores: Vec<f32> = (first..=last)
            .map(|j| {
                q.iter()
                    .zip(&g.kc[j * g.kv_dim + off..])
                    .map(|(a, b)| a * b)
                    .sum::<f32>()
                    * g.scale
            })
            .collect();
        let m = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let e: Vec<f32> = scores.iter().map(|s| (s - m).exp()).collect();
        let sum: f32 = e.iter().sum();
        let mut out = vec![0.0; g.hd];
        for (k, j) in (first..=last).enumerate() {
            for (o, v) in out.iter_mut().zip(&g.vc[j * g.kv_dim + off..]) {
                *o += e[k] / sum * v;
            }
        }
        out
    }

    /// exp_inplace against f32::exp over the whole range: within 2 ulp (relative 2.4e-7).
    #[test]
    fn vectorized_exp_matches_libm() {
        let mut worst = 0.0f64;
        let mut x: Vec<f32> = (0..200_001)
            .map(|i| -87.0 + 175.0 * i as f32 / 200_000.0)
            .collect();
        x.extend([0.0, -0.0, 1e-30, -1e-30, 88.0, -87.0, 0.5, -0.5]);
        let mut y = x.clone();
        exp_inplace(&mut y);
        for (a, b) in x.iter().zip(&y) {
            let want = (*a as f64).exp();
            worst = worst.max(((*b as f64) - want).abs() / want);
        }
        assert!(worst < 2.4e-7, "worst relative error {worst:e}");
        let mut special = [f32::NAN, -1000.0, f32::NEG_INFINITY];
        exp_inplace(&mut special);
        assert!(special[0].is_nan() && special[1] < 1e-37 && special[2] < 1e-37);
    }

    /// The tiled prefill path and the per-head decode path against the plain reference, over
    /// awkward row counts, positions that straddle key blocks, windows and GQA groups.
    #[test]
    fn tiled_and_per_head_attention_match_the_reference() {
        let mut rng = Rng::new(3);
        for &(rows, pos0, n_kv, group, hd, window) in &[
            (1usize, 0usize, 1usize, 1usize, 8usize, None),
            (9, 0, 2, 3, 16, None),
            (13, 57, 3, 2, 12, None),
            (8, 120, 1, 4, 32, Some(70usize)),
            (17, 5, 2, 1, 8, Some(3)),
            (3, 200, 2, 6, 64, None),
            (40, 30, 3, 3, 48, Some(37usize)),
            (21, 0, 1, 16, 16, None),
        ] {
            let ctx = pos0 + rows;
            let (q_dim, kv_dim) = (n_kv * group * hd, n_kv * hd);
            let (kc, vc, q) = (
                random(ctx * kv_dim, &mut rng),
                random(ctx * kv_dim, &mut rng),
                random(rows * q_dim, &mut rng),
            );
            // An identity table of 8-position blocks: key tiles stop at block ends.
            let table: Vec<u32> = (0..ctx.div_ceil(8) as u32).collect();
            let g = AttnGeometry {
                kc: &kc,
                vc: &vc,
                table: &table,
                block_size: 8,
                q: &q,
                q_dim,
                kv_dim,
                group,
                hd,
                pos0,
                window,
                scale: 0.3,
            };
            let mut tiled = vec![0.0; rows * q_dim];
            for (b, o) in tiled.chunks_mut(ROW_BLOCK * q_dim).enumerate() {
                g.attend_rows(o, b * ROW_BLOCK);
            }
            // The GEMM path, per instruction set, with row blocks of several sizes.
            let mut gemm_outs = Vec::new();
            for isa in simd::Isa::ALL {
                let Some(kern) = Kernels::for_isa(isa) else {
                    eprintln!("note: attention GEMM path not run for {isa}: not supported here");
                    continue;
                };
                if !g.gemm_fits(&kern) {
                    continue;
                }
                for br in [1usize, 5, 16] {
                    let mut o = vec![f32::NAN; rows * q_dim];
                    let dst = gemm::SyncPtr(o.as_mut_ptr());
                    let mut bufs = AttnBufs::default();
                    for r0 in (0..rows).step_by(br) {
                        for kvh in 0..n_kv {
                            // SAFETY: o is [rows, q_dim]; one task at a time.
                            unsafe {
                                g.attend_gemm(&kern, dst, r0, (r0 + br).min(rows), kvh, &mut bufs)
                            };
                        }
                    }
                    gemm_outs.push((format!("{isa} br{br}"), o));
                }
            }
            for r in 0..rows {
                for h in 0..n_kv * group {
                    let want = reference(&g, r, h);
                    let mut one = vec![0.0; hd];
                    g.attend(&mut one, r, h);
                    let got_tiled = &tiled[r * q_dim + h * hd..r * q_dim + (h + 1) * hd];
                    // Outputs are convex combinations of values in [-1, 1]; f32 reordering of
                    // a few hundred terms stays far below 1e-5.
                    for d in 0..hd {
                        assert!((one[d] - want[d]).abs() < 1e-5, "per-head r{r} h{h}");
                        assert!(
                            (got_tiled[d] - want[d]).abs() < 1e-5,
                            "tiled r{r} h{h} rows{rows} pos0{pos0}"
                        );
                        for (name, o) in &gemm_outs {
                            let got = o[r * q_dim + h * hd + d];
                            assert!(
                                (got - want[d]).abs() < 1e-5,
                                "gemm {name} r{r} h{h} rows{rows} pos0{pos0}: {got} vs {}",
                                want[d]
                            );
                        }
                    }
                }
            }
        }
    }
}
