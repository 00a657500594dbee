"""A LocalDatastore that owns its studies folder.

* **Names**: every image id and label tag a request names is checked against the rules in
  :mod:`lib.validation` (no separators, no ``..``, no absolute paths) and every path is resolved
  (``realpath``) and checked to lie inside the studies folder before anything is read, written or deleted.
* **Images are write-once under a final label**: uploading the same content again under an existing id changes
  nothing (the label record stays); different content under an id that has a final label on disk is refused
  (409). The check and the write happen under one lock, and "has a final label" is read from the disk, so no
  sequence of uploads can orphan a label.
* **Final labels** are written only by label uploads (:meth:`save_user_label`, called by the app's
  ``PUT /datastore/label`` route), atomically (temporary file + ``os.replace``), after validation (size of the
  image, values 0/1 or 0/255); a replaced version is first kept under
  ``<studies>/.label_history/<tag>/<id>.<timestamp><ext>``. :meth:`save_label` (what inference calls with
  ``save_label``) refuses the tag ``final`` (403). Deleting a final label, or an image that has one, is
  refused (409).
* Unknown ids answer 404, bad names 422, files over the limits 413 (never a 500).
"""

from __future__ import annotations

import filecmp
import logging
import os
import shutil
import tempfile
import threading
import time
from typing import Any, Dict, List, Optional

from filelock import FileLock
from lib.files import atomic_copy
from lib.validation import (
    VOLUME_EXTENSIONS,
    Limits,
    RequestError,
    check_image_id,
    check_label_tag,
    check_volume_file,
    read_label_values,
    volume_extension,
)

from monailabel.datastore.local import LocalDatastore
from monailabel.interfaces.datastore import DefaultLabelTag
from monailabel.datastore.local import DataModel, ImageLabelModel


__all__ = ["StudiesDatastore", "FINAL"]

logger = logging.getLogger(__name__)

FINAL = DefaultLabelTag.FINAL.value
HISTORY_DIR = ".label_history"


