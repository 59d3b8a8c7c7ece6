//! The fuzzing engine: a deterministic, structure-aware mutation loop on stable Rust.
//!
//! Each target is a pure function from bytes to an outcome. The engine runs it on a worker
//! thread so that it can
//! - catch panics (`catch_unwind`): a panic is a bug;
//! - time every input: an input that has used [`HANG_BOUND`] of its worker's CPU time (or
//!   [`HANG_PROCESS_CPU`] of the process's, or [`HANG_WALL`] of wall time) is a hang;
//! - watch allocations (the counting [`Guard`] allocator below): one allocation over
//!   [`ALLOC_LIMIT`] is a bug, one over [`ALLOC_FATAL`] is refused after the input has been saved
//!   (the process then aborts, as it would in the field, but the case is on disk);
//! - check the target's own property (a round trip, an error that names the file) through `Err`.
//!
//! Every failing input is written to `tests/fuzz/regressions/<target>/` and from then on runs
//! before every campaign, with the seeds in `tests/fuzz/corpus/<target>/`. The loop keeps any
//! mutant that produces an outcome it has not seen (a new error message shape, with numbers and
//! quoted names blanked) or, when the build is instrumented (scripts/fuzz-campaign.sh: LLVM's
//! SanitizerCoverage through stable `-C passes=sancov-module`), that reaches an edge or an edge
//! hit-count bucket no earlier input reached ([`Coverage`]). The plain `cargo test` build is not
//! instrumented and runs on outcome novelty alone.
//!
//! A campaign is fixed by its seed (`FUZZ_SEED`, default derived from the target name) and its
//! length (`FUZZ_SECONDS`, default [`DEFAULT_SECONDS`]): the same seed replays the same inputs
//! for as long as both runs last.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::HashSet;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// An input that has used this much CPU time (of its worker thread) is a hang. Inputs are at most a few hundred kB and
/// every target runs in well under 100 ms on them (release build), so 5 s leaves room for a
/// loaded 2-core machine without hiding a real loop.
pub const HANG_BOUND: Duration = Duration::from_secs(5);
/// One allocation larger than this while a fuzz input runs is a bug: nothing we parse from a
/// sub-megabyte input needs 256 MiB at once.
pub const ALLOC_LIMIT: usize = 256 << 20;
/// Allocations above this are refused (after saving the input) rather than attempted.
pub const ALLOC_FATAL: usize = 4 << 30;
/// An input during which the whole process used this much CPU time is a hang too (work that
/// runs off the worker thread, on rayon's pool).
pub const HANG_PROCESS_CPU: Duration = Duration::from_secs(20);
/// Wall-clock backstop for a hang, when /proc cannot say CPU times. Generous: a campaign under
/// `nice -n 19` on a loaded machine can wait a minute for the CPU (a 60 s backstop raised one
/// false alarm on a 91 ms input).
pub const HANG_WALL: Duration = Duration::from_secs(600);
/// The corpus stops growing at this many inputs or bytes.
const CORPUS_MAX: usize = 8192;
const CORPUS_BYTES: usize = 512 << 20;
/// Seconds per target in the test command.
pub const DEFAULT_SECONDS: f64 = 3.0;
/// Inputs the mutator may grow to.
pub const MAX_INPUT: usize = 1 << 20;

// ---- the allocation guard --------------------------------------------------------------------

/// `System`, counting the largest allocation a fuzz worker makes while an input runs.
pub struct Guard;

