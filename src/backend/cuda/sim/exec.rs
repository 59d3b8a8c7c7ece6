//! The execution engine: runs a decoded kernel over a grid of CTAs, each CTA's threads in warps
//! of 32 executing in lockstep.
//!
//! Scheduling: CTAs run one after another. Inside a CTA, warps take turns in slices; inside a
//! warp, the lanes whose PC is the smallest among the running lanes execute together (the
//! min-PC rule), which reconverges structured control flow exactly where a reconvergence stack
//! would. Barriers release when every live thread of the CTA waits at the same `bar.sync`.
//! Warp collectives require their membermask to equal exactly the lanes executing them.
//!
//! Registers are stored structure-of-arrays per warp (`[warp][reg][lane]`, one u64 each), so an
//! instruction is matched once per warp and then applied lane by lane. Every memory access is
//! bounds-, alignment- and initialisation-checked; shared memory also gets race checks
//! (`check.rs`). CTAs are not run in parallel: the checks and counters stay exact that way.

use super::check::SharedShadow;
use super::counters;
use super::isa::*;
use super::memory::GlobalMem;
use crate::backend::cuda::driver::KernelCounters;
use crate::error::{Error, Result};
use half::{bf16, f16};

/// Generic addresses of shared memory are `SHARED_WINDOW + offset`, of local memory
/// `LOCAL_WINDOW + offset` (per thread), everything else is global.
pub const SHARED_WINDOW: u64 = 0x1000_0000_0000;
pub const LOCAL_WINDOW: u64 = 0x2000_0000_0000;
const WINDOW: u64 = 1 << 32;
/// Shared memory per CTA on sm_90.
pub const MAX_SHARED: usize = 227 * 1024;
/// Warp instructions a warp runs before the next warp gets a turn (lets spin-waits progress).
const SLICE: u32 = 2048;
/// By default, a CTA that executes more warp instructions than this is reported as hung
/// (about a minute of interpreting; see `SimDriver::set_step_limit`).
pub const DEFAULT_STEP_LIMIT: u64 = 1 << 27;

pub struct Launch<'a> {
    pub kernel: &'a Kernel,
    pub module: &'a str,
    pub lines: &'a [String],
    pub grid: (u32, u32, u32),
    pub block: (u32, u32, u32),
    pub params: &'a [u8],
    /// Static plus dynamic shared memory.
    pub shared_bytes: usize,
    /// Warp instructions one CTA may execute before it is reported as hung.
    pub step_limit: u64,
}

/// A warp's lanes. The lanes in `gmask` (the group now executing) all sit at `gpc`, and every
/// other running lane's `pcs` entry is at least `glimit` > `gpc`: so by the min-PC rule the
/// group keeps running, without rescanning the lanes, until it reaches `glimit` (where other
/// lanes may rejoin), diverges, or waits. `pcs` is stale for group lanes until written back.
#[derive(Clone)]
struct Warp {
    pcs: [u32; 32],
    gpc: u32,
    gmask: u32,
    glimit: u32,
    running: u32,
    waiting: u32,
}

impl Warp {
    fn write_back(&mut self) {
        for lane in Lanes(self.gmask) {
            self.pcs[lane] = self.gpc;
        }
        self.gmask = 0;
    }
}

struct Lanes(u32);
impl Iterator for Lanes {
    type Item = usize;
    #[inline(always)]
    fn next(&mut self) -> Option<usize> {
        if self.0 == 0 {
            None
        } else {
            let l = self.0.trailing_zeros() as usize;
            self.0 &= self.0 - 1;
            Some(l)
        }
    }
}

#[inline(always)]
fn mask(bits: u32) -> u64 {
    if bits >= 64 {
        u64::MAX
    } else {
        (1u64 << bits) - 1
    }
}
#[inline(always)]
fn sx(v: u64, bits: u32) -> i64 {
    if bits >= 64 {
        v as i64
    } else {
        let s = 64 - bits;
        ((v << s) as i64) >> s
    }
}
#[inline(always)]
fn zx(v: u64, bits: u32) -> u64 {
    v & mask(bits)
}

struct Exec<'a, 'm> {
    l: &'a Launch<'a>,
    mem: &'m mut GlobalMem,
    prof: Option<&'m mut KernelCounters>,
    code: &'a [Instr],
    nregs: usize,
    nthreads: usize,
    regs: Vec<u64>,
    warps: Vec<Warp>,
    shared: Vec<u8>,
    shadow: SharedShadow,
    local: Vec<u8>,
    local_init: Vec<u8>,
    ctaid: (u32, u32, u32),
    clock: u64,
    /// The `bar.sync` (pc, id) the waiting threads of this CTA are at.
    bar: Option<(u32, u64)>,
    alloc_hint: usize,
    // Per-instruction scratch for profiling: each lane's access, and whether it was shared.
    acc: [Option<(u64, u32)>; 32],
    acc_shared: bool,
    /// %tid of every thread slot (warps rounded up to 32 lanes).
    tids: Vec<[u32; 3]>,
    /// cp.async copies are done at once, but their bytes count as in flight until the issuing
    /// thread waits for their group: per thread slot, the open group number and the in-flight
    /// (group, shared offset, bytes); per shared byte, how many copies into it are in flight.
    cp_group: Vec<u32>,
    cp_pending: Vec<Vec<(u32, u32, u32)>>,
    shared_inflight: Vec<u8>,
    cp_any: bool,
}

pub fn run(l: &Launch, mem: &mut GlobalMem, prof: Option<&mut KernelCounters>) -> Result<()> {
    let (bx, by, bz) = l.block;
    let nthreads = (bx as usize) * (by as usize) * (bz as usize);
    if nthreads == 0 || nthreads > 1024 || bx > 1024 || by > 1024 || bz > 64 {
        return Err(Error::Ptx(format!(
            "kernel `{}`: invalid block shape {:?} (at most 1024 threads, z at most 64)",
            l.kernel.name, l.block
        )));
    }
    let (gx, gy, gz) = l.grid;
    if gx == 0 || gy == 0 || gz == 0 || gy > 65535 || gz > 65535 {
        return Err(Error::Ptx(format!(
            "kernel `{}`: invalid grid shape {:?}",
            l.kernel.name, l.grid
        )));
    }
    if l.shared_bytes > MAX_SHARED {
        return Err(Error::Ptx(format!(
            "kernel `{}`: {} bytes of shared memory requested, the maximum is {MAX_SHARED}",
            l.kernel.name, l.shared_bytes
        )));
    }
    let nwarps = nthreads.div_ceil(32);
    let nregs = l.kernel.nregs.max(1);
    let local_bytes = l.kernel.local_bytes as usize;
    let mut ex = Exec {
        l,
        mem,
        prof,
        code: &l.kernel.code,
        nregs,
        nthreads,
        regs: vec![0; nwarps * nregs * 32],
        warps: Vec::new(),
        shared: vec![0; l.shared_bytes],
        shadow: SharedShadow::new(l.shared_bytes),
        local: vec![0; local_bytes * nthreads],
        local_init: vec![0; local_bytes * nthreads],
        ctaid: (0, 0, 0),
        clock: 0,
        bar: None,
        alloc_hint: 0,
        acc: [None; 32],
        acc_shared: false,
        tids: (0..nwarps as u32 * 32)
            .map(|t| [t % bx, (t / bx) % by, t / (bx * by)])
            .collect(),
        cp_group: vec![0; nwarps * 32],
        cp_pending: vec![Vec::new(); nwarps * 32],
        shared_inflight: vec![0; l.shared_bytes],
        cp_any: false,
    };
    for z in 0..gz {
        for y in 0..gy {
            for x in 0..gx {
                ex.ctaid = (x, y, z);
                ex.run_cta()?;
            }
        }
    }
    Ok(())
}

enum Flow {
    Next,
    Jump(u32, u32),
    Barrier(u32),
    Exit(u32),
}

impl<'a, 'm> Exec<'a, 'm> {
    fn run_cta(&mut self) -> Result<()> {
        let nwarps = self.nthreads.div_ceil(32);
        self.warps.clear();
        for w in 0..nwarps {
            let n = (self.nthreads - w * 32).min(32);
            let m = if n == 32 { u32::MAX } else { (1u32 << n) - 1 };
            self.warps.push(Warp {
                pcs: [0; 32],
                gpc: 0,
                gmask: m,
                glimit: u32::MAX,
                running: m,
                waiting: 0,
            });
        }
        // Registers are zeroed once per launch, not per CTA: like hardware, a register's value
        // before its first write is undefined (here: what the previous CTA left), and
        // clearing ~100 KB per CTA dominated small launches. Local memory is init-checked.
        self.local_init.fill(0);
        self.shadow.new_cta();
        if self.cp_any {
            // Copies never waited for by the end of the previous CTA.
            self.cp_group.fill(0);
            self.cp_pending.iter_mut().for_each(Vec::clear);
            self.shared_inflight.fill(0);
            self.cp_any = false;
        }
        self.bar = None;
        let mut steps = 0u64;
        loop {
            let mut any = false;
            for w in 0..nwarps {
                if self.warps[w].running != 0 {
                    any = true;
                    steps += self.run_warp(w)? as u64;
                }
            }
            if steps > self.l.step_limit {
                let waiting: u32 = self.warps.iter().map(|w| w.waiting.count_ones()).sum();
                let at = match self.bar {
                    Some((pc, _)) => format!(
                        "; {waiting} threads wait at the barrier on line {} while others keep running (deadlock: a barrier they never reach?)",
                        self.code[pc as usize].line
                    ),
                    None => String::new(),
                };
                return Err(Error::Ptx(format!(
                    "kernel `{}`: block {:?} executed more than {} warp instructions; it is probably hung{at}",
                    self.l.kernel.name, self.ctaid, self.l.step_limit
                )));
            }
            if any {
                continue;
            }
            // Every warp is blocked at a barrier or done.
            let waiting: u32 = self.warps.iter().map(|w| w.waiting.count_ones()).sum();
            if waiting == 0 {
                return Ok(());
            }
            if let Some((pc, _)) = self.bar {
                if let Op::Bar { count: Some(c), .. } = self.code[pc as usize].op {
                    let c = self.val(0, c, 0);
                    if c as u32 != waiting {
                        return Err(self.cta_err(
                            pc,
                            format!("bar.sync with thread count {c}, but {waiting} live threads arrived (only a count equal to the live threads is supported)"),
                        ));
                    }
                }
            }
            for wp in self.warps.iter_mut() {
                if wp.waiting != 0 {
                    wp.write_back();
                    wp.running |= wp.waiting;
                    wp.waiting = 0;
                }
            }
            self.bar = None;
            self.shadow.barrier();
        }
    }

