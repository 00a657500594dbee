"""FIFO sizing inside FINN: the FIFO model (:mod:`.fifo_model`) applied to a specialized FINN graph, FINN's width
converters and FIFOs inserted at the modelled depths, and the resources of the whole design they give.

Imports qonnx (``Transformation``) at the top and FINN only inside its functions.
"""

from __future__ import annotations

import numpy as np
from qonnx.transformation.base import Transformation

from .errors import UNetBuildError
from .fifo_model import FifoModelError, FifoPlan, StreamNode, elementwise, fifo_memory, padding, pixel_padding, \
    simulate, sliding_window, upsample
from .layers import base_op
from .targets import RESOURCES, part_resources

__all__ = ["MAX_QSRL_DEPTH", "InsertModelledFIFOs", "design_resources", "fifo_parts", "fifo_settings", "full_design",
           "plan_memory", "stream_nodes"]

MAX_QSRL_DEPTH = 256  # deeper FIFOs become Vivado's axis_data_fifo (FINN's default)


def fifo_settings(cfg) -> tuple[str, bool]:
    """``large_fifo_mem_style`` (its value) and whether FINN's rtlsim sizes the FIFOs (``auto_fifo_depths``)."""
    style = cfg.large_fifo_mem_style
    return getattr(style, "value", style), bool(cfg.auto_fifo_depths)


def stream_nodes(model) -> list[StreamNode]:
    """The FIFO model's view of a specialized FINN graph: each layer's streams (pixels, words per pixel, word
    width), FINN's cycle estimate and its raster-order data dependencies; :class:`UNetBuildError` for a layer
    whose dependencies the model does not know."""
    from qonnx.custom_op.registry import getCustomOp

    def pixels_words(normal, folded) -> tuple[int, int]:
        pixels = int(np.prod(normal[1:-1]))
        return pixels, int(np.prod(folded[:-1])) // pixels

    nodes = []
    for node in model.graph.node:
        inst, op = getCustomOp(node), base_op(node.op_type)
        attr = inst.get_nodeattr
        streams = [i for i, t in enumerate(node.input) if model.get_initializer(t) is None]
        ins = [pixels_words(inst.get_normal_input_shape(i), inst.get_folded_input_shape(i)) for i in streams]
        outs = [pixels_words(inst.get_normal_output_shape(o), inst.get_folded_output_shape(o))
                for o in range(len(node.output))]
        lookahead = 0
        if op == "ConvolutionInputGenerator":
            need = sliding_window(attr("IFMDim"), attr("OFMDim"), attr("ConvKernelDim"), attr("Stride"),
                                  attr("Dilation"))
            lookahead = int(need[0]) + 1  # its line buffer holds the first window's span
        elif op == "FMPadding":
            need = padding(attr("ImgDim"), attr("Padding"))
        elif op == "FMPadding_Pixel":
            need = pixel_padding(attr("ImgDim"), attr("Stride"))
        elif op == "UpsampleNearestNeighbour":
            need = upsample((attr("HI"), attr("WI")), (attr("HO"), attr("WO")))
            lookahead = attr("WI")  # one input row, written HO / HI times
        elif all(p == outs[0][0] for p, _ in ins):
            need = elementwise(outs[0][0])
        else:
            raise UNetBuildError(f"the FIFO model has no data-dependency rule for {node.op_type} (node {node.name})")
        nodes.append(StreamNode(
            node.name, tuple(node.input[i] for i in streams), tuple(node.output), (need,) * len(streams),
            tuple(p for p, _ in ins), tuple(w for _, w in ins), tuple(w for _, w in outs),
            tuple(inst.get_outstream_width(o) for o in range(len(node.output))), float(inst.get_exp_cycles()),
            (lookahead,) * len(streams), tuple(inst.get_instream_width(i) for i in streams)))
    return nodes


def fifo_parts(depth: int, split_large_fifos: bool) -> list[tuple[int, str]]:
    """How FINN builds a FIFO of ``depth`` words: ``(depth, impl_style)`` parts (``SplitLargeFIFOs``)."""
    if split_large_fifos:
        from finn.transformation.fpgadataflow.set_fifo_depths import get_fifo_split_configs

        return get_fifo_split_configs(depth, MAX_QSRL_DEPTH)
    return [(depth, "rtl" if depth <= MAX_QSRL_DEPTH else "vivado")]


def plan_memory(plan: FifoPlan, part: str, ram_style: str, split_large_fifos: bool) -> dict[str, dict]:
    """Each FIFO's LUT/BRAM_18K/URAM as Vivado builds it; :class:`FifoModelError` naming a FIFO no memory of
    ``part`` holds (or one over an ``axis_data_fifo``'s depth without ``split_large_fifos``)."""
    available = part_resources(part)
    memory = {}
    for s in plan.streams.values():
        where = f"FIFO {s.name} ({s.producer or 'input'} -> {s.consumer or 'output'}, {s.depth} x {s.bits} bits)"
        try:
            memory[s.name] = fifo_memory(fifo_parts(s.depth, split_large_fifos), s.bits, ram_style)
        except FifoModelError as e:
            raise FifoModelError(f"{where}: {e}; set split_large_fifos") from None
        over = [r for r, v in memory[s.name].items() if v > available[r]]
        if over:
            raise FifoModelError(f"{where} needs {memory[s.name]}, more {'/'.join(over)} than {part} has "
                                 f"({ {r: available[r] for r in over} }): no frame can complete")
    return memory


