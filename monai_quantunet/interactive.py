"""Interactive refinement ("DeepEdit" style) for the slice-wise QuantU-Net: clicks -> guidance maps.

The interactive network is a :class:`~monai_quantunet.networks.QuantUNet` with ``in_channels=3``:
the image, a foreground click map and a background click map. A click is an IJK voxel index; its map is a
2D Gaussian (``sigma`` pixels, peak 1) on the click's axial slice and, attenuated by ``slice_weights``, on the
neighbouring slices (``slice_weights=(1.0, 0.6, 0.3)``: the click slice, +-1, +-2). Several clicks combine by
maximum. The same map builder serves inference (:class:`AddClickGuidanced`, clicks from the client in the
original image's voxel space), validation (:class:`AddValidationClicksd`, deterministic clicks from the label)
and training (:class:`RandClickGuidanced` on 2D slices, :class:`ErrorClickInteraction` adding clicks on the
network's own errors, as DeepEdit trains).

MONAI's ``monai.apps.deepedit.transforms`` assume 3D patches, a multi-label softmax network and clicks that
need no orientation change; here the network is 2D, binary (logit > 0), and clicks are mapped through the
image's affine before/after ``Orientationd`` + ``Resized``, so they are written here instead.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Randomizable

__all__ = [
    "DEFAULT_SIGMA",
    "DEFAULT_SLICE_WEIGHTS",
    "ClickError",
    "parse_clicks",
    "map_clicks",
    "gaussian_disc",
    "click_maps_3d",
    "AddClickGuidanced",
    "AddValidationClicksd",
    "RandClickGuidanced",
    "ErrorClickInteraction",
    "deepest_point",
]

logger = logging.getLogger(__name__)

DEFAULT_SIGMA = 3.0  # pixels at the network's resolution (128 x 128)
DEFAULT_SLICE_WEIGHTS = (1.0, 0.6, 0.3)  # click slice, +-1, +-2


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


def _with_guidance(image, guidance: torch.Tensor):
    """Concatenate guidance to the image channels, keeping MetaTensor meta and the transform trace."""
    data = torch.cat([torch.as_tensor(image).float(), guidance.to(torch.as_tensor(image).device)], dim=0)
    if isinstance(image, MetaTensor):
        return MetaTensor(data, meta=image.meta, applied_operations=image.applied_operations)
    return data


class AddClickGuidanced(MapTransform):
    """Inference: clicks from the request (IJK in the *original* image's voxel space) -> 2 guidance channels.

    Place after ``Orientationd`` and ``Resized`` (e.g. after ``inference_transforms``): the clicks are checked
    against the original shape (``meta["spatial_shape"]``), mapped from ``meta["original_affine"]`` to the
    current ``image.affine`` and drawn at the network's resolution. Foreground clicks are read from
    ``foreground_keys`` (``"foreground"`` and, as the 3D Slicer client sends for multi-label DeepEdit, the label
    name), background clicks from ``background_keys``. Missing keys mean no clicks (automatic mode).
    The clicks actually used (network grid) are stored in ``d["guidance_clicks"]``.
    """

    def __init__(
        self,
        image_key: str = "image",
        foreground_keys: Sequence[str] = ("foreground",),
        background_keys: Sequence[str] = ("background",),
        sigma: float = DEFAULT_SIGMA,
        slice_weights: Sequence[float] = DEFAULT_SLICE_WEIGHTS,
    ) -> None:
        super().__init__([image_key], allow_missing_keys=False)
        self.image_key = image_key
        self.foreground_keys = tuple(foreground_keys)
        self.background_keys = tuple(background_keys)
        self.sigma = sigma
        self.slice_weights = tuple(slice_weights)

    def _collect(self, d: dict, keys: Sequence[str], shape) -> np.ndarray:
        parts = [parse_clicks(d.get(k), shape, name=k) for k in keys if d.get(k) is not None]
        return np.concatenate(parts) if parts else np.zeros((0, 3))

    def __call__(self, data: dict) -> dict:
        d = dict(data)
        image = d[self.image_key]
        meta = getattr(image, "meta", {}) or {}
        current_shape = tuple(image.shape[1:])
        original_shape = tuple(int(s) for s in np.asarray(meta.get("spatial_shape", current_shape)).tolist())
        fg = self._collect(d, self.foreground_keys, original_shape)
        bg = self._collect(d, self.background_keys, original_shape)
        src = meta.get("original_affine")
        dst = image.affine if isinstance(image, MetaTensor) else None
        if src is not None and dst is not None:
            fg = map_clicks(fg, src, dst, current_shape)
            bg = map_clicks(bg, src, dst, current_shape)
        else:  # no geometry: scale indices by the shape ratio
            factor = np.asarray(current_shape, dtype=float) / np.asarray(original_shape, dtype=float)
            fg, bg = fg * factor, bg * factor
        guidance = click_maps_3d(current_shape, fg, bg, self.sigma, self.slice_weights)
        d[self.image_key] = _with_guidance(image, guidance)
        d["guidance_clicks"] = {"foreground": fg.round(2).tolist(), "background": bg.round(2).tolist()}
        return d


def deepest_point(mask: np.ndarray) -> tuple[int, ...] | None:
    """The voxel of ``mask`` farthest from its border (Euclidean distance transform), or None if empty."""
    from scipy.ndimage import distance_transform_edt

    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return None
    dist = distance_transform_edt(np.pad(mask, 1))
    dist = dist[tuple(slice(1, -1) for _ in range(mask.ndim))]
    return tuple(int(i) for i in np.unravel_index(int(np.argmax(dist)), mask.shape))


class AddValidationClicksd(MapTransform):
    """Validation: one deterministic foreground click (the deepest tumor voxel in 3D) -> guidance channels.

    A volume without tumor gets no click. Runs on volumes already at the network's resolution
    (after ``val_transforms``), so no mapping is needed.
    """

    def __init__(
        self,
        image_key: str = "image",
        label_key: str = "label",
        sigma: float = DEFAULT_SIGMA,
        slice_weights: Sequence[float] = DEFAULT_SLICE_WEIGHTS,
    ) -> None:
        super().__init__([image_key, label_key])
        self.image_key, self.label_key = image_key, label_key
        self.sigma, self.slice_weights = sigma, tuple(slice_weights)

    def __call__(self, data: dict) -> dict:
        d = dict(data)
        image, label = d[self.image_key], d[self.label_key]
        p = deepest_point(np.asarray(torch.as_tensor(label)[0].cpu()) > 0)
        fg = np.asarray([p], dtype=float) if p is not None else np.zeros((0, 3))
        guidance = click_maps_3d(tuple(image.shape[1:]), fg, np.zeros((0, 3)), self.sigma, self.slice_weights)
        d[self.image_key] = _with_guidance(image, guidance)
        return d


class RandClickGuidanced(Randomizable, MapTransform):
    """Training on 2D slices ``(1, H, W)``: simulated clicks from the label -> image ``(3, H, W)``.

    With probability ``prob_no_click`` the guidance is empty (the network must also segment without help).
    Otherwise 0..``max_foreground`` clicks are drawn inside the tumor (uniformly among its voxels) and
    0..``max_background`` clicks in the background, half of them in a band around the tumor (where false
    positives are likely). Each click gets the weight of a random slice offset from ``slice_weights`` to mimic a
    click made on a neighbouring slice.
    """

    def __init__(
        self,
        image_key: str = "image",
        label_key: str = "label",
        prob_no_click: float = 0.25,
        max_foreground: int = 3,
        max_background: int = 3,
        sigma: float = DEFAULT_SIGMA,
        slice_weights: Sequence[float] = DEFAULT_SLICE_WEIGHTS,
        band: int = 8,
    ) -> None:
        MapTransform.__init__(self, [image_key, label_key])
        self.image_key, self.label_key = image_key, label_key
        self.prob_no_click = prob_no_click
        self.max_foreground, self.max_background = max_foreground, max_background
        self.sigma, self.slice_weights, self.band = sigma, tuple(slice_weights), band

    def randomize(self, data=None) -> None:
        pass

    def _draw(self, mask: np.ndarray, n: int) -> list[tuple[int, int]]:
        idx = np.argwhere(mask)
        if n <= 0 or len(idx) == 0:
            return []
        pick = self.R.choice(len(idx), size=min(n, len(idx)), replace=False)
        return [tuple(int(v) for v in idx[i]) for i in pick]

    def __call__(self, data: dict) -> dict:
        from scipy.ndimage import binary_dilation

        d = dict(data)
        image, label = d[self.image_key], d[self.label_key]
        lab = np.asarray(torch.as_tensor(label)[0].cpu()) > 0
        shape = lab.shape
        guidance = torch.zeros((2, *shape), dtype=torch.float32)
        if self.R.rand() >= self.prob_no_click:
            fg_pts = self._draw(lab, int(self.R.randint(0, self.max_foreground + 1)))
            n_bg = int(self.R.randint(0, self.max_background + 1))
            near = binary_dilation(lab, iterations=self.band) & ~lab if lab.any() else np.zeros_like(lab)
            bg_pts = self._draw(near, n_bg // 2 + n_bg % 2) + self._draw(~lab, n_bg // 2)
            for ch, pts in ((0, fg_pts), (1, bg_pts)):
                for p in pts:
                    w = self.slice_weights[int(self.R.randint(0, len(self.slice_weights)))]
                    guidance[ch] = torch.maximum(guidance[ch], w * gaussian_disc(shape, p, self.sigma))
        d[self.image_key] = _with_guidance(image, guidance)
        return d


class ErrorClickInteraction:
    """``iteration_update`` for MONAI's ``SupervisedTrainer``: DeepEdit-style clicks on the network's errors.

    With probability ``prob``, runs the network (eval mode, no grad) ``max_interactions`` times on the batch;
    after each pass, adds one click per image at the deepest voxel of its larger error region (missed tumor ->
    foreground channel, false positive -> background channel), then trains on the final inputs. Inputs are
    ``(B, 3, H, W)`` (image + 2 guidance channels), labels ``(B, 1, H, W)``.
    """

    def __init__(self, max_interactions: int = 2, prob: float = 0.5, sigma: float = DEFAULT_SIGMA, seed: int = 0):
        self.max_interactions = max_interactions
        self.prob = prob
        self.sigma = sigma
        self.rng = np.random.default_rng(seed)

    @staticmethod
    def add_error_clicks(inputs: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor, sigma: float) -> torch.Tensor:
        inputs = inputs.clone()
        pred = (logits.detach() > 0).cpu().numpy()[:, 0]
        lab = (labels.detach() > 0).cpu().numpy()[:, 0]
        for b in range(inputs.shape[0]):
            fn, fp = lab[b] & ~pred[b], pred[b] & ~lab[b]
            if not fn.any() and not fp.any():
                continue
            ch, region = (1, fn) if fn.sum() >= fp.sum() else (2, fp)
            p = deepest_point(region)
            disc = gaussian_disc(region.shape, p, sigma).to(inputs.device)
            inputs[b, ch] = torch.maximum(inputs[b, ch], disc)
        return inputs

    def __call__(self, engine, batchdata: dict):
        if batchdata is None:
            raise ValueError("must provide batch data for current iteration.")
        if self.max_interactions > 0 and self.rng.random() < self.prob:
            inputs, labels = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)[:2]
            network = engine.network
            was_training = network.training
            network.eval()
            with torch.no_grad():
                for _ in range(int(self.rng.integers(1, self.max_interactions + 1))):
                    logits = engine.inferer(inputs, network)
                    inputs = self.add_error_clicks(inputs, logits, labels, self.sigma)
            network.train(was_training)
            batchdata = dict(batchdata)
            batchdata["image"] = inputs
        return engine._iteration(engine, batchdata)


# ---------------------------------------------------------------------------------------------------------------
# Training recipe (used by ``python -m monai_quantunet train-deepedit`` and by the MONAI Label app's trainer)
# ---------------------------------------------------------------------------------------------------------------


def interactive_train_transforms(spatial_size=None, num_samples: int = 8, augment: bool = True, **click_kwargs):
    """Per-case ``train_transforms`` (2D tumor-aware slices) followed by :class:`RandClickGuidanced` (for
    MONAI Label's per-item trainer)."""
    from monai.transforms import Compose

    from monai_quantunet.transforms import DEFAULT_SPATIAL_SIZE, train_transforms

    base = train_transforms(spatial_size or DEFAULT_SPATIAL_SIZE, num_samples=num_samples, augment=augment)
    return Compose(list(base.transforms) + [RandClickGuidanced(**click_kwargs)])


def interactive_slice_transforms(augment: bool = True, **click_kwargs):
    """2D augmentation then :class:`RandClickGuidanced`, for :class:`monai_quantunet.data.SliceDataset` items."""
    from monai.transforms import Compose

    from monai_quantunet.transforms import augment_transforms

    return Compose(list(augment_transforms(1.0 if augment else 0.0).transforms) + [RandClickGuidanced(**click_kwargs)])


def expand_input_channels(state_dict: dict[str, torch.Tensor], in_channels: int, key: str = "encoder.0.0.weight") -> dict:
    """A segmentation QuantU-Net's state_dict adapted to ``in_channels`` inputs: the first conv's extra input
    channels (the click maps) start at zero, so the interactive net starts as the segmentation net."""
    state = dict(state_dict)
    w = state[key]
    if w.shape[1] > in_channels:
        raise ValueError(f"{key} has {w.shape[1]} input channels, more than in_channels={in_channels}")
    state[key] = torch.cat([w, w.new_zeros(w.shape[0], in_channels - w.shape[1], *w.shape[2:])], dim=1)
    return state


def interactive_val_transforms(spatial_size=None):
    """``val_transforms`` (whole volumes) followed by one deterministic click (:class:`AddValidationClicksd`)."""
    from monai.transforms import Compose

    from monai_quantunet.transforms import DEFAULT_SPATIAL_SIZE, val_transforms

    return Compose(list(val_transforms(spatial_size or DEFAULT_SPATIAL_SIZE).transforms) + [AddValidationClicksd()])


def train_interactive(
    train_data: list[dict],
    val_data: list[dict],
    output_dir,
    network: torch.nn.Module,
    max_epochs: int = 10,
    spatial_size: Sequence[int] = (128, 128),
    samples_per_epoch: int = 640,
    batch_size: int = 16,
    learning_rate: float = 1e-3,
    bit_learning_rate: float = 1e-2,
    lambda_bits: float = 0.25,
    max_interactions: int = 2,
    device: str | torch.device = "cpu",
    checkpoint_name: str = "deepedit_model.pt",
    augment: bool = True,
    cache_rate: float = 1.0,
    num_workers: int = 0,
) -> dict:
    """Train an interactive QuantU-Net (``in_channels=3``) with simulated clicks; keep the best by val Dice.

    Returns ``{"best_val_dice", "best_epoch", "checkpoint"}``; the best state_dict is written to
    ``output_dir/checkpoint_name`` and per-epoch bit widths to ``output_dir`` (``QuantUNetStatsHandler``).
    """
    from pathlib import Path

    from monai.data import CacheDataset, DataLoader

    from monai_quantunet.data import SliceDataset
    from monai_quantunet.transforms import val_transforms
    from monai.engines import SupervisedEvaluator, SupervisedTrainer
    from monai.handlers import CheckpointSaver, MeanDice, StatsHandler, ValidationHandler, from_engine
    from monai.transforms import AsDiscreted

    from monai_quantunet.inference import slice_inferer
    from monai_quantunet.losses import QuantUNetLoss
    from monai_quantunet.training import QuantUNetStatsHandler, make_optimizer

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    device = torch.device(device)
    network = network.to(device)
    train_ds = SliceDataset(train_data, val_transforms(spatial_size), interactive_slice_transforms(augment))
    val_ds = CacheDataset(val_data, interactive_val_transforms(spatial_size), cache_rate=cache_rate, num_workers=num_workers)
    train_loader = DataLoader(train_ds, batch_size=batch_size, sampler=train_ds.sampler(samples_per_epoch), num_workers=num_workers)
    val_loader = DataLoader(val_ds, batch_size=1, num_workers=num_workers)
    loss = QuantUNetLoss(network, lambda_bits=lambda_bits)
    optimizer = make_optimizer(network, lr=learning_rate, bit_lr=bit_learning_rate)
    evaluator = SupervisedEvaluator(
        device=device,
        val_data_loader=val_loader,
        network=network,
        inferer=slice_inferer(spatial_size),
        postprocessing=AsDiscreted(keys="pred", threshold=0.0),
        key_val_metric={"val_mean_dice": MeanDice(include_background=True, output_transform=from_engine(["pred", "label"]))},
        val_handlers=[
            StatsHandler(iteration_log=False),
            CheckpointSaver(str(output_dir), {"model": network}, save_key_metric=True, key_metric_filename=checkpoint_name),
        ],
    )
    trainer = SupervisedTrainer(
        device=device,
        max_epochs=max_epochs,
        train_data_loader=train_loader,
        network=network,
        optimizer=optimizer,
        loss_function=loss,
        iteration_update=ErrorClickInteraction(max_interactions=max_interactions),
        train_handlers=[
            ValidationHandler(validator=evaluator, interval=1, epoch_level=True),
            QuantUNetStatsHandler(network, loss, output_dir, evaluator, name="QuantUNet.deepedit"),
        ],
    )
    trainer.run()
    return {
        "best_val_dice": float(evaluator.state.best_metric),
        "best_epoch": int(evaluator.state.best_metric_epoch),
        "checkpoint": str(output_dir / checkpoint_name),
    }
