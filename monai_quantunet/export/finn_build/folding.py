"""The folding optimiser: PE/SIMD of every hardware layer for a target of cycles per frame, within a budget.

Pure Python over :class:`~.layers.HwLayer` objects (FINN's custom ops of a specialized graph, from
:func:`~.layers.hw_layers`, or small fakes in the tests): nothing here imports FINN. FINN's rules, checked with FINN
dev's own code: MVAU ``SIMD | MW``, ``PE | MH`` and (HLS) ``SIMD >= MW / 1024``; a pool's ``PE`` equals the ``SIMD``
of the window generator feeding it; concat ``SIMD`` divides every input's channels; padding, window generator,
threshold and fork widths divide their channels.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from .errors import UNetBuildError
from .layers import HwLayer, base_op
from .targets import MAX_UTILIZATION, over, resource_budget

__all__ = ["SCAN_FACTOR", "FoldingUnit", "check_folding", "fold_for_target", "folding_units"]

SCAN_FACTOR = 1.5  # step of the search for the fastest folding within budget (cycles per frame)

Option = list[tuple[HwLayer, str, int]]  # (layer, attribute, value) set together


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _producers(layers: Sequence[HwLayer]) -> dict[str, HwLayer]:
    """Tensor name -> the layer writing it."""
    return {t: layer for layer in layers for t in layer.onnx_node.output}


def _byte_widths(parallelism: list[int], bits: int) -> list[int]:
    """The ``parallelism`` options whose stream (``p * bits`` wide) fills whole bytes, if any: a skip connection's
    deep FIFO is an ``axis_data_fifo``, which pads every word to whole bytes (4-bit words would double its BRAM)."""
    return [p for p in parallelism if p * bits % 8 == 0] or parallelism


class FoldingUnit:
    """Layers folded together (a pool with its window generator, else one layer) and the parallelism settings
    they admit, cheapest first."""

    def __init__(self, layers: list[HwLayer], options: list[Option]) -> None:
        self.layers = layers
        self.options = options

    @property
    def name(self) -> str:
        """The unit's last layer (a pool rather than its window generator)."""
        return self.layers[-1].onnx_node.name

    def apply(self, option: Option) -> None:
        for layer, attr, value in option:
            layer.set_nodeattr(attr, int(value))

    def cycles(self) -> int:
        return max(int(layer.get_exp_cycles()) for layer in self.layers)

    def serial_cycles(self) -> int:
        self.apply(self.options[0])
        return self.cycles()

    def fastest_cycles(self) -> int:
        self.apply(self.options[-1])
        return self.cycles()

    def fold(self, target_cycles: float) -> bool:
        """Apply the cheapest option within ``target_cycles``, else the fastest; return whether it fits."""
        for option in self.options:
            self.apply(option)
            if self.cycles() <= target_cycles:
                return True
        return False


def _options(layer: HwLayer) -> list[Option]:
    """The parallelism settings one layer (not a pool or its window generator) admits under FINN's rules."""
    node, attr = layer.onnx_node, layer.get_nodeattr
    op = base_op(node.op_type)
    if op == "MVAU":
        mw, mh = attr("MW"), attr("MH")
        min_simd = math.ceil(mw / 1024) if node.op_type.endswith("_hls") else 1
        pairs = sorted(((s, p) for s in _divisors(mw) if s >= min_simd for p in _divisors(mh)),
                       key=lambda sp: (sp[0] * sp[1], sp[1]))
        return [[(layer, "SIMD", s), (layer, "PE", p)] for s, p in pairs]
    if op == "Thresholding":
        return [[(layer, "PE", p)] for p in _divisors(attr("NumChannels"))]
    if op == "DuplicateStreams":
        bits = layer.get_input_datatype().bitwidth()
        return [[(layer, "PE", p)] for p in _byte_widths(_divisors(attr("NumChannels")), bits)]
    if op in ("FMPadding", "FMPadding_Pixel"):
        return [[(layer, "SIMD", s)] for s in _divisors(attr("NumChannels"))]
    if op == "ConvolutionInputGenerator":
        return [[(layer, "SIMD", s)] for s in _divisors(attr("IFMChannels"))]
    if op == "StreamingConcat":
        bits = layer.get_input_datatype().bitwidth()
        return [[(layer, "SIMD", s)] for s in _byte_widths(_divisors(math.gcd(*attr("ChannelsPerStream"))), bits)]
    raise UNetBuildError(f"no folding rule for {node.op_type} (node {node.name})")


def folding_units(layers: Sequence[HwLayer]) -> list[FoldingUnit]:
    """One :class:`FoldingUnit` per hardware layer (a pool together with its window generator), pools first.
    Skip forks and concats only take parallelism whose streams fill whole bytes (:func:`_byte_widths`)."""
    producers = _producers(layers)
    units, paired = [], set()
    for pool in layers:
        node = pool.onnx_node
        if base_op(node.op_type) != "Pool":
            continue
        swg = producers.get(node.input[0])
        if swg is None or base_op(swg.onnx_node.op_type) != "ConvolutionInputGenerator":
            raise UNetBuildError(f"pool {node.name} is not fed by a window generator")
        paired.add(swg.onnx_node.name)
        units.append(FoldingUnit([swg, pool], [[(swg, "SIMD", p), (pool, "PE", p)]
                                               for p in _divisors(pool.get_nodeattr("Channels"))]))
    units += [FoldingUnit([layer], _options(layer)) for layer in layers
              if base_op(layer.onnx_node.op_type) != "Pool" and layer.onnx_node.name not in paired]
    return units


