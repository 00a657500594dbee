"""FusedIntQuant computes Brevitas's IntQuant: the same output and the same gradients for x, scale, zero point and
a learned bit width, alone and inside the network's quantized layers."""

from __future__ import annotations

import pytest
import torch
from brevitas.core.function_wrapper import Identity, RoundSte
from brevitas.core.function_wrapper.ops_ste import FloorSte
from brevitas.core.quant import IntQuant
from brevitas.nn import QuantConv2d, QuantIdentity, QuantReLU

from monai_quantunet.networks.fake_quant import FusedIntQuant
from monai_quantunet.networks.quantunet import InputQuant, LearnedWidthActQuant, LearnedWidthWeightQuant


def _inputs(shape: tuple[int, ...], scale_shape: tuple[int, ...], zero: float) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g) * 3
    x.view(-1)[:50] = (torch.arange(50) - 25) * 0.25  # exact ties of round-half-to-even at scale 0.5
    scale = torch.full(scale_shape, 0.5) + torch.rand(scale_shape, generator=g) * (0 if scale_shape == () else 0.2)
    zero_point = torch.full(scale_shape, zero)
    bit_width = torch.tensor(3.0)
    return [t.requires_grad_() for t in (x, scale, zero_point, bit_width)]


@pytest.mark.parametrize("signed,narrow", [(True, True), (True, False), (False, False)])
@pytest.mark.parametrize("scale_shape,zero", [((), 0.0), ((), 1.0), ((4, 1, 1, 1), 0.0), ((4, 1, 1, 1), -2.0)])
def test_matches_brevitas_int_quant(signed: bool, narrow: bool, scale_shape: tuple[int, ...], zero: float) -> None:
    reference = IntQuant(narrow_range=narrow, signed=signed, input_view_impl=Identity())
    fused = FusedIntQuant(narrow_range=narrow, signed=signed, input_view_impl=Identity())
    results = []
    for quant in (reference, fused):
        x, scale, zero_point, bit_width = _inputs((4, 3, 5, 5), scale_shape, zero)
        y = quant(scale, zero_point, bit_width, x)
        (y * torch.linspace(-1, 2, y.numel()).view_as(y)).sum().backward()
        results.append((y.detach(), [t.grad for t in (x, scale, zero_point, bit_width)]))
    (y_ref, grads_ref), (y_fused, grads_fused) = results
    assert torch.equal(y_ref, y_fused)
    for name, g_ref, g_fused in zip(("x", "scale", "zero_point", "bit_width"), grads_ref, grads_fused):
        torch.testing.assert_close(g_fused, g_ref, rtol=1e-5, atol=1e-5, msg=f"gradient of {name}")
    assert grads_ref[3].abs().item() > 0  # the case exercises the clamp, so the bit width gets a gradient


def _layer_pair(make: type, **kwargs) -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    fused = make(**kwargs)
    torch.manual_seed(0)
    quant_key = "weight_quant" if "weight_quant" in kwargs else "act_quant"
    reference = make(**{**kwargs, quant_key: kwargs[quant_key].let(int_quant=IntQuant)})
    return fused, reference


@pytest.mark.parametrize("layer", ["act", "weight", "input"])
def test_network_quantizers_match_brevitas(layer: str) -> None:
    if layer == "weight":
        pair = _layer_pair(QuantConv2d, in_channels=3, out_channels=4, kernel_size=3, bias=False,
                           weight_quant=LearnedWidthWeightQuant, weight_bit_width=3)
    elif layer == "act":
        pair = _layer_pair(QuantReLU, act_quant=LearnedWidthActQuant, bit_width=3)
    else:
        pair = _layer_pair(QuantIdentity, act_quant=InputQuant, bit_width=8)
    x = torch.randn(2, 3, 8, 8) * 2
    outputs = []
    for module in pair:
        module.train()
        for _ in range(3):  # activation statistics steps, then the learned-scale step
            module.zero_grad()
            y = module(x)
            (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
        outputs.append((y.detach(), {n: p.grad for n, p in module.named_parameters() if p.grad is not None}))
    (y_fused, g_fused), (y_ref, g_ref) = outputs
    assert torch.equal(y_fused, y_ref)
    assert g_fused.keys() == g_ref.keys() and g_fused
    for name in g_ref:
        torch.testing.assert_close(g_fused[name], g_ref[name], rtol=1e-4, atol=1e-5, msg=f"gradient of {name}")


def test_network_uses_fused_int_quant() -> None:
    from monai_quantunet.networks import QuantUNet

    net = QuantUNet(channels=(4, 8, 8, 8, 8))
    int_quants = [m for m in net.modules() if isinstance(m, IntQuant)]
    assert int_quants and all(isinstance(m, FusedIntQuant) for m in int_quants)


def test_rejects_other_rounding() -> None:
    FusedIntQuant(narrow_range=False, signed=True, input_view_impl=Identity(), float_to_int_impl=RoundSte())
    with pytest.raises(ValueError, match="rounds to nearest"):
        FusedIntQuant(narrow_range=False, signed=True, input_view_impl=Identity(), float_to_int_impl=FloorSte())
