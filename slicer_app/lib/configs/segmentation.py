from __future__ import annotations

from typing import Optional

import lib.infers
import lib.trainers
from lib.configs.common import QuantUNetTaskConfig

from monailabel.interfaces.tasks.infer_v2 import InferTask
from monailabel.interfaces.tasks.train import TrainTask


class Segmentation(QuantUNetTaskConfig):
    """Auto-segmentation: QuantU-Net (learned bit widths) on FLAIR, slice-wise over the whole volume."""

    in_channels = 1
    checkpoint_conf = "checkpoint"
    default_checkpoint = "model.pt"

    def infer(self) -> InferTask:
        return lib.infers.Segmentation(
            path=self.path,
            network=self.network,
            spatial_size=self.spatial_size,
            labels=self.labels,
            preload=self.preload,
            model_name=self.name,
            config={"device": self.device, "sw_batch_size": 32},
        )

    def trainer(self) -> Optional[TrainTask]:
        return lib.trainers.Segmentation(description="Fine-tune the QuantU-Net on saved labels", **self.trainer_kwargs())
