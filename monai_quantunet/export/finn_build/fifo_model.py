"""FIFO depths of a FINN dataflow graph without Vivado: a stream-level model of the folded graph over whole frames.

FINN sizes FIFOs by RTL simulation (``auto_fifo_depths``, Vivado's simulator). Without it every FIFO keeps its
default depth, and a U-Net deadlocks: a skip fork cannot push into a full skip FIFO, the down path starves and the
concat waits for both. This model sizes every FIFO from the graph itself:

* each layer is a :class:`StreamNode`: its input and output streams in *pixels* (spatial positions, raster order)
  of ``words`` stream words each, its cycles per frame (FINN's ``get_exp_cycles``), and for each input the last
  input pixel every output pixel needs (raster-order data dependencies: :func:`elementwise`,
  :func:`sliding_window`, :func:`padding`, :func:`pixel_padding`, :func:`upsample`);
* the graph input delivers ``frames`` frames evenly at the folding's interval (the slowest layer's cycles);
* with unbounded FIFOs, a layer finishes output pixel ``q`` at
  ``out[q] = max(out[q-1], inputs needed by q available) + c`` (``c`` = its cycles per output pixel, at least one
  cycle per word), reads input pixel ``r`` when the first output needing it starts, or up to ``lookahead`` pixels
  earlier (a window generator's line buffer), at most one word per cycle;
* a FIFO's depth is the most words its stream ever holds (written, not yet read). With these depths no layer
  ever waits for space, so every frame completes at the unbounded schedule's interval.

Pixel granularity rounds occupancy up to whole pixels (conservative). :func:`fifo_memory` counts a FIFO's memory
the way Vivado builds it. Nothing here imports FINN: the FINN graph is translated into :class:`StreamNode` by
:func:`.fifos.stream_nodes`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = ["FifoModelError", "FifoPlan", "StreamNode", "StreamReport", "elementwise", "fifo_memory", "padding",
           "pixel_padding", "simulate", "sliding_window", "upsample", "BRAM18_SHAPES", "URAM_SHAPE",
           "VIVADO_MAX_DEPTH"]

VIVADO_MAX_DEPTH = 32768  # axis_data_fifo's largest depth (FINN: split_large_fifos)
BRAM18_SHAPES = ((16384, 1), (8192, 2), (4096, 4), (2048, 9), (1024, 18), (512, 36))  # depth x width of a RAMB18
URAM_SHAPE = (4096, 72)  # URAM288


class FifoModelError(ValueError):
    """The graph cannot complete a frame (a dependency cycle, a FIFO no memory of the part holds, a malformed
    stream); the message names the FIFO or node."""


@dataclass(frozen=True)
class StreamNode:
    """One dataflow layer as the FIFO model sees it.

    ``needs[i][q]``: the last pixel of input ``i`` that output pixel ``q`` needs (-1: none; non-decreasing).
    ``in_pixels[i]``: pixels per frame on input ``i``; ``in_words`` / ``out_words``: words per pixel;
    ``out_bits``: word width of each output stream; ``cycles``: cycles per frame; ``lookahead[i]``: pixels of input
    ``i`` the layer buffers ahead of what its outputs need (0 when omitted); ``in_bits``: input word widths
    (used for a FIFO on a graph input).
    """

    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    needs: tuple[np.ndarray, ...]
    in_pixels: tuple[int, ...]
    in_words: tuple[int, ...]
    out_words: tuple[int, ...]
    out_bits: tuple[int, ...]
    cycles: float
    lookahead: tuple[int, ...] = ()
    in_bits: tuple[int, ...] = ()

    @property
    def out_pixels(self) -> int:
        return len(self.needs[0])


@dataclass
class StreamReport:
    """A stream between ``producer`` (a node or ``None``: the graph input) and ``consumer`` (``None``: output)."""

    name: str
    producer: str | None
    consumer: str | None
    words_per_pixel: int
    bits: int
    pixels_per_frame: int
    max_pixels: int  # most pixels held at once
    depth: int  # FIFO depth in words (>= 2)


@dataclass
class FifoPlan:
    """The model's result: every stream's depth, the interval it was simulated at and the one reached."""

    streams: dict[str, StreamReport]
    interval: float
    achieved_interval: float
    latency: float
    node_order: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"interval_cycles": self.interval, "achieved_interval_cycles": self.achieved_interval,
                "first_frame_latency_cycles": self.latency,
                "streams": {k: vars(v) for k, v in self.streams.items()}}


# ------------------------------------------------------------------------------------ raster-order dependencies
def elementwise(pixels: int) -> np.ndarray:
    """Output pixel ``q`` needs input pixel ``q`` (thresholds, matrix-vector units, forks, concats, converters)."""
    return np.arange(pixels)


def sliding_window(ifm: Sequence[int], ofm: Sequence[int], kernel: Sequence[int], stride: Sequence[int],
                   dilation: Sequence[int] = (1, 1)) -> np.ndarray:
    """A window generator: output window ``(oy, ox)`` needs the input pixel at its bottom-right corner."""
    oy, ox = np.meshgrid(np.arange(ofm[0]), np.arange(ofm[1]), indexing="ij")
    y = oy * stride[0] + (kernel[0] - 1) * dilation[0]
    x = ox * stride[1] + (kernel[1] - 1) * dilation[1]
    if y.max() >= ifm[0] or x.max() >= ifm[1]:
        raise FifoModelError(f"window generator {list(ifm)} -> {list(ofm)} with kernel {list(kernel)}, stride "
                             f"{list(stride)} reads outside its input")
    return (y * ifm[1] + x).ravel()


def padding(img: Sequence[int], pads: Sequence[int]) -> np.ndarray:
    """Zero padding ``pads`` = (top, left, bottom, right): an output pixel needs every input pixel before it."""
    h, w = img
    y, x = np.meshgrid(np.arange(h + pads[0] + pads[2]) - pads[0], np.arange(w + pads[1] + pads[3]) - pads[1],
                       indexing="ij")
    need = np.where(y < 0, -1, np.where(y >= h, h * w - 1, y * w + np.clip(x, -1, w - 1)))
    return need.ravel()


def pixel_padding(img: Sequence[int], stride: Sequence[int]) -> np.ndarray:
    """Zeros between pixels (a transposed conv's input): ``(h-1)*s+1`` rows, input pixels at multiples of ``s``."""
    h, w = img
    y, x = np.meshgrid(np.arange((h - 1) * stride[0] + 1), np.arange((w - 1) * stride[1] + 1), indexing="ij")
    row_done = y % stride[0] != 0  # a zero row after input row y // s: that whole row came before it
    need = np.where(row_done, (y // stride[0]) * w + w - 1, (y // stride[0]) * w + x // stride[1])
    return need.ravel()


def upsample(ifm: Sequence[int], ofm: Sequence[int]) -> np.ndarray:
    """Nearest-neighbour upsampling: output ``(y, x)`` copies input ``(y * HI // HO, x * WI // WO)``."""
    y, x = np.meshgrid(np.arange(ofm[0]) * ifm[0] // ofm[0], np.arange(ofm[1]) * ifm[1] // ofm[1], indexing="ij")
    return (y * ifm[1] + x).ravel()


# ----------------------------------------------------------------------------------------------- simulation
def _rate_limited(earliest: np.ndarray, step: float) -> np.ndarray:
    """``t[k] = max(t[k-1] + step, earliest[k])``, vectorized (one item per ``step``, none before ``earliest``)."""
    k = np.arange(len(earliest)) * step
    return k + np.maximum.accumulate(earliest - k)


def _topological(nodes: Sequence[StreamNode], producer: dict[str, str]) -> list[StreamNode]:
    by_name = {n.name: n for n in nodes}
    waiting = {n.name: {producer[s] for s in n.inputs if s in producer} for n in nodes}
    order = []
    while waiting:
        ready = [name for name, deps in waiting.items() if not deps]
        if not ready:
            cycle = sorted(s for n in waiting for s in by_name[n].inputs if producer.get(s) in waiting)
            raise FifoModelError(f"dependency cycle: FIFO(s) {cycle} wait on each other, no frame can complete")
        for name in ready:
            del waiting[name]
            order.append(by_name[name])
        for deps in waiting.values():
            deps.difference_update(ready)
    return order


def simulate(nodes: Sequence[StreamNode], interval: float | None = None, frames: int | None = None) -> FifoPlan:
    """Run ``frames`` frames through ``nodes`` with unbounded FIFOs; every stream's depth (see module docstring).

    ``interval``: cycles between frames at the graph input (default: the slowest node's cycles, the folding's
    interval). ``frames``: default enough for the steady state: a first frame's latency in intervals plus two
    (a skip FIFO holds data for the whole latency of its down-and-up path, which can exceed a frame).
    Raises :class:`FifoModelError` for a dependency cycle or a malformed stream.
    """
    if frames is None:
        first = simulate(nodes, interval, 1)
        return simulate(nodes, first.interval, math.ceil(first.latency / first.interval) + 2)
    producer, consumer = {}, {}
    for node in nodes:
        if len(node.needs) != len(node.inputs) or len(node.out_words) != len(node.outputs):
            raise FifoModelError(f"node {node.name}: one dependency per input and one width per output expected")
        for s in node.outputs:
            if s in producer:
                raise FifoModelError(f"stream {s} has two producers ({producer[s]}, {node.name})")
            producer[s] = node.name
        for s in node.inputs:
            if s in consumer:
                raise FifoModelError(f"stream {s} feeds both {consumer[s]} and {node.name}: a stream has one "
                                     "consumer (insert a DuplicateStreams fork)")
            consumer[s] = node.name
    order = _topological(nodes, producer)
    interval = float(interval or max(n.cycles for n in nodes))
    written: dict[str, np.ndarray] = {}  # stream -> time each pixel (over all frames) is complete in its FIFO
    read: dict[str, np.ndarray] = {}
    words: dict[str, tuple[int, int, int]] = {}  # stream -> (words per pixel, bits, pixels per frame)
    for node in order:
        q_frame = node.out_pixels
        ready = np.zeros(q_frame * frames)
        in_bits = node.in_bits or (0,) * len(node.inputs)
        for s, need, pixels, w, bits in zip(node.inputs, node.needs, node.in_pixels, node.in_words, in_bits):
            if s not in producer:  # graph input: evenly over the interval
                written[s] = (np.arange(pixels * frames) + 1) * interval / pixels
                words[s] = (w, bits, pixels)
            elif words[s][0] != w or words[s][2] != pixels:
                raise FifoModelError(f"stream {s} into {node.name}: {pixels} pixels of {w} words, but "
                                     f"{producer[s]} writes {words[s][2]} of {words[s][0]} (insert a width converter)")
            full_need = (np.asarray(need)[None] + pixels * np.arange(frames)[:, None]).ravel()
            ready = np.maximum(ready, np.where(full_need >= 0, written[s][np.maximum(full_need, 0)], 0.0))
        c = max(node.cycles / q_frame, max(node.out_words))
        out = _rate_limited(ready + c, c)
        start = out - c
        lookahead = node.lookahead or (0,) * len(node.inputs)
        for s, need, pixels, w, ahead in zip(node.inputs, node.needs, node.in_pixels, node.in_words, lookahead):
            full_need = (np.asarray(need)[None] + pixels * np.arange(frames)[:, None]).ravel()
            # the first output needing each input pixel starts when that pixel is read (lazy), ``ahead`` earlier
            first = np.minimum(np.searchsorted(full_need, np.arange(pixels * frames), "left"), len(start) - 1)
            lazy = start[first]
            if ahead:
                lazy = np.concatenate([np.zeros(min(ahead, len(lazy))), lazy[:-ahead]])
            read[s] = _rate_limited(np.maximum(written[s], lazy), w)
        for k, s in enumerate(node.outputs):
            written[s] = out
            words[s] = (node.out_words[k], node.out_bits[k], q_frame)
    streams = {}
    for s, t_write in written.items():
        t_read = read.get(s, t_write)  # a graph output is read as it is written
        held = np.arange(1, len(t_write) + 1) - np.searchsorted(t_read, t_write, "right")
        w, bits, pixels = words[s]
        streams[s] = StreamReport(s, producer.get(s), consumer.get(s), w, bits, pixels, int(held.max()),
                                  max(2, int(held.max()) * w))
    outputs = [s for s in written if s not in consumer]
    ends = [written[s].reshape(frames, -1)[:, -1] for s in outputs]
    achieved = max(float(e[-1] - e[-2]) for e in ends) if frames > 1 else interval
    return FifoPlan(streams, interval, achieved, max(float(e[0]) for e in ends), [n.name for n in order])


# --------------------------------------------------------------------------------------------------- memory
def fifo_memory(parts: Sequence[tuple[int, str]], bits: int, ram_style: str) -> dict[str, int]:
    """LUT, BRAM_18K and URAM of one FIFO built as ``parts`` ``(depth, impl_style)`` (FINN's ``SplitLargeFIFOs``).

    ``rtl`` parts are FINN's shift-register FIFO (``Q_srl``): ``ceil(depth / 32) * ceil(bits / 2)`` LUTs plus
    ``2 * ceil(log2 depth)`` address LUTs (FINN's formula). ``vivado`` parts are Vivado's ``axis_data_fifo``
    (at most 32,768 deep), whose TDATA is whole bytes: a 4-bit word takes 8 bits. Its memory: ``block`` the fewest
    RAMB18 over their aspect ratios, ``ultra`` URAM288 (4K x 72), ``distributed`` 64 x 1 LUT RAM, ``auto``
    counted as ``block``.
    """
    total = {"LUT": 0, "BRAM_18K": 0, "URAM": 0}
    for depth, impl in parts:
        total["LUT"] += 2 * math.ceil(math.log2(max(depth, 2)))
        if impl == "rtl":
            total["LUT"] += math.ceil(depth / 32) * math.ceil(bits / 2)
            continue
        if depth > VIVADO_MAX_DEPTH:
            raise FifoModelError(f"an axis_data_fifo holds at most {VIVADO_MAX_DEPTH} words, not {depth}")
        width = 8 * math.ceil(bits / 8)
        if ram_style == "ultra":
            total["URAM"] += math.ceil(depth / URAM_SHAPE[0]) * math.ceil(width / URAM_SHAPE[1])
        elif ram_style == "distributed":
            total["LUT"] += math.ceil(depth / 64) * width
        else:
            total["BRAM_18K"] += min(math.ceil(depth / d) * math.ceil(width / w) for d, w in BRAM18_SHAPES)
    return total
