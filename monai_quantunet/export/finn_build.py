"""FINN build of the exported QuantU-Net (copied into the FINN build folder as ``build.py``).

    python build.py                                # every step (needs Vivado from step_hw_ipgen on)
    python build.py --steps-until step_hw_codegen  # no Vivado: folding, verification, estimates, HLS/RTL code

Checked with FINN ``dev`` 73ba5ed and qonnx f5c9819. FINN's stock ``step_streamline`` /
``step_convert_to_hw`` leave a U-Net's max-pools, concatenations, transposed convs and skip forks off the
hardware, and ``step_target_fps_parallelization`` crashes on ``StreamingConcat``; the custom steps below

* check the QONNX model first (activations <= 8 bits, both inputs of every concat from one quantizer);
* move every scale past fork, max-pool, up-conv and concat on the NCHW graph, then go channels-last;
* convert exactly the layers the U-Net has, leaving the output tail (NHWC->NCHW transpose, logits scale and
  bias) on the host, and fail naming any other node that did not become a hardware layer;
* fold for ``target_fps`` at ``synth_clk_period_ns`` within ``MAX_UTILIZATION`` of the part's LUT, BRAM18,
  URAM and DSP for the whole design: layers and width converters by FINN's estimates, FIFOs sized by the FIFO
  model as Vivado builds them (or apply and check a ``folding_config_file``);
* execute the folded graph (FINN's Python execution; with HLS headers also FINN's cppsim of its HLS layers on the
  first ``unet_cppsim_slices`` slices) on the verification slices: its integer output must equal the streamlined
  graph's exactly;
* size every FIFO with the FIFO model (``finn_fifo.py``) and insert them with FINN's transforms.

The outcome is written to ``<output_dir>/build_status.json`` (``"ok"`` or ``"failed"`` with the step and
the reason). ``python build.py --execute IN.npy OUT.npy`` runs the built accelerator graph (FINN's Python
execution) on NHWC slices instead, as ``host.py --finn-python`` does. This file imports FINN only inside functions
(qonnx, ``finn_fifo.py`` and ``host.py``, its neighbours in the folder, at the top), so it imports without FINN.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

import numpy as np
from qonnx.transformation.base import Transformation

try:
    from .finn_fifo import FifoModelError, FifoPlan, StreamNode, elementwise, fifo_memory, padding, pixel_padding, \
        simulate, sliding_window, upsample
    from .finn_host import apply_host_tail
except ImportError:  # build.py in a FINN build folder, beside its copies finn_fifo.py and host.py
    from finn_fifo import FifoModelError, FifoPlan, StreamNode, elementwise, fifo_memory, padding, pixel_padding, \
        simulate, sliding_window, upsample
    from host import apply_host_tail

HERE = Path(__file__).resolve().parent
MAX_STREAMLINE_ROUNDS = 20
MAX_ACTIVATION_BITS = 8
MAX_UTILIZATION = 0.8  # share of each FPGA resource the folding may use
HW_DOMAIN = "finn.custom_op.fpgadataflow"
HOST_TAIL_OPS = ("Transpose", "Mul", "Add")
VIVADO_STEPS = ("step_hw_ipgen", "step_set_fifo_depths", "step_create_stitched_ip",
                "step_measure_rtlsim_performance", "step_out_of_context_synthesis", "step_synthesize_bitfile",
                "step_make_driver", "step_deployment_package")

# Wearable-class targets: FINN board name -> FPGA part, and each part's resources (AMD product tables).
BOARD_PARTS = {
    "Pynq-Z1": "xc7z020clg400-1",
    "Pynq-Z2": "xc7z020clg400-1",
    "Ultra96-V2": "xczu3eg-sbva484-1-i",
    "KV260_SOM": "xck26-sfvc784-2LV-c",
}
PART_RESOURCES = {
    "xc7z020": {"LUT": 53200, "BRAM_18K": 280, "URAM": 0, "DSP": 220},
    "xczu3eg": {"LUT": 70560, "BRAM_18K": 432, "URAM": 0, "DSP": 360},
    "xck26": {"LUT": 117120, "BRAM_18K": 288, "URAM": 64, "DSP": 1248},
}
RESOURCES = ("LUT", "BRAM_18K", "URAM", "DSP")
MAX_QSRL_DEPTH = 256  # deeper FIFOs become Vivado's axis_data_fifo (FINN's default)
SCAN_FACTOR = 1.5  # step of the search for the fastest folding within budget (cycles per frame)


class UNetBuildError(ValueError):
    """A model, config or target this build cannot serve; the message names the layer or the key."""


def resolve_part(board: str | None, fpga_part: str | None) -> str:
    """The FPGA part of a supported ``board`` or ``fpga_part``; :class:`UNetBuildError` for unknown ones."""
    if bool(board) == bool(fpga_part):
        raise UNetBuildError(f"give exactly one of board or fpga_part (got board={board!r}, fpga_part={fpga_part!r})")
    if board:
        if board not in BOARD_PARTS:
            raise UNetBuildError(f"unknown board {board!r}: supported boards are {', '.join(BOARD_PARTS)}")
        return BOARD_PARTS[board]
    part_resources(fpga_part)
    return fpga_part


def fifo_ram_style(part: str) -> str:
    """Memory of the deep (``axis_data_fifo``) FIFOs on ``part``: URAM where the part has it, else BRAM."""
    return "ultra" if part_resources(part)["URAM"] else "block"


def part_resources(part: str) -> dict[str, int]:
    """LUT, BRAM_18K, URAM and DSP of ``part`` (a part number such as ``xc7z020clg400-1``)."""
    for family, resources in PART_RESOURCES.items():
        if part.lower().startswith(family):
            return resources
    raise UNetBuildError(f"unknown FPGA part {part!r}: supported part families are {', '.join(PART_RESOURCES)} "
                         f"(boards: {', '.join(f'{b} = {p}' for b, p in BOARD_PARTS.items())})")


# ----------------------------------------------------------------------------------------------- checks
def step_unet_check_model(model, cfg):
    """Reject, before FINN works for minutes, activations over 8 bits and concats fed by two quantizers."""
    initial = {t.name for t in model.graph.initializer}
    for node in model.get_nodes_by_op_type("Quant"):
        bits = model.get_initializer(node.input[3])
        if node.input[0] not in initial and bits is not None and float(bits) > MAX_ACTIVATION_BITS:
            raise UNetBuildError(f"activation quantizer {node.name} (output {node.output[0]}) has {float(bits):g} bits; "
                                 f"FINN's thresholding layers take at most {MAX_ACTIVATION_BITS}")
    for node in model.get_nodes_by_op_type("Concat"):
        quants = [model.find_producer(name) for name in node.input]
        if any(q is None or q.op_type != "Quant" for q in quants):
            raise UNetBuildError(f"concat {node.name}: every input must come straight from a quantized activation")
        params = [tuple(np.asarray(model.get_initializer(q.input[i])).round(12).tobytes() for i in (1, 2, 3))
                  for q in quants]
        if len(set(params)) > 1:
            scales = [np.asarray(model.get_initializer(q.input[1])).ravel()[:1].tolist() for q in quants]
            raise UNetBuildError(f"concat {node.name}: inputs carry different scales or widths ({scales} from "
                                 f"{[q.name for q in quants]}); both branches must end in one shared quantizer")
    return model


def _transform_to_fixed_point(model, transformations, max_rounds: int = MAX_STREAMLINE_ROUNDS):
    """Apply ``transformations`` in order until the serialized graph stops changing."""
    for _ in range(max_rounds):
        before = model.model.SerializeToString()
        for t in transformations:
            model = model.transform(t)
        if model.model.SerializeToString() == before:
            return model
    raise UNetBuildError(f"streamlining did not reach a fixed point in {max_rounds} rounds")


def step_unet_streamline(model, cfg):
    """NCHW streamlining: move the skip branch's scales past fork, max-pool, up-conv and concat."""
    import finn.transformation.streamline.reorder as reorder
    from finn.transformation.streamline import Streamline
    from qonnx.transformation.infer_datatypes import InferDataTypes

    model = _transform_to_fixed_point(model, [
        reorder.MoveLinearPastFork(),
        reorder.MoveMulPastMaxPool(),
        reorder.MoveScalarLinearPastInvariants(),
        reorder.MoveScalarMulPastConvTranspose(),
        reorder.MoveMulPastJoinConcat(),
        reorder.MoveAddPastJoinConcat(),
        Streamline(),
    ])
    return model.transform(InferDataTypes())


