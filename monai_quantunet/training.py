"""Training pieces shared by the bundle (ignite), the demo and the MONAI Label trainer.

* :func:`make_optimizer`: Adam with the learned bit widths in their own parameter group (own learning rate,
  no weight decay): with a shared small learning rate the widths do not move (Brevitas issue 1177).
* :func:`freeze_bit_widths`: train at frozen widths.
* :class:`TeacherLogits`: the trainer's ``prepare_batch`` for distillation from a frozen teacher (the float twin).
* :class:`QuantUNetStatsHandler`: ignite handler that prints one line per epoch (loss parts, validation Dice,
  mean weight / activation bits) and writes the per-layer widths as JSON history and a PNG each epoch.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from pathlib import Path

import torch
import torch.nn as nn

from monai_quantunet.bitwidth import bit_width_report, split_bit_width_parameters

__all__ = ["make_optimizer", "freeze_bit_widths", "TeacherLogits", "QuantUNetStatsHandler", "plot_bit_width_history"]

logger = logging.getLogger(__name__)


def make_optimizer(
    network: nn.Module, lr: float = 1e-3, bit_lr: float = 1e-2, weight_decay: float = 1e-5
) -> torch.optim.Optimizer:
    """Adam over ``network``: weights at ``lr`` with ``weight_decay``, bit widths at ``bit_lr`` without decay.

    One optimizer step moves a width offset by about ``bit_lr`` (Adam normalises the gradient), so
    ``bit_lr = 1e-2`` lets a width travel 1 bit in about 100 steps.
    """
    bits, rest = split_bit_width_parameters(network)
    groups = [{"params": rest, "lr": lr, "weight_decay": weight_decay}]
    if bits:
        groups.append({"params": bits, "lr": bit_lr, "weight_decay": 0.0})
    return torch.optim.Adam(groups)


def freeze_bit_widths(network: nn.Module) -> int:
    """Keep the learned bit widths of ``network`` as they are (no gradient); returns how many were frozen.

    The one way to train at frozen widths: the bundle's ``--freeze_bit_widths true`` and the MONAI Label
    app's fine-tuning both call it. Call it after loading a checkpoint: Brevitas re-creates the width parameters
    (trainable again) when a state_dict is loaded.
    """
    bits, _ = split_bit_width_parameters(network)
    for p in bits:
        p.requires_grad_(False)
    return len(bits)


class TeacherLogits:
    """``prepare_batch`` of a MONAI ``SupervisedTrainer`` for distillation: returns ``(image, target)`` with
    target ``(B, 2, H, W)`` = the label and the logits of the frozen ``teacher`` on the same (augmented) images,
    for ``QuantUNetLoss(distill_weight > 0)``. The teacher costs one forward pass per step, without gradients."""

    def __init__(self, teacher: nn.Module) -> None:
        self.teacher = teacher.eval().requires_grad_(False)

    def __call__(self, batchdata: dict, device: torch.device | None = None, non_blocking: bool = False, **kwargs):
        from monai.engines import default_prepare_batch

        image, label = default_prepare_batch(batchdata, device, non_blocking, **kwargs)
        with torch.no_grad():
            logits = self.teacher.to(image.device)(image)
        return image, torch.cat([label.to(logits.dtype), logits], dim=1)


class QuantUNetStatsHandler:
    """Per-epoch summary line + bit-width history for a trainer using :class:`QuantUNetLoss`.

    Args:
        network: the trained network.
        loss: the ``QuantUNetLoss`` (its ``last_components`` are averaged over the epoch).
        output_dir: where ``bit_widths.json`` (history, one entry per epoch) and ``bit_widths.png`` go;
            ``None`` writes nothing.
        evaluator: optional validation engine; its ``key_metric`` is shown in the line.
        name: logger name (the bundle's logging.conf routes it to stdout).
    """

    def __init__(
        self,
        network: nn.Module,
        loss: nn.Module,
        output_dir: str | Path | None = None,
        evaluator=None,
        name: str = "QuantUNet",
    ) -> None:
        self.network = network
        self.loss = loss
        self.output_dir = Path(output_dir) if output_dir else None
        self.evaluator = evaluator
        self.logger = logging.getLogger(name)
        self._sums: dict[str, float] = defaultdict(float)
        self._count = 0
        self.history: list[dict] = []

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.ITERATION_COMPLETED, self._accumulate)
        # after the validation handler (attached earlier in the handler list) so the Dice is fresh
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch_completed)

    def _accumulate(self, engine) -> None:
        for k, v in getattr(self.loss, "last_components", {}).items():
            self._sums[k] += v
        self._count += 1

    def _epoch_completed(self, engine) -> None:
        parts = {k: v / max(self._count, 1) for k, v in self._sums.items()}
        self._sums.clear()
        self._count = 0
        report = bit_width_report(self.network)
        entry = {"epoch": engine.state.epoch, "loss": parts, **report.totals(), "layers": report.to_dict()["layers"]}
        line = f"epoch {engine.state.epoch}/{engine.state.max_epochs}"
        if parts:
            line += " loss {total:.4f} (bce {bce:.4f}, dice {dice:.4f}, bit term {bits:.3f}".format(**parts)
            line += f", distillation {parts['distill']:.4f})" if "distill" in parts else ")"
        validated_now = self.evaluator is not None and self.evaluator.state.epoch == engine.state.epoch
        if validated_now and self.evaluator.state.metrics:
            key = self.evaluator.state.key_metric_name if hasattr(self.evaluator.state, "key_metric_name") else None
            metrics = self.evaluator.state.metrics
            val = metrics.get(key) if key else next(iter(metrics.values()))
            entry["val_dice"] = float(val)
            line += f" | val Dice {val:.4f}"
        line += f" | weight bits {report.mean_weight_bits:.2f} (size-weighted {report.size_weighted_weight_bits:.2f})"
        line += f", act bits {report.mean_activation_bits:.2f}, {report.compression_vs_float32:.1f}x vs float32"
        self.logger.info(line)
        self.history.append(entry)
        if self.output_dir is not None:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            (self.output_dir / "bit_widths.json").write_text(json.dumps(self.history, indent=1))
            report.plot(self.output_dir / "bit_widths.png", title=f"Bit widths after epoch {engine.state.epoch}")
            if len(self.history) > 1:
                plot_bit_width_history(self.history, self.output_dir / "bit_widths_history.png")


def plot_bit_width_history(history: list[dict], path: str | Path) -> None:
    """Line plot of each layer's width (weights solid, activations dashed) over epochs, as PNG."""
    from matplotlib.figure import Figure  # no pyplot: the caller's backend is left alone

    epochs = [h["epoch"] for h in history]
    fig = Figure(figsize=(9, 5))
    ax = fig.subplots()
    names = [(r["name"], r["kind"]) for r in history[0]["layers"] if r["kind"] != "input"]
    for i, (name, kind) in enumerate(names):
        bits = [next(r["bits"] for r in h["layers"] if r["name"] == name) for h in history]
        ax.plot(epochs, bits, "-" if kind == "weight" else "--", lw=1, alpha=0.7)
    ax.plot(epochs, [h["mean_weight_bits"] for h in history], "k-", lw=3, label="mean weight bits")
    ax.plot(epochs, [h["mean_activation_bits"] for h in history], "k--", lw=3, label="mean activation bits")
    ax.set_xlabel("epoch")
    ax.set_ylabel("bits")
    ax.set_ylim(0, 9)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
