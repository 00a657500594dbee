"""Common inference logic: the library's transforms + slice inferer, the result inverted to the input geometry."""

from __future__ import annotations

import copy
import logging
import os
import threading
from typing import Any, Callable, Dict, Sequence

import numpy as np
import torch
from monai.inferers import Inferer
from monai.transforms import CastToTyped, SqueezeDimd

from monailabel.tasks.infer.basic_infer import BasicInferTask

from lib.checkpoints import load_checkpoint_or_warn
from monai_quantunet.inference import mask_postprocessing, segment_volume, slice_inferer
from monai_quantunet.transforms import inference_transforms

logger = logging.getLogger(__name__)


class QuantUNetInferTask(BasicInferTask):
    """BasicInferTask for the slice-wise QuantU-Net.

    * pre: ``inference_transforms`` (load, RAS, percentile scaling, in-plane resize to the network size);
      the same transform instances are reused so ``Invertd`` can undo them for every request;
    * inferer: ``slice_inferer`` (2D network over the axial slices, each with ``context_slices`` neighbours as
      channels: the bundle's 2.5D setting);
    * post: ``mask_postprocessing`` (the library's one chain, as the bundle's inference and evaluation: logits
      inverted to the input's shape, orientation, spacing and origin, then ``logit > 0``), uint8.

    Checkpoints: the last existing of ``path`` is loaded (a trained one before the shipped one); a missing or
    mismatching file falls back to the initial weights with a warning instead of failing the request.
    """

    def __init__(self, path, network, type, labels, dimension, description, spatial_size, model_name,
                 context_slices: int = 1, **kwargs):
        self.spatial_size = tuple(spatial_size)
        self.context_slices = context_slices
        self.model_name = model_name
        self._pre = inference_transforms(self.spatial_size)
        self._lock = threading.Lock()
        super().__init__(
            path=path,
            network=network,
            type=type,
            labels=labels,
            dimension=dimension,
            description=description,
            load_strict=True,
            **kwargs,
        )

    # ---- transforms -----------------------------------------------------------------------------------------
    def extra_pre_transforms(self, data=None) -> list:
        return []

    def pre_transforms(self, data=None) -> Sequence[Callable]:
        return list(self._pre.transforms) + self.extra_pre_transforms(data)

    def inferer(self, data=None) -> Inferer:
        bs = int((data or {}).get("sw_batch_size", 32))
        return slice_inferer(self.spatial_size, sw_batch_size=max(1, bs), context_slices=self.context_slices)

    def inverse_transforms(self, data=None):
        return None  # done in post_transforms (mask_postprocessing inverts, then thresholds)

    def post_transforms(self, data=None) -> Sequence[Callable]:
        return [
            *mask_postprocessing(self._pre).transforms,
            SqueezeDimd(keys="pred", dim=0),
            CastToTyped(keys="pred", dtype=np.uint8),
        ]

    # ---- network --------------------------------------------------------------------------------------------
    def _get_network(self, device, data):
        path = self.get_path()
        mtime = os.stat(path).st_mtime if path else 0
        with self._lock:
            cached = self._networks.get(device)
            if cached and cached[1] == (path, mtime):
                return cached[0]
            if cached:
                logger.info(f"{self.model_name}: checkpoint changed ({path}); reloading")
            network = copy.deepcopy(self.network)
            load_checkpoint_or_warn(network, path, self.model_name)
            network.to(torch.device(device)).eval()
            self._networks[device] = (network, (path, mtime))
            return network

    def segment_file(self, image_path: str, device: str = "cpu") -> np.ndarray:
        """The mask ``(X, Y, Z)`` (bool, the file's voxel grid) of one image file through the library's chain
        (``segment_volume``): what this task answers, without writing a file (the ``deepedit`` model's start)."""
        return segment_volume(self._get_network(device, {}), image_path, self.spatial_size,
                              context_slices=self.context_slices)

    @torch.no_grad()
    def predict_logits(self, image_path: str, device: str = "cpu", **request) -> torch.Tensor:
        """Logits at the network's resolution ``(1, X, Y, Z)`` for one image file (active learning)."""
        data = {"image": image_path, "image_path": image_path, **request}
        data = self.run_pre_transforms(data, self.pre_transforms(data))
        data = self.run_inferer(data, device=device)
        return data["pred"]

    def info(self) -> Dict[str, Any]:
        i = super().info()
        i["checkpoint"] = self.get_path()
        return i
