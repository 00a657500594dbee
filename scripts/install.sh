#!/usr/bin/env bash
# Create .venv/ in the repository root and install monai-quantunet with its pinned dependency set
# (constraints.txt; also used as build constraint so source builds do not fetch another torch).
# Needs Python 3.11 (python3, or set PYTHON). About 5-10 minutes and 8-9 GB on a fresh machine.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q -U "pip>=26.3"
.venv/bin/python -m pip install -q -c constraints.txt --build-constraint constraints.txt -e ".[test]"
echo "installed into $(pwd)/.venv"
