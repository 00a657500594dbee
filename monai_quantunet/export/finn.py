"""The FINN build folder: QONNX model, build config, the U-Net build script, verification slices, README.

Nothing here imports FINN: ``build.py`` (a copy of :mod:`monai_quantunet.export.finn_build`) imports it
inside its functions; :mod:`monai_quantunet.export.finn_toolchain` runs it in FINN's own environment.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from monai_quantunet.export.finn_build import (
    BOARD_PARTS,
    MAX_UTILIZATION,
    VIVADO_STEPS,
    part_resources,
    resolve_part,
)

__all__ = ["DEFAULT_BOARD", "DEFAULT_CLK_NS", "DEFAULT_TARGET_FPS", "FINN_COMMIT", "QONNX_COMMIT", "build_config",
           "write_finn_folder"]

DEFAULT_BOARD = "Pynq-Z1"  # Zynq-7020: small, low power, FINN's reference board
DEFAULT_TARGET_FPS = 30  # slices per second
DEFAULT_CLK_NS = 10.0  # 100 MHz
FINN_COMMIT = "73ba5ed"  # FINN dev, 2026-04-17
QONNX_COMMIT = "f5c9819"  # the qonnx FINN dev pins
BUILD_SCRIPT = Path(__file__).with_name("finn_build.py")


def build_config(board: str | None = DEFAULT_BOARD, fpga_part: str | None = None,
                 clk_period_ns: float = DEFAULT_CLK_NS, target_fps: float = DEFAULT_TARGET_FPS,
                 verification_atol: float = 1e-3) -> dict:
    """``dataflow_build_config.json`` contents; paths are relative to the folder (``build.py`` resolves them).

    ``board`` (one of ``finn_build.BOARD_PARTS``) gives a Zynq bitfile, PYNQ driver and deployment package;
    ``fpga_part`` alone stops at out-of-context synthesis. ``build.py`` folds for ``target_fps`` slices per
    second at ``clk_period_ns``. ``verification_atol``: largest logit difference (logit units) the folded
    graph may show against the PyTorch logits. ``ValueError`` for an unknown board or part.
    """
    part = resolve_part(board, fpga_part)
    part_resources(part)
    if not target_fps > 0 or not clk_period_ns > 0:
        raise ValueError(f"target_fps and clk_period_ns must be positive, got {target_fps} and {clk_period_ns}")
    outputs = ["estimate_reports", "stitched_ip", "rtlsim_performance"]
    outputs += ["bitfile", "pynq_driver", "deployment_package"] if board else ["out_of_context_synth"]
    return {
        "output_dir": "output",
        "synth_clk_period_ns": clk_period_ns,
        **({"board": board} if board else {"fpga_part": fpga_part}),
        "shell_flow_type": "vivado_zynq",
        "target_fps": target_fps,
        "auto_fifo_depths": True,
        "generate_outputs": outputs,
        "verify_steps": [],
        "verify_input_npy": "input.npy",
        "verify_expected_output_npy": "expected_output.npy",
        "verification_atol": verification_atol,
        "save_intermediate_models": True,
        "enable_build_pdb_debug": False,
    }


def write_finn_folder(folder: str | Path, qonnx_path: str | Path, slices: np.ndarray, logits: np.ndarray,
                      **config_kwargs) -> Path:
    """Write the FINN build folder.

    ``slices`` ``(N, C, H, W)`` float32 and ``logits`` ``(N, out, H, W)``: the PyTorch network's logits on them
    (``input.npy`` / ``expected_output.npy``, the folded graph's verification). ``config_kwargs`` go to
    :func:`build_config`.
    """
    folder = Path(folder)
    cfg = build_config(**config_kwargs)
    folder.mkdir()
    shutil.copyfile(qonnx_path, folder / "model.onnx")
    shutil.copyfile(BUILD_SCRIPT, folder / "build.py")
    (folder / "dataflow_build_config.json").write_text(json.dumps(cfg, indent=2))
    np.save(folder / "input.npy", np.asarray(slices, dtype=np.float32))
    np.save(folder / "expected_output.npy", np.asarray(logits, dtype=np.float32))
    (folder / "README.md").write_text(_readme(cfg, tuple(slices.shape)))
    return folder


def _channels_note(c: int) -> str:
    """What the README says of ``c`` input channels (``input.npy`` holds them as the network saw them)."""
    if c == 1:
        return ""
    note = f"; {c} channels, the network's input channels in the order of `input.npy`"
    if c % 2:
        note += (f" (a 2.5D model, the bundle's `context_slices` = {c}: channel j is slice z + j - {c // 2} of the "
                 "volume, its first and last slice replicated beyond the ends)")
    return note


def _readme(cfg: dict, input_shape: tuple[int, ...]) -> str:
    part = resolve_part(cfg.get("board"), cfg.get("fpga_part"))
    target = f"board `{cfg['board']}` ({part})" if cfg.get("board") else f"FPGA part `{part}`"
    n, c, h, w = input_shape
    return f"""# FINN build folder: QuantU-Net

Checked with FINN `dev` {FINN_COMMIT} and qonnx {QONNX_COMMIT} (the qonnx FINN `dev` pins; the registry's qonnx 1.0.0
changed `MultiThreshold`'s default data layout). FINN `main` (v0.10.1) lacks the concat transformations a U-Net
needs. Target: {target}, clock {cfg['synth_clk_period_ns']} ns, **{cfg['target_fps']} slices/s**, at most
{MAX_UTILIZATION:.0%} of the part's LUT, BRAM18, URAM and DSP by FINN's estimates (supported boards:
{', '.join(BOARD_PARTS)}).

| file | what |
|---|---|
| `model.onnx` | the QONNX model (Brevitas export, qonnx-cleaned), input `(1, {c}, {h}, {w})` float, NCHW |
| `dataflow_build_config.json` | FINN `DataflowBuildConfig` (paths relative to this folder) |
| `build.py` | the build: FINN's steps plus the U-Net's own (see its docstring) |
| `input.npy`, `expected_output.npy` | {n} real slices and the PyTorch QuantU-Net's logits on them |

## Run

With FINN on the path (`FINN_ROOT` set; in FINN's Docker container, or the environment the project's
`scripts/install_finn.sh` makes):

    python build.py --steps-until step_hw_codegen   # no Vivado: folding, verification, estimates, HLS/RTL code
    python build.py                                 # the full build, inside FINN's Docker with Vivado

Steps that need Vivado/Vitis and are not exercised without it: {', '.join(f'`{s}`' for s in VIVADO_STEPS)}.
A build never drops into a debugger: `output/build_status.json` says `ok`, or `failed` with the step and the
reason (also printed), and `build.py` exits non-zero.

What the steps leave in `output/`:

| file | what |
|---|---|
| `folding_config.json` | PE/SIMD per layer, keyed by FINN's node names, chosen by `step_unet_folding` for the target |
| `report/folding_report.json` | target, estimated slices/s, bottleneck layer, FINN's resource estimates and the budget |
| `report/estimate_*.json` | FINN's own estimate reports (cycles and resources per layer, network performance) |
| `verification_output/folded_python.json` | the folded graph (FINN Python execution) against `expected_output.npy` |
| `host_tail.json` | the accelerator's input/output datatypes and the host's operations (below) |
| `codegen/` | generated HLS/RTL code (unless `FINN_BUILD_DIR` is set) |

To fold by hand, copy `output/folding_config.json`, edit it and give it as `folding_config_file` in
`dataflow_build_config.json`: node names that are not in the graph are refused. A target no folding reaches is
an error naming the slowest layer; a target that only fits over the resource budget gets the fastest folding
within it (`target_met: false` in the folding report).

## Output: what the host does

The accelerator takes the slice as `(1, {h}, {w}, {c})` (NHWC) float32 values (the percentile-scaled image the
network was trained on; the first layer quantizes them to 8 bits{_channels_note(c)}) and streams out `(1, {h}, {w}, 1)` integer
accumulators of the 1x1 head (NHWC, datatype in `host_tail.json`). The host finishes the network exactly as
`output/intermediate_models/dataflow_parent.onnx` does, with the constants listed in `host_tail.json`:

    logits = transpose(y, (0, 3, 1, 2)) * scale + bias     # (1, 1, {h}, {w}) logits
    mask = logits > 0                                      # logit > 0 is tumor; no sigmoid on the FPGA

`auto_fifo_depths` stays on for the Vivado steps (undersized skip FIFOs deadlock a U-Net on the board).
"""
