//! The seam between the model and the hardware.
//!
//! `model.rs` calls these ops and nothing else. They are at the granularity a GPU would fuse
//! (an RMSNorm fused with its residual add, attention including the KV-cache append), not tiny
//! tensor primitives, so each backend can pick its own layouts and fusions.
//!
//! Conventions shared by every backend:
//! - Activations ([`Backend::Buf`]) are row-major `[rows, width]` with f32 semantics (a backend
//!   may store them narrower, and says so). Buffers are allocated once, sized for the largest
//!   batch; `rows` says how many rows an op touches.
//! - A weight ([`Backend::Mat`]) is uploaded once. A linear layer is `[out, in]` as Hugging Face
//!   stores it, and `matmul` computes `out[r, o] = Σ_i x[r, i] · w[o, i] (+ bias[o])`.
//! - Where each row sits is a [`StepLayout`]: its position and its sequence's block table into
//!   the paged KV cache. A prefill chunk is rows of one sequence at consecutive positions; a
//!   decode batch is one row of each of several sequences; one step may hold both.

// The backends themselves are internal: embedders pick one with `Device`; tests and benches
// reach them through `minfer::internals`.
#[allow(missing_docs)]
pub(crate) mod cpu;
#[allow(missing_docs)]
pub(crate) mod cuda;

pub use crate::config::MlpActivation;
use crate::device::Device;
use crate::error::{Error, Result};
use crate::tensor::WeightTensor;

/// Shape of the paged KV cache. Per layer, a pool of `blocks` blocks of `block_size` positions
/// (slots), each slot `n_kv_heads · head_dim` values, for K and again for V. Position `p` of a
/// sequence whose block table is `t` lives in slot `t[p / block_size] · block_size + p %
/// block_size`; layer `l`'s K pool is `[slots, kv_dim]` row-major, so an identity block table
/// gives the plain contiguous `[ctx, kv_dim]` cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvShape {
    /// Transformer layers.
    pub layers: usize,
    /// Blocks in each layer's pool.
    pub blocks: usize,
    /// Positions per block.
    pub block_size: usize,
    /// Key/value heads (fewer than query heads under grouped-query attention).
    pub n_kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
}

impl KvShape {
    /// Bytes of K plus V per token at `bytes_per_elem`.
    pub fn bytes_per_token(&self, bytes_per_elem: usize) -> usize {
        2 * self.layers * self.n_kv_heads * self.head_dim * bytes_per_elem
    }

    /// The cache of one sequence of `ctx` positions in blocks of `block_size` (to be used with
    /// [`StepLayout::contiguous`] and `ctx.div_ceil(block_size)` table entries).
    pub fn contiguous(
        layers: usize,
        ctx: usize,
        block_size: usize,
        n_kv_heads: usize,
        head_dim: usize,
    ) -> KvShape {
        KvShape {
            layers,
            blocks: ctx.div_ceil(block_size.max(1)),
            block_size,
            n_kv_heads,
            head_dim,
        }
    }

    /// Check that every block of `pairs` (for [`Backend::copy_kv_blocks`]) is in the pool.
    pub fn check_block_pairs(&self, pairs: &[(u32, u32)]) -> Result<()> {
        match pairs
            .iter()
            .find(|&&(a, b)| a as usize >= self.blocks || b as usize >= self.blocks)
        {
            Some(&(a, b)) => Err(Error::arg(format!(
                "copy_kv_blocks: block {a} or {b} is outside the pool of {}",
                self.blocks
            ))),
            None => Ok(()),
        }
    }

    /// Positions the pool holds in all (`blocks · block_size`).
    pub fn slots(&self) -> usize {
        self.blocks * self.block_size
    }

    /// Values of one layer's K (or V) pool, checked against overflow.
    pub fn layer_len(&self) -> Result<usize> {
        self.slots()
            .checked_mul(self.n_kv_heads)
            .and_then(|n| n.checked_mul(self.head_dim))
            .filter(|_| self.blocks.checked_mul(self.block_size).is_some())
            .ok_or_else(|| Error::arg(format!("KV cache {self:?} overflows the address space")))
    }
}

