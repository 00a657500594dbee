from __future__ import annotations

from lib.infers.base import QuantUNetInferTask

from monailabel.interfaces.tasks.infer_v2 import InferType


class Segmentation(QuantUNetInferTask):
    """Automatic whole-volume tumor segmentation (QuantU-Net, slice-wise)."""

    def __init__(self, path, network, spatial_size, labels, model_name="segmentation", **kwargs):
        super().__init__(
            path=path,
            network=network,
            type=InferType.SEGMENTATION,
            labels=labels,
            dimension=3,
            description="Quantized U-Net (learned per-layer bit widths): FLAIR brain tumor auto-segmentation",
            spatial_size=spatial_size,
            model_name=model_name,
            **kwargs,
        )
