//! A PTX interpreter implementing [`super::driver::GpuDriver`] on the CPU.
//!
//! It runs the very same PTX and host launch code as a real GPU, slowly, with sanitizer-style
//! checks: out-of-bounds, misaligned and uninitialised accesses to global/shared/local memory,
//! shared-memory races between warps, divergent barriers (deadlocks) and warp collectives whose
//! membermask does not match the executing lanes are all `Error::Ptx` naming the kernel, the
//! module line, the thread and the block. With profiling on it counts warp instructions, bytes
//! per memory space, global 32-byte sectors (vs ideal) and shared bank conflicts per kernel.
//!
//! Files: `parse.rs` (text → syntax tree), `isa.rs` (decode once into compact instructions),
//! `exec.rs` (warps, lockstep, memory checks), `memory.rs` (global memory + init shadow),
//! `check.rs` (shared-memory race/init shadow), `counters.rs` (profiling arithmetic).
//!
//! Supported PTX (anything else is an error naming the opcode or modifier and its line):
//! - Module: `.version`, `.target`, `.address_size 64`, `.visible/.extern/.weak .entry`,
//!   `.param` (scalars, `.ptr.global.align N`), module `.global/.const` variables with simple
//!   initialisers, module or kernel `.shared` arrays incl. `.extern .shared .align N .b8 s[]`
//!   (dynamic shared memory, placed after the static ones), `.local` arrays, `.reg` incl.
//!   `%r<N>` ranges, `.maxntid/.reqntid` (checked at launch), other performance directives
//!   and `.pragma` (ignored), labels, `@p`/`@!p`, `//` and `/* */` comments, `0f`/`0d`/hex/
//!   negative immediates.
//! - Integer: `add sub mul.{lo,hi,wide} mad.{lo,hi,wide} div rem min max abs neg not cnot popc
//!   clz brev and or xor shl shr bfe bfi prmt` (default mode), `selp`, `setp` (all comparisons
//!   incl. unordered, `.and/.or/.xor` with a predicate, `p|q` destinations), and/or/xor/not on
//!   `.pred`.
//! - Float (f32, f64, f16, bf16, f16x2, bf16x2): `add sub mul div(.rn/.full/.approx) min max
//!   fma.rn mad.rn abs neg sqrt rsqrt rcp ex2 lg2 sin cos tanh` (`.approx` computes the exact
//!   value; `.ftz` accepted, subnormals are not flushed; `.sat` honoured; only `.rn` rounding).
//! - `mov` (incl. `mov.b32 d, {a,b}` packing / unpacking, symbol addresses, special registers),
//!   `cvt` with `.rn .rz .rm .rp .rni .rzi .rmi .rpi .sat .ftz` between all integer widths,
//!   f16, bf16, f32, f64; `cvt.rn{.relu}.{bf16x2,f16x2}.f32 d, hi, lo`.
//! - Memory: `ld/st` `.global .shared .local .param .const` and generic, `.v2/.v4`, all cache
//!   and eviction hints and `.nc/.volatile/.relaxed/...` ignored; `cvta{.to}.{global,shared,local}`;
//!   `atom`/`red` `.global/.shared` `add min max inc dec cas exch and or xor` on 32/64-bit
//!   integer types and `add.f32/.f64`; `cp.async.{ca,cg}.shared.global [d], [s], 4|8|16{, src}`
//!   (copied at once, but the bytes count as in flight until the issuing thread's
//!   `cp.async.wait_group N`/`wait_all` completes their group: touching them earlier is
//!   reported), `commit_group`; `membar`, `fence`,
//!   `prefetch` (no-ops: execution is sequentially consistent). Shared memory is not
//!   zeroed: reading a byte this CTA never wrote is reported.
//! - Warp: `shfl.sync.{up,down,bfly,idx}.b32` (clamp/segment operand, optional `|p`),
//!   `vote.sync.{all,any,uni,ballot}`, `redux.sync.{add,min,max,and,or,xor}.{u32,s32,b32}`,
//!   `ldmatrix.sync.aligned.m8n8.{x1,x2,x4}{.trans}.shared.b16`,
//!   `mma.sync.aligned.m16n8k16.row.col.f32.{bf16.bf16,f16.f16}.f32`.
//! - Control: `bra{.uni}`, `bar.sync`/`barrier.sync{.aligned}` (id; a thread count only when it
//!   equals the live threads), `ret`, `exit`. Not supported: `call`/`.func` bodies, textures,
//!   surfaces, `wgmma`, clusters, `.rz/.rm/.rp` arithmetic.
//! - Special registers: `%tid %ntid %ctaid %nctaid` (.x/.y/.z), `%laneid %warpid %nwarpid
//!   %clock %clock64 %gridid %smid %lanemask_{eq,lt,le,gt,ge}`.
//!
//! Launch checks: parameter count and sizes against the `.entry`, block and grid limits,
//! `.reqntid`/`.maxntid`, shared memory up to 227 KB. A CTA that runs more than
//! [`SimDriver::set_step_limit`] warp instructions fails as hung (spin-waits, livelocks).
//!
//! Semantics chosen where real hardware is undefined or racy: CTAs run one after another
//! (not in parallel: the checks and counters stay exact, and global memory needs no locking);
//! registers are zero at launch and not reset between CTAs; integer division by zero gives
//! all ones; a barrier waits for all threads that have not exited, and threads waiting at two
//! different `bar.sync` instructions are reported as a deadlock. Not checked: races on global
//! memory between CTAs, `ld.global.nc` of data the same kernel writes, reads of registers
//! before their first write.

