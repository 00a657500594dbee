import json

import pytest
import torch
import torch.nn.functional as F

from monai_quantunet.bitwidth import bit_width_report, split_bit_width_parameters
from monai_quantunet.cost import cost_report
from monai_quantunet.losses import QuantUNetLoss, bit_width_term
from monai_quantunet.networks import FloatUNet, QuantUNet
from monai_quantunet.training import make_optimizer

SMALL = (4, 8, 8, 16, 16)


def test_report_totals_by_hand(tmp_path):
    net = QuantUNet(channels=SMALL, bit_width=8)
    bits, _ = split_bit_width_parameters(net)
    with torch.no_grad():
        for i, p in enumerate(bits):
            p.fill_(float(i % 4))  # widths 2, 3, 4, 5 cycling
    report = bit_width_report(net)
    weights = [r for r in report.layers if r.kind == "weight"]
    n = sum(r.num_weights for r in weights)
    mem = sum(r.num_weights * r.bits for r in weights)
    assert report.num_weights == n == sum(m.weight.numel() for m in net.modules() if hasattr(m, "weight_quant"))
    assert report.weight_memory_bits == mem
    assert report.mean_weight_bits == pytest.approx(sum(r.bits for r in weights) / 23)
    assert report.size_weighted_weight_bits == pytest.approx(mem / n)
    assert report.compression_vs_float32 == pytest.approx(32 * n / mem)
    report.to_json(tmp_path / "r.json")
    assert json.loads((tmp_path / "r.json").read_text())["totals"]["weight_memory_bits"] == mem
    assert "encoder.0.0" in report.format_table()
    report.plot(tmp_path / "bits.png")
    assert (tmp_path / "bits.png").read_bytes()[:4] == b"\x89PNG"


def test_float_twin_report():
    report = bit_width_report(FloatUNet(channels=SMALL))
    assert report.mean_weight_bits == 32 and report.compression_vs_float32 == 1


def test_loss_equals_hand_computation():
    torch.manual_seed(0)
    net = QuantUNet(channels=SMALL, bit_width=6)
    logits = torch.randn(2, 1, 8, 8)
    target = (torch.rand(2, 1, 8, 8) > 0.6).float()
    loss_fn = QuantUNetLoss(net, lambda_bits=0.5)
    p = torch.sigmoid(logits)
    bce = F.binary_cross_entropy(p, target)
    dice = 1 - (2 * (p * target).sum() + 1e-5) / (p.sum() + target.sum() + 1e-5)
    bits = (6 + 6) / 2 / 8  # mean weight width and mean activation width, averaged, / 8
    expected = bce + dice + 0.5 * bits
    assert loss_fn(logits, target).item() == pytest.approx(expected.item(), rel=1e-5)
    assert loss_fn.last_components["bits"] == pytest.approx(bits)


def test_size_weighted_term():
    net = QuantUNet(channels=SMALL, bit_width=8)
    bits, _ = split_bit_width_parameters(net)
    with torch.no_grad():
        for i, p in enumerate(bits):
            p.fill_(float(i % 3))
    report = bit_width_report(net)
    term = bit_width_term(net, "size_weighted", include_activations=False, normalize=False)
    assert term.item() == pytest.approx(report.size_weighted_weight_bits, rel=1e-5)
    assert bit_width_term(FloatUNet(channels=SMALL)).item() == 0


def test_bops_term_weights_each_conv_by_its_macs():
    torch.manual_seed(0)
    net = QuantUNet(channels=SMALL, bit_width=8)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    loss_fn = QuantUNetLoss(net, bit_reduction="bops")
    assert net.state_dict().keys() == state.keys()  # the MAC shares came from a copy: no scale was initialised
    bits, _ = split_bit_width_parameters(net)
    with torch.no_grad():
        for i, p in enumerate(bits):
            p.fill_(float(i % 5) - 2)
    costs = cost_report(net, torch.zeros(1, 1, 64, 64))
    expected = costs.totals()["bops"] / costs.totals()["macs"] / 8**2  # BOPs / (MACs x 8 x 8), at any input size
    assert loss_fn.bit_term().item() == pytest.approx(expected, rel=1e-5)
    assert QuantUNetLoss(FloatUNet(channels=SMALL), bit_reduction="bops").bit_term().item() == 0
    grads = torch.autograd.grad(loss_fn.bit_term(), bits, allow_unused=True)
    assert all(g is not None for g in grads)  # every weight and activation width gets a gradient