    fn cta_err(&self, pc: u32, msg: String) -> Error {
        let ins = &self.code[pc as usize];
        Error::Ptx(format!(
            "kernel `{}` ({}:{} `{}`), block {:?}: {msg}",
            self.l.kernel.name,
            self.l.module,
            ins.line,
            self.src_line(ins.line),
            self.ctaid
        ))
    }

    fn src_line(&self, line: u32) -> &str {
        self.l
            .lines
            .get(line.saturating_sub(1) as usize)
            .map(|s| s.trim())
            .unwrap_or("")
    }

    #[inline(always)]
    fn tid(&self, w: usize, lane: usize) -> (u32, u32, u32) {
        let t = self.tids[(w * 32 + lane) % self.tids.len()];
        (t[0], t[1], t[2])
    }

    fn fault(&self, w: usize, lane: usize, pc: u32, msg: String) -> Error {
        let ins = &self.code[pc as usize];
        Error::Ptx(format!(
            "kernel `{}` ({}:{} `{}`), thread {:?} block {:?}: {msg}",
            self.l.kernel.name,
            self.l.module,
            ins.line,
            self.src_line(ins.line),
            self.tid(w, lane),
            self.ctaid
        ))
    }

    /// Pick the lanes to run next: those at the smallest PC among running lanes.
    #[inline]
    fn select(&mut self, w: usize) -> (u32, u32) {
        let wp = &mut self.warps[w];
        if wp.gmask != 0 && wp.gpc < wp.glimit {
            return (wp.gpc, wp.gmask);
        }
        wp.write_back();
        if wp.running == 0 {
            return (0, 0);
        }
        let mut min = u32::MAX;
        for lane in Lanes(wp.running) {
            min = min.min(wp.pcs[lane]);
        }
        let mut m = 0u32;
        let mut next = u32::MAX;
        for lane in Lanes(wp.running) {
            let p = wp.pcs[lane];
            if p == min {
                m |= 1 << lane;
            } else {
                next = next.min(p);
            }
        }
        wp.gmask = m;
        wp.gpc = min;
        wp.glimit = next;
        (min, m)
    }

    /// Run warp `w` for up to one slice; returns the instructions executed.
    fn run_warp(&mut self, w: usize) -> Result<u32> {
        let mut n = 0;
        while n < SLICE {
            let (pc, m) = self.select(w);
            if m == 0 {
                break;
            }
            n += 1;
            self.clock += 1;
            let ins = &self.code[pc as usize];
            let exec = match ins.guard {
                None => m,
                Some((p, neg)) => {
                    let base = (w * self.nregs + p as usize) * 32;
                    let preds = &self.regs[base..base + 32];
                    let mut e = 0u32;
                    for (lane, v) in preds.iter().enumerate() {
                        e |= (((*v != 0) != neg) as u32) << lane;
                    }
                    e & m
                }
            };
            if let Some(p) = self.prof.as_deref_mut() {
                p.warp_instructions += 1;
            }
            let flow = if exec == 0 {
                Flow::Next
            } else {
                self.exec(w, pc, exec)?
            };
            // `m` is the warp's group; every outcome keeps the group invariant.
            let wp = &mut self.warps[w];
            match flow {
                Flow::Next => wp.gpc = pc + 1,
                Flow::Jump(target, taken) => {
                    if taken == m {
                        wp.gpc = target;
                    } else if taken == 0 {
                        wp.gpc = pc + 1;
                    } else {
                        for lane in Lanes(m) {
                            wp.pcs[lane] = if taken & (1 << lane) != 0 {
                                target
                            } else {
                                pc + 1
                            };
                        }
                        wp.gmask = 0;
                    }
                }
                Flow::Barrier(arrived) => {
                    wp.gpc = pc + 1;
                    for lane in Lanes(arrived) {
                        wp.pcs[lane] = pc + 1;
                    }
                    wp.gmask &= !arrived;
                    wp.running &= !arrived;
                    wp.waiting |= arrived;
                }
                Flow::Exit(exited) => {
                    wp.gpc = pc + 1;
                    wp.gmask &= !exited;
                    wp.running &= !exited;
                }
            }
        }
        Ok(n)
    }

    #[inline(always)]
    fn rbase(&self, w: usize) -> usize {
        w * self.nregs * 32
    }

    #[inline(always)]
    fn val(&self, w: usize, s: Src, lane: usize) -> u64 {
        match s {
            Src::Reg(r) => self.regs[(w * self.nregs + r as usize) * 32 + lane],
            Src::Imm(v) => v,
            Src::Sreg(sr) => self.sreg(sr, w, lane),
        }
    }

    #[inline(always)]
    fn set(&mut self, w: usize, r: u32, lane: usize, v: u64) {
        if r != NO_REG {
            let i = (w * self.nregs + r as usize) * 32 + lane;
            self.regs[i] = v;
        }
    }

    /// One operand for all 32 lanes (inactive lanes hold garbage).
    #[inline(always)]
    fn gather(&self, w: usize, s: Src, exec: u32) -> [u64; 32] {
        match s {
            Src::Reg(r) => {
                let i = (w * self.nregs + r as usize) * 32;
                let mut out = [0u64; 32];
                out.copy_from_slice(&self.regs[i..i + 32]);
                out
            }
            Src::Imm(v) => [v; 32],
            Src::Sreg(Sreg::Tid(d)) => {
                let mut out = [0u64; 32];
                let t = &self.tids[w * 32..w * 32 + 32];
                for (o, id) in out.iter_mut().zip(t) {
                    *o = id[(d as usize).min(2)] as u64;
                }
                out
            }
            Src::Sreg(Sreg::LaneId) => std::array::from_fn(|i| i as u64),
            Src::Sreg(sr) => {
                let mut out = [0u64; 32];
                for lane in Lanes(exec) {
                    out[lane] = self.sreg(sr, w, lane);
                }
                out
            }
        }
    }

    #[inline(always)]
    fn scatter(&mut self, w: usize, d: u32, exec: u32, v: &[u64; 32]) {
        if d == NO_REG {
            return;
        }
        let i = (w * self.nregs + d as usize) * 32;
        let dst = &mut self.regs[i..i + 32];
        if exec == u32::MAX {
            dst.copy_from_slice(v);
        } else {
            for lane in Lanes(exec) {
                dst[lane] = v[lane];
            }
        }
    }

    #[inline(always)]
    fn map1(&mut self, w: usize, exec: u32, d: u32, a: Src, f: impl Fn(u64) -> u64) {
        let x = self.gather(w, a, exec);
        let mut r = [0u64; 32];
        if exec == u32::MAX {
            for i in 0..32 {
                r[i] = f(x[i]);
            }
        } else {
            for lane in Lanes(exec) {
                r[lane] = f(x[lane]);
            }
        }
        self.scatter(w, d, exec, &r);
    }

    #[inline(always)]
    fn map2(&mut self, w: usize, exec: u32, d: u32, a: Src, b: Src, f: impl Fn(u64, u64) -> u64) {
        let x = self.gather(w, a, exec);
        let y = self.gather(w, b, exec);
        let mut r = [0u64; 32];
        if exec == u32::MAX {
            for i in 0..32 {
                r[i] = f(x[i], y[i]);
            }
        } else {
            for lane in Lanes(exec) {
                r[lane] = f(x[lane], y[lane]);
            }
        }
        self.scatter(w, d, exec, &r);
    }

    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn map3(
        &mut self,
        w: usize,
        exec: u32,
        d: u32,
        a: Src,
        b: Src,
        c: Src,
        f: impl Fn(u64, u64, u64) -> u64,
    ) {
        let x = self.gather(w, a, exec);
        let y = self.gather(w, b, exec);
        let z = self.gather(w, c, exec);
        let mut r = [0u64; 32];
        if exec == u32::MAX {
            for i in 0..32 {
                r[i] = f(x[i], y[i], z[i]);
            }
        } else {
            for lane in Lanes(exec) {
                r[lane] = f(x[lane], y[lane], z[lane]);
            }
        }
        self.scatter(w, d, exec, &r);
    }

    fn sreg(&self, s: Sreg, w: usize, lane: usize) -> u64 {
        let pick = |t: (u32, u32, u32), d: u8| -> u64 {
            (match d {
                0 => t.0,
                1 => t.1,
                _ => t.2,
            }) as u64
        };
        match s {
            Sreg::Tid(d) => pick(self.tid(w, lane), d),
            Sreg::Ntid(d) => pick(self.l.block, d),
            Sreg::Ctaid(d) => pick(self.ctaid, d),
            Sreg::Nctaid(d) => pick(self.l.grid, d),
            Sreg::LaneId => lane as u64,
            Sreg::WarpId => w as u64,
            Sreg::NWarpId => self.warps.len() as u64,
            Sreg::Clock => self.clock & 0xffff_ffff,
            Sreg::Clock64 => self.clock,
            Sreg::GridId => 1,
            Sreg::SmId => 0,
            Sreg::LanemaskEq => 1u64 << lane,
            Sreg::LanemaskLt => (1u64 << lane) - 1,
            Sreg::LanemaskLe => (1u64 << (lane + 1)) - 1,
            Sreg::LanemaskGt => (!((1u64 << (lane + 1)) - 1)) & 0xffff_ffff,
            Sreg::LanemaskGe => (!((1u64 << lane) - 1)) & 0xffff_ffff,
        }
    }

    fn addr_of(&self, w: usize, a: Addr, lane: usize) -> u64 {
        let b = match a.base {
            Some(r) => self.regs[(w * self.nregs + r as usize) * 32 + lane],
            None => 0,
        };
        b.wrapping_add(a.off as u64)
    }

    fn resolve(&self, space: Space, addr: u64) -> (Space, u64) {
        match space {
            Space::Generic => {
                if (SHARED_WINDOW..SHARED_WINDOW + WINDOW).contains(&addr) {
                    (Space::Shared, addr - SHARED_WINDOW)
                } else if (LOCAL_WINDOW..LOCAL_WINDOW + WINDOW).contains(&addr) {
                    (Space::Local, addr - LOCAL_WINDOW)
                } else {
                    (Space::Global, addr)
                }
            }
            Space::Const => (Space::Global, addr),
            s => (s, addr),
        }
    }

    fn global_index(&mut self, addr: u64, len: u64) -> Option<usize> {
        if let Some(a) = self.mem.allocs.get(self.alloc_hint) {
            if addr >= a.base && addr + len <= a.end() {
                return Some(self.alloc_hint);
            }
        }
        let i = self.mem.find(addr, len)?;
        self.alloc_hint = i;
        Some(i)
    }

