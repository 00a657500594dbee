"""Check exported models against PyTorch on real slices: logits within a tolerance, identical masks.

Tolerances are absolute, in logit units. The QONNX graph runs the same float32 arithmetic as Brevitas
(measured max difference 0); QCDQ on onnxruntime re-orders some float ops (measured ~1e-9 on small nets).
A pixel whose PyTorch logit lies within the tolerance of 0 may flip its mask and is counted, not failed.
"""

from __future__ import annotations

import numpy as np

__all__ = ["QONNX_ATOL", "QCDQ_ATOL", "ExportVerificationError", "compare_logits", "check_verification"]

QONNX_ATOL = 1e-4
QCDQ_ATOL = 1e-3


class ExportVerificationError(ValueError):
    """An exported model disagrees with PyTorch beyond its tolerance (the message holds the report)."""


def compare_logits(reference: np.ndarray, exported: np.ndarray, atol: float) -> dict:
    """Compare logits ``(N, out, H, W)``: max/mean abs difference, mask mismatches outside the ambiguous band."""
    if reference.shape != exported.shape:
        return {"passed": False, "error": f"shape {list(exported.shape)} != PyTorch {list(reference.shape)}"}
    diff = np.abs(reference.astype(np.float64) - exported)
    ambiguous = np.abs(reference) <= atol
    mismatched = ((reference > 0) != (exported > 0)) & ~ambiguous
    return {
        "passed": bool(diff.max() <= atol and not mismatched.any()),
        "atol": atol,
        "max_abs_diff": float(diff.max()),
        "mean_abs_diff": float(diff.mean()),
        "mask_mismatches": int(mismatched.sum()),
        "ambiguous_pixels": int(ambiguous.sum()),
        "pixels": int(reference.size),
        "num_slices": int(reference.shape[0]),
    }


def check_verification(results: dict[str, dict]) -> None:
    """Raise :class:`ExportVerificationError` listing every failed comparison in ``{name: result}``."""
    failed = {k: v for k, v in results.items() if not v["passed"]}
    if failed:
        lines = [
            f"  {name}: " + (r["error"] if "error" in r else
                             f"max |diff| {r['max_abs_diff']:.3g} (tolerance {r['atol']:g}), "
                             f"{r['mask_mismatches']} mask pixel(s) differ outside the ambiguous band")
            for name, r in failed.items()
        ]
        raise ExportVerificationError("exported model(s) disagree with PyTorch:\n" + "\n".join(lines))
