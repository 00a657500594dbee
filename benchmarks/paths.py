"""Where the benchmarks find the segmentation bundle and the project's real data (``../shared/data`` beside the
checkout)."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED_LGG_FLAIR = REPO.parent / "shared" / "data" / "lgg_flair"
SEG_BUNDLE = REPO / "bundles" / "quantunet_brain_tumor_seg"
