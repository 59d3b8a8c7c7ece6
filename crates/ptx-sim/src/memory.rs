//! The address map and simulated device (global) memory: a sparse address space of separate
//! allocations with guard gaps between them, plus one shadow byte per data byte saying whether it
//! was ever written.
//!
//! Allocation is a bump allocator that never reuses addresses, so a stale pointer after `free`
//! or an out-of-bounds offset lands in no allocation and is caught. It deliberately does not
//! model caches, memory ordering or unified/host memory.

use crate::error::{Error, Result};

/// Base of the simulated global address space; far from 0 so null-ish pointers fault.
pub const GLOBAL_BASE: u64 = 0x7f00_0000_0000;
/// Generic addresses of shared memory are `SHARED_WINDOW + offset`.
pub const SHARED_WINDOW: u64 = 0x1000_0000_0000;
/// Generic addresses of local memory are `LOCAL_WINDOW + offset` (per thread).
pub const LOCAL_WINDOW: u64 = 0x2000_0000_0000;
/// Size of each generic-address window.
pub const WINDOW: u64 = 1 << 32;
/// Unmapped bytes left after each allocation.
const GUARD: u64 = 1 << 16;
/// Allocation alignment (cudaMalloc gives at least 256).
const ALIGN: u64 = 256;

pub struct Alloc {
    pub base: u64,
    pub data: Vec<u8>,
    /// 1 where the byte was written since allocation (by a copy, a memset or a kernel store).
    pub init: Vec<u8>,
}

impl Alloc {
    pub fn end(&self) -> u64 {
        self.base + self.data.len() as u64
    }
}

#[derive(Default)]
pub struct GlobalMem {
    /// Sorted by base (the bump allocator only appends).
    pub allocs: Vec<Alloc>,
    next: u64,
    pub bytes_live: u64,
}

impl GlobalMem {
    pub fn new() -> Self {
        GlobalMem {
            allocs: Vec::new(),
            next: GLOBAL_BASE,
            bytes_live: 0,
        }
    }

    pub fn alloc(&mut self, bytes: usize) -> u64 {
        let base = self.next;
        let len = bytes as u64;
        self.next = (base + len + GUARD).div_ceil(ALIGN) * ALIGN;
        self.allocs.push(Alloc {
            base,
            data: vec![0; bytes],
            init: vec![0; bytes],
        });
        self.bytes_live += len;
        base
    }

    pub fn free(&mut self, base: u64) -> Result<()> {
        match self.allocs.binary_search_by_key(&base, |a| a.base) {
            Ok(i) => {
                let a = self.allocs.remove(i);
                self.bytes_live -= a.data.len() as u64;
                Ok(())
            }
            Err(_) => Err(Error::Memory {
                address: base,
                message: format!("free of {base:#x}, which is not the start of a live allocation"),
            }),
        }
    }

    /// Index of the allocation holding `[addr, addr+len)`, if one holds all of it.
    pub fn find(&self, addr: u64, len: u64) -> Option<usize> {
        let i = self.allocs.partition_point(|a| a.base <= addr);
        if i == 0 {
            return None;
        }
        let a = &self.allocs[i - 1];
        if addr + len <= a.end() {
            Some(i - 1)
        } else {
            None
        }
    }

    /// A description of where `addr` is relative to the nearest allocation, for fault messages.
    pub fn describe(&self, addr: u64) -> String {
        let i = self.allocs.partition_point(|a| a.base <= addr);
        let mut parts = Vec::new();
        if i > 0 {
            let a = &self.allocs[i - 1];
            parts.push(format!(
                "{} bytes past the end of allocation {:#x} ({} bytes)",
                addr.wrapping_sub(a.end()),
                a.base,
                a.data.len()
            ));
        }
        if let Some(a) = self.allocs.get(i) {
            parts.push(format!(
                "{} bytes before allocation {:#x}",
                a.base - addr,
                a.base
            ));
        }
        if parts.is_empty() {
            "no allocations".to_string()
        } else {
            parts.join("; ")
        }
    }

    fn host_range(&self, addr: u64, len: usize, what: &str) -> Result<(usize, usize)> {
        match self.find(addr, len as u64) {
            Some(i) => Ok((i, (addr - self.allocs[i].base) as usize)),
            None => Err(Error::Memory {
                address: addr,
                message: format!(
                    "{what} of {len} bytes at {addr:#x} is outside every allocation ({})",
                    self.describe(addr)
                ),
            }),
        }
    }

    pub fn write(&mut self, addr: u64, src: &[u8]) -> Result<()> {
        if src.is_empty() {
            return Ok(());
        }
        let (i, off) = self.host_range(addr, src.len(), "copy to device")?;
        let a = &mut self.allocs[i];
        a.data[off..off + src.len()].copy_from_slice(src);
        a.init[off..off + src.len()].fill(1);
        Ok(())
    }

    pub fn read(&self, dst: &mut [u8], addr: u64) -> Result<()> {
        if dst.is_empty() {
            return Ok(());
        }
        let (i, off) = self.host_range(addr, dst.len(), "copy to host")?;
        let a = &self.allocs[i];
        dst.copy_from_slice(&a.data[off..off + dst.len()]);
        Ok(())
    }

    pub fn memset_zero(&mut self, addr: u64, len: usize) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        let (i, off) = self.host_range(addr, len, "memset")?;
        let a = &mut self.allocs[i];
        a.data[off..off + len].fill(0);
        a.init[off..off + len].fill(1);
        Ok(())
    }
}
