"""QuantU-Net: a 2D U-Net whose per-layer weight and activation bit widths are Brevitas parameters.

The topology follows the classic 4-level U-Net (23 convolution layers: 18 3x3 convs, 4 transposed 2x2
up-convolutions, one 1x1 head) and the rules FINN needs to build it as a dataflow accelerator:

* an 8-bit signed input quantizer;
* every conv without bias, followed by BatchNorm and a quantized ReLU (FINN folds BN into thresholds);
* the skip branch and the up branch of each concatenation end in the *same* ``QuantReLU`` instance, so both
  concat inputs share one scale and bit width;
* 2x2 max pooling, transposed convs with kernel == stride == 2 and groups 1;
* the graph ends at the logits (no sigmoid): ``logit > 0`` is the tumor mask.

``quantization`` selects the mode from the same class:

* ``"learned"``: weight and activation bit widths are trainable parameters, initialised at ``bit_width`` and
  clamped to ``[min_bit_width, max_bit_width]``;
* ``"fixed"``: uniform ``bit_width`` bits everywhere (the baselines, e.g. 8/4/3/2);
* ``"float"``: the float twin, identical topology and parameter names for weights and BatchNorm.

Every quantizer does its integer step with :class:`~monai_quantunet.networks.fake_quant.FusedIntQuant`: Brevitas's
``IntQuant`` maths in one autograd node, which makes a QAT training step cheaper on a CPU.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Literal

import torch
import torch.nn as nn
from brevitas.nn import QuantConv2d, QuantConvTranspose2d, QuantIdentity, QuantReLU
from brevitas.quant import Int8ActPerTensorFloat, Int8WeightPerChannelFloat, Uint8ActPerTensorFloat
from monai.networks import eval_mode

from monai_quantunet.networks.fake_quant import FusedIntQuant

__all__ = ["QuantUNet", "FloatUNet", "QUANTIZATION_MODES", "MIN_BITS", "MAX_BITS", "LearnedWidthWeightQuant",
           "FixedWidthWeightQuant", "LearnedWidthActQuant", "FixedWidthActQuant", "InputQuant"]

QUANTIZATION_MODES = ("learned", "fixed", "float")
MIN_BITS = 2
MAX_BITS = 8
NUM_LEVELS = 4  # pooling steps: input size must be divisible by 2**NUM_LEVELS
# Activation scales start from a percentile of the first training batches, then are learned parameters;
# 30 batches (Brevitas default 300) keeps the costly percentile search out of most of a short QAT run.
ACT_STATS_STEPS = 30

Quantization = Literal["learned", "fixed", "float"]


class QuantUNet(nn.Module):
    """2D U-Net with trainable (or fixed) per-layer bit widths, FINN-compatible.

    Args:
        in_channels: number of input channels (1 for FLAIR only).
        out_channels: number of output logit channels (1 = tumor logit).
        channels: feature channels of the 5 resolution levels, encoder to bottleneck.
        quantization: ``"learned"``, ``"fixed"`` or ``"float"`` (see module docstring).
        bit_width: initial width (learned) or uniform width (fixed) of weights and activations, in bits.
        min_bit_width: lower clamp of learned widths (>= 2).
        max_bit_width: upper clamp of learned widths (<= 8, FINN activations must fit 8 bits).
        input_bit_width: width of the signed input quantizer (fixed, 8 by default).

    Input: ``(B, in_channels, H, W)`` float, H and W divisible by 16.
    Output: ``(B, out_channels, H, W)`` logits.
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        channels: Sequence[int] = (16, 32, 64, 128, 256),
        quantization: Quantization = "learned",
        bit_width: int = 8,
        min_bit_width: int = MIN_BITS,
        max_bit_width: int = MAX_BITS,
        input_bit_width: int = 8,
    ) -> None:
        super().__init__()
        _check_positive_int("in_channels", in_channels)
        _check_positive_int("out_channels", out_channels)
        channels = tuple(int(c) for c in channels)
        if len(channels) != NUM_LEVELS + 1:
            raise ValueError(f"channels must list {NUM_LEVELS + 1} levels, got {len(channels)}: {channels}")
        for c in channels:
            _check_positive_int("channels", c)
        if quantization not in QUANTIZATION_MODES:
            raise ValueError(f"quantization must be one of {QUANTIZATION_MODES}, got {quantization!r}")
        for name, value in (
            ("bit_width", bit_width),
            ("min_bit_width", min_bit_width),
            ("max_bit_width", max_bit_width),
            ("input_bit_width", input_bit_width),
        ):
            if not isinstance(value, int) or not MIN_BITS <= value <= MAX_BITS:
                raise ValueError(f"{name} must be an integer in [{MIN_BITS}, {MAX_BITS}], got {value!r}")
        if min_bit_width > max_bit_width:
            raise ValueError(f"min_bit_width ({min_bit_width}) must not exceed max_bit_width ({max_bit_width})")
        if quantization == "learned" and not min_bit_width <= bit_width <= max_bit_width:
            raise ValueError(
                f"bit_width ({bit_width}) must lie in [min_bit_width, max_bit_width] = [{min_bit_width}, {max_bit_width}]"
            )

        self.in_channels = in_channels
        self.out_channels = out_channels
        self.channels = channels
        self.quantization = quantization
        self._factory = _LayerFactory(quantization, bit_width, min_bit_width, max_bit_width)

        self.input_quant = self._factory.input_quant(input_bit_width)
        # Encoder: level i = conv-BN-act, conv-BN-act(shared with the decoder's up branch), maxpool.
        # (a plain list: each shared instance is registered where it first acts, as encoder.<level>.5)
        skip_acts = [self._factory.act() for _ in channels[:-1]]
        self.encoder = nn.ModuleList()
        prev = in_channels
        for level, ch in enumerate(channels[:-1]):
            self.encoder.append(self._double_conv(prev, ch, last_act=skip_acts[level]))
            prev = ch
        self.pool = nn.MaxPool2d(kernel_size=2, stride=2)
        self.bottleneck = self._double_conv(channels[-2], channels[-1])
        # Decoder: up-conv-BN-(shared act), concat, conv-BN-act, conv-BN-act.
        self.up = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for level in reversed(range(NUM_LEVELS)):
            ch = channels[level]
            self.up.append(
                nn.Sequential(
                    self._factory.conv_transpose(channels[level + 1], ch),
                    nn.BatchNorm2d(ch),
                    skip_acts[level],
                )
            )
            self.decoder.append(self._double_conv(2 * ch, ch))
        # 1x1 head to logits; the bias is a separate add so the conv stays bias-free for FINN (host-side add).
        self.head = self._factory.conv(channels[0], out_channels, kernel_size=1)
        self.head_bias = nn.Parameter(torch.zeros(1, out_channels, 1, 1))

    def _double_conv(self, in_ch: int, out_ch: int, last_act: nn.Module | None = None) -> nn.Sequential:
        return nn.Sequential(
            self._factory.conv(in_ch, out_ch, kernel_size=3),
            nn.BatchNorm2d(out_ch),
            self._factory.act(),
            self._factory.conv(out_ch, out_ch, kernel_size=3),
            nn.BatchNorm2d(out_ch),
            last_act if last_act is not None else self._factory.act(),
        )

    def check_input(self, x: torch.Tensor) -> None:
        """Raise ``ValueError`` if ``x`` is not ``(B, in_channels, H, W)`` with H, W divisible by 16."""
        if x.ndim != 4:
            raise ValueError(f"input must be 2D images shaped (B, C, H, W); got shape {tuple(x.shape)}")
        if x.shape[1] != self.in_channels:
            raise ValueError(f"input has {x.shape[1]} channels, the network expects in_channels={self.in_channels}")
        divisor = 2**NUM_LEVELS
        if x.shape[2] % divisor or x.shape[3] % divisor:
            raise ValueError(f"input spatial size {tuple(x.shape[2:])} must be divisible by {divisor}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        x = self.input_quant(x)
        skips = []
        for block in self.encoder:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottleneck(x)
        for up, block, skip in zip(self.up, self.decoder, reversed(skips)):
            x = block(torch.cat([skip, up(x)], dim=1))
        return self.head(x) + self.head_bias

    @torch.no_grad()
    def calibrate(self, batches: Iterable[torch.Tensor]) -> None:
        """Set activation scales from data (Brevitas calibration mode; BatchNorm statistics untouched).

        Use after loading a float twin (``load_checkpoint(net, path, strict=False)``) for post-training quantization or to start QAT from
        calibrated ranges. ``batches``: iterable of ``(B, in_channels, H, W)`` tensors.
        """
        from brevitas.graph.calibrate import calibration_mode

        with eval_mode(self), calibration_mode(self):
            for x in batches:
                self(x)


class FloatUNet(QuantUNet):
    """The float twin of :class:`QuantUNet`: same topology and parameter names, no quantization."""

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        channels: Sequence[int] = (16, 32, 64, 128, 256),
    ) -> None:
        super().__init__(in_channels, out_channels, channels, quantization="float")


