"""The host tail: the end of the network (NHWC->NCHW transpose, logits scale and bias) the host computes after
the accelerator; found in the graph, recorded in ``host_tail.json`` and applied to the accelerator's outputs."""

from __future__ import annotations

import numpy as np

__all__ = ["HOST_TAIL_OPS", "apply_host_tail", "host_ops", "tail_input"]

HOST_TAIL_OPS = ("Transpose", "Mul", "Add")


def tail_input(model) -> str:
    """The tensor entering the host tail (``HOST_TAIL_OPS`` at the output): the accelerator's output."""
    name = model.graph.output[0].name
    node = model.find_producer(name)
    while node is not None and node.op_type in HOST_TAIL_OPS:
        name = next(t for t in node.input if model.get_initializer(t) is None)
        node = model.find_producer(name)
    return name


def host_ops(parent) -> list[dict]:
    """The host tail of ``dataflow_parent.onnx``: each op with its permutation or constant (values, ONNX shape)."""
    ops = []
    for node in parent.graph.node:
        if node.op_type == "StreamingDataflowPartition":
            continue
        op = {"op": node.op_type, "name": node.name}
        if node.op_type == "Transpose":
            op["perm"] = list(node.attribute[0].ints)
        else:
            const = next(parent.get_initializer(t) for t in node.input if parent.get_initializer(t) is not None)
            op["value"], op["shape"] = np.asarray(const).ravel().tolist(), list(np.shape(const))
        ops.append(op)
    return ops


def apply_host_tail(y: np.ndarray, ops: list[dict]) -> np.ndarray:
    """The host's part of the network (``host_tail.json``'s ``host_ops``) on accelerator outputs ``y``, float32."""
    y = np.asarray(y, dtype=np.float32)
    for op in ops:
        if op["op"] == "Transpose":
            y = y.transpose(op["perm"])
        else:
            value = np.asarray(op["value"], dtype=np.float32).reshape(op["shape"])  # broadcast as in ONNX
            y = y * value if op["op"] == "Mul" else y + value
    return y
