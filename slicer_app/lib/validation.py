"""What the app accepts from a client: names, request parameters, files, and the size limits.

Every check raises :class:`RequestError` with the HTTP status to answer and a message naming the parameter or
file; the server turns it into a 4xx (never a 500). The rules (also in the README, "Use it from 3D Slicer"):

* **image id**: 1-128 characters from ``A-Z a-z 0-9 . _ -`` and inner spaces, ``( ) + , :`` (the volume names
  3D Slicer uploads under, e.g. ``5: AX FLAIR``), starting with a letter or digit, without ``..`` (so never a
  separator, a parent folder or an absolute path);
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
    "parse_bool",
    "parse_number",
    "check_device",
    "check_infer_params",
]

IMAGE_ID_RULE = (
    "1-128 characters from A-Z a-z 0-9 . _ - and inner spaces, ( ) + , : (3D Slicer's volume names), starting and "
    "ending with a letter, digit or one of . _ - ), without '..'"
)
LABEL_TAG_RULE = "1-64 characters from A-Z a-z 0-9 _ -, starting with a letter or digit"
_IMAGE_ID = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._() +,:-]{0,126}[A-Za-z0-9._)-])?")
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
    if image_id.lower().endswith(VOLUME_EXTENSIONS):
        raise RequestError(422, f"{what} {image_id!r} ends with a file extension: give the id without it")
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
    _refuse_detached_data(path, what)
    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    try:
        reader.ReadImageInformation()
    except RuntimeError as e:
        if _is_nifti2(path):
            raise RequestError(422, f"{what}: NIfTI-2 is not supported (its reader here reads NIfTI-1 only); save the volume as NIfTI-1 (.nii.gz) or NRRD") from None
        raise RequestError(422, f"{what}: not a readable image file: {_last_line(e)}") from None
    return reader


_NIFTI2_HEADER_SIZE = (b"\x1c\x02\x00\x00", b"\x00\x00\x02\x1c")  # sizeof_hdr 540, either byte order


def _is_nifti2(path: str) -> bool:
    import gzip

    if not path.lower().endswith((".nii", ".nii.gz")):
        return False
    try:
        with (gzip.open if path.lower().endswith(".gz") else open)(path, "rb") as f:
            return f.read(4) in _NIFTI2_HEADER_SIZE
    except (OSError, EOFError):
        return False


def _refuse_detached_data(path: str, what: str) -> None:
    """A NRRD header naming its voxel data in another file (``data file:``) would read whatever that file holds,
    wherever it is: only volumes whose data is inside the file are accepted."""
    if not path.lower().endswith(".nrrd"):
        return
    with open(path, "rb") as f:
        head = f.read(1 << 16)
    if not head.startswith(b"NRRD"):
        raise RequestError(422, f"{what}: not a NRRD file (no 'NRRD' magic)")
    header = head.split(b"\n\n", 1)[0].split(b"\r\n\r\n", 1)[0]
    for line in header.splitlines():
        if re.match(rb"\s*data\s*file\s*:", line, re.IGNORECASE):
            raise RequestError(422, f"{what}: detached NRRD header ('data file:' names another file); send a NRRD with its data attached")


def _last_line(e: BaseException) -> str:
    lines = [line for line in str(e).strip().splitlines() if line.strip()]
    return (lines[-1] if lines else type(e).__name__)[:200]


def check_volume_file(path: str, limits: Limits, what: str = "image", read_voxels: bool = True) -> Tuple[int, int, int]:
    """Check a volume file: size on disk, header (single-channel 3D, data attached), voxel count, then
    (``read_voxels``) that every voxel can be read and is finite. Returns the size (IJK). The voxel count is
    checked from the header, before any voxel is decompressed."""
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
        _read_voxels(path, what)
    return tuple(int(s) for s in size)


def _read_voxels(path: str, what: str) -> np.ndarray:
    """Every voxel ``(I, J, K)``, read the way the inference and training loaders read it (nibabel for NIfTI,
    scaling included, which refuses a truncated ``.nii.gz`` that ITK would pad silently; SimpleITK for NRRD);
    NaN or infinite values are refused (no mask can be computed from them, and training would read them)."""
    import SimpleITK as sitk

    try:
        if path.lower().endswith((".nii", ".nii.gz")):
            import nibabel as nib

            array = np.asanyarray(nib.load(path).dataobj)
        else:
            array = sitk.GetArrayFromImage(sitk.ReadImage(path)).transpose()
    except Exception as e:  # zlib, EOF, nibabel's and ITK's own errors: all mean the file cannot be read
        raise RequestError(422, f"{what}: the voxel data cannot be read (truncated or corrupt file?): {_last_line(e)}") from None
    array = array.reshape(array.shape[:3]) if array.ndim > 3 and all(s == 1 for s in array.shape[3:]) else array
    if np.issubdtype(array.dtype, np.floating):
        bad = int(np.count_nonzero(~np.isfinite(array)))
        if bad:
            raise RequestError(422, f"{what}: {bad} voxel(s) are NaN or infinite")
    return array


# tolerances of "the same geometry": spacing relative, origin in voxels, direction cosines absolute
_SPACING_RTOL, _ORIGIN_VOXELS, _DIRECTION_ATOL = 1e-3, 0.01, 1e-3


def _geometry(reader) -> dict:
    n = 3
    direction = np.array(reader.GetDirection()).reshape(len(reader.GetSize()), -1)[:n, :n]
    return {"size": np.array(reader.GetSize()[:n]), "spacing": np.array(reader.GetSpacing()[:n]),
            "origin": np.array(reader.GetOrigin()[:n]), "direction": direction}


def _is_slicer_segmentation(reader) -> bool:
    """3D Slicer's segmentation file (``.seg.nrrd``): its labelmap may cover only the segments' extent."""
    return any(key.startswith(("Segmentation_", "Segment0_")) for key in reader.GetMetaDataKeys())


def _label_offset(label: dict, image: dict, cropped_allowed: bool, what: str) -> Tuple[int, int, int]:
    """Where the label's voxel grid starts in the image's (IJK offset): (0, 0, 0) for the image's own grid, the
    crop offset for a 3D Slicer segmentation stored on a cropped extent of it (``cropped_allowed``). Any other
    geometry is refused, naming what differs."""
    if not cropped_allowed and not np.array_equal(label["size"], image["size"]):
        raise RequestError(422, f"{what}: size {label['size'].tolist()} differs from the image size {image['size'].tolist()}")
    if not np.allclose(label["spacing"], image["spacing"], rtol=_SPACING_RTOL, atol=0):
        raise RequestError(422, f"{what}: spacing {label['spacing'].round(4).tolist()} mm differs from the image's {image['spacing'].round(4).tolist()} mm")
    if not np.allclose(label["direction"], image["direction"], atol=_DIRECTION_ATOL):
        raise RequestError(422, f"{what}: direction {label['direction'].round(3).ravel().tolist()} differs from the image's {image['direction'].round(3).ravel().tolist()}")
    # the label's first voxel in the image's voxel coordinates
    index = np.linalg.solve(image["direction"] * image["spacing"][None, :], label["origin"] - image["origin"])
    offset = np.round(index)
    if np.abs(index - offset).max() > _ORIGIN_VOXELS or (not cropped_allowed and offset.any()):
        shift = float(np.linalg.norm(label["origin"] - image["origin"]))
        raise RequestError(422, f"{what}: origin {label['origin'].round(3).tolist()} differs by {shift:.3g} mm from the image's {image['origin'].round(3).tolist()}")
    if (offset < 0).any() or (offset + label["size"] > image["size"]).any():
        raise RequestError(422, f"{what}: its extent (origin at image voxel {offset.astype(int).tolist()}, size {label['size'].tolist()}) lies outside the image (size {image['size'].tolist()})")
    return tuple(int(v) for v in offset)


def read_label_values(path: str, image_path: str, limits: Limits, what: str = "label"):
    """Check a label upload against its image, the way training reads it, and return ``(image_or_None, rule)``:
    ``None`` when the file is stored as uploaded (values 0/1 on the image's grid), else a SimpleITK uint8 image on
    the image's grid to store instead (values 0/255 binarised to 0/1; a 3D Slicer ``.seg.nrrd`` cropped to its
    segments placed on the image's grid). Refused (422): NaN/Inf, any other value, another geometry (size,
    spacing, origin, direction: the message names which)."""
    import SimpleITK as sitk

    check_volume_file(path, limits, what=what, read_voxels=False)
    label_reader, image_reader = _reader(path, what), _reader(image_path, "image")
    image = _geometry(image_reader)
    offset = _label_offset(_geometry(label_reader), image, _is_slicer_segmentation(label_reader), what)
    values_ijk = _read_voxels(path, what)
    values = np.unique(values_ijk)
    if values.size > 8:
        raise RequestError(422, f"{what}: expected a binary mask (values 0/1, or 0/255), got {values.size} distinct values")
    shown = [float(v) if not float(v).is_integer() else int(v) for v in values.tolist()]
    if set(shown) <= {0, 1}:
        rule = "0/1"
    elif set(shown) <= {0, 255}:
        rule = "0/255 binarised (255 -> 1)"
    else:
        raise RequestError(422, f"{what}: expected a binary mask (values 0/1, or 0/255), got values {shown}")
    cropped = tuple(values_ijk.shape) != tuple(image["size"])
    if rule == "0/1" and not cropped:
        return None, rule
    mask = np.zeros(image["size"], np.uint8)
    (i, j, k), (di, dj, dk) = offset, values_ijk.shape
    mask[i:i + di, j:j + dj, k:k + dk] = values_ijk > 0
    out = sitk.GetImageFromArray(mask.transpose())
    out.SetSpacing(image["spacing"].tolist())
    out.SetOrigin(image["origin"].tolist())
    out.SetDirection(image["direction"].ravel().tolist())
    if cropped:
        rule += f", segmentation extent at voxel {list(offset)} placed on the image grid"
    return out, rule


# ---- request parameters ----------------------------------------------------------------------------------------
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
