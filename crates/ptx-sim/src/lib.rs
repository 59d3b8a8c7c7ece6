#![doc = include_str!("../README.md")]
//!
//! # Source layout
//!
//! - `parse.rs`: PTX text → syntax tree (syntax only, with lines kept for errors).
//! - `isa.rs`: the syntax tree → compact decoded instructions, once per module; rejects
//!   unsupported PTX.
//! - `exec/`: warps in lockstep and instruction dispatch (`mod.rs`), every memory check and
//!   memory counter written once per state space (`access.rs`), per-value arithmetic
//!   (`scalar.rs`).
//! - `memory.rs`: the address map, global memory and its initialisation shadow.
//! - `check.rs`: the shared-memory race and initialisation shadow.
//! - `counters.rs`: profiling arithmetic (sectors, bank conflicts) and [`KernelCounters`].
//! - `error.rs`: [`Error`].
//!
//! Imports go one way: `lib` → `exec` → `isa` → `parse`; below them `memory`, `check` and
//! `counters`, which import nothing of the crate but `error`. (`exec/access.rs` is the rest of
//! the executor's `impl`, so it and `exec/mod.rs` see each other; `exec/scalar.rs` sees neither.)
#![warn(missing_docs)]

mod check;
mod counters;
mod error;
mod exec;
mod isa;
mod memory;
mod parse;

use std::collections::HashMap;
use std::time::Instant;

pub use counters::KernelCounters;
pub use error::{Error, Fault, Result};
pub use exec::{DEFAULT_STEP_LIMIT, MAX_SHARED};
pub use memory::{LOCAL_WINDOW, SHARED_WINDOW};

use isa::{Kernel, Space, Symbol, Ty};
use memory::GlobalMem;
use parse::{Operand, VarDecl};

/// A device address (global memory). Host code may offset into an allocation, as in CUDA.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct DevPtr(pub u64);

impl DevPtr {
    /// The address `bytes` further on.
    pub fn offset(self, bytes: usize) -> DevPtr {
        DevPtr(self.0 + bytes as u64)
    }
}

/// A loaded module (one PTX text), as returned by [`Device::load_module`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ModuleId(pub usize);

/// A kernel entry point, as returned by [`Device::function`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FuncId(pub usize);

/// One kernel argument, in the order of the `.entry`'s `.param` list. Its size must equal the
/// parameter's (a `.u64` parameter takes `Ptr` or `U64`, a `.u32` one `U32`, ...).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum KernelArg {
    /// A device address (8 bytes).
    Ptr(DevPtr),
    /// A 32-bit unsigned integer.
    U32(u32),
    /// A 32-bit signed integer.
    I32(i32),
    /// A 64-bit unsigned integer.
    U64(u64),
    /// A 32-bit float.
    F32(f32),
}

impl KernelArg {
    fn bytes(&self) -> Vec<u8> {
        match self {
            KernelArg::Ptr(d) => d.0.to_le_bytes().to_vec(),
            KernelArg::U64(v) => v.to_le_bytes().to_vec(),
            KernelArg::U32(v) => v.to_le_bytes().to_vec(),
            KernelArg::I32(v) => v.to_le_bytes().to_vec(),
            KernelArg::F32(v) => v.to_le_bytes().to_vec(),
        }
    }
}

/// Grid and block dimensions and dynamic shared memory of one launch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LaunchConfig {
    /// Blocks per grid (x, y, z).
    pub grid: (u32, u32, u32),
    /// Threads per block (x, y, z).
    pub block: (u32, u32, u32),
    /// Dynamic shared memory in bytes (placed after the kernel's static shared arrays).
    pub shared_bytes: u32,
}

struct Module {
    name: String,
    lines: Vec<String>,
    kernels: Vec<Kernel>,
}

/// The interpreter: device memory, loaded modules, and the profiling state. Cheap to create;
/// launches run to completion inside [`Device::launch`]. Not shared between threads by itself:
/// wrap it in a `Mutex` to implement a thread-safe driver.
pub struct Device {
    mem: GlobalMem,
    modules: Vec<Module>,
    funcs: Vec<(usize, usize)>,
    profiling: bool,
    counters: Vec<KernelCounters>,
    step_limit: u64,
}

impl Default for Device {
    fn default() -> Self {
        Self::new()
    }
}

impl Device {
    /// An empty device: no memory allocated, no modules, profiling off.
    pub fn new() -> Device {
        Device {
            mem: GlobalMem::new(),
            modules: Vec::new(),
            funcs: Vec::new(),
            profiling: false,
            counters: Vec::new(),
            step_limit: DEFAULT_STEP_LIMIT,
        }
    }

    /// The compute capability whose limits the interpreter applies (sm_90: 227 KB of shared
    /// memory per block).
    pub fn compute_capability(&self) -> (u32, u32) {
        (9, 0)
    }

    /// The "device memory" reported to callers sizing their buffers: half the host's memory.
    pub fn total_memory(&self) -> u64 {
        host_memory() / 2
    }

