from __future__ import annotations

import hashlib
import logging
import threading
from collections import OrderedDict
from typing import Callable, Optional

import numpy as np
from lib.infers.base import QuantUNetInferTask

from monai.transforms import CastToTyped, SqueezeDimd

from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.utils.others.generic import name_to_device, strtobool

from monai_quantunet.inference import mask_postprocessing
from monai_quantunet.interactive import (
    REACH_RADIUS,
    REACH_SLICES,
    AddInteractionGuidanced,
    LocalityGated,
    ReachLimitedNetwork,
)

logger = logging.getLogger(__name__)


def image_fingerprint(path: str) -> str:
    """SHA-256 of a volume file's bytes: the identity of an image across datastore ids, sessions and uploads."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class MaskStates:
    """The current mask per (client, image content): what the last ``deepedit`` answer returned, and the
    auto-segmentation it started from. At most ``max_entries`` (least recently used dropped first)."""

    def __init__(self, max_entries: int = 32) -> None:
        self.max_entries = max_entries
        self._states: "OrderedDict[tuple, dict]" = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple) -> Optional[dict]:
        with self._lock:
            state = self._states.get(key)
            if state is not None:
                self._states.move_to_end(key)
            return state

    def set(self, key: tuple, auto: np.ndarray, current: np.ndarray) -> None:
        with self._lock:
            self._states[key] = {"auto": auto, "current": current}
            self._states.move_to_end(key)
            while len(self._states) > self.max_entries:
                self._states.popitem(last=False)

    def update_current(self, key: tuple, current: np.ndarray) -> None:
        with self._lock:
            if key in self._states:
                self._states[key]["current"] = current

    def forget_image(self, fingerprint: str) -> int:
        """Drop every state of one image (all clients); returns how many."""
        with self._lock:
            keys = [k for k in self._states if k[1] == fingerprint]
            for k in keys:
                del self._states[k]
            return len(keys)

    def __len__(self) -> int:
        return len(self._states)


class RememberResultd:
    """Last post transform: the answered mask becomes the current mask of the request's state."""

    def __init__(self, states: MaskStates) -> None:
        self.states = states

    def __call__(self, data: dict) -> dict:
        key = data.get("state_key")
        if key is not None:
            self.states.update_current(tuple(key), np.asarray(data["pred"]).astype(bool))
        return data


class DeepEdit(QuantUNetInferTask):
    """Click refinement of the current mask (the interactive QuantU-Net, 4 inputs: image, current mask,
    foreground and background click maps).

    3D Slicer sends the clicks (IJK voxels of the image), never the mask. Its MONAI Label module lists this model's
    labels (``tumor``, ``background``) as segments and sends every segment's landmarks under the segment's name
    (``{"tumor": [...], "background": [...], "label": <segment being edited>}``); other clients send
    ``foreground`` / ``background``. The model has one foreground label, so the app keeps one current mask per
    client (``client_id``) and image (its file content), whichever segment ``label`` names: the auto-segmentation
    of the ``segmentation`` model at first, then the last answer.

    * a request with clicks refines the current mask; the clicks change it only within their reach
      (``REACH_SLICES`` = 2 slices above and below the click, ``REACH_RADIUS`` = 24 pixels of the network's
      128 x 128 grid); beyond it the current mask is returned unchanged, voxel for voxel;
    * a request without clicks, or with ``reset_state`` true (Slicer's reset), starts over from the
      auto-segmentation (then applies the request's clicks, if any);
    * saving a label for the image forgets its state (all clients).

    A click outside the volume is answered with HTTP 422.
    """

    def __init__(self, path, network, spatial_size, labels, model_name="deepedit", max_states: int = 32, **kwargs):
        super().__init__(
            path=path,
            network=network,
            type=InferType.DEEPEDIT,
            labels=labels,
            dimension=3,
            description="Quantized U-Net refining the current mask with clicks (image + current mask + click maps); "
            f"a click acts on its slice +-{REACH_SLICES} within {REACH_RADIUS:g} pixels of the 128 x 128 grid",
            spatial_size=spatial_size,
            model_name=model_name,
            **kwargs,
        )
        self.foreground_keys = ("foreground", *[k for k in (labels or {}) if k != "background"])
        self.background_keys = ("background",)
        self._guidance = AddInteractionGuidanced(foreground_keys=self.foreground_keys, background_keys=self.background_keys)
        self.states = MaskStates(max_states)
        self.auto_segmenter: Optional[Callable[[str, str], np.ndarray]] = None

    # ---- state ----------------------------------------------------------------------------------------------
    def _has_clicks(self, request: dict) -> bool:
        return any(request.get(k) for k in (*self.foreground_keys, *self.background_keys))

    def state_key(self, request: dict) -> tuple:
        return (str(request.get("client_id") or ""), image_fingerprint(request["image"]))

    def forget_image(self, image_path: str) -> int:
        return self.states.forget_image(image_fingerprint(image_path))

    def __call__(self, request, callbacks=None):
        if self.auto_segmenter is None:
            raise RuntimeError("deepedit: no auto-segmentation model wired (main.py sets auto_segmenter)")
        request = dict(request)
        key = self.state_key(request)
        state = self.states.get(key)
        if state is None or not self._has_clicks(request) or strtobool(str(request.get("reset_state", False))):
            auto = state["auto"] if state is not None else self.auto_segmenter(
                request["image"], name_to_device(request.get("device") or self._config.get("device", "cpu")))
            self.states.set(key, auto, auto)
            state = self.states.get(key)
        request["current_mask"] = state["current"]
        request["state_key"] = list(key)
        return super().__call__(request, callbacks)

    # ---- chain ----------------------------------------------------------------------------------------------
    def extra_pre_transforms(self, data=None) -> list:
        return [self._guidance]

    def post_transforms(self, data=None):
        return [
            *mask_postprocessing(self._pre).transforms,
            LocalityGated(),
            SqueezeDimd(keys="pred", dim=0),
            CastToTyped(keys="pred", dtype=np.uint8),
            RememberResultd(self.states),
        ]

    def _get_network(self, device, data):
        return ReachLimitedNetwork(super()._get_network(device, data))
