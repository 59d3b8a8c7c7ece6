//! The CUDA backend: the [`Backend`] ops as launches of kernels/*.ptx through a [`GpuDriver`].
//!
//! Written once over the driver seam, so the same host code (allocation, copies, launch shapes,
//! kernel arguments, precondition checks) runs on a real GPU (`CudarcDriver`) and on the PTX
//! interpreter (`SimDriver`), which is how it is tested without a GPU.
//!
//! Data types on the device:
//! - activations ([`CudaBuf`]) are f32, as on the CPU; the tensor-core GEMM converts its A
//!   operand to bf16 in a scratch buffer first and accumulates and writes f32;
//! - 2-D weights keep their stored dtype (bf16, f16, f32 or a GGML block type); 1-D weights (norms, biases,
//!   inv_freq) are converted to f32 at upload;
//! - the KV cache is f32 `[layers, ctx, n_kv_heads, head_dim]` for K and again for V.
//!
//! Every wrapper checks the preconditions written in its kernel's header (buffer lengths,
//! alignment multiples, grid limits) and returns an [`Error`] instead of launching a kernel
//! that would read out of bounds. Per token only the argmax id or the requested logits come
//! back to the host.
//!
//! - block-quantized matrices (Q8_0, Q4_0, Q4_1, Q4_K, Q6_K) stay quantized (reordered into
//!   body and head sections, see [`CudaMat`]) and run on kernels/matvec_q.ptx; other block
//!   types (Q5_K) are dequantized to f32 at upload.
//!
//! CUDA graphs (batch-1 decode, [`Backend::repeated_step`]): the step's host code runs every
//! time (checks, launch shapes, the token upload), its launches are queued instead of issued,
//! and the queue is compared with the launch lists of the graphs already captured: an equal
//! list replays its graph (one `cuGraphLaunch` for the whole step), a list seen twice in a
//! row is captured, anything else runs eagerly. A graph is therefore only ever replayed with
//! exactly the arguments eager launches would have had; kernels read positions, block tables
//! and the token from device memory, and attention's split geometry depends on the cache's
//! capacity, not on the position, so decode steps repeat the same list. `MINFER_CUDA_GRAPH=0`
//! (or [`CudaBackend::with_graphs`]) turns it off; profiling turns it off.
//!
//! Not here: a bf16 KV cache.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use super::driver::{DevPtr, FuncId, GpuDriver, GraphId, KernelArg, KernelCounters, LaunchConfig};
use super::registry::{Kernel, Kernels};
use crate::backend::{AttnParams, Backend, HostBuf, KvShape, OpProfile, StepLayout};
use crate::config::MlpActivation;
use crate::error::{Error, Result};
use crate::tensor::{DType, WeightTensor};

/// Threads per block of the element-wise and row kernels (their headers assume it).
const BLOCK: u32 = 256;
/// Threads of an rms_norm / add_rms_norm block: one block per row, and at decode one row is the
/// whole kernel, so 32 warps cut its serial load trips fourfold (kernels/rmsnorm.ptx).
const NORM_BLOCK: u32 = 1024;

/// Cap on grid-stride launches: enough blocks to fill any current GPU several times over.
const MAX_GRID_STRIDE_BLOCKS: usize = 4096;
/// At or below this many rows a bf16 / f16 matmul uses the matrix-vector kernel (weights
/// streamed once per row, mostly from L2); above, the tensor-core GEMM (unless
/// `with_f32_prefill`).
const MATVEC_MAX_ROWS: usize = 4;
/// Dynamic shared memory a block may use without raising the function's attribute.
const MAX_DYNAMIC_SHARED: usize = 48 * 1024;
/// attn_prefill_f32 keeps K, V and Q tiles of this head_dim in 48 KB of shared memory.
const PREFILL_MAX_HEAD_DIM: usize = 128;
/// Blocks the split attention kernel aims at (see `attention`).
const ATTN_TARGET_BLOCKS: usize = 256;
/// grid.y and grid.z limit.
const MAX_GRID_YZ: usize = 65535;

/// An f32 activation buffer on the device. Freed when dropped.
pub struct CudaBuf<D: GpuDriver> {
    drv: Arc<D>,
    ptr: DevPtr,
    len: usize,
}

impl<D: GpuDriver> CudaBuf<D> {
    /// Number of f32 elements.
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn ptr(&self) -> DevPtr {
        self.ptr
    }
}

/// Device memory: the ops with host defaults ([`Backend::split_columns`],
/// [`Backend::gated_act`]) have kernels here.
impl<D: GpuDriver> HostBuf for CudaBuf<D> {
    fn host(&self) -> Option<&[f32]> {
        None
    }
    fn host_mut(&mut self) -> Option<&mut [f32]> {
        None
    }
}

impl<D: GpuDriver> Drop for CudaBuf<D> {
    fn drop(&mut self) {
        // Nothing useful can be done with a failed free in a destructor.
        let _ = self.drv.free(self.ptr);
    }
}

/// An uploaded weight: a matrix in its stored dtype, or a vector converted to f32.
/// Block-quantized matrices (Q8_0, Q4_0, Q4_1, Q6_K) sit in the split layout of
/// kernels/matvec_q.ptx: every block's quants (the body section), then every block's scales
/// (the head section, at byte `head`); the same bytes as the file, reordered so that bodies are
/// 16-byte aligned. Q4_K keeps its stored layout (`head` 0).
pub struct CudaMat<D: GpuDriver> {
    drv: Arc<D>,
    ptr: DevPtr,
    dtype: DType,
    shape: Vec<usize>,
    name: String,
    head: usize,
}

impl<D: GpuDriver> CudaMat<D> {
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

impl<D: GpuDriver> Drop for CudaMat<D> {
    fn drop(&mut self) {
        let _ = self.drv.free(self.ptr);
    }
}

/// The KV cache of all layers, f32.
pub struct CudaKv<D: GpuDriver> {
    drv: Arc<D>,
    k: DevPtr,
    v: DevPtr,
    shape: KvShape,
}

impl<D: GpuDriver> Drop for CudaKv<D> {
    fn drop(&mut self) {
        let _ = self.drv.free(self.k);
        let _ = self.drv.free(self.v);
    }
}

/// A step's layout (see [`StepLayout`]) on the device, for the kernels, and on the host, for
/// launch geometry: one u32 buffer `positions [rows] | seq_of_row [rows] | tables`, uploaded
/// once per step by `set_layout`. Kernels read positions and block tables from it, so a launch's
/// arguments do not change from step to step (what a captured CUDA graph needs).
pub struct CudaLayout<D: GpuDriver> {
    drv: Arc<D>,
    ptr: DevPtr,
    /// Capacity in u32 words.
    words: usize,
    rows: usize,
    host: StepLayout,
}

impl<D: GpuDriver> CudaLayout<D> {
    /// The host copy.
    pub fn host(&self) -> &StepLayout {
        &self.host
    }
    fn positions(&self) -> DevPtr {
        self.ptr
    }
    fn seq_of_row(&self) -> DevPtr {
        self.ptr.offset(self.rows * 4)
    }
    fn tables(&self) -> DevPtr {
        self.ptr.offset(self.rows * 8)
    }
}

impl<D: GpuDriver> Drop for CudaLayout<D> {
    fn drop(&mut self) {
        let _ = self.drv.free(self.ptr);
    }
}

/// What the attention kernels of one call share.
struct AttnLaunch<'a, D: GpuDriver> {
    layout: &'a CudaLayout<D>,
    kpool: DevPtr,
    vpool: DevPtr,
    window: usize,
    mb32: u32,
    bs32: u32,
}

/// A device buffer that grows on demand and is reused across calls (token ids, the bf16 copy
/// of the GEMM's activations, attention partials, the argmax result). Work is stream-ordered,
/// so reuse by the next launch is safe.
#[derive(Default)]
struct Grow {
    ptr: Option<DevPtr>,
    bytes: usize,
}

#[derive(Default)]
struct Scratch {
    tokens: Grow,
    bf16: Grow,
    attn_acc: Grow,
    attn_ml: Grow,
    argmax: Grow,
}

/// One launch as issued: what a captured graph node holds.
#[derive(Clone, Debug, PartialEq)]
struct Launch {
    func: FuncId,
    cfg: LaunchConfig,
    args: Vec<KernelArg>,
}

/// Graphs kept at once (decode with and without all-row logits, a second model shape ...).
const MAX_GRAPHS: usize = 4;

/// What the CUDA-graph path did, for tests and the GPU check.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GraphStats {
    /// Replayable steps run with eager launches (first sight, or a step that was not).
    pub eager_steps: u64,
    /// Graphs captured.
    pub captures: u64,
    /// Steps replayed from a graph.
    pub replays: u64,
    /// Kernel launches in those replays (what they saved the host from issuing).
    pub replayed_launches: u64,
    /// Why a capture failed (the graph path is then off for this backend).
    pub capture_error: Option<String>,
}