    /// Warp instructions one block may execute before the launch fails as hung (a spin-wait on
    /// a flag no thread will set, a barrier some threads never reach while others loop).
    /// Defaults to [`DEFAULT_STEP_LIMIT`].
    pub fn set_step_limit(&mut self, warp_instructions: u64) {
        self.step_limit = warp_instructions.max(1);
    }

    /// Bytes of device memory currently allocated (for leak checks).
    pub fn bytes_allocated(&self) -> u64 {
        self.mem.bytes_live
    }

    /// Parse and decode one PTX module; `name` (a file name, say) is used in error messages.
    /// Every `.entry` is decoded now, so unsupported PTX is an [`Error::Ptx`] here, not at
    /// launch. Module-level `.global`/`.const` variables are placed in device memory.
    pub fn load_module(&mut self, name: &str, ptx: &str) -> Result<ModuleId> {
        let ast = parse::parse_module(name, ptx)?;
        // Module-level .global/.const variables live in global memory for the module's life.
        let mut syms: HashMap<String, Symbol> = HashMap::new();
        let mut module_shared = Vec::new();
        for g in &ast.globals {
            match g.space.as_str() {
                "global" | "const" => {
                    if g.is_extern {
                        return Err(Error::ptx(
                            name,
                            g.line,
                            None,
                            format!(
                                "extern .{} `{}` cannot be resolved (no linker)",
                                g.space, g.name
                            ),
                        ));
                    }
                    let el = isa::decl_elem_bytes(name, None, g)?;
                    let size = (el * g.array.unwrap_or(1).max(1)) as usize;
                    let data = init_bytes(name, g, size)?;
                    let addr = self.mem.alloc(size);
                    self.mem.write(addr, &data)?;
                    let space = if g.space == "global" {
                        Space::Global
                    } else {
                        Space::Const
                    };
                    syms.insert(g.name.clone(), Symbol { space, addr });
                }
                "shared" => module_shared.push(g.clone()),
                other => {
                    return Err(Error::ptx(
                        name,
                        g.line,
                        None,
                        format!("module-level .{other} is not supported"),
                    ));
                }
            }
        }
        let mut kernels = Vec::new();
        for f in &ast.functions {
            if f.is_entry {
                kernels.push(isa::decode_kernel(name, f, &syms, &module_shared)?);
            }
            // `.func` bodies are only decoded when called, and `call` is not supported: a
            // kernel that calls one fails to decode with the line of the `call`.
        }
        let id = self.modules.len();
        self.modules.push(Module {
            name: name.to_string(),
            lines: ptx.lines().map(str::to_string).collect(),
            kernels,
        });
        Ok(ModuleId(id))
    }

    /// The `.entry` called `entry` in `module`.
    pub fn function(&mut self, module: ModuleId, entry: &str) -> Result<FuncId> {
        let m = self.modules.get(module.0).ok_or(Error::UnknownHandle {
            what: "module",
            id: module.0,
        })?;
        let Some(k) = m.kernels.iter().position(|k| k.name == entry) else {
            return Err(Error::NoEntry {
                module: m.name.clone(),
                entry: entry.to_string(),
                available: m.kernels.iter().map(|k| k.name.clone()).collect(),
            });
        };
        self.funcs.push((module.0, k));
        Ok(FuncId(self.funcs.len() - 1))
    }

    /// Allocate `bytes` of device memory. The bytes count as uninitialised until written (by a
    /// copy, a memset or a kernel store): a kernel reading them first is a fault. Addresses are
    /// never reused, and each allocation is followed by an unmapped guard gap.
    pub fn alloc(&mut self, bytes: usize) -> DevPtr {
        DevPtr(self.mem.alloc(bytes))
    }

    /// Free an allocation; `ptr` must be its start. Later use of it is an error.
    pub fn free(&mut self, ptr: DevPtr) -> Result<()> {
        self.mem.free(ptr.0)
    }

    /// Copy `src` to device memory at `dst` (inside one live allocation).
    pub fn copy_to_device(&mut self, dst: DevPtr, src: &[u8]) -> Result<()> {
        self.mem.write(dst.0, src)
    }

    /// Copy device memory at `src` (inside one live allocation) into `dst`.
    pub fn copy_to_host(&self, dst: &mut [u8], src: DevPtr) -> Result<()> {
        self.mem.read(dst, src.0)
    }

    /// Set `bytes` of device memory at `dst` to zero (they count as initialised).
    pub fn memset_zero(&mut self, dst: DevPtr, bytes: usize) -> Result<()> {
        self.mem.memset_zero(dst.0, bytes)
    }