def fold_for_target(layers: Sequence[HwLayer], target_cycles: float, part: str, design: Callable[[], dict],
                    max_utilization: float = MAX_UTILIZATION) -> dict:
    """Fold ``layers`` (in place) for ``target_cycles`` per frame within ``max_utilization`` of ``part``.

    ``design()``: the resources of the whole design the current folding gives (groups of resources per source, with
    ``"total"``), which the budget applies to. Raises :class:`UNetBuildError` if no folding reaches the target or
    none between it and the serial design fits. Where the target fits only over budget, the fastest folding found
    within budget is kept (to 1%). Returns a report.
    """
    units = folding_units(layers)
    budget = resource_budget(part, max_utilization)

    def fold(cycles: float) -> tuple[bool, dict]:
        met = all([unit.fold(cycles) for unit in units])
        return met, design()

    def fits(total: dict) -> bool:
        return not over(total, budget)

    floor_cycles, floor_node = max((unit.fastest_cycles(), unit.name) for unit in units)
    if floor_cycles > target_cycles:
        raise UNetBuildError(f"target of {target_cycles:.0f} cycles per frame cannot be reached: {floor_node} needs "
                             f"at least {floor_cycles} cycles at full parallelism")
    chosen = target_cycles
    met, resources = fold(chosen)
    if not fits(resources["total"]):
        # the fastest folding within budget. FIFO memory does not shrink steadily with slower foldings (a slower
        # layer deepens the skip FIFOs around it), so scan slower targets in steps of SCAN_FACTOR up to the serial
        # design, then bisect between the last that failed and the first that fits
        serial_cycles = float(max(unit.serial_cycles() for unit in units))
        low, chosen, total = target_cycles, None, resources["total"]
        while chosen is None and low < serial_cycles:
            cycles = min(low * SCAN_FACTOR, serial_cycles)
            total = fold(cycles)[1]["total"]
            if fits(total):
                chosen = cycles
            else:
                low = cycles
        if chosen is None:  # the last design tried is the serial one
            raise UNetBuildError(f"no folding fits {max_utilization:.0%} of {part} (budget {budget}); the serial "
                                 f"design needs {total}")
        while chosen > 1.01 * low:
            mid = math.sqrt(low * chosen)
            if fits(fold(mid)[1]["total"]):
                chosen = mid
            else:
                low = mid
        met, resources = fold(chosen)
    return {
        "target_cycles": target_cycles,
        "target_met": bool(met and chosen == target_cycles),
        "fastest_cycles": floor_cycles,  # the slowest layer at full parallelism: the fastest reachable design
        "fastest_cycles_node": floor_node,
        "folded_for_cycles": chosen,
        "resources": resources["total"],
        "resources_by_source": resources,
        "budget": budget,
        "max_utilization": max_utilization,
        "part": part,
    }


def check_folding(layers: Sequence[HwLayer]) -> None:
    """Raise :class:`UNetBuildError` naming the layer where a folding breaks one of FINN's rules."""
    producers = _producers(layers)
    for layer in layers:
        node, attr = layer.onnx_node, layer.get_nodeattr
        op = base_op(node.op_type)
        broken = None
        if op == "MVAU":
            if attr("MW") % attr("SIMD") or attr("MH") % attr("PE"):
                broken = f"SIMD {attr('SIMD')} must divide MW {attr('MW')} and PE {attr('PE')} divide MH {attr('MH')}"
            elif node.op_type.endswith("_hls") and attr("SIMD") < attr("MW") / 1024:
                broken = f"SIMD {attr('SIMD')} < MW / 1024 = {attr('MW') / 1024:g}"
        elif op == "Pool":
            swg = producers[node.input[0]]
            if attr("PE") != swg.get_nodeattr("SIMD") or attr("Channels") % attr("PE"):
                broken = f"PE {attr('PE')} must equal its window generator's SIMD {swg.get_nodeattr('SIMD')}"
        elif op == "StreamingConcat":
            if any(c % attr("SIMD") for c in attr("ChannelsPerStream")):
                broken = f"SIMD {attr('SIMD')} must divide every input's channels {list(attr('ChannelsPerStream'))}"
        elif op in ("Thresholding", "DuplicateStreams") and attr("NumChannels") % attr("PE"):
            broken = f"PE {attr('PE')} must divide {attr('NumChannels')} channels"
        elif op in ("FMPadding", "FMPadding_Pixel") and attr("NumChannels") % attr("SIMD"):
            broken = f"SIMD {attr('SIMD')} must divide {attr('NumChannels')} channels"
        elif op == "ConvolutionInputGenerator" and attr("IFMChannels") % attr("SIMD"):
            broken = f"SIMD {attr('SIMD')} must divide {attr('IFMChannels')} channels"
        if broken:
            raise UNetBuildError(f"folding of {node.name}: {broken}")
