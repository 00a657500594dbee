from __future__ import annotations

import lib.infers
import lib.trainers
from lib.configs.common import QuantUNetTaskConfig


class Segmentation(QuantUNetTaskConfig):
    """Auto-segmentation: QuantU-Net (learned bit widths) on FLAIR, slice-wise over the whole volume."""

    in_channels = 1
    checkpoint_conf = "checkpoint"
    default_checkpoint = "model.pt"
    infer_task = lib.infers.Segmentation
    train_task = lib.trainers.Segmentation
    train_description = "Fine-tune the QuantU-Net on saved labels"
