//! A panic inside minfer (a bug) is an error for the call that hit it, not a dead process
//! (issue 15, item 5): the CPU backend is told to panic inside a parallel op on a pool worker
//! (`minfer::internals::fault`), and the Model API returns `Error::Internal` naming the op; the
//! model then works as before. The fault switch is global to the process, so these checks live
//! in one test of a test binary of their own.

mod common;

use minfer::internals::fault;
use minfer::{Error, GenerateOptions, LoadOptions, Model};

fn greedy(model: &mut Model, prompt: &[u32], n: usize) -> minfer::Result<Vec<u32>> {
    let opts = GenerateOptions {
        max_new_tokens: n,
        ignore_eos: true,
        ..Default::default()
    };
    let mut ids = Vec::new();
    model.generate(prompt, &opts, |id| {
        ids.push(id);
        true
    })?;
    Ok(ids)
}

fn expect_internal(r: minfer::Result<impl std::fmt::Debug>, what: &str) {
    match r {
        Err(Error::Internal { op, message }) => {
            assert!(
                op.starts_with("matmul") || op == "attention",
                "{what}: the error names the op that panicked, got {op:?}"
            );
            assert!(message.contains("injected fault"), "{what}: {message}");
        }
        other => panic!("{what}: expected Error::Internal, got {other:?}"),
    }
}

#[test]
fn a_panic_in_a_cpu_worker_is_an_error_for_that_call() {
    let dir = common::fixtures_dir().join("llama_gqa_untied");
    let opts = LoadOptions {
        threads: 2,
        all_logits: true,
        ..Default::default()
    };
    let mut model = Model::load(&dir, &opts).unwrap();
    let prompt = [1u32, 5, 9, 13, 2];
    let reference = greedy(&mut model, &prompt, 6).unwrap();
    model.reset();

    // In the prefill (the third op), then the model is usable and gives the same tokens.
    fault::panic_in_cpu_op(3);
    expect_internal(greedy(&mut model, &prompt, 6), "prefill");
    assert_eq!(greedy(&mut model, &prompt, 6).unwrap(), reference);

    // In a decode step, with the cache holding the prompt: the next call reuses what the last
    // successful one left and still agrees.
    model.reset();
    let cfg = model.config().clone();
    // A step runs at most 8 pooled ops a layer (7 matmuls and attention) and the lm_head.
    let ops_per_step = cfg.num_layers * 8 + 1;
    fault::panic_in_cpu_op(ops_per_step + 3);
    expect_internal(greedy(&mut model, &prompt, 6), "decode");
    assert_eq!(greedy(&mut model, &prompt, 6).unwrap(), reference);

    // Scoring every position goes through the same boundary.
    fault::panic_in_cpu_op(1);
    expect_internal(model.score(&prompt), "score");
    assert!(model.score(&prompt).is_ok());
    fault::panic_in_cpu_op(0);
}
