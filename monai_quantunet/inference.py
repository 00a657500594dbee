"""Slice-wise inference of a 2D network over 3D volumes ``(B, C, X, Y, Z)``, axial slices along Z."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn as nn
from monai.inferers import SliceInferer

from monai_quantunet.transforms import DEFAULT_SPATIAL_SIZE

__all__ = ["slice_inferer", "predict_volume", "load_state_dict"]


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


def load_state_dict(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """A network state_dict from ``path`` (plain, or wrapped as ``{"model": ...}`` / ``{"state_dict": ...}``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found")
    ckpt = torch.load(path, map_location=map_location, weights_only=True)
    for key in ("model", "state_dict"):
        if isinstance(ckpt, dict) and isinstance(ckpt.get(key), dict):
            ckpt = ckpt[key]
    if not isinstance(ckpt, dict):
        raise ValueError(f"{path}: not a state_dict checkpoint")
    return ckpt
