//! The real-GPU [`GpuDriver`]: the CUDA driver API through cudarc, loaded at run time.
//!
//! Only libcuda (the NVIDIA driver) is needed: modules are PTX text that the driver compiles
//! for the GPU at load time (PTX ISA 8.0, `.target sm_80`, so any CUDA 12 driver and any GPU
//! from Ampere on). No nvcc, no NVRTC, no CUDA runtime.
//!
//! cudarc panics on first use when libcuda is missing, and even formatting its error type
//! calls into libcuda, so [`device_count`] probes for the library first, and every error is
//! formatted from the plain `CUresult` code, never through cudarc's `Display`.
//!
//! All work goes to one stream owned by the driver. CUDA graphs by stream capture
//! (`cuStreamBeginCapture` in thread-local mode, `cuStreamEndCapture`, `cuGraphInstantiate`,
//! `cuGraphLaunch`): written against the driver API's documentation and compiled, **not yet
//! run on a GPU** (the interpreter's graphs, sim.rs, are what the tests exercise). Not here:
//! multiple streams, raising the dynamic shared-memory limit (no kernel needs more than 48 KB).

use std::collections::BTreeMap;
use std::ffi::{c_void, CString};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use cudarc::driver::result;
use cudarc::driver::sys;

use super::driver::{
    DevPtr, FuncId, GpuDriver, GraphId, KernelArg, KernelCounters, LaunchConfig, ModuleId,
};
use crate::error::{Error, Result};

fn err(what: &str) -> impl Fn(result::DriverError) -> Error + '_ {
    // Debug of the CUresult enum is plain Rust; cudarc's Display would call cuGetErrorString.
    move |e| Error::Device(format!("{what}: {:?}", e.0))
}

/// Number of CUDA devices, or why there are none usable. Never panics: the driver library is
/// probed before any cudarc call.
pub fn device_count() -> Result<usize> {
    // SAFETY: is_culib_present only tries to dlopen libcuda by its usual names and drops the
    // handle; it runs no CUDA code.
    if !unsafe { sys::is_culib_present() } {
        return Err(Error::Device(
            "no NVIDIA driver found (libcuda.so could not be loaded)".into(),
        ));
    }
    result::init().map_err(err("cuInit"))?;
    let n = result::device::get_count().map_err(err("cuDeviceGetCount"))?;
    Ok(n.max(0) as usize)
}

struct Timed {
    func: usize,
    start: sys::CUevent,
    end: sys::CUevent,
}

/// One GPU, its primary context, one stream.
pub struct CudarcDriver {
    ordinal: usize,
    dev: sys::CUdevice,
    ctx: sys::CUcontext,
    stream: sys::CUstream,
    name: String,
    total_memory: u64,
    cc: (u32, u32),
    modules: Mutex<Vec<sys::CUmodule>>,
    funcs: Mutex<Vec<(sys::CUfunction, String)>>,
    profiling: AtomicBool,
    timed: Mutex<Vec<Timed>>,
    /// Instantiated graphs; None once freed.
    graphs: Mutex<Vec<Option<GraphExec>>>,
}

/// An instantiated graph handle (`CUgraphExec`).
struct GraphExec(sys::CUgraphExec);