def step_unet_channels_last(model, cfg):
    """Go channels-last: lower convs, pad transposed convs, NHWC pools/resizes, absorb the transposes."""
    import finn.transformation.streamline.absorb as absorb
    import finn.transformation.streamline.reorder as reorder
    from finn.transformation.fpgadataflow.infer_pixel_padding_deconv import InferPixelPaddingDeconv
    from finn.transformation.streamline.round_thresholds import RoundAndClipThresholds
    from qonnx.transformation.infer_datatypes import InferDataTypes
    from qonnx.transformation.lower_convs_to_matmul import LowerConvsToMatMul
    from qonnx.transformation.make_input_chanlast import MakeInputChannelsLast

    model = model.transform(MakeInputChannelsLast())
    model = model.transform(LowerConvsToMatMul())
    model = model.transform(InferPixelPaddingDeconv())
    model = _transform_to_fixed_point(model, [
        reorder.MakeMaxPoolNHWC(),
        absorb.AbsorbTransposeIntoMultiThreshold(),
        reorder.MoveTransposePastFork(),
        reorder.MoveTransposePastJoinConcat(),
        reorder.MakeScaleResizeNHWC(),
        absorb.AbsorbConsecutiveTransposes(),
    ])
    model = model.transform(RoundAndClipThresholds())
    return model.transform(InferDataTypes())


