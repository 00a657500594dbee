"""The options of a training request, each declared once: its default (what ``/info`` shows and 3D Slicer sends
back) and the values it accepts. The trainer's config (:func:`trainer_config`) and the request check
(:func:`check_train_params`) are both read from :data:`OPTIONS`."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Sequence

from lib.validation import RequestError, check_device, check_label_tag, parse_bool, parse_number

__all__ = ["Option", "OPTIONS", "trainer_config", "check_train_params"]


@dataclass(frozen=True)
class Option:
    """``kind``: ``int`` / ``float`` (within ``[low, high]``), ``bool``, ``choice`` (one of ``default``, a list whose
    first entry is the default), ``tag`` (a run folder name), ``device``, ``gpus``, ``text`` (at most 128
    characters), ``fixed`` (only the server's own value). ``default`` ``None``: MONAI Label's own default."""

    kind: str
    default: Any = None
    low: Optional[float] = None
    high: Optional[float] = None


OPTIONS: Dict[str, Option] = {
    # MONAI Label's BasicTrainTask options (its defaults)
    "name": Option("tag"),
    "pretrained": Option("bool"),
    "device": Option("device"),
    "early_stop_patience": Option("int", None, -1, 1000),
    "gpus": Option("gpus"),
    "tracking_uri": Option("fixed"),
    "tracking_experiment_name": Option("fixed"),
    # this app's values
    "max_epochs": Option("int", 10, 1, 1000),
    "train_batch_size": Option("int", 4, 1, 256),
    "val_batch_size": Option("int", 1, 1, 256),
    "val_split": Option("float", 0.2, 0.0, 0.9),
    # fine-tuning a few user labels starts from a trained model: 1/100 of the bundle's from-scratch learning rate
    # (1e-3), frozen bit widths and BatchNorm statistics keep what the shipped model knows (benchmarks/finetune.py);
    # the server's --conf values replace these defaults
    "learning_rate": Option("float", 1e-5, 1e-9, 1.0),
    "bit_learning_rate": Option("float", 1e-2, 0.0, 1.0),
    "freeze_bit_widths": Option("bool", True),
    "freeze_batch_norm": Option("bool", True),
    "publish_without_holdout": Option("bool", False),  # see lib/trainers/base.py
    "min_dice_gain": Option("float", 0.01, 0.0, 1.0),  # held-out mean Dice gain needed to publish
    "min_holdout_volumes": Option("int", 2, 1, 1000),  # held-out volumes needed to publish
    "multi_gpu": Option("bool", False),
    "dataset": Option("choice", ["CacheDataset", "Dataset"]),
    "dataloader": Option("choice", ["DataLoader", "ThreadDataLoader"]),
    "tracking": Option("choice", ["None", "mlflow"]),  # MLflow off unless asked
    # sent by MONAI Label's client with every request
    "client_id": Option("text"),
}


def trainer_config(**defaults: Any) -> Dict[str, Any]:
    """The config a trainer declares (``BasicTrainTask(config=...)``): every option with a default of its own,
    ``defaults`` (the server's ``--conf`` values) replacing them."""
    unknown = sorted(set(defaults) - set(OPTIONS))
    if unknown:
        raise ValueError(f"unknown training option(s) {unknown}")
    config = {k: o.default for k, o in OPTIONS.items() if o.default is not None and o.kind != "text"}
    config.update(defaults)
    return config


def _first(value: Any) -> Any:
    return value[0] if isinstance(value, (list, tuple)) and value else value


def check_train_params(params: Any, config: Mapping[str, Any]) -> Dict[str, Any]:
    """Train request parameters: a JSON object of :data:`OPTIONS` keys with values they accept (``config``: the
    trainer's config, for the server's own values); returns them parsed (lists of choices to their first entry)."""
    if not isinstance(params, dict):
        raise RequestError(422, "train params: expected a JSON object")
    unknown = sorted(k for k in params if k not in OPTIONS)
    if unknown:
        raise RequestError(422, f"train params: unknown key(s) {unknown}; allowed: {sorted(OPTIONS)}")
    checked = {}
    for key, value in params.items():
        option = OPTIONS[key]
        if option.kind in ("int", "float"):
            value = parse_number(value, key, int if option.kind == "int" else float, option.low, option.high)
        elif option.kind == "bool":
            value = parse_bool(value, key)
        elif option.kind == "choice":
            value = _first(value)
            choices: Sequence = config.get(key) or option.default
            if value not in choices:
                raise RequestError(422, f"{key}: {str(value)[:40]!r} is not one of {list(choices)}")
        elif option.kind == "tag":
            check_label_tag(value, f"{key} (the run's folder)")
        elif option.kind == "device":
            check_device(value)
        elif option.kind == "gpus":
            if not (value == "all" or re.fullmatch(r"\d{1,2}(,\d{1,2})*", str(value))):
                raise RequestError(422, f"gpus: expected 'all' or a list such as '0,1', got {value!r}"[:300])
        elif option.kind == "text":
            if value is not None and (not isinstance(value, str) or len(value) > 128):
                raise RequestError(422, f"{key}: expected a short text")
        elif option.kind == "fixed" and value not in ("", None, config.get(key)):
            raise RequestError(422, f"{key}: cannot be changed by a request (MLflow writes where the server is configured)")
        checked[key] = value
    return checked
