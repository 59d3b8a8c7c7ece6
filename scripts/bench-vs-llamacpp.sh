#!/usr/bin/env bash
# minfer against llama.cpp on the same model, weight type and thread count, in one run.
#
# What it does, from a fresh clone:
#   1. Installs llama.cpp as a benchmark peer only (never a dependency of minfer, never committed):
#      the PyPI source distribution of llama-cpp-python vendors llama.cpp (tools/llama-bench
#      included); it is unpacked into .tools/llama.cpp-src (git-ignored) and built CPU-only with
#      native flags. On CPUs with AMX it first applies the gcc-12 fix (a compiler barrier before
#      _tile_loadconfig in ggml/src/ggml-cpu/amx/mmq.cpp), see /work/shared/PEERS.md. Installs
#      cmake with apt-get when it is missing. Skipped when already built.
#   2. Fetches SmolLM2-135M-Instruct (Q4_1) with scripts/fetch-model.sh and makes same-weights
#      variants with llama-quantize --allow-requantize: F32, BF16, F16, Q8_0 (Q4_1 as is), and
#      Hugging Face safetensors directories of the BF16 and F32 weights with `minfer convert`.
#   3. Measures the machine's read bandwidth (scripts/bandwidth/stream_sum.c) and alternates
#      llama-bench and `minfer bench` (A B A B ..., PASSES passes, the side that goes first
#      swapping every pass) at each thread count; medians per (weight type, test). GEMMA is
#      the real Gemma 3 270M Q4_K_M file as shipped (fetch-model.sh), run by both programs.
#   4. Prints one table per thread count (pp128, pp512, tg128 for each program, the ratio
#      minfer/llama.cpp, decode bandwidth as a fraction of the measured read bandwidth, the
#      instruction set minfer detected) and writes them to docs/benchmarks-vs-llamacpp.md with
#      the date and the CPU model, and a summary table of the ratios into README.md (between
#      the bench-vs-llamacpp markers).
#
# Usage: scripts/bench-vs-llamacpp.sh [--passes N] [--threads "1 2"] [--types "F32 BF16 F16 Q8_0 Q4_1 GEMMA"]
#                                     [--setup-only] [--no-write] [--minfer PATH] [--report DIR]
#                                     [--baseline PATH] [--no-safetensors]
#   --report DIR  only render the table again from the raw results of an earlier run
#   --baseline PATH  also run this (earlier) minfer binary on the GGUF files, interleaved in the
#                 same passes, and print its row ("minfer, before") beside the current one
#   --no-safetensors  skip the Hugging Face directory variants of BF16 and F32 (half the runs)
# Environment: LLAMA_CPP_PYTHON_VERSION (default 0.3.36), BUILD_JOBS (default 2),
#              MINFER_MODELS_DIR (default models/), CARGO_TARGET_DIR (where minfer is built).
# Raw outputs of every run are kept in .tools/bench-results/<timestamp>/.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="$ROOT/.tools"
LCPP_PY_VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
SRC="$TOOLS/llama.cpp-src"
BUILD="$SRC/build"
MODELS="${MINFER_MODELS_DIR:-$ROOT/models}"
BASE="SmolLM2-135M-Instruct"
JOBS="${BUILD_JOBS:-2}"
PASSES=4
THREADS_LIST="1 2"
THREADS=2
TYPES="F32 BF16 F16 Q8_0 Q4_1 GEMMA"
SETUP_ONLY=0
WRITE=1
MINFER=""
REPORT_ONLY=""
BASELINE=""
SAFETENSORS=1

die() { echo "bench-vs-llamacpp: error: $*" >&2; exit 1; }
say() { echo "bench-vs-llamacpp: $*" >&2; }

while [[ $# -gt 0 ]]; do
    case "$1" in
        --passes) PASSES="${2:?--passes needs a number}"; shift 2 ;;
        --threads) THREADS_LIST="${2:?--threads needs a list of thread counts}"; shift 2 ;;
        --types) TYPES="${2:?--types needs a list}"; shift 2 ;;
        --setup-only) SETUP_ONLY=1; shift ;;
        --no-write) WRITE=0; shift ;;
        --minfer) MINFER="${2:?--minfer needs a path}"; shift 2 ;;
        --report) REPORT_ONLY="${2:?--report needs a results directory}"; shift 2 ;;
        --baseline) BASELINE="${2:?--baseline needs a path}"; shift 2 ;;
        --no-safetensors) SAFETENSORS=0; shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
done
[[ "$PASSES" =~ ^[1-9][0-9]*$ ]] || die "--passes: '$PASSES' is not a positive integer"
for n in $THREADS_LIST; do
    [[ "$n" =~ ^[1-9][0-9]*$ ]] || die "--threads: '$n' is not a positive integer"
done
for t in $TYPES; do
    case "$t" in F32|BF16|F16|Q8_0|Q4_1|GEMMA) ;; *) die "--types: '$t' is not one of F32 BF16 F16 Q8_0 Q4_1 GEMMA" ;; esac