@pytest.mark.parametrize("kwargs", [{"lambda_bits": -0.1}, {"bit_reduction": "max"}, {"dice_weight": -1}])
def test_bad_loss_arguments(kwargs):
    with pytest.raises(ValueError):
        QuantUNetLoss(QuantUNet(channels=SMALL), **kwargs)


def _train_steps(lambda_bits: float, steps: int = 40) -> tuple[float, float]:
    torch.manual_seed(0)
    net = QuantUNet(channels=SMALL, bit_width=6)
    loss_fn = QuantUNetLoss(net, lambda_bits=lambda_bits)
    opt = make_optimizer(net, lr=1e-3, bit_lr=0.05)
    x = torch.rand(4, 1, 32, 32)
    y = (x > 0.7).float()
    before = bit_width_report(net).mean_weight_bits
    for _ in range(steps):
        opt.zero_grad()
        loss_fn(net(x), y).backward()
        opt.step()
    return before, bit_width_report(net).mean_weight_bits


def test_lambda_drives_mean_width_down_and_zero_lambda_does_not():
    before, after = _train_steps(lambda_bits=1.0)
    assert after < before - 0.5
    before0, after0 = _train_steps(lambda_bits=0.0)
    assert after0 >= before0 - 0.25


def test_optimizer_groups():
    net = QuantUNet(channels=SMALL)
    opt = make_optimizer(net, lr=1e-3, bit_lr=0.02)
    assert [g["lr"] for g in opt.param_groups] == [1e-3, 0.02]
    assert len(opt.param_groups[1]["params"]) == 41
    assert len(make_optimizer(FloatUNet(channels=SMALL)).param_groups) == 1


@pytest.mark.parametrize("cap, expected", [(4, 1.0), (8, 0.5)])
def test_bit_term_is_normalised_by_the_configured_maximum_width(cap, expected):
    net = QuantUNet(channels=SMALL, bit_width=4, max_bit_width=cap)
    loss_fn = QuantUNetLoss(net)
    assert loss_fn.max_bit_width == cap
    assert loss_fn.bit_term().item() == pytest.approx(expected)  # widths start at 4
    assert QuantUNetLoss(net, max_bit_width=8).bit_term().item() == pytest.approx(0.5)  # an explicit normaliser wins
    assert QuantUNetLoss(QuantUNet(channels=SMALL, quantization="fixed", bit_width=4)).max_bit_width == 8


def test_distillation_adds_bce_against_the_teachers_probabilities():
    torch.manual_seed(0)
    net = QuantUNet(channels=SMALL, bit_width=4, max_bit_width=4)
    logits, teacher = torch.randn(2, 1, 8, 8), 3 * torch.randn(2, 1, 8, 8)
    target = (torch.rand(2, 1, 8, 8) > 0.6).float()
    plain = QuantUNetLoss(net)(logits, target).item()
    loss_fn = QuantUNetLoss(net, distill_weight=0.5)
    total = loss_fn(logits, torch.cat([target, teacher], 1)).item()
    expected = F.binary_cross_entropy_with_logits(logits, torch.sigmoid(teacher)).item()
    assert loss_fn.last_components["distill"] == pytest.approx(expected, rel=1e-5)
    assert total == pytest.approx(plain + 0.5 * expected, rel=1e-5)
    with pytest.raises(ValueError, match="teacher's logits"):
        loss_fn(logits, target)


def test_teacher_logits_prepare_batch():
    from monai_quantunet.training import TeacherLogits

    teacher = FloatUNet(channels=SMALL)
    batch = {"image": torch.rand(2, 1, 16, 16), "label": (torch.rand(2, 1, 16, 16) > 0.5).float()}
    image, target = TeacherLogits(teacher)(batch, torch.device("cpu"))
    assert target.shape == (2, 2, 16, 16) and torch.equal(target[:, :1], batch["label"])
    assert torch.allclose(target[:, 1:], teacher(batch["image"]))
    assert not any(p.requires_grad for p in teacher.parameters())
