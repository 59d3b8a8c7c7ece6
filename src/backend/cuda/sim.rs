//! The PTX interpreter behind the [`GpuDriver`] seam (`--device sim`): a thin adapter over the
//! `ptx-sim` crate, which runs the very same PTX and launch code as a real GPU on the CPU, with
//! sanitizer-style checks (out-of-bounds, uninitialised and misaligned accesses, shared-memory
//! races, divergent barriers, bad warp collectives) and per-kernel counters. What it supports
//! and checks is documented in crates/ptx-sim/README.md.
//!
//! This file only translates: handles and arguments one to one, and `ptx_sim::Error` to
//! [`Error::Ptx`] (the kernel or its PTX is at fault) or [`Error::Device`] (the host side is),
//! keeping the interpreter's message, which names the culprit.

use std::sync::{Mutex, MutexGuard};

use super::driver::{
    DevPtr, FuncId, GpuDriver, GraphId, KernelArg, KernelCounters, LaunchConfig, ModuleId,
};
use crate::error::{Error, Result};

pub use ptx_sim::{LOCAL_WINDOW, MAX_SHARED, SHARED_WINDOW};

/// The PTX interpreter device. Cheap to create; all state lives behind one lock, and launches
/// run to completion inside `launch` (so `synchronize` has nothing to wait for).
///
/// Graphs: between `begin_capture` and `end_capture` launches are recorded (arguments by
/// value, as CUDA's stream capture records kernel nodes) and not run; `launch_graph` runs the
/// recording. Any other device operation during a capture is an error, as the rules of CUDA
/// stream capture make it one, so host code that would break a real capture fails here.
pub struct SimDriver {
    dev: Mutex<ptx_sim::Device>,
    graphs: Mutex<SimGraphs>,
}

type Recorded = Vec<(FuncId, LaunchConfig, Vec<KernelArg>)>;

#[derive(Default)]
struct SimGraphs {
    capturing: Option<Recorded>,
    graphs: Vec<Option<Recorded>>,
    /// Launches run from graphs, for tests.
    replayed: u64,
}

impl Default for SimDriver {
    fn default() -> Self {
        Self::new()
    }
}

fn map_err(e: ptx_sim::Error) -> Error {
    if e.is_host_side() {
        Error::Device(e.to_string())
    } else {
        Error::Ptx(e.to_string())
    }
}

impl SimDriver {
    pub fn new() -> SimDriver {
        SimDriver {
            dev: Mutex::new(ptx_sim::Device::new()),
            graphs: Mutex::new(SimGraphs::default()),
        }
    }

    fn graphs(&self) -> MutexGuard<'_, SimGraphs> {
        self.graphs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An error if a capture is in progress: `what` would invalidate it on a GPU.
    fn not_capturing(&self, what: &str) -> Result<()> {
        match self.graphs().capturing {
            Some(_) => Err(Error::Device(format!(
                "{what} during a graph capture (only launches may be captured)"
            ))),
            None => Ok(()),
        }
    }

    /// Launches run from graphs so far.
    pub fn graph_launches_replayed(&self) -> u64 {
        self.graphs().replayed
    }

    fn run(&self, f: FuncId, cfg: LaunchConfig, args: &[KernelArg]) -> Result<()> {
        let args: Vec<ptx_sim::KernelArg> = args
            .iter()
            .map(|a| match *a {
                KernelArg::Ptr(p) => ptx_sim::KernelArg::Ptr(ptx_sim::DevPtr(p.0)),
                KernelArg::U32(v) => ptx_sim::KernelArg::U32(v),
                KernelArg::I32(v) => ptx_sim::KernelArg::I32(v),
                KernelArg::U64(v) => ptx_sim::KernelArg::U64(v),
                KernelArg::F32(v) => ptx_sim::KernelArg::F32(v),
            })
            .collect();
        let cfg = ptx_sim::LaunchConfig {
            grid: cfg.grid,
            block: cfg.block,
            shared_bytes: cfg.shared_bytes,
        };
        self.lock()?
            .launch(ptx_sim::FuncId(f.0), cfg, &args)
            .map_err(map_err)
    }

