"""Training the interactive QuantU-Net the way iterative click models are trained (RITM, DeepEdit).

Per training slice: the image, the label and the *current mask*, which starts as the segmentation model's own
prediction (computed once per volume by :class:`AddAutoMaskd` in the volume transform of the core
:class:`~monai_quantunet.data.SliceDataset`, with ``mask_keys=("label", "mask")``), randomly perturbed
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
from monai.transforms import Compose, EnsureTyped, MapTransform, Randomizable

from monai_quantunet.interactive.clicks import (
    DEFAULT_SIGMA,
    DEFAULT_SLICE_WEIGHTS,
    REACH_RADIUS,
    click_maps_3d,
    gaussian_disc,
    reach_mask,
    reach_slices,
    robot_click,
)
from monai_quantunet.interactive.guidance import INPUT_CHANNELS, KEEP_LOGIT, ReachLimitedNetwork, directional_gate
from monai_quantunet.transforms import augment_transforms

__all__ = [
    "expand_input_channels",
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
                          scales: Sequence[float] | None = None, key: str = "encoder.0.0.weight",
                          context_slices: int = 1) -> dict:
    """A segmentation QuantU-Net's state_dict adapted to ``in_channels`` inputs (the first conv widened).

    The new input channels start as ``scales[i]`` times the image channel's weights (default 0: the interactive
    net starts as the segmentation net and must learn the new inputs). With ``(0.5, 1.0, -1.0)`` the current mask
    starts as half an image (tumor where the mask is), a foreground click as a bright spot and a background click
    as a dark one: the clicks act from the first step. Zero-initialised channels learn slowly in a quantized first
    conv, whose 2-4-bit per-output-channel grid rounds small weights to zero.

    A 2.5D segmentation checkpoint (``context_slices`` k > 1: the first conv has k image channels, the slice and
    its neighbours) gives one image channel, the sum of the k (its response to a volume constant along Z). A
    checkpoint that already has ``in_channels`` inputs is returned as is.
    """
    state = dict(state_dict)
    if key not in state:
        raise ValueError(f"state_dict has no {key!r}: not a QuantUNet checkpoint")
    w = state[key]
    if context_slices > 1 and w.shape[1] == context_slices != in_channels:
        w = w.sum(dim=1, keepdim=True)
        state[key] = w
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
        grid = np.stack([*np.meshgrid(np.arange(h), np.arange(w), indexing="ij"), np.zeros((h, w))], axis=-1)  # (H, W, 3)
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
            within = reach_mask(grid, np.asarray([[point[0], point[1], 0.0]]), self.reach_radius, 0)
            reach[ch - 2, b] |= torch.from_numpy(within).to(reach.device)

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
    """The segmentation model's mask ``(1, X, Y, Z)`` (float 0/1) of a preprocessed volume ``(1, X, Y, Z)`` at the
    network's grid -> ``d[output_key]``, through ``inference.predict_volume`` (``context_slices``: the
    segmentation model's, e.g. 3 for a 2.5D bundle). Training's current mask and validation's starting mask."""

    def __init__(self, network: nn.Module, image_key: str = "image", output_key: str = "auto_mask",
                 context_slices: int = 1) -> None:
        super().__init__([image_key])
        self.network, self.image_key, self.output_key = network, image_key, output_key
        self.context_slices = context_slices

    def __call__(self, data: dict) -> dict:
        from monai_quantunet.inference import predict_volume

        d = dict(data)
        image = torch.as_tensor(d[self.image_key]).float()
        device = next(self.network.parameters()).device
        with eval_mode(self.network):
            logits = predict_volume(self.network, image[None].to(device), tuple(image.shape[1:3]),
                                    context_slices=self.context_slices)[0]
        d[self.output_key] = (logits > 0).float().cpu()
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
        reach = reach_mask(grid, np.concatenate([fg, bg]), self.reach_radius, reach_slices(self.slice_weights))
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


def slice_transforms(prob_perturb: float = 0.5, augment: bool = True, prob_bright_false_positive: float = 0.3,
                     skull_strip: float = 0.0, zoom_out: float = 0.0) -> Compose:
    """Per-slice training chain on ``{"image", "mask", "label"}`` ``(1, H, W)``: mask perturbation
    (:class:`RandPerturbMaskd`), the segmentation training's augmentation of all three
    (:func:`~monai_quantunet.transforms.augment_transforms`, the current mask moved like the label; its
    skull-stripping and zoom-out off by default), then :class:`InteractionInputsd` (image ``(4, H, W)``). Used by
    the bundle's ``train.json`` and by the MONAI Label app's trainer."""
    augmentation = augment_transforms(1.0 if augment else 0.0, skull_strip, zoom_out, mask_keys=("label", "mask"))
    return Compose([
        RandPerturbMaskd(prob=prob_perturb, prob_bright_false_positive=prob_bright_false_positive),
        *augmentation.transforms,
        InteractionInputsd(),
        EnsureTyped(keys=["image", "label"], dtype=torch.float32, track_meta=False),
    ])