def step_unet_convert_to_hw(model, cfg):
    """Convert the U-Net's layers to FINN hardware layers; the output tail stays a host-side graph.

    FINN's stock step would also turn the tail (transpose, float scale Mul, bias Add) into a ``Shuffle`` and
    float elementwise layers inside the accelerator: this step runs only the conversions a U-Net needs.
    """
    import finn.transformation.fpgadataflow.convert_to_hw_layers as to_hw
    from finn.transformation.move_reshape import RemoveCNVtoFCFlatten
    from finn.transformation.streamline.absorb import AbsorbConsecutiveTransposes
    from qonnx.transformation.general import GiveUniqueNodeNames
    from qonnx.transformation.infer_data_layouts import InferDataLayouts

    for transformation in (
        to_hw.InferUpsample(),
        to_hw.InferQuantizedMatrixVectorActivation(),
        to_hw.InferThresholdingLayer(),
        to_hw.InferPool(),
        to_hw.InferConvInpGen(),
        RemoveCNVtoFCFlatten(),
        to_hw.InferConcatLayer(),
        to_hw.InferDuplicateStreamsLayer(),
        AbsorbConsecutiveTransposes(),
        GiveUniqueNodeNames(),
        InferDataLayouts(),
    ):
        model = model.transform(transformation)
    check_hardware_graph(model)
    return model


def check_hardware_graph(model) -> None:
    """Every node is a hardware layer except a tail of ``HOST_TAIL_OPS`` at the output; else name the node."""
    tail = []
    for node in reversed(model.graph.node):  # topologically sorted: the tail comes last
        if node.domain == HW_DOMAIN:
            break
        tail.append(node)
    for node in model.graph.node:
        if node.domain == HW_DOMAIN or (node in tail and node.op_type in HOST_TAIL_OPS):
            continue
        types = [str(model.get_tensor_datatype(t)) for t in node.input if model.get_initializer(t) is None]
        hint = (" (concat inputs with different scales stay on float data: use one shared quantizer)"
                if node.op_type == "Concat" else "")
        raise UNetBuildError(f"node {node.name} ({node.op_type}, inputs {types}) did not become a FINN hardware "
                             f"layer{hint}; only a {'/'.join(HOST_TAIL_OPS)} tail may stay on the host")


def step_unet_dataflow_partition(model, cfg):
    """FINN's dataflow partition: the accelerator (returned) inside ``dataflow_parent.onnx``, which keeps the tail."""
    from finn.builder.build_dataflow_steps import step_create_dataflow_partition

    return step_create_dataflow_partition(model, cfg)


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


def step_unet_host_tail(model, cfg):
    """``<output_dir>/host_tail.json`` from the final accelerator graph and the parent's tail: the accelerator's
    input/output datatype, shape and layout as the last graph says, and the host's ops."""
    from qonnx.core.modelwrapper import ModelWrapper

    parent = ModelWrapper(str(Path(cfg.output_dir) / "intermediate_models" / "dataflow_parent.onnx"))

    def stream(name: str) -> dict:
        return {"shape": model.get_tensor_shape(name), "datatype": model.get_tensor_datatype(name).name,
                "layout": "NHWC"}

    tail = {"accelerator_input": stream(model.graph.input[0].name),
            "accelerator_output": stream(model.graph.output[0].name),
            "host_ops": host_ops(parent), "mask": "logit > 0"}
    (Path(cfg.output_dir) / "host_tail.json").write_text(json.dumps(tail, indent=2))
    return model


# ---------------------------------------------------------------------------------------------- folding
def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _base_op(node) -> str:
    return node.op_type.rsplit("_", 1)[0] if node.op_type.endswith(("_hls", "_rtl")) else node.op_type


class FoldingUnit:
    """Nodes folded together and the parallelism settings they admit, cheapest first.

    ``options`` are lists of ``(node, attribute, value)``; FINN's rules: MVAU ``SIMD | MW``, ``PE | MH`` and
    (HLS) ``SIMD >= MW / 1024``; a pool's ``PE`` equals the ``SIMD`` of the window generator feeding it;
    concat ``SIMD`` divides every input's channels; padding, window generator, threshold and fork widths
    divide their channels.
    """

    def __init__(self, nodes, options):
        self.nodes = nodes
        self.options = options

    def apply(self, option) -> None:
        from qonnx.custom_op.registry import getCustomOp

        for node, attr, value in option:
            getCustomOp(node).set_nodeattr(attr, int(value))

    def cycles(self) -> int:
        from qonnx.custom_op.registry import getCustomOp

        return max(int(getCustomOp(n).get_exp_cycles()) for n in self.nodes)

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


