from __future__ import annotations

import os
from pathlib import Path

import lib.infers
import lib.trainers
from lib.configs.common import APP_DIR, QuantUNetTaskConfig
from monai_quantunet.bundle import INTERACTIVE_BUNDLE_NAME, checkout_bundle

INTERACTIVE_BUNDLE = checkout_bundle(INTERACTIVE_BUNDLE_NAME, APP_DIR.parent)


class DeepEdit(QuantUNetTaskConfig):
    """Interactive refinement: the interactive bundle's QuantU-Net with 4 inputs (image, current mask, foreground
    clicks, background clicks). Network, settings and default checkpoint come from the bundle
    ``quantunet_interactive_tumor_seg`` (``--conf deepedit_bundle_root DIR`` to use another copy)."""

    in_channels = 4
    checkpoint_conf = "deepedit_checkpoint"
    default_checkpoint = "model.pt"
    infer_task = lib.infers.DeepEdit
    train_task = lib.trainers.DeepEdit
    train_description = "Fine-tune the interactive QuantU-Net with simulated clicks on saved labels"

    def init(self, name, model_dir, conf, planner, **kwargs):
        from lib.configs.common import DEFAULT_BUNDLE

        self.segmentation_bundle = Path(conf.get("bundle_root") or DEFAULT_BUNDLE)
        bundle = conf.get("deepedit_bundle_root") or str(INTERACTIVE_BUNDLE)
        super().init(name, model_dir, {**conf, "bundle_root": str(Path(bundle))}, planner, **kwargs)
        # 3D Slicer's module shows a deepedit model's labels as segments and sends each segment's landmarks under
        # its name: a "background" label is how a Slicer user places background clicks.
        self.labels = {**self.labels, "background": 0}

    def trainer_kwargs(self) -> dict:
        """The base trainer's settings plus the served segmentation model (the current mask to refine): the
        segmentation bundle's network as it defines it (a 2.5D bundle's ``context_slices`` included)."""
        from lib.checkpoints import load_checkpoint_or_warn, served_checkpoint
        from monai_quantunet.bundle import bundle_settings, network_from_bundle

        seg_bundle = self.segmentation_bundle
        candidates = [self.conf.get("checkpoint") or str(seg_bundle / "models" / "model.pt"),
                      os.path.join(self.model_dir, "segmentation.pt")]

        def segmentation_network():
            net = network_from_bundle(seg_bundle)
            load_checkpoint_or_warn(net, served_checkpoint(candidates), "deepedit trainer: segmentation model")
            return net

        return {**super().trainer_kwargs(), "segmentation_network_factory": segmentation_network,
                "segmentation_context_slices": int(bundle_settings(seg_bundle)["context_slices"])}
