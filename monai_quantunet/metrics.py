"""Per-volume segmentation metrics: Dice (main metric), IoU, and pixel accuracy (the paper's "accuracy").

One Dice everywhere: per volume, ``2|P∩G| / (|P| + |G|)``, and **1 when label and prediction are both empty**
(a tumor-free volume predicted tumor-free is perfect; any false positive on it scores 0). The bundle's
checkpoint selection and evaluation use MONAI's ``MeanDice`` with ``ignore_empty=False``, which computes exactly
this (tested); the evaluation report and the MONAI Label app's publish decision use :func:`volume_metrics` /
:func:`mean_volume_dice`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from monai.handlers import IgniteMetricHandler
from monai.metrics import CumulativeIterationMetric
from monai.networks import eval_mode

__all__ = ["volume_metrics", "volume_dices", "mean_volume_dice", "PixelAccuracyMetric", "PixelAccuracy"]


def volume_metrics(pred: torch.Tensor, label: torch.Tensor) -> dict[str, float]:
    """Dice, IoU and pixel accuracy of one binary volume pair (any equal shapes; nonzero = foreground).

    Both empty gives Dice = IoU = 1 (nothing to find, nothing found).
    """
    if pred.shape != label.shape:
        raise ValueError(f"prediction shape {tuple(pred.shape)} differs from label shape {tuple(label.shape)}")
    p, g = pred.bool(), label.bool()
    inter = (p & g).sum().item()
    union = (p | g).sum().item()
    total = p.sum().item() + g.sum().item()
    return {
        "dice": 2.0 * inter / total if total else 1.0,
        "iou": inter / union if union else 1.0,
        "accuracy": (p == g).float().mean().item(),
    }


@torch.no_grad()
def volume_dices(network: torch.nn.Module, data_loader, inferer, device: str | torch.device = "cpu") -> list[float]:
    """Per-volume Dice (logit > 0 vs label) of ``network`` over ``data_loader`` (batches with ``image``,
    ``label``), in loader order; restores the network's train/eval mode."""
    scores = []
    with eval_mode(network), torch.no_grad():
        for batch in data_loader:
            logits = inferer(batch["image"].to(device), network)
            scores += [float(volume_metrics(p, g)["dice"]) for p, g in zip(logits > 0, batch["label"].to(device) > 0)]
    return scores


def mean_volume_dice(network: torch.nn.Module, data_loader, inferer, device: str | torch.device = "cpu") -> float:
    """Mean of :func:`volume_dices` (NaN without volumes)."""
    scores = volume_dices(network, data_loader, inferer, device)
    return float(sum(scores) / len(scores)) if scores else float("nan")


class PixelAccuracyMetric(CumulativeIterationMetric):
    """Fraction of voxels where the binary prediction equals the label, per batch item, averaged."""

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        dims = tuple(range(1, y_pred.ndim))
        return (y_pred.bool() == y.bool()).float().mean(dim=dims, keepdim=False).unsqueeze(1)

    def aggregate(self) -> torch.Tensor:
        return self.get_buffer().mean()


class PixelAccuracy(IgniteMetricHandler):
    """Ignite handler of :class:`PixelAccuracyMetric` (for ``SupervisedEvaluator.additional_metrics``)."""

    def __init__(self, output_transform: Callable = lambda x: x, save_details: bool = True) -> None:
        super().__init__(metric_fn=PixelAccuracyMetric(), output_transform=output_transform, save_details=save_details)
