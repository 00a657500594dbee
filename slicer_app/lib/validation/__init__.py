"""What the app accepts from a client: names (:mod:`.names`), request parameters (:mod:`.params`), files
(:mod:`.volumes`), and the size limits (:mod:`.limits`).

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

from lib.validation.errors import RequestError
from lib.validation.limits import Limits
from lib.validation.names import IMAGE_ID_RULE, LABEL_TAG_RULE, VOLUME_EXTENSIONS, check_image_id, check_label_tag, volume_extension
from lib.validation.params import check_device, check_infer_params, parse_bool, parse_json_object, parse_number
from lib.validation.volumes import check_volume_file, read_label_values

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
