from __future__ import annotations

import logging
import random
import time

from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.strategy import Strategy

import torch

logger = logging.getLogger(__name__)


def least_confidence_score(logits: torch.Tensor, region_threshold: float = 0.25) -> float:
    """Uncertainty in [0, 1] of a binary prediction: ``1 - mean |2 sigmoid - 1|`` over the voxels with
    probability above ``region_threshold`` (predicted or nearly predicted tumor). 0 when no such voxel
    (the model is confident that the volume is tumor-free). High = ask a human first."""
    prob = torch.sigmoid(torch.as_tensor(logits).float())
    region = prob > region_threshold
    if not bool(region.any()):
        return 0.0
    return float(1.0 - (2 * prob[region] - 1).abs().mean())


class LeastConfidence(Strategy):
    """Next volume to label = the unlabeled one the served QuantU-Net is least sure about.

    Score (``least_confidence_score``): ``1 - mean |2 sigmoid - 1|`` over the voxels
    predicted (or nearly predicted, p > 0.25) as tumor. At most ``max_samples`` unlabeled volumes, drawn at
    random, are scored per request so the answer stays fast on large datastores.
    """

    def __init__(self, infer_task, max_samples: int = 16):
        super().__init__("Least confidence of the QuantU-Net prediction (mean |p - 0.5| over predicted tumor)")
        self.infer_task = infer_task
        self.max_samples = max_samples

    def __call__(self, request, datastore: Datastore):
        images = datastore.get_unlabeled_images(request.get("label_tag"), request.get("labels"))
        if not images:
            return None
        if len(images) > self.max_samples:
            images = random.sample(images, self.max_samples)
        device = request.get("device", "cpu")
        device = device[0] if isinstance(device, (list, tuple)) else device
        scores = {}
        start = time.time()
        for image_id in images:
            try:
                logits = self.infer_task.predict_logits(datastore.get_image_uri(image_id), device=device)
                scores[image_id] = least_confidence_score(logits)
            except Exception as e:  # an unreadable volume must not block the others
                logger.warning(f"least_confidence: skipping {image_id}: {e}")
        if not scores:
            return None
        best = max(scores, key=scores.get)
        logger.info(f"least_confidence: scored {len(scores)} volume(s) in {time.time() - start:.1f} s; picked {best} ({scores[best]:.4f})")
        return {"id": best, "score": scores[best], "scores": scores}
