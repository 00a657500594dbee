"""FINN build of the exported QuantU-Net: the command line of the FINN folder's ``build.py``.

    python build.py                                # every step (needs Vivado from step_hw_ipgen on)
    python build.py --steps-until step_hw_codegen  # no Vivado: folding, verification, estimates, HLS/RTL code
    python build.py --execute IN.npy OUT.npy       # no build: the built accelerator graph on NHWC slices

The outcome is written to ``<output_dir>/build_status.json`` (``"ok"`` or ``"failed"`` with the step and the
reason). ``--execute`` runs the built accelerator graph in FINN's Python execution, as ``host.py --finn-python``
does. Imports FINN only inside its functions.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from pathlib import Path

import numpy as np

from . import FOLDER
from .errors import UNetBuildError
from .steps import UNET_STEPS, step_name
from .targets import part_resources, resolve_part
from .verification import python_view

__all__ = ["FINAL_GRAPH", "execute_built", "load_config", "main"]

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
    parser.add_argument("--config", default=str(FOLDER / "dataflow_build_config.json"), help="build config JSON")
    parser.add_argument("--model", default=str(FOLDER / "model.onnx"), help="QONNX model")
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

