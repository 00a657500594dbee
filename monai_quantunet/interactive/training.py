"""Training the interactive QuantU-Net the way iterative click models are trained (RITM, DeepEdit).

Per training slice: the image, the label and the *current mask*, which starts as the segmentation model's own
prediction (computed once per volume, :class:`InteractiveSliceDataset`), randomly perturbed
(:class:`RandPerturbMaskd`: eroded, dilated, a region dropped, a false-positive blob added) so the model meets
the errors an annotator fixes. :class:`ClickSimulation` (the trainer's ``iteration_update``) then plays the robot
user for 1..``max_rounds`` rounds without gradients: a click at the deepest point of the largest error of the
current mask, the network's prediction, gated to the clicks' reach, fed back as the next current mask; the last
state (mask + all clicks) is the training input. Clicks get the weight of their own slice (1) or, to mimic a click
on a neighbouring slice, a lower ``slice_weights`` entry.

Validation (:class:`AddAutoMaskd`, :class:`AddRobotClicksd`, :class:`GateByReachd`,
:class:`ClickRefinementInferer`): whole validation volumes at the network's grid, the segmentation model's mask,
one robot click on the largest 3D error, the refined and gated mask; its Dice is the key metric.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn as nn
from monai.config import KeysCollection
from monai.inferers import Inferer
from monai.networks import eval_mode
from monai.transforms import MapTransform, Randomizable

from monai_quantunet.interactive.clicks import (
    DEFAULT_SIGMA,
    DEFAULT_SLICE_WEIGHTS,
    REACH_RADIUS,
    click_maps_3d,
    gaussian_disc,
    reach_mask,
    robot_click,
)
from monai_quantunet.interactive.guidance import INPUT_CHANNELS, KEEP_LOGIT, ReachLimitedNetwork, directional_gate

__all__ = [
    "expand_input_channels",
    "segment_grid_volume",
    "InteractiveSliceDataset",
    "RandPerturbMaskd",
    "InteractionInputsd",
    "ClickSimulation",
    "AddAutoMaskd",
    "AddRobotClicksd",
    "GateByReachd",
    "ClickRefinementInferer",
    "slice_transforms",
]


def expand_input_channels(state_dict: dict[str, torch.Tensor], in_channels: int = INPUT_CHANNELS,
                          scales: Sequence[float] | None = None, key: str = "encoder.0.0.weight") -> dict:
    """A segmentation QuantU-Net's state_dict adapted to ``in_channels`` inputs (the first conv widened).

    The new input channels start as ``scales[i]`` times the image channel's weights (default 0: the interactive
    net starts as the segmentation net and must learn the new inputs). With ``(0.5, 1.0, -1.0)`` the current mask
    starts as half an image (tumor where the mask is), a foreground click as a bright spot and a background click
    as a dark one: the clicks act from the first step. Zero-initialised channels learn slowly in a quantized first
    conv, whose 2-4-bit per-output-channel grid rounds small weights to zero.
    """
    state = dict(state_dict)
    if key not in state:
        raise ValueError(f"state_dict has no {key!r}: not a QuantUNet checkpoint")
    w = state[key]
    extra = in_channels - w.shape[1]
    if extra < 0:
        raise ValueError(f"{key} has {w.shape[1]} input channels, more than in_channels={in_channels}")
    if extra == 0:
        return state
    scales = [0.0] * extra if scales is None else [float(v) for v in scales]
    if len(scales) != extra:
        raise ValueError(f"scales: expected {extra} values (one per new input channel), got {len(scales)}")
    state[key] = torch.cat([w] + [v * w[:, :1] for v in scales], dim=1)
    return state


@torch.no_grad()
def segment_grid_volume(network: nn.Module, image: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
    """Mask ``(1, X, Y, Z)`` (float 0/1) of a preprocessed volume ``(1, X, Y, Z)`` at the network's grid."""
    slices = torch.as_tensor(image).float().movedim(-1, 0)  # (Z, 1, X, Y)
    device = next(network.parameters()).device
    with eval_mode(network):
        out = torch.cat([network(slices[i:i + batch_size].to(device)).cpu() for i in range(0, len(slices), batch_size)])
    return (out > 0).float().movedim(0, -1)  # (1, X, Y, Z)