mod check;
mod counters;
mod exec;
mod isa;
mod memory;
mod parse;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use super::driver::{DevPtr, FuncId, GpuDriver, KernelArg, KernelCounters, LaunchConfig, ModuleId};
use crate::error::{Error, Result};
use isa::{Kernel, Space, Symbol, Ty};
use memory::GlobalMem;
use parse::{Operand, VarDecl};

pub use exec::{LOCAL_WINDOW, MAX_SHARED, SHARED_WINDOW};

struct Module {
    name: String,
    lines: Vec<String>,
    kernels: Vec<Kernel>,
}

struct State {
    mem: GlobalMem,
    modules: Vec<Module>,
    funcs: Vec<(usize, usize)>,
    profiling: bool,
    counters: Vec<KernelCounters>,
    step_limit: u64,
}

/// The PTX interpreter device. Cheap to create; all state lives behind one lock, and launches
/// run to completion inside `launch` (so `synchronize` has nothing to wait for).
pub struct SimDriver {
    state: Mutex<State>,
}

impl Default for SimDriver {
    fn default() -> Self {
        Self::new()
    }
}

impl SimDriver {
    pub fn new() -> SimDriver {
        SimDriver {
            state: Mutex::new(State {
                mem: GlobalMem::new(),
                modules: Vec::new(),
                funcs: Vec::new(),
                profiling: false,
                counters: Vec::new(),
                step_limit: exec::DEFAULT_STEP_LIMIT,
            }),
        }
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, State>> {
        self.state
            .lock()
            .map_err(|_| Error::Device("ptx interpreter state poisoned by an earlier panic".into()))
    }

    /// Warp instructions one CTA may execute before the launch fails as hung (a spin-wait on a
    /// flag no thread will set, a barrier some threads never reach while others loop).
    pub fn set_step_limit(&self, warp_instructions: u64) {
        if let Ok(mut st) = self.state.lock() {
            st.step_limit = warp_instructions.max(1);
        }
    }

    /// Bytes of device memory currently allocated (for leak checks in tests).
    pub fn bytes_allocated(&self) -> u64 {
        self.lock().map(|s| s.mem.bytes_live).unwrap_or(0)
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
        .ok_or_else(|| Error::Ptx(format!("{module}:{}: unknown type .{}", d.line, d.ty)))?;
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
                return Err(Error::Ptx(format!(
                    "{module}:{}: initialiser {o:?} of `{}` is not supported (only numbers)",
                    d.line, d.name
                )))
            }
        };
        if (k + 1) * es > size {
            return Err(Error::Ptx(format!(
                "{module}:{}: too many initialisers for `{}`",
                d.line, d.name
            )));
        }
        out[k * es..(k + 1) * es].copy_from_slice(&bits.to_le_bytes()[..es]);
    }
    Ok(out)
}

