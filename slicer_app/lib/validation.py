"""What the app accepts from a client: names, request parameters, files, and the size limits.

Every check raises :class:`RequestError` with the HTTP status to answer and a message naming the parameter or
file; the server turns it into a 4xx (never a 500). The rules (also in the README, "Use it from 3D Slicer"):

* **image id**: 1-128 characters from ``A-Z a-z 0-9 . _ -``, starting with a letter or digit, without ``..``
  (so never a separator, a parent folder or an absolute path);
* **label tag**: 1-64 characters from ``A-Z a-z 0-9 _ -``, starting with a letter or digit;
* **volumes**: ``.nii.gz``, ``.nii`` or ``.nrrd``, a single-channel 3D image whose voxels are fully readable (a
  truncated file is refused at upload), at most ``max_voxels`` voxels and ``max_upload_bytes`` bytes (413);
* **labels**: the image's size, values 0/1 (stored as uploaded) or 0/255 (binarised: 255 -> 1, stored as 0/1
  uint8); any other value (other integers, fractions, negatives) is refused (422);
* **clicks**: at most ``max_clicks`` per request (413).
"""

from __future__ import annotations

import json
import os
import re
import zlib
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Tuple

import numpy as np
from fastapi import HTTPException

__all__ = [
    "RequestError",
    "Limits",
    "IMAGE_ID_RULE",
    "LABEL_TAG_RULE",
    "VOLUME_EXTENSIONS",
    "check_image_id",
    "check_label_tag",
    "volume_extension",
    "parse_json_object",
    "check_volume_file",
    "read_label_values",
]

IMAGE_ID_RULE = "1-128 characters from A-Z a-z 0-9 . _ -, starting with a letter or digit, without '..'"
LABEL_TAG_RULE = "1-64 characters from A-Z a-z 0-9 _ -, starting with a letter or digit"
_IMAGE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_LABEL_TAG = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
VOLUME_EXTENSIONS = (".nii.gz", ".nii", ".nrrd")


class RequestError(HTTPException):
    """A request the app refuses: ``status`` (4xx) and a message for the client (FastAPI answers it as is)."""

    def __init__(self, status: int, message: str):
        super().__init__(status_code=int(status), detail=message)
        self.status = int(status)
        self.message = message

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class Limits:
    """Size limits, from ``--conf`` (defaults fit a 256 x 256 x 200 volume and an annotator's session)."""

    max_voxels: int = 256 * 256 * 256
    max_upload_bytes: int = 128 * 1024 * 1024
    max_clicks: int = 256

    @classmethod
    def from_conf(cls, conf: Mapping[str, str]) -> "Limits":
        values = {}
        for key in ("max_voxels", "max_upload_bytes", "max_clicks"):
            raw = conf.get(key)
            if raw is None or raw == "":
                continue
            try:
                value = int(float(raw))
            except ValueError:
                raise ValueError(f"--conf {key}: expected a positive integer, got {raw!r}") from None
            if value < 1:
                raise ValueError(f"--conf {key}: expected a positive integer, got {raw!r}")
            values[key] = value
        return cls(**values)


def check_image_id(image_id: Any, what: str = "image id") -> str:
    if not isinstance(image_id, str) or not image_id:
        raise RequestError(422, f"{what}: missing (expected {IMAGE_ID_RULE})")
    if len(image_id) > 128:
        raise RequestError(422, f"{what}: {len(image_id)} characters is too long (expected {IMAGE_ID_RULE})")
    if not _IMAGE_ID.fullmatch(image_id) or ".." in image_id:
        raise RequestError(422, f"{what} {image_id!r} is not allowed (expected {IMAGE_ID_RULE})")
    return image_id


def check_label_tag(tag: Any, what: str = "label tag") -> str:
    if not isinstance(tag, str) or not tag:
        raise RequestError(422, f"{what}: missing (expected {LABEL_TAG_RULE})")
    if len(tag) > 64 or not _LABEL_TAG.fullmatch(tag):
        raise RequestError(422, f"{what} {tag[:80]!r} is not allowed (expected {LABEL_TAG_RULE})")
    return tag


def volume_extension(filename: Optional[str], what: str = "file") -> str:
    """The volume extension of an uploaded file name (``.nii.gz`` when the client sent none)."""
    if not filename:
        return ".nii.gz"
    name = os.path.basename(str(filename)).lower()
    for ext in VOLUME_EXTENSIONS:
        if name.endswith(ext):
            return ext
    raise RequestError(422, f"{what} {os.path.basename(str(filename))[:80]!r}: expected one of {', '.join(VOLUME_EXTENSIONS)}")


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