class InteractiveSliceDataset(torch.utils.data.Dataset):
    """Axial slices of preprocessed volumes with the segmentation model's mask: items
    ``{"image": (1, H, W), "mask": (1, H, W), "label": (1, H, W)}``, ``transform`` applied on access.

    Args:
        data: decathlon items (``image``, ``label``).
        volume_transform: e.g. ``val_transforms(spatial_size)`` (load, RAS, scale, resize in-plane).
        segmentation_network: the auto-segmentation model (``in_channels=1``) whose masks are refined.
        transform: per-slice transform (perturbation, augmentation, :class:`InteractionInputsd`).
    """

    def __init__(self, data: Sequence[dict], volume_transform, segmentation_network: nn.Module, transform=None) -> None:
        images, labels, masks = [], [], []
        for item in data:
            out = volume_transform(item)
            image = torch.as_tensor(out["image"]).float()
            images.append(image.movedim(-1, 0))  # (Z, 1, H, W)
            labels.append(torch.as_tensor(out["label"]).movedim(-1, 0).to(torch.uint8))
            masks.append(segment_grid_volume(segmentation_network, image).movedim(-1, 0).to(torch.uint8))
        if not images:
            raise ValueError("InteractiveSliceDataset got no volumes")
        self.images, self.labels, self.masks = torch.cat(images), torch.cat(labels), torch.cat(masks)
        self.transform = transform
        self.positive = (self.labels.flatten(1).bool() | self.masks.flatten(1).bool()).any(dim=1)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict:
        item = {"image": self.images[index], "mask": self.masks[index].float(), "label": self.labels[index].float()}
        return self.transform(item) if self.transform is not None else item

    def sampler(self, num_samples: int, positive_fraction: float = 0.75, seed: int = 0):
        """``WeightedRandomSampler``: ``positive_fraction`` of the slices hold tumor or a predicted mask."""
        n_pos = int(self.positive.sum())
        if n_pos in (0, len(self)):
            weights = torch.ones(len(self), dtype=torch.double)
        else:
            weights = torch.where(self.positive, positive_fraction / n_pos, (1 - positive_fraction) / (len(self) - n_pos))
        generator = torch.Generator().manual_seed(seed)
        return torch.utils.data.WeightedRandomSampler(weights.double(), num_samples, replacement=True, generator=generator)


