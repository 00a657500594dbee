"""The FINN and qonnx commits the build is checked with: the one place they are pinned.

``scripts/install_finn.sh`` reads the two ``NAME = "hash"`` lines below (keep that form); the FINN folder's README
and the benchmarks print their first seven digits.
"""

__all__ = ["FINN_COMMIT", "QONNX_COMMIT"]

FINN_COMMIT = "73ba5ed64e805cb765dda7e57694338d1917848f"  # FINN dev, 2026-04-17
QONNX_COMMIT = "f5c9819bd00f01f41e70639b8461c8e4b39432f7"  # the qonnx FINN dev pins (its fetch-repos.sh)
