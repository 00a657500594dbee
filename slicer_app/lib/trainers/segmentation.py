from __future__ import annotations

from lib.trainers.base import QuantUNetTrainTask

from monailabel.tasks.train.basic_train import Context

from monai_quantunet.transforms import augment_transforms, val_transforms


class Segmentation(QuantUNetTrainTask):
    """Fine-tunes the auto-segmentation QuantU-Net with the bundle's training pipeline: the labeled volumes'
    slices (the base task's ``SliceDataset``) augmented per slice by ``augment_transforms``, the bundle's
    ``tumor_fraction`` and ``context_slices``."""

    def train_pre_transforms(self, context: Context):
        return augment_transforms()

    def val_pre_transforms(self, context: Context):
        return val_transforms(self.spatial_size)