class StudiesDatastore(LocalDatastore):
    def __init__(self, datastore_path: str, limits: Optional[Limits] = None, **kwargs):
        self.root = os.path.realpath(datastore_path)
        self.limits = limits or Limits()
        self._rlock = threading.RLock()
        kwargs["extensions"] = [f"*{e}" for e in VOLUME_EXTENSIONS]
        super().__init__(self.root, **kwargs)
        for image_id in list(self._datastore.objects):
            try:
                check_image_id(image_id)
            except RequestError as e:
                logger.warning(f"studies folder: {e.message}; rename the file to use it from the server")

    # ---- paths ----------------------------------------------------------------------------------------------
    def _inside(self, path: str, what: str) -> str:
        real = os.path.realpath(path)
        if os.path.commonpath([real, self.root]) != self.root or real == self.root:
            raise RequestError(403, f"{what} resolves outside the studies folder; refused")
        return real

    def _lock(self):
        if getattr(self, "_flock", None) is None:
            self._flock = FileLock(self._lock_file)  # one instance: re-entrant in a thread
        return self._flock

    def _image_file(self, image_id: str, ext: str) -> str:
        return self._inside(os.path.join(self._datastore.image_path(), image_id + ext), f"image {image_id!r}")

    def _label_file(self, image_id: str, tag: str, ext: str) -> str:
        return self._inside(os.path.join(self._datastore.label_path(tag), image_id + ext), f"label {tag}/{image_id}")

    def _files_on_disk(self, folder: str, image_id: str) -> List[str]:
        return [p for p in (os.path.join(folder, image_id + e) for e in VOLUME_EXTENSIONS) if os.path.isfile(p)]

    def has_final_label(self, image_id: str) -> bool:
        """From the disk, not the record: a final label file of any volume extension exists for ``image_id``."""
        check_image_id(image_id)
        return bool(self._files_on_disk(self._datastore.label_path(FINAL), image_id)) or bool(
            self._datastore.label(image_id, FINAL)
        )

    def _require_image(self, image_id: str) -> str:
        check_image_id(image_id)
        obj = self._datastore.objects.get(image_id)
        if not obj:
            raise RequestError(404, f"image {image_id!r} not found in the datastore")
        path = self._image_file(image_id, obj.image.ext)
        if not os.path.isfile(path):
            raise RequestError(404, f"image {image_id!r} not found in the datastore (its file is gone)")
        return path

    # ---- reads ----------------------------------------------------------------------------------------------
    def get_image_uri(self, image_id: str) -> str:
        check_image_id(image_id)
        obj = self._datastore.objects.get(image_id)
        return self._image_file(image_id, obj.image.ext) if obj else ""

    def image_path_checked(self, image_id: str) -> str:
        """The file of a datastore image (404 when unknown), resolved inside the studies folder."""
        return self._require_image(image_id)

    def get_image_info(self, image_id: str) -> Dict[str, Any]:
        self._require_image(image_id)
        return super().get_image_info(image_id)

    def get_label_uri(self, label_id: str, label_tag: str) -> str:
        check_image_id(label_id, "label id")
        check_label_tag(label_tag)
        label = self._datastore.label(label_id, label_tag)
        return self._label_file(label_id, label_tag, label.ext) if label else ""

    def get_label_info(self, label_id: str, label_tag: str) -> Dict[str, Any]:
        check_image_id(label_id, "label id")
        check_label_tag(label_tag)
        if not self._datastore.label(label_id, label_tag):
            raise RequestError(404, f"label {label_tag}/{label_id} not found")
        return super().get_label_info(label_id, label_tag)

    def _usable(self, ids: List[str]) -> List[str]:
        """Ids that follow the naming rule and whose file resolves inside the studies folder (other files stay in
        the folder, unused)."""
        out = []
        for image_id in ids:
            obj = self._datastore.objects.get(image_id)
            try:
                check_image_id(image_id)
                if obj:
                    self._image_file(image_id, obj.image.ext)
            except RequestError:
                continue
            out.append(image_id)
        return out

    def list_images(self) -> List[str]:
        return self._usable(super().list_images())

    def get_labeled_images(self, label_tag: Optional[str] = None, labels: Optional[List[str]] = None) -> List[str]:
        return self._usable(super().get_labeled_images(label_tag, labels))

    def get_unlabeled_images(self, label_tag: Optional[str] = None, labels: Optional[List[str]] = None) -> List[str]:
        return self._usable(super().get_unlabeled_images(label_tag, labels))

    def datalist(self, full_path=True) -> List[Dict[str, Any]]:
        """Training pairs (absolute paths): images with a final label, both named by the rules and resolving
        inside the studies folder."""
        out = []
        for image_id, obj in list(self._datastore.objects.items()):
            label = obj.labels.get(FINAL)
            if not label:
                continue
            try:
                check_image_id(image_id)
                pair = {"image": self._image_file(image_id, obj.image.ext), "label": self._label_file(image_id, FINAL, label.ext)}
            except RequestError as e:
                logger.warning(f"datalist: skipping {image_id!r}: {e.message}")
                continue
            out.append(pair)
        return out

    # ---- images ---------------------------------------------------------------------------------------------
    def add_image(self, image_id: str, image_filename: str, image_info: Dict[str, Any]) -> str:
        check_image_id(image_id)
        ext = volume_extension(image_filename, "uploaded image")
        if image_info is not None and not isinstance(image_info, dict):
            raise RequestError(422, "params: expected a JSON object")
        check_volume_file(image_filename, self.limits, what=f"uploaded image {image_id!r}")
        dest = self._image_file(image_id, ext)
        self._init_from_datastore_file()  # takes the file lock itself: not inside ours
        with self._rlock, self._lock():
            existing = self._files_on_disk(self._datastore.image_path(), image_id)
            obj = self._datastore.objects.get(image_id)
            if obj and self._image_file(image_id, obj.image.ext) not in existing:
                existing.append(self._image_file(image_id, obj.image.ext))
            if any(os.path.isfile(p) and filecmp.cmp(p, image_filename, shallow=False) for p in existing):
                logger.info(f"image {image_id!r}: same content uploaded again; nothing changed")
                return image_id
            if existing and self.has_final_label(image_id):
                raise RequestError(
                    409,
                    f"image {image_id!r} already exists with a saved final label and different content; "
                    "upload it under a new id",
                )
            atomic_copy(image_filename, dest)
            for old in existing:
                if os.path.realpath(old) != dest:
                    os.remove(self._inside(old, f"image {image_id!r}"))
            info = dict(image_info or {})
            info.update({"ts": int(time.time()), "name": image_id + ext})
            labels = dict(obj.labels) if obj else {}
            self._datastore.objects[image_id] = ImageLabelModel(image=DataModel(info=info, ext=ext), labels=labels)
            self._update_datastore_file(lock=False)
        logger.info(f"image {image_id!r} stored as {dest}")
        return image_id

    def remove_image(self, image_id: str) -> None:
        with self._rlock, self._lock():
            path = self._require_image(image_id)
            if self.has_final_label(image_id):
                raise RequestError(409, f"image {image_id!r} has a final label; images under a final label are kept")
            obj = self._datastore.objects[image_id]
            for tag, label in list(obj.labels.items()):
                f = self._label_file(image_id, tag, label.ext)
                if os.path.isfile(f):
                    os.remove(f)
            os.remove(path)
            del self._datastore.objects[image_id]
            self._update_datastore_file(lock=False)
        logger.info(f"image {image_id!r} removed")

    def update_image_info(self, image_id: str, info: Dict[str, Any]) -> None:
        self._require_image(image_id)
        if not isinstance(info, dict):
            raise RequestError(422, "info: expected a JSON object")
        return super().update_image_info(image_id, info)

    # ---- labels ---------------------------------------------------------------------------------------------
    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: Dict[str, Any]) -> str:
        """Any writer other than a label upload (e.g. inference with ``save_label``): never the final tag."""
        check_label_tag(label_tag)
        if label_tag.lower() == FINAL:
            raise RequestError(403, f"label tag {label_tag!r}: final labels are written only by label uploads (PUT /datastore/label)")
        return self._store_label(image_id, label_filename, label_tag, label_info)

    def save_user_label(self, image_id: str, label_filename: str, label_tag: str, label_info: Dict[str, Any]) -> str:
        """A label upload (``PUT /datastore/label``): the only way a final label is written."""
        return self._store_label(image_id, label_filename, label_tag, label_info)

    def _store_label(self, image_id, label_filename, label_tag, label_info) -> str:
        check_image_id(image_id)
        check_label_tag(label_tag)
        if label_info is not None and not isinstance(label_info, dict):
            raise RequestError(422, "params: expected a JSON object")
        ext = volume_extension(label_filename, "label file")
        image_path = self._require_image(image_id)
        image_size = check_volume_file(image_path, self.limits, what=f"image {image_id!r}", read_voxels=False)
        binarised, rule = read_label_values(label_filename, image_size, self.limits, what=f"label for {image_id!r}")
        dest = self._label_file(image_id, label_tag, ext)
        with tempfile.TemporaryDirectory() as tmp:
            source = label_filename
            if binarised is not None:
                import SimpleITK as sitk

                source = os.path.join(tmp, "label" + ext)
                sitk.WriteImage(binarised, source, True)
            self._init_from_datastore_file()
            with self._rlock, self._lock():
                if self._require_image(image_id) != image_path:
                    raise RequestError(409, f"image {image_id!r} changed while its label was being saved; try again")
                self._keep_history(image_id, label_tag, keep_path=dest)
                atomic_copy(source, dest)
                info = dict(label_info or {})
                info.update({"ts": int(time.time()), "name": image_id + ext, "values": rule})
                self._datastore.objects[image_id].labels[label_tag] = DataModel(info=info, ext=ext)
                self._update_datastore_file(lock=False)
        logger.info(f"label {label_tag}/{image_id} saved as {dest} (values {rule})")
        return image_id

    def _keep_history(self, image_id: str, tag: str, keep_path: str) -> None:
        """Copy (same file name) or move (other extension) every current label file of ``image_id``/``tag`` to
        the history folder before it is replaced."""
        folder = self._inside(os.path.join(self.root, HISTORY_DIR, tag), "label history")
        for old in self._files_on_disk(self._datastore.label_path(tag), image_id):
            old = self._inside(old, f"label {tag}/{image_id}")
            name = os.path.basename(old)
            ext = next(e for e in VOLUME_EXTENSIONS if name.endswith(e))
            os.makedirs(folder, exist_ok=True)
            dest = os.path.join(folder, f"{image_id}.{time.strftime('%Y%m%d-%H%M%S')}-{time.time_ns() % 10**9:09d}{ext}")
            if old == keep_path:
                shutil.copy2(old, dest)
            else:
                shutil.move(old, dest)
            logger.info(f"previous {tag} label of {image_id} kept as {dest}")

    def remove_label(self, label_id: str, label_tag: str) -> None:
        check_image_id(label_id, "label id")
        check_label_tag(label_tag)
        if label_tag.lower() == FINAL:
            raise RequestError(409, f"label {label_tag}/{label_id}: final labels are kept (upload a new version instead)")
        with self._rlock, self._lock():
            label = self._datastore.label(label_id, label_tag)
            if not label:
                raise RequestError(404, f"label {label_tag}/{label_id} not found")
            path = self._label_file(label_id, label_tag, label.ext)
            if os.path.isfile(path):
                os.remove(path)
            self._datastore.objects[label_id].labels.pop(label_tag, None)
            self._update_datastore_file(lock=False)

    def update_label_info(self, label_id: str, label_tag: str, info: Dict[str, Any]) -> None:
        check_image_id(label_id, "label id")
        check_label_tag(label_tag)
        if not isinstance(info, dict):
            raise RequestError(422, "info: expected a JSON object")
        if not self._datastore.label(label_id, label_tag):
            raise RequestError(404, f"label {label_tag}/{label_id} not found")
        return super().update_label_info(label_id, label_tag, info)