/// The CUDA-graph state (see the module docs).
struct Graphs {
    enabled: bool,
    /// Launches of the replayable step in progress, queued instead of issued; None outside
    /// such a step or once the step turned eager.
    queue: Option<Vec<Launch>>,
    /// The last replayable step's launches, run eagerly: captured if the next step repeats them.
    candidate: Option<Vec<Launch>>,
    /// Captured graphs with the launch lists they hold, most recently used last.
    cache: Vec<(Vec<Launch>, GraphId)>,
    stats: GraphStatsHandle,
}

/// The graph statistics of a backend, readable after the backend has moved into a `Model`.
#[derive(Clone, Default)]
pub struct GraphStatsHandle(Arc<Mutex<GraphStats>>);

impl GraphStatsHandle {
    /// The statistics now.
    pub fn get(&self) -> GraphStats {
        lock(&self.0).clone()
    }
    fn bump(&self, f: impl FnOnce(&mut GraphStats)) {
        f(&mut lock(&self.0))
    }
}

#[derive(Default, Clone, Copy)]
struct Tally {
    calls: u64,
    bytes: f64,
    flops: f64,
}

/// The CUDA backend over any driver.
pub struct CudaBackend<D: GpuDriver> {
    drv: Arc<D>,
    k: Kernels,
    scratch: Mutex<Scratch>,
    /// Per-kernel call counts and the bytes / FLOPs their headers say they move, while
    /// profiling is on (None when off).
    tally: Mutex<Option<BTreeMap<&'static str, Tally>>>,
    /// Keep bf16 matmuls on the f32-activation matvec kernel at every row count.
    f32_prefill: bool,
    graphs: Mutex<Graphs>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain data behind; keep going with it.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn check_len(op: &str, what: &str, have: usize, need: usize) -> Result<()> {
    if have < need {
        return Err(Error::arg(format!(
            "{op}: {what} holds {have} elements, {need} needed"
        )));
    }
    Ok(())
}

fn u32_arg(op: &str, what: &str, v: usize) -> Result<u32> {
    u32::try_from(v).map_err(|_| {
        Error::arg(format!(
            "{op}: {what} = {v} does not fit the kernel's 32-bit index"
        ))
    })
}

fn grid_stride_blocks(n: usize) -> u32 {
    n.div_ceil(BLOCK as usize).clamp(1, MAX_GRID_STRIDE_BLOCKS) as u32
}

fn f32_bytes(v: &[f32]) -> &[u8] {
    bytemuck::cast_slice(v)
}

impl<D: GpuDriver> CudaBackend<D> {
    /// A gated activation `gate[i] = act(gate[i]) · up[i]` (silu, gelu-tanh): one grid-stride
    /// launch of `kernel`, 12 bytes and `flops` FLOPs per element.
    fn gated(
        &self,
        op: &'static str,
        kernel: Kernel,
        gate: &mut CudaBuf<D>,
        up: &CudaBuf<D>,
        len: usize,
        flops: f64,
    ) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        check_len(op, "gate", gate.len, len)?;
        check_len(op, "up", up.len, len)?;
        self.launch(
            kernel,
            (grid_stride_blocks(len), 1, 1),
            BLOCK,
            0,
            &[
                KernelArg::Ptr(gate.ptr),
                KernelArg::Ptr(up.ptr),
                KernelArg::U32(u32_arg(op, "len", len)?),
            ],
            12.0 * len as f64,
            flops * len as f64,
        )
    }

    /// Load every kernel into `drv` (once; the backend owns the modules from here on).
    pub fn new(drv: D) -> Result<Self> {
        let drv = Arc::new(drv);
        let k = Kernels::load(&*drv)?;
        Ok(CudaBackend {
            drv,
            k,
            scratch: Mutex::new(Scratch::default()),
            tally: Mutex::new(None),
            f32_prefill: false,
            graphs: Mutex::new(Graphs {
                enabled: std::env::var("MINFER_CUDA_GRAPH").map_or(true, |v| v.trim() != "0"),
                queue: None,
                candidate: None,
                cache: Vec::new(),
                stats: GraphStatsHandle::default(),
            }),
        })
    }

    /// Replay batch-1 decode steps from CUDA graphs (on by default unless the environment sets
    /// `MINFER_CUDA_GRAPH=0`); see the module docs.
    pub fn with_graphs(self, on: bool) -> Self {
        lock(&self.graphs).enabled = on;
        self
    }

    /// What the graph path has done so far.
    pub fn graph_stats(&self) -> GraphStats {
        lock(&self.graphs).stats.get()
    }

    /// A handle on the graph statistics that stays readable after the backend has moved into
    /// a `Model` (tests).
    pub fn graph_stats_handle(&self) -> GraphStatsHandle {
        lock(&self.graphs).stats.clone()
    }

    /// Before any device operation that is not a launch (a copy, an allocation, a wait): the
    /// launches a replayable step has queued must reach the stream first, and the rest of the
    /// step then runs eagerly. Operations before the step's first launch (its token upload)
    /// change nothing.
    fn before_device_op(&self) -> Result<()> {
        let queued = {
            let mut g = lock(&self.graphs);
            match g.queue.as_ref() {
                Some(q) if !q.is_empty() => g.queue.take(),
                _ => None,
            }
        };
        self.issue(&queued.unwrap_or_default())
    }

    /// The end of a replayable step whose launches are `q`: replay, capture or run them.
    fn finish_step(&self, q: Vec<Launch>) -> Result<()> {
        let mut g = lock(&self.graphs);
        if let Some(i) = g.cache.iter().position(|(l, _)| *l == q) {
            let entry = g.cache.remove(i);
            let id = entry.1;
            g.cache.push(entry);
            g.stats.bump(|s| {
                s.replays += 1;
                s.replayed_launches += q.len() as u64;
            });
            drop(g);
            return self.drv.launch_graph(id);
        }
        if g.candidate.as_ref() != Some(&q) {
            g.stats.bump(|s| s.eager_steps += 1);
            g.candidate = Some(q.clone());
            drop(g);
            return self.issue(&q);
        }
        g.candidate = None;
        match self.capture(&q) {
            Ok(id) => {
                if g.cache.len() == MAX_GRAPHS {
                    let (_, old) = g.cache.remove(0);
                    let _ = self.drv.free_graph(old);
                }
                g.cache.push((q, id));
                g.stats.bump(|s| s.captures += 1);
                drop(g);
                self.drv.launch_graph(id)
            }
            Err(e) => {
                // A driver that cannot capture this step: never try again, run it eagerly.
                g.enabled = false;
                g.stats.bump(|s| {
                    s.eager_steps += 1;
                    s.capture_error = Some(e.to_string());
                });
                drop(g);
                self.issue(&q)
            }
        }
    }

    fn issue(&self, q: &[Launch]) -> Result<()> {
        for l in q {
            self.drv.launch(l.func, l.cfg, &l.args)?;
        }
        Ok(())
    }

    /// Capture `q` into a graph (nothing runs yet).
    fn capture(&self, q: &[Launch]) -> Result<GraphId> {
        self.drv.begin_capture()?;
        let issued = self.issue(q);
        // end the capture whatever happened, so the stream leaves capture mode
        let g = self.drv.end_capture();
        issued?;
        g
    }

    /// Run bf16 / f16 matmuls of many rows on the matrix-vector kernel with f32 activations
    /// instead of the tensor-core GEMM, which rounds activations to bf16 (relative error 2^-9 per
    /// operand, as in any bf16 inference) or to f16 (2^-12, saturating at +-65504). Slower prefill, f32-exact results: for checking the model
    /// against an f32 reference.
    pub fn with_f32_prefill(mut self, on: bool) -> Self {
        self.f32_prefill = on;
        self
    }

    pub fn driver(&self) -> &D {
        &self.drv
    }

    /// Turn per-kernel profiling on or off. On a real GPU this adds timing events around each
    /// launch; [`Backend::take_profile`] returns what was gathered.
    pub fn set_profiling(&self, on: bool) {
        self.drv.set_profiling(on);
        *lock(&self.tally) = on.then(BTreeMap::new);
    }

    /// Wait for all queued work.
    pub fn synchronize(&self) -> Result<()> {
        self.before_device_op()?;
        self.drv.synchronize()
    }

    // Launch shape, arguments and the header's cost figures side by side read better than a
    // struct built at each of the 20 call sites.
    #[allow(clippy::too_many_arguments)]
    fn launch(
        &self,
        k: Kernel,
        grid: (u32, u32, u32),
        block: u32,
        shared: usize,
        args: &[KernelArg],
        bytes: f64,
        flops: f64,
    ) -> Result<()> {
        let shared_bytes = u32::try_from(shared)
            .ok()
            .filter(|&s| (s as usize) <= MAX_DYNAMIC_SHARED)
            .ok_or_else(|| {
                Error::arg(format!(
                    "{}: {shared} B of shared memory exceeds 48 KB",
                    k.name
                ))
            })?;
        let cfg = LaunchConfig {
            grid,
            block: (block, 1, 1),
            shared_bytes,
        };
        let queued = match lock(&self.graphs).queue.as_mut() {
            Some(q) => {
                q.push(Launch {
                    func: k.func,
                    cfg,
                    args: args.to_vec(),
                });
                true
            }
            None => false,
        };
        if !queued {
            self.drv.launch(k.func, cfg, args)?;
        }
        if let Some(t) = lock(&self.tally).as_mut() {
            let e = t.entry(k.name).or_default();
            e.calls += 1;
            e.bytes += bytes;
            e.flops += flops;
        }
        Ok(())
    }

