//! The Batcher (continuous batching over the paged KV cache): a sequence's greedy tokens are the
//! same alone, beside others, and through `Model::generate`; prefix sharing reuses blocks and
//! changes no token; blocks come back when sequences end; bad requests are errors.

mod common;

use std::path::{Path, PathBuf};

use minfer::{Batcher, Device, LoadOptions, Model, SeqId};

fn argmax(x: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] {
            best = i;
        }
    }
    best as u32
}

fn load(path: &Path, max_seqs: usize, ctx: usize, block: usize) -> Model {
    let opts = LoadOptions {
        device: Device::Cpu,
        threads: 2,
        context_len: Some(ctx),
        max_seqs,
        kv_block_size: block,
        max_batch: 64,
        ..LoadOptions::default()
    };
    Model::load(path, &opts).expect("load")
}

/// Run `prompts` to `n` greedy tokens each, all at once: every prompt is admitted, prefilled,
/// then decoded together, one step for all.
fn run_together(b: &mut Batcher, prompts: &[Vec<u32>], n: usize) -> Vec<Vec<u32>> {
    let ids: Vec<SeqId> = prompts.iter().map(|p| b.add(p, n).expect("add")).collect();
    for &id in &ids {
        // Small budgets: prefill interleaves in several chunks.
        while !b.prefill(id, 7).expect("prefill") {}
    }
    let mut out: Vec<Vec<u32>> = ids
        .iter()
        .map(|&id| vec![argmax(b.logits(id).unwrap())])
        .collect();
    for _ in 1..n {
        let step: Vec<(SeqId, u32)> = ids
            .iter()
            .zip(&out)
            .map(|(&id, o)| (id, *o.last().unwrap()))
            .collect();
        b.decode(&step).expect("decode");
        for (o, &id) in out.iter_mut().zip(&ids) {
            o.push(argmax(b.logits(id).unwrap()));
        }
    }
    for id in ids {
        b.remove(id);
    }
    out
}

fn fixture(name: &str) -> PathBuf {
    common::fixtures_dir().join(name)
}

fn prompts(vocab: u32, lens: &[usize]) -> Vec<Vec<u32>> {
    let mut rng = common::Rng::new(9);
    lens.iter()
        .map(|&n| (0..n).map(|_| rng.below(vocab)).collect())
        .collect()
}

#[test]
fn greedy_tokens_are_the_same_alone_together_and_through_generate() {
    for name in ["llama_gqa_untied", "qwen2_sliding", "gemma3_mixed"] {
        let dir = fixture(name);
        let mut single = load(&dir, 1, 128, 32);
        let vocab = single.config().vocab_size as u32;
        let ps = prompts(vocab, &[5, 1, 17, 40, 9, 33]);
        let n = 12;
        let want: Vec<Vec<u32>> = ps
            .iter()
            .map(|p| common::greedy_ids(&mut single, p, n))
            .collect();
        // Block size 4: many blocks per sequence.
        let mut b = Batcher::new(load(&dir, 8, 128, 4)).unwrap();
        b.set_prefix_cache(false);
        for (p, w) in ps.iter().zip(&want) {
            let alone = run_together(&mut b, std::slice::from_ref(p), n);
            assert_eq!(&alone[0], w, "{name}: alone vs generate");
        }
        let together = run_together(&mut b, &ps, n);
        assert_eq!(together, want, "{name}: together vs alone");
        assert_eq!(b.kv_stats().blocks_in_use, 0, "{name}: blocks freed");
    }
}

#[test]
fn a_shared_prefix_is_reused_and_changes_no_token() {
    let dir = fixture("llama_gqa_untied");
    let mut b = Batcher::new(load(&dir, 4, 128, 8)).unwrap();
    // Reuse every cached position (not only the bit-exact resume points).
    b.set_exact_prefix(false);
    let vocab = b.model().config().vocab_size as u32;
    let mut rng = common::Rng::new(4);
    let system: Vec<u32> = (0..29).map(|_| rng.below(vocab)).collect();
    let mut a = system.clone();
    a.extend([3, 4, 5]);
    let mut c = system.clone();
    c.extend([6, 7]);
    let first = run_together(&mut b, std::slice::from_ref(&a), 6);
    let stats = b.kv_stats();
    assert_eq!(stats.blocks_in_use, 0);
    assert!(stats.blocks_cached >= 4, "{stats:?}");

    // c shares 29 tokens with a: 3 full blocks of 8 by reference, 5 positions copied.
    let id = b.add(&c, 6).unwrap();
    assert_eq!(b.cached_tokens(id), 29);
    b.remove(id);
    // The same prompt again: everything but its last token comes from the cache.
    let id = b.add(&a, 6).unwrap();
    assert_eq!(b.cached_tokens(id), a.len() - 1);
    b.remove(id);

    let again = run_together(&mut b, std::slice::from_ref(&a), 6);
    assert_eq!(again, first, "a prompt served from the cache");
    let mut fresh = Batcher::new(load(&dir, 4, 128, 8)).unwrap();
    fresh.set_prefix_cache(false);
    let want_c = run_together(&mut fresh, std::slice::from_ref(&c), 6);
    let got_c = run_together(&mut b, std::slice::from_ref(&c), 6);
    assert_eq!(got_c, want_c, "a prompt continuing a cached prefix");
}

