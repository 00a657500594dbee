"""Verification of the folded accelerator: its integer output, in FINN's Python execution and (with HLS headers) in
FINN's C++ simulation of its HLS layers, must equal the streamlined graph's value for value.

Imports FINN only inside its functions.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from .errors import UNetBuildError
from .host_tail import apply_host_tail, host_ops, tail_input
from .layers import HW_DOMAIN, base_op

__all__ = ["cppsim_available", "first_differing_layer", "integer_outputs", "python_view", "step_unet_verify_cppsim",
           "step_unet_verify_folded"]


def python_view(model):
    """A copy of a specialized graph whose HLS/RTL layers run as their FINN base layers' Python models.

    FINN's HLS/RTL classes execute only in cppsim/rtlsim (Vitis/Vivado); their base classes execute the same
    layer, with the same weights, thresholds and datatypes, in numpy.
    """
    from qonnx.core.modelwrapper import ModelWrapper

    view = ModelWrapper(copy.deepcopy(model.model))
    for node in view.graph.node:
        if node.domain.startswith(HW_DOMAIN + "."):
            node.domain, node.op_type = HW_DOMAIN, base_op(node.op_type)
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


def integer_outputs(graph, cfg, inputs: np.ndarray, label: str) -> Iterator[np.ndarray]:
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

