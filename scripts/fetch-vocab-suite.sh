#!/usr/bin/env bash
# Fetch llama.cpp's tokenizer test suite into .cache/vocab-suite/: the vocab-only GGUF files
# `ggml-vocab-*.gguf` with their `.inp` (test strings) and `.out` (Hugging Face token ids).
#
# The suite ships inside the llama-cpp-python source distribution on PyPI (vendor/llama.cpp/
# models/). We download that sdist with pip (no install, no dependencies; about 77 MB), check its
# SHA-256 against the one pinned here, and keep only the vocab files (about 30 MB). pip still
# prepares the sdist's metadata, which installs its build backend (scikit-build-core) as a
# wheel in a throwaway environment; nothing is compiled.
#
# Idempotent: does nothing when the stamp of a complete extraction of this exact sdist is there.
# Set LLAMA_CPP_PYTHON_SDIST=/path/to/llama_cpp_python-0.3.36.tar.gz to use a local copy.
# Exit status: 0 on success, 1 when the registry cannot be reached or the sdist is wrong.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="${MINFER_VOCAB_SUITE:-$ROOT/.cache/vocab-suite}"
PACKAGE="llama-cpp-python==0.3.36"
SDIST_NAME="llama_cpp_python-0.3.36.tar.gz"
SHA256="832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
STAMP="$DEST/.complete-$SHA256"

PYTHON="${PYTHON:-python3}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python

if [[ -f "$STAMP" ]]; then
    echo "fetch-vocab-suite: $DEST is present ($(ls "$DEST"/*.gguf | wc -l) vocabularies)"
    exit 0
fi

TMP="$(mktemp -d "${TMPDIR:-/tmp}/minfer-vocab.XXXXXX")"
trap 'rm -rf "$TMP"' EXIT

SDIST="${LLAMA_CPP_PYTHON_SDIST:-}"
if [[ -z "$SDIST" ]]; then
    echo "fetch-vocab-suite: downloading the $PACKAGE source distribution from PyPI (about 77 MB) ..."
    if ! "$PYTHON" -m pip --version >/dev/null 2>&1; then
        echo "fetch-vocab-suite: error: '$PYTHON -m pip' is not available; install pip, or set LLAMA_CPP_PYTHON_SDIST to a downloaded $SDIST_NAME" >&2
        exit 1
    fi
    # --no-binary for this one package only: its build backend must stay a wheel, or pip
    # would try to compile cmake from source.
    if ! "$PYTHON" -m pip download --no-deps --no-binary llama-cpp-python \
            --disable-pip-version-check --dest "$TMP" "$PACKAGE" >"$TMP/pip.log" 2>&1; then
        tail -n 5 "$TMP/pip.log" >&2
        echo "fetch-vocab-suite: error: could not download $PACKAGE from the package registry (PyPI)." >&2
        echo "fetch-vocab-suite: check the network or a pip proxy/index setting (PIP_INDEX_URL), then run this again." >&2
        exit 1
    fi
    SDIST="$TMP/$SDIST_NAME"
fi
if [[ ! -f "$SDIST" ]]; then
    echo "fetch-vocab-suite: error: no $SDIST" >&2
    exit 1
fi
GOT="$(sha256sum "$SDIST" | cut -d' ' -f1)"
if [[ "$GOT" != "$SHA256" ]]; then
    echo "fetch-vocab-suite: error: $SDIST has SHA-256 $GOT, expected $SHA256" >&2
    exit 1
fi

# Extract into a fresh directory beside the destination, then swap it in: an interrupted run
# never leaves a partial suite under the final name.
mkdir -p "$(dirname "$DEST")"
PART="$DEST.part"
rm -rf "$PART"
mkdir -p "$PART"
"$PYTHON" - "$SDIST" "$PART" <<'PY'
import os, re, shutil, sys, tarfile
sdist, out = sys.argv[1:]
want = re.compile(r"^[^/]+/vendor/llama\.cpp/models/(ggml-vocab-[A-Za-z0-9._-]+\.gguf(\.inp|\.out)?)$")
n = 0
with tarfile.open(sdist, "r:gz") as t:
    for m in t:
        g = want.match(m.name)
        if not g or not m.isfile():
            continue
        with t.extractfile(m) as src, open(os.path.join(out, g.group(1)), "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        n += 1
if n == 0:
    sys.exit(f"fetch-vocab-suite: error: no ggml-vocab-* files inside {sdist}")
print(f"fetch-vocab-suite: extracted {n} files")
PY
touch "$PART/.complete-$SHA256"
rm -rf "$DEST"
mv "$PART" "$DEST"
echo "fetch-vocab-suite: wrote $DEST ($(ls "$DEST"/*.gguf | wc -l) vocabularies)"
