//! One lane's memory access: the checks and the counters, written once per state space.
//!
//! Every load, store and atomic goes through [`Exec::access`]: the alignment check, generic →
//! space resolution, then the one function for that space (`global`, `shared`, `local`,
//! `param`), which does the bounds, initialisation and race checks and counts the bytes as the
//! [`Access`] kind says. The instruction handlers in `mod.rs` only move bytes.
//!
//! The fast paths for warp-wide global loads and stores (taken only with profiling off) test the
//! same conditions for all lanes at once and, when any fails, leave the instruction to the
//! per-lane path, which reports what is wrong: so every fault message is written here once.

use super::scalar::{sx, zx};
use super::{Exec, Lanes};
use crate::counters;
use crate::error::{Error, Result};
use crate::isa::{Addr, AtomOp, Space, Src, Ty, NO_REG};
use crate::memory::{LOCAL_WINDOW, SHARED_WINDOW, WINDOW};

/// The lane an access belongs to: warp, lane and instruction, for fault messages.
#[derive(Clone, Copy)]
pub(super) struct Site {
    pub w: usize,
    pub lane: usize,
    pub pc: u32,
}

/// What an access does to its bytes; it picks the checks and the counters.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Access {
    /// Must be initialised; counted as loaded.
    Load,
    /// Marks the bytes initialised; counted as stored.
    Store,
    /// Read-modify-write: marks the bytes initialised, reports whether they were not (after the
    /// update, see [`Exec::atomic`]); counted as loaded and stored; no race bookkeeping.
    Atomic,
}

impl Access {
    fn word(self) -> &'static str {
        match self {
            Access::Load => "load",
            Access::Store => "store",
            Access::Atomic => "atomic",
        }
    }
}

/// The memory that holds an access's bytes.
#[derive(Clone, Copy)]
pub(super) enum Region {
    /// The global allocation with this index.
    Global(usize),
    Shared,
    /// All threads' local memory, one `local_bytes` slice per thread slot.
    Local,
    Param,
}

/// Where one lane's access landed.
pub(super) struct Place {
    pub region: Region,
    /// Byte offset into the region.
    pub off: usize,
    /// The resolved address (global) or offset (shared, local, param), for messages.
    pub addr: u64,
    /// Atomics only: some byte had never been written.
    pub uninit: bool,
}