def _reader(path: str, what: str):
    import SimpleITK as sitk

    if not os.path.isfile(path) or os.path.getsize(path) == 0:
        raise RequestError(422, f"{what}: file is missing or empty")
    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    try:
        reader.ReadImageInformation()
    except RuntimeError as e:
        raise RequestError(422, f"{what}: not a readable image file: {_last_line(e)}") from None
    return reader


def _last_line(e: BaseException) -> str:
    lines = [line for line in str(e).strip().splitlines() if line.strip()]
    return (lines[-1] if lines else type(e).__name__)[:200]


def check_volume_file(path: str, limits: Limits, what: str = "image", read_voxels: bool = True) -> Tuple[int, int, int]:
    """Check a volume file: size on disk, header (single-channel 3D), voxel count, then (``read_voxels``) that
    every voxel can be read. Returns the size (IJK). The voxel count is checked from the header, before any
    voxel is decompressed."""
    import SimpleITK as sitk

    if os.path.isfile(path) and os.path.getsize(path) > limits.max_upload_bytes:
        raise RequestError(413, f"{what}: {os.path.getsize(path)} bytes is over the limit of {limits.max_upload_bytes} bytes (--conf max_upload_bytes)")
    reader = _reader(path, what)
    size = list(reader.GetSize())
    if reader.GetNumberOfComponents() != 1:
        raise RequestError(422, f"{what}: expected a single-channel (grayscale) volume, got {reader.GetNumberOfComponents()} components")
    while len(size) > 3 and size[-1] == 1:
        size.pop()
    if len(size) != 3:
        raise RequestError(422, f"{what}: expected a 3D volume, got a {len(size)}D image of size {size} (2D images are not supported)")
    if min(size[:2]) < 2 or size[2] < 1:
        raise RequestError(422, f"{what}: volume of size {size} is too small")
    voxels = int(np.prod(size, dtype=np.int64))
    if voxels > limits.max_voxels:
        raise RequestError(413, f"{what}: {voxels} voxels ({' x '.join(map(str, size))}) is over the limit of {limits.max_voxels} voxels (--conf max_voxels)")
    if read_voxels:
        _read_all_voxels(path, what)
    return tuple(int(s) for s in size)


def _read_all_voxels(path: str, what: str) -> None:
    """Decompress and read every voxel the way the inference loader does (nibabel for NIfTI, which refuses a
    truncated ``.nii.gz`` that ITK would pad silently; SimpleITK for NRRD)."""
    import SimpleITK as sitk

    try:
        if path.lower().endswith((".nii", ".nii.gz")):
            import nibabel as nib

            np.asanyarray(nib.load(path).dataobj)
        else:
            sitk.ReadImage(path)
    except (RuntimeError, OSError, EOFError, ValueError, zlib.error) as e:
        raise RequestError(422, f"{what}: the voxel data cannot be read (truncated or corrupt file?): {_last_line(e)}") from None


def read_label_values(path: str, image_size: Tuple[int, ...], limits: Limits, what: str = "label"):
    """Check a label upload and return ``(binarised_image_or_None, rule)``: ``None`` when the file is stored as
    uploaded (values 0/1), a SimpleITK uint8 image when it must be binarised (values 0/255 -> 0/1).
    Refuses (422) a size different from the image and any other value."""
    import SimpleITK as sitk

    size = check_volume_file(path, limits, what=what, read_voxels=False)
    if tuple(size) != tuple(image_size):
        raise RequestError(422, f"{what}: size {list(size)} differs from the image size {list(image_size)}")
    _read_all_voxels(path, what)
    try:
        img = sitk.ReadImage(path)
    except RuntimeError as e:
        raise RequestError(422, f"{what}: the voxel data cannot be read (truncated or corrupt file?): {_last_line(e)}") from None
    arr = sitk.GetArrayViewFromImage(img)
    values = np.unique(arr)
    if values.size > 8:
        raise RequestError(422, f"{what}: expected a binary mask (values 0/1, or 0/255), got {values.size} distinct values")
    shown = [float(v) if not float(v).is_integer() else int(v) for v in values.tolist()]
    if set(shown) <= {0, 1}:
        return None, "0/1"
    if set(shown) <= {0, 255}:
        out = sitk.Cast(sitk.BinaryThreshold(img, 255, 255, 1, 0), sitk.sitkUInt8)
        out.CopyInformation(img)
        return out, "0/255 binarised (255 -> 1)"
    raise RequestError(422, f"{what}: expected a binary mask (values 0/1, or 0/255), got values {shown}")


