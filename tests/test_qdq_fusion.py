"""QCDQ rewrite for integer kernels: exact integer bias, same logits as Brevitas's graph, QLinearConv in onnxruntime."""

import collections

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from tiny_unet import CHANNELS, SIZE

from monai_quantunet.export.qcdq import export_qcdq_model, onnx_network
from monai_quantunet.export.qdq_fusion import _integer_bias
from monai_quantunet.networks import QuantUNet

CONVS_WITH_BATCHNORM = 22  # 18 3x3 convs and 4 transposed convs


def test_integer_bias_requantizes_every_accumulator_as_the_exact_bias():
    rng = np.random.default_rng(0)
    channels = 64
    offset, step = rng.uniform(-300, 300, channels), rng.uniform(20, 400, channels)
    offset[:4] = 0.5 * step[:4] - np.arange(4)  # rounding edges exactly on accumulators: not exact
    thresholds = np.arange(15) + 0.5
    reach = np.full(channels, 5000)
    gain, bias, exact = _integer_bias(offset, step, thresholds, np.full(channels, 42), reach)
    assert gain.min() >= 1 and gain.max() <= 42 and np.all(bias == np.round(bias))
    assert not exact[:4].any() and exact[4:].mean() > 0.9
    acc = np.arange(-5000, 5001)[:, None]
    for c in np.nonzero(exact)[0]:
        levels = (acc + offset[c] >= thresholds * step[c]).sum(axis=1)
        assert np.array_equal(levels, (gain[c] * acc + bias[c] >= gain[c] * thresholds * step[c]).sum(axis=1)), c


@pytest.fixture(scope="module")
def fixed4_net() -> QuantUNet:
    """A tiny 4-bit net with non-trivial BatchNorms (negative scales too) and calibrated activations."""
    torch.manual_seed(0)
    net = QuantUNet(1, 1, CHANNELS, quantization="fixed", bit_width=4)
    with torch.no_grad():
        for bn in (m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)):
            bn.weight.uniform_(-1.5, 1.5)
            bn.bias.uniform_(-0.5, 0.5)
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.2, 2.0)
    net.calibrate([torch.rand(4, 1, *SIZE) for _ in range(2)])
    return net.eval()


def test_rewrite_equals_brevitas_graph_and_runs_qlinearconv(fixed4_net, tmp_path):
    x = torch.rand(6, 1, *SIZE)
    export_qcdq_model(fixed4_net, x, tmp_path / "brevitas.onnx", integer_kernels=False)
    export_qcdq_model(fixed4_net, x, tmp_path / "integer.onnx")
    with torch.no_grad():
        ref = fixed4_net(x)
    brevitas, integer = onnx_network(tmp_path / "brevitas.onnx")(x), onnx_network(tmp_path / "integer.onnx")(x)
    tol = 1e-5 * float(ref.abs().max())
    assert float(ref.abs().max()) > 0.1  # the logits span a range, not a constant
    assert (integer - brevitas).abs().max() <= tol and (integer - ref).abs().max() <= tol
    assert torch.equal(integer > 0, ref > 0)

    nodes = onnx.load(tmp_path / "integer.onnx").graph.node
    folded = sum(n.op_type in ("Conv", "ConvTranspose") and len(n.input) == 3 for n in nodes)
    integer_convs = sum(n.op_type == "Conv" and len(n.input) == 3 for n in nodes)
    assert folded > CONVS_WITH_BATCHNORM // 2  # most layers (the rest: no exact integer bias)
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(tmp_path / "integer.onnx"), options, providers=["CPUExecutionProvider"])
    optimized = collections.Counter(n.op_type for n in onnx.load(tmp_path / "optimized.onnx").graph.node)
    assert integer_convs > 0 and optimized["QLinearConv"] == integer_convs, optimized
