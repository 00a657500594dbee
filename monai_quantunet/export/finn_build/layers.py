"""FINN's hardware layers as the build sees them: their domain, base type and the interface folding uses."""

from __future__ import annotations

from typing import Any, Protocol

__all__ = ["HW_DOMAIN", "HwLayer", "base_op", "hw_layers"]

HW_DOMAIN = "finn.custom_op.fpgadataflow"


class HwLayer(Protocol):
    """The part of FINN's hardware custom ops (``qonnx.custom_op.registry.getCustomOp(node)``) the folding uses:
    ``onnx_node`` has ``name``, ``op_type``, ``input`` and ``output``."""

    onnx_node: Any

    def get_nodeattr(self, name: str) -> Any: ...

    def set_nodeattr(self, name: str, value: Any) -> None: ...

    def get_exp_cycles(self) -> int: ...

    def get_input_datatype(self, ind: int = 0) -> Any: ...


def base_op(op_type: str) -> str:
    """The FINN layer an HLS/RTL variant specializes (``MVAU_hls`` -> ``MVAU``); other types unchanged."""
    return op_type.rsplit("_", 1)[0] if op_type.endswith(("_hls", "_rtl")) else op_type


def hw_layers(model) -> list[HwLayer]:
    """FINN's custom op of every node of ``model``, in graph order (they read and write the nodes' attributes)."""
    from qonnx.custom_op.registry import getCustomOp

    return [getCustomOp(node) for node in model.graph.node]
