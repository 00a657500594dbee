"""Check exported models against PyTorch on real slices: logits within a tolerance, identical masks.

Tolerance, in logit units: ``atol + rtol x max |PyTorch logit|``. The QONNX graph and the QCDQ model run
the same quantized arithmetic as Brevitas, but float32 sums in another order: where a value lands on a
rounding edge, one intermediate activation moves by one quantization step, which shifts nearby logits by a
small fraction of their range (measured: 0 to 1e-8 on tiny nets and on the shipped checkpoint; 9e-5 on a
random-init full-size net whose logits are tiny). A pixel whose PyTorch logit lies within the tolerance of
0 may flip its mask and is counted as ambiguous, not failed; any other mask difference fails.
"""

from __future__ import annotations

import numpy as np

__all__ = ["QONNX_ATOL", "QCDQ_ATOL", "RTOL", "ExportVerificationError", "compare_logits", "check_verification"]

QONNX_ATOL = 1e-4
QCDQ_ATOL = 1e-3
RTOL = 1e-2


class ExportVerificationError(ValueError):
    """An exported model disagrees with PyTorch beyond its tolerance (the message holds the report)."""


def compare_logits(reference: np.ndarray, exported: np.ndarray, atol: float, rtol: float = RTOL) -> dict:
    """Compare logits ``(N, out, H, W)``: max/mean abs difference, mask mismatches outside the ambiguous band."""
    if reference.shape != exported.shape:
        return {"passed": False, "error": f"shape {list(exported.shape)} != PyTorch {list(reference.shape)}"}
    diff = np.abs(reference.astype(np.float64) - exported)
    tolerance = atol + rtol * float(np.abs(reference).max())
    ambiguous = np.abs(reference) <= tolerance
    mismatched = ((reference > 0) != (exported > 0)) & ~ambiguous
    return {
        "passed": bool(diff.max() <= tolerance and not mismatched.any()),
        "tolerance": tolerance,
        "atol": atol,
        "rtol": rtol,
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
                             f"max |diff| {r['max_abs_diff']:.3g} (tolerance {r['tolerance']:.3g}), "
                             f"{r['mask_mismatches']} mask pixel(s) differ outside the ambiguous band")
            for name, r in failed.items()
        ]
        raise ExportVerificationError("exported model(s) disagree with PyTorch:\n" + "\n".join(lines))
