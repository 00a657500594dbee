"""A LocalDatastore that refuses unusable uploads with 4xx answers and keeps every saved label.

* ``add_image``: the file must be a readable single-channel 3D image (422 otherwise); an upload under the id of
  an existing image with a *different* content that already has a final label is refused (409), so a label
  can never end up on another image.
* ``save_label``: the image must exist (404); the label must be a readable 3D image of the image's size (422).
  Validation happens before anything is written; when a label is replaced, the previous file is first copied
  to ``<studies>/.label_history/<tag>/<id>.<timestamp><ext>``.
"""

from __future__ import annotations

import filecmp
import logging
import os
import shutil
import time

from fastapi import HTTPException

from monailabel.datastore.local import LocalDatastore

from monai_quantunet.labeling import InputError, check_image_file, check_label_file

logger = logging.getLogger(__name__)


class ValidatingDatastore(LocalDatastore):
    def add_image(self, image_id, image_filename, image_info):
        try:
            check_image_file(image_filename, what=f"uploaded image {image_id or os.path.basename(image_filename)!r}")
        except InputError as e:
            raise HTTPException(status_code=422, detail=str(e))
        if image_id and image_id in self._datastore.objects:
            old = self.get_image_uri(image_id)
            has_final = bool(self.get_label_by_image_id(image_id, "final"))
            if old and os.path.exists(old) and has_final and not filecmp.cmp(old, image_filename, shallow=False):
                raise HTTPException(
                    status_code=409,
                    detail=f"image {image_id!r} already exists with a saved final label and different content; "
                    "upload it under a new id",
                )
        return super().add_image(image_id, image_filename, image_info)

    def save_label(self, image_id, label_filename, label_tag, label_info):
        if image_id not in self._datastore.objects:
            raise HTTPException(status_code=404, detail=f"image {image_id!r} not found in the datastore")
        image_path = self.get_image_uri(image_id)
        try:
            size = check_image_file(image_path, what=f"image {image_id!r}")
            check_label_file(label_filename, size, what=f"label for {image_id!r}")
        except InputError as e:
            raise HTTPException(status_code=422, detail=str(e))
        self._keep_previous(image_id, label_tag)
        return super().save_label(image_id, label_filename, label_tag, label_info)

    def _keep_previous(self, image_id, label_tag):
        try:
            old = self.get_label_uri(image_id, label_tag)
        except Exception:
            old = None
        if old and os.path.isfile(old):
            name = os.path.basename(old)
            stem, ext = (name[: -len(".nii.gz")], ".nii.gz") if name.endswith(".nii.gz") else os.path.splitext(name)
            dest_dir = os.path.join(self._datastore_path, ".label_history", label_tag)
            os.makedirs(dest_dir, exist_ok=True)
            dest = os.path.join(dest_dir, f"{stem}.{time.strftime('%Y%m%d-%H%M%S')}-{time.time_ns() % 10**6:06d}{ext}")
            shutil.copy2(old, dest)
            logger.info(f"previous {label_tag} label of {image_id} kept as {dest}")