/// Where the rows of one forward step sit: each row's position in its sequence and the block
/// table through which its sequence's keys and values are reached (see [`KvShape`]).
///
/// Rows that share a table are consecutive positions of one sequence (a prefill chunk); rows
/// with different tables are independent sequences (a decode batch). Attention first writes every
/// row's key and value to its slot, then each row attends over positions `0..=position` of its
/// own table, so rows of one chunk see each other causally.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StepLayout {
    /// Position of each row within its sequence.
    pub positions: Vec<u32>,
    /// For each row, the index of its block table.
    pub seq_of_row: Vec<u32>,
    /// Block tables, row-major `[tables][max_blocks]`: entry `b` of a table is the pool block
    /// that holds positions `b · block_size ..` of that sequence.
    pub tables: Vec<u32>,
    /// Entries per table (the stride of `tables`).
    pub max_blocks: usize,
}

impl StepLayout {
    /// One sequence whose rows sit at positions `pos0..pos0 + rows`, with the identity block
    /// table `0..max_blocks` (a single sequence owning the pool in order).
    pub fn contiguous(pos0: usize, rows: usize, max_blocks: usize) -> StepLayout {
        StepLayout {
            positions: (pos0..pos0 + rows).map(|p| p as u32).collect(),
            seq_of_row: vec![0; rows],
            tables: (0..max_blocks as u32).collect(),
            max_blocks,
        }
    }

    /// Rows in the step.
    pub fn rows(&self) -> usize {
        self.positions.len()
    }

    /// Number of block tables.
    pub fn tables(&self) -> usize {
        self.tables.len().checked_div(self.max_blocks).unwrap_or(0)
    }

    /// The block table of `row`.
    pub fn table_of(&self, row: usize) -> &[u32] {
        let t = self.seq_of_row[row] as usize * self.max_blocks;
        &self.tables[t..t + self.max_blocks]
    }

    /// The pool slot of `row`'s position, given the block size (after [`StepLayout::validate`]).
    pub fn slot_of(&self, row: usize, block_size: usize) -> usize {
        let p = self.positions[row] as usize;
        self.table_of(row)[p / block_size] as usize * block_size + p % block_size
    }

    /// Check the layout against `rows` and the cache: lengths agree, every row's table reaches
    /// its position, every block is in the pool, and rows of one table have strictly increasing
    /// positions. Backends may assume a validated layout.
    pub fn validate(&self, rows: usize, kv: &KvShape) -> Result<()> {
        let bad = |why: String| Err(Error::arg(format!("step layout: {why}")));
        if self.positions.len() != rows || self.seq_of_row.len() != rows {
            return bad(format!(
                "{} positions and {} table indices for {rows} rows",
                self.positions.len(),
                self.seq_of_row.len()
            ));
        }
        if self.max_blocks == 0 || !self.tables.len().is_multiple_of(self.max_blocks) {
            return bad(format!(
                "{} table entries are not whole tables of {}",
                self.tables.len(),
                self.max_blocks
            ));
        }
        if let Some(&b) = self.tables.iter().find(|&&b| b as usize >= kv.blocks) {
            return bad(format!("block {b} is outside the pool of {}", kv.blocks));
        }
        let n_tables = self.tables();
        let mut last: Vec<Option<u32>> = vec![None; n_tables];
        for r in 0..rows {
            let (t, p) = (self.seq_of_row[r] as usize, self.positions[r]);
            if t >= n_tables {
                return bad(format!("row {r} names table {t} of {n_tables}"));
            }
            if p as usize / kv.block_size >= self.max_blocks {
                return bad(format!(
                    "row {r} at position {p} is beyond its table of {} blocks of {}",
                    self.max_blocks, kv.block_size
                ));
            }
            if last[t].is_some_and(|q| q >= p) {
                return bad(format!(
                    "rows of table {t} are not in increasing position order"
                ));
            }
            last[t] = Some(p);
        }
        Ok(())
    }
}