done

PYTHON="${PYTHON:-python3}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python
command -v "$PYTHON" >/dev/null 2>&1 || die "python3 is needed (pip downloads, JSON parsing)"

has_amx() { grep -qw amx_tile /proc/cpuinfo 2>/dev/null; }

# ---------------------------------------------------------------------------------------------
# 1. llama.cpp, the peer
# ---------------------------------------------------------------------------------------------
ensure_cmake() {
    command -v cmake >/dev/null 2>&1 && return 0
    say "cmake is missing; installing it with apt-get"
    local SUDO=""
    [[ "$(id -u)" -eq 0 ]] || SUDO="sudo"
    if command -v apt-get >/dev/null 2>&1 && { [[ -z "$SUDO" ]] || command -v sudo >/dev/null 2>&1; }; then
        $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq cmake >/dev/null \
            || die "apt-get install cmake failed"
    else
        die "cmake is missing and apt-get is not usable here; install cmake (>= 3.14) and run this again"
    fi
    command -v cmake >/dev/null 2>&1 || die "cmake still missing after apt-get install"
}

fetch_llamacpp_source() {
    if [[ -f "$SRC/.minfer-source" ]] && grep -qx "llama-cpp-python==$LCPP_PY_VERSION" "$SRC/.minfer-source"; then
        return 0
    fi
    [[ -e "$SRC" ]] && { say "replacing $SRC (different or incomplete source)"; rm -rf "$SRC"; }
    mkdir -p "$TOOLS"
    local tmp
    tmp="$(mktemp -d "$TOOLS/dl.XXXXXX")"
    say "downloading the llama-cpp-python $LCPP_PY_VERSION source distribution from PyPI (~75 MB)"
    # --no-binary only for this package: with :all: pip would also build its build-time
    # dependencies (cmake, ninja) from source just to read the metadata.
    if ! "$PYTHON" -m pip download --no-deps --no-binary llama-cpp-python --disable-pip-version-check \
            --dest "$tmp" "llama-cpp-python==$LCPP_PY_VERSION" >"$tmp/pip.log" 2>&1; then
        tail -n 5 "$tmp/pip.log" >&2
        rm -rf "$tmp"
        die "could not download llama-cpp-python==$LCPP_PY_VERSION (try: $PYTHON -m pip index versions llama-cpp-python)"
    fi
    local sdist
    sdist="$(ls "$tmp"/llama_cpp_python-*.tar.gz 2>/dev/null | head -n 1)"
    [[ -n "$sdist" ]] || { rm -rf "$tmp"; die "pip left no llama_cpp_python-*.tar.gz in $tmp"; }
    tar -xzf "$sdist" -C "$tmp"
    local vendored
    vendored="$(ls -d "$tmp"/llama_cpp_python-*/vendor/llama.cpp 2>/dev/null | head -n 1)"
    [[ -n "$vendored" && -f "$vendored/tools/llama-bench/llama-bench.cpp" ]] \
        || { rm -rf "$tmp"; die "the sdist has no vendor/llama.cpp with tools/llama-bench"; }
    mv "$vendored" "$SRC"
    echo "llama-cpp-python==$LCPP_PY_VERSION" >"$SRC/.minfer-source"
    rm -rf "$tmp"
}

# gcc 12 drops the stores filling the AMX tile configuration before _tile_loadconfig
# (quantized prefill then dies with an illegal instruction); a compiler barrier on the struct
# keeps them. Only needed, and only applied, where the CPU has AMX.
AMX_FIX='__asm__ __volatile__("" : : "r"(&tc) : "memory"); // minfer bench: gcc-12 AMX fix'
patch_amx() {
    local f="$SRC/ggml/src/ggml-cpu/amx/mmq.cpp"
    [[ -f "$f" ]] || die "$f not found: cannot apply the AMX fix"
    grep -qF "gcc-12 AMX fix" "$f" && return 0
    "$PYTHON" - "$f" "$AMX_FIX" <<'PY'
import sys
path, fix = sys.argv[1:]
src = open(path).read()
needle = "    _tile_loadconfig(&tc);"
if src.count(needle) != 1:
    sys.exit(f"bench-vs-llamacpp: error: expected one '{needle.strip()}' in {path}, found {src.count(needle)}")
open(path, "w").write(src.replace(needle, "    " + fix + "\n" + needle))
PY
}

