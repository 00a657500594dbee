from __future__ import annotations

from typing import Optional

import lib.infers
import lib.trainers
from lib.configs.common import QuantUNetTaskConfig

from monailabel.interfaces.tasks.infer_v2 import InferTask
from monailabel.interfaces.tasks.train import TrainTask


class DeepEdit(QuantUNetTaskConfig):
    """Interactive refinement: QuantU-Net with 3 inputs (image, foreground clicks, background clicks)."""

    in_channels = 3
    checkpoint_conf = "deepedit_checkpoint"
    default_checkpoint = "deepedit_model.pt"

    def infer(self) -> InferTask:
        return lib.infers.DeepEdit(
            path=self.path,
            network=self.network,
            spatial_size=self.spatial_size,
            labels=self.labels,
            preload=self.preload,
            model_name=self.name,
            config={"device": self.device, "sw_batch_size": 32},
        )

    def trainer(self) -> Optional[TrainTask]:
        return lib.trainers.DeepEdit(
            description="Fine-tune the interactive QuantU-Net with simulated clicks on saved labels",
            **self.trainer_kwargs(),
        )