class LearnedWidthWeightQuant(Int8WeightPerChannelFloat):
    """Signed per-output-channel weights; scale initialised from the weights' statistics then learned; bit width a
    learned parameter (Brevitas ``BitWidthParameter``), clamped by the layer's ``weight_bit_width_offset_*_val``."""

    int_quant = FusedIntQuant
    scaling_impl_type = "parameter_from_stats"
    bit_width_impl_type = "parameter"


class FixedWidthWeightQuant(Int8WeightPerChannelFloat):
    """Signed per-output-channel weights; scale initialised from the weights' statistics then learned; constant
    bit width (the layer's ``weight_bit_width``)."""

    int_quant = FusedIntQuant
    scaling_impl_type = "parameter_from_stats"


class LearnedWidthActQuant(Uint8ActPerTensorFloat):
    """Unsigned per-tensor activations (after ReLU); scale from a percentile of the first batches, then learned;
    bit width a learned parameter clamped by the layer's ``bit_width_offset_*_val``."""

    int_quant = FusedIntQuant
    bit_width_impl_type = "parameter"
    collect_stats_steps = ACT_STATS_STEPS


class FixedWidthActQuant(Uint8ActPerTensorFloat):
    """Unsigned per-tensor activations (after ReLU); scale from a percentile of the first batches, then learned;
    constant bit width."""

    int_quant = FusedIntQuant
    collect_stats_steps = ACT_STATS_STEPS


