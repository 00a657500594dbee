from __future__ import annotations

from lib.trainers.base import QuantUNetTrainTask

from monailabel.tasks.train.basic_train import Context

from monai_quantunet.interactive import ErrorClickInteraction, interactive_train_transforms, interactive_val_transforms


class DeepEdit(QuantUNetTrainTask):
    """Fine-tunes the interactive QuantU-Net: simulated clicks from the label, then clicks on its own errors."""

    def train_pre_transforms(self, context: Context):
        return interactive_train_transforms(self.spatial_size, num_samples=self.num_samples)

    def val_pre_transforms(self, context: Context):
        return interactive_val_transforms(self.spatial_size)

    def train_iteration_update(self, context: Context):
        return ErrorClickInteraction(max_interactions=2, prob=0.5)