    /// A scratch pointer with at least `bytes` bytes, growing `g` if needed.
    fn grow(&self, g: &mut Grow, bytes: usize) -> Result<DevPtr> {
        let bytes = bytes.max(16);
        if let Some(p) = g.ptr {
            if g.bytes >= bytes {
                return Ok(p);
            }
            self.before_device_op()?;
            // Freeing synchronizes with the device on the real driver, so no queued kernel
            // still reads the old buffer.
            self.drv.synchronize()?;
            self.drv.free(p)?;
            g.ptr = None;
        }
        self.before_device_op()?;
        // Grow geometrically so a slowly lengthening prompt does not reallocate every call.
        let want = bytes.max(g.bytes.saturating_mul(2));
        let p = self.drv.alloc(want)?;
        g.ptr = Some(p);
        g.bytes = want;
        Ok(p)
    }

    fn alloc_f32_zeroed(&self, len: usize) -> Result<DevPtr> {
        self.before_device_op()?;
        let bytes = len
            .checked_mul(4)
            .ok_or_else(|| Error::arg(format!("alloc: {len} f32 elements overflow")))?;
        let p = self.drv.alloc(bytes.max(4))?;
        self.drv.memset_zero(p, bytes.max(4))?;
        Ok(p)
    }

    fn cast_f32_bf16(&self, dst: DevPtr, src: DevPtr, n: usize) -> Result<()> {
        self.cast(self.k.cast_f32_bf16, dst, src, n)
    }

    /// One of the element-wise f32 -> 16-bit casts.
    fn cast(&self, k: Kernel, dst: DevPtr, src: DevPtr, n: usize) -> Result<()> {
        let n32 = u32_arg(k.name, "n", n)?;
        self.launch(
            k,
            (grid_stride_blocks(n), 1, 1),
            BLOCK,
            0,
            &[
                KernelArg::Ptr(dst),
                KernelArg::Ptr(src),
                KernelArg::U32(n32),
            ],
            6.0 * n as f64,
            0.0,
        )
    }

    /// Upload f32 values as a bf16 device matrix (for tests and benches of the bf16 kernels
    /// without a checkpoint; the casting runs on the device, rounding to nearest even).
    pub fn upload_f32_as_bf16(
        &self,
        name: &str,
        shape: Vec<usize>,
        values: &[f32],
    ) -> Result<CudaMat<D>> {
        let n: usize = shape.iter().product();
        check_len("upload_f32_as_bf16", name, values.len(), n)?;
        let tmp = self.drv.alloc((n * 4).max(4))?;
        let out = (|| {
            self.drv.copy_to_device(tmp, f32_bytes(&values[..n]))?;
            let dst = self.drv.alloc((n * 2).max(4))?;
            self.cast_f32_bf16(dst, tmp, n)?;
            self.drv.synchronize()?;
            Ok(CudaMat {
                drv: self.drv.clone(),
                ptr: dst,
                dtype: DType::BF16,
                shape,
                name: name.to_string(),
                head: 0,
            })
        })();
        self.drv.free(tmp)?;
        out
    }
}

impl<D: GpuDriver> CudaBackend<D> {
    /// Visible keys of `row`: position + 1, or the window.
    fn visible(a: &AttnLaunch<'_, D>, row: usize) -> usize {
        let p = a.layout.host.positions[row] as usize + 1;
        if a.window > 0 {
            p.min(a.window)
        } else {
            p
        }
    }

    /// Prefill attention (attn_prefill_f32) of rows `r0..r0 + len`: consecutive positions of
    /// one table.
    fn attn_prefill(
        &self,
        out: &mut CudaBuf<D>,
        q: &CudaBuf<D>,
        a: &AttnLaunch<'_, D>,
        r0: usize,
        len: usize,
        p: &AttnParams,
    ) -> Result<()> {
        let (hd, nh, nkv) = (p.head_dim, p.n_heads, p.n_kv_heads);
        let smem = 4 * (32 * (hd + 1) + 32 * hd + 8 * hd);
        let longest = Self::visible(a, r0 + len - 1);
        let row_off = r0 * nh * hd * 4;
        self.launch(
            self.k.attn_prefill_f32,
            (nh as u32, len.div_ceil(8) as u32, 1),
            256,
            smem,
            &[
                KernelArg::Ptr(out.ptr.offset(row_off)),
                KernelArg::Ptr(q.ptr.offset(row_off)),
                KernelArg::Ptr(a.kpool),
                KernelArg::Ptr(a.vpool),
                KernelArg::U32(nh as u32),
                KernelArg::U32(nkv as u32),
                KernelArg::U32(hd as u32),
                KernelArg::Ptr(a.layout.positions().offset(r0 * 4)),
                KernelArg::Ptr(a.layout.seq_of_row().offset(r0 * 4)),
                KernelArg::Ptr(a.layout.tables()),
                KernelArg::U32(a.mb32),
                KernelArg::U32(a.bs32),
                KernelArg::U32(a.window as u32),
                KernelArg::U32(len as u32),
                KernelArg::F32(p.scale),
            ],
            (len.div_ceil(8) * nh * longest * hd * 8 + 2 * len * nh * hd * 4) as f64,
            4.0 * (len * longest * nh * hd) as f64,
        )
    }

    /// Split (flash-decoding) attention of rows `r0..r0 + len`, each with its own position and
    /// table (grid.z = len), then the combine kernel. The splits cover `span` keys (at least
    /// the longest visible range of the rows).
    #[allow(clippy::too_many_arguments)]
    fn attn_split(
        &self,
        out: &mut CudaBuf<D>,
        q: &CudaBuf<D>,
        a: &AttnLaunch<'_, D>,
        r0: usize,
        len: usize,
        span: usize,
        p: &AttnParams,
    ) -> Result<()> {
        let op = "attention";
        let (hd, nh, nkv) = (p.head_dim, p.n_heads, p.n_kv_heads);
        let group = nh / nkv;
        // Split the span into chunks. Aim at ~256 blocks (about two per SM on an H100/H200) so
        // one decode row's KV read is spread over the GPU; chunks of at least 32 keys keep the
        // partials (4·hd B per head and split) small next to the K/V bytes (8·hd B per key and
        // kv head) they summarise. Rows whose range is shorter leave their last splits empty.
        let longest = (r0..r0 + len)
            .map(|r| Self::visible(a, r))
            .max()
            .unwrap_or(1)
            .max(span);
        let total: usize = (r0..r0 + len).map(|r| Self::visible(a, r)).sum();
        // attn_split_f32's shared memory: 8 KB of P·V partials, then q, scores, m, l of the
        // group and the chunk's key slots: 4·(group·(hd + chunk + 2) + chunk) B
        const PV_PARTIALS: usize = 8192;
        let max_chunk_smem =
            ((MAX_DYNAMIC_SHARED - PV_PARTIALS) / 4).saturating_sub(group * (hd + 2)) / (group + 1);
        let target_splits = (ATTN_TARGET_BLOCKS / (nkv * len)).max(1);
        let mut chunk = longest
            .div_ceil(target_splits)
            .max(32)
            .next_multiple_of(32)
            .min(4096);
        if chunk > max_chunk_smem {
            chunk = max_chunk_smem / 32 * 32;
        }
        if chunk == 0 {
            return Err(Error::arg(format!(
                "{op}: {group} query heads per kv head of dim {hd} do not fit 48 KB of shared memory"
            )));
        }
        let n_splits = longest.div_ceil(chunk);
        if n_splits > MAX_GRID_YZ {
            return Err(Error::arg(format!(
                "{op}: {n_splits} splits exceed the grid limit"
            )));
        }
        let smem = PV_PARTIALS + 4 * group * (hd + chunk + 2) + 4 * chunk;
        let parts = len * nh * n_splits;
        let mut sc = lock(&self.scratch);
        let acc = self.grow(&mut sc.attn_acc, parts * hd * 4)?;
        let ml = self.grow(&mut sc.attn_ml, parts * 8)?;
        let kv_bytes = (total * nkv * hd * 8) as f64;
        let row_off = r0 * nh * hd * 4;
        self.launch(
            self.k.attn_split_f32,
            (nkv as u32, n_splits as u32, len as u32),
            256,
            smem,
            &[
                KernelArg::Ptr(acc),
                KernelArg::Ptr(ml),
                KernelArg::Ptr(q.ptr.offset(row_off)),
                KernelArg::Ptr(a.kpool),
                KernelArg::Ptr(a.vpool),
                KernelArg::U32(nh as u32),
                KernelArg::U32(nkv as u32),
                KernelArg::U32(hd as u32),
                KernelArg::Ptr(a.layout.positions().offset(r0 * 4)),
                KernelArg::Ptr(a.layout.seq_of_row().offset(r0 * 4)),
                KernelArg::Ptr(a.layout.tables()),
                KernelArg::U32(a.mb32),
                KernelArg::U32(a.bs32),
                KernelArg::U32(a.window as u32),
                KernelArg::U32(chunk as u32),
                KernelArg::F32(p.scale),
            ],
            kv_bytes + (len * nh * hd * 4 + parts * (hd + 2) * 4) as f64,
            4.0 * (total * nh * hd) as f64,
        )?;
        self.launch(
            self.k.attn_combine_f32,
            (nh as u32, len as u32, 1),
            256,
            0,
            &[
                KernelArg::Ptr(out.ptr.offset(row_off)),
                KernelArg::Ptr(acc),
                KernelArg::Ptr(ml),
                KernelArg::U32(n_splits as u32),
                KernelArg::U32(hd as u32),
            ],
            (parts * (hd + 2) * 4 + len * nh * hd * 4) as f64,
            (3 * parts * hd) as f64,
        )
    }
}