    /// Every check for an `n`-byte load by one lane; returns where the bytes are.
    fn check_load(
        &mut self,
        w: usize,
        lane: usize,
        pc: u32,
        space: Space,
        addr: u64,
        n: usize,
    ) -> Result<(Region, usize)> {
        if !addr.is_multiple_of(n as u64) {
            return Err(self.fault(
                w,
                lane,
                pc,
                format!("misaligned {n}-byte {space:?} load at {addr:#x}"),
            ));
        }
        let (sp, a) = self.resolve(space, addr);
        match sp {
            Space::Global => {
                let i = match self.global_index(a, n as u64) {
                    Some(i) => i,
                    None => {
                        let d = self.mem.describe(a);
                        return Err(self.fault(
                            w,
                            lane,
                            pc,
                            format!("out-of-bounds global load of {n} bytes at {a:#x} ({d})"),
                        ));
                    }
                };
                let al = &self.mem.allocs[i];
                let off = (a - al.base) as usize;
                if !all_set(&al.init[off..off + n]) {
                    return Err(self.fault(
                        w,
                        lane,
                        pc,
                        format!(
                            "read of uninitialised global memory at {a:#x} (allocation {:#x}, offset {off})",
                            al.base
                        ),
                    ));
                }
                if let Some(p) = self.prof.as_deref_mut() {
                    p.global_load_bytes += n as u64;
                    self.acc[lane] = Some((a, n as u32));
                    self.acc_shared = false;
                }
                Ok((Region::Global(i), off))
            }
            Space::Shared => {
                let s = a as usize;
                if a > self.shared.len() as u64 || s + n > self.shared.len() {
                    return Err(self.fault(
                        w,
                        lane,
                        pc,
                        format!(
                            "out-of-bounds shared load of {n} bytes at offset {a:#x} (shared size {})",
                            self.shared.len()
                        ),
                    ));
                }
                if self.cp_any {
                    self.check_inflight(w, lane, pc, s, n, "read")?;
                }
                let line = self.code[pc as usize].line;
                for b in s..s + n {
                    let (race, uninit) = self.shadow.read(b, w as u32, line);
                    if let Some(r) = race {
                        return Err(self.fault(
                            w,
                            lane,
                            pc,
                            format!(
                                "shared-memory race at offset {b:#x}: read by warp {w}, written by warp {} at line {} with no barrier between",
                                r.other_warp, r.other_line
                            ),
                        ));
                    }
                    if uninit {
                        return Err(self.fault(
                            w,
                            lane,
                            pc,
                            format!("read of uninitialised shared memory at offset {b:#x}"),
                        ));
                    }
                }
                if let Some(p) = self.prof.as_deref_mut() {
                    p.shared_load_bytes += n as u64;
                    self.acc[lane] = Some((a, n as u32));
                    self.acc_shared = true;
                }
                Ok((Region::Shared, s))
            }
            Space::Local => {
                let lb = self.l.kernel.local_bytes as usize;
                if a as usize + n > lb || a > lb as u64 {
                    return Err(self.fault(
                        w,
                        lane,
                        pc,
                        format!("out-of-bounds local load of {n} bytes at offset {a:#x} (local size {lb})"),
                    ));
                }
                let base = (w * 32 + lane) * lb + a as usize;
                if !all_set(&self.local_init[base..base + n]) {
                    return Err(self.fault(
                        w,
                        lane,
                        pc,
                        format!("read of uninitialised local memory at offset {a:#x}"),
                    ));
                }
                if let Some(p) = self.prof.as_deref_mut() {
                    p.local_bytes += n as u64;
                }
                Ok((Region::Local, base))
            }
            Space::Param => {
                let pb = self.l.params.len();
                if a as usize + n > pb || a > pb as u64 {
                    return Err(self.fault(
                        w,
                        lane,
                        pc,
                        format!("out-of-bounds param load at offset {a} (params are {pb} bytes)"),
                    ));
                }
                Ok((Region::Param, a as usize))
            }
            Space::Const | Space::Generic => {
                Err(self.fault(w, lane, pc, format!("internal: unresolved {sp:?} address")))
            }
        }
    }

    /// Every check (and shadow update) for an `n`-byte store by one lane.
    fn check_store(
        &mut self,
        w: usize,
        lane: usize,
        pc: u32,
        space: Space,
        addr: u64,
        n: usize,
    ) -> Result<(Region, usize)> {
        if !addr.is_multiple_of(n as u64) {
            return Err(self.fault(
                w,
                lane,
                pc,
                format!("misaligned {n}-byte {space:?} store at {addr:#x}"),
            ));
        }
        let (sp, a) = self.resolve(space, addr);
        match sp {
            Space::Global => {
                let i = match self.global_index(a, n as u64) {
                    Some(i) => i,
                    None => {
                        let d = self.mem.describe(a);
                        return Err(self.fault(
                            w,
                            lane,
                            pc,
                            format!("out-of-bounds global store of {n} bytes at {a:#x} ({d})"),
                        ));
                    }
                };
                let al = &mut self.mem.allocs[i];
                let off = (a - al.base) as usize;
                al.init[off..off + n].fill(1);
                if let Some(p) = self.prof.as_deref_mut() {
                    p.global_store_bytes += n as u64;
                    self.acc[lane] = Some((a, n as u32));
                    self.acc_shared = false;
                }
                Ok((Region::Global(i), off))
            }
            Space::Shared => {
                let s = a as usize;
                if a > self.shared.len() as u64 || s + n > self.shared.len() {
                    return Err(self.fault(
                        w,
                        lane,
                        pc,
                        format!(
                            "out-of-bounds shared store of {n} bytes at offset {a:#x} (shared size {})",
                            self.shared.len()
                        ),
                    ));
                }
                if self.cp_any {
                    self.check_inflight(w, lane, pc, s, n, "written")?;
                }
                let line = self.code[pc as usize].line;
                for b in s..s + n {
                    if let Some(r) = self.shadow.write(b, w as u32, line) {
                        return Err(self.fault(
                            w,
                            lane,
                            pc,
                            format!(
                                "shared-memory race at offset {b:#x}: written by warp {w}, {} by warp {} at line {} with no barrier between",
                                if r.other_wrote { "written" } else { "read" },
                                r.other_warp,
                                r.other_line
                            ),
                        ));
                    }
                }
                if let Some(p) = self.prof.as_deref_mut() {
                    p.shared_store_bytes += n as u64;
                    self.acc[lane] = Some((a, n as u32));
                    self.acc_shared = true;
                }
                Ok((Region::Shared, s))
            }
            Space::Local => {
                let lb = self.l.kernel.local_bytes as usize;
                if a as usize + n > lb || a > lb as u64 {
                    return Err(self.fault(
                        w,
                        lane,
                        pc,
                        format!("out-of-bounds local store of {n} bytes at offset {a:#x} (local size {lb})"),
                    ));
                }
                let base = (w * 32 + lane) * lb + a as usize;
                self.local_init[base..base + n].fill(1);
                if let Some(p) = self.prof.as_deref_mut() {
                    p.local_bytes += n as u64;
                }
                Ok((Region::Local, base))
            }
            Space::Param => {
                Err(self.fault(w, lane, pc, "store to kernel parameter space".to_string()))
            }
            Space::Const | Space::Generic => {
                Err(self.fault(w, lane, pc, format!("internal: unresolved {sp:?} address")))
            }
        }
    }

    fn region(&self, r: Region) -> &[u8] {
        match r {
            Region::Global(i) => &self.mem.allocs[i].data,
            Region::Shared => &self.shared,
            Region::Local => &self.local,
            Region::Param => self.l.params,
        }
    }

    fn region_mut(&mut self, r: Region) -> &mut [u8] {
        match r {
            Region::Global(i) => &mut self.mem.allocs[i].data,
            Region::Shared => &mut self.shared,
            Region::Local => &mut self.local,
            Region::Param => &mut [],
        }
    }

    /// Read `buf.len()` bytes for one lane, with every check.
    fn load(
        &mut self,
        w: usize,
        lane: usize,
        pc: u32,
        space: Space,
        addr: u64,
        buf: &mut [u8],
    ) -> Result<()> {
        let (r, off) = self.check_load(w, lane, pc, space, addr, buf.len())?;
        buf.copy_from_slice(&self.region(r)[off..off + buf.len()]);
        Ok(())
    }

    fn store(
        &mut self,
        w: usize,
        lane: usize,
        pc: u32,
        space: Space,
        addr: u64,
        buf: &[u8],
    ) -> Result<()> {
        let (r, off) = self.check_store(w, lane, pc, space, addr, buf.len())?;
        self.region_mut(r)[off..off + buf.len()].copy_from_slice(buf);
        Ok(())
    }

    /// Per-lane byte offsets into the most recently used allocation when every active lane's
    /// access is aligned, in bounds of it and (for loads) initialised; `None` sends the
    /// instruction down the general path, which reports whatever is wrong.
    #[inline(always)]
    fn fast_offsets(
        &mut self,
        w: usize,
        exec: u32,
        total: u64,
        addr: Addr,
        load: bool,
    ) -> Option<[usize; 32]> {
        let base = match addr.base {
            Some(r) => self.gather(w, Src::Reg(r), exec),
            None => [0; 32],
        };
        // One allocation lookup per instruction (the first active lane's), then every lane
        // must fall inside that allocation.
        let first = base[exec.trailing_zeros() as usize & 31].wrapping_add(addr.off as u64);
        let idx = self.global_index(first, total)?;
        let al = &self.mem.allocs[idx];
        let (lo, hi) = (al.base, al.end());
        let mut offs = [0usize; 32];
        for lane in Lanes(exec) {
            let a = base[lane].wrapping_add(addr.off as u64);
            if a % total != 0 || a < lo || a + total > hi {
                return None;
            }
            let o = (a - lo) as usize;
            if load && !all_set(&al.init[o..o + total as usize]) {
                return None;
            }
            offs[lane] = o;
        }
        Some(offs)
    }

    fn ld_global_fast(
        &mut self,
        w: usize,
        exec: u32,
        ty: Ty,
        n: u8,
        ds: &[u32; 4],
        addr: Addr,
    ) -> bool {
        let es = ty.bytes() as usize;
        let nn = n as usize;
        let Some(offs) = self.fast_offsets(w, exec, (es * nn) as u64, addr, true) else {
            return false;
        };
        let (signed, bits) = (ty.signed(), ty.bits());
        let mut vals = [[0u64; 32]; 4];
        {
            let data = &self.mem.allocs[self.alloc_hint].data;
            for lane in Lanes(exec) {
                let row = &data[offs[lane]..offs[lane] + es * nn];
                for (k, v) in vals.iter_mut().enumerate().take(nn) {
                    v[lane] = read_le(&row[k * es..], es);
                }
            }
            if signed {
                for v in vals.iter_mut().take(nn) {
                    for x in v.iter_mut() {
                        *x = sx(*x, bits) as u64;
                    }
                }
            }
        }
        for (k, v) in vals.iter().enumerate().take(nn) {
            self.scatter(w, ds[k], exec, v);
        }
        true
    }

