"""MONAI transform chains shared by the bundle, the demo, the MONAI Label app and the benchmarks.

Volumes are 3D ``(C, X, Y, Z)`` with axial slices along Z (after ``Orientationd("RAS")``). The network sees
2D slices resized in-plane to ``spatial_size`` and intensity-scaled per volume to [0, 1]
(:class:`ScaleIntensityForegroundPercentilesd`: the volume's 0.5th percentile -> 0, the 99.5th percentile of the
voxels above it -> 1; MRI has no absolute units, and a skull-stripped volume that is mostly zero background keeps
the scale of its brain). With ``context_slices`` k > 1 (2.5D), :func:`stack_context_slices` makes each slice's k
neighbours its input channels.

Other sites' scans are often skull-stripped and show a smaller brain in the field of view: the training
augmentation simulates both (:class:`RandSkullStripd` with :func:`approximate_brain_mask`, and a zoom-out), and
:func:`skull_strip_volume` makes skull-stripped copies of labelled volumes for validation.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import (
    Compose,
    RandomizableTransform,
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
    RandZoomd,
    Resized,
    ScaleIntensityRange,
)
from scipy import ndimage

__all__ = [
    "CheckVolumed",
    "ScaleIntensityForegroundPercentilesd",
    "approximate_brain_mask",
    "RandSkullStripd",
    "skull_strip_volume",
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


class ScaleIntensityForegroundPercentilesd(MapTransform):
    """Scale ``keys`` per volume to [0, 1], clipped: the ``lower`` percentile of all voxels -> 0 (the background
    level: 0 for zero-filled or skull-stripped scans), the ``upper`` percentile of the voxels above that level -> 1.

    On a head scan with little background this is the volume-wide ``lower``-``upper`` percentile scaling (on the
    90 LGG volumes the upper point moves up by 1.3% on average, 6.8% at most); on a skull-stripped scan where most voxels are zero
    background the volume-wide 99.5th percentile falls inside the brightest tissue (the lesion), this one does not.
    """

    def __init__(self, keys: KeysCollection, lower: float = 0.5, upper: float = 99.5, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        if not 0 <= lower < upper <= 100:
            raise ValueError(f"need 0 <= lower < upper <= 100, got lower={lower}, upper={upper}")
        self.lower, self.upper = lower, upper

    def __call__(self, data: dict) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            values = torch.as_tensor(d[key]).detach().float().flatten().cpu().numpy()
            low = float(np.percentile(values, self.lower))
            foreground = values[values > low]
            high = float(np.percentile(foreground, self.upper)) if foreground.size else low
            d[key] = ScaleIntensityRange(a_min=low, a_max=high, b_min=0.0, b_max=1.0, clip=True)(d[key])
        return d


def approximate_brain_mask(image: np.ndarray, erosion: float = 10.0, threshold: float = 0.1) -> np.ndarray:
    """A stand-in for brain extraction on axial slices: boolean mask shaped as ``image``, ``(H, W)`` or
    ``(X, Y, Z)`` with slices along the last axis.

    Per slice: the head is the voxels above ``threshold`` x the 99th percentile of the image's non-zero voxels,
    holes filled (FLAIR's dark skull lies between bright scalp and brain); the brain is what lies more than
    ``erosion`` voxels inside the head (an in-plane Euclidean erosion that strips scalp and skull).
    """
    image = np.asarray(image, dtype=np.float32)
    volume = image[..., None] if image.ndim == 2 else image
    nonzero = volume[volume > 0]
    level = threshold * np.percentile(nonzero, 99) if nonzero.size else np.inf
    mask = np.zeros(volume.shape, dtype=bool)
    for z in range(volume.shape[-1]):
        head = ndimage.binary_fill_holes(volume[..., z] > level)
        mask[..., z] = ndimage.distance_transform_edt(head) > erosion
    return mask[..., 0] if image.ndim == 2 else mask


def skull_strip_volume(image: np.ndarray, label: np.ndarray | None = None, erosion: float = 10.0,
                       threshold: float = 0.1, pad: int = 0) -> tuple[np.ndarray, np.ndarray | None]:
    """Skull-stripped copy of a volume ``(X, Y, Z)``: zero outside :func:`approximate_brain_mask` united with
    ``label`` (brain extraction keeps the lesion), then ``pad`` zero voxels added on each in-plane side (a smaller
    brain in the field of view). Returns ``(image, label)``, the label padded alike (``None`` stays ``None``)."""
    mask = approximate_brain_mask(image, erosion, threshold)
    if label is not None:
        mask |= np.asarray(label) > 0
    widths = [(pad, pad), (pad, pad), (0, 0)]
    stripped = np.pad(np.where(mask, image, 0).astype(np.asarray(image).dtype), widths)
    return stripped, (np.pad(label, widths) if label is not None else None)


class RandSkullStripd(RandomizableTransform, MapTransform):
    """Augmentation: with probability ``prob``, zero a 2D slice ``(C, H, W)`` outside its approximate brain
    (:func:`approximate_brain_mask` of the centre channel with an erosion drawn from ``erosion``, in pixels of
    the slice, united with the label's tumor), as skull-stripped scans from other sites look."""

    def __init__(self, image_key: str = "image", label_key: str | None = "label", prob: float = 0.3,
                 erosion: tuple[float, float] = (2.0, 8.0), threshold: float = 0.1) -> None:
        MapTransform.__init__(self, [image_key])
        RandomizableTransform.__init__(self, prob)
        self.image_key, self.label_key = image_key, label_key
        self.erosion, self.threshold = erosion, threshold
        self._erosion = erosion[0]

    def randomize(self, data=None) -> None:
        super().randomize(None)
        self._erosion = self.R.uniform(*self.erosion)

    def __call__(self, data: dict) -> dict:
        d = dict(data)
        self.randomize()
        if not self._do_transform:
            return d
        image = torch.as_tensor(d[self.image_key])
        mask = approximate_brain_mask(image[image.shape[0] // 2].cpu().numpy(), self._erosion, self.threshold)
        if self.label_key and self.label_key in d:
            mask |= torch.as_tensor(d[self.label_key])[0].cpu().numpy() > 0
        d[self.image_key] = d[self.image_key] * torch.as_tensor(mask, device=image.device)
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
    """Load, channel-first, RAS orientation, checks, foreground percentile scaling of the image to [0, 1]."""
    keys = [keys] if isinstance(keys, str) else list(keys)
    label_key = "label" if "label" in keys else None
    return [
        LoadImaged(keys=keys, image_only=True),
        EnsureChannelFirstd(keys=keys),
        CheckVolumed(image_key="image", label_key=label_key, binarize_label=binarize_label),
        Orientationd(keys=keys, axcodes="RAS"),
        ScaleIntensityForegroundPercentilesd(keys="image", lower=0.5, upper=99.5),
        EnsureTyped(keys=keys, dtype=torch.float32, track_meta=True),
    ]


def _resize_inplane(keys: Sequence[str], spatial_size: Sequence[int]) -> Resized:
    modes = ["bilinear" if k == "image" else "nearest" for k in keys]
    return Resized(keys=keys, spatial_size=(*spatial_size, -1), mode=modes, anti_aliasing=False)


def augment_transforms(prob: float = 1.0, skull_strip: float = 0.3, zoom_out: float = 0.3,
                       mask_keys: Sequence[str] = ("label",)) -> Compose:
    """2D augmentation of ``{"image", "label"}`` slices ``(C, H, W)``: simulated skull-stripping (probability
    ``skull_strip``), zoom-out to 60-100% of the size with zero padding (probability ``zoom_out``: a smaller brain
    in the field of view), flips, small affine, intensity jitter, noise. ``prob`` scales every probability (0
    disables augmentation). ``mask_keys``: the binary slices moved with the image (nearest interpolation), e.g.
    ``("label", "mask")`` for click training's current mask."""
    keys = ["image", *mask_keys]
    modes = ["bilinear"] + ["nearest"] * len(mask_keys)
    return Compose(
        [
            RandSkullStripd(prob=skull_strip * prob),
            RandZoomd(keys=keys, prob=zoom_out * prob, min_zoom=0.6, max_zoom=1.0, mode=modes,
                      padding_mode="constant", keep_size=True),
            RandFlipd(keys=keys, prob=0.5 * prob, spatial_axis=0),
            RandFlipd(keys=keys, prob=0.5 * prob, spatial_axis=1),
            RandAffined(
                keys=keys,
                prob=0.3 * prob,
                rotate_range=np.pi / 12,
                scale_range=0.1,
                mode=modes,
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