impl<D: GpuDriver> CudaBackend<D> {
    /// `matmul` on a block-quantized weight: kernels/matvec_q.ptx, one launch with grid.y =
    /// rows (the weights are re-read per row through L2).
    #[allow(clippy::too_many_arguments)]
    fn matmul_quant(
        &self,
        out: &mut CudaBuf<D>,
        x: &CudaBuf<D>,
        w: &CudaMat<D>,
        ql: QuantLayout,
        bias: DevPtr,
        rows: usize,
        n32: u32,
        k32: u32,
    ) -> Result<()> {
        let op = "matmul";
        let (n, k) = (n32 as usize, k32 as usize);
        if k == 0 || !k.is_multiple_of(ql.elems) {
            return Err(Error::arg(format!(
                "{op}: weight {:?} ({}) has {k} input features, not a positive multiple of its {}-weight blocks",
                w.name, w.dtype, ql.elems
            )));
        }
        if rows > MAX_GRID_YZ {
            return Err(Error::arg(format!(
                "{op}: {rows} rows exceed the grid limit {MAX_GRID_YZ}"
            )));
        }
        if n * k / 32 > u32::MAX as usize {
            return Err(Error::arg(format!(
                "{op}: weight {:?} has {n} x {k} weights, more than the kernels' 2^37",
                w.name
            )));
        }
        let kernel = match w.dtype {
            DType::Q8_0 => self.k.matvec_q8_0,
            DType::Q4_0 => self.k.matvec_q4_0,
            DType::Q4_1 => self.k.matvec_q4_1,
            DType::Q4K => self.k.matvec_q4_k,
            _ => self.k.matvec_q6_k,
        };
        let w_bytes = n * k / ql.elems * (ql.body + ql.head);
        self.launch(
            kernel,
            (n.div_ceil(8) as u32, rows as u32, 1),
            BLOCK,
            0,
            &[
                KernelArg::Ptr(out.ptr),
                KernelArg::Ptr(x.ptr),
                KernelArg::Ptr(w.ptr),
                KernelArg::Ptr(w.ptr.offset(w.head)),
                KernelArg::Ptr(bias),
                KernelArg::U32(k32),
                KernelArg::U32(n32),
            ],
            (rows * w_bytes + rows * k * 4 + rows * n * 4) as f64,
            2.0 * (rows * n * k) as f64,
        )
    }

    /// A bf16 matrix back as f32 values, converted on the device (exact). For tests and
    /// debugging; the forward pass never reads weights back.
    pub fn download_bf16_as_f32(&self, m: &CudaMat<D>) -> Result<Vec<f32>> {
        if m.dtype != DType::BF16 {
            return Err(Error::arg(format!(
                "download_bf16_as_f32: {:?} is {}",
                m.name, m.dtype
            )));
        }
        let n = m.numel();
        let tmp = self.drv.alloc((n * 4).max(4))?;
        let out = (|| {
            let n32 = u32_arg("cast_bf16_f32", "n", n)?;
            self.launch(
                self.k.cast_bf16_f32,
                (grid_stride_blocks(n), 1, 1),
                BLOCK,
                0,
                &[
                    KernelArg::Ptr(tmp),
                    KernelArg::Ptr(m.ptr),
                    KernelArg::U32(n32),
                ],
                6.0 * n as f64,
                0.0,
            )?;
            let mut v = vec![0f32; n];
            self.drv
                .copy_to_host(bytemuck::cast_slice_mut(&mut v), tmp)?;
            Ok(v)
        })();
        self.drv.free(tmp)?;
        out
    }
}

impl<D: GpuDriver> CudaBackend<D> {
    /// Device-to-device copy bandwidth in GB/s (bytes read plus bytes written, median of
    /// `repeats` after a warm-up) through the copy kernel: the ceiling the memory-bound kernels
    /// are measured against when no better tool is at hand.
    pub fn measure_copy_bandwidth(&self, bytes: usize, repeats: usize) -> Result<f64> {
        let n = bytes / 4;
        let n32 = u32_arg("measure_copy_bandwidth", "elements", n)?;
        let src = self.alloc_f32_zeroed(n)?;
        let dst = match self.alloc_f32_zeroed(n) {
            Ok(d) => d,
            Err(e) => {
                let _ = self.drv.free(src);
                return Err(e);
            }
        };
        let run = || -> Result<f64> {
            let mut times = Vec::new();
            for i in 0..=repeats.max(1) {
                let t = std::time::Instant::now();
                self.launch(
                    self.k.copy_f32,
                    (grid_stride_blocks(n), 1, 1),
                    BLOCK,
                    0,
                    &[
                        KernelArg::Ptr(dst),
                        KernelArg::Ptr(src),
                        KernelArg::U32(n32),
                    ],
                    8.0 * n as f64,
                    0.0,
                )?;
                self.drv.synchronize()?;
                if i > 0 {
                    times.push(t.elapsed().as_secs_f64());
                }
            }
            times.sort_by(f64::total_cmp);
            Ok(8.0 * n as f64 / times[times.len() / 2] / 1e9)
        };
        let r = run();
        let _ = self.drv.free(src);
        let _ = self.drv.free(dst);
        r
    }
}

impl<D: GpuDriver> Drop for CudaBackend<D> {
    fn drop(&mut self) {
        let g = self.graphs.get_mut().unwrap_or_else(|e| e.into_inner());
        for (_, id) in g.cache.drain(..) {
            let _ = self.drv.free_graph(id);
        }
        let s = self.scratch.get_mut().unwrap_or_else(|e| e.into_inner());
        for g in [&s.tokens, &s.bf16, &s.attn_acc, &s.attn_ml, &s.argmax] {
            if let Some(p) = g.ptr {
                let _ = self.drv.free(p);
            }
        }
    }
}

