"""Per-volume evaluation report: one CSV row per case, a JSON summary (with the model's bit widths), a table, and
overlays of the best, median and worst volumes."""

from __future__ import annotations

import csv
import json
import logging
import statistics
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from monai_quantunet.bitwidth import bit_width_report
from monai_quantunet.metrics import volume_metrics

__all__ = ["EvaluationReport", "overlay_png"]

METRICS = ("dice", "iou", "accuracy")


class EvaluationReport:
    """Ignite handler for an evaluator whose batches hold binary ``pred`` and ``label`` in the input geometry.

    Writes ``output_dir/metrics.csv`` (case, dice, iou, accuracy, voxels of label and prediction) and
    ``output_dir/summary.json`` (mean, std, min, max of each metric; bit-width totals of ``network`` and, given
    ``spatial_size``, its cost per slice: MACs, BOPs), ``output_dir/overlays.png`` (:func:`overlay_png` of the
    best, median and worst cases by Dice), and logs a table when the run completes.
    """

    def __init__(
        self,
        output_dir: str | Path,
        network: nn.Module | None = None,
        spatial_size: Sequence[int] | None = None,
        name: str = "QuantUNet.eval",
    ):
        self.output_dir = Path(output_dir)
        self.network = network
        self.spatial_size = tuple(spatial_size) if spatial_size else None
        self.logger = logging.getLogger(name)
        self.rows: list[dict] = []
        self.slices: list[dict] = []  # per case: its most tumor-bearing axial slice, for the overlays

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.STARTED, lambda _: (self.rows.clear(), self.slices.clear()))
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration_completed)
        engine.add_event_handler(Events.COMPLETED, self._completed)

    def _iteration_completed(self, engine) -> None:
        for item in engine.state.output:  # decollated batch
            pred, label = item["pred"], item["label"]
            case = Path(str(label.meta.get("filename_or_obj", f"case{len(self.rows)}"))).name
            for suffix in (".nii.gz", ".nii", ".nrrd", ".mha"):
                case = case.removesuffix(suffix)
            self.rows.append(
                {"case": case, **volume_metrics(pred > 0.5, label > 0.5),
                 "label_voxels": int((label > 0.5).sum()), "pred_voxels": int((pred > 0.5).sum())}
            )
            label_np, pred_np = np.asarray(label[0] > 0.5), np.asarray(pred[0] > 0.5)
            z = int(np.argmax((label_np if label_np.any() else pred_np).sum(axis=(0, 1))))
            self.slices.append({"case": case, "dice": self.rows[-1]["dice"], "z": z, "label": label_np[..., z],
                                "pred": pred_np[..., z], "image_file": str(item["image"].meta.get("filename_or_obj", ""))})

    def summary(self) -> dict:
        out: dict = {"num_cases": len(self.rows)}
        for m in METRICS:
            values = [r[m] for r in self.rows]
            out[m] = {
                "mean": statistics.fmean(values),
                "std": statistics.pstdev(values),
                "min": min(values),
                "max": max(values),
            }
        if self.network is not None:
            out["bits"] = bit_width_report(self.network).totals()
            if self.spatial_size:
                from monai_quantunet.cost import cost_report

                device = next(self.network.parameters()).device
                example = torch.zeros(1, self.network.in_channels, *self.spatial_size, device=device)
                out["cost_per_slice"] = cost_report(self.network, example).totals()
        return out

    def _completed(self, engine) -> None:
        if not self.rows:
            raise ValueError("evaluation saw no cases")
        self.output_dir.mkdir(parents=True, exist_ok=True)
        with open(self.output_dir / "metrics.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(self.rows[0]))
            writer.writeheader()
            writer.writerows(self.rows)
        summary = self.summary()
        overlay_png(self.slices, self.output_dir / "overlays.png")
        (self.output_dir / "summary.json").write_text(json.dumps({"summary": summary, "cases": self.rows}, indent=1))
        lines = [f"{'case':<28} {'dice':>7} {'iou':>7} {'accuracy':>9}"]
        lines += [f"{r['case']:<28} {r['dice']:>7.4f} {r['iou']:>7.4f} {r['accuracy']:>9.5f}" for r in self.rows]
        lines.append(
            f"{'mean (std)':<28} {summary['dice']['mean']:>7.4f} {summary['iou']['mean']:>7.4f} "
            f"{summary['accuracy']['mean']:>9.5f}  (Dice std {summary['dice']['std']:.4f})"
        )
        if "bits" in summary:
            b = summary["bits"]
            lines.append(
                f"weight bits {b['mean_weight_bits']:.2f} (size-weighted {b['size_weighted_weight_bits']:.2f}), "
                f"activation bits {b['mean_activation_bits']:.2f}, {b['compression_vs_float32']:.1f}x vs float32"
            )
        self.logger.info("per-volume evaluation (%s)\n%s", self.output_dir, "\n".join(lines))


def overlay_png(slices: list[dict], path: str | Path) -> None:
    """Best, median and worst case by Dice, each on its most tumor-bearing axial slice: FLAIR, ground truth
    (green) and prediction (red) over it, in the image file's voxel grid. ``slices``: dicts with ``case``,
    ``dice``, ``z``, 2D boolean ``label`` and ``pred``, and ``image_file`` (the volume the label belongs to)."""
    from matplotlib.figure import Figure  # no pyplot: the caller's backend is left alone
    import nibabel as nib

    ranked = sorted(slices, key=lambda s: s["dice"])
    picks = {"best": ranked[-1], "median": ranked[len(ranked) // 2], "worst": ranked[0]}
    fig = Figure(figsize=(9, 3.1 * len(picks)))
    axes = fig.subplots(len(picks), 3, squeeze=False)
    for row, (rank, s) in zip(axes, picks.items()):
        image = np.asarray(nib.load(s["image_file"]).dataobj[..., s["z"]], dtype=np.float32)
        lo, hi = np.percentile(image, (0.5, 99.5))
        shown = [("FLAIR", None, None), ("ground truth", s["label"], "Greens"), ("prediction", s["pred"], "Reds")]
        for ax, (title, mask, cmap) in zip(row, shown):
            ax.imshow(image.T, cmap="gray", vmin=lo, vmax=hi, origin="lower")
            if mask is not None:
                ax.imshow(np.ma.masked_where(~mask.T, mask.T), cmap=cmap, vmin=0, vmax=1.3, alpha=0.6, origin="lower")
                ax.contour(s["label"].T, levels=[0.5], colors="lime", linewidths=0.6)
            ax.set_title(f"{title}" if mask is not None else f"{rank}: {s['case']} z={s['z']}, Dice {s['dice']:.3f}",
                         fontsize=8)
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