def _byte_widths(parallelism: list[int], bits: int) -> list[int]:
    """The ``parallelism`` options whose stream (``p * bits`` wide) fills whole bytes, if any: a skip connection's
    deep FIFO is an ``axis_data_fifo``, which pads every word to whole bytes (4-bit words would double its BRAM)."""
    return [p for p in parallelism if p * bits % 8 == 0] or parallelism


def folding_units(model) -> list[FoldingUnit]:
    """One :class:`FoldingUnit` per hardware node (a pool together with its window generator). Skip forks and
    concats only take parallelism whose streams fill whole bytes (:func:`_byte_widths`)."""
    from qonnx.custom_op.registry import getCustomOp

    units, paired = [], set()
    for node in model.graph.node:
        op, inst = _base_op(node), getCustomOp(node)
        if op == "Pool":
            swg = model.find_producer(node.input[0])
            if swg is None or _base_op(swg) != "ConvolutionInputGenerator":
                raise UNetBuildError(f"pool {node.name} is not fed by a window generator")
            paired.add(swg.name)
            units.append(FoldingUnit([swg, node], [[(swg, "SIMD", p), (node, "PE", p)]
                                                   for p in _divisors(inst.get_nodeattr("Channels"))]))
    for node in model.graph.node:
        op, inst = _base_op(node), getCustomOp(node)
        if op == "Pool" or node.name in paired:
            continue
        if op == "MVAU":
            mw, mh = inst.get_nodeattr("MW"), inst.get_nodeattr("MH")
            min_simd = math.ceil(mw / 1024) if node.op_type.endswith("_hls") else 1
            pairs = [(s, p) for s in _divisors(mw) if s >= min_simd for p in _divisors(mh)]
            pairs.sort(key=lambda sp: (sp[0] * sp[1], sp[1]))
            options = [[(node, "SIMD", s), (node, "PE", p)] for s, p in pairs]
        elif op == "Thresholding":
            options = [[(node, "PE", p)] for p in _divisors(inst.get_nodeattr("NumChannels"))]
        elif op == "DuplicateStreams":
            bits = inst.get_input_datatype().bitwidth()
            options = [[(node, "PE", p)] for p in _byte_widths(_divisors(inst.get_nodeattr("NumChannels")), bits)]
        elif op in ("FMPadding", "FMPadding_Pixel"):
            options = [[(node, "SIMD", s)] for s in _divisors(inst.get_nodeattr("NumChannels"))]
        elif op == "ConvolutionInputGenerator":
            options = [[(node, "SIMD", s)] for s in _divisors(inst.get_nodeattr("IFMChannels"))]
        elif op == "StreamingConcat":
            channels, bits = inst.get_nodeattr("ChannelsPerStream"), inst.get_input_datatype().bitwidth()
            options = [[(node, "SIMD", s)] for s in _byte_widths(_divisors(math.gcd(*channels)), bits)]
        else:
            raise UNetBuildError(f"no folding rule for {node.op_type} (node {node.name})")
        units.append(FoldingUnit([node], options))
    return units


# ------------------------------------------------------------------------------------------------ FIFOs
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
        inst, op = getCustomOp(node), _base_op(node)
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
    """FINN's ``InsertDWC``, then FIFOs of the depths :func:`finn_fifo.simulate` finds: FINN's ``InsertFIFO`` from
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
    types = {n.name: _base_op(n) for n in model.graph.node}
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


def fold_for_target(model, target_cycles: float, part: str, design: Callable[[object], dict],
                    max_utilization: float = MAX_UTILIZATION) -> dict:
    """Fold ``model`` (in place) for ``target_cycles`` per frame within ``max_utilization`` of ``part``.

    ``design(model)``: the resources of the whole design a folding gives (:func:`design_resources` groups, with
    ``"total"``), which the budget applies to. Raises :class:`UNetBuildError` if no folding reaches the target or
    none between it and the serial design fits. Where the target fits only over budget, the fastest folding found
    within budget is kept (to 1%). Returns a report.
    """
    units = folding_units(model)
    budget = {r: max_utilization * v for r, v in part_resources(part).items()}

    def fold(cycles: float) -> tuple[bool, dict]:
        met = all([unit.fold(cycles) for unit in units])
        return met, design(model)

    def fits(resources: dict) -> bool:
        return all(resources["total"][r] <= budget[r] for r in RESOURCES)

    floor_cycles, floor_node = max((unit.fastest_cycles(), unit.nodes[-1].name) for unit in units)
    if floor_cycles > target_cycles:
        raise UNetBuildError(f"target of {target_cycles:.0f} cycles per frame cannot be reached: {floor_node} needs "
                             f"at least {floor_cycles} cycles at full parallelism")
    chosen = target_cycles
    met, resources = fold(chosen)
    if not fits(resources):
        # the fastest folding within budget. FIFO memory does not shrink steadily with slower foldings (a slower
        # layer deepens the skip FIFOs around it), so scan slower targets in steps of SCAN_FACTOR up to the serial
        # design, then bisect between the last that failed and the first that fits
        serial_cycles = float(max(unit.serial_cycles() for unit in units))
        low, chosen, tried = target_cycles, None, {}
        while chosen is None and low < serial_cycles:
            cycles = min(low * SCAN_FACTOR, serial_cycles)
            tried[cycles] = fold(cycles)[1]["total"]
            if fits({"total": tried[cycles]}):
                chosen = cycles
            else:
                low = cycles
        if chosen is None:
            raise UNetBuildError(f"no folding fits {max_utilization:.0%} of {part} (budget {budget}); the serial "
                                 f"design needs {tried[serial_cycles]}")
        while chosen > 1.01 * low:
            mid = math.sqrt(low * chosen)
            if fits(fold(mid)[1]):
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


def check_folding(model) -> None:
    """Raise :class:`UNetBuildError` naming the node where a folding breaks one of FINN's rules."""
    from qonnx.custom_op.registry import getCustomOp

    for node in model.graph.node:
        op, inst = _base_op(node), getCustomOp(node)
        attr = lambda name: inst.get_nodeattr(name)  # noqa: E731
        broken = None
        if op == "MVAU":
            if attr("MW") % attr("SIMD") or attr("MH") % attr("PE"):
                broken = f"SIMD {attr('SIMD')} must divide MW {attr('MW')} and PE {attr('PE')} divide MH {attr('MH')}"
            elif node.op_type.endswith("_hls") and attr("SIMD") < attr("MW") / 1024:
                broken = f"SIMD {attr('SIMD')} < MW / 1024 = {attr('MW') / 1024:g}"
        elif op == "Pool":
            swg = getCustomOp(model.find_producer(node.input[0]))
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