# ---- request parameters ----------------------------------------------------------------------------------------
RESULT_EXTENSIONS = VOLUME_EXTENSIONS
RESULT_DTYPES = ("uint8", "int16", "uint16", "int32", "float32")
CLICK_KEYS = ("foreground", "background")
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def _bool(value: Any, what: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
        return value.lower() in ("true", "1", "yes")
    raise RequestError(422, f"{what}: expected true or false, got {value!r}"[:300])


def _number(value: Any, what: str, kind=int, low=None, high=None):
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
    """The parameters of an infer request (after MONAI Label merged the app's config and the client's params)."""
    ext = request.get("result_extension")
    if ext is not None and ext not in RESULT_EXTENSIONS:
        raise RequestError(422, f"result_extension: {str(ext)[:40]!r} is not supported; use one of {', '.join(RESULT_EXTENSIONS)}")
    dtype = request.get("result_dtype")
    if dtype is not None and dtype not in RESULT_DTYPES:
        raise RequestError(422, f"result_dtype: {str(dtype)[:40]!r} is not supported; use one of {', '.join(RESULT_DTYPES)}")
    for key in ("result_compress", "save_label"):
        if request.get(key) is not None:
            _bool(request[key], key)
    if _bool(request.get("save_label", False), "save_label"):
        tag = check_label_tag(request.get("label_tag", "original"), "label_tag")
        if tag.lower() == "final":
            raise RequestError(403, f"label_tag {tag!r}: final labels are written only by label uploads (PUT /datastore/label)")
    if request.get("sw_batch_size") is not None:
        _number(request["sw_batch_size"], "sw_batch_size", int, 1, 256)
    if request.get("device") is not None:
        check_device(request["device"])
    if request.get("logging") is not None and str(request["logging"]).upper() not in _LOG_LEVELS:
        raise RequestError(422, f"logging: expected one of {', '.join(_LOG_LEVELS)}")
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


def check_train_params(params: Any, config: Mapping[str, Any], extra: Mapping[str, str]) -> Dict[str, Any]:
    """Train request parameters: a JSON object whose keys are the trainer's config keys (``config``, the
    defaults shown in ``/info``) or ``extra`` (key -> meaning); values of the right type and range."""
    if not isinstance(params, dict):
        raise RequestError(422, "train params: expected a JSON object")
    allowed = set(config) | set(extra)
    unknown = sorted(k for k in params if k not in allowed)
    if unknown:
        raise RequestError(422, f"train params: unknown key(s) {unknown}; allowed: {sorted(allowed)}")
    p = dict(params)
    ints = {"max_epochs": (1, 1000), "train_batch_size": (1, 256), "val_batch_size": (1, 256),
            "early_stop_patience": (-1, 1000), "num_samples": (1, 256), "min_holdout_volumes": (1, 1000)}
    floats = {"val_split": (0.0, 0.9), "learning_rate": (1e-9, 1.0), "bit_learning_rate": (0.0, 1.0),
              "min_dice_gain": (0.0, 1.0)}
    for key, (low, high) in ints.items():
        if key in p:
            p[key] = _number(p[key], key, int, low, high)
    for key, (low, high) in floats.items():
        if key in p:
            p[key] = _number(p[key], key, float, low, high)
    for key in ("freeze_bit_widths", "freeze_batch_norm", "pretrained", "multi_gpu", "publish_without_holdout"):
        if key in p:
            p[key] = _bool(p[key], key)
    for key in ("dataset", "dataloader", "tracking"):
        if key in p:
            choices = config.get(key)
            value = p[key][0] if isinstance(p[key], (list, tuple)) and p[key] else p[key]
            if isinstance(choices, (list, tuple)) and value not in choices:
                raise RequestError(422, f"{key}: {str(value)[:40]!r} is not one of {list(choices)}")
            p[key] = value
    if p.get("client_id") is not None and (not isinstance(p["client_id"], str) or len(p["client_id"]) > 128):
        raise RequestError(422, "client_id: expected a short text")
    if "name" in p:
        check_label_tag(p["name"], "name (the run's folder)")
    if "device" in p:
        check_device(p["device"])
    if "gpus" in p and not (p["gpus"] == "all" or re.fullmatch(r"\d{1,2}(,\d{1,2})*", str(p["gpus"]))):
        raise RequestError(422, f"gpus: expected 'all' or a list such as '0,1', got {p['gpus']!r}"[:300])
    for key in ("tracking_uri", "tracking_experiment_name"):
        if key in p and p[key] not in ("", None, config.get(key)):
            raise RequestError(422, f"{key}: cannot be changed by a request (MLflow writes where the server is configured)")
    return p
