from __future__ import annotations

import lib.infers
import lib.trainers
from lib.configs.common import QuantUNetTaskConfig


class DeepEdit(QuantUNetTaskConfig):
    """Interactive refinement: QuantU-Net with 3 inputs (image, foreground clicks, background clicks)."""

    in_channels = 3
    checkpoint_conf = "deepedit_checkpoint"
    default_checkpoint = "deepedit_model.pt"
    infer_task = lib.infers.DeepEdit
    train_task = lib.trainers.DeepEdit
    train_description = "Fine-tune the interactive QuantU-Net with simulated clicks on saved labels"