thread_local! {
    /// Largest allocation of the running input; usize::MAX when not inside an input.
    static LARGEST: Cell<usize> = const { Cell::new(usize::MAX) };
    /// The running input, for saving from inside the allocator when refusing.
    static CURRENT: Cell<(*const u8, usize, &'static str)> =
        const { Cell::new((std::ptr::null(), 0, "")) };
    static IN_GUARD: Cell<bool> = const { Cell::new(false) };
}

impl Guard {
    fn check(size: usize) -> bool {
        if size <= ALLOC_LIMIT {
            return true;
        }
        let Ok(largest) = LARGEST.try_with(Cell::get) else {
            return true;
        };
        if largest == usize::MAX {
            return true; // not inside a fuzz input
        }
        let _ = LARGEST.try_with(|l| l.set(largest.max(size)));
        if size <= ALLOC_FATAL {
            return true;
        }
        if IN_GUARD.try_with(|g| g.replace(true)).unwrap_or(true) {
            return false;
        }
        if let Ok((ptr, len, target)) = CURRENT.try_with(Cell::get) {
            if !ptr.is_null() {
                // SAFETY: the runner sets CURRENT to the input it is running on this thread and
                // clears it before the input is dropped.
                let input = unsafe { std::slice::from_raw_parts(ptr, len) };
                let path = save_regression(target, "alloc", input);
                eprintln!(
                    "fuzz {target}: refused an allocation of {size} bytes; input saved as {}",
                    path.display()
                );
            }
        }
        let _ = IN_GUARD.try_with(|g| g.set(false));
        false
    }
}

// SAFETY: forwards to System; refusing an allocation returns null, as GlobalAlloc allows.
unsafe impl GlobalAlloc for Guard {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !Guard::check(layout.size()) {
            return std::ptr::null_mut();
        }
        // SAFETY: same layout contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if !Guard::check(layout.size()) {
            return std::ptr::null_mut();
        }
        // SAFETY: same layout contract as ours.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: ptr came from System with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if !Guard::check(new_size) {
            return std::ptr::null_mut();
        }
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

// ---- coverage (SanitizerCoverage inline 8-bit counters, when the build asks for them) -------

/// Counter arrays the instrumented modules registered (start, end), one per codegen unit.
static REGIONS: std::sync::Mutex<Vec<(usize, usize)>> = std::sync::Mutex::new(Vec::new());

/// Called by every module that LLVM's `sancov-module` pass instrumented with
/// `-sanitizer-coverage-inline-8bit-counters`, before `main` (scripts/fuzz-campaign.sh builds so,
/// on stable Rust: `-C passes=sancov-module -C llvm-args=...`). Without those flags nothing calls
/// it and the engine runs on outcome novelty alone.
#[no_mangle]
pub extern "C" fn __sanitizer_cov_8bit_counters_init(start: *mut u8, end: *mut u8) {
    if let Ok(mut r) = REGIONS.lock() {
        if (start as usize) < (end as usize) {
            r.push((start as usize, end as usize));
        }
    }
}

/// Edge coverage of one process: which counters (edges) and which (edge, hit-count bucket) pairs
/// (features, as libFuzzer counts them) any input has reached.
pub struct Coverage {
    regions: Vec<(usize, usize)>,
    /// One bit per (counter, bucket): 8 buckets a counter.
    features: Vec<u8>,
    pub edges: usize,
    pub n_features: usize,
}

/// libFuzzer's hit-count buckets: 1, 2, 3, 4-7, 8-15, 16-31, 32-127, 128+.
fn bucket(count: u8) -> u8 {
    match count {
        0 => 0,
        1 => 1,
        2 => 2,
        3 => 4,
        4..=7 => 8,
        8..=15 => 16,
        16..=31 => 32,
        32..=127 => 64,
        _ => 128,
    }
}