/// Everything attention needs to know about one layer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttnParams {
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads (fewer than query heads under grouped-query attention).
    pub n_kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// Softmax scale, normally 1/√head_dim.
    pub scale: f32,
    /// Sliding window: a query at position p sees keys at positions j with p - j < window.
    /// None: full causal attention.
    pub window: Option<usize>,
}

/// An activation buffer's values, where they live in host memory. The few [`Backend`] ops
/// with a default implementation (moving columns between buffers) use it; a backend whose
/// buffers live on a device answers None and implements those ops itself.
pub trait HostBuf {
    /// The values, when in host memory.
    fn host(&self) -> Option<&[f32]>;
    /// The values, mutably, when in host memory.
    fn host_mut(&mut self) -> Option<&mut [f32]>;
}

impl HostBuf for Vec<f32> {
    fn host(&self) -> Option<&[f32]> {
        Some(self)
    }
    fn host_mut(&mut self) -> Option<&mut [f32]> {
        Some(self)
    }
}

/// The error of a default op on a buffer that is not in host memory.
fn not_on_host(op: &str) -> Error {
    Error::Device(format!(
        "{op}: the backend's buffers are not in host memory and it does not implement {op}"
    ))
}

/// The ops the transformer runs, implemented once per device (see the module docs for the
/// conventions every implementation follows).
pub trait Backend: Send + Sync {
    /// An activation buffer.
    type Buf: Send + HostBuf;
    /// An uploaded weight (matrix, vector or table).
    type Mat: Send + Sync;
    /// The KV cache of all layers.
    type Kv: Send;
    /// A step's [`StepLayout`] where the kernels can read it (positions, block tables).
    type Layout: Send;

    /// A human-readable description ("cpu avx512-bf16, 2 threads", "cuda H200", "sim").
    fn name(&self) -> String;

    /// Put a weight on the device once, in a layout of the backend's choosing.
    fn upload(&self, w: &WeightTensor) -> Result<Self::Mat>;
    /// A zeroed buffer of `len` f32 elements.
    fn alloc(&self, len: usize) -> Result<Self::Buf>;
    /// A zeroed KV cache of `shape`.
    fn alloc_kv(&self, shape: KvShape) -> Result<Self::Kv>;
    /// Room for the layout of steps of up to `max_rows` rows and `max_tables` block tables of
    /// `max_blocks` entries.
    fn alloc_layout(
        &self,
        max_rows: usize,
        max_tables: usize,
        max_blocks: usize,
    ) -> Result<Self::Layout>;
    /// Make `src` (validated by the caller) the layout that `rope` and `attention` read: one
    /// small upload per step.
    fn set_layout(&self, dst: &mut Self::Layout, src: &StepLayout) -> Result<()>;
    /// A fresh layout holding `src` (tests, benchmarks, one-off steps).
    fn layout_of(&self, src: &StepLayout) -> Result<Self::Layout> {
        let mut dst = self.alloc_layout(src.rows(), src.tables(), src.max_blocks)?;
        self.set_layout(&mut dst, src)?;
        Ok(dst)
    }
    /// For each `(src, dst)`, copy KV block `src` to block `dst` in every layer's K and V pools
    /// (copy-on-write of a shared, partly filled block).
    fn copy_kv_blocks(&self, kv: &mut Self::Kv, pairs: &[(u32, u32)]) -> Result<()>;

