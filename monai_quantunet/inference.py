"""Slice-wise inference of a 2D network over 3D volumes ``(B, C, X, Y, Z)``, axial slices along Z.

The segmentation chain every consumer uses (bundle inference and evaluation, the MONAI Label app, benchmarks,
tests): ``inference_transforms`` (load, RAS, percentile scaling, in-plane resize) -> :func:`slice_inferer` ->
:func:`mask_postprocessing` (logits inverted to the input's geometry with bilinear interpolation, then
``logit > 0``). :func:`segment_volume` runs it on one file. A 2.5D network (``context_slices`` k > 1) sees each
slice with its neighbours as input channels: the inferer stacks them (``transforms.stack_context_slices``), so the
pre-processing stays invertible.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from monai.inferers import SliceInferer
from monai.transforms import AsDiscreted, Compose, Invertd

from monai_quantunet.transforms import (
    DEFAULT_SPATIAL_SIZE,
    check_context_slices,
    inference_transforms,
    stack_context_slices,
)

__all__ = ["ContextSliceInferer", "slice_inferer", "predict_volume", "mask_postprocessing", "segment_volume"]


class ContextSliceInferer(SliceInferer):
    """MONAI ``SliceInferer`` over Z whose volume ``(B, C, X, Y, Z)`` first becomes ``(B, C * k, X, Y, Z)``: each
    slice with its ``k = context_slices`` neighbours (:func:`~monai_quantunet.transforms.stack_context_slices`;
    ``k = 1``: the volume as it is)."""

    def __init__(self, context_slices: int = 1, **kwargs) -> None:
        self.context_slices = check_context_slices(context_slices)
        super().__init__(**kwargs)

    def __call__(self, inputs: torch.Tensor, network, *args, **kwargs):
        return super().__call__(stack_context_slices(inputs, self.context_slices), network, *args, **kwargs)


def slice_inferer(spatial_size: Sequence[int] = DEFAULT_SPATIAL_SIZE, sw_batch_size: int = 32,
                  context_slices: int = 1) -> ContextSliceInferer:
    """The inferer running the 2D net on each Z slice (volumes already resized in-plane), with
    ``context_slices`` neighbouring slices as its input channels."""
    return ContextSliceInferer(context_slices, roi_size=tuple(spatial_size), sw_batch_size=sw_batch_size,
                               spatial_dim=2, progress=False)


@torch.no_grad()
def predict_volume(
    network: nn.Module, volume: torch.Tensor, spatial_size: Sequence[int] = DEFAULT_SPATIAL_SIZE, sw_batch_size: int = 32,
    context_slices: int = 1,
) -> torch.Tensor:
    """Logits ``(B, 1, X, Y, Z)`` of a preprocessed volume ``(B, C, X, Y, Z)`` (see ``inference_transforms``),
    each slice seen with its ``context_slices`` neighbours."""
    if volume.ndim != 5:
        raise ValueError(f"expected a batch of 3D volumes (B, C, X, Y, Z), got shape {tuple(volume.shape)}")
    network.eval()
    return slice_inferer(spatial_size, sw_batch_size, context_slices)(volume, network)


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
                   guidance: Callable[[dict], dict] | None = None, context_slices: int = 1, **data) -> np.ndarray:
    """The segmentation chain on one volume file: boolean mask ``(X, Y, Z)`` in the file's voxel grid (IJK).

    ``guidance``: a transform applied after pre-processing (e.g. click maps), with ``data`` (e.g.
    ``foreground`` / ``background`` clicks) in its input dictionary. ``context_slices``: see :func:`slice_inferer`.
    """
    preprocessing = inference_transforms(spatial_size)
    d = {**preprocessing({"image": str(image_path)}), **data}
    if guidance is not None:
        d = guidance(d)
    network.eval()
    d["pred"] = slice_inferer(spatial_size, context_slices=context_slices)(d["image"][None], network)[0]
    return np.asarray(mask_postprocessing(preprocessing)(d)["pred"][0]) > 0