    fn lock(&self) -> Result<MutexGuard<'_, ptx_sim::Device>> {
        self.dev
            .lock()
            .map_err(|_| Error::Device("ptx interpreter state poisoned by an earlier panic".into()))
    }

    /// Warp instructions one CTA may execute before the launch fails as hung (a spin-wait on a
    /// flag no thread will set, a barrier some threads never reach while others loop).
    pub fn set_step_limit(&self, warp_instructions: u64) {
        if let Ok(mut d) = self.dev.lock() {
            d.set_step_limit(warp_instructions);
        }
    }

    /// Bytes of device memory currently allocated (for leak checks in tests).
    pub fn bytes_allocated(&self) -> u64 {
        self.lock().map(|d| d.bytes_allocated()).unwrap_or(0)
    }
}

impl GpuDriver for SimDriver {
    fn name(&self) -> String {
        "ptx interpreter".to_string()
    }

    fn total_memory(&self) -> u64 {
        self.lock().map(|d| d.total_memory()).unwrap_or(0)
    }

    fn compute_capability(&self) -> (u32, u32) {
        self.lock()
            .map(|d| d.compute_capability())
            .unwrap_or((9, 0))
    }

    fn load_module(&self, name: &str, ptx: &str) -> Result<ModuleId> {
        let m = self.lock()?.load_module(name, ptx).map_err(map_err)?;
        Ok(ModuleId(m.0))
    }

    fn function(&self, module: ModuleId, entry: &str) -> Result<FuncId> {
        let f = self
            .lock()?
            .function(ptx_sim::ModuleId(module.0), entry)
            .map_err(map_err)?;
        Ok(FuncId(f.0))
    }

    fn alloc(&self, bytes: usize) -> Result<DevPtr> {
        self.not_capturing("alloc")?;
        Ok(DevPtr(self.lock()?.alloc(bytes).0))
    }

    fn free(&self, ptr: DevPtr) -> Result<()> {
        self.not_capturing("free")?;
        self.lock()?.free(ptx_sim::DevPtr(ptr.0)).map_err(map_err)
    }

    fn copy_to_device(&self, dst: DevPtr, src: &[u8]) -> Result<()> {
        self.not_capturing("copy_to_device")?;
        self.lock()?
            .copy_to_device(ptx_sim::DevPtr(dst.0), src)
            .map_err(map_err)
    }

    fn copy_to_host(&self, dst: &mut [u8], src: DevPtr) -> Result<()> {
        self.not_capturing("copy_to_host")?;
        self.lock()?
            .copy_to_host(dst, ptx_sim::DevPtr(src.0))
            .map_err(map_err)
    }

    fn memset_zero(&self, dst: DevPtr, bytes: usize) -> Result<()> {
        self.not_capturing("memset_zero")?;
        self.lock()?
            .memset_zero(ptx_sim::DevPtr(dst.0), bytes)
            .map_err(map_err)
    }

    fn launch(&self, f: FuncId, cfg: LaunchConfig, args: &[KernelArg]) -> Result<()> {
        if let Some(rec) = self.graphs().capturing.as_mut() {
            rec.push((f, cfg, args.to_vec()));
            return Ok(());
        }
        self.run(f, cfg, args)
    }

    fn synchronize(&self) -> Result<()> {
        self.not_capturing("synchronize")
    }

    fn begin_capture(&self) -> Result<()> {
        let mut g = self.graphs();
        if g.capturing.is_some() {
            return Err(Error::Device("begin_capture: already capturing".into()));
        }
        g.capturing = Some(Vec::new());
        Ok(())
    }

    fn end_capture(&self) -> Result<GraphId> {
        let mut g = self.graphs();
        let rec = g
            .capturing
            .take()
            .ok_or_else(|| Error::Device("end_capture: not capturing".into()))?;
        g.graphs.push(Some(rec));
        Ok(GraphId(g.graphs.len() - 1))
    }

