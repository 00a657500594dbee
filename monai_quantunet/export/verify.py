"""Check exported models against PyTorch on real slices: logits within a tolerance, identical masks.

The QONNX graph and the QCDQ model run the same quantized arithmetic as Brevitas but sum float32 products in
another order. Where a value lands on a rounding edge, one intermediate activation moves by one quantization
step and shifts the logits of a few nearby pixels by a fraction of their range (measured: 0 to 1e-8 on tiny
nets and on the shipped checkpoint; 2 of 65536 pixels off by 3% of the logit range on a random-init
full-size net). A broken export (wrong scale, width or layout) instead moves most pixels. So an export passes
when

* ``max |diff| <= atol + rtol x max |PyTorch logit|`` (the tolerance, logit units),
* at most ``max_fraction`` of the pixels differ by more than ``atol``, and
* masks (logit > 0) are identical except where the PyTorch logit lies within the tolerance of 0
  (counted as ambiguous).
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "QONNX_ATOL",
    "QCDQ_ATOL",
    "RTOL",
    "MAX_FRACTION",
    "ExportVerificationError",
    "compare_logits",
    "check_verification",
]

QONNX_ATOL = 1e-4
QCDQ_ATOL = 1e-3
RTOL = 0.05
MAX_FRACTION = 1e-3


class ExportVerificationError(ValueError):
    """An exported model disagrees with PyTorch beyond its tolerance (the message holds the report)."""


def compare_logits(reference: np.ndarray, exported: np.ndarray, atol: float, rtol: float = RTOL,
                   max_fraction: float = MAX_FRACTION) -> dict:
    """Compare logits ``(N, out, H, W)``: max/mean abs difference, mask mismatches outside the ambiguous band."""
    if reference.shape != exported.shape:
        return {"passed": False, "error": f"shape {list(exported.shape)} != PyTorch {list(reference.shape)}"}
    diff = np.abs(reference.astype(np.float64) - exported)
    tolerance = atol + rtol * float(np.abs(reference).max())
    ambiguous = np.abs(reference) <= tolerance
    mismatched = ((reference > 0) != (exported > 0)) & ~ambiguous
    over_atol = int((diff > atol).sum())
    return {
        "passed": bool(diff.max() <= tolerance and over_atol <= max_fraction * diff.size and not mismatched.any()),
        "tolerance": tolerance,
        "atol": atol,
        "rtol": rtol,
        "max_fraction": max_fraction,
        "max_abs_diff": float(diff.max()),
        "mean_abs_diff": float(diff.mean()),
        "pixels_over_atol": over_atol,
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
                             f"max |diff| {r['max_abs_diff']:.3g} (tolerance {r['tolerance']:.3g}), "
                             f"{r['pixels_over_atol']} of {r['pixels']} pixels off by more than {r['atol']:g}, "
                             f"{r['mask_mismatches']} mask pixel(s) differ outside the ambiguous band")
            for name, r in failed.items()
        ]
        raise ExportVerificationError("exported model(s) disagree with PyTorch:\n" + "\n".join(lines))