impl<D: GpuDriver + 'static> Backend for CudaBackend<D> {
    type Buf = CudaBuf<D>;
    type Mat = CudaMat<D>;
    type Kv = CudaKv<D>;
    type Layout = CudaLayout<D>;

    fn alloc_layout(
        &self,
        max_rows: usize,
        max_tables: usize,
        max_blocks: usize,
    ) -> Result<CudaLayout<D>> {
        let words = 2 * max_rows + max_tables * max_blocks;
        let ptr = self.drv.alloc((words * 4).max(16))?;
        Ok(CudaLayout {
            drv: self.drv.clone(),
            ptr,
            words,
            rows: 0,
            host: StepLayout {
                max_blocks,
                ..StepLayout::default()
            },
        })
    }

    fn set_layout(&self, dst: &mut CudaLayout<D>, src: &StepLayout) -> Result<()> {
        self.before_device_op()?;
        let rows = src.rows();
        if src.seq_of_row.len() != rows {
            return Err(Error::arg(format!(
                "set_layout: {rows} positions, {} table indices",
                src.seq_of_row.len()
            )));
        }
        // one upload: positions | seq_of_row | tables
        let mut words = Vec::with_capacity(2 * rows + src.tables.len());
        words.extend_from_slice(&src.positions);
        words.extend_from_slice(&src.seq_of_row);
        words.extend_from_slice(&src.tables);
        if words.len() > dst.words {
            // Freeing synchronizes on the real driver, so no queued kernel still reads it.
            let want = words.len().max(2 * dst.words);
            let p = self.drv.alloc(want * 4)?;
            let _ = self.drv.free(dst.ptr);
            dst.ptr = p;
            dst.words = want;
        }
        if !words.is_empty() {
            self.drv
                .copy_to_device(dst.ptr, bytemuck::cast_slice(&words))?;
        }
        dst.rows = rows;
        dst.host.clone_from(src);
        Ok(())
    }

    fn copy_kv_blocks(&self, kv: &mut CudaKv<D>, pairs: &[(u32, u32)]) -> Result<()> {
        let s = kv.shape;
        s.check_block_pairs(pairs)?;
        let block = s.block_size * s.n_kv_heads * s.head_dim;
        let layer = s.layer_len()?;
        let n32 = u32_arg("copy_kv_blocks", "block values", block)?;
        // device to device, one copy launch per (layer, pool, pair), stream-ordered after the
        // attention that filled the source block
        for l in 0..s.layers {
            for &(src, dst) in pairs {
                for pool in [kv.k, kv.v] {
                    let base = pool.offset(l * layer * 4);
                    self.launch(
                        self.k.copy_f32,
                        (grid_stride_blocks(block), 1, 1),
                        BLOCK,
                        0,
                        &[
                            KernelArg::Ptr(base.offset(dst as usize * block * 4)),
                            KernelArg::Ptr(base.offset(src as usize * block * 4)),
                            KernelArg::U32(n32),
                        ],
                        8.0 * block as f64,
                        0.0,
                    )?;
                }
            }
        }
        Ok(())
    }

    fn name(&self) -> String {
        format!("cuda {}", self.drv.name())
    }

    fn upload(&self, w: &WeightTensor) -> Result<CudaMat<D>> {
        self.before_device_op()?;
        let mut head = 0;
        let (bytes, dtype): (Vec<u8>, DType) = match (w.dtype, w.shape.len()) {
            // 1-D weights (norm scales, biases, inv_freq) are small; f32 keeps their kernels
            // simple and exact.
            (DType::F32 | DType::F16 | DType::BF16, 1) => {
                let v = w.to_f32_vec()?;
                (f32_bytes(&v).to_vec(), DType::F32)
            }
            (d, 1) if quant_layout(d).is_some() => {
                let v = crate::quant::dequantize_to_vec(d, w.bytes(), w.numel())
                    .map_err(|e| Error::bad_weights(w.name.as_str(), e.to_string()))?;
                (f32_bytes(&v).to_vec(), DType::F32)
            }
            (DType::F32 | DType::F16 | DType::BF16, 2) => (w.bytes().to_vec(), w.dtype),
            (d, 2) if quant_layout(d).is_some() => {
                let (bytes, h) = split_blocks(w)?;
                head = h;
                (bytes, d)
            }
            // A block type without kernels here (Q5_K): f32, exact.
            (d, 2) if d.is_quantized() => {
                let v = crate::quant::dequantize_to_vec(d, w.bytes(), w.numel())
                    .map_err(|e| Error::bad_weights(w.name.as_str(), e.to_string()))?;
                (f32_bytes(&v).to_vec(), DType::F32)
            }
            (DType::F32 | DType::F16 | DType::BF16, n) => {
                return Err(Error::arg(format!(
                    "upload: tensor {:?} has {n} dimensions; the CUDA backend takes vectors and matrices",
                    w.name
                )))
            }
            (other, _) => {
                return Err(Error::UnsupportedDtype {
                    name: w.name.clone(),
                    dtype: other.to_string(),
                })
            }
        };
        let ptr = self.drv.alloc(bytes.len().max(4))?;
        if let Err(e) = self.drv.copy_to_device(ptr, &bytes) {
            let _ = self.drv.free(ptr);
            return Err(e);
        }
        Ok(CudaMat {
            drv: self.drv.clone(),
            ptr,
            dtype,
            shape: w.shape.clone(),
            name: w.name.clone(),
            head,
        })
    }

    fn alloc(&self, len: usize) -> Result<CudaBuf<D>> {
        let ptr = self.alloc_f32_zeroed(len)?;
        Ok(CudaBuf {
            drv: self.drv.clone(),
            ptr,
            len,
        })
    }

    fn alloc_kv(&self, shape: KvShape) -> Result<CudaKv<D>> {
        let n = shape
            .layer_len()?
            .checked_mul(shape.layers)
            .ok_or_else(|| Error::arg(format!("alloc_kv: {shape:?} overflows")))?;
        let k = self.alloc_f32_zeroed(n)?;
        let v = match self.alloc_f32_zeroed(n) {
            Ok(v) => v,
            Err(e) => {
                let _ = self.drv.free(k);
                return Err(e);
            }
        };
        Ok(CudaKv {
            drv: self.drv.clone(),
            k,
            v,
            shape,
        })
    }

    fn embed(&self, out: &mut CudaBuf<D>, table: &CudaMat<D>, tokens: &[u32]) -> Result<()> {
        let op = "embed";
        let [vocab, dim] = table.shape[..] else {
            return Err(Error::arg(format!(
                "{op}: table {:?} is not 2-D",
                table.name
            )));
        };
        let rows = tokens.len();
        if rows == 0 {
            return Ok(());
        }
        if rows > MAX_GRID_YZ {
            return Err(Error::arg(format!(
                "{op}: {rows} tokens exceed the grid limit {MAX_GRID_YZ}"
            )));
        }
        check_len(op, "out", out.len, rows * dim)?;
        if let Some(&t) = tokens.iter().find(|&&t| t as usize >= vocab) {
            return Err(Error::arg(format!(
                "{op}: token id {t} >= vocabulary size {vocab}"
            )));
        }
        let dim32 = u32_arg(op, "dim", dim)?;
        if let Some(ql) = quant_layout(table.dtype) {
            let kernel = match table.dtype {
                DType::Q8_0 => self.k.embed_q8_0,
                DType::Q4_0 => self.k.embed_q4_0,
                DType::Q4_1 => self.k.embed_q4_1,
                DType::Q4K => self.k.embed_q4_k,
                _ => self.k.embed_q6_k,
            };
            if !dim.is_multiple_of(ql.elems) {
                return Err(Error::arg(format!(
                    "{op}: table {:?} rows of {dim} are not whole {}-weight blocks",
                    table.name, ql.elems
                )));
            }
            let mut s = lock(&self.scratch);
            let tok = self.grow(&mut s.tokens, rows * 4)?;
            self.before_device_op()?;
            self.drv.copy_to_device(tok, bytemuck::cast_slice(tokens))?;
            let row_bytes = dim / ql.elems * (ql.body + ql.head);
            return self.launch(
                kernel,
                (dim.div_ceil(256) as u32, rows as u32, 1),
                256,
                0,
                &[
                    KernelArg::Ptr(out.ptr),
                    KernelArg::Ptr(table.ptr),
                    KernelArg::Ptr(table.ptr.offset(table.head)),
                    KernelArg::Ptr(tok),
                    KernelArg::U32(dim32),
                ],
                (rows * (row_bytes + dim * 4) + rows * 4) as f64,
                2.0 * (rows * dim) as f64,
            );
        }
        let kernel = match table.dtype {
            DType::F32 => self.k.embed_f32,
            DType::BF16 => self.k.embed_bf16,
            DType::F16 => self.k.embed_f16,
            other => {
                return Err(Error::UnsupportedDtype {
                    name: table.name.clone(),
                    dtype: other.to_string(),
                })
            }
        };
        let mut s = lock(&self.scratch);
        let tok = self.grow(&mut s.tokens, rows * 4)?;
        self.before_device_op()?;
        self.drv.copy_to_device(tok, bytemuck::cast_slice(tokens))?;
        let elem = table.dtype.block().1;
        self.launch(
            kernel,
            (dim.div_ceil(256) as u32, rows as u32, 1),
            256,
            0,
            &[
                KernelArg::Ptr(out.ptr),
                KernelArg::Ptr(table.ptr),
                KernelArg::Ptr(tok),
                KernelArg::U32(dim32),
            ],
            (rows * dim * (elem + 4) + rows * 4) as f64,
            0.0,
        )
    }

    fn rms_norm(
        &self,
        out: &mut CudaBuf<D>,
        x: &CudaBuf<D>,
        w: &CudaMat<D>,
        rows: usize,
        eps: f32,
    ) -> Result<()> {
        let op = "rms_norm";
        let dim = norm_weight(op, w)?;
        if rows == 0 {
            return Ok(());
        }
        check_len(op, "x", x.len, rows * dim)?;
        check_len(op, "out", out.len, rows * dim)?;
        self.launch(
            self.k.rms_norm_f32,
            (u32_arg(op, "rows", rows)?, 1, 1),
            NORM_BLOCK,
            0,
            &[
                KernelArg::Ptr(out.ptr),
                KernelArg::Ptr(x.ptr),
                KernelArg::Ptr(w.ptr),
                KernelArg::U32(u32_arg(op, "dim", dim)?),
                KernelArg::F32(eps),
            ],
            (rows * dim * 8 + dim * 4) as f64,
            (rows * dim * 3) as f64,
        )
    }

    fn add_rms_norm(
        &self,
        out: &mut CudaBuf<D>,
        residual: &mut CudaBuf<D>,
        x: &CudaBuf<D>,
        w: &CudaMat<D>,
        rows: usize,
        eps: f32,
    ) -> Result<()> {
        let op = "add_rms_norm";
        let dim = norm_weight(op, w)?;
        if rows == 0 {
            return Ok(());
        }
        check_len(op, "x", x.len, rows * dim)?;
        check_len(op, "residual", residual.len, rows * dim)?;
        check_len(op, "out", out.len, rows * dim)?;
        self.launch(
            self.k.add_rms_norm_f32,
            (u32_arg(op, "rows", rows)?, 1, 1),
            NORM_BLOCK,
            0,
            &[
                KernelArg::Ptr(out.ptr),
                KernelArg::Ptr(residual.ptr),
                KernelArg::Ptr(x.ptr),
                KernelArg::Ptr(w.ptr),
                KernelArg::U32(u32_arg(op, "dim", dim)?),
                KernelArg::F32(eps),
            ],
            (rows * dim * 16 + dim * 4) as f64,
            (rows * dim * 4) as f64,
        )
    }

    fn matmul(
        &self,
        out: &mut CudaBuf<D>,
        x: &CudaBuf<D>,
        w: &CudaMat<D>,
        bias: Option<&CudaMat<D>>,
        rows: usize,
    ) -> Result<()> {
        let op = "matmul";
        let [n, k] = w.shape[..] else {
            return Err(Error::arg(format!("{op}: weight {:?} is not 2-D", w.name)));
        };
        if rows == 0 || n == 0 {
            return Ok(());
        }
        check_len(op, "x", x.len, rows * k)?;
        check_len(op, "out", out.len, rows * n)?;
        if let Some(b) = bias {
            if b.dtype != DType::F32 || b.numel() != n {
                return Err(Error::arg(format!(
                    "{op}: bias {:?} must be {n} values (got {:?} {})",
                    b.name, b.shape, b.dtype
                )));
            }
        }
        let bias_ptr = bias.map_or(DevPtr(0), |b| b.ptr);
        let (n32, k32) = (
            u32_arg(op, "out features", n)?,
            u32_arg(op, "in features", k)?,
        );
        if let Some(ql) = quant_layout(w.dtype) {
            return self.matmul_quant(out, x, w, ql, bias_ptr, rows, n32, k32);
        }
        let multiple = if w.dtype == DType::F32 { 4 } else { 8 };
        if k == 0 || k % multiple != 0 {
            return Err(Error::arg(format!(
                "{op}: weight {:?} has {k} input features; the {} kernels need a positive multiple of {multiple} (16-byte rows)",
                w.name, w.dtype
            )));
        }
        let elem = w.dtype.block().1;
        let flops = 2.0 * (rows * n * k) as f64;
        let tensor_core = matches!(w.dtype, DType::BF16 | DType::F16)
            && rows > MATVEC_MAX_ROWS
            && !self.f32_prefill;
        if tensor_core {
            let m32 = u32_arg(op, "rows", rows)?;
            let grid_y = rows.div_ceil(64);
            if grid_y > MAX_GRID_YZ {
                return Err(Error::arg(format!(
                    "{op}: {rows} rows exceed the GEMM grid limit"
                )));
            }
            let (cast, gemm) = if w.dtype == DType::BF16 {
                (self.k.cast_f32_bf16, self.k.gemm_bf16)
            } else {
                (self.k.cast_f32_f16, self.k.gemm_f16)
            };
            let mut s = lock(&self.scratch);
            let a16 = self.grow(&mut s.bf16, rows * k * 2)?;
            self.cast(cast, a16, x.ptr, rows * k)?;
            return self.launch(
                gemm,
                (n.div_ceil(64) as u32, grid_y as u32, 1),
                128,
                0,
                &[
                    KernelArg::Ptr(out.ptr),
                    KernelArg::Ptr(a16),
                    KernelArg::Ptr(w.ptr),
                    KernelArg::Ptr(bias_ptr),
                    KernelArg::U32(m32),
                    KernelArg::U32(n32),
                    KernelArg::U32(k32),
                ],
                (n * k * 2 + rows * k * 2 + rows * n * 4) as f64,
                flops,
            );
        }
        let kernel = match w.dtype {
            DType::BF16 => self.k.matvec_bf16,
            DType::F16 => self.k.matvec_f16,
            DType::F32 => self.k.matvec_f32,
            other => {
                return Err(Error::UnsupportedDtype {
                    name: w.name.clone(),
                    dtype: other.to_string(),
                })
            }
        };
        if rows > MAX_GRID_YZ {
            return Err(Error::arg(format!(
                "{op}: {rows} rows exceed the grid limit {MAX_GRID_YZ}"
            )));
        }
        self.launch(
            kernel,
            (n.div_ceil(8) as u32, rows as u32, 1),
            BLOCK,
            0,
            &[
                KernelArg::Ptr(out.ptr),
                KernelArg::Ptr(x.ptr),
                KernelArg::Ptr(w.ptr),
                KernelArg::Ptr(bias_ptr),
                KernelArg::U32(k32),
                KernelArg::U32(n32),
            ],
            (rows * n * k * elem + rows * k * 4 + rows * n * 4) as f64,
            flops,
        )
    }

    fn head_rms_norm(
        &self,
        x: &mut CudaBuf<D>,
        w: &CudaMat<D>,
        rows: usize,
        heads: usize,
        eps: f32,
    ) -> Result<()> {
        let op = "head_rms_norm";
        let hd = norm_weight(op, w)?;
        let nvec = rows * heads;
        if nvec == 0 {
            return Ok(());
        }
        check_len(op, "x", x.len, nvec * hd)?;
        self.launch(
            self.k.head_rms_norm_f32,
            (u32_arg(op, "blocks", nvec.div_ceil(4))?, 1, 1),
            128,
            0,
            &[
                KernelArg::Ptr(x.ptr),
                KernelArg::Ptr(w.ptr),
                KernelArg::U32(u32_arg(op, "rows * heads", nvec)?),
                KernelArg::U32(u32_arg(op, "head_dim", hd)?),
                KernelArg::F32(eps),
            ],
            (nvec * hd * 8) as f64,
            (nvec * hd * 3) as f64,
        )
    }

    fn rope(
        &self,
        x: &mut CudaBuf<D>,
        rows: usize,
        heads: usize,
        head_dim: usize,
        layout: &CudaLayout<D>,
        inv_freq: &CudaMat<D>,
    ) -> Result<()> {
        let op = "rope";
        if !head_dim.is_multiple_of(2) {
            return Err(Error::arg(format!("{op}: head_dim {head_dim} is odd")));
        }
        let half = head_dim / 2;
        if inv_freq.dtype != DType::F32 || inv_freq.numel() != half {
            return Err(Error::arg(format!(
                "{op}: inv_freq {:?} must hold head_dim / 2 = {half} f32 values, has {:?}",
                inv_freq.name, inv_freq.shape
            )));
        }
        let pairs = rows * heads * half;
        if pairs == 0 {
            return Ok(());
        }
        if layout.rows < rows {
            return Err(Error::arg(format!(
                "{op}: layout has {} positions for {rows} rows",
                layout.rows
            )));
        }
        check_len(op, "x", x.len, rows * heads * head_dim)?;
        u32_arg(op, "rows * heads * head_dim / 2", pairs)?;
        if let Some(&p) = layout.host.positions[..rows]
            .iter()
            .find(|&&p| p >= 1 << 24)
        {
            return Err(Error::arg(format!(
                "{op}: position {p} is not exact in f32"
            )));
        }
        self.launch(
            self.k.rope_f32,
            (u32_arg(op, "blocks", pairs.div_ceil(256))?, 1, 1),
            256,
            0,
            &[
                KernelArg::Ptr(x.ptr),
                KernelArg::Ptr(inv_freq.ptr),
                KernelArg::U32(u32_arg(op, "rows", rows)?),
                KernelArg::U32(u32_arg(op, "heads", heads)?),
                KernelArg::U32(u32_arg(op, "pairs", half)?),
                KernelArg::Ptr(layout.positions()),
            ],
            (pairs * 16 + rows * 4) as f64,
            (pairs * 8) as f64,
        )
    }

    fn attention(
        &self,
        out: &mut CudaBuf<D>,
        q: &CudaBuf<D>,
        k: &CudaBuf<D>,
        v: &CudaBuf<D>,
        kv: &mut CudaKv<D>,
        layer: usize,
        rows: usize,
        layout: &CudaLayout<D>,
        p: &AttnParams,
    ) -> Result<()> {
        let op = "attention";
        let s = kv.shape;
        if p.n_kv_heads != s.n_kv_heads || p.head_dim != s.head_dim {
            return Err(Error::arg(format!(
                "{op}: params ({} kv heads, head_dim {}) do not match the cache {s:?}",
                p.n_kv_heads, p.head_dim
            )));
        }
        if p.n_kv_heads == 0 || !p.n_heads.is_multiple_of(p.n_kv_heads) {
            return Err(Error::arg(format!(
                "{op}: {} heads are not a multiple of {} kv heads",
                p.n_heads, p.n_kv_heads
            )));
        }
        if p.head_dim == 0 || !p.head_dim.is_multiple_of(4) || p.head_dim > 256 {
            return Err(Error::arg(format!(
                "{op}: head_dim {} must be a multiple of 4, at most 256",
                p.head_dim
            )));
        }
        if layer >= s.layers {
            return Err(Error::arg(format!(
                "{op}: layer {layer} of a {}-layer cache",
                s.layers
            )));
        }
        if rows == 0 {
            return Ok(());
        }
        let host = &layout.host;
        host.validate(rows, &s)?;
        if s.slots() > u32::MAX as usize {
            return Err(Error::arg(format!(
                "{op}: a pool of {} slots exceeds the kernels' 32-bit slot index",
                s.slots()
            )));
        }
        if rows > MAX_GRID_YZ {
            return Err(Error::arg(format!(
                "{op}: {rows} rows exceed the grid limit {MAX_GRID_YZ}"
            )));
        }
        let window = match p.window {
            Some(0) => {
                return Err(Error::arg(format!(
                    "{op}: a sliding window of 0 sees nothing"
                )))
            }
            Some(w) => w,
            None => 0,
        };
        let (hd, nh, nkv) = (p.head_dim, p.n_heads, p.n_kv_heads);
        let kvdim = nkv * hd;
        check_len(op, "q", q.len, rows * nh * hd)?;
        check_len(op, "k", k.len, rows * kvdim)?;
        check_len(op, "v", v.len, rows * kvdim)?;
        check_len(op, "out", out.len, rows * nh * hd)?;

        // 1. write every row's K and V to its slot of the layer's pools
        let layer_off = layer * s.slots() * kvdim * 4;
        let (kpool, vpool) = (kv.k.offset(layer_off), kv.v.offset(layer_off));
        let n = rows * kvdim;
        let (mb32, bs32) = (
            u32_arg(op, "max_blocks", host.max_blocks)?,
            u32_arg(op, "block_size", s.block_size)?,
        );
        self.launch(
            self.k.kv_append_f32,
            (grid_stride_blocks(n), 1, 1),
            BLOCK,
            0,
            &[
                KernelArg::Ptr(kpool),
                KernelArg::Ptr(vpool),
                KernelArg::Ptr(k.ptr),
                KernelArg::Ptr(v.ptr),
                KernelArg::Ptr(layout.positions()),
                KernelArg::Ptr(layout.seq_of_row()),
                KernelArg::Ptr(layout.tables()),
                KernelArg::U32(mb32),
                KernelArg::U32(bs32),
                KernelArg::U32(u32_arg(op, "kv_dim", kvdim)?),
                KernelArg::U32(u32_arg(op, "rows * kv_dim", n)?),
            ],
            16.0 * n as f64 + 12.0 * rows as f64,
            0.0,
        )?;

        // 2. segments: runs of rows of one table at consecutive positions (a prefill chunk, or a
        //    decode row). A step of single-row segments (batch-1 or batched decode) is one launch
        //    of the split kernels over all rows; otherwise each segment gets its own launches.
        let mut segs: Vec<(usize, usize)> = Vec::new();
        for r in 0..rows {
            match segs.last_mut() {
                Some((r0, len))
                    if host.seq_of_row[r] == host.seq_of_row[*r0]
                        && host.positions[r] == host.positions[*r0] + *len as u32 =>
                {
                    *len += 1
                }
                _ => segs.push((r, 1)),
            }
        }
        let a = AttnLaunch {
            layout,
            kpool,
            vpool,
            window,
            mb32,
            bs32,
        };
        if segs.iter().all(|&(_, len)| len == 1) {
            // Decode. One row (batch-1, the step a CUDA graph replays): the split geometry
            // covers every position the table can reach (within the window), not the row's
            // current position, so the step's launches are the same at every position; splits
            // past the position are empty. Several rows (batched decode, not replayed): the
            // longest row's range, as it spreads short contexts over more blocks.
            let reach = host.max_blocks * s.block_size;
            let span = match (rows, window) {
                (1, 0) => reach,
                (1, w) => reach.min(w),
                _ => 0,
            };
            return self.attn_split(out, q, &a, 0, rows, span, p);
        }
        for &(r0, len) in &segs {
            if len > 1 && hd <= PREFILL_MAX_HEAD_DIM {
                self.attn_prefill(out, q, &a, r0, len, p)?;
            } else {
                self.attn_split(out, q, &a, r0, len, 0, p)?;
            }
        }
        Ok(())
    }

    fn silu_mul(&self, gate: &mut CudaBuf<D>, up: &CudaBuf<D>, len: usize) -> Result<()> {
        self.gated("silu_mul", self.k.silu_mul_f32, gate, up, len, 5.0)
    }

    fn gelu_tanh_mul(&self, gate: &mut CudaBuf<D>, up: &CudaBuf<D>, len: usize) -> Result<()> {
        self.gated(
            "gelu_tanh_mul",
            self.k.gelu_tanh_mul_f32,
            gate,
            up,
            len,
            9.0,
        )
    }

    fn split_columns(
        &self,
        x: &CudaBuf<D>,
        rows: usize,
        outs: &mut [(&mut CudaBuf<D>, usize)],
    ) -> Result<()> {
        let op = "split_columns";
        if outs.is_empty() || outs.len() > 3 {
            return Err(Error::arg(format!(
                "{op}: {} parts; split_cols_f32 takes 1 to 3",
                outs.len()
            )));
        }
        let total: usize = outs.iter().map(|o| o.1).sum();
        if rows == 0 || total == 0 {
            return Ok(());
        }
        if rows > MAX_GRID_YZ {
            return Err(Error::arg(format!(
                "{op}: {rows} rows exceed the grid limit {MAX_GRID_YZ}"
            )));
        }
        check_len(op, "x", x.len, rows * total)?;
        u32_arg(op, "rows * columns", rows * total)?;
        let mut args = vec![
            KernelArg::Ptr(x.ptr),
            KernelArg::U32(u32_arg(op, "columns", total)?),
        ];
        for j in 0..3 {
            match outs.get(j) {
                Some((dst, w)) => {
                    check_len(op, "part", dst.len, rows * w)?;
                    args.push(KernelArg::Ptr(dst.ptr));
                    args.push(KernelArg::U32(*w as u32));
                }
                None => args.extend([KernelArg::Ptr(DevPtr(0)), KernelArg::U32(0)]),
            }
        }
        self.launch(
            self.k.split_cols_f32,
            (total.div_ceil(BLOCK as usize) as u32, rows as u32, 1),
            BLOCK,
            0,
            &args,
            8.0 * (rows * total) as f64,
            0.0,
        )
    }

    fn gated_act(
        &self,
        out: &mut CudaBuf<D>,
        gate_up: &mut CudaBuf<D>,
        rows: usize,
        width: usize,
        act: MlpActivation,
    ) -> Result<()> {
        let op = "gated_act";
        if rows == 0 || width == 0 {
            return Ok(());
        }
        if rows > MAX_GRID_YZ {
            return Err(Error::arg(format!(
                "{op}: {rows} rows exceed the grid limit {MAX_GRID_YZ}"
            )));
        }
        check_len(op, "gate_up", gate_up.len, rows * 2 * width)?;
        check_len(op, "out", out.len, rows * width)?;
        u32_arg(op, "rows * 2 * width", rows * 2 * width)?;
        let (kernel, flops) = match act {
            MlpActivation::Silu => (self.k.glu_silu_f32, 5.0),
            MlpActivation::GeluTanh => (self.k.glu_gelu_tanh_f32, 9.0),
        };
        self.launch(
            kernel,
            (width.div_ceil(BLOCK as usize) as u32, rows as u32, 1),
            BLOCK,
            0,
            &[
                KernelArg::Ptr(out.ptr),
                KernelArg::Ptr(gate_up.ptr),
                KernelArg::U32(width as u32),
            ],
            12.0 * (rows * width) as f64,
            flops * (rows * width) as f64,
        )
    }

    fn scale(&self, x: &mut CudaBuf<D>, s: f32, len: usize) -> Result<()> {
        let op = "scale";
        if len == 0 {
            return Ok(());
        }
        check_len(op, "x", x.len, len)?;
        self.launch(
            self.k.scale_f32,
            (grid_stride_blocks(len), 1, 1),
            BLOCK,
            0,
            &[
                KernelArg::Ptr(x.ptr),
                KernelArg::F32(s),
                KernelArg::U32(u32_arg(op, "len", len)?),
            ],
            8.0 * len as f64,
            len as f64,
        )
    }

    fn add(&self, x: &mut CudaBuf<D>, y: &CudaBuf<D>, len: usize) -> Result<()> {
        let op = "add";
        if len == 0 {
            return Ok(());
        }
        check_len(op, "x", x.len, len)?;
        check_len(op, "y", y.len, len)?;
        self.launch(
            self.k.add_f32,
            (grid_stride_blocks(len), 1, 1),
            BLOCK,
            0,
            &[
                KernelArg::Ptr(x.ptr),
                KernelArg::Ptr(y.ptr),
                KernelArg::U32(u32_arg(op, "len", len)?),
            ],
            12.0 * len as f64,
            len as f64,
        )
    }

    fn copy_rows(
        &self,
        dst: &mut CudaBuf<D>,
        src: &CudaBuf<D>,
        src_row: usize,
        rows: usize,
        width: usize,
    ) -> Result<()> {
        let op = "copy_rows";
        let n = rows * width;
        if n == 0 {
            return Ok(());
        }
        check_len(op, "src", src.len.saturating_sub(src_row * width), n)?;
        check_len(op, "dst", dst.len, n)?;
        self.launch(
            self.k.copy_f32,
            (grid_stride_blocks(n), 1, 1),
            BLOCK,
            0,
            &[
                KernelArg::Ptr(dst.ptr),
                KernelArg::Ptr(src.ptr.offset(src_row * width * 4)),
                KernelArg::U32(u32_arg(op, "rows * width", n)?),
            ],
            8.0 * n as f64,
            0.0,
        )
    }

    fn read(&self, buf: &CudaBuf<D>, offset: usize, out: &mut [f32]) -> Result<()> {
        check_len("read", "buffer", buf.len.saturating_sub(offset), out.len())?;
        self.before_device_op()?;
        if out.is_empty() {
            return Ok(());
        }
        // copy_to_host waits for the queued kernels that write `buf`
        self.drv
            .copy_to_host(bytemuck::cast_slice_mut(out), buf.ptr.offset(offset * 4))
    }

    fn argmax(&self, buf: &CudaBuf<D>, offset: usize, len: usize) -> Result<u32> {
        let op = "argmax";
        if len == 0 {
            return Err(Error::arg(format!("{op}: empty range")));
        }
        check_len(op, "buffer", buf.len.saturating_sub(offset), len)?;
        let len32 = u32_arg(op, "len", len)?;
        if len32 >= 1 << 31 {
            return Err(Error::arg(format!("{op}: {len} values exceed 2^31")));
        }
        let mut s = lock(&self.scratch);
        let res = self.grow(&mut s.argmax, 8)?;
        self.before_device_op()?;
        // the kernel folds (value, index) keys into *res with red.max: start from 0
        self.drv.memset_zero(res, 8)?;
        self.launch(
            self.k.argmax_f32,
            (len.div_ceil(1024).min(1024) as u32, 1, 1),
            256,
            0,
            &[
                KernelArg::Ptr(buf.ptr.offset(offset * 4)),
                KernelArg::U32(len32),
                KernelArg::Ptr(res),
            ],
            4.0 * len as f64,
            len as f64,
        )?;
        let mut key = [0u8; 8];
        self.drv.copy_to_host(&mut key, res)?;
        let id = u32::MAX - (u64::from_le_bytes(key) as u32);
        if id as usize >= len {
            return Err(Error::Device(format!("{op}: all {len} values are NaN")));
        }
        Ok(id)
    }

    fn repeated_step(&self, f: &mut (dyn FnMut() -> Result<()> + Send)) -> Result<()> {
        {
            let mut g = lock(&self.graphs);
            // Profiling times each launch (events around it), which a graph cannot hold.
            if !g.enabled || lock(&self.tally).is_some() || g.queue.is_some() {
                drop(g);
                return f();
            }
            g.queue = Some(Vec::new());
        }
        let r = f();
        let queued = lock(&self.graphs).queue.take();
        match (r, queued) {
            (Ok(()), Some(q)) => self.finish_step(q),
            (Ok(()), None) => {
                // the step turned eager part-way (a copy or an allocation among its launches)
                let mut g = lock(&self.graphs);
                g.stats.bump(|s| s.eager_steps += 1);
                g.candidate = None;
                Ok(())
            }
            (Err(e), q) => {
                // what eager launches would have done before the error
                let _ = self.issue(&q.unwrap_or_default());
                Err(e)
            }
        }
    }

    fn take_profile(&self) -> Vec<OpProfile> {
        let tally = match lock(&self.tally).as_mut() {
            Some(t) => std::mem::take(t),
            None => return Vec::new(),
        };
        let counters: BTreeMap<String, KernelCounters> = self
            .drv
            .take_counters()
            .into_iter()
            .map(|c| (c.kernel.clone(), c))
            .collect();
        tally
            .into_iter()
            .map(|(name, t)| {
                let c = counters.get(name);
                // The interpreter counts what the hardware would do; a real driver reports time only.
                let extra = match c {
                    Some(c) if c.warp_instructions > 0 => vec![
                        ("warp_instr", c.warp_instructions as f64),
                        ("global_ld_B", c.global_load_bytes as f64),
                        ("global_st_B", c.global_store_bytes as f64),
                        (
                            "shared_B",
                            (c.shared_load_bytes + c.shared_store_bytes) as f64,
                        ),
                        (
                            "sectors/ideal",
                            c.global_sectors as f64 / (c.global_sectors_ideal.max(1)) as f64,
                        ),
                        ("bank_conflicts", c.bank_conflicts as f64),
                    ],
                    _ => Vec::new(),
                };
                OpProfile {
                    op: name.to_string(),
                    calls: t.calls,
                    seconds: c.map_or(0.0, |c| c.seconds),
                    bytes: t.bytes,
                    flops: t.flops,
                    extra,
                }
            })
            .collect()
    }
}

