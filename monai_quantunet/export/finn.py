"""The FINN build folder: QONNX model, build config, custom U-Net build script, folding config, test vectors.

FINN is Docker-only, so nothing here imports it: the folder is written for a FINN ``dev`` container
(see the folder's README.md) and ``build.py`` (a copy of :mod:`monai_quantunet.export.finn_build`) imports
FINN inside its functions.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

__all__ = ["DEFAULT_BOARD", "FINN_VERSION", "QONNX_COMMIT", "build_config", "folding_config", "write_finn_folder"]

DEFAULT_BOARD = "Pynq-Z1"  # Zynq-7020: small, low power, FINN's reference board
FINN_VERSION = "FINN dev branch (April 2026)"
QONNX_COMMIT = "f5c9819"  # the qonnx FINN dev pins (DESIGN.md, U-Net rule 7)
BUILD_SCRIPT = Path(__file__).with_name("finn_build.py")

# Fully serial folding (PE = SIMD = 1): the smallest design, a wearable's starting point. Raise per node
# (keys are node names after step_specialize_layers) for throughput. Node types are listed because
# ApplyConfig sets defaults on every custom node of a listed type, and not every type has PE or SIMD.
_PE_TYPES = ["MVAU_hls", "MVAU_rtl", "Thresholding_hls", "Thresholding_rtl", "DuplicateStreams_hls",
             "StreamingMaxPool_hls", "AddStreams_hls"]
_SIMD_TYPES = ["MVAU_hls", "MVAU_rtl", "ConvolutionInputGenerator_hls", "ConvolutionInputGenerator_rtl",
               "FMPadding_hls", "FMPadding_rtl", "FMPadding_Pixel_hls", "StreamingConcat_hls"]


def folding_config() -> dict:
    """FINN ``folding_config_file`` contents (rule 6: ``target_fps`` folding crashes on StreamingConcat)."""
    return {"Defaults": {"PE": [1, _PE_TYPES], "SIMD": [1, _SIMD_TYPES]}}


def build_config(board: str | None = DEFAULT_BOARD, fpga_part: str | None = None, clk_period_ns: float = 10.0,
                 target_fps: int = 1) -> dict:
    """``dataflow_build_config.json`` contents; paths are relative to the folder (``build.py`` resolves them).

    ``board`` gives a Zynq bitfile, PYNQ driver and deployment package; with ``fpga_part`` alone (no board)
    the build stops at out-of-context synthesis. ``target_fps`` is recorded for reference only: the
    folding comes from ``folding_config.json``.
    """
    if bool(board) == bool(fpga_part):
        raise ValueError(f"give exactly one of board or fpga_part (got board={board!r}, fpga_part={fpga_part!r})")
    outputs = ["estimate_reports", "stitched_ip", "rtlsim_performance"]
    outputs += ["bitfile", "pynq_driver", "deployment_package"] if board else ["out_of_context_synth"]
    target = {"board": board} if board else {"fpga_part": fpga_part}
    return {
        "output_dir": "output",
        "synth_clk_period_ns": clk_period_ns,
        **target,
        "shell_flow_type": "vivado_zynq",
        "target_fps": target_fps,
        "folding_config_file": "folding_config.json",
        "auto_fifo_depths": True,
        "generate_outputs": outputs,
        "verify_steps": ["initial_python", "folded_hls_cppsim", "stitched_ip_rtlsim"],
        "verify_input_npy": "input.npy",
        "verify_expected_output_npy": "expected_output.npy",
        "save_intermediate_models": True,
    }


def write_finn_folder(folder: str | Path, qonnx_path: str | Path, example_input: np.ndarray,
                      expected_output: np.ndarray, **config_kwargs) -> Path:
    """Write the FINN build folder.

    ``example_input`` ``(1, C, H, W)`` float32 and ``expected_output`` ``(1, out, H, W)``: the QONNX graph's
    logits on it (FINN's verification vectors). ``config_kwargs`` go to :func:`build_config`.
    """
    folder = Path(folder)
    folder.mkdir()
    cfg = build_config(**config_kwargs)
    shutil.copyfile(qonnx_path, folder / "model.onnx")
    shutil.copyfile(BUILD_SCRIPT, folder / "build.py")
    (folder / "dataflow_build_config.json").write_text(json.dumps(cfg, indent=2))
    (folder / "folding_config.json").write_text(json.dumps(folding_config(), indent=2))
    np.save(folder / "input.npy", np.asarray(example_input, dtype=np.float32))
    np.save(folder / "expected_output.npy", np.asarray(expected_output, dtype=np.float32))
    (folder / "README.md").write_text(_readme(cfg, tuple(example_input.shape)))
    return folder


def _readme(cfg: dict, input_shape: tuple[int, ...]) -> str:
    target = f"board `{cfg['board']}`" if cfg.get("board") else f"FPGA part `{cfg['fpga_part']}`"
    return f"""# FINN build folder: QuantU-Net

Targets: {FINN_VERSION} with qonnx commit {QONNX_COMMIT} (the qonnx FINN `dev` pins; the registry's qonnx 1.0.0
changed `MultiThreshold`'s default data layout and makes FINN mis-convert NCHW thresholds). FINN `main`
(v0.10.1) lacks the concat transformations this U-Net needs. Build target: {target},
clock {cfg['synth_clk_period_ns']} ns.

| file | what |
|---|---|
| `model.onnx` | the QONNX model (Brevitas export, qonnx-cleaned), input `{input_shape}` float, NCHW |
| `dataflow_build_config.json` | FINN `DataflowBuildConfig` (paths relative to this folder) |
| `build.py` | the build with the U-Net's custom steps |
| `folding_config.json` | PE/SIMD = 1 everywhere (smallest design); raise per node for speed |
| `input.npy`, `expected_output.npy` | one real slice and the QONNX graph's logits on it (FINN's `verify_steps`) |

## Run

Inside FINN's Docker container (`./run-docker.sh` from a FINN `dev` checkout, with this folder mounted):

    cd <this folder>
    python build.py                                             # everything in generate_outputs
    python build.py --steps-until step_generate_estimate_reports  # resource estimates only, no Vivado

`build_dataflow <this folder>` alone runs FINN's default steps, which fail on a U-Net (max-pool, concat,
upsampling and skip forks stay off the hardware): use `build.py`, which calls `build_dataflow_cfg` with
custom steps (NCHW streamlining to a fixed point, channels-last, explicit `InferUpsample` /
`InferPixelPaddingDeconv` / `InferConcatLayer` / `InferDuplicateStreamsLayer` before convert-to-HW).
`target_fps` is not used for folding: `step_target_fps_parallelization` crashes on StreamingConcat.
`auto_fifo_depths` stays on (undersized skip FIFOs deadlock a U-Net on the board).

## Output

The graph ends at the logits `(1, 1, H, W)`: **logit > 0 is the tumor mask** (no sigmoid on the FPGA).
The final transpose back to NCHW and the logits' scale and bias run on the host (the parent model of
`output/intermediate_models/dataflow_parent.onnx`).
"""
