#!/usr/bin/env bash
# Make the FINN toolchain the FINN tests and the export's hardware verification use, in .finn/ (or $1):
#   .finn/finn             FINN dev 73ba5ed (FINN_ROOT), with the qonnx commit it pins in finn/deps/qonnx
#   .finn/venv             a Python environment of its own (FINN needs onnx 1.17 and bitstring 4; the project
#                          runs on newer ones), pins in scripts/finn-requirements.txt
# Sources: the tarballs in ../shared/toolchains (or $FINN_TOOLCHAIN_SOURCES) when present, else a git clone of
# the public repositories at those commits. No Vivado is installed: FINN's flow runs to HLS/RTL code generation.
# Needs Python 3.11 (python3, or set PYTHON). About 3 minutes and 6 GB; a second run only checks.
#   bash scripts/install_finn.sh [--if-available] [DEST]
# --if-available: where neither the tarballs nor GitHub can be reached, say so and exit 0 (the FINN tests then
# skip, naming the reason) instead of failing; the test command uses it.
set -euo pipefail
cd "$(dirname "$0")/.."
IF_AVAILABLE=0
if [ "${1:-}" = "--if-available" ]; then IF_AVAILABLE=1; shift; fi
DEST=${1:-.finn}
FINN_COMMIT=73ba5ed64e805cb765dda7e57694338d1917848f
QONNX_COMMIT=f5c9819bd00f01f41e70639b8461c8e4b39432f7
SOURCES=${FINN_TOOLCHAIN_SOURCES:-../shared/toolchains}
PY=${PYTHON:-python3}
STAMP="$DEST/installed"
WANT="finn $FINN_COMMIT qonnx $QONNX_COMMIT $(sha1sum scripts/finn-requirements.txt | cut -c1-12)"

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ]; then
    echo "FINN toolchain up to date in $(cd "$DEST" && pwd)"
    exit 0
fi
rm -rf "$DEST/finn" "$STAMP"
mkdir -p "$DEST"
if [ -f "$SOURCES/finn-dev-${FINN_COMMIT:0:7}.tar.gz" ]; then
    echo "FINN and qonnx from $SOURCES"
    tar xzf "$SOURCES/finn-dev-${FINN_COMMIT:0:7}.tar.gz" -C "$DEST"
    mkdir -p "$DEST/finn/deps"
    tar xzf "$SOURCES/qonnx-${QONNX_COMMIT:0:7}.tar.gz" -C "$DEST/finn/deps"
else
    echo "FINN and qonnx from GitHub ($SOURCES has no tarballs)"
    if ! { git clone -q https://github.com/Xilinx/finn "$DEST/finn" &&
           git -C "$DEST/finn" checkout -q "$FINN_COMMIT" &&
           git clone -q https://github.com/fastmachinelearning/qonnx "$DEST/finn/deps/qonnx" &&
           git -C "$DEST/finn/deps/qonnx" checkout -q "$QONNX_COMMIT"; }; then
        rm -rf "$DEST/finn"
        echo "FINN toolchain NOT installed: no tarballs in $SOURCES and the GitHub clone failed" >&2
        if [ "$IF_AVAILABLE" = 1 ]; then
            echo "(--if-available: continuing; the FINN tests will be skipped)" >&2
            exit 0
        fi
        exit 1
    fi
fi

[ -x "$DEST/venv/bin/python" ] || "$PY" -m venv "$DEST/venv"
"$DEST/venv/bin/python" -m pip install -q -U "pip>=26.3"
"$DEST/venv/bin/python" -m pip install -q -r scripts/finn-requirements.txt
# FINN and qonnx from their source trees, as FINN's own container does (qonnx first: not the registry's qonnx)
SITE=$("$DEST/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
ROOT=$(cd "$DEST/finn" && pwd)
printf '%s\n%s\n' "$ROOT/deps/qonnx/src" "$ROOT/src" > "$SITE/finn_toolchain.pth"
FINN_ROOT="$ROOT" "$DEST/venv/bin/python" -c 'import finn.builder.build_dataflow, qonnx; print("FINN importable; qonnx from", qonnx.__path__[0])'
echo "$WANT" > "$STAMP"
echo "FINN toolchain in $(cd "$DEST" && pwd): FINN_ROOT=$ROOT, python $DEST/venv/bin/python"
