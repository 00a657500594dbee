"""Clicks: parsing and mapping IJK clicks, click maps, the reach of a click, and the robot user's click placement.

A click is a voxel index. At the network's grid (RAS, in-plane ``spatial_size``, Z = axial slices) a click
``(x, y, z)`` is drawn as a 2D Gaussian (``sigma`` pixels, peak 1) on its slice ``z`` and, attenuated by
``slice_weights``, on the neighbouring slices (``(1.0, 0.6, 0.3)``: the click slice, +-1, +-2).

**Reach.** A click may change the mask only within its reach: the voxels whose axial slice is within
``reach_slices`` (2) of the click's slice and whose in-plane distance to the click is at most ``reach_radius``
(24) pixels of the network's grid (for a 256 x 256 volume resized to 128 x 128: 48 voxels). Far from every click the
current mask is kept unchanged (:mod:`monai_quantunet.interactive.guidance` enforces it).

**Robot user** (:func:`robot_click`): the click of the interactive-segmentation literature's protocol: the deepest
point (farthest from the border, Euclidean distance transform) of the largest connected error region; a missed
region (false negative) gets a foreground click, a false positive a background click.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

__all__ = [
    "DEFAULT_SIGMA",
    "DEFAULT_SLICE_WEIGHTS",
    "REACH_RADIUS",
    "REACH_SLICES",
    "reach_slices",
    "ClickError",
    "parse_clicks",
    "map_clicks",
    "gaussian_disc",
    "click_maps_3d",
    "reach_mask",
    "deepest_point",
    "robot_click",
]

DEFAULT_SIGMA = 3.0  # pixels at the network's resolution (128 x 128)
DEFAULT_SLICE_WEIGHTS = (1.0, 0.6, 0.3)  # click slice, +-1, +-2
REACH_RADIUS = 24.0  # pixels of the network's in-plane grid


def reach_slices(slice_weights: Sequence[float] = DEFAULT_SLICE_WEIGHTS) -> int:
    """Axial slices above and below a click's slice within its reach: as far as its click map extends."""
    return len(slice_weights) - 1


REACH_SLICES = reach_slices()  # 2


class ClickError(ValueError):
    """Malformed clicks or clicks outside the volume (an input error: the client should get a 4xx)."""