class InsertModelledFIFOs(Transformation):
    """FINN's ``InsertDWC``, then FIFOs of the depths :func:`fifo_model.simulate` finds: FINN's ``InsertFIFO`` from
    the layers' ``inFIFODepths``/``outFIFODepths`` (``impl_style`` rtl up to ``MAX_QSRL_DEPTH``, else vivado with
    ``ram_style``), then ``SplitLargeFIFOs`` and ``RemoveShallowFIFOs`` as FINN's ``step_set_fifo_depths`` does.

    ``insert_fifos=False`` only sizes them, leaving the FIFOs to FINN's rtlsim sizing (``auto_fifo_depths``).
    After ``model.transform``, ``plan`` and ``memory`` hold the model's depths and each FIFO's memory.
    """

    def __init__(self, part: str, ram_style: str, split_large_fifos: bool = True, insert_fifos: bool = True):
        super().__init__()
        self.part, self.ram_style = part, ram_style
        self.split_large_fifos, self.insert_fifos = split_large_fifos, insert_fifos
        self.plan: FifoPlan | None = None
        self.memory: dict[str, dict] = {}

    def apply(self, model):
        from finn.transformation.fpgadataflow.insert_dwc import InsertDWC
        from finn.transformation.fpgadataflow.insert_fifo import InsertFIFO
        from finn.transformation.fpgadataflow.set_fifo_depths import RemoveShallowFIFOs, SplitLargeFIFOs
        from finn.transformation.fpgadataflow.specialize_layers import SpecializeLayers
        from qonnx.custom_op.registry import getCustomOp
        from qonnx.transformation.general import GiveUniqueNodeNames

        model = model.transform(InsertDWC())
        model = model.transform(SpecializeLayers(self.part))
        model = model.transform(GiveUniqueNodeNames())
        self.plan = simulate(stream_nodes(model))
        self.memory = plan_memory(self.plan, self.part, self.ram_style, self.split_large_fifos)
        if not self.insert_fifos:
            return model, False
        for s in self.plan.streams.values():
            for name, attr, tensors in ((s.producer, "outFIFODepths", "output"), (s.consumer, "inFIFODepths", "input")):
                if name is None:
                    continue
                inst = getCustomOp(model.get_node_from_name(name))
                names = list(getattr(inst.onnx_node, tensors))
                depths = (list(inst.get_nodeattr(attr)) + [2] * len(names))[: len(names)]
                depths[names.index(s.name)] = s.depth
                inst.set_nodeattr(attr, depths)
        model = model.transform(InsertFIFO(create_shallow_fifos=True, max_qsrl_depth=MAX_QSRL_DEPTH,
                                           vivado_ram_style=self.ram_style))
        model = model.transform(SpecializeLayers(self.part))
        model = model.transform(GiveUniqueNodeNames())  # SplitLargeFIFOs names its parts after the FIFO
        if self.split_large_fifos:
            model = model.transform(SplitLargeFIFOs(max_qsrl_depth=MAX_QSRL_DEPTH))
        return model.transform(RemoveShallowFIFOs()), False


def design_resources(model, part: str, memory: dict[str, dict]) -> dict[str, dict[str, float]]:
    """Resources of the whole design: FINN's estimates of every layer and width converter of ``model`` (FIFO
    nodes left out: FINN 73ba5ed's ``StreamingFIFO`` estimator compares a boolean with strings), plus the FIFOs'
    ``memory`` (:func:`plan_memory`). Returns ``{"total", "layers", "dwcs", "fifos"}``, each per resource."""
    from finn.analysis.fpgadataflow.res_estimation import res_estimation

    per_node = model.analysis(lambda m: res_estimation(m, part))
    types = {n.name: base_op(n.op_type) for n in model.graph.node}
    groups = {"layers": dict.fromkeys(RESOURCES, 0.0), "dwcs": dict.fromkeys(RESOURCES, 0.0),
              "fifos": dict.fromkeys(RESOURCES, 0.0)}
    for name, est in per_node.items():
        group = {"StreamingFIFO": None, "StreamingDataWidthConverter": "dwcs"}.get(types[name], "layers")
        for r in RESOURCES if group else ():
            groups[group][r] += float(est.get(r, 0))
    for mem in memory.values():
        for r, v in mem.items():
            groups["fifos"][r] += v
    groups["total"] = {r: sum(g[r] for g in groups.values()) for r in RESOURCES}
    return groups


def full_design(model, part: str, ram_style: str, split_large_fifos: bool, insert_fifos: bool = True):
    """``model`` (copied) with width converters and modelled FIFOs, the FIFO plan, each FIFO's memory and the
    design's resources (:func:`design_resources`)."""
    t = InsertModelledFIFOs(part, ram_style, split_large_fifos, insert_fifos)
    design = model.transform(t)
    return design, t.plan, t.memory, design_resources(design, part, t.memory)