build_llamacpp() {
    local variant
    if has_amx; then variant="native, AMX present: gcc-12 AMX fix applied"; else variant="native, no AMX on this CPU: unpatched"; fi
    local stamp="$BUILD/.minfer-build"
    if [[ -x "$BUILD/bin/llama-bench" && -x "$BUILD/bin/llama-quantize" && -f "$stamp" ]] \
            && grep -qxF "$variant" "$stamp"; then
        say "llama.cpp already built ($variant)"
        LCPP_VARIANT="$variant"
        return 0
    fi
    ensure_cmake
    fetch_llamacpp_source
    has_amx && patch_amx
    say "building llama.cpp (CPU only, $variant) with $JOBS jobs; ~10 minutes on 2 cores"
    cmake -S "$SRC" -B "$BUILD" -DGGML_NATIVE=ON -DLLAMA_OPENSSL=OFF -DLLAMA_CURL=OFF -DGGML_CUDA=OFF \
        -DCMAKE_BUILD_TYPE=Release -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF \
        -DLLAMA_BUILD_EXAMPLES=OFF >"$TOOLS/llama.cpp-cmake.log" 2>&1 \
        || { tail -n 20 "$TOOLS/llama.cpp-cmake.log" >&2; die "cmake configure failed (log: $TOOLS/llama.cpp-cmake.log)"; }
    cmake --build "$BUILD" -j"$JOBS" --target llama-bench llama-quantize >"$TOOLS/llama.cpp-build.log" 2>&1 \
        || { tail -n 20 "$TOOLS/llama.cpp-build.log" >&2; die "llama.cpp build failed (log: $TOOLS/llama.cpp-build.log)"; }
    echo "$variant" >"$stamp"
    LCPP_VARIANT="$variant"
}

