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

CONVS_WITH_BATCHNORM = 18  # 3x3 convs: 2 per encoder level, bottleneck and decoder level


def test_integer_bias_requantizes_every_accumulator_as_the_exact_bias():
    rng = np.random.default_rng(0)
    offset, step = rng.uniform(-300, 300, 64), rng.uniform(20, 400, 64)
    thresholds = np.arange(15) + 0.5
    gain, bias = _integer_bias(offset, step, thresholds, np.full(64, 42))
    assert gain.min() >= 1 and gain.max() <= 42 and np.all(bias == np.round(bias))
    acc = np.arange(-20000, 20000)[:, None]
    for c in range(64):
        exact = (acc + offset[c] >= thresholds * step[c]).sum(axis=1)
        integer = (gain[c] * acc + bias[c] >= gain[c] * thresholds * step[c]).sum(axis=1)
        assert np.array_equal(exact, integer), c


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

    ops = collections.Counter(n.op_type for n in onnx.load(tmp_path / "integer.onnx").graph.node)
    assert ops["BatchNormalization"] == 0 and ops["Conv"] == CONVS_WITH_BATCHNORM + 1  # + the head
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(tmp_path / "integer.onnx"), options, providers=["CPUExecutionProvider"])
    optimized = collections.Counter(n.op_type for n in onnx.load(tmp_path / "optimized.onnx").graph.node)
    assert optimized["QLinearConv"] == CONVS_WITH_BATCHNORM, optimized
    assert optimized["Conv"] <= 1 and optimized["BatchNormalization"] == 0  # only the float head conv is left
