"""QuantU-Net loss: BCE + Dice + lambda * bit-width term (arXiv 2503.08719, lambda = 0.25) [+ distillation].

The paper does not publish the normalisation of the bit term. Here it is

    bit_term = reduce(widths of the selected layers) / max_bit_width   (if ``normalize_bits``)

where ``max_bit_width`` is the network's configured upper clamp of its learned widths (read from the model, or
given), so the term is 1 at the widths training starts from in the shipped recipe (capped at 4) and
``lambda_bits`` means the same for any cap: the term lies in [min / max, 1]. ``bit_reduction="mean"`` gives one
vote per layer (the paper's "average bits"), ``"size_weighted"`` weighs weights by their count (weight memory /
number of weights; activations keep one vote each and are averaged with equal total weight). With widths in
[2, 8] (the paper's setting) ``lambda_bits = 0.25`` trades one full step of Dice loss against all layers dropping
from 8 to 2 bits, i.e. 0.25 / 8 per bit; the bundle's recipe (widths in [2, 4]) keeps that pressure per bit with
``lambda_bits = 0.125``.

``bit_reduction="bops"`` is the hardware-aware term: each conv's weight bits x input-activation bits weighted
by its share of the network's MACs (``monai_quantunet.cost``), i.e. BOPs / (MACs x max_bit_width**2).
A U-Net's MAC shares do not depend on the input size.

Distillation (``distill_weight`` > 0): the target carries a second channel, the logits of a frozen teacher (the
float twin) on the same images (``training.TeacherLogits``), and the loss adds ``distill_weight`` x the BCE of
the student's logits against the teacher's probabilities.
"""

from __future__ import annotations

import copy
from typing import Literal

import torch
import torch.nn as nn
from monai.losses import DiceLoss

from brevitas.core.bit_width import BitWidthParameter

from monai_quantunet.bitwidth import bit_width_tensors, quantizer_bit_width
from monai_quantunet.cost import cost_report
from monai_quantunet.networks.quantunet import MAX_BITS

__all__ = ["QuantUNetLoss", "bit_width_term", "bops_term", "mac_shares", "configured_max_bit_width"]

BIT_REDUCTIONS = ("mean", "size_weighted", "bops")
MacShares = list[tuple[str, str, float]]  # (weight layer, its input quantizer, share of the network's MACs)


def configured_max_bit_width(model: nn.Module) -> int:
    """The largest upper clamp of ``model``'s learned widths (Brevitas ``BitWidthParameter``); ``MAX_BITS`` (8)
    for a model without clamped learned widths (fixed widths and the float twin: their bit term is constant)."""
    caps = [m.restrict_clamp_bit_width_impl.clamp_ste.max_val for m in model.modules()
            if isinstance(m, BitWidthParameter) and hasattr(m.restrict_clamp_bit_width_impl.clamp_ste, "max_val")]
    return int(round(max(caps))) if caps else MAX_BITS


def mac_shares(model: nn.Module, in_channels: int = 1, size: int = 32) -> MacShares:
    """Each conv's share of the MACs, with the quantizer feeding it, from a ``(1, in_channels, size, size)``
    pass of a copy of ``model`` (a forward pass initialises Brevitas scales: the model itself is left as is).
    Empty for a model without activation quantizers (the float twin)."""
    layers = cost_report(copy.deepcopy(model), torch.zeros(1, in_channels, size, size)).layers
    total = sum(r.macs for r in layers)
    return [(r.name, r.input_quantizer, r.macs / total) for r in layers if r.input_quantizer]


def bops_term(model: nn.Module, shares: MacShares) -> torch.Tensor:
    """Differentiable MAC-weighted mean of weight bits x input bits (0-d tensor, in bits squared)."""
    if not shares:
        return torch.zeros(())
    modules = dict(model.named_modules())
    return sum(share * quantizer_bit_width(modules[w]) * quantizer_bit_width(modules[a]) for w, a, share in shares)


def bit_width_term(
    model: nn.Module,
    reduction: Literal["mean", "size_weighted"] = "mean",
    include_activations: bool = True,
    normalize: bool = True,
    max_bit_width: int = MAX_BITS,
) -> torch.Tensor:
    """Differentiable bit-width penalty of ``model`` (0-d tensor; 0 for a model without quantizers). For
    ``"bops"`` use :class:`QuantUNetLoss` (it needs the MAC shares, computed once)."""
    if reduction not in BIT_REDUCTIONS[:2]:
        raise ValueError(f"bit_reduction must be one of {BIT_REDUCTIONS}, got {reduction!r}")
    terms = bit_width_tensors(model, ("weight", "activation") if include_activations else ("weight",))
    weights = [(b, n) for kind, b, n in terms if kind == "weight"]
    acts = [b for kind, b, _ in terms if kind == "activation"]
    if not weights and not acts:
        return torch.zeros(())
    parts = []
    if weights:
        if reduction == "mean":
            parts.append(torch.stack([b for b, _ in weights]).mean())
        else:
            total = sum(n for _, n in weights)
            parts.append(sum(b * (n / total) for b, n in weights))
    if acts:
        parts.append(torch.stack(acts).mean())
    term = torch.stack(parts).mean()
    return term / max_bit_width if normalize else term


