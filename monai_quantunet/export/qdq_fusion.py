"""Rewrite of Brevitas's QCDQ graph into the form onnxruntime fuses into integer kernels (QLinearConv).

Brevitas exports each quantized layer as ``DQ(x) -> Conv(DQ(Clip(W))) -> BatchNormalization -> Relu -> Q -> Clip
-> DQ`` and runs max pooling and concatenation on dequantized float tensors. onnxruntime replaces
``DQ(x), DQ(W), DQ(bias) -> Conv -> Q`` by one QLinearConv (integer products, int32 sums, one requantization)
and drops the Relu before a Q whose zero point is the range minimum; anything else between the DQs and the Q
leaves the conv in float. :func:`fuse_for_integer_kernels` rewrites the graph into that form:

* Identity and Clip of constants (shared initializers, integer weights) become constants (exact);
* DequantizeLinear moves after MaxPool, and after Concat when all inputs share scale and zero point (exact:
  max and concatenation commute with an increasing affine map), so the next conv reads a DQ output;
* BatchNormalization ``a * conv + b`` (per output channel) folds into the conv or transposed conv before it:
  weight scale ``s_w |a| / gain``, integer weights times ``gain`` and negated where ``a < 0`` (narrow-range
  weights: no overflow), an int32 bias with scale ``s_x s_w |a| / gain``. The exact shift ``b`` is rarely a
  whole number of bias steps; :func:`_integer_bias` picks per channel the gain (as far as int8 weights and
  onnxruntime's int16 pair sums allow) and the integer bias with which every reachable integer accumulator
  lands on the same output level as with ``b``. A layer where some channel has none, or where a rounding edge
  lies within float32 rounding of a reachable accumulator (the float graph's own result there is decided by
  rounding noise), is left as exported (float conv).

So the rewritten graph computes the same integer activations as Brevitas's.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import onnx
from onnx import helper, numpy_helper

__all__ = ["fuse_for_integer_kernels"]

# onnxruntime's AVX2 8-bit kernels sum pairs of integer products in int16 (saturating): scaled weights keep
# 2 x max|x| x max|w| within it.
PAIR_SUM_LIMIT = 2**15 - 1
# Relative rounding error allowed for float32 accumulators and requantization (8 units in the last place).
FLOAT_ROUNDING = 2**-21


def fuse_for_integer_kernels(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` (Brevitas QCDQ export) rewritten so onnxruntime runs its convs as QLinearConv (see module doc)."""
    graph = _Graph(model.graph)
    graph.fold_constants()
    graph.dequantize_after("MaxPool")
    graph.dequantize_after("Concat")
    graph.fold_batch_norms()
    out = graph.to_model(model)
    onnx.checker.check_model(out)
    return out


