//! The GpuDriver seam: everything the CUDA backend asks of a GPU.
//!
//! Two implementations: the real driver through cudarc (`cudarc_driver.rs`, feature `cuda`) and
//! the PTX interpreter (`sim.rs`, over the `ptx-sim` crate), which runs the very same PTX and launch code on the CPU with
//! sanitizer-style checks. The CUDA backend's host code is written once against this trait.
//!
//! Device memory is addressed by plain 64-bit device addresses ([`DevPtr`]), so host code can
//! offset into an allocation (`ptr + bytes`) exactly as CUDA code does.

use crate::error::{Error, Result};

/// A device address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct DevPtr(pub u64);

impl DevPtr {
    pub fn offset(self, bytes: usize) -> DevPtr {
        DevPtr(self.0 + bytes as u64)
    }
}

/// A loaded module (one .ptx file).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ModuleId(pub usize);

/// A kernel entry point in a loaded module.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FuncId(pub usize);

/// One kernel argument, in the order of the `.entry`'s `.param` list.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum KernelArg {
    Ptr(DevPtr),
    U32(u32),
    I32(i32),
    U64(u64),
    F32(f32),
}

/// A captured and instantiated sequence of launches (a CUDA graph), replayed by
/// [`GpuDriver::launch_graph`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GraphId(pub usize);

/// Grid and block dimensions and dynamic shared memory of one launch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LaunchConfig {
    pub grid: (u32, u32, u32),
    pub block: (u32, u32, u32),
    pub shared_bytes: u32,
}

/// Per-launch counters the interpreter gathers (the real driver reports only time).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct KernelCounters {
    pub kernel: String,
    pub launches: u64,
    /// Warp-level instructions issued.
    pub warp_instructions: u64,
    pub global_load_bytes: u64,
    pub global_store_bytes: u64,
    pub shared_load_bytes: u64,
    pub shared_store_bytes: u64,
    pub local_bytes: u64,
    /// 32-byte sectors touched by global warp accesses, and the minimum those accesses could
    /// have touched (bytes / 32, rounded up per access): their ratio shows uncoalesced access.
    pub global_sectors: u64,
    pub global_sectors_ideal: u64,
    /// Extra shared-memory wavefronts caused by bank conflicts.
    pub bank_conflicts: u64,
    /// Warp-level global load instructions with at least one active lane.
    pub global_load_requests: u64,
    /// Distinct 32-byte global sectors per launch × 32, summed: DRAM bytes if the caches keep
    /// each launch's footprint (the performance model's byte count).
    pub footprint_bytes: u64,
    /// CTAs run, threads and shared bytes (static + dynamic) per CTA (largest over the launches).
    pub ctas: u64,
    pub threads_per_cta: u64,
    pub shared_per_cta: u64,
    /// Wall time, seconds (real device: CUDA events; interpreter: host time).
    pub seconds: f64,
}

pub trait GpuDriver: Send + Sync {
    /// "NVIDIA H200 (sm_90)", "ptx interpreter".
    fn name(&self) -> String;
    /// Device memory in bytes.
    fn total_memory(&self) -> u64;
    /// Compute capability (major, minor); the interpreter reports what it emulates.
    fn compute_capability(&self) -> (u32, u32);

    /// Load one PTX module; `name` is used in error messages (the .ptx file name).
    fn load_module(&self, name: &str, ptx: &str) -> Result<ModuleId>;
    fn function(&self, module: ModuleId, entry: &str) -> Result<FuncId>;

    fn alloc(&self, bytes: usize) -> Result<DevPtr>;
    fn free(&self, ptr: DevPtr) -> Result<()>;
    fn copy_to_device(&self, dst: DevPtr, src: &[u8]) -> Result<()>;
    fn copy_to_host(&self, dst: &mut [u8], src: DevPtr) -> Result<()>;
    fn memset_zero(&self, dst: DevPtr, bytes: usize) -> Result<()>;

    /// Launch asynchronously on the driver's one stream.
    fn launch(&self, f: FuncId, cfg: LaunchConfig, args: &[KernelArg]) -> Result<()>;
    fn synchronize(&self) -> Result<()>;

    /// Start capturing the stream: launches from here to [`GpuDriver::end_capture`] are
    /// recorded with their arguments as given, not run. Nothing but launches may be issued
    /// meanwhile (no copy, allocation, free or wait: CUDA would invalidate the capture; the
    /// interpreter refuses them).
    fn begin_capture(&self) -> Result<()> {
        Err(Error::Device(format!("{}: no graph capture", self.name())))
    }
    /// Stop capturing and instantiate what was recorded.
    fn end_capture(&self) -> Result<GraphId> {
        Err(Error::Device(format!("{}: no graph capture", self.name())))
    }
    /// Run a captured graph on the stream, after the work queued before it (asynchronously,
    /// like a launch): every recorded launch, in order, with its recorded arguments.
    fn launch_graph(&self, _graph: GraphId) -> Result<()> {
        Err(Error::Device(format!("{}: no graph capture", self.name())))
    }
    /// Release a graph.
    fn free_graph(&self, _graph: GraphId) -> Result<()> {
        Ok(())
    }

    /// Turn per-kernel counters/timing on or off (off by default: timing costs syncs).
    fn set_profiling(&self, _on: bool) {}
    /// Counters per kernel name since the last call, when profiling is on.
    fn take_counters(&self) -> Vec<KernelCounters> {
        Vec::new()
    }
}
