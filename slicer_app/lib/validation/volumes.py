"""Uploaded volume and label files: header, size, every voxel readable and finite, a label's values and geometry
against its image (3D Slicer's cropped ``.seg.nrrd`` placed on the image grid)."""

from __future__ import annotations

import os
import re
from typing import Tuple

import numpy as np

from lib.validation.errors import RequestError
from lib.validation.limits import Limits

__all__ = ["check_volume_file", "read_label_values"]


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
