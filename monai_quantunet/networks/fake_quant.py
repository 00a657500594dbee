"""Brevitas's integer fake quantization as one autograd node: the same maths, fewer passes over each tensor.

Brevitas's ``IntQuant`` builds ``(clamp(round_ste(x / s + z), lo, hi) - z) * s`` from eight autograd ops (the clamp
alone is two ``where`` and two comparisons), each reading and writing the whole activation tensor and saving its
inputs for the backward pass. On a CPU that traffic, not the convolutions, is most of what a QAT step costs above
the float twin's. :class:`FusedIntQuant` computes the same output with in-place ops and one saved tensor, and
its backward pass writes the gradients Brevitas's graph gives (straight-through rounding; the clamp passes the
gradient to ``x`` inside ``[lo, hi]`` and to ``lo`` / ``hi`` outside, which is how a learned bit width is
trained), up to float rounding.
"""

from __future__ import annotations

import torch
from brevitas.core.function_wrapper import RoundSte, TensorClamp
from brevitas.core.quant import IntQuant
from torch import Tensor

__all__ = ["FusedIntQuant", "fake_quant"]


class _FakeQuant(torch.autograd.Function):
    """``y = (clamp(round(x / scale + zero_point), min_int, max_int) - zero_point) * scale`` with Brevitas's
    gradients with respect to every input. ``scale``, ``zero_point`` broadcast to ``x``; ``min_int``, ``max_int``
    are 0-dim. Saves only ``x`` (which the ReLU before an activation quantizer, or the weight, keeps anyway) and
    recomputes ``x / scale`` in the backward pass; a zero ``zero_point`` (every quantizer here) skips its shifts."""

    @staticmethod
    def forward(ctx, x: Tensor, scale: Tensor, zero_point: Tensor, min_int: Tensor, max_int: Tensor) -> Tensor:
        ctx.shifted = bool(zero_point.any())
        ctx.save_for_backward(x, scale, zero_point, min_int, max_int)
        y = _scaled(x, scale, zero_point, ctx.shifted).round_().clamp_(min_int, max_int)
        return (y.sub_(zero_point) if ctx.shifted else y).mul_(scale)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        x, scale, zero_point, min_int, max_int = ctx.saved_tensors
        need_x, need_scale, need_zero, need_min, need_max = ctx.needs_input_grad
        u = _scaled(x, scale, zero_point, ctx.shifted)
        rounded = torch.round(u)
        clamped = rounded.clamp(min_int, max_int)
        inside = clamped == rounded
        grad_x = torch.where(inside, grad, 0.0) if need_x else None
        # gradients reaching (clamp - z) * s through s: one sum per scale element, then to the bound's shape
        grad_min = _reduce(torch.where(clamped > rounded, grad, 0.0), scale, min_int) if need_min else None
        grad_max = _reduce(torch.where(clamped < rounded, grad, 0.0), scale, max_int) if need_max else None
        grad_zero = _reduce(torch.where(inside, 0.0, grad), scale, zero_point).neg_() if need_zero else None
        grad_scale = None
        if need_scale:  # straight-through round: d y / d s = round(u) - u inside [lo, hi], clamp - z outside
            offset = torch.where(inside, rounded.sub_(u), clamped.sub_(zero_point) if ctx.shifted else clamped)
            grad_scale = _sum_product(grad, offset, scale)
        return grad_x, grad_scale, grad_zero, grad_min, grad_max


def _scaled(x: Tensor, scale: Tensor, zero_point: Tensor, shifted: bool) -> Tensor:
    """``x / scale + zero_point``, a new tensor (Brevitas's order of operations, so the rounding matches)."""
    u = x / scale
    return u.add_(zero_point) if shifted else u


def _sum_product(a: Tensor, b: Tensor, like: Tensor) -> Tensor:
    """``(a * b)`` summed to ``like``'s shape; a dot product without a temporary when ``like`` has one element."""
    if like.numel() == 1:
        return torch.dot(a.reshape(-1), b.reshape(-1)).reshape(like.shape)
    return (a * b).sum_to_size(like.shape)


def _reduce(masked_grad: Tensor, scale: Tensor, like: Tensor) -> Tensor:
    """``sum(masked_grad * scale)`` reduced to ``like``'s shape, summing to ``scale``'s shape first."""
    return (masked_grad.sum_to_size(scale.shape) * scale).sum_to_size(like.shape)


def fake_quant(x: Tensor, scale: Tensor, zero_point: Tensor, min_int: Tensor, max_int: Tensor) -> Tensor:
    """Integer fake quantization of ``x`` (any shape; ``scale`` and ``zero_point`` broadcast to it) onto
    ``[min_int, max_int]``, differentiable in every input as Brevitas's ``IntQuant`` with round-to-nearest."""
    return _FakeQuant.apply(x, scale, zero_point, min_int, max_int)


class FusedIntQuant(IntQuant):
    """Drop-in ``int_quant`` for Brevitas quantizers that round to nearest (``float_to_int_impl_type = "round"``):
    ``IntQuant``'s forward as one :func:`fake_quant` node. Everything the proxies and exporters read (``signed``,
    ``narrow_range``, ``input_view_impl``, ``float_to_int_impl``) is ``IntQuant``'s."""

    def __init__(self, narrow_range: bool, signed: bool, input_view_impl: torch.nn.Module,
                 float_to_int_impl: torch.nn.Module = RoundSte(), tensor_clamp_impl: torch.nn.Module = TensorClamp(),
                 quant_delay_steps: int = 0) -> None:
        if not isinstance(float_to_int_impl, RoundSte):
            raise ValueError(f"FusedIntQuant rounds to nearest; got float_to_int_impl {type(float_to_int_impl).__name__}")
        if quant_delay_steps:
            raise ValueError("FusedIntQuant does not delay quantization (quant_delay_steps must be 0)")
        super().__init__(narrow_range, signed, input_view_impl, float_to_int_impl, tensor_clamp_impl, quant_delay_steps)

    def forward(self, scale: Tensor, zero_point: Tensor, bit_width: Tensor, x: Tensor) -> Tensor:
        x = self.input_view_impl(x)
        return fake_quant(x, scale, zero_point, self.min_int(bit_width), self.max_int(bit_width))