// SAFETY: the raw handles (context, stream, modules, functions, events) are plain identifiers
// that the CUDA driver lets any thread use once the context is current on that thread; every
// method makes it current first (`bind`), and the mutable bookkeeping sits behind mutexes.
unsafe impl Send for CudarcDriver {}
// SAFETY: as above; the driver API itself is thread-safe.
unsafe impl Sync for CudarcDriver {}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl CudarcDriver {
    /// Open device `ordinal`. Errors (never panics) when there is no driver or no such device.
    pub fn new(ordinal: usize) -> Result<CudarcDriver> {
        let count = device_count()?;
        if ordinal >= count {
            return Err(Error::Device(format!(
                "cuda:{ordinal} requested, {count} CUDA device(s) present"
            )));
        }
        let dev = result::device::get(ordinal as i32).map_err(err("cuDeviceGet"))?;
        // SAFETY: `dev` was just returned by cuDeviceGet.
        let ctx =
            unsafe { result::primary_ctx::retain(dev) }.map_err(err("cuDevicePrimaryCtxRetain"))?;
        // SAFETY: `ctx` is the live primary context retained above.
        unsafe { result::ctx::set_current(ctx) }.map_err(err("cuCtxSetCurrent"))?;
        let stream = result::stream::create(result::stream::StreamKind::NonBlocking)
            .map_err(err("cuStreamCreate"))?;
        let name = result::device::get_name(dev).map_err(err("cuDeviceGetName"))?;
        // SAFETY: `dev` is valid (above).
        let total = unsafe { result::device::total_mem(dev) }.map_err(err("cuDeviceTotalMem"))?;
        let attr = |a| {
            // SAFETY: `dev` is valid (above); the attribute ids are cudarc's enum values.
            unsafe { result::device::get_attribute(dev, a) }.map_err(err("cuDeviceGetAttribute"))
        };
        let major = attr(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?;
        let minor = attr(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?;
        if major < 8 {
            return Err(Error::Device(format!(
                "{name} is sm_{major}{minor}; minfer's kernels use bf16 tensor-core instructions of sm_80 (Ampere) and later"
            )));
        }
        Ok(CudarcDriver {
            ordinal,
            dev,
            ctx,
            stream,
            name,
            total_memory: total as u64,
            cc: (major as u32, minor as u32),
            modules: Mutex::new(Vec::new()),
            funcs: Mutex::new(Vec::new()),
            profiling: AtomicBool::new(false),
            timed: Mutex::new(Vec::new()),
            graphs: Mutex::new(Vec::new()),
        })
    }

    pub fn ordinal(&self) -> usize {
        self.ordinal
    }

    fn bind(&self) -> Result<()> {
        // SAFETY: self.ctx stays retained until Drop.
        unsafe { result::ctx::set_current(self.ctx) }.map_err(err("cuCtxSetCurrent"))
    }
}

impl GpuDriver for CudarcDriver {
    fn name(&self) -> String {
        format!("{} (sm_{}{})", self.name, self.cc.0, self.cc.1)
    }

    fn total_memory(&self) -> u64 {
        self.total_memory
    }

    fn compute_capability(&self) -> (u32, u32) {
        self.cc
    }

    fn load_module(&self, name: &str, ptx: &str) -> Result<ModuleId> {
        self.bind()?;
        let text = CString::new(ptx)
            .map_err(|_| Error::Device(format!("{name}: PTX text contains a NUL byte")))?;
        let m = match load_ptx_with_log(&text) {
            Ok(m) => m,
            Err((code, jit_log)) => {
                // A cubin assembled ahead of time with ptxas (scripts/gpu-check.sh --prepare
                // puts them in gpu-bin/cubin) lets a check run on a driver whose JIT refuses
                // the PTX, and the JIT's own log says why it refused.
                let cubin = std::env::var_os("MINFER_CUBIN_DIR").map(|d| {
                    let stem = name.trim_end_matches(".ptx");
                    std::path::Path::new(&d)
                        .join(format!("{stem}.sm_{}{}.cubin", self.cc.0, self.cc.1))
                });
                match cubin.as_deref().map(std::fs::read) {
                    Some(Ok(bytes)) => {
                        // SAFETY: `bytes` is a whole cubin file that outlives the call.
                        unsafe { result::module::load_data(bytes.as_ptr() as *const c_void) }
                            .map_err(|e| {
                                Error::Device(format!(
                                    "loading {name}: the JIT failed ({code:?}: {jit_log}) and so did the cubin fallback ({:?})",
                                    e.0
                                ))
                            })?
                    }
                    _ => {
                        return Err(Error::Device(format!(
                            "loading {name}: {code:?} (the driver must support PTX ISA 8.0: CUDA 12 or newer); JIT log: {jit_log}"
                        )))
                    }
                }
            }
        };
        let mut mods = lock(&self.modules);
        mods.push(m);
        Ok(ModuleId(mods.len() - 1))
    }

    fn function(&self, module: ModuleId, entry: &str) -> Result<FuncId> {
        self.bind()?;
        let m = *lock(&self.modules).get(module.0).ok_or_else(|| {
            Error::Device(format!("function {entry}: unknown module {}", module.0))
        })?;
        let cname = CString::new(entry)
            .map_err(|_| Error::Device(format!("kernel name {entry:?} contains a NUL")))?;
        // SAFETY: `m` is a module loaded above and not unloaded before Drop.
        let f = unsafe { result::module::get_function(m, cname) }.map_err(err(entry))?;
        let mut funcs = lock(&self.funcs);
        funcs.push((f, entry.to_string()));
        Ok(FuncId(funcs.len() - 1))
    }

    fn alloc(&self, bytes: usize) -> Result<DevPtr> {
        self.bind()?;
        // SAFETY: plain allocation; the memory is uninitialised and only ever accessed as bytes.
        let p = unsafe { result::malloc_sync(bytes.max(1)) }.map_err(|e| {
            Error::Device(format!("allocating {bytes} B of device memory: {:?}", e.0))
        })?;
        Ok(DevPtr(p))
    }

    fn free(&self, ptr: DevPtr) -> Result<()> {
        self.bind()?;
        // Queued kernels may still use the memory; cuMemFree does not wait for this stream.
        // SAFETY: the stream is live until Drop.
        unsafe { result::stream::synchronize(self.stream) }.map_err(err("cuStreamSynchronize"))?;
        // SAFETY: `ptr` came from `alloc` (callers free each pointer once).
        unsafe { result::free_sync(ptr.0) }.map_err(err("cuMemFree"))
    }

    fn copy_to_device(&self, dst: DevPtr, src: &[u8]) -> Result<()> {
        if src.is_empty() {
            return Ok(());
        }
        self.bind()?;
        // SAFETY: `src` is borrowed for the whole call and the stream is synchronised before
        // returning, so the asynchronous copy never outlives it; dst..dst+len lies in an
        // allocation (the backend checks lengths).
        unsafe {
            result::memcpy_htod_async(dst.0, src, self.stream).map_err(err("cuMemcpyHtoDAsync"))?;
            result::stream::synchronize(self.stream).map_err(err("cuStreamSynchronize"))
        }
    }

    fn copy_to_host(&self, dst: &mut [u8], src: DevPtr) -> Result<()> {
        if dst.is_empty() {
            return Ok(());
        }
        self.bind()?;
        // SAFETY: as for copy_to_device; the stream order makes the copy wait for the kernels
        // queued before it.
        unsafe {
            result::memcpy_dtoh_async(dst, src.0, self.stream).map_err(err("cuMemcpyDtoHAsync"))?;
            result::stream::synchronize(self.stream).map_err(err("cuStreamSynchronize"))
        }
    }

    fn memset_zero(&self, dst: DevPtr, bytes: usize) -> Result<()> {
        if bytes == 0 {
            return Ok(());
        }
        self.bind()?;
        // SAFETY: dst..dst+bytes lies in one allocation (the backend allocates exactly that).
        unsafe { result::memset_d8_async(dst.0, 0, bytes, self.stream) }
            .map_err(err("cuMemsetD8Async"))
    }

    fn launch(&self, f: FuncId, cfg: LaunchConfig, args: &[KernelArg]) -> Result<()> {
        self.bind()?;
        let func = lock(&self.funcs)
            .get(f.0)
            .map(|(func, _)| *func)
            .ok_or_else(|| Error::Device(format!("launch: unknown function {}", f.0)))?;
        // Each parameter lives in its own 8-byte slot; the driver reads as many bytes as the
        // .param declares, from the slot's start: a u32 / f32 zero-extended to 64 bits reads
        // back as itself on a little-endian host.
        let mut slots: Vec<u64> = args
            .iter()
            .map(|a| match *a {
                KernelArg::Ptr(p) => p.0,
                KernelArg::U32(v) => v as u64,
                KernelArg::I32(v) => v as u32 as u64,
                KernelArg::U64(v) => v,
                KernelArg::F32(v) => v.to_bits() as u64,
            })
            .collect();
        let mut params: Vec<*mut c_void> = slots
            .iter_mut()
            .map(|s| s as *mut u64 as *mut c_void)
            .collect();
        let timing = self.profiling.load(Ordering::Relaxed);
        let events = if timing {
            let flags = sys::CUevent_flags::CU_EVENT_DEFAULT;
            let start = result::event::create(flags).map_err(err("cuEventCreate"))?;
            let end = result::event::create(flags).map_err(err("cuEventCreate"))?;
            // SAFETY: fresh event, live stream.
            unsafe { result::event::record(start, self.stream) }.map_err(err("cuEventRecord"))?;
            Some((start, end))
        } else {
            None
        };
        // SAFETY: `func` is a live function handle; `params` holds one pointer per .param of the
        // entry, in order (the backend builds `args` from the kernel header's parameter list)
        // and `slots` outlives the call, which copies the values; grid/block/shared come from
        // the backend's checked launch shapes.
        unsafe {
            result::launch_kernel(
                func,
                cfg.grid,
                cfg.block,
                cfg.shared_bytes,
                self.stream,
                &mut params,
            )
        }
        .map_err(|e| {
            let name = lock(&self.funcs)
                .get(f.0)
                .map(|x| x.1.clone())
                .unwrap_or_default();
            Error::Device(format!("launching {name} with {cfg:?}: {:?}", e.0))
        })?;
        if let Some((start, end)) = events {
            // SAFETY: live event and stream.
            unsafe { result::event::record(end, self.stream) }.map_err(err("cuEventRecord"))?;
            lock(&self.timed).push(Timed {
                func: f.0,
                start,
                end,
            });
        }
        Ok(())
    }

    fn synchronize(&self) -> Result<()> {
        self.bind()?;
        // SAFETY: live stream.
        unsafe { result::stream::synchronize(self.stream) }.map_err(err("cuStreamSynchronize"))
    }

    fn begin_capture(&self) -> Result<()> {
        self.bind()?;
        // Thread-local mode: only this thread's potentially unsafe calls (allocations,
        // synchronous copies) would invalidate the capture, and the backend issues nothing
        // but launches until end_capture.
        let mode = sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL;
        // SAFETY: live stream, not already capturing (the backend captures one step at a time).
        unsafe { result::stream::begin_capture(self.stream, mode) }
            .map_err(err("cuStreamBeginCapture"))
    }

    fn end_capture(&self) -> Result<GraphId> {
        self.bind()?;
        // SAFETY: the stream is capturing (begin_capture above, same thread).
        let graph = unsafe { result::stream::end_capture(self.stream) }
            .map_err(err("cuStreamEndCapture"))?;
        if graph.is_null() {
            return Err(Error::Device(
                "cuStreamEndCapture: the capture was invalidated".into(),
            ));
        }
        // SAFETY: `graph` was just returned by cuStreamEndCapture; the executable graph keeps
        // its own copy of the nodes, so the graph is destroyed right after instantiation.
        let exec = unsafe {
            let exec = result::graph::instantiate(graph, sys::CUgraphInstantiate_flags(0));
            let _ = result::graph::destroy(graph);
            exec
        }
        .map_err(err("cuGraphInstantiateWithFlags"))?;
        let mut graphs = lock(&self.graphs);
        graphs.push(Some(GraphExec(exec)));
        Ok(GraphId(graphs.len() - 1))
    }

    fn launch_graph(&self, graph: GraphId) -> Result<()> {
        self.bind()?;
        let graphs = lock(&self.graphs);
        let exec = graphs
            .get(graph.0)
            .and_then(|g| g.as_ref())
            .ok_or_else(|| Error::Device(format!("launch_graph: unknown graph {}", graph.0)))?;
        // SAFETY: a live executable graph (freed only by free_graph, which removes it from the
        // list) and the driver's live stream.
        unsafe { result::graph::launch(exec.0, self.stream) }.map_err(err("cuGraphLaunch"))
    }

    fn free_graph(&self, graph: GraphId) -> Result<()> {
        self.bind()?;
        let exec = lock(&self.graphs)
            .get_mut(graph.0)
            .and_then(|g| g.take())
            .ok_or_else(|| Error::Device(format!("free_graph: unknown graph {}", graph.0)))?;
        // SAFETY: taken out of the list above, so destroyed exactly once; launches of it that
        // are still queued keep running (the driver defers the release).
        unsafe { result::graph::exec_destroy(exec.0) }.map_err(err("cuGraphExecDestroy"))
    }

    fn set_profiling(&self, on: bool) {
        self.profiling.store(on, Ordering::Relaxed);
    }

    fn take_counters(&self) -> Vec<KernelCounters> {
        if self.synchronize().is_err() {
            return Vec::new();
        }
        let timed = std::mem::take(&mut *lock(&self.timed));
        let funcs = lock(&self.funcs);
        let mut by_name: BTreeMap<String, KernelCounters> = BTreeMap::new();
        for t in timed {
            // SAFETY: both events were recorded on our stream, which is synchronised above.
            let ms = unsafe { result::event::elapsed(t.start, t.end) }.unwrap_or(0.0);
            // SAFETY: events created in `launch`, destroyed exactly once here.
            unsafe {
                let _ = result::event::destroy(t.start);
                let _ = result::event::destroy(t.end);
            }
            let name = funcs.get(t.func).map(|x| x.1.clone()).unwrap_or_default();
            let c = by_name
                .entry(name.clone())
                .or_insert_with(|| KernelCounters {
                    kernel: name,
                    ..Default::default()
                });
            c.launches += 1;
            c.seconds += ms as f64 / 1e3;
        }
        by_name.into_values().collect()
    }
}

/// `cuModuleLoadDataEx` with the JIT's error log captured: on failure, the result code and the
/// log text (ptxas-style messages naming the line), which `cuModuleLoadData` throws away.
fn load_ptx_with_log(
    text: &CString,
) -> std::result::Result<sys::CUmodule, (sys::CUresult, String)> {
    let mut log = vec![0u8; 16 * 1024];
    let mut opts = [
        sys::CUjit_option::CU_JIT_ERROR_LOG_BUFFER,
        sys::CUjit_option::CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES,
    ];
    // The size option's value is passed in the pointer itself, as the driver API specifies.
    let mut vals: [*mut c_void; 2] = [log.as_mut_ptr() as *mut c_void, log.len() as *mut c_void];
    let mut m = std::mem::MaybeUninit::<sys::CUmodule>::uninit();
    // SAFETY: `text` is a NUL-terminated PTX image, `log` a writable buffer of the size given,
    // both outliving the call; `opts` and `vals` have the 2 entries announced.
    let r = unsafe {
        sys::cuModuleLoadDataEx(
            m.as_mut_ptr(),
            text.as_ptr() as *const c_void,
            opts.len() as u32,
            opts.as_mut_ptr(),
            vals.as_mut_ptr(),
        )
    };
    if r == sys::CUresult::CUDA_SUCCESS {
        // SAFETY: the call succeeded, so it wrote the module handle.
        Ok(unsafe { m.assume_init() })
    } else {
        let n = log.iter().position(|&b| b == 0).unwrap_or(log.len());
        let text = String::from_utf8_lossy(&log[..n]).trim().to_string();
        Err((
            r,
            if text.is_empty() {
                "(empty)".into()
            } else {
                text
            },
        ))
    }
}

impl Drop for CudarcDriver {
    fn drop(&mut self) {
        if self.bind().is_err() {
            return;
        }
        // SAFETY: every handle below was created by this driver and is released exactly once;
        // the stream is drained first so no kernel still runs from an unloaded module.
        unsafe {
            let _ = result::stream::synchronize(self.stream);
            for t in std::mem::take(&mut *lock(&self.timed)) {
                let _ = result::event::destroy(t.start);
                let _ = result::event::destroy(t.end);
            }
            for g in std::mem::take(&mut *lock(&self.graphs))
                .into_iter()
                .flatten()
            {
                let _ = result::graph::exec_destroy(g.0);
            }
            for m in std::mem::take(&mut *lock(&self.modules)) {
                let _ = result::module::unload(m);
            }
            let _ = result::stream::destroy(self.stream);
            let _ = result::primary_ctx::release(self.dev);
        }
    }
}
