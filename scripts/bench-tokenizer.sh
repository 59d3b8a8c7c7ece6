#!/usr/bin/env bash
# Encode throughput of minfer's tokenizer vs the Hugging Face `tokenizers` package (Rust core,
# called from Python) on the same ~1 MB text, one thread each, best of 5 runs on a warm
# tokenizer. Prints MB/s for both and the ratio minfer / tokenizers.
#   scripts/bench-tokenizer.sh [PYTHON]      (default /work/pyenv/bin/python, else python3)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-/work/pyenv/bin/python}
[ -x "$PY" ] || PY=python3
FIX=tests/fixtures/tokenizers
TEXT=$FIX/corpus.txt
export RAYON_RS_NUM_THREADS=1 RAYON_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false

cargo bench --quiet --bench tokenizer --no-run >/dev/null 2>&1 || cargo bench --bench tokenizer --no-run
for name in qwen2 smollm2 llama3ish llama2ish; do
  ours=$(cargo bench --quiet --bench tokenizer -- "$FIX/$name/tokenizer.json" "$TEXT" | tail -1)
  theirs=$("$PY" - "$FIX/$name/tokenizer.json" "$TEXT" <<'PYEOF'
import sys, time
from tokenizers import Tokenizer
tok = Tokenizer.from_file(sys.argv[1])
corpus = open(sys.argv[2], encoding="utf-8").read()
text = ""
while len(text.encode()) < 1_000_000:
    text += corpus
best = float("inf")
for _ in range(5):
    t0 = time.perf_counter()
    ids = tok.encode(text, add_special_tokens=False).ids
    best = min(best, time.perf_counter() - t0)
mb = len(text.encode()) / 1e6
print(f"tokenizers: {mb:.2f} MB -> {len(ids)} tokens, best {best:.4f} s = {mb / best:.2f} MB/s")
PYEOF
)
  a=$(sed -E 's/.* = ([0-9.]+) MB\/s/\1/' <<<"$ours")
  b=$(sed -E 's/.* = ([0-9.]+) MB\/s/\1/' <<<"$theirs")
  echo "$name"
  echo "  $ours"
  echo "  $theirs"
  awk -v a="$a" -v b="$b" 'BEGIN { printf "  ratio minfer/tokenizers = %.2f\n", a / b }'
done
