//! The op parity suite (tests/ops/) on the CPU backend, with 1 and 2 worker threads: matmul
//! splits products over 2^17 multiply-adds by output feature and attention splits by row and
//! head, so the threaded runs take other code paths (and the one-thread runs show the answer
//! does not depend on the split). Every case runs in both, so an op that becomes threaded is
//! covered without editing this list.

mod common;
mod ops;

use minfer::internals::CpuBackend;
use ops::Numerics;

fn cpu(threads: usize) -> Option<(CpuBackend, Numerics)> {
    let b = CpuBackend::new(threads).expect("CPU backend");
    assert_eq!(b.threads(), threads);
    Some((b, Numerics::cpu()))
}

mod one_thread {
    crate::ops::op_parity_tests!(super::cpu(1));
}

mod two_threads {
    crate::ops::op_parity_tests!(super::cpu(2));
}

/// The paged, multi-sequence attention cases: on the CPU here; the CUDA backend joins when its
/// kernels read through block tables.
#[test]
fn attention_paged_one_thread() {
    let (b, n) = cpu(1).unwrap();
    ops::attention_paged(&b, &n);
}

#[test]
fn attention_paged_two_threads() {
    let (b, n) = cpu(2).unwrap();
    ops::attention_paged(&b, &n);
}