class QuantUNetLoss(nn.Module):
    """``bce_weight * BCE + dice_weight * Dice + lambda_bits * bit_term(model)``.

    Args:
        model: the network whose bit widths are penalised (held by reference, not registered as a submodule).
        lambda_bits: weight of the bit term (>= 0); 0 trains the widths on the task loss alone.
        bit_reduction: ``"mean"`` (paper), ``"size_weighted"`` or ``"bops"`` (see the module docstring).
        include_activations: penalise activation widths as well as weight widths.
        normalize_bits: divide the term by ``max_bit_width`` (term in [min / max, 1]).
        max_bit_width: the normaliser; ``None`` reads the network's configured cap
            (:func:`configured_max_bit_width`).
        bce_weight, dice_weight: weights of the segmentation terms (>= 0).
        distill_weight: weight of the distillation term (>= 0; > 0 needs the teacher's logits in the target).

    ``forward(logits, target)``: logits ``(B, 1, H, W)``; target ``(B, 1, H, W)`` in {0, 1}, or ``(B, 2, H, W)``
    with the teacher's logits as second channel. Returns a 0-d tensor; the last call's parts are in
    ``self.last_components`` (floats: ``bce``, ``dice``, ``bits``, ``total``, and ``distill`` when distilling).
    """

    def __init__(
        self,
        model: nn.Module,
        lambda_bits: float = 0.25,
        bit_reduction: Literal["mean", "size_weighted", "bops"] = "mean",
        include_activations: bool = True,
        normalize_bits: bool = True,
        max_bit_width: int | None = None,
        bce_weight: float = 1.0,
        dice_weight: float = 1.0,
        distill_weight: float = 0.0,
    ) -> None:
        super().__init__()
        for name, value in (("lambda_bits", lambda_bits), ("bce_weight", bce_weight), ("dice_weight", dice_weight),
                            ("distill_weight", distill_weight)):
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        if bit_reduction not in BIT_REDUCTIONS:
            raise ValueError(f"bit_reduction must be one of {BIT_REDUCTIONS}, got {bit_reduction!r}")
        self._model = [model]  # a list keeps the model out of this module's state_dict and parameters
        self.lambda_bits = lambda_bits
        self.bit_reduction = bit_reduction
        self.include_activations = include_activations
        self.normalize_bits = normalize_bits
        self.max_bit_width = max_bit_width or configured_max_bit_width(model)
        self.bce_weight = bce_weight
        self.dice_weight = dice_weight
        self.distill_weight = distill_weight
        self.bce = nn.BCEWithLogitsLoss()
        self.dice = DiceLoss(sigmoid=True, batch=True)
        self.last_components: dict[str, float] = {}
        self._mac_shares = mac_shares(model, getattr(model, "in_channels", 1)) if bit_reduction == "bops" else []

    def bit_term(self) -> torch.Tensor:
        if self.bit_reduction != "bops":
            return bit_width_term(self._model[0], self.bit_reduction, self.include_activations, self.normalize_bits,
                                  self.max_bit_width)
        term = bops_term(self._model[0], self._mac_shares)
        return term / self.max_bit_width**2 if self.normalize_bits else term

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        teacher = None
        if self.distill_weight > 0:
            if target.shape[1] != 2 * logits.shape[1]:
                raise ValueError(f"distill_weight > 0 needs the teacher's logits in the target: expected "
                                 f"{2 * logits.shape[1]} target channels, got shape {tuple(target.shape)}")
            target, teacher = target.split(logits.shape[1], dim=1)
        if logits.shape != target.shape:
            raise ValueError(f"logits shape {tuple(logits.shape)} differs from target shape {tuple(target.shape)}")
        target = target.to(logits.dtype)
        bce = self.bce(logits, target)
        dice = self.dice(logits, target)
        bits = self.bit_term().to(logits.device)
        total = self.bce_weight * bce + self.dice_weight * dice + self.lambda_bits * bits
        self.last_components = {"bce": float(bce.detach()), "dice": float(dice.detach()), "bits": float(bits.detach())}
        if teacher is not None:
            distill = self.bce(logits, torch.sigmoid(teacher.to(logits.dtype)))
            total = total + self.distill_weight * distill
            self.last_components["distill"] = float(distill.detach())
        self.last_components["total"] = float(total.detach())
        return total