def step_unet_folding(model, cfg):
    """PE/SIMD per layer: ``folding_config_file`` if given (node names checked), else fold for ``target_fps``.

    The budget counts the whole design: the layers and FINN's width converters (FINN's estimates) and the FIFOs
    the FIFO model sizes (:func:`plan_memory`). Writes the folding applied, keyed by FINN's node names, to
    ``<output_dir>/folding_config.json`` and the target, the resources and the budget to
    ``<output_dir>/report/folding_report.json``.
    """
    from finn.transformation.general import ApplyConfig
    from finn.util.config import extract_model_config_to_json
    from qonnx.custom_op.registry import getCustomOp
    from qonnx.transformation.general import GiveUniqueNodeNames

    model = model.transform(GiveUniqueNodeNames())
    part = cfg._resolve_fpga_part()

    def design(folded) -> dict:
        return full_design(folded, part, fifo_settings(cfg)[0], cfg.split_large_fifos)[3]

    if cfg.folding_config_file:
        config = json.loads(Path(cfg.folding_config_file).read_text())
        names = {n.name for n in model.graph.node}
        unknown = sorted(set(config) - names - {"Defaults"})
        if unknown:
            raise UNetBuildError(f"{cfg.folding_config_file}: node name(s) {unknown} are not in the graph "
                                 f"(FINN's names after step_specialize_layers: {sorted(names)[:6]} ...)")
        model = model.transform(ApplyConfig(cfg.folding_config_file))
        resources = design(model)
        report = {"folding_config_file": cfg.folding_config_file, "part": part, "resources": resources["total"],
                  "resources_by_source": resources}
    else:
        if not cfg.target_fps:
            raise UNetBuildError("dataflow_build_config.json: give target_fps (frames per second) or folding_config_file")
        cycles = 1e9 / cfg.synth_clk_period_ns / cfg.target_fps
        report = {"target_fps": cfg.target_fps, "clock_mhz": 1e3 / cfg.synth_clk_period_ns,
                  **fold_for_target(model, cycles, part, design)}
    check_folding(model)
    cycles = {n.name: int(getCustomOp(n).get_exp_cycles()) for n in model.graph.node}
    report["bottleneck"] = max(cycles, key=cycles.get)
    report["max_cycles"] = cycles[report["bottleneck"]]
    report["estimated_fps"] = 1e9 / cfg.synth_clk_period_ns / report["max_cycles"]
    extract_model_config_to_json(model, str(Path(cfg.output_dir) / "folding_config.json"), ["PE", "SIMD"])
    (Path(cfg.output_dir) / "report").mkdir(parents=True, exist_ok=True)
    (Path(cfg.output_dir) / "report" / "folding_report.json").write_text(json.dumps(report, indent=2))
    return model


def fifo_settings(cfg) -> tuple[str, bool]:
    """``large_fifo_mem_style`` (its value) and whether FINN's rtlsim sizes the FIFOs (``auto_fifo_depths``)."""
    style = cfg.large_fifo_mem_style
    return getattr(style, "value", style), bool(cfg.auto_fifo_depths)


