"""Refining the current mask with clicks, through the library's one segmentation chain.

The interactive QuantU-Net (``in_channels=4``) sees, per axial slice at the network's grid: the image, the current
mask (the auto-segmentation at first, then the last result), the foreground click map and the background click
map. Its output may change the mask only within the reach of the clicks (:mod:`.clicks`); elsewhere the current
mask is kept, voxel for voxel, by the locality gate applied in the input's own voxel grid.

* :class:`AddInteractionGuidanced` (after ``inference_transforms``): current mask (input grid) and clicks (input
  IJK) -> the 4 input channels at the network's grid; records the grid and the mapped clicks for the gate.
* :class:`ReachLimitedNetwork`: runs the network only on slices that hold a click map (the others are outside
  every click's reach and would be discarded by the gate): a click costs 5 slices, not the whole volume.
* :func:`locality_gate` / :class:`LocalityGated`: the refined mask only within the clicks' reach (foreground clicks
  only add tumor, background clicks only remove it), the current mask elsewhere, in the input's voxel grid.
* :func:`refine_volume`: the chain on one file (``inference.segment_volume`` + the gate), as the MONAI Label app
  runs it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from monai.data import MetaTensor
from monai.transforms import MapTransform, Orientation, Resize

from monai_quantunet.interactive.clicks import (
    DEFAULT_SIGMA,
    DEFAULT_SLICE_WEIGHTS,
    REACH_RADIUS,
    REACH_SLICES,
    click_maps_3d,
    map_clicks,
    parse_clicks,
    reach_mask,
    reach_slices,
)

__all__ = [
    "INPUT_CHANNELS",
    "CLICK_CORE_RADIUS",
    "AddInteractionGuidanced",
    "ReachLimitedNetwork",
    "locality_gate",
    "directional_gate",
    "LocalityGated",
    "refine_volume",
    "AddAutoSegmentationd",
    "click_items",
    "example_inputs",
]

INPUT_CHANNELS = 4  # image, current mask, foreground clicks, background clicks
CLICK_CORE_RADIUS = 2.0  # pixels of the network's grid around a click that take the click's label
KEEP_LOGIT = 10.0  # logit magnitude standing for "keep the current mask" on slices the network does not run on


def _as_mask_array(mask, name: str) -> np.ndarray:
    arr = np.asarray(torch.as_tensor(mask).cpu() if isinstance(mask, torch.Tensor) else mask)
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 3:
        raise ValueError(f"{name}: expected a 3D mask (X, Y, Z) in the image's voxel grid, got shape {arr.shape}")
    return arr > 0.5


class AddInteractionGuidanced(MapTransform):
    """Inference: current mask + clicks -> image ``(4, X, Y, Z)`` at the network's grid.

    Place after ``inference_transforms``. ``d[mask_key]``: the current mask in the *input file's* voxel grid
    (``(X, Y, Z)`` or ``(1, X, Y, Z)``, the array :func:`refine_volume` / the app hold); it follows the image
    through ``Orientation`` (RAS) and the in-plane resize (nearest). Clicks: IJK of the input file, checked against
    its shape (:class:`~monai_quantunet.interactive.clicks.ClickError` outside it), read from
    ``foreground_keys`` / ``background_keys`` (missing keys: no clicks). Writes ``d["guidance_clicks"]`` (clicks
    at the network's grid), ``d["grid_affine"]`` and ``d["grid_shape"]`` for :class:`LocalityGated`.
    """

    def __init__(
        self,
        image_key: str = "image",
        mask_key: str = "current_mask",
        foreground_keys: Sequence[str] = ("foreground",),
        background_keys: Sequence[str] = ("background",),
        sigma: float = DEFAULT_SIGMA,
        slice_weights: Sequence[float] = DEFAULT_SLICE_WEIGHTS,
    ) -> None:
        super().__init__([image_key], allow_missing_keys=False)
        self.image_key, self.mask_key = image_key, mask_key
        self.foreground_keys = tuple(foreground_keys)
        self.background_keys = tuple(background_keys)
        self.sigma, self.slice_weights = float(sigma), tuple(slice_weights)

    def _collect(self, d: dict, keys: Sequence[str], shape) -> np.ndarray:
        parts = [parse_clicks(d.get(k), shape, name=k) for k in keys if d.get(k) is not None]
        return np.concatenate(parts) if parts else np.zeros((0, 3))

    def __call__(self, data: dict) -> dict:
        d = dict(data)
        image = d[self.image_key]
        if not isinstance(image, MetaTensor):
            raise TypeError(f"{self.image_key}: expected a MetaTensor from inference_transforms, got {type(image).__name__}")
        meta = image.meta
        grid_shape = tuple(int(s) for s in image.shape[1:])
        original_shape = tuple(int(s) for s in np.asarray(meta["spatial_shape"]).tolist())
        original_affine = np.asarray(meta["original_affine"], dtype=float)
        fg = map_clicks(self._collect(d, self.foreground_keys, original_shape), original_affine, image.affine, grid_shape)
        bg = map_clicks(self._collect(d, self.background_keys, original_shape), original_affine, image.affine, grid_shape)
        if d.get(self.mask_key) is None:
            raise ValueError(f"{self.mask_key}: the current mask is required (the auto-segmentation at first)")
        mask = _as_mask_array(d[self.mask_key], self.mask_key)
        if mask.shape != original_shape:
            raise ValueError(f"{self.mask_key}: mask shape {list(mask.shape)} differs from the image shape {list(original_shape)}")
        m = MetaTensor(torch.from_numpy(mask[None].astype(np.float32)), affine=torch.as_tensor(original_affine))
        m = Orientation(axcodes="RAS")(m)
        m = Resize(spatial_size=(*grid_shape[:2], -1), mode="nearest")(m)
        if tuple(m.shape[1:]) != grid_shape:
            raise ValueError(f"{self.mask_key}: mask maps to {tuple(m.shape[1:])} at the network's grid, image to {grid_shape}")
        guidance = click_maps_3d(grid_shape, fg, bg, self.sigma, self.slice_weights)
        data_t = torch.cat([image.as_tensor().float(), m.as_tensor().float().to(image.device), guidance.to(image.device)], dim=0)
        d[self.image_key] = MetaTensor(data_t, meta=image.meta, applied_operations=image.applied_operations)
        d["guidance_clicks"] = {"foreground": fg, "background": bg}  # (N, 3) arrays: batch collation keeps them
        d["grid_affine"] = np.asarray(image.affine, dtype=float)
        d["grid_shape"] = grid_shape
        return d


class ReachLimitedNetwork(nn.Module):
    """Runs ``network`` only on the slices of a batch ``(B, 4, H, W)`` that hold a click map (channels 2, 3).

    The other slices are beyond every click's reach (the click maps extend exactly ``REACH_SLICES`` slices):
    they get the current mask as logits (+-``KEEP_LOGIT``), which the locality gate keeps anyway.
    """

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != INPUT_CHANNELS:
            raise ValueError(f"expected slices (B, {INPUT_CHANNELS}, H, W), got shape {tuple(x.shape)}")
        out = torch.where(x[:, 1:2] > 0.5, KEEP_LOGIT, -KEEP_LOGIT).to(x.dtype)
        active = x[:, 2:].flatten(1).amax(dim=1) > 0
        if bool(active.any()):
            out[active] = self.network(x[active]).to(out.dtype)
        return out


def locality_gate(
    refined: np.ndarray,
    current: np.ndarray,
    file_affine,
    grid_affine,
    foreground: np.ndarray,
    background: np.ndarray = (),
    radius: float = REACH_RADIUS,
    slices: int = REACH_SLICES,
) -> tuple[np.ndarray, np.ndarray]:
    """``(gated, reach)`` in the input file's voxel grid: the refined mask kept only where the clicks reach, and
    only in the direction each click asks for.

    * beyond the reach of every click: the current mask;
    * within the reach of foreground clicks only: ``current | refined`` (a foreground click adds tumor, it never
      removes any);
    * within the reach of background clicks only: ``current & refined`` (a background click removes, never adds);
    * within the reach of both kinds: ``refined``;
    * on a click's own slice within ``CLICK_CORE_RADIUS`` (2) pixels of the grid: the click's label (the clicked
      voxel is what the annotator said it is);
    * only the changes connected (3D, 26-connectivity) to a click of their kind are kept: a click fixes the region
      it was placed on, not another region that happens to lie within its reach.

    ``foreground`` / ``background``: ``(N, 3)`` clicks at the network's grid (``grid_affine``); each voxel of the
    file grid (``file_affine``) is mapped to the network's grid and tested with :func:`~.clicks.reach_mask`.
    """
    refined, current = np.asarray(refined, dtype=bool), np.asarray(current, dtype=bool)
    if refined.shape != current.shape:
        raise ValueError(f"refined mask {refined.shape} and current mask {current.shape} differ in shape")
    foreground = np.asarray(foreground, dtype=float).reshape(-1, 3)
    background = np.asarray(background, dtype=float).reshape(-1, 3)
    if len(foreground) + len(background) == 0:
        return current.copy(), np.zeros_like(current)
    m = np.linalg.inv(np.asarray(grid_affine, dtype=float)) @ np.asarray(file_affine, dtype=float)
    i, j, k = (np.arange(s, dtype=np.float32) for s in current.shape)
    pts = np.empty((*current.shape, 3), dtype=np.float32)
    for a in range(3):  # grid coordinate a of every file voxel (affine map, broadcast per axis)
        pts[..., a] = m[a, 0] * i[:, None, None] + m[a, 1] * j[None, :, None] + m[a, 2] * k[None, None, :] + m[a, 3]
    reach_fg = reach_mask(pts, foreground, radius, slices)
    reach_bg = reach_mask(pts, background, radius, slices)
    gated = directional_gate(refined, current, reach_fg, reach_bg)
    # the clicked voxel takes the click's label (its slice, within CLICK_CORE_RADIUS pixels of the grid)
    core_fg = reach_mask(pts, foreground, CLICK_CORE_RADIUS, 0)
    core_bg = reach_mask(pts, background, CLICK_CORE_RADIUS, 0)
    gated[core_fg] = True
    gated[core_bg] = False
    # a click changes the region it was placed on: only changes connected to a click of their kind are kept
    added = _connected_to(gated & ~current, core_fg)
    removed = _connected_to(current & ~gated, core_bg)
    return (current | added) & ~removed, reach_fg | reach_bg


def directional_gate(refined, current, reach_fg, reach_bg):
    """The direction rule of :func:`locality_gate` (and of the click simulation in training), on boolean numpy
    arrays or torch tensors of one shape: the current mask beyond the reach, ``current | refined`` within
    foreground reach only, ``current & refined`` within background reach only, ``refined`` within both."""
    only_fg, only_bg, both = reach_fg & ~reach_bg, reach_bg & ~reach_fg, reach_fg & reach_bg
    beyond = ~(reach_fg | reach_bg)
    return (beyond & current) | (only_fg & (current | refined)) | (only_bg & current & refined) | (both & refined)


def _connected_to(change: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    """The 3D connected components (26-connectivity) of ``change`` that hold a voxel of ``seeds``."""
    from scipy.ndimage import label as connected_components

    if not change.any() or not seeds.any():
        return np.zeros_like(change)
    regions, _ = connected_components(change, structure=np.ones((3, 3, 3), dtype=bool))
    keep = np.unique(regions[seeds & change])
    return np.isin(regions, keep[keep > 0])


class LocalityGated(MapTransform):
    """Post-processing after ``mask_postprocessing``: keep ``d[mask_key]`` outside the reach of the clicks.

    ``d[pred_key]`` ``(1, X, Y, Z)``: the network's mask in the input file's grid (its ``affine``);
    ``d[mask_key]``: the current mask in that grid; ``d["guidance_clicks"]``, ``d["grid_affine"]`` from
    :class:`AddInteractionGuidanced`. Writes the gated mask to ``pred_key`` and the reach to ``"reach"``.
    """

    def __init__(self, pred_key: str = "pred", mask_key: str = "current_mask",
                 radius: float = REACH_RADIUS, slices: int = REACH_SLICES) -> None:
        super().__init__([pred_key])
        self.pred_key, self.mask_key, self.radius, self.slices = pred_key, mask_key, radius, slices

    def __call__(self, data: dict) -> dict:
        d = dict(data)
        pred = d[self.pred_key]
        clicks = d["guidance_clicks"]
        current = _as_mask_array(d[self.mask_key], self.mask_key)
        gated, reach = locality_gate(np.asarray(pred[0]) > 0, current, np.asarray(pred.affine), d["grid_affine"],
                                     clicks["foreground"], clicks["background"], self.radius, self.slices)
        out = torch.from_numpy(gated[None].astype(np.float32))
        d[self.pred_key] = MetaTensor(out, meta=pred.meta) if isinstance(pred, MetaTensor) else out
        d["reach"] = reach
        return d


@torch.no_grad()
def refine_volume(
    network: nn.Module,
    image_path: str | Path,
    current_mask: np.ndarray,
    foreground=(),
    background=(),
    spatial_size: Sequence[int] = (128, 128),
    sigma: float = DEFAULT_SIGMA,
    slice_weights: Sequence[float] = DEFAULT_SLICE_WEIGHTS,
    radius: float = REACH_RADIUS,
) -> np.ndarray:
    """The refined mask ``(X, Y, Z)`` (bool, the file's voxel grid) of ``current_mask`` after the clicks.

    The library's chain (``inference.segment_volume`` with :class:`AddInteractionGuidanced` as its guidance and
    :class:`ReachLimitedNetwork`), then :func:`locality_gate`. No clicks: the current mask, unchanged.
    """
    from monai_quantunet.inference import segment_volume

    current = _as_mask_array(current_mask, "current_mask")
    if len(foreground) == 0 and len(background) == 0:
        return current.copy()
    record: dict = {}
    adder = AddInteractionGuidanced(sigma=sigma, slice_weights=slice_weights)

    def guidance(d: dict) -> dict:
        out = adder(d)
        record.update(clicks=out["guidance_clicks"], grid_affine=out["grid_affine"],
                      file_affine=np.asarray(out["image"].meta["original_affine"], dtype=float))
        return out

    refined = segment_volume(ReachLimitedNetwork(network), image_path, spatial_size, guidance=guidance,
                             current_mask=current, foreground=list(foreground), background=list(background))
    clicks = record["clicks"]
    gated, _ = locality_gate(refined, current, record["file_affine"], record["grid_affine"], clicks["foreground"],
                             clicks["background"], radius, reach_slices(slice_weights))
    return gated


class AddAutoSegmentationd(MapTransform):
    """The auto-segmentation of ``d[image_key]`` (a volume *file*, before loading) -> ``d[output_key]``: boolean
    ``(X, Y, Z)`` in the file's voxel grid (``inference.segment_volume`` with the segmentation model's
    ``spatial_size`` and ``context_slices``), the current mask that :class:`AddInteractionGuidanced` reads."""

    def __init__(self, network: nn.Module, spatial_size: Sequence[int] = (128, 128), context_slices: int = 1,
                 image_key: str = "image", output_key: str = "current_mask") -> None:
        super().__init__([image_key])
        self.network, self.spatial_size, self.context_slices = network, tuple(spatial_size), context_slices
        self.image_key, self.output_key = image_key, output_key

    def __call__(self, data: dict) -> dict:
        from monai_quantunet.inference import segment_volume

        d = dict(data)
        d[self.output_key] = segment_volume(self.network, d[self.image_key], self.spatial_size,
                                            context_slices=self.context_slices)
        return d


def click_items(data: Sequence[dict], clicks: dict) -> list[dict]:
    """The interactive bundle's inputs: each ``{"image": path}`` of ``data`` with the clicks of
    ``clicks[<file name>]`` (``{"foreground": [[i, j, k], ...], "background": [...]}``, IJK of that file; a file
    without an entry gets none and keeps its auto-segmentation). Names in ``clicks`` that match no input raise
    ``ValueError``."""
    names = {Path(item["image"]).name for item in data}
    unknown = sorted(set(clicks) - names)
    if unknown:
        raise ValueError(f"clicks_file: no input volume named {unknown[:3]} (inputs: {sorted(names)[:5]})")
    items = []
    for item in data:
        entry = clicks.get(Path(item["image"]).name, {})
        items.append({**item, "foreground": entry.get("foreground", []), "background": entry.get("background", [])})
    return items


def example_inputs(slices: torch.Tensor) -> torch.Tensor:
    """Example network inputs ``(N, 4, H, W)`` from preprocessed image slices ``(N, 1, H, W)`` (export checks):
    the image, a current mask (the brightest 5% of the slice), a foreground click at the mask's deepest point and
    a background click at the slice's darkest corner region."""
    from monai_quantunet.interactive.clicks import deepest_point, gaussian_disc

    slices = torch.as_tensor(slices).float()
    if slices.ndim != 4 or slices.shape[1] != 1:
        raise ValueError(f"expected image slices (N, 1, H, W), got shape {tuple(slices.shape)}")
    out = torch.zeros((slices.shape[0], INPUT_CHANNELS, *slices.shape[2:]))
    out[:, 0] = slices[:, 0]
    h, w = slices.shape[2:]
    for n, image in enumerate(slices[:, 0]):
        mask = image > torch.quantile(image.flatten(), 0.95)
        out[n, 1] = mask.float()
        point = deepest_point(mask.numpy())
        if point is not None:
            out[n, 2] = gaussian_disc((h, w), point)
        out[n, 3] = gaussian_disc((h, w), (h // 8, w // 8))
    return out