    /// `out[r, :] = table[tokens[r], :]`. Token ids were range-checked by the caller.
    fn embed(&self, out: &mut Self::Buf, table: &Self::Mat, tokens: &[u32]) -> Result<()>;
    /// `out[r] = x[r] / rms(x[r]) · w`, with rms(x) = sqrt(mean(x²) + eps).
    fn rms_norm(
        &self,
        out: &mut Self::Buf,
        x: &Self::Buf,
        w: &Self::Mat,
        rows: usize,
        eps: f32,
    ) -> Result<()>;
    /// The residual add fused with the next norm: `residual += x; out = rms_norm(residual) · w`.
    fn add_rms_norm(
        &self,
        out: &mut Self::Buf,
        residual: &mut Self::Buf,
        x: &Self::Buf,
        w: &Self::Mat,
        rows: usize,
        eps: f32,
    ) -> Result<()>;
    /// `out[r, o] = Σ_i x[r, i] · w[o, i] + bias[o]` for `r < rows`.
    fn matmul(
        &self,
        out: &mut Self::Buf,
        x: &Self::Buf,
        w: &Self::Mat,
        bias: Option<&Self::Mat>,
        rows: usize,
    ) -> Result<()>;
    /// Per-head RMSNorm in place (Qwen3's q_norm / k_norm): `x` is `[rows, heads, head_dim]`,
    /// `w` is `[head_dim]`.
    fn head_rms_norm(
        &self,
        x: &mut Self::Buf,
        w: &Self::Mat,
        rows: usize,
        heads: usize,
        eps: f32,
    ) -> Result<()>;
    /// Rotary embedding in place, Hugging Face's rotate-half layout: for head h, i < head_dim/2,
    /// angle = `positions[r]` · `inv_freq[i]` (the layout's positions), the pair (`x[i]`,
    /// `x[i + head_dim/2]`) is rotated by angle.
    fn rope(
        &self,
        x: &mut Self::Buf,
        rows: usize,
        heads: usize,
        head_dim: usize,
        layout: &Self::Layout,
        inv_freq: &Self::Mat,
    ) -> Result<()>;
    /// Write `k`, `v` (`[rows, n_kv_heads · head_dim]`) of each row to its slot in `layer`'s
    /// pools (see [`StepLayout`]), then causal (optionally windowed) attention of `q`
    /// (`[rows, n_heads · head_dim]`) of row r over positions `0..=positions[r]` of its own
    /// sequence, grouped-query style: query head h reads kv head h / (n_heads / n_kv_heads).
    /// Writes `[rows, n_heads · head_dim]`.
    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        out: &mut Self::Buf,
        q: &Self::Buf,
        k: &Self::Buf,
        v: &Self::Buf,
        kv: &mut Self::Kv,
        layer: usize,
        rows: usize,
        layout: &Self::Layout,
        p: &AttnParams,
    ) -> Result<()>;
    /// `gate[i] = silu(gate[i]) · up[i]` for `i < len`, silu(x) = x / (1 + e^-x).
    fn silu_mul(&self, gate: &mut Self::Buf, up: &Self::Buf, len: usize) -> Result<()>;
    /// `gate[i] = gelu_tanh(gate[i]) · up[i]` for `i < len` (GeGLU, Gemma), with PyTorch's
    /// tanh approximation gelu_tanh(x) = x/2 · (1 + tanh(√(2/π) · (x + 0.044715 x³))).
    fn gelu_tanh_mul(&self, gate: &mut Self::Buf, up: &Self::Buf, len: usize) -> Result<()>;
    /// Split the columns of `x` (`[rows, Σ widths]`, the output of a fused projection such as
    /// q/k/v) into `outs`: `outs[j].0[r, :]` = the `outs[j].1` columns of row r after those of
    /// the parts before it. At most 3 parts. The default works on host buffers.
    fn split_columns(
        &self,
        x: &Self::Buf,
        rows: usize,
        outs: &mut [(&mut Self::Buf, usize)],
    ) -> Result<()> {
        let op = "split_columns";
        let total: usize = outs.iter().map(|o| o.1).sum();
        let src = x.host().ok_or_else(|| not_on_host(op))?;
        if outs.len() > 3 || src.len() < rows * total {
            return Err(Error::arg(format!(
                "{op}: {} parts of {total} columns × {rows} rows from a buffer of {}",
                outs.len(),
                src.len()
            )));
        }
        let mut col = 0;
        for (dst, width) in outs.iter_mut() {
            let w = *width;
            let dst = dst.host_mut().ok_or_else(|| not_on_host(op))?;
            if dst.len() < rows * w {
                return Err(Error::arg(format!(
                    "{op}: a part of {w} columns × {rows} rows into a buffer of {}",
                    dst.len()
                )));
            }
            for r in 0..rows {
                let from = r * total + col;
                dst[r * w..(r + 1) * w].copy_from_slice(&src[from..from + w]);
            }
            col += w;
        }
        Ok(())
    }
    /// The gated MLP's activation on a fused gate/up projection: `gate_up` is `[rows, 2 ·
    /// width]`, gate in columns `0..width`, up in `width..2 · width`; writes `out[r, i] =
    /// act(gate[r, i]) · up[r, i]` (`[rows, width]`) by [`Backend::silu_mul`] or
    /// [`Backend::gelu_tanh_mul`]'s arithmetic. `gate_up` is scratch afterwards. The default
    /// works on host buffers: it moves the gate columns to `out`, packs the up columns at the
    /// front of `gate_up`, and calls the backend's own op.
    fn gated_act(
        &self,
        out: &mut Self::Buf,
        gate_up: &mut Self::Buf,
        rows: usize,
        width: usize,
        act: MlpActivation,
    ) -> Result<()> {
        let op = "gated_act";
        {
            let (o, x) = (
                out.host_mut().ok_or_else(|| not_on_host(op))?,
                gate_up.host_mut().ok_or_else(|| not_on_host(op))?,
            );
            if o.len() < rows * width || x.len() < rows * 2 * width {
                return Err(Error::arg(format!(
                    "{op}: {rows} rows of 2 × {width} columns from a buffer of {} into one of {}",
                    x.len(),
                    o.len()
                )));
            }
            // Row r's up part moves to r · width, never past what row r still needs (its gate,
            // at 2r · width, was copied out first).
            for r in 0..rows {
                let g = 2 * r * width;
                o[r * width..(r + 1) * width].copy_from_slice(&x[g..g + width]);
                x.copy_within(g + width..g + 2 * width, r * width);
            }
        }
        match act {
            MlpActivation::Silu => self.silu_mul(out, gate_up, rows * width),
            MlpActivation::GeluTanh => self.gelu_tanh_mul(out, gate_up, rows * width),
        }
    }
    /// `x[i] *= s` for `i < len` (Gemma's embedding scale).
    fn scale(&self, x: &mut Self::Buf, s: f32, len: usize) -> Result<()>;
    /// `x[i] += y[i]` for `i < len`.
    fn add(&self, x: &mut Self::Buf, y: &Self::Buf, len: usize) -> Result<()>;
    /// Copy rows `src_row..src_row + rows` of `src` (row width `width`) to rows `0..rows` of `dst`.
    fn copy_rows(
        &self,
        dst: &mut Self::Buf,
        src: &Self::Buf,
        src_row: usize,
        rows: usize,
        width: usize,
    ) -> Result<()>;
    /// Copy `out.len()` values starting at element `offset` of `buf` to the host.
    fn read(&self, buf: &Self::Buf, offset: usize, out: &mut [f32]) -> Result<()>;
    /// Index of the largest of `len` values at `offset` (first one on ties), computed where the
    /// data lives so greedy decoding moves one integer per token.
    fn argmax(&self, buf: &Self::Buf, offset: usize, len: usize) -> Result<u32>;

    /// Run one forward step's worth of ops. A backend with worker threads runs `f` on one of
    /// them, so the ops inside start their parallel work without a cross-thread hand-off each
    /// (hundreds per token).
    fn scoped(&self, f: &mut (dyn FnMut() -> Result<()> + Send)) -> Result<()> {
        f()
    }

    /// Run one forward step (as [`Backend::scoped`]) that the caller repeats step after step
    /// with the same shapes (batch-1 decode): only device-resident values (positions, block
    /// tables, the token) change between calls. A GPU backend may capture the step's launches
    /// once and replay them (a CUDA graph) whenever the step launches exactly the same kernels
    /// with the same arguments again.
    fn repeated_step(&self, f: &mut (dyn FnMut() -> Result<()> + Send)) -> Result<()> {
        self.scoped(f)
    }

    /// Per-op timings gathered since the last call, when the backend was built with profiling
    /// on. Each entry: (op name, calls, seconds, bytes moved, flops).
    fn take_profile(&self) -> Vec<OpProfile> {
        Vec::new()
    }

    /// The individual op executions recorded since the last call (profiling on), for a
    /// Chrome / Perfetto trace.
    fn take_trace(&self) -> Vec<TraceEvent> {
        Vec::new()
    }

    /// The output of every op since the last call, when the backend records activations (for
    /// people studying the forward pass: compare with a Hugging Face forward hook).
    fn take_activations(&self) -> Vec<Activation> {
        Vec::new()
    }
}

