from __future__ import annotations

import lib.infers
import lib.trainers
from lib.configs.common import QuantUNetTaskConfig


class Segmentation(QuantUNetTaskConfig):
    """Auto-segmentation: QuantU-Net (learned bit widths) on FLAIR, slice-wise over the whole volume (with the
    bundle's ``context_slices`` neighbouring slices as input channels)."""

    in_channels = None  # the bundle's: its context_slices
    checkpoint_conf = "checkpoint"
    default_checkpoint = "model.pt"
    infer_task = lib.infers.Segmentation
    train_task = lib.trainers.Segmentation
    train_description = "Fine-tune the QuantU-Net on saved labels"
