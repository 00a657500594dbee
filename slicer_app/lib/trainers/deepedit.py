from __future__ import annotations

from monai.transforms import AsDiscreted, Compose
from lib.trainers.base import QuantUNetTrainTask

from monailabel.tasks.train.basic_train import Context

from monai_quantunet.interactive import (
    AddAutoMaskd,
    AddRobotClicksd,
    ClickRefinementInferer,
    ClickSimulation,
    GateByReachd,
    slice_transforms,
)
from monai_quantunet.transforms import val_transforms


class DeepEdit(QuantUNetTrainTask):
    """Fine-tunes the interactive QuantU-Net on saved labels with the interactive bundle's recipe: the served
    segmentation model's mask of each labeled volume as the current mask (sliced beside image and label by the
    base task's ``SliceDataset``), slices with tumor or a predicted mask drawn first, mask perturbation
    and augmentation (``slice_transforms``), robot clicks on the errors of the network's own previous prediction
    (``ClickSimulation``); validation: one robot click on each held-out volume's auto-segmentation, gated to the
    click's reach."""

    mask_keys = ("label", "mask")  # the current mask is sliced beside the label

    def __init__(self, *args, segmentation_network_factory=None, segmentation_context_slices: int = 1, **kwargs):
        if segmentation_network_factory is None:
            raise ValueError("deepedit trainer: segmentation_network_factory is required (the auto-segmentation model)")
        self._segmentation_network_factory = segmentation_network_factory
        self._segmentation_network = None
        self.segmentation_context_slices = segmentation_context_slices
        super().__init__(*args, **kwargs)

    def segmentation_network(self):
        if self._segmentation_network is None:
            self._segmentation_network = self._segmentation_network_factory().eval()
        return self._segmentation_network

    def train_volume_transform(self, context: Context):
        return Compose([*val_transforms(self.spatial_size).transforms,
                        AddAutoMaskd(self.segmentation_network(), output_key="mask",
                                     context_slices=self.segmentation_context_slices)])

    def train_pre_transforms(self, context: Context):
        return slice_transforms()

    def val_pre_transforms(self, context: Context):
        auto_mask = AddAutoMaskd(self.segmentation_network(), context_slices=self.segmentation_context_slices)
        return Compose([*val_transforms(self.spatial_size).transforms, auto_mask, AddRobotClicksd()])

    def val_inferer(self, context: Context):
        return ClickRefinementInferer(self.spatial_size)

    def val_post_transforms(self, context: Context):
        return [GateByReachd(keys="pred"), AsDiscreted(keys="pred", threshold=0.0)]

    def train_iteration_update(self, context: Context):
        return ClickSimulation()
