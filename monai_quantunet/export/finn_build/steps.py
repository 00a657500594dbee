"""The U-Net's custom FINN build steps and the order the build runs them in (:data:`UNET_STEPS`).

FINN's stock ``step_streamline`` / ``step_convert_to_hw`` leave a U-Net's max-pools, concatenations, transposed
convs and skip forks off the hardware, and ``step_target_fps_parallelization`` crashes on ``StreamingConcat``; the
steps here

* check the QONNX model first (activations <= 8 bits, both inputs of every concat from one quantizer);
* move every scale past fork, max-pool, up-conv and concat on the NCHW graph, then go channels-last;
* convert exactly the layers the U-Net has, leaving the output tail (NHWC->NCHW transpose, logits scale and
  bias) on the host, and fail naming any other node that did not become a hardware layer;
* fold for ``target_fps`` at ``synth_clk_period_ns`` within ``MAX_UTILIZATION`` of the part's LUT, BRAM18,
  URAM and DSP for the whole design (:mod:`.folding`): layers and width converters by FINN's estimates, FIFOs
  sized by the FIFO model as Vivado builds them (or apply and check a ``folding_config_file``);
* verify the folded graph (:mod:`.verification`);
* size every FIFO with the FIFO model (:mod:`.fifos`) and insert them with FINN's transforms;
* write the host tail (:mod:`.host_tail`) to ``host_tail.json``.

Each step is a FINN build step ``(model, cfg) -> model`` that imports FINN inside itself.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .errors import UNetBuildError
from .fifos import fifo_settings, full_design
from .folding import check_folding, fold_for_target
from .host_tail import HOST_TAIL_OPS, host_ops
from .layers import HW_DOMAIN, hw_layers
from .targets import over, part_resources, resource_budget
from .verification import step_unet_verify_cppsim, step_unet_verify_folded

__all__ = ["UNET_STEPS", "VIVADO_STEPS", "check_hardware_graph", "step_name", "step_unet_channels_last",
           "step_unet_check_model", "step_unet_convert_to_hw", "step_unet_dataflow_partition",
           "step_unet_fifo_depths", "step_unet_folding", "step_unet_host_tail", "step_unet_streamline"]

MAX_STREAMLINE_ROUNDS = 20
MAX_ACTIVATION_BITS = 8
VIVADO_STEPS = ("step_hw_ipgen", "step_set_fifo_depths", "step_create_stitched_ip",
                "step_measure_rtlsim_performance", "step_out_of_context_synthesis", "step_synthesize_bitfile",
                "step_make_driver", "step_deployment_package")


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


def step_unet_folding(model, cfg):
    """PE/SIMD per layer: ``folding_config_file`` if given (node names checked), else fold for ``target_fps``.

    The budget counts the whole design: the layers and FINN's width converters (FINN's estimates) and the FIFOs
    the FIFO model sizes (:func:`.fifos.plan_memory`). Writes the folding applied, keyed by FINN's node names, to
    ``<output_dir>/folding_config.json`` and the target, the resources and the budget to
    ``<output_dir>/report/folding_report.json``.
    """
    from finn.transformation.general import ApplyConfig
    from finn.util.config import extract_model_config_to_json
    from qonnx.transformation.general import GiveUniqueNodeNames

    model = model.transform(GiveUniqueNodeNames())
    part = cfg._resolve_fpga_part()

    def design() -> dict:  # the resources of the whole design the current folding of ``model`` gives
        return full_design(model, part, fifo_settings(cfg)[0], cfg.split_large_fifos)[3]

    if cfg.folding_config_file:
        config = json.loads(Path(cfg.folding_config_file).read_text())
        names = {n.name for n in model.graph.node}
        unknown = sorted(set(config) - names - {"Defaults"})
        if unknown:
            raise UNetBuildError(f"{cfg.folding_config_file}: node name(s) {unknown} are not in the graph "
                                 f"(FINN's names after step_specialize_layers: {sorted(names)[:6]} ...)")
        model = model.transform(ApplyConfig(cfg.folding_config_file))
        resources = design()
        report = {"folding_config_file": cfg.folding_config_file, "part": part, "resources": resources["total"],
                  "resources_by_source": resources}
    else:
        if not cfg.target_fps:
            raise UNetBuildError("dataflow_build_config.json: give target_fps (frames per second) or folding_config_file")
        cycles = 1e9 / cfg.synth_clk_period_ns / cfg.target_fps
        report = {"target_fps": cfg.target_fps, "clock_mhz": 1e3 / cfg.synth_clk_period_ns,
                  **fold_for_target(hw_layers(model), cycles, part, design)}
    layers = hw_layers(model)
    check_folding(layers)
    cycles = {layer.onnx_node.name: int(layer.get_exp_cycles()) for layer in layers}
    report["bottleneck"] = max(cycles, key=cycles.get)
    report["max_cycles"] = cycles[report["bottleneck"]]
    report["estimated_fps"] = 1e9 / cfg.synth_clk_period_ns / report["max_cycles"]
    extract_model_config_to_json(model, str(Path(cfg.output_dir) / "folding_config.json"), ["PE", "SIMD"])
    (Path(cfg.output_dir) / "report").mkdir(parents=True, exist_ok=True)
    (Path(cfg.output_dir) / "report" / "folding_report.json").write_text(json.dumps(report, indent=2))
    return model


def step_unet_fifo_depths(model, cfg):
    """Width converters and FIFOs sized by the FIFO model (:mod:`.fifo_model`), written with FINN's own transforms.

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
        "budget": resource_budget(part),
    }
    for name, stream in report["streams"].items():
        stream["memory"] = memory[name]
    report["within_budget"] = not over(resources["total"], report["budget"])
    (Path(cfg.output_dir) / "report").mkdir(parents=True, exist_ok=True)
    (Path(cfg.output_dir) / "report" / "fifo_depths.json").write_text(json.dumps(report, indent=2))
    exceeded = over(resources["total"], available)
    if exceeded:
        raise UNetBuildError(f"the design with width converters and FIFOs needs more {'/'.join(exceeded)} than {part} "
                             f"has: {resources['total']} vs {available}")
    return model


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


UNET_STEPS: list[str | Callable] = [  # FINN's steps by name, the U-Net's as functions
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


def step_name(step: str | Callable) -> str:
    """The name FINN knows a build step by."""
    return step if isinstance(step, str) else step.__name__

