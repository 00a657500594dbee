import pytest
import torch

from monai_quantunet.bitwidth import bit_width_report, split_bit_width_parameters
from monai_quantunet.checkpoint import load_checkpoint
from monai_quantunet.networks import FloatUNet, QuantUNet
from monai_quantunet.networks.quantunet import QuantConv2d, QuantConvTranspose2d

SMALL = (4, 8, 8, 16, 16)


@pytest.mark.parametrize("in_ch,out_ch,size", [(1, 1, (32, 32)), (3, 2, (48, 16)), (2, 1, (16, 64))])
@pytest.mark.parametrize("mode", ["learned", "fixed", "float"])
def test_output_shape(mode, in_ch, out_ch, size):
    net = QuantUNet(in_ch, out_ch, channels=SMALL, quantization=mode, bit_width=4)
    y = net(torch.rand(2, in_ch, *size))
    assert y.shape == (2, out_ch, *size)
    assert torch.isfinite(y).all()


def test_default_net_has_23_quantized_convs_and_widths_in_range():
    net = QuantUNet()
    convs = [m for m in net.modules() if isinstance(m, (QuantConv2d, QuantConvTranspose2d))]
    assert len(convs) == 23
    assert sum(isinstance(m, QuantConvTranspose2d) for m in convs) == 4
    assert all(m.bias is None for m in convs)
    report = bit_width_report(net)
    assert len([r for r in report.layers if r.kind == "weight"]) == 23
    assert len([r for r in report.layers if r.kind == "activation"]) == 18  # 4 shared by concat pairs
    assert all(2 <= r.bits <= 8 for r in report.layers)


def test_concat_inputs_share_one_quantizer():
    net = QuantUNet(channels=SMALL)
    for level, up in zip(reversed(range(4)), net.up):
        assert up[2] is net.encoder[level][5]


def test_learned_widths_stay_clamped():
    net = QuantUNet(channels=SMALL, bit_width=4, min_bit_width=3, max_bit_width=6)
    bits, _ = split_bit_width_parameters(net)
    with torch.no_grad():
        for i, p in enumerate(bits):
            p.fill_(20.0 if i % 2 else 0.0)
    widths = [r.bits for r in bit_width_report(net).layers if r.kind != "input"]
    assert min(widths) == 3 and max(widths) == 6


def test_gradients_reach_every_bit_width_parameter():
    net = QuantUNet(channels=SMALL)
    bits, rest = split_bit_width_parameters(net)
    assert len(bits) == 23 + 18
    from monai_quantunet.losses import QuantUNetLoss

    loss = QuantUNetLoss(net)
    loss(net(torch.rand(2, 1, 32, 32)), (torch.rand(2, 1, 32, 32) > 0.7).float()).backward()
    assert all(p.grad is not None and p.grad.abs() > 0 for p in bits)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"bit_width": 9}, "bit_width"),
        ({"bit_width": 1}, "bit_width"),
        ({"min_bit_width": 5, "max_bit_width": 4}, "min_bit_width"),
        ({"quantization": "ternary"}, "quantization"),
        ({"channels": (8, 16)}, "channels"),
        ({"in_channels": 0}, "in_channels"),
    ],
)
def test_bad_construction_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        QuantUNet(**kwargs)


@pytest.mark.parametrize(
    "shape,match",
    [((1, 2, 32, 32), "channels"), ((1, 1, 32, 32, 8), "2D"), ((1, 1, 40, 32), "divisible"), ((1, 1, 32, 24), "divisible")],
)
def test_bad_input(shape, match):
    net = QuantUNet(channels=SMALL)
    with pytest.raises(ValueError, match=match):
        net(torch.rand(*shape))


def test_state_dict_round_trip_keeps_widths_and_outputs():
    torch.manual_seed(0)
    net = QuantUNet(channels=SMALL)
    bits, _ = split_bit_width_parameters(net)
    with torch.no_grad():
        for i, p in enumerate(bits):
            p.fill_(float(i % 6))  # widths 2..7
    net(torch.rand(4, 1, 32, 32))  # initialise scale statistics in training mode
    net.eval()
    x = torch.rand(2, 1, 32, 32)
    other = QuantUNet(channels=SMALL)
    other.load_state_dict(net.state_dict())
    other.eval()
    assert bit_width_report(other).to_dict() == bit_width_report(net).to_dict()
    assert torch.equal(other(x), net(x))


def test_quant_net_loads_float_twin_weights(tmp_path):
    torch.manual_seed(0)
    float_net = FloatUNet(channels=SMALL)
    quant = QuantUNet(channels=SMALL, quantization="learned")
    torch.save(float_net.state_dict(), tmp_path / "float.pt")
    load_checkpoint(quant, tmp_path / "float.pt", strict=False)
    assert torch.equal(quant.encoder[0][0].weight, float_net.encoder[0][0].weight)
    assert torch.equal(quant.decoder[3][1].running_var, float_net.decoder[3][1].running_var)
    # 8-bit quantization of a float model, calibrated on data, stays close to it
    float_net.eval(), quant.eval()
    x = torch.rand(2, 1, 32, 32)
    quant.calibrate([torch.rand(4, 1, 32, 32) for _ in range(3)])
    assert torch.corrcoef(torch.stack([quant(x).flatten(), float_net(x).flatten()]))[0, 1] > 0.95


def test_float_weights_with_other_shape_are_refused(tmp_path):
    quant = QuantUNet(channels=SMALL)
    torch.save(FloatUNet(channels=(4, 8, 8, 16, 32)).state_dict(), tmp_path / "other.pt")
    with pytest.raises(ValueError, match="does not match"):
        load_checkpoint(quant, tmp_path / "other.pt", strict=False)
    with pytest.raises(FileNotFoundError, match=r"missing\.pt not found"):
        load_checkpoint(quant, tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_text("not a checkpoint")
    with pytest.raises(ValueError, match=r"junk\.pt cannot be read"):
        load_checkpoint(quant, tmp_path / "junk.pt")


def test_fixed_mode_is_uniform():
    report = bit_width_report(QuantUNet(channels=SMALL, quantization="fixed", bit_width=3))
    assert {r.bits for r in report.layers if r.kind != "input"} == {3}
    assert report.compression_vs_float32 == pytest.approx(32 / 3)


def test_bit_width_parameters_are_found_by_their_brevitas_modules():
    """The learned widths are the BitWidthParameter offsets (23 weight + 18 activation quantizers), whatever the
    surrounding modules are called; a fixed-width net has none."""
    model = torch.nn.ModuleDict({"bit_width_free_head": torch.nn.Linear(2, 2), "net": QuantUNet(channels=SMALL)})
    bits, rest = split_bit_width_parameters(model)
    assert len(bits) == 23 + 18 and all(p.numel() == 1 for p in bits)
    assert {id(p) for p in model["bit_width_free_head"].parameters()} <= {id(p) for p in rest}
    assert len(bits) + len(rest) == len(list(model.parameters()))
    assert split_bit_width_parameters(QuantUNet(channels=SMALL, quantization="fixed", bit_width=4))[0] == []