def step_unet_fifo_depths(model, cfg):
    """Width converters and FIFOs sized by the FIFO model (``finn_fifo.py``), written with FINN's own transforms.

    Every FIFO gets the depth at which a frame streams through without stall at the folding's interval
    (``depth``, ``impl_style``, ``ram_style`` = ``large_fifo_mem_style``; split as ``split_large_fifos`` says).
    With ``auto_fifo_depths`` (Vivado) only the width converters go in and FINN's rtlsim sizes the FIFOs in
    ``step_set_fifo_depths``. Writes ``<output_dir>/report/fifo_depths.json``: each FIFO's depth and memory, the
    design's resources by source and the budget; fails if the design exceeds the part.
    """
    part = cfg._resolve_fpga_part()
    ram_style, auto = fifo_settings(cfg)
    model, plan, memory, resources = full_design(model, part, ram_style, cfg.split_large_fifos, insert_fifos=not auto)
    available = part_resources(part)
    report = {
        "part": part, "ram_style": ram_style, "split_large_fifos": bool(cfg.split_large_fifos),
        "fifos_inserted": not auto, **plan.to_dict(),
        "resources": resources, "available": available,
        "budget": {r: MAX_UTILIZATION * v for r, v in available.items()},
    }
    for name, stream in report["streams"].items():
        stream["memory"] = memory[name]
    report["within_budget"] = all(resources["total"][r] <= report["budget"][r] for r in RESOURCES)
    (Path(cfg.output_dir) / "report").mkdir(parents=True, exist_ok=True)
    (Path(cfg.output_dir) / "report" / "fifo_depths.json").write_text(json.dumps(report, indent=2))
    over = [r for r in RESOURCES if resources["total"][r] > available[r]]
    if over:
        raise UNetBuildError(f"the design with width converters and FIFOs needs more {'/'.join(over)} than {part} "
                             f"has: {resources['total']} vs {available}")
    return model


# -------------------------------------------------------------------------------------------- verification
def python_view(model):
    """A copy of a specialized graph whose HLS/RTL layers run as their FINN base layers' Python models.

    FINN's HLS/RTL classes execute only in cppsim/rtlsim (Vitis/Vivado); their base classes execute the same
    layer, with the same weights, thresholds and datatypes, in numpy.
    """
    from qonnx.core.modelwrapper import ModelWrapper

    view = ModelWrapper(copy.deepcopy(model.model))
    for node in view.graph.node:
        if node.domain.startswith(HW_DOMAIN + "."):
            node.domain, node.op_type = HW_DOMAIN, _base_op(node)
    return view


def first_differing_layer(folded, reference, x: np.ndarray) -> str:
    """The first node of ``folded`` (graph order) whose output tensor, also computed by ``reference`` under the same
    name, differs on input ``x``; its output tensor if none does."""
    from finn.core.onnx_exec import execute_onnx

    got = execute_onnx(folded, {folded.graph.input[0].name: x}, return_full_exec_context=True)
    want = execute_onnx(reference, {reference.graph.input[0].name: x}, return_full_exec_context=True)
    for node in folded.graph.node:
        for t in node.output:
            if t in want and got[t].shape == want[t].shape and not np.array_equal(got[t], want[t]):
                return f"{node.name} ({node.op_type}, output {t})"
    return f"the graph output {folded.graph.output[0].name} (no shared intermediate tensor differs)"


def integer_outputs(graph, cfg, inputs: np.ndarray, label: str):
    """``graph``'s integer outputs on NCHW ``inputs`` (fed NHWC), one slice at a time, each checked equal to the
    streamlined graph's (``step_unet_channels_last``) tensor entering the host tail; :class:`UNetBuildError` naming
    the first differing layer otherwise."""
    from finn.core.onnx_exec import execute_onnx
    from qonnx.core.modelwrapper import ModelWrapper

    reference = ModelWrapper(str(Path(cfg.output_dir) / "intermediate_models" / "step_unet_channels_last.onnx"))
    ref_in, ref_out = reference.graph.input[0].name, tail_input(reference)
    for i, x in enumerate(inputs):
        x = x[None].transpose(0, 2, 3, 1).astype(np.float32)  # NCHW slice -> the accelerator's NHWC
        want = execute_onnx(reference, {ref_in: x}, return_full_exec_context=True)[ref_out]
        got = execute_onnx(graph, {graph.graph.input[0].name: x})[graph.graph.output[0].name]
        differing = int((got.reshape(want.shape) != want).sum())
        if differing:
            raise UNetBuildError(f"{label}: the integer output differs from the streamlined graph's on slice {i}: "
                                 f"{differing} of {want.size} values; first differing layer: "
                                 f"{first_differing_layer(graph, reference, x)}")
        print(f"{label}: slice {i + 1}/{len(inputs)} equal", flush=True)
        yield got


