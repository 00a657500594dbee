"""MONAI transform chains shared by the bundle, the demo, the MONAI Label app and the benchmarks.

Volumes are 3D ``(C, X, Y, Z)`` with axial slices along Z (after ``Orientationd("RAS")``). The network sees
2D slices resized in-plane to ``spatial_size`` and intensity-scaled per volume to [0, 1] between the 0.5th and
99.5th percentiles (robust to the scanner's range; MRI has no absolute units). With ``context_slices`` k > 1
(2.5D), :func:`stack_context_slices` makes each slice's k neighbours its input channels.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import (
    Compose,
    EnsureChannelFirstd,
    EnsureTyped,
    LoadImaged,
    MapTransform,
    Orientationd,
    RandAdjustContrastd,
    RandAffined,
    RandFlipd,
    RandGaussianNoised,
    RandScaleIntensityd,
    Resized,
    ScaleIntensityRangePercentilesd,
)

__all__ = [
    "CheckVolumed",
    "check_context_slices",
    "stack_context_slices",
    "load_transforms",
    "augment_transforms",
    "val_transforms",
    "inference_transforms",
    "evaluation_transforms",
    "DEFAULT_SPATIAL_SIZE",
]

DEFAULT_SPATIAL_SIZE = (128, 128)


class CheckVolumed(MapTransform):
    """Validate a loaded case: 3D image, finite voxels, label shaped as the image with values in {0, 1}.

    A label stored as 0/255 (the Kaggle release's masks) is binarised (``> 0``) when ``binarize_label`` is
    True; any other value set raises. Errors name the case (``image_meta_dict`` / ``filename_or_obj``).
    """

    def __init__(self, image_key: str = "image", label_key: str | None = "label", binarize_label: bool = True):
        super().__init__([image_key] + ([label_key] if label_key else []), allow_missing_keys=True)
        self.image_key = image_key
        self.label_key = label_key
        self.binarize_label = binarize_label

    def __call__(self, data: dict) -> dict:
        d = dict(data)
        image = d[self.image_key]
        case = _case_name(image)
        if image.ndim != 4:  # channel-first 3D
            raise ValueError(
                f"{case}: expected a 3D volume, got an image of shape {tuple(image.shape[1:])} (2D images are not "
                "supported; stack slices into a volume)"
            )
        if not torch.isfinite(torch.as_tensor(image)).all():
            raise ValueError(f"{case}: image contains NaN or infinite voxels")
        if self.label_key and self.label_key in d:
            label = d[self.label_key]
            if tuple(label.shape[1:]) != tuple(image.shape[1:]):
                raise ValueError(
                    f"{case}: label shape {tuple(label.shape[1:])} differs from image shape {tuple(image.shape[1:])}"
                )
            values = torch.unique(torch.as_tensor(label))
            if not set(values.tolist()) <= {0, 1}:
                if not self.binarize_label or (values < 0).any():
                    raise ValueError(f"{case}: label values must be 0 or 1, found {values.tolist()[:10]}")
                label = label > 0
            d[self.label_key] = label.to(torch.uint8) if hasattr(label, "to") else label
        return d


def check_context_slices(context_slices: int) -> int:
    """``context_slices`` if it is an odd integer >= 1, else ``ValueError`` naming it."""
    if isinstance(context_slices, bool) or not isinstance(context_slices, int) or context_slices < 1 \
            or context_slices % 2 == 0:
        raise ValueError(f"context_slices must be an odd integer >= 1 (the slice and as many neighbours on each side), "
                         f"got {context_slices!r}")
    return context_slices


def stack_context_slices(volume: torch.Tensor, context_slices: int) -> torch.Tensor:
    """2.5D input: ``(..., C, X, Y, Z)`` -> ``(..., C * k, X, Y, Z)``, ``k = context_slices``.

    Channel ``c * k + j`` of slice ``z`` is channel ``c`` of slice ``z + j - k // 2``, the first and last slice
    replicated beyond the volume's ends. ``k = 1`` returns ``volume`` itself. The one implementation of the
    stacking: training slices (``SliceDataset``), the slice inferer and the export's example slices use it.
    """
    k = check_context_slices(context_slices)
    if k == 1:
        return volume
    depth = volume.shape[-1]
    index = (torch.arange(depth)[None] + torch.arange(k)[:, None] - k // 2).clamp(0, depth - 1)  # (k, Z)
    stacked = volume.index_select(-1, index.flatten().to(volume.device))  # (..., C, X, Y, k * Z)
    stacked = stacked.reshape(*volume.shape[:-1], k, depth).movedim(-2, -4)  # (..., C, k, X, Y, Z)
    return stacked.flatten(-5, -4)


def _case_name(img) -> str:
    meta = getattr(img, "meta", {}) or {}
    return str(meta.get("filename_or_obj", "image"))


def load_transforms(keys: KeysCollection = ("image", "label"), binarize_label: bool = True) -> list:
    """Load, channel-first, RAS orientation, checks, percentile scaling of the image to [0, 1]."""
    keys = [keys] if isinstance(keys, str) else list(keys)
    label_key = "label" if "label" in keys else None
    return [
        LoadImaged(keys=keys, image_only=True),
        EnsureChannelFirstd(keys=keys),
        CheckVolumed(image_key="image", label_key=label_key, binarize_label=binarize_label),
        Orientationd(keys=keys, axcodes="RAS"),
        ScaleIntensityRangePercentilesd(
            keys="image", lower=0.5, upper=99.5, b_min=0.0, b_max=1.0, clip=True, relative=False
        ),
        EnsureTyped(keys=keys, dtype=torch.float32, track_meta=True),
    ]


def _resize_inplane(keys: Sequence[str], spatial_size: Sequence[int]) -> Resized:
    modes = ["bilinear" if k == "image" else "nearest" for k in keys]
    return Resized(keys=keys, spatial_size=(*spatial_size, -1), mode=modes, anti_aliasing=False)


def augment_transforms(prob: float = 1.0) -> Compose:
    """2D augmentation of ``{"image", "label"}`` slices ``(C, H, W)``: flips, small affine, intensity jitter,
    noise (what suits MRI). ``prob`` scales every transform's probability (0 disables augmentation)."""
    keys = ["image", "label"]
    return Compose(
        [
            RandFlipd(keys=keys, prob=0.5 * prob, spatial_axis=0),
            RandFlipd(keys=keys, prob=0.5 * prob, spatial_axis=1),
            RandAffined(
                keys=keys,
                prob=0.3 * prob,
                rotate_range=np.pi / 12,
                scale_range=0.1,
                mode=("bilinear", "nearest"),
                padding_mode="zeros",
            ),
            RandScaleIntensityd(keys="image", factors=0.1, prob=0.3 * prob),
            RandAdjustContrastd(keys="image", gamma=(0.8, 1.25), prob=0.3 * prob),
            RandGaussianNoised(keys="image", std=0.02, prob=0.2 * prob),
            EnsureTyped(keys=keys, dtype=torch.float32, track_meta=False),
        ]
    )


def val_transforms(spatial_size: Sequence[int] = DEFAULT_SPATIAL_SIZE) -> Compose:
    """Whole volumes, resized in-plane to ``spatial_size`` (the validation Dice is computed at that size)."""
    keys = ["image", "label"]
    return Compose(load_transforms(keys) + [_resize_inplane(keys, spatial_size)])


def inference_transforms(spatial_size: Sequence[int] = DEFAULT_SPATIAL_SIZE) -> Compose:
    """Image only; invertible (``Invertd`` / ``Restored``) back to the input's geometry."""
    return Compose(load_transforms("image") + [_resize_inplane(["image"], spatial_size)])


def evaluation_transforms(spatial_size: Sequence[int] = DEFAULT_SPATIAL_SIZE) -> Compose:
    """Image and label; only the image is resized, so the inverted prediction meets the label at full size."""
    return Compose(load_transforms(["image", "label"]) + [_resize_inplane(["image"], spatial_size)])
