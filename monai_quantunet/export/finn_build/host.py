"""Segment a volume with the FINN accelerator: the program of the FINN folder's ``host.py``.

    python host.py IMAGE MASK --bitfile deploy/bitfile/finn-accel.bit --driver deploy/driver   # on a PYNQ board
    python host.py IMAGE MASK --finn-python .finn/venv/bin/python   # no board: FINN's Python execution instead

IMAGE (NIfTI or NRRD) goes through the bundle's own inference chain (``monai_quantunet.inference.segment_volume``:
loading, orientation, percentile scaling, in-plane resize, slice-wise inference, inversion to the input's geometry,
``logit > 0``) with the accelerator as its 2D network: each slice is sent NHWC through FINN's generated PYNQ driver
(``driver.py`` / ``driver_base.py`` of ``step_make_driver``), and the host finishes the network with
``output/host_tail.json``. MASK (uint8, the input's voxel grid, spacing, origin and direction) is written by
SimpleITK in the format its extension names. Needs ``monai_quantunet`` (and so torch and MONAI) on the host; the
accelerator's shape, datatype and host tail come from the build's ``output/`` folder.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from . import FOLDER
from .host_tail import apply_host_tail

__all__ = ["AcceleratorNetwork", "main", "pynq_accelerator", "python_accelerator", "segment_file"]


class AcceleratorNetwork(nn.Module):
    """The accelerator as the 2D network of the bundle's slice-wise inference: slices ``(B, C, H, W)`` -> logits.

    ``execute``: NHWC float32 slices ``(B, H, W, C)`` -> the accelerator's integer outputs ``(B, H, W, 1)``;
    ``host_tail``: the contents of ``host_tail.json``.
    """

    def __init__(self, execute: Callable[[np.ndarray], np.ndarray], host_tail: dict) -> None:
        super().__init__()
        self.execute, self.host_tail = execute, host_tail
        self.input_shape = tuple(host_tail["accelerator_input"]["shape"][1:])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = np.ascontiguousarray(x.detach().cpu().numpy().transpose(0, 2, 3, 1), dtype=np.float32)
        if x.shape[1:] != self.input_shape:
            raise ValueError(f"the accelerator takes NHWC slices {self.input_shape}, got {x.shape[1:]}")
        y = np.asarray(self.execute(x)).reshape(len(x), *self.host_tail["accelerator_output"]["shape"][1:])
        return torch.from_numpy(apply_host_tail(y, self.host_tail["host_ops"]))


def pynq_accelerator(bitfile: str | Path, driver_dir: str | Path) -> Callable[[np.ndarray], np.ndarray]:
    """The board's accelerator through FINN's generated driver (``FINNExampleOverlay``), one slice at a time."""
    sys.path.insert(0, str(driver_dir))
    from driver import io_shape_dict  # noqa: E402  (FINN's generated driver.py)
    from driver_base import FINNExampleOverlay  # noqa: E402

    overlay = FINNExampleOverlay(str(bitfile), "zynq-iodma", io_shape_dict, batch_size=1)
    return lambda x: np.concatenate([overlay.execute(s[None]) for s in x])


def python_accelerator(finn_python: str | Path, folder: str | Path = FOLDER) -> Callable[[np.ndarray], np.ndarray]:
    """The accelerator replaced by FINN's Python execution of the built graph (``build.py --execute``), run by
    ``finn_python`` (a Python with FINN; ``FINN_ROOT`` from the environment or ``<its venv>/../finn``)."""
    env = dict(os.environ)
    env.setdefault("FINN_ROOT", str(Path(finn_python).absolute().parents[2] / "finn"))

    def execute(x: np.ndarray) -> np.ndarray:
        with tempfile.TemporaryDirectory() as tmp:
            np.save(Path(tmp) / "in.npy", x)
            subprocess.run([str(finn_python), "build.py", "--execute", str(Path(tmp) / "in.npy"),
                            str(Path(tmp) / "out.npy")], cwd=folder, env=env, check=True, capture_output=True)
            return np.load(Path(tmp) / "out.npy")

    return execute


def segment_file(image: str | Path, mask: str | Path, execute: Callable[[np.ndarray], np.ndarray],
                 host_tail: dict) -> np.ndarray:
    """Segment ``image`` with the accelerator ``execute``; writes ``mask`` in its geometry and returns it (IJK)."""
    import SimpleITK as sitk

    from monai_quantunet.inference import segment_volume

    _, h, w, c = host_tail["accelerator_input"]["shape"]
    labels = segment_volume(AcceleratorNetwork(execute, host_tail), image, (h, w), context_slices=c)
    reference = sitk.ReadImage(str(image))
    out = sitk.GetImageFromArray(labels.astype(np.uint8).transpose(2, 1, 0))  # IJK -> SimpleITK's KJI array
    out.CopyInformation(reference)
    sitk.WriteImage(out, str(mask), True)
    return labels


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("image", help="input volume (.nii, .nii.gz, .nrrd)")
    parser.add_argument("mask", help="output mask (its extension picks the format)")
    parser.add_argument("--bitfile", default=str(FOLDER / "output" / "deploy" / "bitfile" / "finn-accel.bit"))
    parser.add_argument("--driver", default=str(FOLDER / "output" / "deploy" / "driver"),
                        help="FINN's generated driver folder (driver.py, driver_base.py)")
    parser.add_argument("--finn-python", default=None,
                        help="no board: run FINN's Python execution of the built graph with this Python instead")
    parser.add_argument("--host-tail", default=str(FOLDER / "output" / "host_tail.json"))
    args = parser.parse_args(argv)
    host_tail = json.loads(Path(args.host_tail).read_text())
    execute = python_accelerator(args.finn_python) if args.finn_python else pynq_accelerator(args.bitfile, args.driver)
    labels = segment_file(args.image, args.mask, execute, host_tail)
    print(f"{args.mask}: {int(labels.sum())} of {labels.size} voxels segmented")
    return 0