/// One op's output: a label naming the op (and its weight, where it has one) and the values
/// it wrote, row-major `[rows, width]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Activation {
    /// The op (and its weight, where it has one).
    pub op: String,
    /// Rows written; the row width is `values.len() / rows`.
    pub rows: usize,
    /// The values, row-major.
    pub values: Vec<f32>,
}

/// One op execution on a timeline (microseconds since the backend started).
#[derive(Clone, Debug, PartialEq)]
pub struct TraceEvent {
    /// The op.
    pub name: String,
    /// Start, microseconds since the backend started.
    pub start_us: f64,
    /// Duration in microseconds.
    pub dur_us: f64,
}

/// One row of a per-op timing profile.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct OpProfile {
    /// The op (and its weight, where it has one).
    pub op: String,
    /// Executions.
    pub calls: u64,
    /// Total time.
    pub seconds: f64,
    /// Bytes moved (weights, activations, cache), by the op's own count.
    pub bytes: f64,
    /// Floating-point operations (a multiply-add is two).
    pub flops: f64,
    /// Backend-specific counters (the PTX interpreter's warp instructions, coalescing, bank
    /// conflicts ...), by name.
    pub extra: Vec<(&'static str, f64)>,
}

/// How to configure a backend; the same calls for every device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackendOptions {
    /// CPU worker threads; 0 = all cores. (GPU backends ignore it.)
    pub threads: usize,
    /// Record per-op timings ([`Backend::take_profile`], [`Backend::take_trace`]).
    pub profile: bool,
    /// Keep a copy of every op's output ([`Backend::take_activations`]). CPU only; slow.
    pub record_activations: bool,
}

