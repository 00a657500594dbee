from __future__ import annotations

from lib.infers.base import QuantUNetInferTask

from monailabel.interfaces.tasks.infer_v2 import InferType

from monai_quantunet.interactive import AddClickGuidanced


class DeepEdit(QuantUNetInferTask):
    """Click refinement: foreground / background clicks (IJK voxels of the original image) -> tumor mask.

    Clicks come in ``foreground`` / ``background`` (3D Slicer's DeepEdit/DeepGrow requests); a label-name key
    (``tumor``, multi-label DeepEdit mode) counts as foreground. No clicks = automatic mode. A click outside
    the volume is answered with HTTP 422.
    """

    def __init__(self, path, network, spatial_size, labels, model_name="deepedit", **kwargs):
        super().__init__(
            path=path,
            network=network,
            type=InferType.DEEPEDIT,
            labels=labels,
            dimension=3,
            description="Quantized U-Net refined by clicks (image + foreground + background click maps)",
            spatial_size=spatial_size,
            model_name=model_name,
            **kwargs,
        )
        self._guidance = AddClickGuidanced(
            foreground_keys=("foreground", *[k for k in (labels or {}) if k != "background"]),
            background_keys=("background",),
        )

    def extra_pre_transforms(self, data=None) -> list:
        return [self._guidance]