impl Coverage {
    pub fn new() -> Coverage {
        let regions = REGIONS.lock().map(|r| r.clone()).unwrap_or_default();
        let total: usize = regions.iter().map(|(a, b)| b - a).sum();
        Coverage {
            regions,
            features: vec![0; total],
            edges: 0,
            n_features: 0,
        }
    }
    /// Counters the instrumentation registered (0 when the build is not instrumented).
    pub fn counters(&self) -> usize {
        self.features.len()
    }
    /// Zero every counter (before an input runs: the mutator's own edges are not the input's).
    pub fn reset(&self) {
        for &(a, b) in &self.regions {
            let mut p = a;
            while p < b {
                if p % 8 == 0 && p + 8 <= b {
                    // SAFETY: a..b is a counter array LLVM registered for the life of the
                    // process, p is 8-aligned and p..p+8 lies inside it; another thread may bump
                    // the same bytes, and a lost update only blurs one count.
                    unsafe {
                        if std::ptr::read_volatile(p as *const u64) != 0 {
                            std::ptr::write_volatile(p as *mut u64, 0);
                        }
                    }
                    p += 8;
                } else {
                    // SAFETY: as above, one byte inside the array.
                    unsafe { std::ptr::write_volatile(p as *mut u8, 0) };
                    p += 1;
                }
            }
        }
    }
    /// Fold the counters into the feature set and zero them; true when the input reached a new
    /// feature.
    pub fn collect(&mut self) -> bool {
        let mut new = false;
        let mut base = 0;
        for &(a, b) in &self.regions {
            let mut p = a;
            while p < b {
                // Skip zero words quickly: most counters are zero after an input.
                if p % 8 == 0 && p + 8 <= b {
                    // SAFETY: as in reset; p is 8-aligned and p..p+8 lies inside the array.
                    let w = unsafe { std::ptr::read_volatile(p as *const u64) };
                    if w == 0 {
                        p += 8;
                        continue;
                    }
                }
                // SAFETY: as in reset.
                let c = unsafe { std::ptr::read_volatile(p as *const u8) };
                if c != 0 {
                    // SAFETY: as in reset.
                    unsafe { std::ptr::write_volatile(p as *mut u8, 0) };
                    let slot = &mut self.features[base + (p - a)];
                    let bit = bucket(c);
                    if *slot & bit == 0 {
                        if *slot == 0 {
                            self.edges += 1;
                        }
                        *slot |= bit;
                        self.n_features += 1;
                        new = true;
                    }
                }
                p += 1;
            }
            base += b - a;
        }
        new
    }
}

// ---- randomness ------------------------------------------------------------------------------

/// SplitMix64 (the library's generator).
pub struct Rng(minfer::internals::Rng);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(minfer::internals::Rng::new(seed))
    }
    pub fn next(&mut self) -> u64 {
        self.0.next_u64()
    }
    /// Uniform in 0..n (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    /// True with probability 1/n.
    pub fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }
    pub fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len())]
    }
}

pub fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

/// Values that break size arithmetic, as 64-bit integers.
pub const INTERESTING_U64: &[u64] = &[
    0,
    1,
    2,
    3,
    7,
    8,
    31,
    32,
    33,
    255,
    256,
    4095,
    65_535,
    65_536,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
    0x1_0000_0000,
    1 << 40,
    1 << 48,
    1 << 62,
    i64::MAX as u64,
    1 << 63,
    u64::MAX - 1,
    u64::MAX,
];

// ---- byte-level mutations (every target falls back on these) -------------------------------

