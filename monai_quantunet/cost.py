"""Hardware cost of a quantized conv net, per layer: widths, MACs, BOPs and weight memory.

qonnx's ``inference_cost`` does not cost ``ConvTranspose`` (a U-Net's 4 up-convolutions), so the cost is
computed here from the PyTorch model: one forward pass of a ``(1, C, H, W)`` input with hooks records, in
execution order, each weight layer's input/output shapes and the activation quantizer that last ran before
it. In a FINN-style U-Net every conv reads a quantizer's output directly or through max-pooling or a
concatenation whose inputs share one quantizer, so that quantizer's width is the conv's input width.

Units: MACs per image; BOPs = MACs x weight bits x input-activation bits; memory in bits.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
from monai.networks import eval_mode
from brevitas.nn import QuantIdentity, QuantReLU

from monai_quantunet.bitwidth import FLOAT_BITS, BitWidthReport, bit_width_report

__all__ = ["LayerCost", "CostReport", "cost_report", "check_weight_memory"]

_WEIGHT_LAYERS = (nn.Conv2d, nn.ConvTranspose2d)  # Brevitas QuantConv2d / QuantConvTranspose2d subclass these
_QUANTIZERS = (QuantReLU, QuantIdentity)


@dataclass
class LayerCost:
    """One conv layer for a single image; shapes are ``(C, H, W)``."""

    name: str
    op: str
    input_shape: list[int]
    output_shape: list[int]
    input_quantizer: str
    weight_bits: int
    input_bits: int
    num_weights: int
    macs: int
    bops: int
    weight_memory_bits: int


@dataclass
class CostReport:
    """Per-layer costs and totals of one image; ``float32_*`` are the float twin's figures."""

    input_shape: list[int]
    layers: list[LayerCost]

    def totals(self) -> dict[str, float]:
        macs = sum(r.macs for r in self.layers)
        bops = sum(r.bops for r in self.layers)
        mem = sum(r.weight_memory_bits for r in self.layers)
        n_w = sum(r.num_weights for r in self.layers)
        return {
            "num_conv_layers": len(self.layers),
            "num_weights": n_w,
            "macs": macs,
            "bops": bops,
            "weight_memory_bits": mem,
            "weight_memory_bytes": mem / 8,
            "float32_weight_memory_bits": n_w * FLOAT_BITS,
            "weight_compression_vs_float32": n_w * FLOAT_BITS / mem,
            "float32_bops": macs * FLOAT_BITS * FLOAT_BITS,
            "bops_reduction_vs_float32": macs * FLOAT_BITS * FLOAT_BITS / bops,
        }

    def to_dict(self) -> dict:
        return {"input_shape": self.input_shape, "layers": [asdict(r) for r in self.layers], "totals": self.totals()}

    def format_table(self) -> str:
        head = f"{'layer':<14} {'op':<20} {'in (C,H,W)':<14} {'w':>2} {'a':>2} {'weights':>9} {'MACs':>12} {'BOPs':>14}"
        lines = [head, "-" * len(head)]
        for r in self.layers:
            shape = "x".join(map(str, r.input_shape))
            lines.append(
                f"{r.name:<14} {r.op:<20} {shape:<14} {r.weight_bits:>2} {r.input_bits:>2} {r.num_weights:>9} "
                f"{r.macs:>12,} {r.bops:>14,}"
            )
        t = self.totals()
        lines += [
            "-" * len(head),
            f"{t['num_conv_layers']} conv layers: {t['macs']:,} MACs, {t['bops']:,} BOPs "
            f"({t['bops_reduction_vs_float32']:.1f}x fewer than float32), weights {t['weight_memory_bytes'] / 1024:.1f} KiB "
            f"({t['weight_compression_vs_float32']:.1f}x smaller than float32)",
        ]
        return "\n".join(lines)


def _conv_macs(module: nn.Module, inp: torch.Tensor, out: torch.Tensor) -> int:
    """MACs of one image. Conv: each output value meets ``Cin/g x kh x kw`` weights; transposed conv
    (weight ``(Cin, Cout/g, kh, kw)``): each input pixel scatters into all of its weights."""
    if isinstance(module, nn.ConvTranspose2d):
        return inp[0, 0].numel() * module.weight.numel()
    return out[0].numel() * module.weight[0].numel()


@torch.no_grad()
def cost_report(model: nn.Module, example: torch.Tensor) -> CostReport:
    """Cost of ``model`` on one image shaped like ``example[:1]`` ``(1, C, H, W)``; every conv and
    transposed conv is covered. A model without activation quantizers (the float twin) is costed at 32-bit
    inputs. Raises ``ValueError`` if a conv of a quantized model runs before any activation quantizer."""
    widths = {r.name: r for r in bit_width_report(model).layers}
    float_inputs = not any(isinstance(m, _QUANTIZERS) for m in model.modules())
    names = {m: n for n, m in model.named_modules()}
    last_quantizer: list[nn.Module] = []
    rows: list[LayerCost] = []

    def on_quantizer(module: nn.Module, _inp, _out) -> None:
        last_quantizer[:] = [module]

    def on_conv(module: nn.Module, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        name = names[module]
        if not last_quantizer and not float_inputs:
            raise ValueError(f"layer {name} runs before any activation quantizer: cannot cost its input width")
        x = inp[0]
        input_quantizer = "" if float_inputs else names[last_quantizer[0]]
        w_bits = int(widths[name].bits)
        a_bits = FLOAT_BITS if float_inputs else int(widths[input_quantizer].bits)
        macs = _conv_macs(module, x, out)
        rows.append(
            LayerCost(
                name=name,
                op=type(module).__name__,
                input_shape=list(x.shape[1:]),
                output_shape=list(out.shape[1:]),
                input_quantizer=input_quantizer,
                weight_bits=w_bits,
                input_bits=a_bits,
                num_weights=module.weight.numel(),
                macs=macs,
                bops=macs * w_bits * a_bits,
                weight_memory_bits=module.weight.numel() * w_bits,
            )
        )

    hooks = [
        m.register_forward_hook(on_quantizer if isinstance(m, _QUANTIZERS) else on_conv)
        for m in model.modules()
        if isinstance(m, _QUANTIZERS + _WEIGHT_LAYERS) and names[m] in widths
    ]
    try:
        with eval_mode(model):
            model(example[:1])
    finally:
        for h in hooks:
            h.remove()
    return CostReport(input_shape=list(example.shape[1:]), layers=rows)


def check_weight_memory(report: CostReport, widths: BitWidthReport) -> None:
    """Raise ``ValueError`` unless the costed layers' weight memory equals ``widths.weight_memory_bits``."""
    total = report.totals()["weight_memory_bits"]
    if total != widths.weight_memory_bits:
        raise ValueError(
            f"cost report weight memory {total} bits differs from the bit-width report's "
            f"{widths.weight_memory_bits:.0f} bits: some conv layer was not reached by the forward pass"
        )