    fn st_global_fast(
        &mut self,
        w: usize,
        exec: u32,
        ty: Ty,
        n: u8,
        srcs: &[Src; 4],
        addr: Addr,
    ) -> bool {
        let es = ty.bytes() as usize;
        let nn = n as usize;
        let total = es * nn;
        let Some(offs) = self.fast_offsets(w, exec, total as u64, addr, false) else {
            return false;
        };
        let mut vals = [[0u64; 32]; 4];
        for (k, v) in vals.iter_mut().enumerate().take(nn) {
            *v = self.gather(w, srcs[k], exec);
        }
        let al = &mut self.mem.allocs[self.alloc_hint];
        for lane in Lanes(exec) {
            let o = offs[lane];
            for (k, v) in vals.iter().enumerate().take(nn) {
                write_le(&mut al.data[o + k * es..], es, v[lane]);
            }
            al.init[o..o + total].fill(1);
        }
        true
    }

    /// A shared access to bytes that a cp.async has not been waited for yet is a race with the
    /// copy (on hardware the bytes may not have arrived, or the copy may overwrite the store).
    fn check_inflight(
        &self,
        w: usize,
        lane: usize,
        pc: u32,
        s: usize,
        n: usize,
        what: &str,
    ) -> Result<()> {
        if let Some(k) = (s..s + n).find(|&b| self.shared_inflight[b] != 0) {
            return Err(self.fault(
                w,
                lane,
                pc,
                format!(
                    "shared memory at offset {k:#x} {what} while a cp.async into it is still in flight (missing cp.async.wait_group/wait_all before the barrier?)"
                ),
            ));
        }
        Ok(())
    }

    /// Fold the per-lane accesses of one memory instruction into the counters.
    fn account(&mut self, space: Space) {
        if self.prof.is_none() {
            return;
        }
        let acc = std::mem::take(&mut self.acc);
        let _ = space;
        if acc.iter().all(|x| x.is_none()) {
            return;
        }
        let shared = self.acc_shared;
        let Some(p) = self.prof.as_deref_mut() else {
            return;
        };
        if shared {
            p.bank_conflicts += counters::bank_conflicts(&acc);
        } else {
            let v: Vec<(u64, u32)> = acc.iter().flatten().copied().collect();
            let (s, ideal) = counters::global_sectors(&v);
            p.global_sectors += s;
            p.global_sectors_ideal += ideal;
        }
    }

    fn check_collective(&self, w: usize, pc: u32, exec: u32, mask: u64, what: &str) -> Result<()> {
        if mask as u32 != exec {
            let lane = exec.trailing_zeros() as usize;
            return Err(self.fault(
                w,
                lane,
                pc,
                format!(
                    "{what}: membermask {mask:#010x} but the lanes executing it are {exec:#010x}"
                ),
            ));
        }
        Ok(())
    }

