"""MONAI Label app for 3D Slicer: QuantU-Net auto-segmentation, click refinement (DeepEdit-style) and training
from the labels users save.

Start (offline, CPU)::

    monailabel start_server --app slicer_app --studies DIR --host 127.0.0.1 --port 8000 \
        [--conf models segmentation,deepedit] [--conf checkpoint PATH] [--conf deepedit_checkpoint PATH] \
        [--conf use_pretrained_model false] [--conf model_dir DIR] [--conf freeze_bit_widths true]

``--conf`` keys (all optional):

* ``models``: comma-separated subset of ``segmentation,deepedit`` (default: both, also ``all``).
* ``checkpoint`` / ``deepedit_checkpoint``: starting checkpoints (default: the bundle's ``models/model.pt`` and
  ``models/deepedit_model.pt``). A missing or mismatching file is not fatal: the model is served with initial
  weights and a warning is logged.
* ``use_pretrained_model``: ``false`` ignores those checkpoints (start from initial weights).
* ``model_dir``: where training writes and publishes checkpoints (default ``slicer_app/model``); a published
  ``<model_dir>/<name>.pt`` takes precedence over the starting checkpoint. User files are never overwritten.
* ``bundle_root``: the bundle whose ``configs/train.json`` defines the network (default: this repository's).
* ``device``: ``cpu`` (default) or ``cuda``.
* ``freeze_bit_widths``: ``true`` keeps the per-layer bit widths fixed during fine-tuning.
* ``preload``: ``true`` (default) builds the networks at start-up.
* ``lc_max_samples``: how many unlabeled volumes the least-confidence strategy scores per request (default 16).
"""

from __future__ import annotations

import logging
import os
from typing import Dict

import lib.configs
from fastapi import HTTPException
from lib.activelearning import LeastConfidence
from lib.datastore import ValidatingDatastore

from monailabel.config import settings
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.config import TaskConfig
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.exception import MONAILabelError, MONAILabelException
from monailabel.interfaces.tasks.infer_v2 import InferTask
from monailabel.interfaces.tasks.scoring import ScoringMethod
from monailabel.interfaces.tasks.strategy import Strategy
from monailabel.interfaces.tasks.train import TrainTask
from monailabel.tasks.activelearning.first import First
from monailabel.tasks.activelearning.random import Random
from monailabel.utils.others.generic import strtobool

from monai_quantunet.labeling import InputError, check_image_file

logger = logging.getLogger(__name__)

# MLflow tracking is off by default in this app (trainers pick "None"); if a user selects it, a local file store
# must be allowed (MLflow >= 3 refuses it otherwise).
os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")


class QuantUNetApp(MONAILabelApp):
    def __init__(self, app_dir, studies, conf):
        self.model_dir = conf.get("model_dir") or os.path.join(app_dir, "model")
        os.makedirs(self.model_dir, exist_ok=True)

        configs = dict(lib.configs.MODELS)
        requested = [m.strip() for m in (conf.get("models") or "all").split(",") if m.strip()]
        invalid = [m for m in requested if m != "all" and m not in configs]
        if invalid:
            raise ValueError(f"unknown model(s) {invalid} in --conf models; available: all, {', '.join(configs)}")

        self.models: Dict[str, TaskConfig] = {}
        for name, cls in configs.items():
            if "all" in requested or name in requested:
                logger.info(f"+++ Adding Model: {name} => {cls}")
                self.models[name] = cls()
                self.models[name].init(name, self.model_dir, conf, None)
        logger.info(f"+++ Using Models: {list(self.models.keys())}")

        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="QuantU-Net brain tumor (FLAIR) segmentation",
            description="Quantized (Brevitas) slice-wise U-Net: auto-segmentation, click refinement, training",
            version="0.1.0",
        )

    # --------------------------------------------------------------------------------------------------------
    def init_datastore(self) -> Datastore:
        if self.studies.startswith("http://") or self.studies.startswith("https://"):
            return super().init_datastore()
        logger.info(f"Init validating local datastore for: {self.studies}")
        return ValidatingDatastore(
            self.studies,
            extensions=settings.MONAI_LABEL_DATASTORE_FILE_EXT,
            auto_reload=settings.MONAI_LABEL_DATASTORE_AUTO_RELOAD,
            read_only=settings.MONAI_LABEL_DATASTORE_READ_ONLY,
        )

    def init_infers(self) -> Dict[str, InferTask]:
        infers: Dict[str, InferTask] = {}
        for name, task_config in self.models.items():
            c = task_config.infer()
            for k, v in (c if isinstance(c, dict) else {name: c}).items():
                logger.info(f"+++ Adding Inferer:: {k} => {v}")
                infers[k] = v
        return infers

    def init_trainers(self) -> Dict[str, TrainTask]:
        trainers: Dict[str, TrainTask] = {}
        if strtobool(self.conf.get("skip_trainers", "false")):
            return trainers
        for name, task_config in self.models.items():
            t = task_config.trainer()
            if t:
                logger.info(f"+++ Adding Trainer:: {name} => {t}")
                trainers[name] = t
        return trainers

    def init_strategies(self) -> Dict[str, Strategy]:
        strategies: Dict[str, Strategy] = {}
        seg = self._infers.get("segmentation") if hasattr(self, "_infers") else None
        if seg is not None:
            max_samples = int(self.conf.get("lc_max_samples", "16"))
            strategies["least_confidence"] = LeastConfidence(seg, max_samples=max_samples)
        strategies.update({"random": Random(), "first": First()})
        logger.info(f"Active Learning Strategies:: {list(strategies.keys())}")
        return strategies

    def init_scoring_methods(self) -> Dict[str, ScoringMethod]:
        return {}

    # --------------------------------------------------------------------------------------------------------
    def infer(self, request, datastore=None):
        """Validate what the app controls and answer 4xx (not MONAI Label's default 500) for bad input."""
        model = request.get("model")
        if not model or model not in self._infers:
            raise HTTPException(status_code=404, detail=f"unknown model {model!r}; available: {sorted(self._infers)}")
        image = request.get("image")
        if not image:
            raise HTTPException(status_code=400, detail="no image id or file given")
        if isinstance(image, str):
            ds = datastore if datastore else self.datastore()
            path = image if os.path.exists(image) else ds.get_image_uri(image)
            if not path or not os.path.exists(path):
                raise HTTPException(status_code=404, detail=f"image {image!r} not found in the datastore")
            try:
                check_image_file(path, what=f"image {os.path.basename(image)!r}")
            except InputError as e:
                raise HTTPException(status_code=422, detail=str(e))
        if request.get("label_tag") == "final":
            request = dict(request, label_tag="original")  # inference never writes over a user's final label
        try:
            return super().infer(request, datastore)
        except HTTPException:
            raise
        except Exception as e:  # transforms wrap the cause; find a user-input error in the chain
            cause = _input_error(e)
            if cause is not None:
                raise HTTPException(status_code=422, detail=str(cause))
            if isinstance(e, MONAILabelException):
                raise HTTPException(status_code=400, detail=e.msg)
            raise

    def train(self, request):
        model = request.get("model")
        if model and model not in self._trainers:
            raise MONAILabelException(
                MONAILabelError.INVALID_INPUT, f"unknown model {model!r} to train; available: {sorted(self._trainers)}"
            )
        return super().train(request)


def _input_error(e: BaseException):
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, ValueError):
            return e
        e = e.__cause__ or e.__context__
    return None
