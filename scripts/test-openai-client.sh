#!/usr/bin/env bash
# The official `openai` Python package as a real client of `minfer serve`: installs it (from
# PyPI) into a venv under .cache, starts the server on a free port of 127.0.0.1 with the real
# test model, and runs tests/openai_client.py against it. Traffic stays on 127.0.0.1.
#   scripts/test-openai-client.sh [MODEL]
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:-models/SmolLM2-135M-Instruct.Q4_1.gguf}
[ -f "$MODEL" ] || { echo "missing $MODEL (run scripts/fetch-model.sh)" >&2; exit 1; }
VENV=.cache/openai-venv
if ! "$VENV/bin/python" -c "import openai" 2>/dev/null; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "openai>=1.40,<3"
fi
cargo build --release --bin minfer
BIN="${CARGO_TARGET_DIR:-target}/release/minfer"
LOG=$(mktemp)
"$BIN" serve "$MODEL" --port 0 --ctx 1024 --parallel 4 --threads 2 --alias smollm2 2>"$LOG" &
PID=$!
trap 'kill $PID 2>/dev/null || true; rm -f "$LOG"' EXIT
addr=""
for _ in $(seq 1 600); do
  addr=$(grep -o 'http://[0-9.:]*' "$LOG" | head -1 || true)
  [ -n "$addr" ] && break
  kill -0 "$PID" 2>/dev/null || { cat "$LOG" >&2; exit 1; }
  sleep 0.1
done
[ -n "$addr" ] || { echo "the server did not start" >&2; cat "$LOG" >&2; exit 1; }
timeout 600 "$VENV/bin/python" tests/openai_client.py "$addr" smollm2