/// The length of a 1-D f32 norm weight.
fn norm_weight<D: GpuDriver>(op: &str, w: &CudaMat<D>) -> Result<usize> {
    match (w.dtype, &w.shape[..]) {
        (DType::F32, &[n]) if n > 0 => Ok(n),
        _ => Err(Error::arg(format!(
            "{op}: weight {:?} must be a non-empty 1-D vector, is {:?} {}",
            w.name, w.shape, w.dtype
        ))),
    }
}

/// How a block-quantized dtype sits on the device (kernels/matvec_q.ptx): weights per block,
/// body bytes (quants) and head bytes (scales) per block, and where the head lies inside the
/// stored block. `head == 0` with `body` the whole block: kept as stored (Q4_K).
#[derive(Clone, Copy, Debug)]
pub(crate) struct QuantLayout {
    pub elems: usize,
    pub body: usize,
    pub head: usize,
    /// Offset of the head bytes inside a stored block.
    pub head_at: usize,
}

/// The device layout of `d`, or None for a dtype without GPU kernels (plain types, Q5_K).
pub(crate) fn quant_layout(d: DType) -> Option<QuantLayout> {
    let l = |elems, body, head, head_at| {
        Some(QuantLayout {
            elems,
            body,
            head,
            head_at,
        })
    };
    match d {
        DType::Q8_0 => l(32, 32, 2, 0),
        DType::Q4_0 => l(32, 16, 2, 0),
        DType::Q4_1 => l(32, 16, 4, 0),
        DType::Q4K => l(256, 144, 0, 0),
        DType::Q6K => l(256, 208, 2, 208),
        _ => None,
    }
}

