#!/usr/bin/env bash
# The GPU check, in two halves.
#
#   scripts/gpu-check.sh --prepare   here (Rust toolchain, crates.io): build the release binary,
#                                    the GPU test executable and the CUDA bench with
#                                    `--features cuda` into gpu-bin/ (git-ignored; carry it),
#                                    and sm_80 / sm_90 cubins of every kernel (JIT fallback).
#   scripts/gpu-check.sh --dry-run   here, no GPU: the same steps end to end on the PTX
#                                    interpreter (cargo builds first, untimed; parity = the
#                                    op-parity cases of tests/cuda_kernels.rs, bench = the
#                                    interpreter smoke pass; torch skipped), per-step timeouts.
#   scripts/gpu-check.sh             on the GPU machine (no Rust, no registry, PyTorch present):
#                                    1. kernel + fixture parity tests on the GPU (tests/cuda_gpu.rs)
#                                    2. the two ceilings with PyTorch: device-copy bandwidth and
#                                       bf16 matmul rate (8192^3 and the models' prefill shapes)
#                                    3. benches/cuda.rs: matvec GB/s, GEMM TFLOP/s, attention,
#                                       random-weight DeepSeek-R1-Distill-Qwen-1.5B- and
#                                       Llama-3-8B-shaped models end to end
#                                    4. `minfer bench synthetic:{qwen2-1.5b,llama3-8b} --device cuda`
#                                    and prints one short table last. Logs go to $OUT (or gpu-bin/out).
#
# Sized for one 10-minute device call, total under 6 minutes: probe <= 20 s, parity <= 120 s,
# torch <= 60 s, benches <= 120 s, CLI <= 2 x 25 s; each step under its own `timeout`, so a
# hang costs its step and the summary still prints. Parity runs first with
# CUDA_LAUNCH_BLOCKING=1 (every launch synchronous: the first fault names its kernel). It only reads the GPU's state (nvidia-smi
# queries); it never changes clocks, modes or MIG.
# Exit status: 1 if the parity tests fail, else 0 (speed is reported, not asserted).
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=gpu-bin