    /// Run kernel `f` over the grid to completion, with every check. Arguments are checked
    /// against the `.entry`'s parameters, the block against `.reqntid`/`.maxntid` and the
    /// hardware limits ([`Error::Launch`]); a check failing while it runs is an
    /// [`Error::Fault`] naming the thread, block, instruction and address.
    pub fn launch(&mut self, f: FuncId, cfg: LaunchConfig, args: &[KernelArg]) -> Result<()> {
        let &(mi, ki) = self.funcs.get(f.0).ok_or(Error::UnknownHandle {
            what: "function",
            id: f.0,
        })?;
        let module = &self.modules[mi];
        let kernel = &module.kernels[ki];
        if args.len() != kernel.params.len() {
            return Err(Error::launch(
                &kernel.name,
                format!(
                    "takes {} parameters, launched with {} arguments",
                    kernel.params.len(),
                    args.len()
                ),
            ));
        }
        let b = [cfg.block.0, cfg.block.1, cfg.block.2];
        if let Some(req) = &kernel.reqntid {
            let want: Vec<u32> = (0..3).map(|i| req.get(i).copied().unwrap_or(1)).collect();
            if want != b {
                return Err(Error::launch(
                    &kernel.name,
                    format!(
                        "declares .reqntid {req:?} but is launched with block {:?}",
                        cfg.block
                    ),
                ));
            }
        }
        if let Some(max) = &kernel.maxntid {
            let limit: u64 = max.iter().map(|&x| x as u64).product();
            let threads: u64 = b.iter().map(|&x| x as u64).product();
            if threads > limit {
                return Err(Error::launch(
                    &kernel.name,
                    format!(
                        "declares .maxntid {max:?} but is launched with block {:?}",
                        cfg.block
                    ),
                ));
            }
        }
        let mut params = vec![0u8; kernel.param_bytes];
        for (i, (a, p)) in args.iter().zip(&kernel.params).enumerate() {
            let bytes = a.bytes();
            if bytes.len() != p.size as usize {
                return Err(Error::launch(
                    &kernel.name,
                    format!(
                        "argument {i} ({a:?}) is {} bytes but parameter `{}` is {} bytes",
                        bytes.len(),
                        p.name,
                        p.size
                    ),
                ));
            }
            params[p.offset as usize..p.offset as usize + bytes.len()].copy_from_slice(&bytes);
        }
        let shared_bytes = match kernel.dyn_shared_offset {
            Some(off) => off as usize + cfg.shared_bytes as usize,
            None => kernel.static_shared as usize + cfg.shared_bytes as usize,
        };
        let launch = exec::Launch {
            kernel,
            module: &module.name,
            lines: &module.lines,
            grid: cfg.grid,
            block: cfg.block,
            params: &params,
            shared_bytes,
            step_limit: self.step_limit,
        };
        if !self.profiling {
            return exec::run(&launch, &mut self.mem, None);
        }
        let t0 = Instant::now();
        let mut c = KernelCounters {
            kernel: kernel.name.clone(),
            launches: 1,
            ..Default::default()
        };
        exec::run(&launch, &mut self.mem, Some(&mut c))?;
        c.seconds = t0.elapsed().as_secs_f64();
        match self.counters.iter_mut().find(|k| k.kernel == c.kernel) {
            Some(k) => k.add(&c),
            None => self.counters.push(c),
        }
        Ok(())
    }

    /// Turn per-kernel counters on or off (off by default: counting slows interpreting down).
    pub fn set_profiling(&mut self, on: bool) {
        self.profiling = on;
    }

    /// The counters gathered per kernel since the last call (empty when profiling is off).
    pub fn take_counters(&mut self) -> Vec<KernelCounters> {
        std::mem::take(&mut self.counters)
    }
}

fn host_memory() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(16 << 30)
}

/// Bytes of a module-level variable's initialiser.
fn init_bytes(module: &str, d: &VarDecl, size: usize) -> Result<Vec<u8>> {
    let ty = Ty::parse(&d.ty)
        .ok_or_else(|| Error::ptx(module, d.line, None, format!("unknown type .{}", d.ty)))?;
    let es = ty.bytes() as usize;
    let mut out = vec![0u8; size];
    for (k, v) in d.init.iter().enumerate() {
        let bits: u64 = match v {
            Operand::Int(i) => {
                if ty.float() {
                    isa::float_bits(*i as f64, ty)
                } else {
                    *i as u64
                }
            }
            Operand::Float { bits, single } => {
                let x = if *single {
                    f32::from_bits(*bits as u32) as f64
                } else {
                    f64::from_bits(*bits)
                };
                if ty.float() {
                    isa::float_bits(x, ty)
                } else {
                    *bits
                }
            }
            o => {
                return Err(Error::ptx(
                    module,
                    d.line,
                    None,
                    format!(
                        "initialiser {o:?} of `{}` is not supported (only numbers)",
                        d.name
                    ),
                ))
            }
        };
        if (k + 1) * es > size {
            return Err(Error::ptx(
                module,
                d.line,
                None,
                format!("too many initialisers for `{}`", d.name),
            ));
        }
        out[k * es..(k + 1) * es].copy_from_slice(&bits.to_le_bytes()[..es]);
    }
    Ok(out)
}
