"""Names a client gives: image ids, label tags, volume file extensions (never a path: no separator, no ``..``)."""

from __future__ import annotations

import os
import re
from typing import Any, Optional

from lib.validation.errors import RequestError

__all__ = ["IMAGE_ID_RULE", "LABEL_TAG_RULE", "VOLUME_EXTENSIONS", "check_image_id", "check_label_tag", "volume_extension"]

IMAGE_ID_RULE = (
    "1-128 characters from A-Z a-z 0-9 . _ - and inner spaces, ( ) + , : (3D Slicer's volume names), starting and "
    "ending with a letter, digit or one of . _ - ), without '..'"
)
LABEL_TAG_RULE = "1-64 characters from A-Z a-z 0-9 _ -, starting with a letter or digit"
_IMAGE_ID = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._() +,:-]{0,126}[A-Za-z0-9._)-])?")
_LABEL_TAG = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
VOLUME_EXTENSIONS = (".nii.gz", ".nii", ".nrrd")


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