class RandPerturbMaskd(Randomizable, MapTransform):
    """With probability ``prob``, one random error added to the mask ``(1, H, W)`` of a slice: with probability
    ``prob_bright_false_positive`` a bright non-tumor structure of the image (the segmentation model's typical
    false positive), else erosion or dilation by 1-``max_iterations`` pixels, a connected region dropped, a
    false-positive blob (near the tumor or anywhere in the brain), or the mask cut by a random line (a partly
    missed tumor)."""

    def __init__(self, mask_key: str = "mask", label_key: str = "label", image_key: str = "image",
                 prob: float = 0.5, max_iterations: int = 4, prob_bright_false_positive: float = 0.0) -> None:
        MapTransform.__init__(self, [mask_key, label_key])
        self.mask_key, self.label_key, self.image_key = mask_key, label_key, image_key
        self.prob, self.max_iterations = prob, max_iterations
        self.prob_bright_false_positive = prob_bright_false_positive

    def _bright_false_positive(self, image: np.ndarray, label: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """The mask plus a bright non-tumor structure of the image (what the segmentation model mistakes for
        tumor): a connected region above a high intensity percentile, away from the tumor, cut to a disc."""
        from scipy import ndimage

        brain = image > 0.05
        if brain.sum() < 20:
            return mask
        high = image > np.quantile(image[brain], self.R.uniform(0.85, 0.97))
        candidates = high & ~ndimage.binary_dilation(label, iterations=2)
        if not candidates.any():
            return mask
        regions, _ = ndimage.label(candidates)
        pts = np.argwhere(candidates)
        cy, cx = pts[self.R.randint(len(pts))]
        yy, xx = np.ogrid[: mask.shape[0], : mask.shape[1]]
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= self.R.uniform(4, 15) ** 2
        return mask | ((regions == regions[cy, cx]) & disc)

    def randomize(self, data=None) -> None:
        pass

    def __call__(self, data: dict) -> dict:
        from scipy import ndimage

        d = dict(data)
        if self.R.rand() >= self.prob:
            return d
        mask = np.asarray(torch.as_tensor(d[self.mask_key])[0]) > 0.5
        label = np.asarray(torch.as_tensor(d[self.label_key])[0]) > 0.5
        if self.prob_bright_false_positive > 0 and self.R.rand() < self.prob_bright_false_positive:
            image = np.asarray(torch.as_tensor(d[self.image_key])[0])
            d[self.mask_key] = torch.from_numpy(self._bright_false_positive(image, label, mask)[None].astype(np.float32))
            return d
        op = self.R.randint(0, 5)
        k = int(self.R.randint(1, self.max_iterations + 1))
        if op == 0 and mask.any():
            mask = ndimage.binary_erosion(mask, iterations=k)
        elif op == 1:
            mask = ndimage.binary_dilation(mask, iterations=k) if mask.any() else mask
        elif op == 2 and mask.any():
            regions, n = ndimage.label(mask)
            mask = mask & (regions != int(self.R.randint(1, n + 1)))
        elif op == 3:
            h, w = mask.shape
            ref = label if label.any() else (np.asarray(torch.as_tensor(d[self.image_key])[0]) > 0.3)
            pts = np.argwhere(ndimage.binary_dilation(ref, iterations=12) if ref.any() else np.ones_like(mask))
            cy, cx = pts[self.R.randint(len(pts))]
            ry, rx = self.R.uniform(2, 10, 2)
            yy, xx = np.ogrid[:h, :w]
            mask = mask | (((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1)
        elif op == 4 and mask.any():
            angle = self.R.uniform(0, 2 * np.pi)
            cy, cx = np.argwhere(mask).mean(axis=0) + self.R.uniform(-4, 4, 2)
            yy, xx = np.mgrid[: mask.shape[0], : mask.shape[1]]
            mask = mask & ((yy - cy) * np.sin(angle) + (xx - cx) * np.cos(angle) < 0)
        d[self.mask_key] = torch.from_numpy(mask[None].astype(np.float32))
        return d


class InteractionInputsd(MapTransform):
    """``image (1, ...)`` + ``mask (1, ...)`` -> ``image (4, ...)``: image, current mask (binarised), and two empty
    click maps (filled by :class:`ClickSimulation`); ``mask_key`` is removed."""

    def __init__(self, image_key: str = "image", mask_key: str = "mask") -> None:
        super().__init__([image_key, mask_key])
        self.image_key, self.mask_key = image_key, mask_key

    def __call__(self, data: dict) -> dict:
        d = dict(data)
        image = torch.as_tensor(d[self.image_key]).float()
        mask = (torch.as_tensor(d.pop(self.mask_key)).float() > 0.5).float()
        d[self.image_key] = torch.cat([image, mask, torch.zeros((2, *image.shape[1:]))], dim=0)
        return d


class ClickSimulation:
    """``iteration_update`` for MONAI's ``SupervisedTrainer``: robot clicks on the errors of the current mask.

    Inputs ``(B, 4, H, W)`` (image, current mask, empty click maps), labels ``(B, 1, H, W)``. For 1..``max_rounds``
    rounds (``prob_first`` of the batches stop after the first click, the case that must pay most): a click at
    the deepest point of the largest 2D error of the current mask; between rounds the network (eval mode, no
    gradient) predicts and its mask, gated to the reach of the clicks so far, becomes the current mask. Then the
    trainer's own iteration trains on the final inputs.
    """

    def __init__(self, max_rounds: int = 4, prob_first: float = 0.4, prob_neighbour: float = 0.35,
                 sigma: float = DEFAULT_SIGMA, slice_weights: Sequence[float] = DEFAULT_SLICE_WEIGHTS,
                 reach_radius: float = REACH_RADIUS, seed: int = 0) -> None:
        if max_rounds < 1:
            raise ValueError(f"max_rounds must be >= 1, got {max_rounds}")
        self.max_rounds, self.prob_first, self.prob_neighbour = int(max_rounds), prob_first, prob_neighbour
        self.sigma, self.slice_weights, self.reach_radius = sigma, tuple(slice_weights), reach_radius
        self.rng = np.random.default_rng(seed)

    def add_click(self, x: torch.Tensor, reach: torch.Tensor, labels: np.ndarray) -> None:
        """One robot click per slice of ``x`` (in place) on ``mask != label``; ``reach`` (``(2, B, H, W)``:
        foreground, background) grows around it."""
        h, w = x.shape[-2:]
        masks = (x[:, 1] > 0.5).cpu().numpy()
        for b in range(x.shape[0]):
            click = robot_click(masks[b], labels[b])
            if click is None:
                continue
            kind, point = click
            weight = 1.0
            if len(self.slice_weights) > 1 and self.rng.random() < self.prob_neighbour:
                weight = float(self.rng.choice(self.slice_weights[1:]))
            ch = 2 if kind == "foreground" else 3
            x[b, ch] = torch.maximum(x[b, ch], weight * gaussian_disc((h, w), point, self.sigma).to(x.device))
            yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
            reach[ch - 2, b] |= ((yy - point[0]) ** 2 + (xx - point[1]) ** 2 <= self.reach_radius**2).to(reach.device)

    @torch.no_grad()
    def simulate(self, network: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, rounds: int) -> torch.Tensor:
        x = inputs.clone()
        lab = (labels[:, 0] > 0.5).cpu().numpy()
        reach = torch.zeros((2, x.shape[0], *x.shape[-2:]), dtype=torch.bool, device=x.device)
        with eval_mode(network):
            for r in range(rounds):
                if r > 0:
                    x[:, 1] = directional_gate(network(x)[:, 0] > 0, x[:, 1] > 0.5, reach[0], reach[1]).float()
                self.add_click(x, reach, lab)
        return x

    def __call__(self, engine, batchdata: dict):
        if batchdata is None:
            raise ValueError("must provide batch data for current iteration.")
        inputs, labels = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)[:2]
        if inputs.shape[1] != INPUT_CHANNELS:
            raise ValueError(f"ClickSimulation: expected inputs with {INPUT_CHANNELS} channels, got {tuple(inputs.shape)}")
        rounds = 1 if self.rng.random() < self.prob_first else int(self.rng.integers(1, self.max_rounds + 1))
        batchdata = dict(batchdata)
        batchdata["image"] = self.simulate(engine.network, inputs, labels, rounds)
        batchdata["label"] = labels
        return engine._iteration(engine, batchdata)


class AddAutoMaskd(MapTransform):
    """Validation: the segmentation model's mask of a preprocessed volume ``(1, X, Y, Z)`` -> ``d[output_key]``."""

    def __init__(self, network: nn.Module, image_key: str = "image", output_key: str = "auto_mask") -> None:
        super().__init__([image_key])
        self.network, self.image_key, self.output_key = network, image_key, output_key

    def __call__(self, data: dict) -> dict:
        d = dict(data)
        d[self.output_key] = segment_grid_volume(self.network, d[self.image_key])
        return d


class AddRobotClicksd(MapTransform):
    """Validation: one robot click on the largest 3D error of ``mask_key`` vs ``label_key`` (volumes at the
    network's grid) -> ``image (4, X, Y, Z)`` and ``d["reach"] (1, X, Y, Z)``: +1 within a foreground click's
    reach, -1 within a background click's. No error: no click."""

    def __init__(self, image_key: str = "image", mask_key: str = "auto_mask", label_key: str = "label",
                 sigma: float = DEFAULT_SIGMA, slice_weights: Sequence[float] = DEFAULT_SLICE_WEIGHTS,
                 reach_radius: float = REACH_RADIUS) -> None:
        super().__init__([image_key, mask_key, label_key])
        self.image_key, self.mask_key, self.label_key = image_key, mask_key, label_key
        self.sigma, self.slice_weights, self.reach_radius = sigma, tuple(slice_weights), reach_radius

    def __call__(self, data: dict) -> dict:
        d = dict(data)
        image, mask = torch.as_tensor(d[self.image_key]).float(), torch.as_tensor(d[self.mask_key]).float()
        shape = tuple(image.shape[1:])
        click = robot_click(np.asarray(mask[0]) > 0.5, np.asarray(torch.as_tensor(d[self.label_key])[0]) > 0.5)
        fg, bg = np.zeros((0, 3)), np.zeros((0, 3))
        if click is not None:
            pts = np.asarray([click[1]], dtype=float)
            fg, bg = (pts, bg) if click[0] == "foreground" else (fg, pts)
        guidance = click_maps_3d(shape, fg, bg, self.sigma, self.slice_weights)
        grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), axis=-1)
        reach = reach_mask(grid, np.concatenate([fg, bg]), self.reach_radius, len(self.slice_weights) - 1)
        d[self.image_key] = torch.cat([image, mask, guidance], dim=0)
        sign = -1.0 if len(bg) else 1.0  # one click: its kind decides the gate's direction
        d["reach"] = torch.from_numpy(sign * reach[None].astype(np.float32))
        return d


