#!/usr/bin/env bash
# Make the FINN toolchain the FINN tests and the export's hardware verification use, in .finn/ (or $1):
#   .finn/finn             FINN dev (FINN_ROOT), with the qonnx commit it pins in finn/deps/qonnx; both commits are
#                          read from monai_quantunet/export/finn_build/commits.py, the one place they are pinned
#   .finn/venv             a Python environment of its own (FINN needs onnx 1.17 and bitstring 4; the project
#                          runs on newer ones), pins in scripts/finn-requirements.txt
#   .finn/hls              (where ../shared/toolchains/open-hls-sources.tar.gz exists) open-source HLS headers for
#                          FINN's C++ simulation (cppsim) without Vitis: HLS_PATH; finn-hlslib and cnpy go to
#                          finn/deps. The few pieces those sources lack are written here (see setup_hls below).
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
COMMITS=monai_quantunet/export/finn_build/commits.py
commit() {  # the 40-digit hash of `$1 = "..."` in $COMMITS
    local hash
    hash=$(sed -n "s/^$1 = \"\([0-9a-f]\{40\}\)\".*/\1/p" "$COMMITS")
    [ -n "$hash" ] || { echo "no $1 = \"<40-digit hash>\" line in $COMMITS" >&2; exit 1; }
    echo "$hash"
}
FINN_COMMIT=$(commit FINN_COMMIT)
QONNX_COMMIT=$(commit QONNX_COMMIT)
SOURCES=${FINN_TOOLCHAIN_SOURCES:-../shared/toolchains}
PY=${PYTHON:-python3}
STAMP="$DEST/installed"
WANT="finn $FINN_COMMIT qonnx $QONNX_COMMIT $(sha1sum scripts/finn-requirements.txt | cut -c1-12)"

# cppsim on open-source headers: HLS_PATH=$DEST/hls, finn-hlslib and cnpy in finn/deps (FINN's include paths).
# Written here, not in the sources: std::numeric_limits for ap_int/ap_uint (finn-hlslib's max pool starts from
# numeric_limits<T>::min(); without it pools are silently wrong) and a 16-bit `half` in a wrapping ap_int.h,
# qdma_axis in a wrapping ap_axi_sdata.h, an hls::vector, and empty stand-ins for the Vitis libraries FINN's
# compile line links (nothing in these layers calls them).
setup_hls() {
    local tarball="$SOURCES/open-hls-sources.tar.gz" hls="$DEST/hls" root="$DEST/finn"
    if [ ! -f "$tarball" ]; then
        echo "no $tarball: FINN's cppsim stays unavailable (the verification runs FINN's Python execution only)"
        return 0
    fi
    local want
    want="$(sha1sum "$tarball" | cut -c1-12) $(sha1sum scripts/install_finn.sh | cut -c1-12)"
    if [ -f "$hls/installed" ] && [ "$(cat "$hls/installed")" = "$want" ] && [ -d "$root/deps/finn-hlslib" ]; then
        return 0
    fi
    rm -rf "$hls" "$root/deps/finn-hlslib" "$root/deps/cnpy"
    mkdir -p "$hls/include" "$hls/lnx64/lib/csim" "$hls/lnx64/tools/fpo_v7_1"
    local tmp
    tmp=$(mktemp -d)
    tar xzf "$tarball" -C "$tmp"
    cp -r "$tmp/open-hls-sources/finn-hlslib" "$root/deps/finn-hlslib"
    cp -r "$tmp/open-hls-sources/cnpy" "$root/deps/cnpy"
    cp -r "$tmp/open-hls-sources/hls-headers/." "$hls/include/"
    cp -r "$tmp/open-hls-sources/licenses" "$tmp/open-hls-sources/README.md" "$hls/"
    rm -rf "$tmp"
    mv "$hls/include/ap_int.h" "$hls/include/ap_int_open.h"
    mv "$hls/include/ap_axi_sdata.h" "$hls/include/ap_axi_sdata_open.h"
    cat > "$hls/include/ap_int.h" <<'EOF'
// Xilinx's open ap_int C model plus what FINN's cppsim needs from Vitis' copy (written by install_finn.sh)
#ifndef QUANTUNET_AP_INT_H
#define QUANTUNET_AP_INT_H
#include <cstdint>
#include <limits>
#include "ap_int_open.h"
namespace std {
template <int W> class numeric_limits<ap_int<W>> {
  public:
    static constexpr bool is_specialized = true, is_signed = true, is_integer = true, is_exact = true;
    static constexpr int digits = W - 1;
    static ap_int<W> min() { ap_int<W> v = 0; v[W - 1] = 1; return v; }
    static ap_int<W> max() { ap_int<W> v = -1; v[W - 1] = 0; return v; }
    static ap_int<W> lowest() { return min(); }
};
template <int W> class numeric_limits<ap_uint<W>> {
  public:
    static constexpr bool is_specialized = true, is_signed = false, is_integer = true, is_exact = true;
    static constexpr int digits = W;
    static ap_uint<W> min() { return ap_uint<W>(0); }
    static ap_uint<W> max() { ap_uint<W> v = 0; return ~v; }
    static ap_uint<W> lowest() { return min(); }
};
}  // namespace std
struct half { uint16_t bits; };  // storage only: FINN's HLS layers here do no half arithmetic
#endif
EOF
    cat > "$hls/include/ap_axi_sdata.h" <<'EOF'
// the open ap_axi_sdata.h plus qdma_axis (written by install_finn.sh)
#pragma once
#include "ap_axi_sdata_open.h"
template <int D, int U, int TI, int TD> struct qdma_axis;
template <int D> struct qdma_axis<D, 0, 0, 0> {
    ap_uint<D> data;
    ap_uint<(D + 7) / 8> keep;
    ap_uint<1> last;
    ap_uint<D> get_data() const { return data; }
    ap_uint<(D + 7) / 8> get_keep() const { return keep; }
    ap_uint<1> get_last() const { return last; }
    void set_data(ap_uint<D> d) { data = d; }
    void set_keep(ap_uint<(D + 7) / 8> k) { keep = k; }
    void set_last(ap_uint<1> l) { last = l; }
};
EOF
    cat > "$hls/include/hls_vector.h" <<'EOF'
// hls::vector for C simulation: a fixed-size array, default or broadcast constructed (written by install_finn.sh)
#pragma once
#include <array>
#include <cstddef>
namespace hls {
template <typename T, std::size_t N> struct vector : std::array<T, N> {
    vector() = default;
    vector(T const &value) { this->fill(value); }
};
}  // namespace hls
EOF
    local lib
    for lib in lib/csim/libhlsmc++-GCC46 tools/fpo_v7_1/libgmp tools/fpo_v7_1/libmpfr \
               tools/fpo_v7_1/libIp_floating_point_v7_1_bitacc_cmodel; do
        gcc -shared -o "$hls/lnx64/$lib.so" -x c /dev/null
    done
    echo "$want" > "$hls/installed"
    echo "cppsim headers in $(cd "$hls" && pwd) (HLS_PATH)"
}

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ]; then
    echo "FINN toolchain up to date in $(cd "$DEST" && pwd)"
    setup_hls
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
setup_hls
echo "FINN toolchain in $(cd "$DEST" && pwd): FINN_ROOT=$ROOT, python $DEST/venv/bin/python"
