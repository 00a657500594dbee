"""Request parameters: JSON form fields, booleans, numbers, devices, and an infer request's parameters as 3D
Slicer's MONAI Label module sends them."""

from __future__ import annotations

import json
import re
from typing import Any, Dict, Mapping

import numpy as np

from lib.validation.errors import RequestError
from lib.validation.limits import Limits
from lib.validation.names import VOLUME_EXTENSIONS, check_label_tag

__all__ = ["parse_json_object", "parse_bool", "parse_number", "check_device", "check_infer_params"]


def parse_json_object(text: Any, what: str = "params") -> Dict[str, Any]:
    """``text`` (a form field) as a JSON object; empty means ``{}``."""
    if text is None or (isinstance(text, str) and not text.strip()):
        return {}
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    if not isinstance(text, str):
        raise RequestError(422, f"{what}: expected a JSON object as text")
    try:
        value = json.loads(text)
    except ValueError as e:
        raise RequestError(422, f"{what}: not valid JSON ({e})") from None
    if not isinstance(value, dict):
        raise RequestError(422, f"{what}: expected a JSON object ({{...}}), got {type(value).__name__} {text[:40]!r}")
    return value


RESULT_EXTENSIONS = VOLUME_EXTENSIONS
RESULT_DTYPES = ("uint8", "int16", "uint16", "int32", "float32")
CLICK_KEYS = ("foreground", "background")
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def parse_bool(value: Any, what: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
        return value.lower() in ("true", "1", "yes")
    raise RequestError(422, f"{what}: expected true or false, got {value!r}"[:300])


def parse_number(value: Any, what: str, kind=int, low=None, high=None):
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise RequestError(422, f"{what}: expected a number, got {value!r}"[:300])
    try:
        number = kind(float(value)) if kind is int else kind(value)
    except (TypeError, ValueError):
        raise RequestError(422, f"{what}: expected a number, got {value!r}"[:300]) from None
    if kind is int and float(value) != number:
        raise RequestError(422, f"{what}: expected an integer, got {value!r}")
    if not np.isfinite(number) or (low is not None and number < low) or (high is not None and number > high):
        raise RequestError(422, f"{what}: {value!r} is outside [{low}, {high}]")
    return number


def check_device(value: Any, what: str = "device") -> None:
    values = value if isinstance(value, (list, tuple)) else [value]
    from monailabel.utils.others.generic import device_map

    names = device_map()  # what /info lists (GPU names on a CUDA server), as 3D Slicer sends it back
    for v in values:
        if isinstance(v, str) and v in names:
            continue
        if not isinstance(v, str) or not re.fullmatch(r"cpu|cuda(:\d{1,2})?", v):
            raise RequestError(422, f"{what}: expected 'cpu', 'cuda[:N]' or one of {sorted(names)}, got {v!r}"[:300])
        if v.startswith("cuda"):
            import torch

            if not torch.cuda.is_available():
                raise RequestError(422, f"{what}: {v!r} requested but this server has no CUDA device; use 'cpu'")


def check_infer_params(request: Mapping[str, Any], takes_clicks: bool, label_names, limits: Limits) -> None:
    """The parameters of an infer request (after MONAI Label merged the app's config and the client's params).

    Besides the result format, options and clicks, 3D Slicer's MONAI Label module (``onClickDeepgrow`` of
    ``plugins/slicer/MONAILabel/MONAILabel.py``, pinned in the app's README) sends ``label`` (the segment being
    edited), ``reset_state``, ``roi`` (IJK box ``[i0, i1, j0, j1, k0, k1]`` of a placed ROI), ``slice`` (2D models)
    and ``client_id``: they are checked for type here and are never file names. Other keys are ignored, except
    ``skip_writer``, which would leave the server nothing to answer (422)."""
    ext = request.get("result_extension")
    if ext is not None and ext not in RESULT_EXTENSIONS:
        raise RequestError(422, f"result_extension: {str(ext)[:40]!r} is not supported; use one of {', '.join(RESULT_EXTENSIONS)}")
    dtype = request.get("result_dtype")
    if dtype is not None and dtype not in RESULT_DTYPES:
        raise RequestError(422, f"result_dtype: {str(dtype)[:40]!r} is not supported; use one of {', '.join(RESULT_DTYPES)}")
    for key in ("result_compress", "save_label"):
        if request.get(key) is not None:
            parse_bool(request[key], key)
    if parse_bool(request.get("save_label", False), "save_label"):
        tag = check_label_tag(request.get("label_tag", "original"), "label_tag")
        if tag.lower() == "final":
            raise RequestError(403, f"label_tag {tag!r}: final labels are written only by label uploads (PUT /datastore/label)")
    if request.get("sw_batch_size") is not None:
        parse_number(request["sw_batch_size"], "sw_batch_size", int, 1, 256)
    if request.get("device") is not None:
        check_device(request["device"])
    if request.get("logging") is not None and str(request["logging"]).upper() not in _LOG_LEVELS:
        raise RequestError(422, f"logging: expected one of {', '.join(_LOG_LEVELS)}")
    label = request.get("label")
    if label is not None and (not isinstance(label, str) or len(label) > 128):
        raise RequestError(422, f"label: expected the name of the segment being edited (text), got {label!r}"[:300])
    if request.get("client_id") is not None and (not isinstance(request["client_id"], str) or len(request["client_id"]) > 128):
        raise RequestError(422, "client_id: expected a short text")
    if request.get("reset_state") is not None:
        parse_bool(request["reset_state"], "reset_state")
    roi = request.get("roi")
    if roi is not None and roi != [] and not (
        isinstance(roi, (list, tuple)) and len(roi) == 6 and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in roi)
    ):
        raise RequestError(422, f"roi: expected [i0, i1, j0, j1, k0, k1] (voxels), got {roi!r}"[:300])
    if request.get("slice") is not None:
        parse_number(request["slice"], "slice", int, 0, None)
    if request.get("skip_writer") is not None and parse_bool(request["skip_writer"], "skip_writer"):
        raise RequestError(422, "skip_writer: not supported; the server always answers with the result file")
    click_keys = [*CLICK_KEYS, *[k for k in (label_names or {}) if k != "background"]]
    total = 0
    for key in click_keys:
        clicks = request.get(key)
        if clicks is None or (isinstance(clicks, (list, tuple)) and len(clicks) == 0):
            continue
        if not takes_clicks:
            raise RequestError(422, f"{key}: model {request.get('model')!r} takes no clicks; send them to the deepedit model")
        if isinstance(clicks, (list, tuple)):
            total += len(clicks) if clicks and isinstance(clicks[0], (list, tuple)) else 1
    if total > limits.max_clicks:
        raise RequestError(413, f"{total} clicks in one request is over the limit of {limits.max_clicks} (--conf max_clicks)")
