"""Bit-width and model-size accounting for QuantU-Net (and any Brevitas model with per-layer widths).

Conventions:

* A *weight layer* is a ``QuantConv2d`` / ``QuantConvTranspose2d`` (float twin: ``nn.Conv2d`` /
  ``nn.ConvTranspose2d`` at 32 bits). Weight memory counts conv weights only: BatchNorm folds into FINN's
  thresholds and the 1x1 head's bias stays on the host.
* An *activation* is a ``QuantReLU`` (float twin: ``nn.ReLU`` at 32 bits), counted once even where one
  instance quantizes both inputs of a concatenation. The fixed 8-bit input quantizer is listed with kind
  ``"input"`` and kept out of the activation mean: it is the image, not a learned layer.
* The "simple mean" of weight bits is the paper's average (one vote per layer); the size-weighted mean
  weighs each layer by its number of weights and is what sets the weight memory.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
from brevitas.core.bit_width import BitWidthParameter
from brevitas.nn import QuantConv2d, QuantConvTranspose2d, QuantIdentity, QuantReLU

__all__ = [
    "LayerBits",
    "BitWidthReport",
    "bit_width_report",
    "bit_width_tensors",
    "quantizer_bit_width",
    "split_bit_width_parameters",
    "FLOAT_BITS",
]

FLOAT_BITS = 32
_QUANT_WEIGHT_LAYERS = (QuantConv2d, QuantConvTranspose2d)
_FLOAT_WEIGHT_LAYERS = (nn.Conv2d, nn.ConvTranspose2d)


@dataclass
class LayerBits:
    """One quantized tensor: ``kind`` is ``"weight"``, ``"activation"`` or ``"input"``."""

    name: str
    kind: str
    bits: float
    num_weights: int = 0


@dataclass
class BitWidthReport:
    """Per-layer widths and totals. ``weight_memory_bits`` = sum over weight layers of weights x bits."""

    layers: list[LayerBits]
    mean_weight_bits: float = field(init=False)
    size_weighted_weight_bits: float = field(init=False)
    mean_activation_bits: float = field(init=False)
    max_activation_bits: float = field(init=False)
    num_weights: int = field(init=False)
    weight_memory_bits: float = field(init=False)
    weight_memory_bytes: float = field(init=False)
    float32_weight_memory_bytes: float = field(init=False)
    compression_vs_float32: float = field(init=False)

    def __post_init__(self) -> None:
        weights = [r for r in self.layers if r.kind == "weight"]
        acts = [r for r in self.layers if r.kind == "activation"]
        if not weights:
            raise ValueError("the model has no convolution layers to account for")
        self.num_weights = sum(r.num_weights for r in weights)
        self.weight_memory_bits = float(sum(r.num_weights * r.bits for r in weights))
        self.mean_weight_bits = sum(r.bits for r in weights) / len(weights)
        self.size_weighted_weight_bits = self.weight_memory_bits / self.num_weights
        self.mean_activation_bits = sum(r.bits for r in acts) / len(acts) if acts else float("nan")
        self.max_activation_bits = max((r.bits for r in acts), default=float("nan"))
        self.weight_memory_bytes = self.weight_memory_bits / 8
        self.float32_weight_memory_bytes = self.num_weights * FLOAT_BITS / 8
        self.compression_vs_float32 = self.float32_weight_memory_bytes / self.weight_memory_bytes

    def totals(self) -> dict[str, float]:
        return {k: v for k, v in asdict(self).items() if k != "layers"}

    def to_dict(self) -> dict:
        return {"layers": [asdict(r) for r in self.layers], "totals": self.totals()}

    def to_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2))

    def summary(self) -> str:
        """One line: simple / size-weighted weight bits, activation bits, memory and compression."""
        return (
            f"weight bits {self.mean_weight_bits:.2f} (size-weighted {self.size_weighted_weight_bits:.2f}), "
            f"activation bits {self.mean_activation_bits:.2f}, weights {self.weight_memory_bytes / 1024:.1f} KiB "
            f"({self.compression_vs_float32:.1f}x smaller than float32)"
        )

    def format_table(self) -> str:
        lines = [f"{'layer':<28} {'kind':<10} {'bits':>5} {'weights':>9}", "-" * 55]
        for r in self.layers:
            lines.append(f"{r.name:<28} {r.kind:<10} {r.bits:>5.0f} {r.num_weights:>9}")
        lines += ["-" * 55, self.summary()]
        return "\n".join(lines)

    def plot(self, path: str | Path, title: str = "Bit width per layer") -> None:
        """Write a PNG bar chart of weight and activation widths per layer."""
        from matplotlib.figure import Figure  # no pyplot: the caller's backend is left alone

        fig = Figure(figsize=(11, 6))
        axes = fig.subplots(2, 1, sharey=True)
        for ax, kind, colour in zip(axes, ("weight", "activation"), ("tab:blue", "tab:orange")):
            rows = [r for r in self.layers if r.kind == kind]
            ax.bar(range(len(rows)), [r.bits for r in rows], color=colour)
            ax.set_xticks(range(len(rows)), [r.name for r in rows], rotation=60, ha="right", fontsize=7)
            ax.set_ylabel(f"{kind} bits")
            ax.set_ylim(0, 9)
            ax.grid(axis="y", alpha=0.3)
        axes[0].set_title(f"{title}\n{self.summary()}", fontsize=9)
        fig.tight_layout()
        fig.savefig(path, dpi=110)


def _quantized_tensors(model: nn.Module) -> list[tuple[str, str, nn.Module]]:
    """(name, kind, module) for every weight layer, activation and input quantizer, in graph order."""
    found = []
    quant_prefixes: list[str] = []  # Brevitas layers wrap float ones (QuantReLU holds an nn.ReLU): skip those
    for name, module in model.named_modules():  # named_modules visits a shared instance once
        if any(name.startswith(p + ".") for p in quant_prefixes):
            continue
        if isinstance(module, _QUANT_WEIGHT_LAYERS + (QuantReLU, QuantIdentity)):
            quant_prefixes.append(name)
        if isinstance(module, _QUANT_WEIGHT_LAYERS + _FLOAT_WEIGHT_LAYERS):
            found.append((name, "weight", module))
        elif isinstance(module, (QuantReLU, nn.ReLU)):
            found.append((name, "activation", module))
        elif isinstance(module, QuantIdentity):
            found.append((name, "input", module))
    return found


def quantizer_bit_width(module: nn.Module) -> torch.Tensor:
    """Width of a Brevitas weight layer or activation quantizer (0-d tensor, differentiable when learned);
    32 for a float layer."""
    if isinstance(module, _QUANT_WEIGHT_LAYERS):
        return module.weight_quant.bit_width()
    if isinstance(module, (QuantReLU, QuantIdentity)):
        return module.act_quant.bit_width()
    return torch.tensor(float(FLOAT_BITS))


def bit_width_tensors(model: nn.Module, kinds: tuple[str, ...] = ("weight", "activation")) -> list[tuple[str, torch.Tensor, int]]:
    """Differentiable widths: ``(kind, bits, num_weights)`` per quantized layer of the given kinds.

    Only Brevitas layers are returned (a float model gives an empty list). ``bits`` is a 0-d tensor that
    carries the gradient of learned widths (Brevitas rounds with a straight-through estimator).
    """
    return [
        (kind, quantizer_bit_width(m), m.weight.numel() if kind == "weight" else 0)
        for _, kind, m in _quantized_tensors(model)
        if kind in kinds and isinstance(m, _QUANT_WEIGHT_LAYERS + (QuantReLU, QuantIdentity))
    ]


@torch.no_grad()
def bit_width_report(model: nn.Module) -> BitWidthReport:
    """Per-layer widths and size totals of ``model`` (QuantUNet in any mode, or any Brevitas conv net)."""
    rows = [
        LayerBits(name, kind, float(quantizer_bit_width(m).detach().cpu()), m.weight.numel() if kind == "weight" else 0)
        for name, kind, m in _quantized_tensors(model)
    ]
    return BitWidthReport(rows)


def split_bit_width_parameters(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """Split parameters into (learned bit widths, everything else) for separate optimizer groups.

    With a shared small learning rate the widths barely move (their gradient is O(1) per step, Brevitas
    issue 1177), so give the first group its own, larger learning rate and no weight decay.
    """
    bits = [p for m in model.modules() if isinstance(m, BitWidthParameter) for p in m.parameters(recurse=False)]
    ids = {id(p) for p in bits}
    return bits, [p for p in model.parameters() if id(p) not in ids]