class GateByReachd(MapTransform):
    """Validation post-processing: the gate of :func:`~.guidance.locality_gate` at the network's grid (signed
    ``reach`` from :class:`AddRobotClicksd`, current mask = channel 1 of ``image``); ``pred`` becomes
    +-``KEEP_LOGIT``."""

    def __init__(self, keys: KeysCollection = "pred", reach_key: str = "reach", image_key: str = "image") -> None:
        super().__init__(keys)
        self.reach_key, self.image_key = reach_key, image_key

    def __call__(self, data: dict) -> dict:
        d = dict(data)
        reach = torch.as_tensor(d[self.reach_key])
        current = torch.as_tensor(d[self.image_key])[1:2] > 0.5
        for key in self.key_iterator(d):
            pred = d[key]
            gated = directional_gate(pred > 0, current.to(pred.device), (reach > 0.5).to(pred.device),
                                     (reach < -0.5).to(pred.device))
            d[key] = torch.where(gated, KEEP_LOGIT, -KEEP_LOGIT).to(pred.dtype)
        return d


class ClickRefinementInferer(Inferer):
    """MONAI ``SliceInferer`` over ``(B, 4, X, Y, Z)`` with the network limited to the clicked slices
    (:class:`~.guidance.ReachLimitedNetwork`), as the server runs it."""

    def __init__(self, spatial_size: Sequence[int] = (128, 128), sw_batch_size: int = 32) -> None:
        from monai_quantunet.inference import slice_inferer

        self.inferer = slice_inferer(spatial_size, sw_batch_size)

    def __call__(self, inputs: torch.Tensor, network: nn.Module, *args, **kwargs) -> torch.Tensor:
        return self.inferer(inputs, ReachLimitedNetwork(network), *args, **kwargs)


