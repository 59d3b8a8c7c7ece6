#!/usr/bin/env bash
# Assemble every kernels/*.ptx with NVIDIA's ptxas for sm_80 and sm_90, spills as errors, and
# print the register / shared-memory / stack report per kernel.
#
# ptxas comes from the PyPI wheel nvidia-cuda-nvcc-cu12 (no CUDA toolkit needed), installed
# once into .tools/nvcc (git-ignored); set PTXAS=/path/to/ptxas to use another one.
# Exit status: non-zero if any file fails to assemble or any kernel spills or uses a stack
# frame (local memory would mean a register array went to DRAM).
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ -z "${PTXAS:-}" ]]; then
    PTXAS=.tools/nvcc/nvidia/cuda_nvcc/bin/ptxas
    if [[ ! -x "$PTXAS" ]]; then
        echo "installing ptxas (pip wheel nvidia-cuda-nvcc-cu12) into .tools/nvcc ..." >&2
        PY=${PYTHON:-python3}
        "$PY" -m pip install --quiet --no-deps --target .tools/nvcc nvidia-cuda-nvcc-cu12 >&2
    fi
fi
[[ -x "$PTXAS" ]] || { echo "ptxas not found at $PTXAS" >&2; exit 2; }
"$PTXAS" --version | tail -1

fail=0
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
printf '%-8s %-22s %5s %8s %8s %6s\n' arch kernel regs smem_B stack_B spill_B
for arch in sm_80 sm_90; do
    for f in kernels/*.ptx; do
        log="$tmp/$(basename "$f").$arch.log"
        if ! "$PTXAS" -arch="$arch" -v --warn-on-spills --warn-on-local-memory-usage --warning-as-error \
            "$f" -o "$tmp/out.cubin" >"$log" 2>&1; then
            echo "FAIL $f ($arch):" >&2
            cat "$log" >&2
            fail=1
            continue
        fi
        # ptxas -v: "Compiling entry function 'X'", "N bytes stack frame, N bytes spill stores,
        # N bytes spill loads", "Used N registers, ... N bytes smem"
        awk -v arch="$arch" '
            /Compiling entry function/ { match($0, /'\''[^'\'']+'\''/); k = substr($0, RSTART + 1, RLENGTH - 2) }
            /bytes stack frame/ { stack = $1; spill = $5 + $9 }
            /Used [0-9]+ registers/ {
                regs = $0; sub(/.*Used /, "", regs); sub(/ registers.*/, "", regs)
                smem = 0; if (match($0, /[0-9]+ bytes smem/)) { smem = substr($0, RSTART, RLENGTH); sub(/ bytes smem/, "", smem) }
                printf "%-8s %-22s %5s %8s %8s %6s\n", arch, k, regs, smem, stack, spill
                if (stack + 0 > 0 || spill + 0 > 0) bad = 1
            }
            END { exit bad }
        ' "$log" || { echo "FAIL $f ($arch): stack frame or spills" >&2; fail=1; }
    done
done
if [[ $fail -ne 0 ]]; then
    echo "ptxas check FAILED" >&2
    exit 1
fi
echo "ptxas check passed: every kernel assembles for sm_80 and sm_90 without spills or local memory"

# Machine code: disassemble with nvdisasm (PyPI wheel nvidia-cuda-nvdisasm, into .tools/nvdisasm;
# set NVDISASM=/path/to/nvdisasm to use another) and check the loads and loops per kernel
# (scripts/sass-check.py). SKIP_SASS=1 skips it (no network for the first install).
if [[ -n "${SKIP_SASS:-}" ]]; then
    echo "machine-code check skipped (SKIP_SASS set)"
    exit 0
fi
if [[ -z "${NVDISASM:-}" ]]; then
    NVDISASM=$(ls .tools/nvdisasm/nvidia/*/bin/nvdisasm 2>/dev/null | head -1 || true)
    if [[ -z "$NVDISASM" ]]; then
        echo "installing nvdisasm (pip wheel nvidia-cuda-nvdisasm) into .tools/nvdisasm ..." >&2
        ${PYTHON:-python3} -m pip install --quiet --no-deps --target .tools/nvdisasm nvidia-cuda-nvdisasm >&2
        NVDISASM=$(ls .tools/nvdisasm/nvidia/*/bin/nvdisasm | head -1)
    fi
fi
${PYTHON:-python3} scripts/sass-check.py "$PTXAS" "$NVDISASM"