/// A generic address → its state space and the address inside it (`.const` data lives in
/// global memory).
pub(super) fn resolve(space: Space, addr: u64) -> (Space, u64) {
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

impl<'a, 'm> Exec<'a, 'm> {
    fn mem_fault(&self, s: Site, addr: u64, msg: String) -> Error {
        let mut e = self.fault(s.w, s.lane, s.pc, msg);
        if let Error::Fault(f) = &mut e {
            f.address = Some(addr);
        }
        e
    }

    /// Every check and counter for an `n`-byte access by one lane; returns where the bytes are.
    pub(super) fn access(
        &mut self,
        s: Site,
        space: Space,
        addr: u64,
        n: usize,
        kind: Access,
    ) -> Result<Place> {
        if !addr.is_multiple_of(n as u64) {
            let msg = format!("misaligned {n}-byte {space:?} {} at {addr:#x}", kind.word());
            return Err(self.mem_fault(s, addr, msg));
        }
        let (sp, a) = resolve(space, addr);
        match sp {
            Space::Global => self.global(s, a, n, kind),
            Space::Shared => self.shared(s, a, n, kind),
            Space::Local => self.local(s, a, n, kind),
            Space::Param => self.param(s, a, n, kind),
            Space::Const | Space::Generic => Err(self.fault(
                s.w,
                s.lane,
                s.pc,
                format!("internal: unresolved {sp:?} address"),
            )),
        }
    }

    fn global(&mut self, s: Site, a: u64, n: usize, kind: Access) -> Result<Place> {
        let Some(i) = self.global_index(a, n as u64) else {
            let d = self.mem.describe(a);
            let msg = format!(
                "out-of-bounds global {} of {n} bytes at {a:#x} ({d})",
                kind.word()
            );
            return Err(self.mem_fault(s, a, msg));
        };
        let al = &mut self.mem.allocs[i];
        let off = (a - al.base) as usize;
        let init = &mut al.init[off..off + n];
        let mut uninit = false;
        match kind {
            Access::Load => {
                if !all_set(init) {
                    let msg = format!(
                        "read of uninitialised global memory at {a:#x} (allocation {:#x}, offset {off})",
                        al.base
                    );
                    return Err(self.mem_fault(s, a, msg));
                }
            }
            Access::Store => init.fill(1),
            Access::Atomic => {
                uninit = init.contains(&0);
                init.fill(1);
            }
        }
        if let Some(p) = self.prof.as_deref_mut() {
            match kind {
                Access::Load => p.global_load_bytes += n as u64,
                Access::Store => p.global_store_bytes += n as u64,
                Access::Atomic => {
                    p.global_load_bytes += n as u64;
                    p.global_store_bytes += n as u64;
                }
            }
            self.record(s.lane, kind, false, a, n);
        }
        Ok(Place {
            region: Region::Global(i),
            off,
            addr: a,
            uninit,
        })
    }

    fn shared(&mut self, s: Site, a: u64, n: usize, kind: Access) -> Result<Place> {
        let len = self.shared.len();
        if a > len as u64 || a as usize + n > len {
            let msg = format!(
                "out-of-bounds shared {} of {n} bytes at offset {a:#x} (shared size {len})",
                kind.word()
            );
            return Err(self.mem_fault(s, a, msg));
        }
        let off = a as usize;
        let mut uninit = false;
        match kind {
            Access::Load | Access::Store => {
                let load = kind == Access::Load;
                if self.cp_any {
                    self.check_inflight(s, off, n, if load { "read" } else { "written" })?;
                }
                let line = self.code[s.pc as usize].line;
                let w = s.w;
                for b in off..off + n {
                    let (race, un) = if load {
                        self.shadow.read(b, w as u32, line)
                    } else {
                        (self.shadow.write(b, w as u32, line), false)
                    };
                    if let Some(r) = race {
                        let msg = if load {
                            format!(
                                "shared-memory race at offset {b:#x}: read by warp {w}, written by warp {} at line {} with no barrier between",
                                r.other_warp, r.other_line
                            )
                        } else {
                            format!(
                                "shared-memory race at offset {b:#x}: written by warp {w}, {} by warp {} at line {} with no barrier between",
                                if r.other_wrote { "written" } else { "read" },
                                r.other_warp,
                                r.other_line
                            )
                        };
                        return Err(self.mem_fault(s, b as u64, msg));
                    }
                    if un {
                        let msg = format!("read of uninitialised shared memory at offset {b:#x}");
                        return Err(self.mem_fault(s, b as u64, msg));
                    }
                }
            }
            Access::Atomic => {
                for b in off..off + n {
                    uninit |= self.shadow.atomic(b);
                }
            }
        }
        if let Some(p) = self.prof.as_deref_mut() {
            match kind {
                Access::Load => p.shared_load_bytes += n as u64,
                Access::Store => p.shared_store_bytes += n as u64,
                Access::Atomic => {
                    p.shared_load_bytes += n as u64;
                    p.shared_store_bytes += n as u64;
                }
            }
            self.record(s.lane, kind, true, a, n);
        }
        Ok(Place {
            region: Region::Shared,
            off,
            addr: a,
            uninit,
        })
    }

    fn local(&mut self, s: Site, a: u64, n: usize, kind: Access) -> Result<Place> {
        if kind == Access::Atomic {
            return Err(self.mem_fault(s, a, "atomic on Local memory is not supported".into()));
        }
        let lb = self.l.kernel.local_bytes as usize;
        if a > lb as u64 || a as usize + n > lb {
            let msg = format!(
                "out-of-bounds local {} of {n} bytes at offset {a:#x} (local size {lb})",
                kind.word()
            );
            return Err(self.mem_fault(s, a, msg));
        }
        let off = (s.w * 32 + s.lane) * lb + a as usize;
        let init = &mut self.local_init[off..off + n];
        if kind == Access::Load {
            if !all_set(init) {
                let msg = format!("read of uninitialised local memory at offset {a:#x}");
                return Err(self.mem_fault(s, a, msg));
            }
        } else {
            init.fill(1);
        }
        if let Some(p) = self.prof.as_deref_mut() {
            p.local_bytes += n as u64;
        }
        Ok(Place {
            region: Region::Local,
            off,
            addr: a,
            uninit: false,
        })
    }

    fn param(&mut self, s: Site, a: u64, n: usize, kind: Access) -> Result<Place> {
        match kind {
            Access::Load => {}
            Access::Store => {
                return Err(self.mem_fault(s, a, "store to kernel parameter space".into()))
            }
            Access::Atomic => {
                return Err(self.mem_fault(s, a, "atomic on Param memory is not supported".into()))
            }
        }
        let pb = self.l.params.len();
        if a > pb as u64 || a as usize + n > pb {
            let msg = format!("out-of-bounds param load at offset {a} (params are {pb} bytes)");
            return Err(self.mem_fault(s, a, msg));
        }
        Ok(Place {
            region: Region::Param,
            off: a as usize,
            addr: a,
            uninit: false,
        })
    }

    /// Remember one lane's load or store for [`Exec::account`] (atomics are not modelled in the
    /// sector and bank counters).
    fn record(&mut self, lane: usize, kind: Access, shared: bool, a: u64, n: usize) {
        if kind != Access::Atomic {
            self.acc[lane] = Some((a, n as u32));
            self.acc_shared = shared;
            self.acc_load = kind == Access::Load;
        }
    }

    pub(super) fn global_index(&mut self, addr: u64, len: u64) -> Option<usize> {
        if let Some(a) = self.mem.allocs.get(self.alloc_hint) {
            if addr >= a.base && addr + len <= a.end() {
                return Some(self.alloc_hint);
            }
        }
        let i = self.mem.find(addr, len)?;
        self.alloc_hint = i;
        Some(i)
    }

    pub(super) fn region(&self, r: Region) -> &[u8] {
        match r {
            Region::Global(i) => &self.mem.allocs[i].data,
            Region::Shared => &self.shared,
            Region::Local => &self.local,
            Region::Param => self.l.params,
        }
    }

    pub(super) fn region_mut(&mut self, r: Region) -> &mut [u8] {
        match r {
            Region::Global(i) => &mut self.mem.allocs[i].data,
            Region::Shared => &mut self.shared,
            Region::Local => &mut self.local,
            Region::Param => &mut [],
        }
    }

    /// Read `buf.len()` bytes for one lane, with every check.
    pub(super) fn load(&mut self, s: Site, space: Space, addr: u64, buf: &mut [u8]) -> Result<()> {
        let p = self.access(s, space, addr, buf.len(), Access::Load)?;
        buf.copy_from_slice(&self.region(p.region)[p.off..p.off + buf.len()]);
        Ok(())
    }

    /// Write `buf` for one lane, with every check.
    pub(super) fn store(&mut self, s: Site, space: Space, addr: u64, buf: &[u8]) -> Result<()> {
        let p = self.access(s, space, addr, buf.len(), Access::Store)?;
        self.region_mut(p.region)[p.off..p.off + buf.len()].copy_from_slice(buf);
        Ok(())
    }

    /// Byte-wise global read for a cp.async whose src-size is not a power of two.
    pub(super) fn load_unaligned(&mut self, s: Site, a: u64, buf: &mut [u8]) -> Result<()> {
        for (k, b) in buf.iter_mut().enumerate() {
            let mut one = [0u8; 1];
            self.load(s, Space::Global, a + k as u64, &mut one)?;
            *b = one[0];
        }
        Ok(())
    }

    /// One lane's `atom`/`red`: the update is applied, then an uninitialised target is reported
    /// (so memory after the fault shows what the atomic wrote).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn atomic(
        &mut self,
        s: Site,
        space: Space,
        addr: u64,
        op: AtomOp,
        ty: Ty,
        d: u32,
        b: Src,
        c: Src,
    ) -> Result<()> {
        let n = ty.bytes() as usize;
        let place = self.access(s, space, addr, n, Access::Atomic)?;
        let bv = self.val(s.w, b, s.lane);
        let cv = self.val(s.w, c, s.lane);
        let slice = &mut self.region_mut(place.region)[place.off..place.off + n];
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
        if place.uninit {
            let sp = match place.region {
                Region::Shared => Space::Shared,
                _ => Space::Global,
            };
            let msg = format!("atomic on uninitialised {sp:?} memory at {:#x}", place.addr);
            return Err(self.mem_fault(s, place.addr, msg));
        }
        if d != NO_REG {
            let v = if ty.signed() {
                sx(old, bits) as u64
            } else {
                old
            };
            self.set(s.w, d, s.lane, v);
        }
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

    pub(super) fn ld_global_fast(
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

    pub(super) fn st_global_fast(
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
    pub(super) fn check_inflight(&self, s: Site, off: usize, n: usize, what: &str) -> Result<()> {
        if let Some(k) = (off..off + n).find(|&b| self.shared_inflight[b] != 0) {
            return Err(self.mem_fault(
                s,
                k as u64,
                format!(
                    "shared memory at offset {k:#x} {what} while a cp.async into it is still in flight (missing cp.async.wait_group/wait_all before the barrier?)"
                ),
            ));
        }
        Ok(())
    }

    /// Fold the per-lane accesses of one memory instruction into the counters.
    pub(super) fn account(&mut self) {
        if self.prof.is_none() {
            return;
        }
        let acc = std::mem::take(&mut self.acc);
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
            if self.acc_load {
                p.global_load_requests += 1;
            }
            for &(a, n) in &v {
                for sector in a / 32..=(a + n as u64 - 1) / 32 {
                    self.footprint.insert(sector);
                }
            }
        }
    }
}

/// All shadow bytes set (the init shadow holds 0 or 1 per byte).
#[inline(always)]
pub(super) fn all_set(s: &[u8]) -> bool {
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
pub(super) fn read_le(s: &[u8], es: usize) -> u64 {
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
pub(super) fn write_le(s: &mut [u8], es: usize, v: u64) {
    match es {
        1 => s[0] = v as u8,
        2 => s[..2].copy_from_slice(&(v as u16).to_le_bytes()),
        4 => s[..4].copy_from_slice(&(v as u32).to_le_bytes()),
        _ => s[..8].copy_from_slice(&v.to_le_bytes()),
    }
}