    fn exec(&mut self, w: usize, pc: u32, exec: u32) -> Result<Flow> {
        let code = self.code;
        let ins = &code[pc as usize];
        let rb = self.rbase(w);
        let _ = rb;
        match &ins.op {
            Op::Mov { ty, d, a } => {
                let m = if *ty == Ty::Pred {
                    u64::MAX
                } else {
                    mask(ty.bits())
                };
                self.map1(w, exec, *d, *a, |x| x & m);
            }
            Op::Pack { d, parts, bits } => {
                for lane in Lanes(exec) {
                    let mut v = 0u64;
                    for (k, p) in parts.iter().enumerate() {
                        v |= zx(self.val(w, *p, lane), *bits) << (k as u32 * bits);
                    }
                    self.set(w, *d, lane, v);
                }
            }
            Op::Unpack { ds, a, bits } => {
                for lane in Lanes(exec) {
                    let v = self.val(w, *a, lane);
                    for (k, d) in ds.iter().enumerate() {
                        self.set(w, *d, lane, zx(v >> (k as u32 * bits), *bits));
                    }
                }
            }
            Op::Int2 { op, ty, d, a, b } => {
                let (op, ty, d, a, b) = (*op, *ty, *d, *a, *b);
                let m = mask(ty.bits());
                // The most frequent integer ops get their own loops; the rest share int2().
                match (op, ty.signed()) {
                    (IBin::Add, _) => self.map2(w, exec, d, a, b, |x, y| x.wrapping_add(y) & m),
                    (IBin::Sub, _) => self.map2(w, exec, d, a, b, |x, y| x.wrapping_sub(y) & m),
                    (IBin::MulLo, _) => self.map2(w, exec, d, a, b, |x, y| x.wrapping_mul(y) & m),
                    (IBin::And, _) => self.map2(w, exec, d, a, b, |x, y| x & y & m),
                    (IBin::Or, _) => self.map2(w, exec, d, a, b, |x, y| (x | y) & m),
                    (IBin::Xor, _) => self.map2(w, exec, d, a, b, |x, y| (x ^ y) & m),
                    (IBin::Shr, false) => {
                        let bits = ty.bits() as u64;
                        self.map2(w, exec, d, a, b, |x, y| {
                            let n = y & 0xffff_ffff;
                            if n >= bits {
                                0
                            } else {
                                (x & m) >> n
                            }
                        })
                    }
                    (IBin::Shl, _) => {
                        let bits = ty.bits() as u64;
                        self.map2(w, exec, d, a, b, |x, y| {
                            let n = y & 0xffff_ffff;
                            if n >= bits {
                                0
                            } else {
                                (x << n) & m
                            }
                        })
                    }
                    (IBin::MulWide, _) => {
                        self.map2(w, exec, d, a, b, |x, y| int2(IBin::MulWide, ty, x, y))
                    }
                    _ => self.map2(w, exec, d, a, b, |x, y| int2(op, ty, x, y)),
                }
            }
            Op::Int1 { op, ty, d, a } => {
                let (op, ty) = (*op, *ty);
                self.map1(w, exec, *d, *a, |x| int1(op, ty, x));
            }
            Op::Mad {
                mode,
                ty,
                d,
                a,
                b,
                c,
            } => {
                let (ty, bits) = (*ty, ty.bits());
                match mode {
                    MadMode::Lo => {
                        let m = mask(bits);
                        self.map3(w, exec, *d, *a, *b, *c, |x, y, z| {
                            x.wrapping_mul(y).wrapping_add(z) & m
                        })
                    }
                    MadMode::Hi => self.map3(w, exec, *d, *a, *b, *c, |x, y, z| {
                        zx(int2(IBin::MulHi, ty, x, y).wrapping_add(z), bits)
                    }),
                    MadMode::Wide => self.map3(w, exec, *d, *a, *b, *c, |x, y, z| {
                        zx(int2(IBin::MulWide, ty, x, y).wrapping_add(z), bits * 2)
                    }),
                }
            }
            Op::F2 {
                op,
                ty,
                sat,
                d,
                a,
                b,
            } => {
                let (op, ty, sat) = (*op, *ty, *sat);
                let f = |x: u64| f32::from_bits(x as u32);
                let t = |x: f32| x.to_bits() as u64;
                match (op, ty, sat) {
                    (FBin::Add, Ty::F32, false) => {
                        self.map2(w, exec, *d, *a, *b, |x, y| t(f(x) + f(y)))
                    }
                    (FBin::Mul, Ty::F32, false) => {
                        self.map2(w, exec, *d, *a, *b, |x, y| t(f(x) * f(y)))
                    }
                    (FBin::Sub, Ty::F32, false) => {
                        self.map2(w, exec, *d, *a, *b, |x, y| t(f(x) - f(y)))
                    }
                    (FBin::Max, Ty::F32, false) => {
                        self.map2(w, exec, *d, *a, *b, |x, y| t(f(x).max(f(y))))
                    }
                    _ => self.map2(w, exec, *d, *a, *b, |x, y| fbin(op, ty, sat, x, y)),
                }
            }
            Op::F1 { op, ty, d, a } => {
                let (op, ty) = (*op, *ty);
                self.map1(w, exec, *d, *a, |x| fun(op, ty, x));
            }
            Op::Fma {
                ty,
                sat,
                d,
                a,
                b,
                c,
            } => {
                let (ty, sat) = (*ty, *sat);
                if ty == Ty::F32 && !sat {
                    let f = |v: u64| f32::from_bits(v as u32);
                    self.map3(w, exec, *d, *a, *b, *c, |x, y, z| {
                        f(x).mul_add(f(y), f(z)).to_bits() as u64
                    });
                } else {
                    self.map3(w, exec, *d, *a, *b, *c, |x, y, z| ffma(ty, sat, x, y, z));
                }
            }
            Op::Selp { ty, d, a, b, c } => {
                let m = mask(ty.bits());
                self.map3(
                    w,
                    exec,
                    *d,
                    *a,
                    *b,
                    *c,
                    |x, y, p| if p != 0 { x & m } else { y & m },
                );
            }
            Op::Setp {
                cmp,
                ty,
                d,
                d2,
                a,
                b,
                comb,
            } => {
                let x = self.gather(w, *a, exec);
                let y = self.gather(w, *b, exec);
                let c = match comb {
                    Some((_, c, _)) => self.gather(w, *c, exec),
                    None => [0; 32],
                };
                let codes = order_codes(*ty, *cmp, exec, &x, &y);
                let table = cmp_table(*cmp);
                let (mut p, mut q) = ([0u64; 32], [0u64; 32]);
                for lane in Lanes(exec) {
                    let r = table[codes[lane] as usize];
                    let (pv, qv) = match comb {
                        None => (r, !r),
                        Some((op, _, neg)) => {
                            let cv = (c[lane] != 0) != *neg;
                            let f = |v: bool| match op {
                                BoolOp::And => v && cv,
                                BoolOp::Or => v || cv,
                                BoolOp::Xor => v != cv,
                            };
                            (f(r), f(!r))
                        }
                    };
                    p[lane] = pv as u64;
                    q[lane] = qv as u64;
                }
                self.scatter(w, *d, exec, &p);
                self.scatter(w, *d2, exec, &q);
            }
            Op::Cvt {
                dty,
                sty,
                rnd,
                sat,
                d,
                a,
            } => {
                let (dty, sty, rnd, sat) = (*dty, *sty, *rnd, *sat);
                self.map1(w, exec, *d, *a, |x| cvt(dty, sty, rnd, sat, x));
            }
            Op::CvtPack { dty, relu, d, a, b } => {
                for lane in Lanes(exec) {
                    let mut hi = f32::from_bits(self.val(w, *a, lane) as u32);
                    let mut lo = f32::from_bits(self.val(w, *b, lane) as u32);
                    if *relu {
                        hi = if hi.is_nan() { hi } else { hi.max(0.0) };
                        lo = if lo.is_nan() { lo } else { lo.max(0.0) };
                    }
                    let (h, l) = if *dty == Ty::BF16x2 {
                        (f32_to_bf16(hi), f32_to_bf16(lo))
                    } else {
                        (f32_to_f16(hi), f32_to_f16(lo))
                    };
                    self.set(w, *d, lane, ((h as u64) << 16) | l as u64);
                }
            }
            Op::Prmt { d, a, b, c } => {
                for lane in Lanes(exec) {
                    let x = (self.val(w, *b, lane) << 32) | zx(self.val(w, *a, lane), 32);
                    let sel = self.val(w, *c, lane);
                    let mut r = 0u64;
                    for k in 0..4 {
                        let s = (sel >> (4 * k)) & 0xf;
                        let byte = (x >> ((s & 7) * 8)) & 0xff;
                        let byte = if s & 8 != 0 {
                            if byte & 0x80 != 0 {
                                0xff
                            } else {
                                0
                            }
                        } else {
                            byte
                        };
                        r |= byte << (8 * k);
                    }
                    self.set(w, *d, lane, r);
                }
            }
            Op::Bfe { ty, d, a, b, c } => {
                for lane in Lanes(exec) {
                    let bits = ty.bits();
                    let x = self.val(w, *a, lane);
                    let pos = (self.val(w, *b, lane) & 0xff) as u32;
                    let len = (self.val(w, *c, lane) & 0xff) as u32;
                    let sbit = if ty.signed() {
                        if len == 0 {
                            false
                        } else {
                            (x >> (pos + len - 1).min(bits - 1)) & 1 != 0
                        }
                    } else {
                        false
                    };
                    let mut r = 0u64;
                    for i in 0..bits {
                        let bit = if i < len && pos + i < bits {
                            (x >> (pos + i)) & 1 != 0
                        } else {
                            sbit
                        };
                        r |= (bit as u64) << i;
                    }
                    self.set(w, *d, lane, r);
                }
            }
            Op::Bfi { ty, d, f, b, c, e } => {
                for lane in Lanes(exec) {
                    let bits = ty.bits();
                    let fv = self.val(w, *f, lane);
                    let mut r = zx(self.val(w, *b, lane), bits);
                    let pos = (self.val(w, *c, lane) & 0xff) as u32;
                    let len = (self.val(w, *e, lane) & 0xff) as u32;
                    for i in 0..len {
                        if pos + i >= bits {
                            break;
                        }
                        r = (r & !(1u64 << (pos + i))) | (((fv >> i) & 1) << (pos + i));
                    }
                    self.set(w, *d, lane, r);
                }
            }
            Op::Ld {
                space,
                ty,
                n,
                ds,
                addr,
            } => {
                if *space == Space::Param && addr.base.is_none() {
                    // Kernel parameters: one address for the whole warp.
                    let es = ty.bytes() as usize;
                    let (a, total) = (addr.off as usize, es * *n as usize);
                    let lane = exec.trailing_zeros() as usize;
                    if addr.off < 0 || a + total > self.l.params.len() || a % total != 0 {
                        return Err(self.fault(
                            w,
                            lane,
                            pc,
                            format!(
                                "bad param load at offset {} (params are {} bytes)",
                                addr.off,
                                self.l.params.len()
                            ),
                        ));
                    }
                    for (k, &dk) in ds.iter().enumerate().take(*n as usize) {
                        let mut v = read_le(&self.l.params[a + k * es..], es);
                        if ty.signed() {
                            v = sx(v, ty.bits()) as u64;
                        }
                        self.scatter(w, dk, exec, &[v; 32]);
                    }
                    return Ok(Flow::Next);
                }
                if self.prof.is_none()
                    && matches!(space, Space::Global | Space::Generic | Space::Const)
                    && self.ld_global_fast(w, exec, *ty, *n, ds, *addr)
                {
                    return Ok(Flow::Next);
                }
                let es = ty.bytes() as usize;
                let nn = *n as usize;
                let total = es * nn;
                let (signed, bits) = (ty.signed(), ty.bits());
                for lane in Lanes(exec) {
                    let a = self.addr_of(w, *addr, lane);
                    let (r, off) = self.check_load(w, lane, pc, *space, a, total)?;
                    let mut vals = [0u64; 4];
                    {
                        let bytes = &self.region(r)[off..off + total];
                        for (k, v) in vals.iter_mut().enumerate().take(nn) {
                            let x = read_le(&bytes[k * es..], es);
                            *v = if signed { sx(x, bits) as u64 } else { x };
                        }
                    }
                    for (k, v) in vals.iter().enumerate().take(nn) {
                        self.set(w, ds[k], lane, *v);
                    }
                }
                self.account(*space);
            }
            Op::St {
                space,
                ty,
                n,
                srcs,
                addr,
            } => {
                if self.prof.is_none()
                    && matches!(space, Space::Global | Space::Generic)
                    && self.st_global_fast(w, exec, *ty, *n, srcs, *addr)
                {
                    return Ok(Flow::Next);
                }
                let es = ty.bytes() as usize;
                let nn = *n as usize;
                let total = es * nn;
                for lane in Lanes(exec) {
                    let a = self.addr_of(w, *addr, lane);
                    let mut vals = [0u64; 4];
                    for (k, v) in vals.iter_mut().enumerate().take(nn) {
                        *v = self.val(w, srcs[k], lane);
                    }
                    let (r, off) = self.check_store(w, lane, pc, *space, a, total)?;
                    let bytes = &mut self.region_mut(r)[off..off + total];
                    for (k, v) in vals.iter().enumerate().take(nn) {
                        write_le(&mut bytes[k * es..], es, *v);
                    }
                }
                self.account(*space);
            }
            Op::Atom {
                space,
                op,
                ty,
                d,
                addr,
                b,
                c,
            } => {
                for lane in Lanes(exec) {
                    let a = self.addr_of(w, *addr, lane);
                    self.atomic(w, lane, pc, *space, a, *op, *ty, *d, *b, *c)?;
                }
                self.acc = [None; 32];
            }
            Op::CpAsync {
                dst,
                src,
                size,
                src_size,
            } => {
                let n = *size as usize;
                for lane in Lanes(exec) {
                    let da = self.addr_of(w, *dst, lane);
                    let sa = self.addr_of(w, *src, lane);
                    let ss = match src_size {
                        Some(s) => self.val(w, *s, lane) as usize,
                        None => n,
                    };
                    if ss > n {
                        return Err(self.fault(
                            w,
                            lane,
                            pc,
                            format!("cp.async src-size {ss} exceeds cp-size {n}"),
                        ));
                    }
                    let mut buf = [0u8; 16];
                    if ss > 0 {
                        if !sa.is_multiple_of(n as u64) {
                            return Err(self.fault(
                                w,
                                lane,
                                pc,
                                format!("misaligned {n}-byte cp.async source at {sa:#x}"),
                            ));
                        }
                        if ss == n {
                            self.load(w, lane, pc, Space::Global, sa, &mut buf[..n])?;
                        } else {
                            self.load_unaligned(w, lane, pc, sa, &mut buf[..ss])?;
                        }
                    }
                    self.store(w, lane, pc, Space::Shared, da, &buf[..n])?;
                    // The destination (resolved to a shared offset) is in flight until waited.
                    let (_, off) = self.resolve(Space::Shared, da);
                    let t = w * 32 + lane;
                    self.cp_pending[t].push((self.cp_group[t], off as u32, n as u32));
                    for b in off as usize..off as usize + n {
                        self.shared_inflight[b] = self.shared_inflight[b].saturating_add(1);
                    }
                    self.cp_any = true;
                }
                self.acc = [None; 32];
            }
            Op::Cvta { to, space, d, a } => {
                for lane in Lanes(exec) {
                    let x = self.val(w, *a, lane);
                    let v = match (space, to) {
                        (Space::Shared, false) => x.wrapping_add(SHARED_WINDOW),
                        (Space::Shared, true) => x.wrapping_sub(SHARED_WINDOW),
                        (Space::Local, false) => x.wrapping_add(LOCAL_WINDOW),
                        (Space::Local, true) => x.wrapping_sub(LOCAL_WINDOW),
                        _ => x,
                    };
                    self.set(w, *d, lane, v);
                }
            }
            Op::Bra { target } => return Ok(Flow::Jump(*target, exec)),
            Op::Bar { id, .. } => {
                let lane = exec.trailing_zeros() as usize;
                let idv = self.val(w, *id, lane);
                match self.bar {
                    None => self.bar = Some((pc, idv)),
                    Some((bpc, bid)) if bpc != pc || bid != idv => {
                        let other = code[bpc as usize].line;
                        return Err(self.fault(
                            w,
                            lane,
                            pc,
                            format!(
                                "deadlock: threads wait at different barriers (line {other} and line {}); a barrier inside divergent code",
                                ins.line
                            ),
                        ));
                    }
                    Some(_) => {}
                }
                return Ok(Flow::Barrier(exec));
            }
            Op::Shfl {
                mode,
                d,
                p,
                a,
                b,
                c,
                mask,
            } => {
                let lane0 = exec.trailing_zeros() as usize;
                let mm = self.val(w, *mask, lane0);
                self.check_collective(w, pc, exec, mm, "shfl.sync")?;
                let vals = self.gather(w, *a, exec);
                let bs = self.gather(w, *b, exec);
                let cs = self.gather(w, *c, exec);
                let (mut out, mut pout) = ([0u64; 32], [0u64; 32]);
                for lane in Lanes(exec) {
                    let bval = (bs[lane] & 0x1f) as i32;
                    let cv = cs[lane] as u32;
                    let cval = (cv & 0x1f) as i32;
                    let seg = ((cv >> 8) & 0x1f) as i32;
                    let l = lane as i32;
                    let max_lane = (l & seg) | (cval & !seg);
                    let min_lane = l & seg;
                    let (j, pval) = match mode {
                        ShflMode::Up => (l - bval, l - bval >= max_lane),
                        ShflMode::Down => (l + bval, l + bval <= max_lane),
                        ShflMode::Bfly => (l ^ bval, (l ^ bval) <= max_lane),
                        ShflMode::Idx => {
                            let j = min_lane | (bval & !seg);
                            (j, j <= max_lane)
                        }
                    };
                    let j = if pval { j as usize } else { lane };
                    if j >= 32 || exec & (1 << j) == 0 {
                        return Err(self.fault(
                            w,
                            lane,
                            pc,
                            format!("shfl.sync reads lane {j}, which is not executing it"),
                        ));
                    }
                    out[lane] = vals[j] & 0xffff_ffff;
                    pout[lane] = pval as u64;
                }
                self.scatter(w, *d, exec, &out);
                self.scatter(w, *p, exec, &pout);
            }
            Op::Vote {
                mode,
                d,
                a,
                neg,
                mask,
            } => {
                let lane0 = exec.trailing_zeros() as usize;
                let mm = self.val(w, *mask, lane0);
                self.check_collective(w, pc, exec, mm, "vote.sync")?;
                let mut ballot = 0u32;
                for lane in Lanes(exec) {
                    if (self.val(w, *a, lane) != 0) != *neg {
                        ballot |= 1 << lane;
                    }
                }
                let v = match mode {
                    VoteMode::Ballot => ballot as u64,
                    VoteMode::All => (ballot == exec) as u64,
                    VoteMode::Any => (ballot != 0) as u64,
                    VoteMode::Uni => (ballot == exec || ballot == 0) as u64,
                };
                for lane in Lanes(exec) {
                    self.set(w, *d, lane, v);
                }
            }
            Op::Redux { op, ty, d, a, mask } => {
                let lane0 = exec.trailing_zeros() as usize;
                let mm = self.val(w, *mask, lane0);
                self.check_collective(w, pc, exec, mm, "redux.sync")?;
                let mut acc: Option<u64> = None;
                for lane in Lanes(exec) {
                    let x = zx(self.val(w, *a, lane), 32);
                    acc = Some(match acc {
                        None => x,
                        Some(y) => match op {
                            ReduxOp::Add => zx(x.wrapping_add(y), 32),
                            ReduxOp::And => x & y,
                            ReduxOp::Or => x | y,
                            ReduxOp::Xor => x ^ y,
                            ReduxOp::Min | ReduxOp::Max => {
                                let less = if ty.signed() {
                                    sx(x, 32) < sx(y, 32)
                                } else {
                                    x < y
                                };
                                if (*op == ReduxOp::Min) == less {
                                    x
                                } else {
                                    y
                                }
                            }
                        },
                    });
                }
                let v = acc.unwrap_or(0);
                for lane in Lanes(exec) {
                    self.set(w, *d, lane, v);
                }
            }
            Op::Mma { bf16, d, a, b, c } => {
                self.check_collective(w, pc, exec, 0xffff_ffff, "mma.sync (needs the full warp)")?;
                self.mma(w, *bf16, d, a, b, c);
            }
            Op::Ldmatrix {
                num,
                trans,
                space,
                ds,
                addr,
            } => {
                self.check_collective(w, pc, exec, 0xffff_ffff, "ldmatrix (needs the full warp)")?;
                self.ldmatrix(w, pc, *num, *trans, *space, ds, *addr)?;
            }
            Op::CpCommit => {
                for lane in Lanes(exec) {
                    self.cp_group[w * 32 + lane] += 1;
                }
            }
            Op::CpWait { keep } => {
                for lane in Lanes(exec) {
                    let t = w * 32 + lane;
                    // Groups numbered below `done` are complete; wait_all also completes the
                    // copies not yet committed.
                    let done = match keep {
                        Some(k) => self.cp_group[t].saturating_sub(*k),
                        None => u32::MAX,
                    };
                    let pending = std::mem::take(&mut self.cp_pending[t]);
                    let mut still = Vec::new();
                    for (g, off, n) in pending {
                        if g < done {
                            for b in off as usize..(off + n) as usize {
                                self.shared_inflight[b] = self.shared_inflight[b].saturating_sub(1);
                            }
                        } else {
                            still.push((g, off, n));
                        }
                    }
                    self.cp_pending[t] = still;
                }
            }
            Op::Nop => {}
            Op::Ret | Op::Exit => return Ok(Flow::Exit(exec)),
        }
        Ok(Flow::Next)
    }