def step_unet_verify_folded(model, cfg):
    """The folded accelerator graph's integer output, exactly as the streamlined graph computes it.

    On every verification slice, executes the folded graph (FINN's Python execution of its layers) and the
    streamlined channels-last graph (``step_unet_channels_last``, before any hardware conversion) up to the tensor
    entering the host tail. Any differing value fails the build naming the first layer whose output differs; every
    value must also lie in the accelerator output's datatype. Saves the integer outputs
    (``verification_output/folded_accelerator_output.npy``), the logits after the host tail
    (``folded_python_logits.npy``) and a summary (``folded_integer.json``).
    """
    from qonnx.core.modelwrapper import ModelWrapper

    if not cfg.verify_input_npy:
        print("no verify_input_npy: skipping step_unet_verify_folded")
        return model
    inputs = np.load(cfg.verify_input_npy)
    out_dir = Path(cfg.output_dir) / "verification_output"
    out_dir.mkdir(parents=True, exist_ok=True)
    models = Path(cfg.output_dir) / "intermediate_models"
    dtype = model.get_tensor_datatype(model.graph.output[0].name)
    outputs = []
    for i, got in enumerate(integer_outputs(python_view(model), cfg, inputs, "folded graph")):
        if not all(dtype.allowed(v) for v in np.unique(got)):
            raise UNetBuildError(f"slice {i}: accelerator output values outside its datatype {dtype.name}")
        outputs.append(got)
    outputs = np.concatenate(outputs)
    parent = ModelWrapper(str(models / "dataflow_parent.onnx"))
    np.save(out_dir / "folded_accelerator_output.npy", outputs)
    np.save(out_dir / "folded_python_logits.npy", apply_host_tail(outputs, host_ops(parent)))
    summary = {"slices": int(len(inputs)), "values": int(outputs.size), "differing_values": 0,
               "datatype": dtype.name, "min": float(outputs.min()), "max": float(outputs.max()), "passed": True}
    (out_dir / "folded_integer.json").write_text(json.dumps(summary, indent=2))
    print(f"folded graph vs streamlined graph: {summary}", flush=True)
    return model


def cppsim_available() -> bool:
    """Whether FINN's cppsim can compile here: ``HLS_PATH`` holds the HLS headers (Vitis', or the open ones
    ``scripts/install_finn.sh`` sets up)."""
    return (Path(os.environ.get("HLS_PATH", "/nonexistent")) / "include" / "ap_int.h").is_file()


def step_unet_verify_cppsim(model, cfg):
    """FINN's C++ simulation of every HLS layer (RTL layers run their Python model) on the first
    ``unet_cppsim_slices`` verification slices, compared value for value with the streamlined graph.

    Skipped (and said so) when ``unet_cppsim_slices`` is 0 or no HLS headers are found (:func:`cppsim_available`).
    A layer whose C++ does not compile is named (FINN's ``CppBuilder`` ignores g++ failures). Writes
    ``verification_output/folded_cppsim.json``; the graph goes on unchanged.
    """
    from finn.transformation.fpgadataflow.compile_cppsim import CompileCppSim
    from finn.transformation.fpgadataflow.prepare_cppsim import PrepareCppSim
    from finn.transformation.fpgadataflow.set_exec_mode import SetExecMode
    from qonnx.custom_op.registry import getCustomOp

    slices = int(getattr(cfg, "unet_cppsim_slices", 0))
    if not slices or not cfg.verify_input_npy or not cppsim_available():
        print(f"step_unet_verify_cppsim: skipped (unet_cppsim_slices {slices}, HLS headers "
              f"{'found' if cppsim_available() else 'not found: set HLS_PATH'})")
        return model
    sim = model.transform(SetExecMode("cppsim")).transform(PrepareCppSim()).transform(CompileCppSim())
    hls = [n for n in sim.graph.node if n.op_type.endswith("_hls")]
    for node in hls:
        if not Path(getCustomOp(node).get_nodeattr("executable_path") or "/nonexistent").is_file():
            raise UNetBuildError(f"cppsim: the C++ of {node.name} ({node.op_type}) did not compile (see "
                                 f"{getCustomOp(node).get_nodeattr('code_gen_dir_cppsim')}/compile.sh)")
    inputs = np.load(cfg.verify_input_npy)[:slices]
    for _ in integer_outputs(sim, cfg, inputs, "cppsim"):
        pass
    summary = {"slices": len(inputs), "hls_layers": len(hls), "differing_values": 0, "passed": True}
    (Path(cfg.output_dir) / "verification_output" / "folded_cppsim.json").write_text(json.dumps(summary, indent=2))
    return model


UNET_STEPS = [
    step_unet_check_model,
    "step_qonnx_to_finn",
    "step_tidy_up",
    step_unet_streamline,
    step_unet_channels_last,
    step_unet_convert_to_hw,
    step_unet_dataflow_partition,
    "step_specialize_layers",
    step_unet_folding,
    "step_minimize_bit_width",
    "step_transpose_decomposition",
    step_unet_verify_folded,
    step_unet_verify_cppsim,
    step_unet_fifo_depths,
    step_unet_host_tail,
    "step_generate_estimate_reports",
    "step_hw_codegen",
    *VIVADO_STEPS,
]


