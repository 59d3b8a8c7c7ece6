#!/usr/bin/env bash
# Encode throughput of minfer's tokenizer vs the Hugging Face `tokenizers` package (Rust core,
# called from Python) on the same ~1 MB text, one thread each, best of 5 runs on a warm
# tokenizer: the whole text in one encode call, and line by line (many short calls, a python
# loop over tok.encode on the other side: its per-call overhead is part of what users pay).
# Prints MB/s for both and the ratios minfer / tokenizers.
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
  ours_all=$(cargo bench --quiet --bench tokenizer -- "$FIX/$name/tokenizer.json" "$TEXT")
  ours=$(grep -v "per line" <<<"$ours_all" | tail -1)
  ours_lines=$(grep "per line" <<<"$ours_all" | tail -1)
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
lines = text.splitlines(keepends=True)
best = float("inf")
for _ in range(5):
    t0 = time.perf_counter()
    n = sum(len(tok.encode(l, add_special_tokens=False).ids) for l in lines)
    best = min(best, time.perf_counter() - t0)
print(f"tokenizers per line: {mb:.2f} MB in {len(lines)} lines -> {n} tokens, best {best:.4f} s = {mb / best:.2f} MB/s")
PYEOF
)
  theirs_lines=$(grep "per line" <<<"$theirs")
  theirs=$(grep -v "per line" <<<"$theirs")
  a=$(sed -E 's/.* = ([0-9.]+) MB\/s/\1/' <<<"$ours")
  b=$(sed -E 's/.* = ([0-9.]+) MB\/s/\1/' <<<"$theirs")
  echo "$name"
  echo "  $ours"
  echo "  $theirs"
  awk -v a="$a" -v b="$b" 'BEGIN { printf "  ratio minfer/tokenizers = %.2f\n", a / b }'
  a=$(sed -E 's/.* = ([0-9.]+) MB\/s/\1/' <<<"$ours_lines")
  b=$(sed -E 's/.* = ([0-9.]+) MB\/s/\1/' <<<"$theirs_lines")
  echo "  $ours_lines"
  echo "  $theirs_lines"
  awk -v a="$a" -v b="$b" 'BEGIN { printf "  ratio minfer/tokenizers per line = %.2f\n", a / b }'
done
