//! The machine's read bandwidth: a streaming sum over a buffer far larger than the last-level
//! cache, on 1 thread and on the whole rayon pool. This is the ceiling decode is measured
//! against (`cargo bench --bench bandwidth`).

use minfer::internals::simd::measure_read_bandwidth;

fn main() {
    let bytes = 1usize << 30;
    let threads = rayon::current_num_threads();
    for t in [1, threads] {
        let pool = match rayon::ThreadPoolBuilder::new().num_threads(t).build() {
            Ok(p) => p,
            Err(e) => {
                eprintln!("cannot build a {t}-thread pool: {e}");
                std::process::exit(2);
            }
        };
        let gbs = pool.install(|| measure_read_bandwidth(bytes, 5));
        println!(
            "read bandwidth, {t} thread(s), {} MiB buffer: {gbs:.1} GB/s",
            bytes >> 20
        );
    }
}