pub fn mutate_bytes(rng: &mut Rng, data: &mut Vec<u8>, others: &[Arc<Vec<u8>>]) {
    let n = data.len();
    match rng.below(11) {
        0 if n > 0 => {
            let i = rng.below(n);
            data[i] ^= 1 << rng.below(8);
        }
        1 if n > 0 => {
            let i = rng.below(n);
            data[i] = *rng.pick(&[0u8, 1, 0x7f, 0x80, 0xff, b'"', b'{', b'\\', b'%', 0xc3]);
        }
        2 if n >= 8 => {
            // An interesting integer, 4 or 8 bytes little-endian, anywhere.
            let v = *rng.pick(INTERESTING_U64);
            let w = if rng.one_in(2) { 4 } else { 8 };
            let i = rng.below(n - w + 1);
            data[i..i + w].copy_from_slice(&v.to_le_bytes()[..w]);
        }
        3 if n > 0 => {
            // Delete a chunk.
            let i = rng.below(n);
            let len = 1 + rng.below((n - i).min(64));
            data.drain(i..i + len);
        }
        4 if n > 0 => {
            // Duplicate a chunk in place.
            let i = rng.below(n);
            let len = 1 + rng.below((n - i).min(256));
            let chunk = data[i..i + len].to_vec();
            let at = rng.below(n + 1);
            data.splice(at..at, chunk);
        }
        5 => {
            // Insert random bytes.
            let at = rng.below(n + 1);
            let len = 1 + rng.below(16);
            let bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            data.splice(at..at, bytes);
        }
        6 if n > 0 => {
            // Truncate.
            data.truncate(rng.below(n));
        }
        7 if !others.is_empty() => {
            // Splice in a chunk of another input.
            let o = rng.pick(others);
            if !o.is_empty() {
                let i = rng.below(o.len());
                let len = 1 + rng.below((o.len() - i).min(512));
                let at = rng.below(n + 1);
                let end = (at + len).min(n);
                data.splice(at..end, o[i..i + len].iter().copied());
            }
        }
        8 if n > 1 => {
            // Swap two bytes.
            let (i, j) = (rng.below(n), rng.below(n));
            data.swap(i, j);
        }
        9 if n > 0 => {
            // Repeat one byte many times (long runs find quadratic loops).
            let i = rng.below(n);
            let run = vec![data[i]; 1 + rng.below(4096)];
            data.splice(i..i, run);
        }
        _ => {
            let i = rng.below(n + 1);
            data.insert(i, rng.next() as u8);
        }
    }
    data.truncate(MAX_INPUT);
}

// ---- targets and the runner ------------------------------------------------------------------

/// What one input did: `Ok(shape)` (any outcome the library is allowed to have, described
/// coarsely for novelty), or `Err(why)` when a property the target checks failed.
pub type Outcome = Result<String, String>;
/// A target's entry point.
pub type RunFn = Arc<dyn Fn(&[u8]) -> Outcome + Send + Sync>;
/// A structure-aware mutator: input, and the corpus to splice from.
pub type MutateFn = fn(&mut Rng, &mut Vec<u8>, &[Arc<Vec<u8>>]);

pub struct Target {
    pub name: &'static str,
    /// Starting inputs besides the committed corpus (fixtures read at run time, so the
    /// repository does not hold them twice).
    pub seeds: Vec<Vec<u8>>,
    /// Mutate an input in place (structure-aware; may fall back on `mutate_bytes`).
    pub mutate: MutateFn,
    /// Run one input. Called on a worker thread.
    pub run: RunFn,
}

