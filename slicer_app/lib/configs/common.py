"""Shared TaskConfig logic: network settings (``context_slices`` included) from the bundle's train.json, checkpoint
paths from --conf."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Dict

from monailabel.interfaces.config import TaskConfig
from monailabel.utils.others.generic import strtobool

from lib.checkpoints import load_checkpoint_or_warn, served_checkpoint
from lib.train_options import OPTIONS
from monai_quantunet.bundle import BUNDLE_NAME, bundle_settings, checkout_bundle, network_from_bundle

logger = logging.getLogger(__name__)

APP_DIR = Path(__file__).resolve().parents[2]
DEFAULT_BUNDLE = checkout_bundle(BUNDLE_NAME, APP_DIR.parent)
LABELS = {"tumor": 1}


class QuantUNetTaskConfig(TaskConfig):
    """Subclasses set ``in_channels`` (``None``: the bundle's, i.e. its ``context_slices``), ``checkpoint_conf``
    (the --conf key), ``default_checkpoint``, the task classes ``infer_task`` / ``train_task`` and
    ``train_description``."""

    in_channels: int | None = None
    checkpoint_conf = "checkpoint"
    default_checkpoint = "model.pt"
    infer_task: type
    train_task: type
    train_description: str

    def init(self, name: str, model_dir: str, conf: Dict[str, str], planner: Any, **kwargs):
        super().init(name, model_dir, conf, planner, **kwargs)
        self.labels = dict(LABELS)
        self.bundle_root = Path(conf.get("bundle_root") or DEFAULT_BUNDLE)
        self.settings = bundle_settings(self.bundle_root)
        self.spatial_size = tuple(int(s) for s in self.settings["spatial_size"])
        self.context_slices = int(self.settings["context_slices"])
        self.device = conf.get("device", "cpu")
        self.preload = strtobool(conf.get("preload", "true"))

        self.network = self.bundle_network()
        pretrained = conf.get(self.checkpoint_conf) or str(self.bundle_root / "models" / self.default_checkpoint)
        self.pretrained_path = pretrained if strtobool(conf.get("use_pretrained_model", "true")) else None
        self.published_path = os.path.join(model_dir, f"{name}.pt")  # written by training only
        # BasicInferTask picks the last existing path: a published (trained) checkpoint wins.
        self.path = [p for p in (self.pretrained_path, self.published_path) if p]

        current = self.current_checkpoint()
        if current is None:
            logger.warning(
                f"{name}: checkpoint {self.pretrained_path or '(none: use_pretrained_model=false)'} not found and no "
                f"trained {self.published_path}: serving INITIAL weights (train the model to create one)"
            )
        else:
            # log a clear warning now if the file does not fit the network (it is then served with initial weights)
            load_checkpoint_or_warn(self.bundle_network(), current, name)

    def bundle_network(self):
        """A new instance of the bundle's network (``in_channels`` replaced when the subclass sets it)."""
        overrides = {} if self.in_channels is None else {"in_channels": self.in_channels}
        return network_from_bundle(self.bundle_root, **overrides)

    def infer(self):
        return self.infer_task(
            path=self.path,
            network=self.network,
            spatial_size=self.spatial_size,
            context_slices=self.context_slices,
            labels=self.labels,
            preload=self.preload,
            model_name=self.name,
            config={"device": self.device, "sw_batch_size": 32},
        )

    def trainer(self):
        return self.train_task(description=self.train_description, **self.trainer_kwargs())

    def current_checkpoint(self):
        return served_checkpoint(self.path)

    def trainer_kwargs(self) -> dict:
        s = self.settings
        return dict(
            model_dir=os.path.join(self.model_dir, self.name),
            network_factory=self.bundle_network,
            init_paths=self.path,
            publish_path=self.published_path,
            spatial_size=self.spatial_size,
            context_slices=self.context_slices,
            lambda_bits=float(s["lambda_bits"]),
            bit_reduction=s["bit_reduction"],
            learning_rate=float(self.conf.get("learning_rate", OPTIONS["learning_rate"].default)),
            bit_learning_rate=float(self.conf.get("bit_learning_rate", s["bit_learning_rate"])),
            freeze_bit_widths=strtobool(self.conf.get("freeze_bit_widths", "true")),
            freeze_batch_norm=strtobool(self.conf.get("freeze_batch_norm", "true")),
            num_samples=int(self.conf.get("num_samples", 8)),
            **({"tumor_fraction": float(s["tumor_fraction"])} if "tumor_fraction" in s else {}),
            labels=self.labels,
        )