def slice_transforms(prob_perturb: float = 0.5, augment: bool = True, prob_bright_false_positive: float = 0.3):
    """Per-slice training chain on ``{"image", "mask", "label"}`` ``(1, H, W)``: mask perturbation
    (:class:`RandPerturbMaskd`), flips and a small affine of all three, intensity jitter and noise of the image,
    then :class:`InteractionInputsd` (image ``(4, H, W)``). Used by the bundle's ``train.json`` and by the MONAI
    Label app's trainer."""
    from monai.transforms import (
        Compose,
        EnsureTyped,
        RandAdjustContrastd,
        RandAffined,
        RandFlipd,
        RandGaussianNoised,
        RandScaleIntensityd,
    )

    keys = ["image", "mask", "label"]
    p = 1.0 if augment else 0.0
    return Compose([
        RandPerturbMaskd(prob=prob_perturb, prob_bright_false_positive=prob_bright_false_positive),
        RandFlipd(keys=keys, prob=0.5 * p, spatial_axis=0),
        RandFlipd(keys=keys, prob=0.5 * p, spatial_axis=1),
        RandAffined(keys=keys, prob=0.3 * p, rotate_range=0.26, scale_range=0.1,
                    mode=["bilinear", "nearest", "nearest"], padding_mode="zeros"),
        RandScaleIntensityd(keys="image", factors=0.1, prob=0.3 * p),
        RandAdjustContrastd(keys="image", gamma=(0.8, 1.25), prob=0.3 * p),
        RandGaussianNoised(keys="image", std=0.02, prob=0.2 * p),
        InteractionInputsd(),
        EnsureTyped(keys=["image", "label"], dtype=torch.float32, track_meta=False),
    ])