/// A scratch directory of this process and thread, for targets that read files (in memory when
/// /dev/shm exists); a campaign removes its own when it ends. Per thread: a worker abandoned as
/// hung may still have the previous input's file mapped, and rewriting that file under it would
/// kill the process with SIGBUS (the limit README.md documents), so its successor writes
/// elsewhere.
pub fn scratch(target: &str) -> PathBuf {
    let thread: String = format!("{:?}", std::thread::current().id())
        .chars()
        .filter(char::is_ascii_digit)
        .collect();
    let dir = scratch_base().join(format!("{}-t{thread}", scratch_prefix(target)));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

fn scratch_base() -> PathBuf {
    let base = Path::new("/dev/shm");
    if base.is_dir() {
        base.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}

fn scratch_prefix(target: &str) -> String {
    format!("minfer-fuzz-{}-{target}", std::process::id())
}

/// Remove every scratch directory `target` made in this process.
fn remove_scratch(target: &str) {
    let prefix = format!("{}-t", scratch_prefix(target));
    for e in std::fs::read_dir(scratch_base())
        .into_iter()
        .flatten()
        .flatten()
    {
        if e.file_name().to_string_lossy().starts_with(&prefix) {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz")
}

fn read_dir_inputs(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file() && p.extension().is_none_or(|e| e != "txt"))
        .filter_map(|p| std::fs::read(&p).ok().map(|b| (p, b)))
        .collect();
    out.sort();
    out
}

/// Write `input` as a regression case of `target` and return its path.
pub fn save_regression(target: &str, kind: &str, input: &[u8]) -> PathBuf {
    let dir = fuzz_dir().join("regressions").join(target);
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join(format!("{kind}-{:016x}", fnv(input)));
    let _ = std::fs::write(&path, input);
    path
}

/// An error message with numbers and quoted text blanked: the "shape" of an outcome.
pub fn shape(s: &str) -> String {
    let mut out = String::new();
    let mut quoted = false;
    let mut last_digit = false;
    for c in s.chars().take(200) {
        if c == '"' {
            quoted = !quoted;
            out.push('"');
            continue;
        }
        if quoted {
            continue;
        }
        if c.is_ascii_digit() {
            if !last_digit {
                out.push('#');
            }
            last_digit = true;
            continue;
        }
        last_digit = false;
        out.push(c);
    }
    // Lists of numbers ("[#, #, #]") differ only in length: keep the start of the message.
    out.chars().take(100).collect()
}

enum Verdict {
    Pass(String),
    Fail(&'static str, String),
}

struct Worker {
    tx: mpsc::Sender<Arc<Vec<u8>>>,
    rx: mpsc::Receiver<Verdict>,
    /// The worker thread's id (Linux), for reading its CPU time; 0 when unknown.
    tid: Arc<std::sync::atomic::AtomicU64>,
}

impl Worker {
    /// CPU time the worker thread has used, when /proc says (Linux).
    fn cpu(&self) -> Option<Duration> {
        let tid = self.tid.load(std::sync::atomic::Ordering::Relaxed);
        if tid == 0 {
            return None;
        }
        thread_cpu(tid)
    }
}

/// CPU time of this process, all threads (Linux: /proc/self/stat, clock ticks of 10 ms).
fn process_cpu() -> Option<Duration> {
    let s = std::fs::read_to_string("/proc/self/stat").ok()?;
    let f: Vec<&str> = s[s.rfind(')')? + 1..].split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

/// CPU time of thread `tid` of this process: /proc schedstat (ns), else stat (clock ticks).
fn thread_cpu(tid: u64) -> Option<Duration> {
    let dir = format!("/proc/self/task/{tid}");
    if let Ok(s) = std::fs::read_to_string(format!("{dir}/schedstat")) {
        if let Some(ns) = s
            .split_whitespace()
            .next()
            .and_then(|x| x.parse::<u64>().ok())
        {
            return Some(Duration::from_nanos(ns));
        }
    }
    let s = std::fs::read_to_string(format!("{dir}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the command: state is field 3, utime 14 and stime 15 (1-based over the whole line).
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

fn spawn_worker(name: &'static str, run: RunFn) -> Worker {
    let (tx_in, rx_in) = mpsc::channel::<Arc<Vec<u8>>>();
    let (tx_out, rx_out) = mpsc::channel();
    let tid = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let tid_w = tid.clone();
    std::thread::Builder::new()
        .name(format!("fuzz-worker-{name}"))
        .stack_size(64 << 20)
        .spawn(move || {
            // "/proc/thread-self" links to "PID/task/TID".
            if let Some(t) = std::fs::read_link("/proc/thread-self")
                .ok()
                .and_then(|l| l.file_name()?.to_str()?.parse::<u64>().ok())
            {
                tid_w.store(t, std::sync::atomic::Ordering::Relaxed);
            }
            for input in rx_in {
                CURRENT.with(|c| c.set((input.as_ptr(), input.len(), name)));
                LARGEST.with(|l| l.set(0));
                let r = catch_unwind(AssertUnwindSafe(|| run(&input)));
                let largest = LARGEST.with(|l| l.replace(usize::MAX));
                CURRENT.with(|c| c.set((std::ptr::null(), 0, "")));
                let v = match r {
                    Err(p) => {
                        let msg = p
                            .downcast_ref::<String>()
                            .cloned()
                            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                            .unwrap_or_else(|| "non-string panic".into());
                        Verdict::Fail("panic", msg)
                    }
                    Ok(_) if largest > ALLOC_LIMIT => Verdict::Fail(
                        "alloc",
                        format!("allocated {largest} bytes at once (limit {ALLOC_LIMIT})"),
                    ),
                    Ok(Err(why)) => Verdict::Fail("violation", why),
                    Ok(Ok(s)) => Verdict::Pass(s),
                };
                if tx_out.send(v).is_err() {
                    break;
                }
            }
        })
        .expect("spawn fuzz worker");
    Worker {
        tx: tx_in,
        rx: rx_out,
        tid,
    }
}

/// Keep panics raised by fuzz inputs quiet (the runner reports them); others print as usual.
fn quiet_worker_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let fuzz = std::thread::current()
                .name()
                .is_some_and(|n| n.starts_with("fuzz-worker-"));
            if !fuzz || std::env::var_os("FUZZ_VERBOSE").is_some() {
                default(info);
            }
        }));
    });
}

fn env_f64(key: &str) -> Option<f64> {
    std::env::var(key).ok().and_then(|s| s.parse().ok())
}

/// Run the target's regression cases and corpus, then mutate for the campaign's length.
/// Panics (failing the test) listing every failure, each saved as a regression case.
pub fn campaign(t: Target) {
    quiet_worker_panics();
    let seconds = env_f64("FUZZ_SECONDS").unwrap_or(DEFAULT_SECONDS);
    let seed = std::env::var("FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fnv(t.name.as_bytes()));
    let mut rng = Rng::new(seed);
    let mut worker = spawn_worker(t.name, t.run.clone());
    let mut cov = Coverage::new();
    let mut failures: Vec<String> = Vec::new();
    let mut failure_shapes = HashSet::new();
    let mut seen = HashSet::new();
    let mut corpus: Vec<Arc<Vec<u8>>> = Vec::new();
    let mut slowest = Duration::ZERO;
    let mut corpus_bytes = 0usize;
    let n_failures = Cell::new(0usize);

    // One input through the worker: (Some(shape) when it passed, whether it reached new
    // coverage).
    let mut exec =
        |worker: &mut Worker, cov: &mut Coverage, input: Arc<Vec<u8>>, replay: Option<&Path>| {
            let start = Instant::now();
            let cpu0 = worker.cpu();
            let p0 = process_cpu();
            cov.reset();
            worker.tx.send(input.clone()).expect("fuzz worker alive");
            let v = loop {
                match worker.rx.recv_timeout(Duration::from_millis(250)) {
                    Ok(v) => break v,
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        // A hang is HANG_BOUND of the worker's own CPU time (a loaded machine that
                        // starves the worker is not a hang), or HANG_WALL of wall time.
                        let cpu = match (cpu0, worker.cpu()) {
                            (Some(a), Some(b)) => b.saturating_sub(a),
                            _ => start.elapsed(),
                        };
                        let wall = start.elapsed();
                        let process = match (p0, process_cpu()) {
                            (Some(a), Some(b)) => b.saturating_sub(a),
                            _ => Duration::ZERO,
                        };
                        if cpu >= HANG_BOUND || process >= HANG_PROCESS_CPU || wall >= HANG_WALL {
                            // The worker is stuck: abandon it (the thread is leaked), start another.
                            *worker = spawn_worker(t.name, t.run.clone());
                            break Verdict::Fail(
                                "hang",
                                format!("still running after {cpu:.1?} of CPU ({wall:.1?} wall)"),
                            );
                        }
                    }
                    Err(mpsc::RecvTimeoutError::Disconnected) => {
                        *worker = spawn_worker(t.name, t.run.clone());
                        break Verdict::Fail("hang", "the worker thread died".into());
                    }
                }
            };
            let novel = cov.collect();
            let took = start.elapsed();
            slowest = slowest.max(took);
            let passed = match v {
                Verdict::Pass(s) => Some(s),
                Verdict::Fail(kind, why) => {
                    let key = format!("{kind}: {}", shape(&why));
                    if failure_shapes.insert(key) || replay.is_some() {
                        let path = match replay {
                            Some(p) => p.to_path_buf(),
                            None => save_regression(t.name, kind, &input),
                        };
                        n_failures.set(n_failures.get() + 1);
                        failures.push(format!(
                            "{kind} on {} ({} bytes): {why}",
                            path.display(),
                            input.len()
                        ));
                    }
                    None
                }
            };
            (passed, novel)
        };

    // Regression cases first, then the committed corpus and the fixture seeds.
    let regressions = read_dir_inputs(&fuzz_dir().join("regressions").join(t.name));
    for (path, bytes) in &regressions {
        exec(&mut worker, &mut cov, Arc::new(bytes.clone()), Some(path));
    }
    let mut initial: Vec<Vec<u8>> = read_dir_inputs(&fuzz_dir().join("corpus").join(t.name))
        .into_iter()
        .map(|(_, b)| b)
        .collect();
    initial.extend(t.seeds);
    for bytes in initial {
        let input = Arc::new(bytes);
        corpus_bytes += input.len();
        if let (Some(s), _) = exec(&mut worker, &mut cov, input.clone(), None) {
            seen.insert(s);
        }
        corpus.push(input);
    }
    if corpus.is_empty() {
        corpus.push(Arc::new(Vec::new()));
    }

    let start = Instant::now();
    let budget = Duration::from_secs_f64(seconds);
    let progress = env_f64("FUZZ_PROGRESS").map(Duration::from_secs_f64);
    let mut next_report = progress;
    let mut execs = 0u64;
    while start.elapsed() < budget {
        let parent = rng.pick(&corpus).clone();
        let mut child = parent.as_ref().clone();
        for _ in 0..1 + rng.below(4) {
            (t.mutate)(&mut rng, &mut child, &corpus);
        }
        let child = Arc::new(child);
        execs += 1;
        let (passed, novel_cov) = exec(&mut worker, &mut cov, child.clone(), None);
        let novel_shape = passed.is_some_and(|s| seen.insert(s));
        // Instrumented: coverage decides (outcome shapes are too fine-grained a signal beside
        // it, and would fill the corpus with near-duplicates); otherwise the outcome shape.
        let novel = if cov.counters() > 0 {
            novel_cov
        } else {
            novel_shape
        };
        if novel && corpus.len() < CORPUS_MAX && corpus_bytes + child.len() <= CORPUS_BYTES {
            corpus_bytes += child.len();
            corpus.push(child);
        }
        if let Some(every) = progress {
            let now = start.elapsed();
            if next_report.is_some_and(|at| now >= at) {
                next_report = Some(now + every);
                eprintln!(
                    "fuzz {}: {:.0} s, {execs} execs, {} edges / {} features of {} counters, \
                     corpus {}, {} failures",
                    t.name,
                    now.as_secs_f64(),
                    cov.edges,
                    cov.n_features,
                    cov.counters(),
                    corpus.len(),
                    n_failures.get()
                );
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    remove_scratch(t.name);
    eprintln!(
        "fuzz {}: {execs} execs in {secs:.1} s ({:.0}/s), seed {seed}, {} regression cases, \
         corpus {} ({} outcome shapes), coverage {} edges / {} features of {} counters, \
         slowest input {slowest:.2?}, {} failures",
        t.name,
        execs as f64 / secs.max(1e-9),
        regressions.len(),
        corpus.len(),
        seen.len(),
        cov.edges,
        cov.n_features,
        cov.counters(),
        failures.len()
    );
    if let Ok(path) = std::env::var("FUZZ_RESULTS") {
        use std::io::Write;
        let line = format!(
            "{}\t{seed}\t{secs:.0}\t{execs}\t{}\t{}\t{}\t{}\t{}\t{}\t{:.2}\n",
            t.name,
            cov.counters(),
            cov.edges,
            cov.n_features,
            seen.len(),
            corpus.len(),
            failures.len(),
            slowest.as_secs_f64()
        );
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
        {
            let _ = f.write_all(line.as_bytes());
        }
    }
    assert!(
        failures.is_empty(),
        "fuzz {}: {} failures (saved as regression cases):\n{}",
        t.name,
        failures.len(),
        failures.join("\n")
    );
}