prepare() {
    set -e
    export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target}
    rm -rf "$BIN"
    mkdir -p "$BIN"
    # One JSON line per artifact; keep the executables of the targets we asked for.
    pick() { python3 -c '
import json, sys
want = sys.argv[1]
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == want:
        print(m["executable"])
' "$1" | tail -1; }
    cargo build --release --features cuda --bin minfer
    cp "$CARGO_TARGET_DIR/release/minfer" "$BIN/minfer"
    t=$(cargo test --release --features cuda --no-run --message-format=json --test cuda_gpu | pick cuda_gpu)
    cp "$t" "$BIN/cuda_gpu"
    b=$(cargo bench --features cuda --no-run --message-format=json --bench cuda | pick cuda)
    cp "$b" "$BIN/bench_cuda"
    # Debug info is not needed on the device machine and the carry limit is 64 MiB.
    for f in "$BIN"/minfer "$BIN"/cuda_gpu "$BIN"/bench_cuda; do
        strip --strip-debug "$f" 2>/dev/null || true
    done
    # Cubins for sm_80 and sm_90, assembled here with ptxas: the driver loads them
    # (MINFER_CUBIN_DIR) if its JIT refuses a PTX file, after printing the JIT's log.
    mkdir -p "$BIN/cubin"
    local ptxas=${PTXAS:-.tools/nvcc/nvidia/cuda_nvcc/bin/ptxas}
    [[ -x "$ptxas" ]] || SKIP_SASS=1 scripts/ptxas-check.sh >/dev/null
    for arch in sm_80 sm_90; do
        for f in kernels/*.ptx; do
            "$ptxas" -arch="$arch" "$f" -o "$BIN/cubin/$(basename "$f" .ptx).$arch.cubin"
        done
    done
    # The test executable finds tests/fixtures through the path it was built in.
    pwd > "$BIN/MANIFEST_DIR"
    git rev-parse HEAD > "$BIN/COMMIT" 2>/dev/null || true
    ls -la "$BIN"
    du -sh "$BIN"
    echo "gpu-bin/ ready: carry it to the GPU machine and run scripts/gpu-check.sh there"
}

torch_ceilings() {
    python3 - <<'PY'
import json, statistics, sys
try:
    import torch
except Exception as e:  # noqa: BLE001
    print(json.dumps({"error": f"no torch: {e}"}))
    sys.exit(0)
if not torch.cuda.is_available():
    print(json.dumps({"error": "torch sees no CUDA device"}))
    sys.exit(0)

def median_ms(fn, reps=20):
    fn(); torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        a = torch.cuda.Event(enable_timing=True); b = torch.cuda.Event(enable_timing=True)
        a.record(); fn(); b.record(); torch.cuda.synchronize()
        ts.append(a.elapsed_time(b))
    return statistics.median(ts)

out = {"device": torch.cuda.get_device_name(0)}
n = 1 << 28  # 1 GiB of f32
x = torch.rand(n, device="cuda"); y = torch.empty_like(x)
ms = median_ms(lambda: y.copy_(x))
out["copy_gbs"] = 2 * 4 * n / (ms * 1e-3) / 1e9
del x, y
m = 8192
a = torch.randn(m, m, device="cuda", dtype=torch.bfloat16)
b = torch.randn(m, m, device="cuda", dtype=torch.bfloat16)
ms = median_ms(lambda: a @ b)
out["mm_8192_tflops"] = 2 * m**3 / (ms * 1e-3) / 1e12
del a, b
# prefill shapes: x [512, K] @ W[N, K]^T, as F.linear (the gate/up projection of each model)
for name, nn, kk in [("qwen2-1.5b", 8960, 1536), ("llama3-8b", 14336, 4096)]:
    ws = [torch.randn(nn, kk, device="cuda", dtype=torch.bfloat16) for _ in range(4)]
    xs = torch.randn(512, kk, device="cuda", dtype=torch.bfloat16)
    i = [0]
    def f():
        i[0] += 1
        return torch.nn.functional.linear(xs, ws[i[0] % 4])
    ms = median_ms(f)
    out[f"linear_{name}_tflops"] = 2 * 512 * nn * kk / (ms * 1e-3) / 1e12
print(json.dumps(out))
PY
}

# Read-only environment probe: driver, GPU, glibc, the driver's PTX JIT library.
probe() {
    echo "== 0. environment"
    echo "date: $(date -u +%FT%TZ)  host: $(uname -srm)"
    echo "glibc: $(ldd --version 2>/dev/null | head -1 || echo unknown)"
    if command -v nvidia-smi >/dev/null; then
        timeout 15 nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm,clocks.mem,power.limit,mig.mode.current \
            --format=csv 2>&1 || echo "nvidia-smi failed or timed out"
    else
        echo "nvidia-smi: not found"
    fi
    local lib
    for lib in libcuda.so.1 libnvidia-ptxjitcompiler.so.1; do
        if ldconfig -p 2>/dev/null | grep -q "$lib"; then
            echo "$lib: $(ldconfig -p | grep "$lib" | head -1 | sed 's/.*=> //')"
        else
            echo "$lib: NOT FOUND (the driver cannot JIT kernels/*.ptx without it)"
        fi
    done
    [[ -f "$BIN/COMMIT" ]] && echo "binaries built from $(cat "$BIN/COMMIT")"
    return 0
}

# `step NAME SECONDS CMD...`: run CMD under its own timeout, log its status and duration.
step() {
    local name=$1 secs=$2
    shift 2
    local t0=$SECONDS
    timeout "$secs" "$@"
    local rc=$?
    [[ $rc -eq 124 ]] && echo "STEP $name: timed out after ${secs}s"
    echo "STEP $name: rc=$rc, $((SECONDS - t0)) s (limit ${secs}s)"
    return $rc
}

dry_run() {
    local out=${OUT:-$BIN/out-dry}
    mkdir -p "$out"
    local t0=$SECONDS
    probe 2>&1 | tee "$out/probe.log"
    echo "== build (dry run only: the device machine gets gpu-bin/)"
    cargo test --release --test cuda_kernels --no-run 2>&1 | tail -2
    cargo bench --bench cuda --no-run 2>&1 | tail -2
    echo "== 1. parity tests on the interpreter (CUDA_LAUNCH_BLOCKING=1 as on the device)"
    local parity=ok
    # the op-parity cases only: the fixture models take minutes on the interpreter
    CUDA_LAUNCH_BLOCKING=1 step parity 240 cargo test --release --test cuda_kernels -- \
        --test-threads=2 --skip every_variant --skip bf16_and_f16 2>&1 | tee "$out/parity.log"
    [[ ${PIPESTATUS[0]} -eq 0 ]] || parity=FAILED
    echo "== 2. ceilings: skipped (no GPU, no torch needed)"
    echo '{"error": "dry run: no GPU"}' > "$out/torch.json"
    echo "== 3. benchmarks (interpreter smoke pass)"
    step bench 120 cargo bench --bench cuda 2>&1 | tee "$out/bench.log"
    echo "== 4. predicted decode (performance model over the interpreter's counters)"
    MINFER_PREDICT=h200 step predict 150 cargo bench --bench cuda 2>&1 | tee -a "$out/bench.log"
    echo
    echo "== summary (dry run, $((SECONDS - t0)) s)"
    local shown=$parity
    [[ "$parity" == ok ]] && shown="ok (op-parity cases; fixture models skipped)"
    summary "$shown" "$out"
    [[ "$parity" == ok ]]
}

run_check() {
    local out=${OUT:-$BIN/out}
    mkdir -p "$out"
    local t0=$SECONDS
    probe 2>&1 | tee "$out/probe.log"
    for f in cuda_gpu bench_cuda minfer; do
        [[ -x "$BIN/$f" ]] || { echo "missing $BIN/$f: run scripts/gpu-check.sh --prepare on a build machine and carry gpu-bin/" >&2; exit 2; }
    done

    # tests/fixtures is found through the build machine's path, baked into the test executable
    local md
    md=$(cat "$BIN/MANIFEST_DIR" 2>/dev/null || echo "")
    if [[ -n "$md" && "$md" != "$PWD" && ! -e "$md" ]]; then
        mkdir -p "$(dirname "$md")" 2>/dev/null && ln -s "$PWD" "$md" 2>/dev/null \
            || echo "warning: cannot link $md -> $PWD; the fixture test will not find tests/fixtures" >&2
    fi

    [[ -d "$BIN/cubin" ]] && export MINFER_CUBIN_DIR="$PWD/$BIN/cubin"
    echo "== 1. parity tests on the GPU (CUDA_LAUNCH_BLOCKING=1: the first fault names its kernel)"
    local parity=ok
    CUDA_LAUNCH_BLOCKING=1 MINFER_FIXTURES="$PWD/tests/fixtures/models" \
        step parity 120 "$BIN/cuda_gpu" --test-threads=1 --nocapture 2>&1 | tee "$out/parity.log"
    [[ ${PIPESTATUS[0]} -eq 0 ]] || parity=FAILED
    grep -q "skipping" "$out/parity.log" && parity="SKIPPED (no device?)"

    echo "== 2. ceilings (PyTorch)"
    export -f torch_ceilings
    step torch 60 bash -c torch_ceilings | grep -v '^STEP' | tee "$out/torch.json"

    echo "== 3. kernel and model benchmarks"
    step bench 120 "$BIN/bench_cuda" 2>&1 | tee "$out/bench.log"

    echo "== 4. minfer bench (CLI)"
    if "$BIN/minfer" help 2>&1 | grep -q -- "--device"; then
        for preset in qwen2-1.5b llama3-8b; do
            step "cli-$preset" 25 "$BIN/minfer" bench "synthetic:$preset" --device cuda --dtype bf16 \
                --prompt-len 128 --gen-len 64 --profile 2>&1 | tee -a "$out/cli-bench.log"
        done
    else
        echo "the CLI has no --device option yet: skipped (benches/cuda.rs above covers the same model)" | tee "$out/cli-bench.log"
    fi

    echo
    echo "== summary ($((SECONDS - t0)) s)"
    summary "$parity" "$out"
    [[ "$parity" == ok ]]
}

# The one table, printed last and written to $out/summary.txt.
summary() {
    local parity=$1 out=$2
    PARITY="$parity" python3 - "$out/torch.json" "$out/bench.log" <<'PY' | tee "$out/summary.txt"
import json, os, re, sys
t = {}
try:
    t = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
except Exception:
    pass
rows = [("parity tests (kernels + fixtures)", os.environ.get("PARITY", "?"))]
if "copy_gbs" in t:
    rows.append(("device copy, torch (ceiling 1)", f"{t['copy_gbs']:.0f} GB/s"))
    rows.append(("bf16 matmul 8192^3, torch (ceiling 2)", f"{t['mm_8192_tflops']:.0f} TFLOP/s"))
elif "error" in t:
    rows.append(("torch ceilings", t["error"]))
for line in open(sys.argv[2], errors="replace"):
    if not line.startswith("TABLE|"):
        continue
    _, what, val = line.rstrip("\n").split("|", 2)
    # express decode GB/s against torch's copy and the GEMM against torch's linear at that shape
    m = re.search(r"([0-9.]+) GB/s", val)
    if "decode" in what and m and "copy_gbs" in t:
        val += f" = {100 * float(m.group(1)) / t['copy_gbs']:.0f}% of torch copy"
    m = re.search(r"([0-9.]+) TFLOP/s", val)
    if what.startswith("gemm_bf16") and m:
        for name in ("qwen2-1.5b", "llama3-8b"):
            k = f"linear_{name}_tflops"
            if name in what and k in t:
                val += f" = {100 * float(m.group(1)) / t[k]:.0f}% of torch ({t[k]:.0f})"
    rows.append((what, val))
w = max(len(r[0]) for r in rows)
for a, b in rows:
    print(f"{a:<{w}}  {b}")
PY
}

case "${1:-}" in
    --prepare) prepare ;;
    --dry-run) dry_run ;;
    "") run_check ;;
    *) echo "usage: scripts/gpu-check.sh [--prepare | --dry-run]" >&2; exit 2 ;;
esac