/// A quantized matrix's bytes in the device layout (see [`CudaMat`]): every block's body, then
/// every block's head. Returns the bytes and the head section's byte offset.
fn split_blocks(w: &WeightTensor) -> Result<(Vec<u8>, usize)> {
    let ql = quant_layout(w.dtype).ok_or_else(|| Error::UnsupportedDtype {
        name: w.name.clone(),
        dtype: w.dtype.to_string(),
    })?;
    let stored = ql.body + ql.head;
    let bytes = w.bytes();
    let k = w.shape.last().copied().unwrap_or(0);
    if !k.is_multiple_of(ql.elems) || w.dtype.bytes_for(w.numel()) != Some(bytes.len()) {
        return Err(Error::bad_weights(
            w.name.as_str(),
            format!(
                "{} rows of {k} weights are not whole {}-weight blocks of {stored} bytes",
                w.dtype, ql.elems
            ),
        ));
    }
    if ql.head == 0 {
        return Ok((bytes.to_vec(), 0));
    }
    let blocks = bytes.len() / stored;
    let mut out = vec![0u8; bytes.len()];
    let (body, head) = out.split_at_mut(blocks * ql.body);
    for (i, b) in bytes.chunks_exact(stored).enumerate() {
        let h = &b[ql.head_at..ql.head_at + ql.head];
        let q = if ql.head_at == 0 {
            &b[ql.head..]
        } else {
            &b[..ql.head_at]
        };
        body[i * ql.body..(i + 1) * ql.body].copy_from_slice(q);
        head[i * ql.head..(i + 1) * ql.head].copy_from_slice(h);
    }
    Ok((out, blocks * ql.body))
}