# ---------------------------------------------------------------------------------------------
# minfer and the bandwidth probe
# ---------------------------------------------------------------------------------------------
build_minfer() {
    if [[ -n "$MINFER" ]]; then
        [[ -x "$MINFER" ]] || die "--minfer: $MINFER is not an executable"
        return 0
    fi
    say "building minfer (release)"
    (cd "$ROOT" && cargo build --release --quiet --bin minfer) || die "cargo build --release failed"
    MINFER="${CARGO_TARGET_DIR:-$ROOT/target}/release/minfer"
    [[ "$MINFER" = /* ]] || MINFER="$ROOT/$MINFER"
    [[ -x "$MINFER" ]] || die "no minfer binary at $MINFER"
}

build_probe() {
    PROBE="$TOOLS/stream_sum"
    local src="$ROOT/scripts/bandwidth/stream_sum.c"
    if [[ ! -x "$PROBE" || "$src" -nt "$PROBE" ]]; then
        mkdir -p "$TOOLS"
        ${CC:-cc} -O3 -march=native -pthread "$src" -o "$PROBE" || die "could not compile $src"
    fi
}

# ---------------------------------------------------------------------------------------------
# 2. Models: same weights in every type, GGUF and safetensors
# ---------------------------------------------------------------------------------------------
gguf_of() {
    case "$1" in
        GEMMA) echo "$MODELS/gemma-3-270m-q4_k_m.gguf" ;;
        *) echo "$MODELS/$BASE.$1.gguf" ;;
    esac
}
st_of() { echo "$MODELS/$BASE.$1-safetensors"; }

make_models() {
    "$ROOT/scripts/fetch-model.sh" >&2 || die "scripts/fetch-model.sh failed"
    local src; src="$(gguf_of Q4_1)"
    for t in F32 BF16 F16 Q8_0; do
        local out; out="$(gguf_of "$t")"
        [[ -s "$out" ]] && continue
        say "llama-quantize --allow-requantize Q4_1 -> $t"
        "$BUILD/bin/llama-quantize" --allow-requantize "$src" "$out.part" "$t" >"$TOOLS/quantize-$t.log" 2>&1 \
            || { rm -f "$out.part"; tail -n 5 "$TOOLS/quantize-$t.log" >&2; die "llama-quantize to $t failed"; }
        mv "$out.part" "$out"
    done
    # The same weights as Hugging Face directories: BF16 from the BF16 file (lossless), F32
    # from the F32 file. (minfer convert writes bf16 or f32 only, so there is no F16 directory.)
    local t dt dir
    [[ "$SAFETENSORS" -eq 1 ]] || return 0
    for t in BF16 F32; do
        dt="$(echo "$t" | tr 'A-Z' 'a-z')"
        dir="$(st_of "$t")"
        [[ -f "$dir/config.json" ]] && continue
        say "minfer convert $BASE.$t.gguf -> $dir (--dtype $dt)"
        rm -rf "$dir.part"
        "$MINFER" convert "$(gguf_of "$t")" "$dir.part" --dtype "$dt" >&2 || die "minfer convert to $t failed"
        rm -rf "$dir"
        mv "$dir.part" "$dir"
    done
}

# ---------------------------------------------------------------------------------------------
# 3. Measure, interleaved
# ---------------------------------------------------------------------------------------------
run_llama() { # TYPE PASS
    local out="$RAW/llama-$1-p$2.json"
    "$BUILD/bin/llama-bench" -m "$(gguf_of "$1")" -p 128,512 -n 128 -t "$THREADS" -fa 0,1 -r 1 -o json \
        >"$out" 2>"$RAW/llama-$1-p$2.log" || { say "llama-bench failed on $1 (pass $2): see $RAW/llama-$1-p$2.log"; rm -f "$out"; }
}

run_minfer() { # TYPE PASS MODELPATH LABEL [BINARY]
    local tag="$4-p$2"
    local MINFER="${5:-$MINFER}"
    # pp128 and tg128 in one run (decode follows the 128-token prompt); pp512 in a second run
    # with a short decode, whose decode figure is not used.
    "$MINFER" bench "$3" --prompt-len 128 --gen-len 128 --threads "$THREADS" --repeats 1 --json \
        >"$RAW/minfer-$tag-128.json" 2>"$RAW/minfer-$tag-128.log" \
        || { say "minfer bench failed on $3 (pp128, pass $2): see $RAW/minfer-$tag-128.log"; rm -f "$RAW/minfer-$tag-128.json"; }
    "$MINFER" bench "$3" --prompt-len 512 --gen-len 16 --threads "$THREADS" --repeats 1 --json \
        >"$RAW/minfer-$tag-512.json" 2>"$RAW/minfer-$tag-512.log" \
        || { say "minfer bench failed on $3 (pp512, pass $2): see $RAW/minfer-$tag-512.log"; rm -f "$RAW/minfer-$tag-512.json"; }
}

measure() {
    RAW="$TOOLS/bench-results/$(date -u +%Y%m%dT%H%M%SZ)-t$THREADS"
    mkdir -p "$RAW"
    local t
    for t in $TYPES; do
        "$MINFER" inspect "$(gguf_of "$t")" --json >"$RAW/inspect-$t.json" || die "minfer inspect failed on $t"
    done
    say "raw results in $RAW"
    printf '%s\n' "$LCPP_VARIANT" "$THREADS" "$PASSES" "$TYPES" >"$RAW/meta"
    local p
    for ((p = 1; p <= PASSES; p++)); do
        say "pass $p/$PASSES: read bandwidth"
        "$PROBE" "$THREADS" 512 10 >"$RAW/bandwidth-t$THREADS-p$p.json"
        "$PROBE" 1 512 10 >"$RAW/bandwidth-t1-p$p.json"
        for t in $TYPES; do
            say "pass $p/$PASSES: $t"
            # Swap who goes first every pass so neither side always meets the warmer (or
            # busier) machine.
            if (( p % 2 == 1 )); then run_llama "$t" "$p"; fi
            run_minfer "$t" "$p" "$(gguf_of "$t")" "$t-gguf"
            if [[ -n "$BASELINE" ]]; then
                run_minfer "$t" "$p" "$(gguf_of "$t")" "$t-base" "$BASELINE"
            fi
            if [[ "$SAFETENSORS" -eq 1 ]] && [[ "$t" == BF16 || "$t" == F32 ]]; then
                run_minfer "$t" "$p" "$(st_of "$t")" "$t-st"
            fi
            if (( p % 2 == 0 )); then run_llama "$t" "$p"; fi
        done
    done
    uptime | sed 's/.*load average: //' >"$RAW/load"
}

# ---------------------------------------------------------------------------------------------
# 4. Report
# ---------------------------------------------------------------------------------------------
report() {
    local cpu; cpu="$(lscpu 2>/dev/null | sed -n 's/^Model name:[[:space:]]*//p' | head -n 1)"
    local flags; flags="$(grep -m1 '^flags' /proc/cpuinfo 2>/dev/null | tr ' ' '\n' \
        | grep -E '^(avx2|avx512f|avx512_bf16|avx512_vnni|avx_vnni|amx_tile|amx_bf16|amx_int8)$' | tr '\n' ' ')"
    local minfer_rev; minfer_rev="$(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    "$PYTHON" - "$RAW" "$TYPES" "$THREADS" "$PASSES" "$cpu" "$flags" "$LCPP_VARIANT" \
        "$LCPP_PY_VERSION" "$minfer_rev" "" "$(nproc 2>/dev/null || echo '?')" \
        "$(uptime | sed 's/.*load average: //')" <<'PY'
import glob, json, os, statistics, sys, time

(raw, types, threads, passes, cpu, flags, variant, lcpp_py, minfer_rev, out, ncpu,
 load) = sys.argv[1:]
types = types.split()

def load_json(path):
    try:
        with open(path) as f:
            txt = f.read().strip()
        return json.loads(txt) if txt else None
    except (OSError, ValueError):
        return None

def med(xs):
    xs = [x for x in xs if x is not None and x == x and x > 0]
    return statistics.median(xs) if xs else None

# Bandwidth probe, every pass.
bw = {}
for n in (threads, "1"):
    bw[n] = med([(load_json(p) or {}).get("read_gb_s") for p in glob.glob(f"{raw}/bandwidth-t{n}-p*.json")])

# llama-bench: per pass, the better of fa=0 and fa=1 for each test, then medians over passes.
llama, llama_runs, fa_pick, lcpp_build = {}, {}, {}, ""
for t in types:
    per = {"pp128": [], "pp512": [], "tg128": []}
    picks = {"pp128": [], "pp512": [], "tg128": []}
    for path in sorted(glob.glob(f"{raw}/llama-{t}-p*.json")):
        rows = load_json(path) or []
        best = {}
        for r in rows:
            test = f"pp{r['n_prompt']}" if r.get("n_gen", 0) == 0 else f"tg{r['n_gen']}"
            fa = r.get("flash_attn")
            if test in per and (test not in best or r["avg_ts"] > best[test][0]):
                best[test] = (r["avg_ts"], fa)
            if not lcpp_build and r.get("build_commit"):
                c = r["build_commit"]
                lcpp_build = (f"{c} (build {r.get('build_number', '?')})" if c != "unknown"
                              else "not recorded (the sdist carries no git metadata)")
        for k, (v, fa) in best.items():
            per[k].append(v)
            picks[k].append(fa)
    llama_runs[t] = per
    llama[t] = {k: med(v) for k, v in per.items()}
    llama[t]["passes"] = len(per["tg128"])
    fa_pick[t] = picks

# minfer: pp128 + tg128 from the 128-token run, pp512 from the 512-token run.
def minfer_rows(label):
    r128 = [load_json(p) for p in sorted(glob.glob(f"{raw}/minfer-{label}-p*-128.json"))]
    r512 = [load_json(p) for p in sorted(glob.glob(f"{raw}/minfer-{label}-p*-512.json"))]
    r128 = [r for r in r128 if r]
    r512 = [r for r in r512 if r]
    if not r128 and not r512:
        return None
    return {
        "pp128": med([r.get("prefill_tok_s") for r in r128]),
        "pp512": med([r.get("prefill_tok_s") for r in r512]),
        "tg128": med([r.get("decode_tok_s") for r in r128]),
        "gb_s": med([r.get("decode_gb_s") for r in r128]),
        "own_bw": med([r.get("read_bandwidth_gb_s") for r in r128 + r512]),
        "backend": (r128 or r512)[0].get("backend", "?"),
        "passes": len(r128),
    }

def gguf_bytes(t):
    info = load_json(f"{raw}/inspect-{t}.json") or {}
    wb = sum((info.get("weight_bytes") or {}).values())
    per_tok = (info.get("kv_cache_bytes_per_token") or {}).get("bf16", 0)
    dtypes = sorted((info.get("parameters_by_dtype") or {}).keys())
    # llama-bench's tg128 starts from an empty cache with an f16 KV cache: mean position 64.
    return wb, wb + per_tok * 64, info.get("file_bytes", 0), dtypes

QUANT = {"Q8_0", "Q4_1", "GEMMA"}
NAME = {"GEMMA": "Gemma 3 270M Q4_K_M"}
def name_of(t):
    return NAME.get(t, f"SmolLM2 {t}")
def fmt(x, nd=0):
    return "—" if x is None else f"{x:,.{nd}f}"
def ratio(a, b):
    return "—" if a is None or b is None else f"{a / b:.2f}×"
over_ceiling = []
def pct(gb, ref):
    if gb is not None and ref and gb > ref:
        over_ceiling.append(gb)
    return "—" if gb is None or not ref else f"{gb:.1f} GB/s ({100 * gb / ref:.0f}%)"

# The ceiling is the better of the two probes (stream_sum here, minfer's own in its runs): on a
# shared VM either can catch a busy moment, and a fraction of an underestimate would flatter.
own_bw = med([(minfer_rows(f"{t}-gguf") or {}).get("own_bw") for t in types])
isa = next((r["backend"] for r in (minfer_rows(f"{t}-gguf") for t in types) if r and r.get("backend")), "?")
ref_bw = max([x for x in (bw.get(threads), own_bw) if x] or [0]) or None
lines = []
lines.append("| weights (file) | program | pp128 tok/s | pp512 tok/s | tg128 tok/s | decode read rate (% of read bandwidth) |")
lines.append("|---|---|---:|---:|---:|---:|")
notes = []
dequantized = []
for t in types:
    wb, tg_bytes, fbytes, dtypes = gguf_bytes(t)
    L = llama[t]
    l_gb = L["tg128"] * tg_bytes / 1e9 if L.get("tg128") else None
    size = f"{fbytes / 2**20:.0f} MiB" if fbytes else "?"
    lines.append(f"| **{name_of(t)}** ({size}) | llama.cpp | {fmt(L.get('pp128'))} | {fmt(L.get('pp512'))} | {fmt(L.get('tg128'), 1)} | {pct(l_gb, ref_bw)} |")
    for label, name in ((f"{t}-gguf", "GGUF"), (f"{t}-base", "GGUF, before"), (f"{t}-st", "safetensors dir")):
        M = minfer_rows(label)
        if M is None:
            continue
        # Did minfer keep the weights as stored? Its own bytes per decoded token say so: a
        # dequantized Q8_0/Q4_1 model streams several times the file's weight bytes.
        mark = ""
        if t in QUANT and M["gb_s"] and M["tg128"] and wb and M["gb_s"] * 1e9 / M["tg128"] > 1.5 * wb:
            mark = " \\*"
            dequantized.append(t)
        lines.append(f"| | minfer, {name}{mark} | {fmt(M['pp128'])} | {fmt(M['pp512'])} | {fmt(M['tg128'], 1)} | {pct(M['gb_s'], ref_bw)} |")
        lines.append(f"| | *ratio minfer / llama.cpp* | **{ratio(M['pp128'], L.get('pp128'))}** | **{ratio(M['pp512'], L.get('pp512'))}** | **{ratio(M['tg128'], L.get('tg128'))}** | |")
any_quant = bool(dequantized)

# The target of the speed issue: >= 1.0x llama.cpp in every cell, same weights and threads.
TARGET = {t: (1.0, 1.0) for t in ("F32", "BF16", "F16", "Q8_0", "Q4_1", "GEMMA")}
met, missed = [], []
for t in types:
    M = minfer_rows(f"{t}-gguf")
    L = llama[t]
    if not M:
        continue
    for k, goal in (("pp128", TARGET[t][0]), ("pp512", TARGET[t][0]), ("tg128", TARGET[t][1])):
        if M.get(k) and L.get(k):
            r = M[k] / L[k]
            (met if r >= goal else missed).append(f"{t} {k} {r:.2f}× (target {goal:.1f}×)")

# Each program's fastest pass: on a machine whose neighbours come and go, the best pass is the
# nearest thing to each program's speed on a quiet machine, and contention that hit one side
# harder in most passes cannot decide the comparison alone.
def minfer_best(label, k):
    size = "512" if k == "pp512" else "128"
    key = "decode_tok_s" if k == "tg128" else "prefill_tok_s"
    vals = [(load_json(p) or {}).get(key) for p in glob.glob(f"{raw}/minfer-{label}-p*-{size}.json")]
    vals = [v for v in vals if v]
    return max(vals) if vals else None
best_lines = ["", "Best pass of each program (its fastest of the passes), as llama.cpp vs minfer tok/s → minfer / llama.cpp:", "",
              "| weights | pp128 | pp512 | tg128 |", "|---|---|---|---|"]
best_met, best_missed = [], []
for t in types:
    for label, name in ((f"{t}-gguf", f"{t} GGUF"), (f"{t}-st", f"{t} safetensors")):
        if minfer_rows(label) is None:
            continue
        cells = []
        for k in ("pp128", "pp512", "tg128"):
            lb = max(llama_runs[t][k]) if llama_runs[t][k] else None
            mb = minfer_best(label, k)
            nd = 1 if k == "tg128" else 0
            cells.append(f"{fmt(lb, nd)} vs {fmt(mb, nd)} → **{ratio(mb, lb)}**")
            if label.endswith("gguf") and lb and mb:
                goal = TARGET[t][1] if k == "tg128" else TARGET[t][0]
                (best_met if mb / lb >= goal else best_missed).append(f"{t} {k} {mb / lb:.2f}× (target {goal:.1f}×)")
        best_lines.append(f"| {name} | " + " | ".join(cells) + " |")

fa_desc = []
for t in types:
    ks = []
    for k in ("pp128", "pp512", "tg128"):
        v = fa_pick[t][k]
        if v:
            on = sum(1 for x in v if x)
            ks.append(f"{k} fa=1 in {on}/{len(v)}")
    if ks:
        fa_desc.append(f"{t}: " + ", ".join(ks))

try:  # the run's start, from the results directory's name (also right for --report)
    date = time.strftime("%Y-%m-%d %H:%M UTC", time.strptime(os.path.basename(raw.rstrip("/"))[:16], "%Y%m%dT%H%M%SZ"))
except ValueError:
    date = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
try:
    with open(f"{raw}/load") as f:
        load = f.read().strip() or load
except OSError:
    pass
hdr = [
    f"Measured {date} on **{cpu or 'unknown CPU'}** ({ncpu} CPUs; {flags.strip() or 'no AVX2'}; "
    f"minfer's kernels: {isa}), "
    f"{threads} threads, medians of {passes} interleaved passes (llama-bench and `minfer bench` alternating, "
    "the side going first swapping each pass).",
    "",
    f"Machine read bandwidth, measured during the run (512 MiB streaming sum, best of 10, median over passes): "
    f"scripts/bandwidth/stream_sum.c {fmt(bw.get(threads), 1)} GB/s on {threads} threads "
    f"({fmt(bw.get('1'), 1)} GB/s on 1); minfer's own probe (in each `minfer bench` run) {fmt(own_bw, 1)} GB/s. "
    f"Fractions below are of the larger, **{fmt(ref_bw, 1)} GB/s**.",
    "",
    f"llama.cpp: vendored in llama-cpp-python {lcpp_py} (commit {lcpp_build or '?'}), built CPU-only with "
    f"-DGGML_NATIVE=ON ({variant}); llama-bench `-p 128,512 -n 128 -t {threads} -fa 0,1 -r 1`, the better "
    f"flash-attention setting per test and pass. minfer: commit {minfer_rev}, `minfer bench --threads {threads} --repeats 1` "
    "(one warm-up pass, one timed pass per run).",
    "",
]
foot = [
    "",
    "Notes:",
    "- Same weights everywhere: F32, BF16, F16 and Q8_0 were made from the Q4_1 file with "
    "`llama-quantize --allow-requantize`; the safetensors directories with `minfer convert` from the BF16 and F32 files "
    "(compared against llama.cpp on the GGUF of the same type). Gemma 3 270M is the shipped Q4_K_M file "
    "(Q4_K, Q5_0, Q6_K and Q8_0 tensors) in both programs.",
]
if any_quant:
    foot.append(f"- \\* minfer did not keep {'/'.join(dequantized)} weights quantized: it dequantized them to f32 at load and "
                "runs f32 kernels, so those rows compare f32 compute (and f32 memory traffic) against llama.cpp's "
                "int8 dot products; its decode read rate there counts the f32 bytes it actually streams.")
foot += [
    "- tg128: llama-bench decodes 128 tokens from an empty cache; minfer decodes 128 tokens after its 128-token "
    "prompt (positions 128–255), so it reads a slightly larger KV cache (a small handicap for minfer).",
    "- Decode read rate = bytes read per token (all weights; the tied embedding is the output matrix; plus the KV "
    "cache at the mean position) × tok/s, against the streaming-sum bandwidth above. For llama.cpp the weight "
    "bytes are those of the GGUF file's tensors.",
    f"- Noise: this is a shared VM (load average at the end of the run: {load}); its neighbours come and go, so "
    "single figures can be off by tens of percent. Interleaving and medians reduce but do not remove that; rerun "
    "`scripts/bench-vs-llamacpp.sh` on a quiet machine for firm numbers.",
]
foot.append(
    "- Contention likely hits the two programs differently. llama.cpp's threads meet at a barrier after every op "
    "of the graph (hundreds per token) and spin while they wait (llama-bench default poll=50): when a neighbour "
    "holds one of the two cores, each of those ops waits for the descheduled thread. minfer joins its threads only "
    "around the large products (small ops run on the calling thread), and a rayon chunk the descheduled thread has "
    "not started can be taken by the other. So on a busy machine llama.cpp probably loses more than minfer, and "
    "ratios above 1 here can be contention rather than speed: compare the per-pass figures below, and treat the "
    "targets line as provisional until a run on an otherwise idle machine confirms it.")
if over_ceiling:
    foot.append(f"- Some decode read rates (up to {max(over_ceiling):.1f} GB/s) exceed the measured read bandwidth: "
                "the probes caught busy moments, so the percentages overstate how close to the ceiling decode runs.")
if best_met or best_missed:
    foot.append("- Targets by best passes (GGUF rows): " + (f"met: {', '.join(best_met)}; " if best_met else "none met; ")
                + (f"missed: {', '.join(best_missed)}." if best_missed else "none missed."))
if met or missed:
    foot.append("- Targets by medians (GGUF rows): " + (f"met: {', '.join(met)}; " if met else "none met; ")
                + (f"missed: {', '.join(missed)}." if missed else "none missed."))
if fa_desc:
    foot.append("- llama.cpp flash-attention pick: " + "; ".join(fa_desc) + ".")

# Every pass's figure, so the reader can judge the noise behind each median.
spread = ["", "Per-pass figures (tok/s, in pass order; llama.cpp: the better fa setting of each pass):", ""]
spread.append("| weights | test | llama.cpp | minfer GGUF | minfer safetensors |")
spread.append("|---|---|---|---|---|")
def passes_of(label, k):
    size = "512" if k == "pp512" else "128"
    key = "decode_tok_s" if k == "tg128" else "prefill_tok_s"
    vals = []
    for p in sorted(glob.glob(f"{raw}/minfer-{label}-p*-{size}.json")):
        v = (load_json(p) or {}).get(key)
        vals.append("—" if v is None else f"{v:.0f}" if k != "tg128" else f"{v:.1f}")
    return " / ".join(vals) or "—"
for t in types:
    for k in ("pp128", "pp512", "tg128"):
        lv = " / ".join((f"{v:.0f}" if k != "tg128" else f"{v:.1f}") for v in llama_runs[t][k]) or "—"
        spread.append(f"| {t} | {k} | {lv} | {passes_of(f'{t}-gguf', k)} | {passes_of(f'{t}-st', k)} |")
table = "\n".join(lines)
print()
print("\n".join(hdr))
print(table)
print("\n".join(foot))
print("\n".join(best_lines))
print("\n".join(spread))
section = (f"## {threads} thread{'s' if threads != '1' else ''}\n\n" + "\n".join(hdr) + "\n" + table + "\n"
           + "\n".join(foot) + "\n" + "\n".join(best_lines) + "\n" + "\n".join(spread) + "\n")
with open(f"{raw}/section.md", "w") as f:
    f.write(section)
summary = {"threads": threads, "date": date, "cpu": cpu, "flags": flags.strip(), "isa": isa, "passes": passes,
           "rows": []}
for t in types:
    M = minfer_rows(f"{t}-gguf") or {}
    L = llama[t]
    summary["rows"].append({"type": t, "name": name_of(t), **{
        k: {"minfer": M.get(k), "llama": L.get(k)} for k in ("pp128", "pp512", "tg128")}})
with open(f"{raw}/summary.json", "w") as f:
    json.dump(summary, f)
PY
}

# Every thread count's section into docs/benchmarks-vs-llamacpp.md, and the ratios into README.md.
assemble() { # RAWDIR...
    local out="" readme=""
    [[ "$WRITE" -eq 1 ]] && { out="$ROOT/docs/benchmarks-vs-llamacpp.md"; readme="$ROOT/README.md"; }
    "$PYTHON" - "$out" "$readme" "$@" <<'PY'
import json, re, sys
out, readme, raws = sys.argv[1], sys.argv[2], sys.argv[3:]
secs, sums = [], []
for r in raws:
    with open(f"{r}/section.md") as f:
        secs.append(f.read())
    with open(f"{r}/summary.json") as f:
        sums.append(json.load(f))
def cell(m, l, nd):
    if not m or not l:
        return "—"
    return f"{m:,.{nd}f} / {l:,.{nd}f} = **{m / l:.2f}×**"
s0 = sums[0]
head = (f"Measured {s0['date']} on {s0['cpu'] or 'an unknown CPU'} ({s0['flags'] or 'no AVX2'}; minfer's "
        f"kernels: {s0['isa']}), minfer / llama.cpp tok/s, medians of {s0['passes']} interleaved passes per thread "
        "count, same weights, llama.cpp's better flash-attention setting per cell; produced by "
        "`scripts/bench-vs-llamacpp.sh`, details and per-pass figures in "
        "[docs/benchmarks-vs-llamacpp.md](docs/benchmarks-vs-llamacpp.md).")
rows = ["| weights | threads | pp128 | pp512 | tg128 |", "|---|---|---|---|---|"]
names = [r["name"] for r in s0["rows"]]
for name in names:
    for s in sums:
        r = next((x for x in s["rows"] if x["name"] == name), None)
        if r is None:
            continue
        rows.append(f"| {name} | {s['threads']} | " + " | ".join(
            cell(r[k]["minfer"], r[k]["llama"], 1 if k == "tg128" else 0) for k in ("pp128", "pp512", "tg128")) + " |")
summary = head + "\n\n" + "\n".join(rows) + "\n"
print("\n" + summary)
if out:
    with open(out, "w") as f:
        f.write("# minfer vs llama.cpp on the CPU (generated)\n\n")
        f.write("Written by `scripts/bench-vs-llamacpp.sh`; each run replaces this file. Hand-written analysis "
                "of earlier rounds: [benchmarks.md](benchmarks.md).\n\n")
        f.write(summary + "\n" + "\n".join(secs))
    print(f"written to {out}", file=sys.stderr)
if readme:
    with open(readme) as f:
        txt = f.read()
    begin, end = "<!-- bench-vs-llamacpp:begin -->", "<!-- bench-vs-llamacpp:end -->"
    if begin in txt and end in txt:
        a, b = txt.index(begin) + len(begin), txt.index(end)
        with open(readme, "w") as f:
            f.write(txt[:a] + "\n" + summary + txt[b:])
        print(f"summary written to {readme}", file=sys.stderr)
    else:
        print(f"{readme} has no bench-vs-llamacpp markers: summary not written there", file=sys.stderr)
PY
}

# Everything runs from main, called on the last line: bash has then parsed the whole file before
# the first step, so editing the script while a long measurement runs cannot derail it.
LCPP_VARIANT=""
main() {
    if [[ -n "$REPORT_ONLY" ]]; then
        [[ -f "$REPORT_ONLY/meta" ]] || die "--report: $REPORT_ONLY/meta not found (not a results directory)"
        RAW="$(cd "$REPORT_ONLY" && pwd)"
        { read -r LCPP_VARIANT; read -r THREADS; read -r PASSES; read -r TYPES; } <"$RAW/meta"
        report
        assemble "$RAW"
        exit 0
    fi
    build_llamacpp
    build_minfer
    build_probe
    make_models
    [[ "$SETUP_ONLY" -eq 1 ]] && { say "setup done (llama.cpp: $LCPP_VARIANT; minfer: $MINFER)"; exit 0; }
    say "llama.cpp: $LCPP_VARIANT"
    local raws=()
    for THREADS in $THREADS_LIST; do
        say "minfer: $MINFER; $THREADS threads, $PASSES passes, types: $TYPES"
        measure
        report
        raws+=("$RAW")
    done
    assemble "${raws[@]}"
}

main; exit $?