/// Something to do with a backend whose type is only known once the device is: the one way a
/// [`Device`] turns into a backend (see [`on_device`]).
pub(crate) trait WithBackend {
    type Out;
    fn run<B: Backend + 'static>(self, backend: B) -> Result<Self::Out>;
}

/// Build the backend for `device` (resolving `Auto`) with `opts`, and hand it to `job`. The
/// only place in the crate that names the concrete backends.
pub(crate) fn on_device<W: WithBackend>(
    device: Device,
    opts: &BackendOptions,
    job: W,
) -> Result<W::Out> {
    let gpu_only = |what: &str| {
        if opts.record_activations {
            Err(Error::option(
                "record_activations",
                true,
                format!("activations are recorded on the CPU backend only, not on {what}"),
            ))
        } else {
            Ok(())
        }
    };
    match device.resolve()? {
        Device::Cpu | Device::Auto => job.run(
            cpu::CpuBackend::new(opts.threads)?
                .with_profiling(opts.profile)
                .with_activations(opts.record_activations),
        ),
        Device::Sim => {
            gpu_only("the PTX interpreter")?;
            let b = cuda::CudaBackend::new(cuda::sim::SimDriver::new())?;
            b.set_profiling(opts.profile);
            job.run(b)
        }
        #[cfg(feature = "cuda")]
        Device::Cuda(i) => {
            gpu_only("a GPU")?;
            let b = cuda::CudaBackend::new(cuda::cudarc_driver::CudarcDriver::new(i)?)?;
            b.set_profiling(opts.profile);
            job.run(b)
        }
        #[cfg(not(feature = "cuda"))]
        Device::Cuda(_) => Err(no_cuda_feature()),
    }
}

// What a `Device` is on this machine: whether it exists, its memory, its bandwidth. (The
// `Device` type itself sits below, in device.rs; these need the backends.)

/// How many CUDA devices this build can use, or why none.
pub(crate) fn cuda_device_count() -> Result<usize> {
    #[cfg(feature = "cuda")]
    {
        cuda::cudarc_driver::device_count()
    }
    #[cfg(not(feature = "cuda"))]
    {
        Err(no_cuda_feature())
    }
}