    /// Byte-wise global read for a cp.async whose src-size is not a power of two.
    fn load_unaligned(
        &mut self,
        w: usize,
        lane: usize,
        pc: u32,
        a: u64,
        buf: &mut [u8],
    ) -> Result<()> {
        for (k, b) in buf.iter_mut().enumerate() {
            let mut one = [0u8; 1];
            self.load(w, lane, pc, Space::Global, a + k as u64, &mut one)?;
            *b = one[0];
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn atomic(
        &mut self,
        w: usize,
        lane: usize,
        pc: u32,
        space: Space,
        addr: u64,
        op: AtomOp,
        ty: Ty,
        d: u32,
        b: Src,
        c: Src,
    ) -> Result<()> {
        let n = ty.bytes() as usize;
        if !addr.is_multiple_of(n as u64) {
            return Err(self.fault(
                w,
                lane,
                pc,
                format!("misaligned {n}-byte atomic at {addr:#x}"),
            ));
        }
        let (sp, a) = self.resolve(space, addr);
        let bv = self.val(w, b, lane);
        let cv = self.val(w, c, lane);
        let (slice, uninit): (&mut [u8], bool) = match sp {
            Space::Global => {
                let i = match self.global_index(a, n as u64) {
                    Some(i) => i,
                    None => {
                        let dsc = self.mem.describe(a);
                        return Err(self.fault(
                            w,
                            lane,
                            pc,
                            format!("out-of-bounds global atomic of {n} bytes at {a:#x} ({dsc})"),
                        ));
                    }
                };
                let al = &mut self.mem.allocs[i];
                let off = (a - al.base) as usize;
                let un = al.init[off..off + n].contains(&0);
                al.init[off..off + n].fill(1);
                (&mut al.data[off..off + n], un)
            }
            Space::Shared => {
                let s = a as usize;
                if a > self.shared.len() as u64 || s + n > self.shared.len() {
                    return Err(self.fault(
                        w,
                        lane,
                        pc,
                        format!("out-of-bounds shared atomic at offset {a:#x}"),
                    ));
                }
                let mut un = false;
                for k in s..s + n {
                    un |= self.shadow.atomic(k);
                }
                (&mut self.shared[s..s + n], un)
            }
            _ => {
                return Err(self.fault(
                    w,
                    lane,
                    pc,
                    format!("atomic on {sp:?} memory is not supported"),
                ))
            }
        };
        let mut raw = [0u8; 8];
        raw[..n].copy_from_slice(slice);
        let old = u64::from_le_bytes(raw);
        let bits = ty.bits();
        let new = match op {
            AtomOp::Add => match ty {
                Ty::F32 => {
                    (f32::from_bits(old as u32) + f32::from_bits(bv as u32)).to_bits() as u64
                }
                Ty::F64 => (f64::from_bits(old) + f64::from_bits(bv)).to_bits(),
                _ => zx(old.wrapping_add(bv), bits),
            },
            AtomOp::Min | AtomOp::Max => {
                let less = match ty {
                    Ty::F32 => f32::from_bits(bv as u32) < f32::from_bits(old as u32),
                    _ if ty.signed() => sx(bv, bits) < sx(old, bits),
                    _ => zx(bv, bits) < old,
                };
                if (op == AtomOp::Min) == less {
                    zx(bv, bits)
                } else {
                    old
                }
            }
            AtomOp::Inc => {
                if old >= zx(bv, bits) {
                    0
                } else {
                    old + 1
                }
            }
            AtomOp::Dec => {
                if old == 0 || old > zx(bv, bits) {
                    zx(bv, bits)
                } else {
                    old - 1
                }
            }
            AtomOp::Cas => {
                if old == zx(bv, bits) {
                    zx(cv, bits)
                } else {
                    old
                }
            }
            AtomOp::Exch => zx(bv, bits),
            AtomOp::And => old & bv,
            AtomOp::Or => old | zx(bv, bits),
            AtomOp::Xor => old ^ zx(bv, bits),
        };
        slice.copy_from_slice(&new.to_le_bytes()[..n]);
        if uninit {
            return Err(self.fault(
                w,
                lane,
                pc,
                format!("atomic on uninitialised {sp:?} memory at {a:#x}"),
            ));
        }
        if let Some(p) = self.prof.as_deref_mut() {
            match sp {
                Space::Shared => {
                    p.shared_load_bytes += n as u64;
                    p.shared_store_bytes += n as u64;
                }
                _ => {
                    p.global_load_bytes += n as u64;
                    p.global_store_bytes += n as u64;
                }
            }
        }
        if d != NO_REG {
            let v = if ty.signed() {
                sx(old, bits) as u64
            } else {
                old
            };
            self.set(w, d, lane, v);
        }
        Ok(())
    }

    /// mma.sync.aligned.m16n8k16.row.col.f32.{bf16,f16}.{bf16,f16}.f32 with the PTX ISA fragment
    /// layouts (groupID = lane / 4, t = lane % 4).
    fn mma(&mut self, w: usize, bf: bool, d: &[u32; 4], a: &[Src; 4], b: &[Src; 2], c: &[Src; 4]) {
        let h = |x: u64| -> f32 {
            if bf {
                bf16::from_bits(x as u16).to_f32()
            } else {
                f16::from_bits(x as u16).to_f32()
            }
        };
        let mut am = [[0f32; 16]; 16];
        let mut bm = [[0f32; 8]; 16];
        let mut cm = [[0f32; 8]; 16];
        for lane in 0..32 {
            let g = lane / 4;
            let t = lane % 4;
            for (i, src) in a.iter().enumerate() {
                let v = self.val(w, *src, lane);
                let row = g + if i & 1 == 1 { 8 } else { 0 };
                let col = t * 2 + if i >= 2 { 8 } else { 0 };
                am[row][col] = h(v);
                am[row][col + 1] = h(v >> 16);
            }
            for (i, src) in b.iter().enumerate() {
                let v = self.val(w, *src, lane);
                let row = t * 2 + if i == 1 { 8 } else { 0 };
                bm[row][g] = h(v);
                bm[row + 1][g] = h(v >> 16);
            }
            for (i, src) in c.iter().enumerate() {
                let v = self.val(w, *src, lane);
                let row = g + if i >= 2 { 8 } else { 0 };
                cm[row][t * 2 + (i & 1)] = f32::from_bits(v as u32);
            }
        }
        let mut out = [[0f32; 8]; 16];
        for (i, row) in out.iter_mut().enumerate() {
            for (j, o) in row.iter_mut().enumerate() {
                let mut s = 0f32;
                for k in 0..16 {
                    s = am[i][k].mul_add(bm[k][j], s);
                }
                *o = s + cm[i][j];
            }
        }
        for lane in 0..32 {
            let g = lane / 4;
            let t = lane % 4;
            for (i, dr) in d.iter().enumerate() {
                let row = g + if i >= 2 { 8 } else { 0 };
                let v = out[row][t * 2 + (i & 1)].to_bits() as u64;
                self.set(w, *dr, lane, v);
            }
        }
    }

    #[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
    fn ldmatrix(
        &mut self,
        w: usize,
        pc: u32,
        num: u8,
        trans: bool,
        space: Space,
        ds: &[u32; 4],
        addr: Addr,
    ) -> Result<()> {
        // m[mat][row][col], 16-bit elements; lanes 8*mat .. 8*mat+7 supply the row addresses.
        let mut m = [[[0u16; 8]; 8]; 4];
        for mat in 0..num as usize {
            for row in 0..8 {
                let lane = mat * 8 + row;
                let a = self.addr_of(w, addr, lane);
                let sp = if space == Space::Generic {
                    Space::Generic
                } else {
                    Space::Shared
                };
                let mut buf = [0u8; 16];
                self.load(w, lane, pc, sp, a, &mut buf)?;
                for col in 0..8 {
                    m[mat][row][col] = u16::from_le_bytes([buf[2 * col], buf[2 * col + 1]]);
                }
            }
        }
        self.account(Space::Shared);
        for lane in 0..32 {
            let (r, c) = (lane / 4, 2 * (lane % 4));
            for mat in 0..num as usize {
                let (lo, hi) = if trans {
                    (m[mat][c][r], m[mat][c + 1][r])
                } else {
                    (m[mat][r][c], m[mat][r][c + 1])
                };
                self.set(w, ds[mat], lane, lo as u64 | (hi as u64) << 16);
            }
        }
        Ok(())
    }
}

#[derive(Clone, Copy)]
enum Region {
    Global(usize),
    Shared,
    Local,
    Param,
}

/// All shadow bytes set (the init shadow holds 0 or 1 per byte).
#[inline(always)]
fn all_set(s: &[u8]) -> bool {
    match s.len() {
        4 => u32::from_ne_bytes([s[0], s[1], s[2], s[3]]) == 0x0101_0101,
        8 => {
            u64::from_ne_bytes([s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]])
                == 0x0101_0101_0101_0101
        }
        _ => s.iter().all(|&b| b != 0),
    }
}

/// The little-endian value of the first `es` bytes of `s` (callers pass slices that are long
/// enough; a short one reads as 0).
#[inline(always)]
fn read_le(s: &[u8], es: usize) -> u64 {
    match es {
        1 => s.first().map_or(0, |b| *b as u64),
        2 => s
            .get(..2)
            .and_then(|b| <[u8; 2]>::try_from(b).ok())
            .map_or(0, |b| u16::from_le_bytes(b) as u64),
        4 => s
            .get(..4)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map_or(0, |b| u32::from_le_bytes(b) as u64),
        _ => s
            .get(..8)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map_or(0, u64::from_le_bytes),
    }
}

#[inline(always)]
fn write_le(s: &mut [u8], es: usize, v: u64) {
    match es {
        1 => s[0] = v as u8,
        2 => s[..2].copy_from_slice(&(v as u16).to_le_bytes()),
        4 => s[..4].copy_from_slice(&(v as u32).to_le_bytes()),
        _ => s[..8].copy_from_slice(&v.to_le_bytes()),
    }
}

// ---------------------------------------------------------------------------------------------
// Scalar semantics.

fn int2(op: IBin, ty: Ty, a: u64, b: u64) -> u64 {
    let bits = ty.bits();
    let s = ty.signed();
    match op {
        IBin::Add => zx(a.wrapping_add(b), bits),
        IBin::Sub => zx(a.wrapping_sub(b), bits),
        IBin::MulLo => zx(a.wrapping_mul(b), bits),
        IBin::MulHi => {
            if s {
                zx(
                    ((sx(a, bits) as i128 * sx(b, bits) as i128) >> bits) as u64,
                    bits,
                )
            } else {
                zx(
                    ((zx(a, bits) as u128 * zx(b, bits) as u128) >> bits) as u64,
                    bits,
                )
            }
        }
        IBin::MulWide => {
            if s {
                zx((sx(a, bits) as i128 * sx(b, bits) as i128) as u64, bits * 2)
            } else {
                zx((zx(a, bits) as u128 * zx(b, bits) as u128) as u64, bits * 2)
            }
        }
        IBin::Div | IBin::Rem => {
            if zx(b, bits) == 0 {
                // Undefined in PTX; hardware gives all ones for the quotient.
                return if op == IBin::Div {
                    mask(bits)
                } else {
                    zx(a, bits)
                };
            }
            if s {
                let (x, y) = (sx(a, bits), sx(b, bits));
                zx(
                    if op == IBin::Div {
                        x.wrapping_div(y)
                    } else {
                        x.wrapping_rem(y)
                    } as u64,
                    bits,
                )
            } else {
                let (x, y) = (zx(a, bits), zx(b, bits));
                if op == IBin::Div {
                    x / y
                } else {
                    x % y
                }
            }
        }
        IBin::Min | IBin::Max => {
            let less = if s {
                sx(a, bits) < sx(b, bits)
            } else {
                zx(a, bits) < zx(b, bits)
            };
            zx(if (op == IBin::Min) == less { a } else { b }, bits)
        }
        IBin::And => zx(a & b, bits),
        IBin::Or => zx(a | b, bits),
        IBin::Xor => zx(a ^ b, bits),
        IBin::Shl => {
            let n = zx(b, 32);
            if n >= bits as u64 {
                0
            } else {
                zx(a << n, bits)
            }
        }
        IBin::Shr => {
            let n = zx(b, 32);
            if s {
                let x = sx(a, bits);
                zx((x >> n.min(63)) as u64, bits)
            } else if n >= bits as u64 {
                0
            } else {
                zx(a, bits) >> n
            }
        }
    }
}

fn int1(op: IUn, ty: Ty, a: u64) -> u64 {
    let bits = ty.bits();
    match op {
        IUn::Abs => zx(sx(a, bits).wrapping_abs() as u64, bits),
        IUn::Neg => zx(0u64.wrapping_sub(a), bits),
        IUn::Not => {
            if ty == Ty::Pred {
                (a == 0) as u64
            } else {
                zx(!a, bits)
            }
        }
        IUn::Cnot => (zx(a, bits) == 0) as u64,
        IUn::Popc => zx(a, bits).count_ones() as u64,
        IUn::Clz => (zx(a, bits).leading_zeros() - (64 - bits)) as u64,
        IUn::Brev => zx(a, bits).reverse_bits() >> (64 - bits),
    }
}

fn h2f(ty: Ty, v: u64) -> f32 {
    match ty {
        Ty::F16 | Ty::F16x2 => f16::from_bits(v as u16).to_f32(),
        Ty::BF16 | Ty::BF16x2 => bf16::from_bits(v as u16).to_f32(),
        _ => f32::from_bits(v as u32),
    }
}
fn f2h(ty: Ty, x: f32) -> u64 {
    match ty {
        Ty::F16 | Ty::F16x2 => f32_to_f16(x) as u64,
        Ty::BF16 | Ty::BF16x2 => f32_to_bf16(x) as u64,
        _ => x.to_bits() as u64,
    }
}

/// Apply `f` to a float operand of type `ty` (two halves for the x2 types).
fn fmap(ty: Ty, args: [u64; 3], f: impl Fn(f32, f32, f32) -> f32) -> u64 {
    match ty {
        Ty::F16x2 | Ty::BF16x2 => {
            let lo = f(h2f(ty, args[0]), h2f(ty, args[1]), h2f(ty, args[2]));
            let hi = f(
                h2f(ty, args[0] >> 16),
                h2f(ty, args[1] >> 16),
                h2f(ty, args[2] >> 16),
            );
            f2h(ty, lo) | f2h(ty, hi) << 16
        }
        _ => f2h(ty, f(h2f(ty, args[0]), h2f(ty, args[1]), h2f(ty, args[2]))),
    }
}

fn saturate(x: f32) -> f32 {
    if x.is_nan() {
        0.0
    } else {
        x.clamp(0.0, 1.0)
    }
}

fn fbin(op: FBin, ty: Ty, sat: bool, a: u64, b: u64) -> u64 {
    if ty == Ty::F64 {
        let (x, y) = (f64::from_bits(a), f64::from_bits(b));
        let r = match op {
            FBin::Add => x + y,
            FBin::Sub => x - y,
            FBin::Mul => x * y,
            FBin::Div => x / y,
            FBin::Min => x.min(y),
            FBin::Max => x.max(y),
        };
        let r = if sat {
            if r.is_nan() {
                0.0
            } else {
                r.clamp(0.0, 1.0)
            }
        } else {
            r
        };
        return r.to_bits();
    }
    if ty == Ty::F32 && !sat {
        let (x, y) = (f32::from_bits(a as u32), f32::from_bits(b as u32));
        let r = match op {
            FBin::Add => x + y,
            FBin::Sub => x - y,
            FBin::Mul => x * y,
            FBin::Div => x / y,
            FBin::Min => x.min(y),
            FBin::Max => x.max(y),
        };
        return r.to_bits() as u64;
    }
    fmap(ty, [a, b, 0], |x, y, _| {
        let r = match op {
            FBin::Add => x + y,
            FBin::Sub => x - y,
            FBin::Mul => x * y,
            FBin::Div => x / y,
            FBin::Min => x.min(y),
            FBin::Max => x.max(y),
        };
        if sat {
            saturate(r)
        } else {
            r
        }
    })
}

fn ffma(ty: Ty, sat: bool, a: u64, b: u64, c: u64) -> u64 {
    if ty == Ty::F64 {
        return f64::from_bits(a)
            .mul_add(f64::from_bits(b), f64::from_bits(c))
            .to_bits();
    }
    if ty == Ty::F32 && !sat {
        let r =
            f32::from_bits(a as u32).mul_add(f32::from_bits(b as u32), f32::from_bits(c as u32));
        return r.to_bits() as u64;
    }
    fmap(ty, [a, b, c], |x, y, z| {
        let r = x.mul_add(y, z);
        if sat {
            saturate(r)
        } else {
            r
        }
    })
}

fn fun(op: FUn, ty: Ty, a: u64) -> u64 {
    // Sign manipulation is a bit operation in PTX (NaN payloads preserved).
    let sign = match ty {
        Ty::F64 => 1u64 << 63,
        Ty::F32 => 1 << 31,
        Ty::F16 | Ty::BF16 => 1 << 15,
        _ => 0x8000_8000,
    };
    match op {
        FUn::Abs => return a & !sign & mask(ty.bits()),
        FUn::Neg => return (a ^ sign) & mask(ty.bits()),
        _ => {}
    }
    if ty == Ty::F64 {
        let x = f64::from_bits(a);
        let r = match op {
            FUn::Sqrt => x.sqrt(),
            FUn::Rsqrt => 1.0 / x.sqrt(),
            FUn::Rcp => 1.0 / x,
            FUn::Ex2 => x.exp2(),
            FUn::Lg2 => x.log2(),
            FUn::Sin => x.sin(),
            FUn::Cos => x.cos(),
            FUn::Tanh => x.tanh(),
            FUn::Abs | FUn::Neg => x,
        };
        return r.to_bits();
    }
    fmap(ty, [a, 0, 0], |x, _, _| match op {
        FUn::Sqrt => x.sqrt(),
        FUn::Rsqrt => 1.0 / x.sqrt(),
        FUn::Rcp => 1.0 / x,
        FUn::Ex2 => x.exp2(),
        FUn::Lg2 => x.log2(),
        FUn::Sin => x.sin(),
        FUn::Cos => x.cos(),
        FUn::Tanh => x.tanh(),
        FUn::Abs | FUn::Neg => x,
    })
}

/// Truth of a comparison for each outcome: less, equal, greater, unordered (a NaN operand).
fn cmp_table(cmp: Cmp) -> [bool; 4] {
    const F: bool = false;
    const T: bool = true;
    match cmp {
        Cmp::Eq => [F, T, F, F],
        Cmp::Ne => [T, F, T, F],
        Cmp::Lt | Cmp::Lo => [T, F, F, F],
        Cmp::Le | Cmp::Ls => [T, T, F, F],
        Cmp::Gt | Cmp::Hi => [F, F, T, F],
        Cmp::Ge | Cmp::Hs => [F, T, T, F],
        Cmp::Equ => [F, T, F, T],
        Cmp::Neu => [T, F, T, T],
        Cmp::Ltu => [T, F, F, T],
        Cmp::Leu => [T, T, F, T],
        Cmp::Gtu => [F, F, T, T],
        Cmp::Geu => [F, T, T, T],
        Cmp::Num => [T, T, T, F],
        Cmp::Nan => [F, F, F, T],
    }
}

#[inline(always)]
fn code_of<T: PartialOrd>(x: T, y: T) -> u8 {
    match x.partial_cmp(&y) {
        Some(std::cmp::Ordering::Less) => 0,
        Some(std::cmp::Ordering::Equal) => 1,
        Some(std::cmp::Ordering::Greater) => 2,
        None => 3,
    }
}

/// Per-lane comparison outcome (see [`cmp_table`]); the type dispatch is outside the lane loop.
/// Integers compare signed for signed types, except with lo/ls/hi/hs (always unsigned).
fn order_codes(ty: Ty, cmp: Cmp, exec: u32, x: &[u64; 32], y: &[u64; 32]) -> [u8; 32] {
    let mut out = [0u8; 32];
    match ty {
        Ty::F32 => {
            for lane in Lanes(exec) {
                out[lane] = code_of(
                    f32::from_bits(x[lane] as u32),
                    f32::from_bits(y[lane] as u32),
                );
            }
        }
        Ty::F64 => {
            for lane in Lanes(exec) {
                out[lane] = code_of(f64::from_bits(x[lane]), f64::from_bits(y[lane]));
            }
        }
        t if t.float() => {
            for lane in Lanes(exec) {
                out[lane] = code_of(h2f(t, x[lane]), h2f(t, y[lane]));
            }
        }
        t => {
            let bits = t.bits().max(1);
            if t.signed() && !matches!(cmp, Cmp::Lo | Cmp::Ls | Cmp::Hi | Cmp::Hs) {
                for lane in Lanes(exec) {
                    out[lane] = code_of(sx(x[lane], bits), sx(y[lane], bits));
                }
            } else {
                let m = mask(bits);
                for lane in Lanes(exec) {
                    out[lane] = code_of(x[lane] & m, y[lane] & m);
                }
            }
        }
    }
    out
}

pub fn f32_to_bf16(x: f32) -> u16 {
    if x.is_nan() {
        0x7fff
    } else {
        bf16::from_f32(x).to_bits()
    }
}
pub fn f32_to_f16(x: f32) -> u16 {
    if x.is_nan() {
        0x7fff
    } else {
        f16::from_f32(x).to_bits()
    }
}

/// Correct directed rounding from a round-to-nearest result `r` (bits of the narrow type,
/// sign-magnitude) of the exact value `v`: step one ulp toward zero or away from it.
fn directed(r_bits: u64, r: f64, v: f64, rnd: Rnd) -> u64 {
    if r.is_nan() || v.is_nan() || r == v {
        return r_bits;
    }
    let toward_zero = r_bits.wrapping_sub(1);
    let away = r_bits.wrapping_add(1);
    let r_neg = r.is_sign_negative();
    match rnd {
        Rnd::Rz if r.abs() > v.abs() => toward_zero,
        Rnd::Rm if r > v => {
            if r_neg {
                away
            } else {
                toward_zero
            }
        }
        Rnd::Rp if r < v => {
            if r_neg {
                toward_zero
            } else {
                away
            }
        }
        _ => r_bits,
    }
}

fn round_int(x: f64, rnd: Rnd) -> f64 {
    match rnd {
        Rnd::Rni => x.round_ties_even(),
        Rnd::Rzi => x.trunc(),
        Rnd::Rmi => x.floor(),
        Rnd::Rpi => x.ceil(),
        Rnd::Rna => x.round(),
        _ => x,
    }
}

/// Round an exact value to float type `ty` with mode `rnd` (.rn when none).
fn to_float(v: f64, ty: Ty, rnd: Rnd, from_f32: Option<f32>) -> u64 {
    match ty {
        Ty::F64 => v.to_bits(),
        Ty::F32 => {
            let r = v as f32;
            directed(r.to_bits() as u64, r as f64, v, rnd) & 0xffff_ffff
        }
        Ty::F16 => {
            if v.is_nan() {
                return 0x7fff;
            }
            let r = match from_f32 {
                Some(x) => f16::from_f32(x),
                None => f16::from_f64(v),
            };
            directed(r.to_bits() as u64, r.to_f64(), v, rnd) & 0xffff
        }
        Ty::BF16 => {
            if v.is_nan() {
                return 0x7fff;
            }
            let r = match from_f32 {
                Some(x) => bf16::from_f32(x),
                None => bf16::from_f64(v),
            };
            directed(r.to_bits() as u64, r.to_f64(), v, rnd) & 0xffff
        }
        _ => v.to_bits(),
    }
}

fn int_range(ty: Ty) -> (i128, i128) {
    let bits = ty.bits();
    if ty.signed() {
        (-(1i128 << (bits - 1)), (1i128 << (bits - 1)) - 1)
    } else {
        (0, (1i128 << bits) - 1)
    }
}

pub fn cvt(dty: Ty, sty: Ty, rnd: Rnd, sat: bool, a: u64) -> u64 {
    if sty.float() {
        let (v, f32v) = match sty {
            Ty::F64 => (f64::from_bits(a), None),
            Ty::F32 => {
                let x = f32::from_bits(a as u32);
                (x as f64, Some(x))
            }
            _ => {
                let x = h2f(sty, a);
                (x as f64, Some(x))
            }
        };
        if dty.float() {
            let mut v = v;
            let mut f32v = f32v;
            if matches!(rnd, Rnd::Rni | Rnd::Rzi | Rnd::Rmi | Rnd::Rpi) {
                v = round_int(v, rnd);
                f32v = None;
            }
            if sat {
                v = if v.is_nan() { 0.0 } else { v.clamp(0.0, 1.0) };
                f32v = None;
            }
            let r = if rnd == Rnd::None { Rnd::Rn } else { rnd };
            // Widening conversions are exact; f32→f16/bf16 goes straight from the f32 so the
            // round-to-nearest step is a single rounding.
            let from = if sty.bits() <= 32 && dty.bits() < 32 {
                f32v
            } else {
                None
            };
            return to_float(v, dty, r, from);
        }
        // float → integer: round, saturate to the destination range, NaN → 0.
        if v.is_nan() {
            return 0;
        }
        let r = round_int(v, rnd);
        let (lo, hi) = int_range(dty);
        let i = if r <= lo as f64 {
            lo
        } else if r >= hi as f64 {
            hi
        } else {
            r as i128
        };
        return zx(i as u64, dty.bits());
    }
    // Integer source.
    let bits = sty.bits();
    let i: i128 = if sty.signed() {
        sx(a, bits) as i128
    } else {
        zx(a, bits) as i128
    };
    if dty.float() {
        let v = i as f64;
        let rn = match dty {
            Ty::F32 => {
                let r = if sty.signed() {
                    (i as i64) as f32
                } else {
                    (i as u64) as f32
                };
                if matches!(rnd, Rnd::None | Rnd::Rn) {
                    return r.to_bits() as u64;
                }
                Some(r)
            }
            _ => None,
        };
        let r = if rnd == Rnd::None { Rnd::Rn } else { rnd };
        let out = to_float(v, dty, r, rn.filter(|_| dty != Ty::F32));
        let out = if sat && dty != Ty::F64 {
            cvt(dty, dty, Rnd::None, true, out)
        } else {
            out
        };
        return out;
    }
    let (lo, hi) = int_range(dty);
    let i = if sat { i.clamp(lo, hi) } else { i };
    zx(i as u64, dty.bits())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cvt_bf16_rounding() {
        // 1 + 2^-8 is exactly halfway between two bf16 values: ties to even (down).
        let x = f32::from_bits(0x3f80_8000);
        assert_eq!(
            cvt(Ty::BF16, Ty::F32, Rnd::Rn, false, x.to_bits() as u64),
            0x3f80
        );
        let y = f32::from_bits(0x3f81_8000); // halfway, odd below: rounds up
        assert_eq!(
            cvt(Ty::BF16, Ty::F32, Rnd::Rn, false, y.to_bits() as u64),
            0x3f82
        );
        assert_eq!(cvt(Ty::BF16, Ty::F32, Rnd::Rz, false, 0x3f81_ffff), 0x3f81);
        assert_eq!(cvt(Ty::BF16, Ty::F32, Rnd::Rp, false, 0x3f81_0001), 0x3f82);
        assert_eq!(cvt(Ty::BF16, Ty::F32, Rnd::Rm, false, 0xbf81_0001), 0xbf82);
        assert_eq!(
            cvt(Ty::F16, Ty::F32, Rnd::Rn, false, 1e6f32.to_bits() as u64),
            0x7c00
        );
        assert_eq!(
            cvt(Ty::F16, Ty::F32, Rnd::Rz, false, 1e6f32.to_bits() as u64),
            0x7bff
        );
        assert_eq!(
            cvt(
                Ty::S32,
                Ty::F32,
                Rnd::Rzi,
                false,
                (-2.7f32).to_bits() as u64
            ),
            (-2i32) as u32 as u64
        );
        assert_eq!(
            cvt(Ty::S32, Ty::F32, Rnd::Rni, false, 2.5f32.to_bits() as u64),
            2
        );
        assert_eq!(
            cvt(Ty::U8, Ty::F32, Rnd::Rni, false, 300f32.to_bits() as u64),
            255
        );
        assert_eq!(
            cvt(Ty::S32, Ty::F32, Rnd::Rzi, false, f32::NAN.to_bits() as u64),
            0
        );
    }
}