impl GpuDriver for SimDriver {
    fn name(&self) -> String {
        "ptx interpreter".to_string()
    }

    fn total_memory(&self) -> u64 {
        host_memory() / 2
    }

    fn compute_capability(&self) -> (u32, u32) {
        (9, 0)
    }

    fn load_module(&self, name: &str, ptx: &str) -> Result<ModuleId> {
        let ast = parse::parse_module(name, ptx)?;
        let mut st = self.lock()?;
        // Module-level .global/.const variables live in global memory for the module's life.
        let mut syms: HashMap<String, Symbol> = HashMap::new();
        let mut module_shared = Vec::new();
        for g in &ast.globals {
            match g.space.as_str() {
                "global" | "const" => {
                    if g.is_extern {
                        return Err(Error::Ptx(format!(
                            "{name}:{}: extern .{} `{}` cannot be resolved (no linker)",
                            g.line, g.space, g.name
                        )));
                    }
                    let size = (isa::decl_elem_bytes(g)? * g.array.unwrap_or(1).max(1)) as usize;
                    let data = init_bytes(name, g, size)?;
                    let addr = st.mem.alloc(size)?;
                    st.mem.write(addr, &data)?;
                    let space = if g.space == "global" {
                        Space::Global
                    } else {
                        Space::Const
                    };
                    syms.insert(g.name.clone(), Symbol { space, addr });
                }
                "shared" => module_shared.push(g.clone()),
                other => {
                    return Err(Error::Ptx(format!(
                        "{name}:{}: module-level .{other} is not supported",
                        g.line
                    )));
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
        let id = st.modules.len();
        st.modules.push(Module {
            name: name.to_string(),
            lines: ptx.lines().map(str::to_string).collect(),
            kernels,
        });
        Ok(ModuleId(id))
    }

    fn function(&self, module: ModuleId, entry: &str) -> Result<FuncId> {
        let mut st = self.lock()?;
        let m = st
            .modules
            .get(module.0)
            .ok_or_else(|| Error::Device(format!("unknown module id {}", module.0)))?;
        let k = match m.kernels.iter().position(|k| k.name == entry) {
            Some(k) => k,
            None => {
                let names: Vec<&str> = m.kernels.iter().map(|k| k.name.as_str()).collect();
                return Err(Error::Device(format!(
                    "module {} has no .entry `{entry}` (it has: {})",
                    m.name,
                    names.join(", ")
                )));
            }
        };
        st.funcs.push((module.0, k));
        Ok(FuncId(st.funcs.len() - 1))
    }

    fn alloc(&self, bytes: usize) -> Result<DevPtr> {
        Ok(DevPtr(self.lock()?.mem.alloc(bytes)?))
    }

    fn free(&self, ptr: DevPtr) -> Result<()> {
        self.lock()?.mem.free(ptr.0)
    }

    fn copy_to_device(&self, dst: DevPtr, src: &[u8]) -> Result<()> {
        self.lock()?.mem.write(dst.0, src)
    }

    fn copy_to_host(&self, dst: &mut [u8], src: DevPtr) -> Result<()> {
        self.lock()?.mem.read(dst, src.0)
    }

    fn memset_zero(&self, dst: DevPtr, bytes: usize) -> Result<()> {
        self.lock()?.mem.memset_zero(dst.0, bytes)
    }

    fn launch(&self, f: FuncId, cfg: LaunchConfig, args: &[KernelArg]) -> Result<()> {
        let mut guard = self.lock()?;
        let st = &mut *guard;
        let &(mi, ki) = st
            .funcs
            .get(f.0)
            .ok_or_else(|| Error::Device(format!("unknown function id {}", f.0)))?;
        let module = &st.modules[mi];
        let kernel = &module.kernels[ki];
        if args.len() != kernel.params.len() {
            return Err(Error::Ptx(format!(
                "kernel `{}` takes {} parameters, launched with {} arguments",
                kernel.name,
                kernel.params.len(),
                args.len()
            )));
        }
        let b = [cfg.block.0, cfg.block.1, cfg.block.2];
        if let Some(req) = &kernel.reqntid {
            let want: Vec<u32> = (0..3).map(|i| req.get(i).copied().unwrap_or(1)).collect();
            if want != b {
                return Err(Error::Ptx(format!(
                    "kernel `{}` declares .reqntid {req:?} but is launched with block {:?}",
                    kernel.name, cfg.block
                )));
            }
        }
        if let Some(max) = &kernel.maxntid {
            let limit: u64 = max.iter().map(|&x| x as u64).product();
            let threads: u64 = b.iter().map(|&x| x as u64).product();
            if threads > limit {
                return Err(Error::Ptx(format!(
                    "kernel `{}` declares .maxntid {max:?} but is launched with block {:?}",
                    kernel.name, cfg.block
                )));
            }
        }
        let mut params = vec![0u8; kernel.param_bytes];
        for (i, (a, p)) in args.iter().zip(&kernel.params).enumerate() {
            let bytes: Vec<u8> = match a {
                KernelArg::Ptr(d) => d.0.to_le_bytes().to_vec(),
                KernelArg::U64(v) => v.to_le_bytes().to_vec(),
                KernelArg::U32(v) => v.to_le_bytes().to_vec(),
                KernelArg::I32(v) => v.to_le_bytes().to_vec(),
                KernelArg::F32(v) => v.to_le_bytes().to_vec(),
            };
            if bytes.len() != p.size as usize {
                return Err(Error::Ptx(format!(
                    "kernel `{}`: argument {i} ({a:?}) is {} bytes but parameter `{}` is {} bytes",
                    kernel.name,
                    bytes.len(),
                    p.name,
                    p.size
                )));
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
            step_limit: st.step_limit,
        };
        let t0 = Instant::now();
        if st.profiling {
            let mut c = KernelCounters {
                kernel: kernel.name.clone(),
                launches: 1,
                ..Default::default()
            };
            exec::run(&launch, &mut st.mem, Some(&mut c))?;
            c.seconds = t0.elapsed().as_secs_f64();
            match st.counters.iter_mut().find(|k| k.kernel == c.kernel) {
                Some(k) => {
                    k.launches += c.launches;
                    k.warp_instructions += c.warp_instructions;
                    k.global_load_bytes += c.global_load_bytes;
                    k.global_store_bytes += c.global_store_bytes;
                    k.shared_load_bytes += c.shared_load_bytes;
                    k.shared_store_bytes += c.shared_store_bytes;
                    k.local_bytes += c.local_bytes;
                    k.global_sectors += c.global_sectors;
                    k.global_sectors_ideal += c.global_sectors_ideal;
                    k.bank_conflicts += c.bank_conflicts;
                    k.seconds += c.seconds;
                }
                None => st.counters.push(c),
            }
        } else {
            exec::run(&launch, &mut st.mem, None)?;
        }
        Ok(())
    }

    fn synchronize(&self) -> Result<()> {
        Ok(())
    }

    fn set_profiling(&self, on: bool) {
        if let Ok(mut st) = self.state.lock() {
            st.profiling = on;
        }
    }

    fn take_counters(&self) -> Vec<KernelCounters> {
        match self.state.lock() {
            Ok(mut st) => std::mem::take(&mut st.counters),
            Err(_) => Vec::new(),
        }
    }
}
