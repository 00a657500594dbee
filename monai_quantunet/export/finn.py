"""The FINN build folder: QONNX model, build config, the U-Net build package, verification slices, README.

Nothing here imports FINN: the folder's ``build.py`` runs a copy of :mod:`monai_quantunet.export.finn_build`, which
imports it inside its functions; :mod:`monai_quantunet.export.finn_toolchain` runs it in FINN's own environment.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from monai_quantunet.export.finn_build import commits
from monai_quantunet.export.finn_build.steps import VIVADO_STEPS
from monai_quantunet.export.finn_build.targets import (
    BOARD_PARTS,
    MAX_UTILIZATION,
    fifo_ram_style,
    part_resources,
    resolve_part,
)

__all__ = ["DEFAULT_BOARD", "DEFAULT_CLK_NS", "DEFAULT_TARGET_FPS", "FINN_COMMIT", "QONNX_COMMIT", "build_config",
           "write_finn_folder"]

DEFAULT_BOARD = "Pynq-Z1"  # Zynq-7020: small, low power, FINN's reference board
DEFAULT_TARGET_FPS = 30  # slices per second
DEFAULT_CLK_NS = 10.0  # 100 MHz
FINN_COMMIT, QONNX_COMMIT = commits.FINN_COMMIT[:7], commits.QONNX_COMMIT[:7]  # abbreviated, as the docs print them
BUILD_PACKAGE = Path(__file__).with_name("finn_build")  # copied whole into the folder
PROGRAMS = {"build.py": "build", "host.py": "host"}  # the folder's programs: the finn_build module each runs
PROGRAM = '''"""Runs finn_build/{module}.py (see its docstring, or --help)."""

from finn_build.{module} import main

if __name__ == "__main__":
    raise SystemExit(main())
'''


def build_config(board: str | None = DEFAULT_BOARD, fpga_part: str | None = None,
                 clk_period_ns: float = DEFAULT_CLK_NS, target_fps: float = DEFAULT_TARGET_FPS,
                 cppsim_slices: int = 1) -> dict:
    """``dataflow_build_config.json`` contents; paths are relative to the folder (``build.py`` resolves them).

    ``board`` (one of ``finn_build.BOARD_PARTS``) gives a Zynq bitfile, PYNQ driver and deployment package;
    ``fpga_part`` alone stops at out-of-context synthesis. ``build.py`` folds for ``target_fps`` slices per
    second at ``clk_period_ns``. FIFOs are sized by the project's FIFO model (``auto_fifo_depths`` false; set it
    true to have FINN size them by rtlsim where Vivado exists), split beyond an ``axis_data_fifo``'s depth, deep
    ones in URAM where the part has it, else BRAM. ``cppsim_slices``: verification slices also run in FINN's
    C++ simulation where HLS headers exist (``unet_cppsim_slices``; 0: never). ``ValueError`` for an unknown board
    or part.
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
        "auto_fifo_depths": False,
        "split_large_fifos": True,
        "large_fifo_mem_style": fifo_ram_style(part),
        "generate_outputs": outputs,
        "verify_steps": [],
        "verify_input_npy": "input.npy",
        "verify_expected_output_npy": "expected_output.npy",
        "unet_cppsim_slices": int(cppsim_slices),
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
    shutil.copytree(BUILD_PACKAGE, folder / BUILD_PACKAGE.name, ignore=shutil.ignore_patterns("__pycache__"))
    for program, module in PROGRAMS.items():
        (folder / program).write_text(PROGRAM.format(module=module))
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
    memory = "URAM" if cfg["large_fifo_mem_style"] == "ultra" else "BRAM"
    return f"""# FINN build folder: QuantU-Net

Checked with FINN `dev` {FINN_COMMIT} and qonnx {QONNX_COMMIT} (the qonnx FINN `dev` pins; the registry's qonnx 1.0.0
changed `MultiThreshold`'s default data layout). FINN `main` (v0.10.1) lacks the concat transformations a U-Net
needs. Target: {target}, clock {cfg['synth_clk_period_ns']} ns, **{cfg['target_fps']} slices/s**, at most
{MAX_UTILIZATION:.0%} of the part's LUT, BRAM18, URAM and DSP for the whole design: every layer and FINN's width
converters by FINN's estimates, every FIFO as Vivado builds it (supported boards: {', '.join(BOARD_PARTS)}).

| file | what |
|---|---|
| `model.onnx` | the QONNX model (Brevitas export, qonnx-cleaned), input `(1, {c}, {h}, {w})` float, NCHW |
| `dataflow_build_config.json` | FINN `DataflowBuildConfig` (paths relative to this folder) |
| `build.py` | the build (runs `finn_build/build.py`): FINN's steps plus the U-Net's own (`finn_build/steps.py`) |
| `finn_build/` | the build's package, one concept per module (targets, steps, folding, FIFOs, verification, ...: see its `__init__.py`) |
| `host.py` | the board's host program (runs `finn_build/host.py`): volume in, mask out (below) |
| `input.npy`, `expected_output.npy` | {n} real slices and the PyTorch QuantU-Net's logits on them |

## Run

With FINN on the path (`FINN_ROOT` set; in FINN's Docker container, or the environment the project's
`scripts/install_finn.sh` makes):

    python build.py --steps-until step_hw_codegen   # no Vivado: folding, FIFOs, verification, estimates, HLS/RTL code
    python build.py                                 # the full build, inside FINN's Docker with Vivado

Steps that need Vivado/Vitis and are not exercised without it: {', '.join(f'`{s}`' for s in VIVADO_STEPS)}.
A build never drops into a debugger: `output/build_status.json` says `ok`, or `failed` with the step and the
reason (also printed), and `build.py` exits non-zero.

What the steps leave in `output/`:

| file | what |
|---|---|
| `folding_config.json` | PE/SIMD per layer, keyed by FINN's node names, chosen by `step_unet_folding` for the target |
| `report/folding_report.json` | target, estimated slices/s, bottleneck layer, the design's resources by source and the budget |
| `report/fifo_depths.json` | every FIFO: producer, consumer, words, depth, memory; interval, latency; resources of the final graph |
| `report/estimate_*.json` | FINN's own estimate reports (cycles and resources per layer; its FIFO figures are not used, below) |
| `verification_output/folded_integer.json` | the folded graph's integer output against the streamlined graph's |
| `verification_output/folded_cppsim.json` | the same in FINN's cppsim of the HLS layers (where HLS headers exist) |
| `host_tail.json` | the accelerator's input/output datatypes as the final graph has them and the host's operations (below) |
| `codegen/` | generated HLS/RTL code (unless `FINN_BUILD_DIR` is set) |

To fold by hand, copy `output/folding_config.json`, edit it and give it as `folding_config_file` in
`dataflow_build_config.json`: node names that are not in the graph are refused. A target no folding reaches is
an error naming the slowest layer; a target that only fits over the resource budget gets the fastest folding
within it (`target_met: false` in the folding report).

## Verification

`step_unet_verify_folded` executes the folded graph (FINN's Python execution of every hardware layer) and the
streamlined graph before any hardware conversion (`step_unet_channels_last`) on every slice of `input.npy`, and
compares the accelerator's integer output with the streamlined graph's value for value: one differing value fails
the build, naming the first layer whose output differs. Width converters and FIFOs pass data through unchanged.
`step_unet_verify_cppsim` does the same with FINN's C++ simulation of every HLS layer (the generated C++ itself,
compiled with g++) on the first `unet_cppsim_slices` slices ({cfg['unet_cppsim_slices']} here) where HLS headers are
found under `HLS_PATH`: Vitis', or the open-source ones the project's `scripts/install_finn.sh` sets up (which
also sets `XILINX_VIVADO` to a path naming a release before 2024.2: FINN's cppsim compile reads that version).
Every HLS layer compiles for a few seconds to half a minute; 0 turns it off.

## FIFOs: two ways to size them

A U-Net's skip connections need deep FIFOs: the fork at each level writes the skip branch while the down-and-up
path has not yet produced the matching pixels, so the skip FIFO must hold everything in flight for that path's
whole latency. Undersized, the fork blocks, the down path starves and the concat waits: the accelerator deadlocks
(FINN issue #1094).

1. **Here, without Vivado (default, `auto_fifo_depths: false`)**: `step_unet_fifo_depths` inserts FINN's width
   converters and runs the FIFO model (`finn_build/fifo_model.py`), a stream-level model of the folded graph: each
   layer's FINN cycle estimate, its raster-order data dependencies (window generators, padding, upsampling, forks,
   concats), frames fed at the folding's interval. Each FIFO gets the most words its stream holds in that
   schedule, so no layer waits for space and frames stream at the interval; FINN's own `InsertFIFO` writes the
   depths (`depth`, `impl_style` rtl up to 256 words, else an `axis_data_fifo` with `ram_style`
   `{cfg['large_fifo_mem_style']}`: {memory}), `split_large_fifos` splits them into `axis_data_fifo`s of at most
   32,768 words. A graph whose FIFOs cannot complete a frame (a cycle in the dependencies, a FIFO larger than any
   memory of the part) stops the build naming the FIFO. The model is a transaction-level estimate (whole pixels,
   FINN's cycle estimates), not a simulation of the RTL.
2. **With Vivado**: set `auto_fifo_depths: true`. `step_unet_fifo_depths` then inserts only the width converters
   (and still reports the model's depths), and FINN's `step_set_fifo_depths` sizes every FIFO by RTL simulation
   (`auto_fifo_strategy`, `largefifo_rtlsim` by default). Prefer it where Vivado exists; compare its
   `final_hw_config.json` with `report/fifo_depths.json`.

FIFO memory is counted the way Vivado builds it: an `axis_data_fifo`'s data width is whole bytes (a 4-bit word
takes 8 bits), in RAMB18 (the fewest over their aspect ratios) or URAM288 (4K x 72); a shift-register FIFO in
LUTs. So skip forks and concats are folded to streams a whole number of bytes wide. The model asks for no stall
anywhere, which is more than deadlock freedom needs: FIFOs on a plain chain of layers (no fork) could be
shallower where the producer may wait. FINN {FINN_COMMIT}'s own `StreamingFIFO` estimate compares a boolean with strings (a depth-2 FIFO counts as 1
BRAM18 and 1 URAM), so its FIFO figures in `report/estimate_*.json` are left out of every budget here.

## Output: what the host does

The accelerator takes the slice as `(1, {h}, {w}, {c})` (NHWC) float32 values (the percentile-scaled image the
network was trained on; the first layer quantizes them to 8 bits{_channels_note(c)}) and streams out `(1, {h}, {w}, 1)` integer
accumulators of the 1x1 head (NHWC, datatype in `host_tail.json`, read from the final graph). The host finishes
the network exactly as `output/intermediate_models/dataflow_parent.onnx` does, with the constants listed in
`host_tail.json` (`finn_build/host_tail.py`'s `apply_host_tail`):

    logits = transpose(y, (0, 3, 1, 2)) * scale + bias     # (1, 1, {h}, {w}) logits
    mask = logits > 0                                      # logit > 0 is tumor; no sigmoid on the FPGA

## On the board: `host.py`

After the full build, copy this folder (with `output/deploy/`, `output/host_tail.json`) to the PYNQ board, where
`monai_quantunet` is installed (it brings torch, MONAI and SimpleITK), and run

    python host.py volume.nii.gz mask.nii.gz          # or .nrrd in and/or out

The volume goes through the bundle's own inference chain (`monai_quantunet.inference.segment_volume`: loading,
orientation, percentile scaling, in-plane resize to {h} x {w}, slice by slice, inversion to the input's geometry,
`logit > 0`) with the accelerator as its network: each slice through FINN's generated driver
(`output/deploy/driver`, bitfile `output/deploy/bitfile/finn-accel.bit`; `--driver`, `--bitfile`), then the host
tail above. The mask is written in the input's voxel grid, spacing, origin and direction. Without a board,
`--finn-python PYTHON` (a Python with FINN, e.g. the project's `.finn/venv/bin/python`) replaces the accelerator
by FINN's Python execution of the built graph (`python build.py --execute IN.npy OUT.npy`), which is how the
project tests this program.
"""
