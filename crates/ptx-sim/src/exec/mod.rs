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
//!
//! Files: this one schedules warps and dispatches instructions; `access.rs` holds every memory
//! check and memory counter, once per state space; `scalar.rs` the per-value arithmetic
//! (integer, float, conversions, comparisons).

mod access;
mod scalar;

use crate::check::SharedShadow;
use crate::counters::KernelCounters;
use crate::error::{Error, Fault, Result};
use crate::isa::*;
use crate::memory::{GlobalMem, LOCAL_WINDOW, SHARED_WINDOW};
use access::{read_le, resolve, write_le, Access, Site};
use half::{bf16, f16};
use scalar::*;

/// Shared memory per CTA on sm_90.
pub const MAX_SHARED: usize = 227 * 1024;
/// Warp instructions a warp runs before the next warp gets a turn (lets spin-waits progress).
const SLICE: u32 = 2048;
/// By default, a CTA that executes more warp instructions than this is reported as hung
/// (about a minute of interpreting; see `Device::set_step_limit`).
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
    acc_load: bool,
    /// Distinct 32-byte global sectors this launch touched (profiling only): its footprint, what
    /// a cache holding the whole launch would fetch from DRAM.
    footprint: std::collections::HashSet<u64>,
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
        return Err(Error::launch(
            &l.kernel.name,
            format!(
                "invalid block shape {:?} (at most 1024 threads, z at most 64)",
                l.block
            ),
        ));
    }
    let (gx, gy, gz) = l.grid;
    if gx == 0 || gy == 0 || gz == 0 || gy > 65535 || gz > 65535 {
        return Err(Error::launch(
            &l.kernel.name,
            format!("invalid grid shape {:?}", l.grid),
        ));
    }
    if l.shared_bytes > MAX_SHARED {
        return Err(Error::launch(
            &l.kernel.name,
            format!(
                "{} bytes of shared memory requested, the maximum is {MAX_SHARED}",
                l.shared_bytes
            ),
        ));
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
        acc_load: false,
        footprint: std::collections::HashSet::new(),
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
    let footprint = ex.footprint.len() as u64 * 32;
    if let Some(p) = ex.prof.as_deref_mut() {
        p.ctas += gx as u64 * gy as u64 * gz as u64;
        p.threads_per_cta = p.threads_per_cta.max(nthreads as u64);
        p.shared_per_cta = p.shared_per_cta.max(l.shared_bytes as u64);
        p.footprint_bytes += footprint;
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
                return Err(self.cta_fault(
                    None,
                    None,
                    format!(
                        "executed more than {} warp instructions; it is probably hung{at}",
                        self.l.step_limit
                    ),
                ));
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
                        return Err(self.cta_fault(
                            Some(pc),
                            None,
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

    /// A fault of this block: at instruction `pc` (if one is to blame), by `thread` (if one is).
    fn cta_fault(&self, pc: Option<u32>, thread: Option<(u32, u32, u32)>, msg: String) -> Error {
        let line = pc.map(|pc| {
            let line = self.code[pc as usize].line;
            (line, self.src_line(line).to_string())
        });
        Error::from(Fault {
            kernel: self.l.kernel.name.clone(),
            module: self.l.module.to_string(),
            line,
            thread,
            block: self.ctaid,
            address: None,
            message: msg,
        })
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

    /// A fault of one thread (warp `w`, `lane`) at instruction `pc`.
    fn fault(&self, w: usize, lane: usize, pc: u32, msg: String) -> Error {
        self.cta_fault(Some(pc), Some(self.tid(w, lane)), msg)
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
                    let total = es * *n as usize;
                    let lane = exec.trailing_zeros() as usize;
                    let at = Site { w, lane, pc };
                    let a = self
                        .access(at, Space::Param, addr.off as u64, total, Access::Load)?
                        .off;
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
                    let p = self.access(Site { w, lane, pc }, *space, a, total, Access::Load)?;
                    let mut vals = [0u64; 4];
                    {
                        let bytes = &self.region(p.region)[p.off..p.off + total];
                        for (k, v) in vals.iter_mut().enumerate().take(nn) {
                            let x = read_le(&bytes[k * es..], es);
                            *v = if signed { sx(x, bits) as u64 } else { x };
                        }
                    }
                    for (k, v) in vals.iter().enumerate().take(nn) {
                        self.set(w, ds[k], lane, *v);
                    }
                }
                self.account();
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
                    let p = self.access(Site { w, lane, pc }, *space, a, total, Access::Store)?;
                    let bytes = &mut self.region_mut(p.region)[p.off..p.off + total];
                    for (k, v) in vals.iter().enumerate().take(nn) {
                        write_le(&mut bytes[k * es..], es, *v);
                    }
                }
                self.account();
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
                    let at = Site { w, lane, pc };
                    self.atomic(at, *space, a, *op, *ty, *d, *b, *c)?;
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
                    let at = Site { w, lane, pc };
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
                            self.load(at, Space::Global, sa, &mut buf[..n])?;
                        } else {
                            self.load_unaligned(at, sa, &mut buf[..ss])?;
                        }
                    }
                    self.store(at, Space::Shared, da, &buf[..n])?;
                    // The destination (resolved to a shared offset) is in flight until waited.
                    let (_, off) = resolve(Space::Shared, da);
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
                self.load(Site { w, lane, pc }, sp, a, &mut buf)?;
                for col in 0..8 {
                    m[mat][row][col] = u16::from_le_bytes([buf[2 * col], buf[2 * col + 1]]);
                }
            }
        }
        self.account();
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
