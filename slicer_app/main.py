"""MONAI Label app for 3D Slicer: QuantU-Net auto-segmentation, click refinement (DeepEdit-style) and training
from the labels users save.

Start (offline, CPU)::

    monailabel start_server --app slicer_app --studies DIR --host 127.0.0.1 --port 8000 \
        [--conf models segmentation,deepedit] [--conf checkpoint PATH] [--conf deepedit_checkpoint PATH] \
        [--conf use_pretrained_model false] [--conf model_dir DIR] [--conf max_voxels N]

``--conf`` keys (all optional):

* ``models``: comma-separated subset of ``segmentation,deepedit`` (default: both, also ``all``).
* ``checkpoint`` / ``deepedit_checkpoint``: starting checkpoints (default: ``models/model.pt`` of the bundles
  ``quantunet_brain_tumor_seg`` and ``quantunet_interactive_tumor_seg``). A missing or mismatching file is not
  fatal: the model is served with initial weights and a warning is logged.
* ``deepedit_bundle_root``: the interactive bundle (network and settings of ``deepedit``). ``deepedit`` refines
  the current mask it keeps per client, image and label (``lib/infers/deepedit.py``); it starts from the
  ``segmentation`` model's answer, which is built even when ``models`` leaves it out.
* ``use_pretrained_model``: ``false`` ignores those checkpoints (start from initial weights).
* ``model_dir``: where training writes and publishes checkpoints (default ``slicer_app/model``); a published
  ``<model_dir>/<name>.pt`` takes precedence over the starting checkpoint. User files are never overwritten.
* ``bundle_root``: the bundle whose ``configs/train.json`` defines the network (default: this repository's).
* ``device``: ``cpu`` (default) or ``cuda``.
* ``freeze_bit_widths`` / ``freeze_batch_norm``: ``true`` (default) keeps the per-layer bit widths / the
  BatchNorm statistics fixed during fine-tuning.
* ``preload``: ``true`` (default) builds the networks at start-up.
* ``lc_max_samples``: how many unlabeled volumes the least-confidence strategy scores per request (default 16).
* ``max_voxels`` / ``max_upload_bytes`` / ``max_clicks``: size limits (defaults 16777216 voxels = 256^3,
  134217728 bytes, 256 clicks per request), answered with 413 before the work is done.
* ``learning_rate`` / ``bit_learning_rate``: fine-tuning learning rates (default 1e-5 / the bundle's).

A training run publishes only under the rule in ``lib/trainers/base.py`` (held-out volumes, minimum gain).

Requests are checked by the app (``lib/validation/``, ``lib/guards.py``, ``lib/datastore.py``): bad names,
files and parameters answer 4xx with a message, nothing outside the studies folder is read or written, and final
labels are written only by label uploads.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Dict

import lib.configs
from lib import guards
from lib.activelearning import LeastConfidence
from lib.datastore import StudiesDatastore
from lib.validation import (
    Limits,
    RequestError,
    check_device,
    check_image_id,
    check_infer_params,
    check_volume_file,
)
from lib.train_options import check_train_params

from fastapi import HTTPException

from monailabel.config import settings
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.config import TaskConfig
from monailabel.interfaces.datastore import Datastore, DefaultLabelTag
from monailabel.interfaces.exception import MONAILabelError, MONAILabelException
from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType
from monailabel.interfaces.tasks.scoring import ScoringMethod
from monailabel.interfaces.tasks.strategy import Strategy
from monailabel.interfaces.tasks.train import TrainTask
from monailabel.tasks.activelearning.first import First
from monailabel.tasks.activelearning.random import Random
from monailabel.utils.others.generic import strtobool

logger = logging.getLogger(__name__)

# MLflow tracking is off by default in this app (trainers pick "None"); if a user selects it, a local file store
# must be allowed (MLflow >= 3 refuses it otherwise).
os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")


class QuantUNetApp(MONAILabelApp):
    def __init__(self, app_dir, studies, conf):
        self.model_dir = conf.get("model_dir") or os.path.join(app_dir, "model")
        os.makedirs(self.model_dir, exist_ok=True)
        self.limits = Limits.from_conf(conf)
        self._uploads: set = set()
        self._uploads_lock = threading.Lock()
        self._checked_files: Dict[str, tuple] = {}

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
            raise ValueError("this app serves a local studies folder only (--studies DIR)")
        logger.info(f"Init studies datastore for: {self.studies}")
        return StudiesDatastore(
            self.studies,
            limits=self.limits,
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
        deepedit = infers.get("deepedit")
        if deepedit is not None:  # refines the current mask, which starts as the auto-segmentation
            segmentation = infers.get("segmentation")
            if segmentation is None:  # not served, still needed as deepedit's start
                config = lib.configs.MODELS["segmentation"]()
                config.init("segmentation", self.model_dir, self.conf, None)
                segmentation = config.infer()
            deepedit.auto_segmenter = segmentation.segment_file
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

    def on_init_complete(self):
        super().on_init_complete()
        import monailabel.app as server  # the running server (on_init_complete is called in server mode only)

        guards.install(server.app, self)

    # ---- what requests may name -----------------------------------------------------------------------------
    def infer_models(self):
        return set(self._infers)

    def train_models(self):
        return set(self._trainers)

    def scoring_methods(self):
        return set(self._scoring_methods)

    def validate_infer_params(self, model, params) -> None:
        """Infer parameters (result format, clicks and their number, save_label tag, options) of ``model``."""
        if not isinstance(model, str) or model not in self._infers:
            raise RequestError(404, f"unknown model {str(model)[:80]!r}; available: {sorted(self._infers)}")
        task = self._infers[model]
        takes_clicks = task.type in (InferType.DEEPEDIT, InferType.DEEPGROW)
        check_infer_params({**params, "model": model}, takes_clicks, task.labels, self.limits)

    def register_upload(self, path: str, background_tasks) -> str:
        """A volume uploaded with an infer request (a private temporary file): the only path, besides datastore
        ids, that inference accepts. Forgotten once the answer is sent."""
        path = os.path.realpath(path)
        with self._uploads_lock:
            self._uploads.add(path)
        background_tasks.add_task(self._forget_upload, path)
        return path

    def _in_session_store(self, path: str) -> bool:
        """A session's volume (written by the server's own session store from an upload)."""
        sessions = self.sessions()
        if sessions is None or not os.path.isabs(path):
            return False
        store = os.path.realpath(sessions.store_path)
        real = os.path.realpath(path)
        return real != store and os.path.commonpath([real, store]) == store and os.path.isfile(real)

    def _forget_upload(self, path: str) -> None:
        with self._uploads_lock:
            self._uploads.discard(path)

    def _checked_volume(self, path: str, what: str, cache: bool = True):
        """Full read check (datastore files: once per version, i.e. path, size, mtime) and the voxel limit."""
        st = os.stat(path)
        key = (st.st_size, st.st_mtime_ns)
        if cache and self._checked_files.get(path) == key:
            check_volume_file(path, self.limits, what=what, read_voxels=False)
            return
        check_volume_file(path, self.limits, what=what, read_voxels=True)
        if cache:
            self._checked_files[path] = key

    # --------------------------------------------------------------------------------------------------------
    def infer(self, request, datastore=None):
        """Only datastore images (by id) or a volume uploaded with this request; parameters checked; answers 4xx
        (not MONAI Label's default 500) for bad input."""
        model = request.get("model")
        if not isinstance(model, str) or model not in self._infers:
            raise RequestError(404, f"unknown model {str(model)[:80]!r}; available: {sorted(self._infers)}")
        image = request.get("image")
        if not isinstance(image, str) or not image:
            raise RequestError(422, "no image given: add ?image=ID (a datastore image) or upload a volume as 'file'")
        ds = datastore if datastore else self.datastore()
        with self._uploads_lock:
            uploaded = image in self._uploads
        save_to = None
        if uploaded or self._in_session_store(image):
            self._checked_volume(image, "uploaded file", cache=False)
        else:
            path = ds.image_path_checked(check_image_id(image))
            self._checked_volume(path, f"image {image!r}")
            # MONAI Label reads an id that names a file in the server's working directory as that file: hand it
            # the datastore file itself, and save the result label here (it saves none for a file path)
            request = {**request, "image": path}
            save_to = image
        self.validate_infer_params(model, request)
        try:
            result = super().infer(request, ds)
        except HTTPException:
            raise
        except Exception as e:  # transforms wrap the cause; find a user-input error in the chain
            cause = _input_error(e)
            if cause is not None:
                raise RequestError(422, str(cause)[:500])
            if isinstance(e, MONAILabelException):
                raise RequestError(400, e.msg)
            raise
        if save_to is not None and strtobool(str(request.get("save_label", False))) and result.get("file"):
            tag = request.get("label_tag", DefaultLabelTag.ORIGINAL.value)
            try:
                result["label"] = ds.save_label(save_to, result["file"], tag, {"model": model, "params": result.get("params")})
            except BaseException:
                os.remove(result["file"])  # the answer is an error: its result file is nobody's
                raise
        return result

    def batch_infer(self, request, datastore=None):
        """MONAI Label's batch inference spreads images over the CUDA devices it counts: on a server without one
        it divides by zero. Here the images then run on the CPU, one after the other."""
        import torch

        if not torch.cuda.is_available():
            request = {**request, "multi_gpu": False, "device": "cpu", "max_workers": 1}
        return super().batch_infer(request, datastore)

    def on_save_label(self, image_id, label_id):
        """A saved label ends the click session of that image: deepedit forgets its current masks (all clients)."""
        deepedit = self._infers.get("deepedit")
        if deepedit is not None:
            n = deepedit.forget_image(self.datastore().get_image_uri(image_id))
            logger.info(f"deepedit: label saved for {image_id!r}; {n} click session(s) reset")
        return super().on_save_label(image_id, label_id)

    def infer_wsi(self, request, datastore=None):
        raise RequestError(404, "whole-slide (WSI) inference is not served by this app; use /infer/{model}")

    def next_sample(self, request):
        strategy = request.get("strategy") or "random"
        if strategy not in self._strategies:
            raise RequestError(404, f"unknown active learning strategy {str(strategy)[:80]!r}; available: {sorted(self._strategies)}")
        if request.get("device") is not None:
            check_device(request["device"])
        return super().next_sample(request)

    # ---- training -------------------------------------------------------------------------------------------
    def validate_train_request(self, model, params) -> dict:
        """Checked before the request is queued (``POST /train/...``) and again in the training process."""
        if not isinstance(model, str) or model not in self._trainers:
            raise RequestError(404, f"unknown model {str(model)[:80]!r} to train; available: {sorted(self._trainers)}")
        params = check_train_params(params, self._trainers[model].config())
        if not self.datastore().datalist():
            raise RequestError(409, "no final labels to train on: submit labels first (PUT /datastore/label)")
        return params

    def train(self, request):
        request = dict(request)
        model = request.pop("model", None)
        try:
            params = self.validate_train_request(model, {k: v for k, v in request.items() if k not in _SERVER_TRAIN_KEYS})
        except RequestError as e:
            raise MONAILabelException(MONAILabelError.INVALID_INPUT, e.message)
        request.update(params)
        request["model"] = model
        return super().train(request)


# keys MONAI Label itself adds to a train request (not the client's)
_SERVER_TRAIN_KEYS = ("bundle_path", "run_id", "local_rank", "world_size")


def _input_error(e: BaseException):
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, ValueError):
            return e
        e = e.__cause__ or e.__context__
    return None
