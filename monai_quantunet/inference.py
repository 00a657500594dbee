"""Slice-wise inference of a 2D network over 3D volumes ``(B, C, X, Y, Z)``, axial slices along Z.

The segmentation chain every consumer uses (bundle inference and evaluation, the MONAI Label app, benchmarks,
tests): ``inference_transforms`` (load, RAS, percentile scaling, in-plane resize) -> :func:`slice_inferer` ->
:func:`mask_postprocessing` (logits inverted to the input's geometry with bilinear interpolation, then
``logit > 0``). :func:`segment_volume` runs it on one file.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from monai.inferers import SliceInferer
from monai.transforms import AsDiscreted, Compose, Invertd

from monai_quantunet.transforms import DEFAULT_SPATIAL_SIZE, inference_transforms

__all__ = ["slice_inferer", "predict_volume", "mask_postprocessing", "segment_volume"]


def slice_inferer(spatial_size: Sequence[int] = DEFAULT_SPATIAL_SIZE, sw_batch_size: int = 32) -> SliceInferer:
    """MONAI ``SliceInferer`` running the 2D net on each Z slice (volumes already resized in-plane)."""
    return SliceInferer(roi_size=tuple(spatial_size), sw_batch_size=sw_batch_size, spatial_dim=2, progress=False)


@torch.no_grad()
def predict_volume(
    network: nn.Module, volume: torch.Tensor, spatial_size: Sequence[int] = DEFAULT_SPATIAL_SIZE, sw_batch_size: int = 32
) -> torch.Tensor:
    """Logits ``(B, 1, X, Y, Z)`` of a preprocessed volume ``(B, C, X, Y, Z)`` (see ``inference_transforms``)."""
    if volume.ndim != 5:
        raise ValueError(f"expected a batch of 3D volumes (B, C, X, Y, Z), got shape {tuple(volume.shape)}")
    network.eval()
    return slice_inferer(spatial_size, sw_batch_size)(volume, network)


def mask_postprocessing(preprocessing: Compose, label_key: str | None = None) -> Compose:
    """Logits ``pred`` ``(1, X, Y, Z)`` -> binary mask in the input's geometry: inverted through
    ``preprocessing`` (bilinear), then ``logit > 0``. With ``label_key`` the label is inverted too (nearest),
    so evaluation meets the label at the input's resolution."""
    keys, origs, nearest = ["pred"], ["image"], [False]
    if label_key:
        keys, origs, nearest = keys + [label_key], origs + [label_key], nearest + [True]
    return Compose([
        Invertd(keys=keys, transform=preprocessing, orig_keys=origs, nearest_interp=nearest, to_tensor=True),
        AsDiscreted(keys="pred", threshold=0.0),
    ])


@torch.no_grad()
def segment_volume(network: nn.Module, image_path: str | Path, spatial_size: Sequence[int] = DEFAULT_SPATIAL_SIZE,
                   guidance: Callable[[dict], dict] | None = None, **data) -> np.ndarray:
    """The segmentation chain on one volume file: boolean mask ``(X, Y, Z)`` in the file's voxel grid (IJK).

    ``guidance``: a transform applied after pre-processing (e.g. click maps), with ``data`` (e.g.
    ``foreground`` / ``background`` clicks) in its input dictionary.
    """
    preprocessing = inference_transforms(spatial_size)
    d = {**preprocessing({"image": str(image_path)}), **data}
    if guidance is not None:
        d = guidance(d)
    network.eval()
    d["pred"] = slice_inferer(spatial_size)(d["image"][None], network)[0]
    return np.asarray(mask_postprocessing(preprocessing)(d)["pred"][0]) > 0
