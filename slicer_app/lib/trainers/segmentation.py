from __future__ import annotations

from lib.trainers.base import QuantUNetTrainTask

from monailabel.tasks.train.basic_train import Context

from monai_quantunet.transforms import train_transforms, val_transforms


class Segmentation(QuantUNetTrainTask):
    """Fine-tunes the auto-segmentation QuantU-Net: tumor-aware 2D slices from each labeled volume."""

    def train_pre_transforms(self, context: Context):
        return train_transforms(self.spatial_size, num_samples=self.num_samples)

    def val_pre_transforms(self, context: Context):
        return val_transforms(self.spatial_size)
