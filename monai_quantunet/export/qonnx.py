"""QONNX export: Brevitas ``export_qonnx`` -> qonnx cleanup -> frozen integer widths -> datatype annotation.

Datatypes: a Brevitas ``Quant`` node outputs ``scale x integer``; qonnx calls that ``SCALEDINT<b>`` and only
``InferDataTypes(allow_scaledint_dtypes=True)`` keeps it (the default turns it into FLOAT32). The exact
integer type of each quantizer (``INT8`` input, ``UINT<b>`` activations, ``INT<b>`` weights) is what FINN
derives from the node's ``signed`` attribute and bit width once it extracts the scales; ``quant_dtypes``
lists it per node. Annotating ``INT``/``UINT`` on the scaled tensors themselves would misstate their values.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from qonnx.core.modelwrapper import ModelWrapper
from qonnx.core.onnx_exec import execute_onnx
from qonnx.custom_op.registry import getCustomOp
from qonnx.transformation.infer_datatypes import InferDataTypes
from qonnx.transformation.infer_shapes import InferShapes
from qonnx.util.cleanup import cleanup_model

__all__ = ["export_qonnx_model", "quant_dtypes", "run_qonnx"]


def export_qonnx_model(network: nn.Module, example: torch.Tensor, path: str | Path) -> ModelWrapper:
    """Export ``network`` (eval mode) for a fixed ``(1, C, H, W)`` input shaped like ``example[:1]``; write the
    cleaned, datatype-annotated model to ``path`` and return it.

    Raises ``ValueError`` if a ``Quant`` node's bit width is not a static integer."""
    from brevitas.export import export_qonnx

    path = str(path)
    export_qonnx(network, input_t=example[:1].detach().cpu(), export_path=path, dynamo=False)
    model = cleanup_model(ModelWrapper(path))
    model = model.transform(InferShapes()).transform(InferDataTypes(allow_scaledint_dtypes=True))
    quant_dtypes(model)  # raises on non-integer widths
    model.save(path)
    return model


def quant_dtypes(model: ModelWrapper) -> dict[str, str]:
    """``{Quant node name: "INT<b>" / "UINT<b>"}``: the integer type behind each quantizer.

    Raises ``ValueError`` naming the node if its bit width is not a constant integer."""
    out = {}
    for node in model.get_nodes_by_op_type("Quant"):
        bits = model.get_initializer(node.input[3])
        if bits is None or bits.size != 1 or not float(bits) == int(bits):
            raise ValueError(f"QONNX node {node.name}: bit width {bits} is not a constant integer")
        out[node.name] = str(getCustomOp(node).get_integer_datatype(model))
    return out


def run_qonnx(model: ModelWrapper, images: torch.Tensor | np.ndarray) -> np.ndarray:
    """Execute the QONNX graph (numpy reference) on ``(N, C, H, W)`` images one at a time; ``(N, out, H, W)``."""
    images = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    in_name, out_name = model.graph.input[0].name, model.graph.output[0].name
    return np.concatenate(
        [execute_onnx(model, {in_name: x[None].astype(np.float32)})[out_name] for x in images], axis=0
    )
