#!/usr/bin/env bash
# A long fuzz campaign on one target: scripts/fuzz.sh TARGET SECONDS [SEED]
#
# Targets: gguf safetensors safetensors_index config tokenizer_json encode_decode chat_template ptx
# (`scripts/fuzz.sh list` prints them). Runs in the test profile (opt-level 2 with overflow
# checks and debug assertions on, so wrapping arithmetic is a failure, not a silent wrap).
# The seed defaults to the clock and is printed; the same seed replays the same inputs. Every
# failure is saved under tests/fuzz/regressions/TARGET/ and replays in every later run
# (scripts/test.sh included) until it is fixed: commit it with the fix.
set -euo pipefail
cd "$(dirname "$0")/.."

targets="gguf safetensors safetensors_index config tokenizer_json encode_decode chat_template ptx server_api"
if [ "${1:-}" = list ] || [ $# -lt 2 ]; then
  echo "usage: scripts/fuzz.sh TARGET SECONDS [SEED]"
  echo "targets: $targets"
  [ "${1:-}" = list ] && exit 0 || exit 2
fi
target=$1
seconds=$2
seed=${3:-$(date +%s)}
case " $targets " in
  *" $target "*) ;;
  *) echo "unknown target $target (targets: $targets)" >&2; exit 2 ;;
esac
echo "fuzz $target for $seconds s, seed $seed"
FUZZ_SECONDS=$seconds FUZZ_SEED=$seed \
  cargo test --test fuzz -- --exact "$target" --nocapture
