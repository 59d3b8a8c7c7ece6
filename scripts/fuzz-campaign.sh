#!/usr/bin/env bash
# Long, coverage-guided fuzz campaigns on every target:
#   scripts/fuzz-campaign.sh MINUTES [SEED] [TARGET...]
#
# Builds the fuzz test binary once with LLVM SanitizerCoverage (stable rustc: the sancov-module
# pass with inline 8-bit edge counters; tests/fuzz/engine.rs reads them) in target/fuzz-cov, then
# runs the targets concurrently, each under `nice -n 19` and /usr/bin/time -v, for MINUTES each.
# Writes to target/fuzz-campaign/RUNID/: TARGET.log (progress every minute, the summary, the
# failures), TARGET.time (/usr/bin/time -v: CPU time the process actually got) and results.tsv:
#   target seed wall_s execs counters edges features outcome_shapes corpus failures
#   slowest_input_s user_s sys_s
# Failures are saved under tests/fuzz/regressions/TARGET/ as in scripts/fuzz.sh.
# FUZZ_JOBS=N runs at most N targets at once (default: all).
set -euo pipefail
cd "$(dirname "$0")/.."

all="gguf safetensors safetensors_index config tokenizer_json encode_decode chat_template ptx server_api"
if [ $# -lt 1 ]; then
  echo "usage: scripts/fuzz-campaign.sh MINUTES [SEED] [TARGET...]" >&2
  echo "targets: $all" >&2
  exit 2
fi
minutes=$1
seed=${2:-$(date +%s)}
shift $(( $# >= 2 ? 2 : 1 ))
targets=${*:-$all}
seconds=$(( minutes * 60 ))

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target/fuzz-cov}
export RUSTFLAGS="${RUSTFLAGS:-} -C passes=sancov-module -C llvm-args=-sanitizer-coverage-level=3 \
-C llvm-args=-sanitizer-coverage-inline-8bit-counters"
echo "building the instrumented fuzz binary in $CARGO_TARGET_DIR"
# --target: the flags then reach only the target's code, not build scripts or proc macros (which
# would not link without the counters hook).
host=$(rustc -vV | sed -n "s/^host: //p")
bin=$(nice -n 19 cargo test --test fuzz --no-run --no-default-features --features server --target "$host" --message-format=json \
  2>"$CARGO_TARGET_DIR.build.log" \
  | grep -o '"executable":"[^"]*fuzz-[^"]*"' | tail -1 | cut -d'"' -f4)
[ -x "$bin" ] || { echo "no fuzz binary built" >&2; exit 1; }

run=target/fuzz-campaign/$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$run"
results=$PWD/$run/results.tsv
echo "fuzz campaign: $targets, $minutes min each, seed $seed, binary $bin, results $results"

one() {
  local t=$1
  FUZZ_SECONDS=$seconds FUZZ_SEED=$seed FUZZ_PROGRESS=60 FUZZ_RESULTS=$results.$t \
    /usr/bin/time -v -o "$run/$t.time" nice -n 19 "$bin" --exact "$t" --nocapture \
    >"$run/$t.log" 2>&1 || true
  local user sys line
  user=$(awk -F': ' '/User time/ {print $2}' "$run/$t.time")
  sys=$(awk -F': ' '/System time/ {print $2}' "$run/$t.time")
  if [ -s "$results.$t" ]; then
    line=$(sed "s/\$/\t$user\t$sys/" "$results.$t")
  else
    # Killed (see the .time file's signal) or failed before its summary.
    line=$(printf '%s\t%s\tno result (see %s)\t\t\t\t\t\t\t\t\t%s\t%s' "$t" "$seed" \
      "$run/$t.log" "$user" "$sys")
  fi
  echo "$line" >>"$results"
  rm -f "$results.$t"
  echo "done: $line"
}

jobs=${FUZZ_JOBS:-0}
for t in $targets; do
  if [ "$jobs" -gt 0 ]; then
    while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do sleep 5; done
  fi
  one "$t" &
done
wait
printf 'target\tseed\twall_s\texecs\tcounters\tedges\tfeatures\toutcome_shapes\tcorpus\tfailures\tslowest_input_s\tuser_s\tsys_s\n'
cat "$results"