class InputQuant(Int8ActPerTensorFloat):
    """The image: signed per-tensor, constant width (FINN's QONNX conversion rejects an unsigned input)."""

    int_quant = FusedIntQuant
    collect_stats_steps = ACT_STATS_STEPS


class _LayerFactory:
    """Builds the conv / activation layers of one quantization mode: the mode picks the quantizer classes, the
    network's widths go to the layers as keyword arguments (initial/constant width, clamp of learned widths)."""

    def __init__(self, quantization: str, bit_width: int, min_bit_width: int, max_bit_width: int) -> None:
        self.quantization = quantization
        learned = quantization == "learned"
        self.weight_quant = LearnedWidthWeightQuant if learned else FixedWidthWeightQuant
        self.act_quant = LearnedWidthActQuant if learned else FixedWidthActQuant
        # Brevitas: learned width = clamp_ste(round_ste(|offset| + 2)); offset_*_val bound the total width
        clamp = {"bit_width_offset_min_val": min_bit_width, "bit_width_offset_max_val": max_bit_width} if learned else {}
        self.width = {"bit_width": bit_width, **clamp}

    def conv(self, in_ch: int, out_ch: int, kernel_size: int) -> nn.Module:
        padding = kernel_size // 2
        if self.quantization == "float":
            return nn.Conv2d(in_ch, out_ch, kernel_size, padding=padding, bias=False)
        return QuantConv2d(in_ch, out_ch, kernel_size, padding=padding, bias=False, weight_quant=self.weight_quant,
                           **{f"weight_{k}": v for k, v in self.width.items()})

    def conv_transpose(self, in_ch: int, out_ch: int) -> nn.Module:
        if self.quantization == "float":
            return nn.ConvTranspose2d(in_ch, out_ch, kernel_size=2, stride=2, bias=False)
        return QuantConvTranspose2d(in_ch, out_ch, kernel_size=2, stride=2, bias=False,
                                    weight_quant=self.weight_quant, **{f"weight_{k}": v for k, v in self.width.items()})

    def act(self) -> nn.Module:
        if self.quantization == "float":
            return nn.ReLU()
        return QuantReLU(act_quant=self.act_quant, **self.width)

    def input_quant(self, bit_width: int) -> nn.Module:
        if self.quantization == "float":
            return nn.Identity()
        return QuantIdentity(act_quant=InputQuant, bit_width=bit_width)


def _check_positive_int(name: str, value: int) -> None:
    if not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