def parse_clicks(clicks, shape: Sequence[int], name: str = "clicks") -> np.ndarray:
    """Validate a list of IJK clicks against a volume ``shape``; return an ``(N, 3)`` float array.

    Accepts ``[]``, ``None``, ``[i, j, k]`` (one click) or ``[[i, j, k], ...]``. Raises :class:`ClickError` naming
    the first bad click: not three finite numbers, or outside ``[0, shape)`` (after rounding to the voxel).
    """
    if clicks is None or (isinstance(clicks, (list, tuple)) and len(clicks) == 0):
        return np.zeros((0, 3))
    try:
        arr = np.asarray(clicks, dtype=float)
    except (TypeError, ValueError) as e:
        raise ClickError(f"{name}: expected a list of [i, j, k] voxel indices, got {clicks!r}") from e
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[1] != 3:
        raise ClickError(f"{name}: expected a list of [i, j, k] voxel indices, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ClickError(f"{name}: clicks must be finite numbers, got {arr.tolist()}")
    vox = np.rint(arr)
    outside = ((vox < 0) | (vox >= np.asarray(shape)[None, :3])).any(axis=1)
    if outside.any():
        bad = arr[outside][0].tolist()
        raise ClickError(f"{name}: click {bad} is outside the volume (voxel indices must lie in [0, {list(shape[:3])}))")
    return arr


def map_clicks(clicks: np.ndarray, src_affine, dst_affine, dst_shape: Sequence[int]) -> np.ndarray:
    """Map IJK clicks from one voxel grid to another through world space; clamp to ``dst_shape``.

    ``src_affine`` / ``dst_affine``: 4x4 voxel-to-world matrices of the same convention (MONAI keeps both
    RAS). Used to follow an image through ``Orientationd`` and ``Resized``.
    """
    if len(clicks) == 0:
        return np.zeros((0, 3))
    src = np.asarray(src_affine, dtype=float)
    dst = np.asarray(dst_affine, dtype=float)
    hom = np.concatenate([np.asarray(clicks, dtype=float), np.ones((len(clicks), 1))], axis=1)
    out = (np.linalg.inv(dst) @ src @ hom.T).T[:, :3]
    return np.clip(out, 0, np.asarray(dst_shape[:3], dtype=float) - 1)


def gaussian_disc(shape_2d: Sequence[int], centre: Sequence[float], sigma: float = DEFAULT_SIGMA) -> torch.Tensor:
    """``exp(-d^2 / (2 sigma^2))`` around ``centre`` (x, y) on a ``shape_2d`` grid, as float32."""
    xs = torch.arange(shape_2d[0], dtype=torch.float32)[:, None]
    ys = torch.arange(shape_2d[1], dtype=torch.float32)[None, :]
    d2 = (xs - float(centre[0])) ** 2 + (ys - float(centre[1])) ** 2
    return torch.exp(-d2 / (2.0 * sigma**2))


def click_maps_3d(
    shape: Sequence[int],
    foreground: np.ndarray,
    background: np.ndarray,
    sigma: float = DEFAULT_SIGMA,
    slice_weights: Sequence[float] = DEFAULT_SLICE_WEIGHTS,
) -> torch.Tensor:
    """Guidance ``(2, X, Y, Z)``: channel 0 foreground, 1 background; clicks in this grid's voxel indices."""
    out = torch.zeros((2, *shape[:3]), dtype=torch.float32)
    for ch, clicks in enumerate((foreground, background)):
        for x, y, z in np.asarray(clicks, dtype=float).reshape(-1, 3):
            disc = gaussian_disc(shape[:2], (x, y), sigma)
            zc = int(round(z))
            for dz, w in enumerate(slice_weights):
                for zz in {zc - dz, zc + dz}:
                    if 0 <= zz < shape[2] and w > 0:
                        out[ch, :, :, zz] = torch.maximum(out[ch, :, :, zz], w * disc)
    return out


def reach_mask(points: np.ndarray, clicks: np.ndarray, radius: float = REACH_RADIUS, slices: int = REACH_SLICES) -> np.ndarray:
    """Which of ``points`` (``(..., 3)`` coordinates in the network's grid) lie within the reach of a click.

    ``clicks``: ``(N, 3)`` in the same grid. Reach: ``|z - round(z_click)| <= slices`` (z rounded to its slice)
    and in-plane distance ``<= radius``. Returns a boolean array of ``points.shape[:-1]``.
    """
    points = np.asarray(points, dtype=float)
    out = np.zeros(points.shape[:-1], dtype=bool)
    for cx, cy, cz in np.asarray(clicks, dtype=float).reshape(-1, 3):
        near_slice = np.abs(np.rint(points[..., 2]) - np.rint(cz)) <= slices
        near = (points[..., 0] - cx) ** 2 + (points[..., 1] - cy) ** 2 <= radius**2
        out |= near_slice & near
    return out


def deepest_point(mask: np.ndarray) -> tuple[int, ...] | None:
    """The voxel of ``mask`` farthest from its border (Euclidean distance transform), or None if empty."""
    from scipy.ndimage import distance_transform_edt

    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return None
    dist = distance_transform_edt(np.pad(mask, 1))
    dist = dist[tuple(slice(1, -1) for _ in range(mask.ndim))]
    return tuple(int(i) for i in np.unravel_index(int(np.argmax(dist)), mask.shape))


def robot_click(prediction: np.ndarray, label: np.ndarray) -> tuple[str, tuple[int, ...]] | None:
    """The robot user's next click on ``prediction`` vs ``label`` (2D or 3D boolean arrays of one shape).

    The largest connected error region (full connectivity; false negatives and false positives are separate
    regions; ties go to the missed region) and its deepest point. Returns ``("foreground", point)`` for a missed
    region, ``("background", point)`` for a false positive, or None when the prediction equals the label.
    """
    from scipy.ndimage import label as connected_components

    prediction = np.asarray(prediction, dtype=bool)
    label = np.asarray(label, dtype=bool)
    if prediction.shape != label.shape:
        raise ValueError(f"prediction shape {prediction.shape} differs from label shape {label.shape}")
    best = None
    structure = np.ones((3,) * label.ndim, dtype=bool)
    for kind, error in (("foreground", label & ~prediction), ("background", prediction & ~label)):
        if not error.any():
            continue
        regions, n = connected_components(error, structure=structure)
        sizes = np.bincount(regions.ravel())[1:]
        k = int(np.argmax(sizes))
        if best is None or sizes[k] > best[0]:
            best = (int(sizes[k]), kind, regions == k + 1)
    if best is None:
        return None
    return best[1], deepest_point(best[2])
