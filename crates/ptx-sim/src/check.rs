//! Sanitizer-style shadow state for shared memory: which warp last wrote each byte and which
//! warps read it in the current barrier interval (race detection), and whether the byte was
//! written by this CTA at all (uninitialised-read detection).
//!
//! Epochs replace clearing: every barrier release and every new CTA bumps the epoch, so the
//! shadow never needs resetting. Races between lanes of one warp and races through atomics are
//! deliberately not reported (lanes of a warp execute an instruction together; atomics are
//! ordered by definition). Global-memory races between CTAs are not tracked either.

pub struct SharedShadow {
    w_epoch: Vec<u32>,
    writer: Vec<u16>,
    w_line: Vec<u32>,
    r_epoch: Vec<u32>,
    readers: Vec<u32>,
    r_line: Vec<u32>,
    init_cta: Vec<u32>,
    pub epoch: u32,
    pub cta_serial: u32,
}

/// A conflicting earlier access found by the race check.
pub struct Race {
    pub other_warp: u32,
    pub other_line: u32,
    pub other_wrote: bool,
}

impl SharedShadow {
    pub fn new(bytes: usize) -> Self {
        SharedShadow {
            w_epoch: vec![0; bytes],
            writer: vec![0; bytes],
            w_line: vec![0; bytes],
            r_epoch: vec![0; bytes],
            readers: vec![0; bytes],
            r_line: vec![0; bytes],
            init_cta: vec![0; bytes],
            epoch: 1,
            cta_serial: 0,
        }
    }

    pub fn new_cta(&mut self) {
        self.cta_serial += 1;
        self.epoch += 1;
    }

    pub fn barrier(&mut self) {
        self.epoch += 1;
    }

    /// Record a read of byte `b` by `warp`; returns a race with an earlier write, and whether
    /// the byte was never written by this CTA.
    #[inline]
    pub fn read(&mut self, b: usize, warp: u32, line: u32) -> (Option<Race>, bool) {
        let uninit = self.init_cta[b] != self.cta_serial;
        let mut race = None;
        if self.w_epoch[b] == self.epoch && self.writer[b] as u32 != warp {
            race = Some(Race {
                other_warp: self.writer[b] as u32,
                other_line: self.w_line[b],
                other_wrote: true,
            });
        }
        if self.r_epoch[b] != self.epoch {
            self.r_epoch[b] = self.epoch;
            self.readers[b] = 0;
        }
        self.readers[b] |= 1 << (warp & 31);
        self.r_line[b] = line;
        (race, uninit)
    }

    #[inline]
    pub fn write(&mut self, b: usize, warp: u32, line: u32) -> Option<Race> {
        let mut race = None;
        if self.w_epoch[b] == self.epoch && self.writer[b] as u32 != warp {
            race = Some(Race {
                other_warp: self.writer[b] as u32,
                other_line: self.w_line[b],
                other_wrote: true,
            });
        } else if self.r_epoch[b] == self.epoch {
            let others = self.readers[b] & !(1 << (warp & 31));
            if others != 0 {
                race = Some(Race {
                    other_warp: others.trailing_zeros(),
                    other_line: self.r_line[b],
                    other_wrote: false,
                });
            }
        }
        self.w_epoch[b] = self.epoch;
        self.writer[b] = warp as u16;
        self.w_line[b] = line;
        self.init_cta[b] = self.cta_serial;
        race
    }

    /// Atomics: no race bookkeeping, but the byte counts as written.
    #[inline]
    pub fn atomic(&mut self, b: usize) -> bool {
        let uninit = self.init_cta[b] != self.cta_serial;
        self.init_cta[b] = self.cta_serial;
        uninit
    }
}
