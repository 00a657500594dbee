"""Per-volume evaluation report: one CSV row per case, a JSON summary (with the model's bit widths), a table."""

from __future__ import annotations

import csv
import json
import logging
import statistics
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn as nn

from monai_quantunet.bitwidth import bit_width_report
from monai_quantunet.metrics import volume_metrics

__all__ = ["EvaluationReport"]

METRICS = ("dice", "iou", "accuracy")


class EvaluationReport:
    """Ignite handler for an evaluator whose batches hold binary ``pred`` and ``label`` in the input geometry.

    Writes ``output_dir/metrics.csv`` (case, dice, iou, accuracy, voxels of label and prediction) and
    ``output_dir/summary.json`` (mean, std, min, max of each metric; bit-width totals of ``network`` and, given
    ``spatial_size``, its cost per slice: MACs, BOPs), and logs
    a table when the run completes.
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

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.STARTED, lambda _: self.rows.clear())
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