    fn launch_graph(&self, graph: GraphId) -> Result<()> {
        self.not_capturing("launch_graph")?;
        let rec = self
            .graphs()
            .graphs
            .get(graph.0)
            .cloned()
            .flatten()
            .ok_or_else(|| Error::Device(format!("launch_graph: unknown graph {}", graph.0)))?;
        for (f, cfg, args) in &rec {
            self.run(*f, *cfg, args)?;
        }
        self.graphs().replayed += rec.len() as u64;
        Ok(())
    }

    fn free_graph(&self, graph: GraphId) -> Result<()> {
        match self.graphs().graphs.get_mut(graph.0) {
            Some(g @ Some(_)) => {
                *g = None;
                Ok(())
            }
            _ => Err(Error::Device(format!(
                "free_graph: unknown graph {}",
                graph.0
            ))),
        }
    }

    fn set_profiling(&self, on: bool) {
        if let Ok(mut d) = self.dev.lock() {
            d.set_profiling(on);
        }
    }

    fn take_counters(&self) -> Vec<KernelCounters> {
        let Ok(mut d) = self.dev.lock() else {
            return Vec::new();
        };
        d.take_counters()
            .into_iter()
            .map(|c| KernelCounters {
                kernel: c.kernel,
                launches: c.launches,
                warp_instructions: c.warp_instructions,
                global_load_bytes: c.global_load_bytes,
                global_store_bytes: c.global_store_bytes,
                shared_load_bytes: c.shared_load_bytes,
                shared_store_bytes: c.shared_store_bytes,
                local_bytes: c.local_bytes,
                global_sectors: c.global_sectors,
                global_sectors_ideal: c.global_sectors_ideal,
                bank_conflicts: c.bank_conflicts,
                global_load_requests: c.global_load_requests,
                footprint_bytes: c.footprint_bytes,
                ctas: c.ctas,
                threads_per_cta: c.threads_per_cta,
                shared_per_cta: c.shared_per_cta,
                seconds: c.seconds,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f32s(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    #[test]
    fn a_captured_launch_runs_only_when_replayed_and_reads_memory_then() {
        let d = SimDriver::new();
        let ptx = include_str!("../../../kernels/elementwise.ptx");
        let m = d.load_module("elementwise.ptx", ptx).unwrap();
        let copy = d.function(m, "copy_f32").unwrap();
        let (src, dst) = (d.alloc(16).unwrap(), d.alloc(16).unwrap());
        d.copy_to_device(src, &f32s(&[1.0, 2.0, 3.0, 4.0])).unwrap();
        d.copy_to_device(dst, &f32s(&[0.0; 4])).unwrap();
        let cfg = LaunchConfig {
            grid: (1, 1, 1),
            block: (256, 1, 1),
            shared_bytes: 0,
        };
        let args = [KernelArg::Ptr(dst), KernelArg::Ptr(src), KernelArg::U32(4)];
        d.begin_capture().unwrap();
        d.launch(copy, cfg, &args).unwrap();
        // what would invalidate a CUDA capture is refused
        assert!(d.copy_to_device(src, &f32s(&[9.0; 4])).is_err());
        assert!(d.synchronize().is_err());
        let g = d.end_capture().unwrap();
        let mut out = [0u8; 16];
        d.copy_to_host(&mut out, dst).unwrap();
        assert_eq!(out, [0u8; 16][..], "a captured launch must not run");
        // the graph holds pointers: it copies what src holds when it runs
        d.copy_to_device(src, &f32s(&[5.0, 6.0, 7.0, 8.0])).unwrap();
        d.launch_graph(g).unwrap();
        d.copy_to_host(&mut out, dst).unwrap();
        assert_eq!(out.to_vec(), f32s(&[5.0, 6.0, 7.0, 8.0]));
        assert_eq!(d.graph_launches_replayed(), 1);
        d.free_graph(g).unwrap();
        assert!(d.launch_graph(g).is_err());
    }
}
