from __future__ import annotations

from lib.trainers.base import QuantUNetTrainTask
from monai.data import DataLoader

from monailabel.tasks.train.basic_train import Context

from monai_quantunet.data import SliceDataset
from monai_quantunet.transforms import augment_transforms, val_transforms


class Segmentation(QuantUNetTrainTask):
    """Fine-tunes the auto-segmentation QuantU-Net with the bundle's training pipeline: the labeled volumes'
    slices in memory (``SliceDataset``: ``val_transforms`` once per volume, ``augment_transforms`` per slice)
    drawn by its tumor-aware sampler, ``num_samples`` slices per labeled volume per epoch, the bundle's
    ``tumor_fraction`` and ``context_slices``."""

    def train_pre_transforms(self, context: Context):
        return augment_transforms()

    def train_data_loader(self, context: Context, num_workers=0, shuffle=True):
        dataset = SliceDataset(context.train_datalist, val_transforms(self.spatial_size), self.train_pre_transforms(context),
                               self.context_slices)
        sampler = dataset.sampler(self.num_samples * len(context.train_datalist), self.tumor_fraction)
        return DataLoader(dataset, batch_size=context.train_batch_size, sampler=sampler, num_workers=num_workers)

    def val_pre_transforms(self, context: Context):
        return val_transforms(self.spatial_size)