impl Device {
    /// Settle `Auto` and check that a requested GPU exists. Never returns `Auto`.
    pub fn resolve(self) -> Result<Device> {
        match self {
            Device::Auto => Ok(match cuda_device_count() {
                Ok(n) if n > 0 => Device::Cuda(0),
                _ => Device::Cpu,
            }),
            Device::Cuda(i) => {
                let n = cuda_device_count()?;
                if i >= n {
                    return Err(Error::Device(format!(
                        "cuda:{i} requested, {n} CUDA device(s) present"
                    )));
                }
                Ok(Device::Cuda(i))
            }
            d => Ok(d),
        }
    }
}

/// The error for a CUDA device in a build without the `cuda` feature.
#[cfg(not(feature = "cuda"))]
pub(crate) fn no_cuda_feature() -> Error {
    Error::Device(
        "minfer was built without the `cuda` feature (cargo build --features cuda)".into(),
    )
}

impl Device {
    /// Total memory of the device in bytes: `Some` for a GPU, `None` for the CPU and the
    /// interpreter (whose limit is host memory).
    pub fn total_memory(self) -> Result<Option<u64>> {
        match self.resolve()? {
            #[cfg(feature = "cuda")]
            Device::Cuda(i) => {
                use cuda::driver::GpuDriver;
                Ok(Some(
                    cuda::cudarc_driver::CudarcDriver::new(i)?.total_memory(),
                ))
            }
            _ => Ok(None),
        }
    }

    /// The memory-bandwidth ceiling of this device in GB/s, for "achieved GB/s as a fraction
    /// of ..." figures: on the CPU the read bandwidth with `threads` threads (0 = all cores); on
    /// a GPU the device-to-device copy bandwidth (bytes read plus bytes written) through
    /// minfer's copy kernel. The interpreter has no meaningful bandwidth: NaN.
    pub fn measure_bandwidth(self, threads: usize) -> Result<f64> {
        match self.resolve()? {
            Device::Cpu | Device::Auto => {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .map_err(|e| Error::Device(format!("cannot start {threads} threads: {e}")))?;
                Ok(pool.install(|| cpu::simd::measure_read_bandwidth(512 << 20, 3)))
            }
            Device::Sim => Ok(f64::NAN),
            #[cfg(feature = "cuda")]
            Device::Cuda(i) => {
                let drv = cuda::cudarc_driver::CudarcDriver::new(i)?;
                let b = cuda::CudaBackend::new(drv)?;
                b.measure_copy_bandwidth(1 << 30, 10)
            }
            #[cfg(not(feature = "cuda"))]
            Device::Cuda(_) => Err(no_cuda_feature()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{LoadOptions, Model};
    use std::path::Path;

    #[test]
    fn auto_never_fails_and_never_stays_auto() {
        // On a machine without a driver (CI) this is the CPU; with one, a GPU. Either way no
        // panic and no error.
        let d = Device::Auto.resolve();
        assert!(matches!(d, Ok(Device::Cpu) | Ok(Device::Cuda(0))), "{d:?}");
    }

    #[test]
    fn sim_device_runs_a_fixture_model() {
        let dir =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models/llama_gqa_untied");
        let opts = LoadOptions {
            max_batch: 4,
            device: Device::Sim,
            ..LoadOptions::default()
        };
        let mut m = Model::load(&dir, &opts).expect("load on sim");
        assert!(
            m.backend_name().contains("ptx interpreter"),
            "{}",
            m.backend_name()
        );
        let gen = crate::GenerateOptions {
            max_new_tokens: 2,
            ignore_eos: true,
            ..Default::default()
        };
        let mut n = 0;
        m.generate(&[1, 2, 3], &gen, |_| {
            n += 1;
            true
        })
        .expect("generate");
        assert_eq!(n, 2);
    }

    #[test]
    fn cuda_without_a_device_is_an_error_not_a_panic() {
        match cuda_device_count() {
            Ok(n) => assert!(Device::Cuda(n).resolve().is_err()),
            Err(_) => assert!(Device::Cuda(0).resolve().is_err()),
        }
    }
}