FINAL_GRAPH = "step_unet_host_tail.onnx"  # the accelerator graph host_tail.json describes


def execute_built(cfg, inputs: np.ndarray) -> np.ndarray:
    """The built accelerator graph (``intermediate_models/FINAL_GRAPH``) in FINN's Python execution on NHWC slices
    ``(N, H, W, C)``: its integer outputs ``(N, H, W, 1)``."""
    from finn.core.onnx_exec import execute_onnx
    from qonnx.core.modelwrapper import ModelWrapper

    path = Path(cfg.output_dir) / "intermediate_models" / FINAL_GRAPH
    if not path.is_file():
        raise UNetBuildError(f"{path} not found: build up to step_unet_host_tail first")
    view = python_view(ModelWrapper(str(path)))
    i, o = view.graph.input[0].name, view.graph.output[0].name
    return np.concatenate([execute_onnx(view, {i: x[None].astype(np.float32)})[o] for x in inputs])


def step_name(step) -> str:
    return step if isinstance(step, str) else step.__name__


def load_config(path: Path):
    """The folder's ``DataflowBuildConfig`` with paths resolved and non-interactive settings forced."""
    from finn.builder.build_dataflow_config import DataflowBuildConfig

    cfg = DataflowBuildConfig.from_json(path.read_text())
    for key in ("output_dir", "folding_config_file", "verify_input_npy", "verify_expected_output_npy"):
        value = getattr(cfg, key, None)
        if value and not Path(value).is_absolute():
            setattr(cfg, key, str(path.parent / value))
    if cfg.folding_config_file and not Path(cfg.folding_config_file).is_file():
        raise UNetBuildError(f"{path}: folding_config_file {cfg.folding_config_file} not found")
    resolve_part(cfg.board, None if cfg.board else cfg.fpga_part)
    if not cfg.folding_config_file:
        part_resources(cfg._resolve_fpga_part())
    cfg.unet_cppsim_slices = int(json.loads(path.read_text()).get("unet_cppsim_slices", 0))  # not a FINN key
    cfg.enable_build_pdb_debug = False  # a failing build must exit, not wait in pdb
    cfg.save_intermediate_models = True  # the verification executes the saved parent model
    return cfg


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(HERE / "dataflow_build_config.json"), help="build config JSON")
    parser.add_argument("--model", default=str(HERE / "model.onnx"), help="QONNX model")
    names = [step_name(s) for s in UNET_STEPS]
    parser.add_argument("--steps-until", default=None, choices=names, metavar="STEP",
                        help="stop after this step (step_hw_codegen: the last one without Vivado)")
    parser.add_argument("--execute", nargs=2, metavar=("IN", "OUT"), default=None,
                        help="no build: run the built accelerator graph on IN.npy (N, H, W, C), save OUT.npy")
    args = parser.parse_args(argv)

    from finn.builder.build_dataflow import build_dataflow_cfg

    try:
        cfg = load_config(Path(args.config))
        if args.execute:
            np.save(args.execute[1], execute_built(cfg, np.load(args.execute[0])))
            return 0
    except UNetBuildError as e:
        print(f"build.py: {e}", file=sys.stderr)
        return 2
    cfg.steps = UNET_STEPS[: names.index(args.steps_until) + 1 if args.steps_until else len(UNET_STEPS)]
    status_path = Path(cfg.output_dir) / "build_status.json"
    status_path.parent.mkdir(parents=True, exist_ok=True)
    status_path.write_text(json.dumps({"status": "running"}))
    error = {}

    def record_errors(step):
        def run(model, cfg):
            try:
                return step(model, cfg)
            except Exception as e:
                error.update(step=step_name(step), error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc())
                raise
        run.__name__ = step_name(step)
        return run

    from finn.builder.build_dataflow_steps import build_dataflow_step_lookup

    # generated HLS/RTL code goes into the output folder unless FINN's container says otherwise
    os.environ.setdefault("FINN_BUILD_DIR", str(Path(cfg.output_dir) / "codegen"))
    Path(os.environ["FINN_BUILD_DIR"]).mkdir(parents=True, exist_ok=True)

    cfg.steps = [record_errors(build_dataflow_step_lookup[s] if isinstance(s, str) else s) for s in cfg.steps]
    rc = build_dataflow_cfg(args.model, cfg)
    status = {"status": "ok" if rc == 0 else "failed", "steps": [s.__name__ for s in cfg.steps], **error}
    status_path.write_text(json.dumps(status, indent=2))
    if rc != 0:
        print(f"build.py: FAILED in {error.get('step', '?')}: {error.get('error', 'see build_dataflow.log')}",
              file=sys.stderr)
        return 1
    print(f"build.py: completed {len(cfg.steps)} steps; outputs in {cfg.output_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