/// The default, exact prefix reuse: a prompt resumes from a cached prefix only at a point from
/// which the rest computes bit-identical logits, so sharing changes no logit at all.
#[test]
fn exact_prefix_reuse_resumes_at_safe_points_and_changes_no_logit() {
    let dir = fixture("qwen2_sliding");
    let vocab = {
        let m = load(&dir, 1, 256, 8);
        m.config().vocab_size as u32
    };
    let mut rng = common::Rng::new(5);
    let system: Vec<u32> = (0..100).map(|_| rng.below(vocab)).collect();
    let with = |tail: &[u32]| [&system[..], tail].concat();
    let a = with(&(0..40).map(|_| rng.below(vocab)).collect::<Vec<_>>());
    let c = with(&(0..40).map(|_| rng.below(vocab)).collect::<Vec<_>>());
    let short = with(&[1, 2, 3]);
    let mut fresh = Batcher::new(load(&dir, 4, 256, 8)).unwrap();
    fresh.set_prefix_cache(false);
    let logits_of = |b: &mut Batcher, p: &[u32]| {
        let id = b.add(p, 4).unwrap();
        while !b.prefill(id, 64).unwrap() {}
        let (l, cached) = (b.logits(id).unwrap().to_vec(), b.cached_tokens(id));
        b.remove(id);
        (l, cached)
    };
    let mut b = Batcher::new(load(&dir, 4, 256, 8)).unwrap();
    logits_of(&mut b, &a);
    // 100 shared tokens, max_batch 64: resume at 96 (a multiple of 32 whose first chunk,
    // 96..128, has 32 rows).
    let (got, cached) = logits_of(&mut b, &c);
    assert_eq!(cached, 96);
    assert_eq!(got, logits_of(&mut fresh, &c).0, "logits after exact reuse");
    // 103 tokens: from 96 the chunk would be 7 rows; from 64 (a whole-prefill boundary) exact.
    let (got, cached) = logits_of(&mut b, &short);
    assert_eq!(cached, 64);
    assert_eq!(
        got,
        logits_of(&mut fresh, &short).0,
        "logits after exact reuse"
    );
}

#[test]
fn the_pool_evicts_cached_prefixes_and_refuses_what_does_not_fit() {
    let dir = fixture("llama_gqa_untied");
    // 2 sequences × 32 positions in blocks of 8: 8 blocks.
    let mut b = Batcher::new(load(&dir, 2, 32, 8)).unwrap();
    assert_eq!(b.kv_stats().blocks_total, 8);
    let vocab = b.model().config().vocab_size as u32;
    let ps = prompts(vocab, &[20, 20, 20]);
    for p in &ps {
        // Each leaves 2 full blocks cached; the third forces evictions.
        run_together(&mut b, std::slice::from_ref(p), 4);
    }
    let s = b.kv_stats();
    assert_eq!(s.blocks_in_use, 0);
    assert!(s.blocks_cached <= 8);

    // Errors, each naming what is wrong, none a panic.
    assert!(b.add(&[], 4).is_err(), "empty prompt");
    assert!(b.add(&[vocab], 4).is_err(), "token out of range");
    assert!(b.add(&ps[0], 13).is_err(), "beyond the context");
    let x = b.add(&ps[0], 12).unwrap();
    let y = b.add(&ps[1], 12).unwrap();
    assert!(!b.can_admit(&ps[2], 1), "both slots taken");
    assert!(b.add(&ps[2], 1).is_err(), "no free slot");
    assert!(b.decode(&[(x, 1)]).is_err(), "decode before prefill");
    while !b.prefill(x, 64).unwrap() {}
    assert!(b.decode(&[(x, 1), (x, 2)]).is_err(), "one id twice");
    assert!(b.decode(&[(x, vocab)]).is_err(), "token out of range");
    b.remove(x);
    b.remove(y);
    assert!(b.decode(&[(x, 1)]).is_err(), "a removed sequence");
    assert_eq!(b.kv_stats().blocks_in_use, 0);
}

#[test]
fn real_model_batch_of_sixteen_matches_each_alone() {
    let Some(path) = common::real_model() else {
        return;
    };
    let mut single = load(&path, 1, 512, 32);
    let tok = single.tokenizer().expect("tokenizer");
    let texts = [
        "The capital of France is",
        "Once upon a time",
        "def fibonacci(n):",
        "Water boils at",
    ];
    let ps: Vec<Vec<u32>> = (0..16)
        .map(|i| {
            let mut p = tok.encode(texts[i % 4], false).unwrap();
            // Vary lengths: distinct prompts, shared prefixes.
            p.extend(std::iter::repeat_n(p[0], i / 4));
            p
        })
        .collect();
    let n = 8;
    let want: Vec<Vec<u32>> = ps
        .iter()
        .map(|p| common::greedy_ids(&mut single, p, n))
        .collect();
    let mut b = Batcher::new(load(&path, 16, 512, 32)).unwrap();
    let together = run_together(&mut b, &ps, n);
    for (i, (g, w)) in together.iter().zip(&want).enumerate() {
        assert_eq!(g, w, "prompt {i}: batch of 16 vs generate");
    }
}
