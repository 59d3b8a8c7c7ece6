//! Profiling arithmetic for one warp-wide memory access: 32-byte global sectors touched versus
//! the minimum, and shared-memory bank conflicts (32 banks of 4 bytes).
//!
//! These are models of the hardware, not measurements: sectors are counted per instruction
//! (no L1/L2 hit modelling), and 8- and 16-byte shared accesses are split into half- and
//! quarter-warp phases the way NVIDIA documents them. Times are host times.

/// What the interpreter counted for one kernel (summed over its launches) while profiling was on
/// ([`Device::set_profiling`](crate::Device::set_profiling)).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct KernelCounters {
    /// The kernel's `.entry` name.
    pub kernel: String,
    /// Launches counted.
    pub launches: u64,
    /// Warp-level instructions issued (an instruction whose guard is false for every lane
    /// counts too, as on hardware).
    pub warp_instructions: u64,
    /// Bytes loaded from global memory (atomics count as a load and a store).
    pub global_load_bytes: u64,
    /// Bytes stored to global memory.
    pub global_store_bytes: u64,
    /// Bytes loaded from shared memory.
    pub shared_load_bytes: u64,
    /// Bytes stored to shared memory.
    pub shared_store_bytes: u64,
    /// Bytes loaded from and stored to local memory.
    pub local_bytes: u64,
    /// 32-byte sectors touched by global warp accesses.
    pub global_sectors: u64,
    /// The fewest sectors those accesses could have touched (bytes / 32, rounded up per
    /// access): `global_sectors / global_sectors_ideal` above 1 shows uncoalesced access.
    pub global_sectors_ideal: u64,
    /// Extra shared-memory wavefronts caused by bank conflicts.
    pub bank_conflicts: u64,
    /// Warp-level global load instructions (requests) with at least one active lane.
    pub global_load_requests: u64,
    /// Distinct 32-byte global sectors each launch touched, × 32, summed over launches: the
    /// DRAM traffic if the caches hold each launch's footprint and nothing survives between
    /// launches (re-reads of the same bytes within a launch are cache hits).
    pub footprint_bytes: u64,
    /// CTAs run.
    pub ctas: u64,
    /// Threads per CTA (the largest over the launches counted).
    pub threads_per_cta: u64,
    /// Shared memory per CTA, static plus dynamic (the largest over the launches counted).
    pub shared_per_cta: u64,
    /// Host wall time spent interpreting, seconds.
    pub seconds: f64,
}

impl KernelCounters {
    /// Add `other`'s counts (another launch of the same kernel) to these.
    pub fn add(&mut self, other: &KernelCounters) {
        self.launches += other.launches;
        self.warp_instructions += other.warp_instructions;
        self.global_load_bytes += other.global_load_bytes;
        self.global_store_bytes += other.global_store_bytes;
        self.shared_load_bytes += other.shared_load_bytes;
        self.shared_store_bytes += other.shared_store_bytes;
        self.local_bytes += other.local_bytes;
        self.global_sectors += other.global_sectors;
        self.global_sectors_ideal += other.global_sectors_ideal;
        self.bank_conflicts += other.bank_conflicts;
        self.global_load_requests += other.global_load_requests;
        self.footprint_bytes += other.footprint_bytes;
        self.ctas += other.ctas;
        self.threads_per_cta = self.threads_per_cta.max(other.threads_per_cta);
        self.shared_per_cta = self.shared_per_cta.max(other.shared_per_cta);
        self.seconds += other.seconds;
    }
}

/// (sectors touched, ideal sectors) for the lanes' accesses `(addr, bytes)`.
pub fn global_sectors(acc: &[(u64, u32)]) -> (u64, u64) {
    if acc.is_empty() {
        return (0, 0);
    }
    let mut secs: Vec<u64> = Vec::with_capacity(acc.len() * 2);
    let mut total = 0u64;
    for &(a, n) in acc {
        total += n as u64;
        let first = a / 32;
        let last = (a + n as u64 - 1) / 32;
        for s in first..=last {
            secs.push(s);
        }
    }
    secs.sort_unstable();
    secs.dedup();
    (secs.len() as u64, total.div_ceil(32))
}

/// Extra wavefronts caused by bank conflicts. `acc` is indexed by lane (`None` = inactive).
pub fn bank_conflicts(acc: &[Option<(u64, u32)>; 32]) -> u64 {
    let width = acc.iter().flatten().map(|x| x.1).max().unwrap_or(0);
    if width == 0 {
        return 0;
    }
    // Threads per phase: 4-byte accesses are served for the whole warp at once, 8-byte ones per
    // half warp, 16-byte ones per quarter warp.
    let per_phase = match width {
        0..=4 => 32,
        5..=8 => 16,
        _ => 8,
    };
    let mut extra = 0u64;
    for phase in acc.chunks(per_phase) {
        // Distinct 4-byte words per bank; the same word is a broadcast, not a conflict.
        let mut words: Vec<u64> = Vec::new();
        for &(a, n) in phase.iter().flatten() {
            let mut w = a / 4;
            while w * 4 < a + n as u64 {
                words.push(w);
                w += 1;
            }
        }
        if words.is_empty() {
            continue;
        }
        words.sort_unstable();
        words.dedup();
        let mut per_bank = [0u32; 32];
        for w in &words {
            per_bank[(w % 32) as usize] += 1;
        }
        let waves = per_bank.iter().copied().max().unwrap_or(0) as u64;
        extra += waves.saturating_sub(1);
    }
    extra
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coalesced_and_strided() {
        let acc: Vec<(u64, u32)> = (0..32).map(|l| (l * 4, 4)).collect();
        assert_eq!(global_sectors(&acc), (4, 4));
        let acc: Vec<(u64, u32)> = (0..32).map(|l| (l * 128, 4)).collect();
        assert_eq!(global_sectors(&acc), (32, 4));
    }

    #[test]
    fn banks() {
        let mut acc = [None; 32];
        for (l, a) in acc.iter_mut().enumerate() {
            *a = Some((l as u64 * 4, 4));
        }
        assert_eq!(bank_conflicts(&acc), 0);
        for (l, a) in acc.iter_mut().enumerate() {
            *a = Some((l as u64 * 128, 4)); // all in bank 0, distinct words
        }
        assert_eq!(bank_conflicts(&acc), 31);
        for a in acc.iter_mut() {
            *a = Some((64, 4)); // broadcast
        }
        assert_eq!(bank_conflicts(&acc), 0);
    }
}
