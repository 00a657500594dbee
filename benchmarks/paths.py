"""Where the benchmarks find the segmentation bundle and the project's real data (``../shared/data`` beside the
checkout)."""

from pathlib import Path

from monai_quantunet.bundle import BUNDLE_NAME, INTERACTIVE_BUNDLE_NAME, checkout_bundle

REPO = Path(__file__).resolve().parents[1]
SHARED_LGG_FLAIR = REPO.parent / "shared" / "data" / "lgg_flair"
SEG_BUNDLE = checkout_bundle(BUNDLE_NAME, REPO)
INTERACTIVE_BUNDLE = checkout_bundle(INTERACTIVE_BUNDLE_NAME, REPO)