class _Graph:
    """The nodes and constant initializers of an ONNX graph, edited in place; :meth:`to_model` writes it back."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.graph = graph
        self.nodes = list(graph.node)
        self.consts = {i.name: numpy_helper.to_array(i) for i in graph.initializer}

    def producer(self, name: str) -> onnx.NodeProto | None:
        return next((n for n in self.nodes if name in n.output), None)

    def consumers(self, name: str) -> list[onnx.NodeProto]:
        return [n for n in self.nodes if name in n.input]

    def replace(self, old: list[onnx.NodeProto], new: list[onnx.NodeProto]) -> None:
        """Remove the ``old`` nodes, add the ``new`` ones (order is restored by :meth:`to_model`)."""
        self.nodes = [n for n in self.nodes if all(n is not o for o in old)] + new

    def dequantize_input(self, name: str) -> tuple[str, np.ndarray, np.ndarray] | None:
        """For a tensor made by a per-tensor DequantizeLinear: (its integer input, scale, zero point)."""
        node = self.producer(name)
        if node is None or node.op_type != "DequantizeLinear" or not all(i in self.consts for i in node.input[1:3]):
            return None
        scale, zero_point = self.consts[node.input[1]], self.consts[node.input[2]]
        return (node.input[0], scale, zero_point) if scale.ndim == 0 and zero_point.ndim == 0 else None

    def integer_bound(self, name: str, dtype: np.dtype) -> int:
        """Largest ``|value|`` of the integer tensor ``name`` of type ``dtype``: the bounds of the constant Clip
        that makes it (through MaxPool and Concat), else the type's."""
        node = self.producer(name)
        if node is not None and node.op_type in ("MaxPool", "Concat"):
            return max(self.integer_bound(i, dtype) for i in node.input)
        if node is not None and node.op_type == "Clip" and all(i in self.consts for i in node.input[1:3]):
            return int(max(abs(int(self.consts[i])) for i in node.input[1:3]))
        return max(-int(np.iinfo(dtype).min), int(np.iinfo(dtype).max))

    def fold_constants(self) -> None:
        """Identity and Clip nodes of constants (shared initializers, Brevitas's weight clipping) become constants."""
        for node in [n for n in self.nodes if n.op_type in ("Identity", "Clip")]:
            if all(i in self.consts for i in node.input):
                x, *bounds = (self.consts[i] for i in node.input)
                self.consts[node.output[0]] = np.clip(x, *bounds).astype(x.dtype) if bounds else x
                self.replace([node], [])

    def dequantize_after(self, op_type: str) -> None:
        """``op(DQ(q_1), ..., DQ(q_n))`` -> ``DQ(op(q_1, ..., q_n))`` where all DQs share a positive scale and zero
        point, so the op runs on the integer tensors."""
        for node in [n for n in self.nodes if n.op_type == op_type]:
            inputs = [self.dequantize_input(i) for i in node.input]
            if any(i is None for i in inputs):
                continue
            (_, scale, zero_point), *rest = inputs
            if scale <= 0 or any(s != scale or z != zero_point for _, s, z in rest):
                continue
            out = node.output[0]
            integer_op = helper.make_node(op_type, [q for q, _, _ in inputs], [out + "_int"], name=node.name + "_int")
            integer_op.attribute.extend(node.attribute)
            dq_input = self.producer(node.input[0]).input
            dequantize = helper.make_node("DequantizeLinear", [out + "_int", dq_input[1], dq_input[2]], [out],
                                          name=node.name + "_dequantize")
            self.replace([node], [integer_op, dequantize])

    def output_levels(self, name: str) -> tuple[float, np.ndarray] | None:
        """For a float tensor quantized by ``[Relu ->] QuantizeLinear [-> Clip]``: the quantizer's scale and the
        boundaries between its reachable output levels, in units of that scale (``q >= k + 1`` iff
        ``x / scale >= k + 0.5 - zero_point``), shape ``(levels - 1,)``."""
        consumers = self.consumers(name)
        if len(consumers) == 1 and consumers[0].op_type == "Relu":
            relu = consumers[0]
            consumers = self.consumers(relu.output[0])
        else:
            relu = None
        if len(consumers) != 1 or consumers[0].op_type != "QuantizeLinear":
            return None
        quantize = consumers[0]
        if not all(i in self.consts for i in quantize.input[1:3]) or self.consts[quantize.input[1]].ndim != 0:
            return None
        scale, zero_point = self.consts[quantize.input[1]], self.consts[quantize.input[2]]
        lo, hi = np.iinfo(zero_point.dtype).min, np.iinfo(zero_point.dtype).max
        clips = self.consumers(quantize.output[0])
        if len(clips) == 1 and clips[0].op_type == "Clip" and all(i in self.consts for i in clips[0].input[1:3]):
            lo, hi = max(lo, int(self.consts[clips[0].input[1]])), min(hi, int(self.consts[clips[0].input[2]]))
        if relu is not None:
            lo = max(lo, int(zero_point))  # levels below the zero point are negative: the Relu keeps them out
        return float(scale), np.arange(lo, hi) + 0.5 - float(zero_point)

    def fold_batch_norms(self) -> None:
        """``BN(Conv(DQ(x), DQ(W)))`` -> ``Conv(DQ(x), DQ(W'), DQ(bias))`` for bias-free convs and transposed convs
        (groups 1) with per-tensor input and per-output-channel (or per-tensor) weight quantization, zero points 0."""
        for bn in [n for n in self.nodes if n.op_type == "BatchNormalization"]:
            conv = self.producer(bn.input[0])
            if conv is None or conv.op_type not in ("Conv", "ConvTranspose") or len(conv.input) != 2:
                continue
            if len(self.consumers(conv.output[0])) != 1 or _attribute(conv, "group", 1) != 1:
                continue
            x = self.dequantize_input(conv.input[0])
            weight_dq = self.producer(conv.input[1])
            if x is None or weight_dq is None or weight_dq.op_type != "DequantizeLinear":
                continue
            if not all(i in self.consts for i in weight_dq.input):
                continue
            x_int, x_scale, x_zero_point = x
            weight, weight_scale, weight_zero_point = (self.consts[i] for i in weight_dq.input[:3])
            channel_axis = 0 if conv.op_type == "Conv" else 1
            if weight_scale.ndim == 1 and _attribute(weight_dq, "axis", 1) != channel_axis:
                continue
            gamma, beta, mean, var = (self.consts[i].astype(np.float64) for i in bn.input[1:5])
            a = gamma / np.sqrt(var + _attribute(bn, "epsilon", 1e-5))
            if np.any(a == 0) or np.any(weight_zero_point != 0) or x_zero_point != 0:
                continue
            channels = weight.shape[channel_axis]
            unit = x_scale * np.broadcast_to(weight_scale, (channels,)) * np.abs(a)  # value of one accumulator unit
            offset = (beta - mean * a) / unit  # the BatchNorm shift, in accumulator units
            # gain: the weights may grow up to the int16 pair-sum and the int8 limit
            x_bound = self.integer_bound(x_int, x_zero_point.dtype)
            weight_limit = min(np.iinfo(weight.dtype).max, PAIR_SUM_LIMIT // (2 * x_bound))
            other_axes = tuple(d for d in range(weight.ndim) if d != channel_axis)
            weight_max = np.abs(weight.astype(np.int64)).max(axis=other_axes)
            max_gain = np.maximum(1, weight_limit // np.maximum(1, weight_max))
            reach = x_bound * np.abs(weight.astype(np.int64)).sum(axis=other_axes)  # largest |accumulator|
            levels = self.output_levels(bn.output[0])
            if levels is None or levels[1].min() <= 0:
                continue  # not requantized, or into levels below the zero point (not this network's case)
            y_scale, thresholds = levels
            gain, bias, exact = _integer_bias(offset, y_scale / unit, thresholds, max_gain, reach)
            if not exact.all():
                continue  # no integer bias reproduces some channel's output levels: the layer stays in float
            if np.abs(bias).max() > np.iinfo(np.int32).max:
                raise ValueError(f"{conv.name}: folded BatchNorm bias overflows int32")
            if np.any(weight_max * gain > np.iinfo(weight.dtype).max):
                raise ValueError(f"{conv.name}: weights are not narrow-range, cannot negate them to fold BatchNorm")

            shape = [channels if d == channel_axis else 1 for d in range(weight.ndim)]
            new_weight_scale = (unit / (x_scale * gain)).astype(np.float32)
            prefix = conv.output[0]
            self.consts.update({
                prefix + "_weight": (weight * np.where(a < 0, -gain, gain).reshape(shape)).astype(weight.dtype),
                prefix + "_weight_scale": new_weight_scale,
                prefix + "_weight_zero_point": np.zeros(channels, weight.dtype),
                prefix + "_bias": bias.astype(np.int32),
                prefix + "_bias_scale": (x_scale * new_weight_scale).astype(np.float32),
                prefix + "_bias_zero_point": np.zeros(channels, np.int32),
            })
            dequantize_weight = helper.make_node(
                "DequantizeLinear", [prefix + "_weight", prefix + "_weight_scale", prefix + "_weight_zero_point"],
                [prefix + "_weight_dequantized"], name=conv.name + "_weight_dequantize", axis=channel_axis)
            dequantize_bias = helper.make_node(
                "DequantizeLinear", [prefix + "_bias", prefix + "_bias_scale", prefix + "_bias_zero_point"],
                [prefix + "_bias_dequantized"], name=conv.name + "_bias_dequantize", axis=0)
            folded = helper.make_node(conv.op_type, [conv.input[0], prefix + "_weight_dequantized",
                                                     prefix + "_bias_dequantized"], [bn.output[0]], name=conv.name)
            folded.attribute.extend(conv.attribute)
            self.replace([conv, bn], [dequantize_weight, dequantize_bias, folded])

    def to_model(self, model: onnx.ModelProto) -> onnx.ModelProto:
        """A copy of ``model`` with this graph: unused nodes and constants dropped, nodes in topological order."""
        needed = {o.name for o in self.graph.output}
        kept = []
        for node in reversed(_topological(self.nodes, {i.name for i in self.graph.input} | set(self.consts))):
            if needed & set(node.output):
                kept.append(node)
                needed |= set(node.input)
        graph = helper.make_graph(
            kept[::-1], self.graph.name, list(self.graph.input), list(self.graph.output),
            [numpy_helper.from_array(v, k) for k, v in self.consts.items() if k in needed])
        out = onnx.ModelProto()
        out.CopyFrom(model)
        out.graph.CopyFrom(graph)
        return out


def _attribute(node: onnx.NodeProto, name: str, default):
    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def _integer_bias(offset: np.ndarray, step: np.ndarray, thresholds: np.ndarray, max_gain: np.ndarray,
                  reach: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per output channel, a weight gain and an integer bias with which every integer accumulator requantizes to the
    output level it reaches with the exact bias.

    ``offset`` (the exact bias) and ``step`` (one output quantization step), both in accumulator units,
    ``max_gain`` (>= 1) and ``reach`` (the largest ``|accumulator|`` the inputs can make): ``(C,)``;
    ``thresholds``: the boundaries between output levels, in steps, ``(K,)``. An integer accumulator ``acc``
    passes boundary ``t`` iff ``acc >= u = t * step - offset``; with weights times ``gain`` and bias ``B`` iff
    ``acc >= t * step - B / gain``. The two agree for every ``acc`` iff ``B / gain`` lies in
    ``[offset - min(1 - f), offset + min f)``, ``f = u mod 1``, minima over the boundaries within reach.
    Returns ``(gain, B, exact)``: over gains ``1..max_gain`` the ``B / gain`` deepest inside that interval;
    ``exact`` where it lies deeper than float32 rounding and no ``u`` within reach is within float32 rounding of
    an integer (there the float graph itself rounds either way).
    """
    u = thresholds[None, :] * step[:, None] - offset[:, None]  # (C, K)
    within = np.abs(u) <= reach[:, None] + 1
    f = np.where(within, np.mod(u, 1.0), 0.5)  # 0.5: no constraint
    low, high = offset - (1 - f).min(axis=1), offset + f.min(axis=1)
    gains = np.arange(1, max_gain.max() + 1)[None, :]  # (1, G)
    bias = np.round(gains * (low + high)[:, None] / 2)  # (C, G)
    margin = np.minimum(bias / gains - low[:, None], high[:, None] - bias / gains)
    margin[gains > max_gain[:, None]] = -np.inf
    best = margin.argmax(axis=1)
    gain, bias = gains[0, best], bias[np.arange(len(offset)), best]
    rounding = FLOAT_ROUNDING * (np.abs(u) + np.abs(offset)[:, None])  # (C, K), accumulator units
    boundary = u + (offset - bias / gain)[:, None]  # the boundaries with the integer bias
    depth = np.minimum(boundary - np.ceil(u) + 1, np.ceil(u) - boundary)
    exact = np.all(~within | (depth > rounding) & (np.minimum(f, 1 - f) > rounding), axis=1)
    return gain, bias, exact


def _topological(nodes: list[onnx.NodeProto], available: set[str]) -> list[onnx.NodeProto]:
    """``nodes`` ordered so every node follows the producers of its inputs (``available``: graph inputs, constants)."""
    available = available | {""}  # an omitted optional input
    waiting = defaultdict(list)
    for node in nodes:
        for i in set(node.input) - available:
            waiting[i].append(node)
    missing = {id(n): len(set(n.input) - available) for n in nodes}
    ready = [n for n in nodes if missing[id(n)] == 0]
    order = []
    while ready:
        node = ready.pop(0)
        order.append(node)
        for o in node.output:
            for consumer in waiting.pop(o, []):
                missing[id(consumer)] -= 1
                if missing[id(consumer)] == 0:
                    ready.append(consumer)
    if len(order) != len(nodes):
        raise ValueError("graph has a cycle or an input that nothing produces")
    return order
