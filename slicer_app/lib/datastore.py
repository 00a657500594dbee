"""A LocalDatastore that owns its studies folder and survives crashes.

* **Names**: every image id and label tag a request names is checked against the rules in
  :mod:`lib.validation` (no separators, no ``..``, no absolute paths); files are addressed by their entry in the
  studies folder (never by the path a link resolves to), and nothing is read, written or deleted outside it
  except through the links an administrator put there, which are read-only.
* **Links** (data linked into the studies folder): a linked image is served but never replaced or deleted (409);
  a label file that is a link is replaced as a link by a new upload (its target is never written); an id whose
  file is a link to another id's file (or to a file an earlier id already uses) is not served, so no two ids share
  a file.
* **Crash safety**: every write (index, uploaded images, labels) is a temporary file, ``fsync`` and an atomic
  rename (:mod:`lib.files`); a label upload is acknowledged only after the label file and the index are on disk.
  At start, a missing, empty, corrupt or linked index (``datastore_v2.json``) is set aside with a warning and
  rebuilt from the files in the folder, and temporary files of interrupted writes are removed.
* **Images are write-once under a final label**: uploading the same content again under an existing id changes
  nothing (the label record stays); different content under an id that has a final label on disk is refused
  (409). The check and the write happen under one lock, and "has a final label" is read from the disk, so no
  sequence of uploads can orphan a label.
* **Final labels** are written only by label uploads (:meth:`save_user_label`, called by the app's
  ``PUT /datastore/label`` route), after validation (the image's geometry, finite values 0/1 or 0/255); a
  replaced version is first kept under ``<studies>/.label_history/<tag>/<id>.<timestamp><ext>``.
  :meth:`save_label` (what inference calls with ``save_label``) refuses the tag ``final`` (403). Deleting a final
  label, or an image that has one, is refused (409).
* Unknown ids answer 404, bad names 422, files over the limits 413 (never a 500).
"""

from __future__ import annotations

import filecmp
import json
import logging
import os
import tempfile
import threading
import time
from typing import Any, Dict, List, Optional, Set

from filelock import FileLock
from lib.files import atomic_copy, atomic_write_bytes, remove_interrupted_writes
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
from monailabel.datastore.local import DataModel, ImageLabelModel, LocalDatastoreModel


__all__ = ["StudiesDatastore", "FINAL"]

logger = logging.getLogger(__name__)

FINAL = DefaultLabelTag.FINAL.value
HISTORY_DIR = ".label_history"


class StudiesDatastore(LocalDatastore):
    def __init__(self, datastore_path: str, limits: Optional[Limits] = None, **kwargs):
        self.root = os.path.realpath(datastore_path)
        self.limits = limits or Limits()
        self._rlock = threading.RLock()
        self._shared_link_ids: Set[str] = set()
        kwargs["extensions"] = [f"*{e}" for e in VOLUME_EXTENSIONS]
        for folder in (self.root, os.path.join(self.root, "labels"), os.path.join(self.root, HISTORY_DIR)):
            if os.path.isdir(folder) and not os.path.islink(folder):
                for dirpath in [folder, *[e.path for e in os.scandir(folder) if e.is_dir(follow_symlinks=False)]]:
                    n = remove_interrupted_writes(dirpath)
                    if n:
                        logger.warning(f"studies folder: removed {n} temporary file(s) of interrupted writes in {dirpath}")
        super().__init__(self.root, **kwargs)
        for image_id in list(self._datastore.objects):
            try:
                check_image_id(image_id)
            except RequestError as e:
                logger.warning(f"studies folder: {e.message}; rename the file to use it from the server")
        self._shared_link_ids = self._find_shared_links()

    # ---- the index (datastore_v2.json) ----------------------------------------------------------------------
    def _init_from_datastore_file(self, throw_exception=False):
        """MONAI Label's reload of the index, except that an index that is a link is removed unread (the link,
        not its target) and an unreadable one (empty or partial JSON, other folders) is set aside: the server keeps
        the index it has in memory (empty at start, then rebuilt from the folder) and writes it anew."""
        path = self._datastore_config_path
        if os.path.islink(path):
            os.remove(path)
            logger.warning(f"datastore index {path} was a link: removed unread; rebuilt from the studies folder")
            return
        try:
            super()._init_from_datastore_file(throw_exception=True)
            if self._datastore.images_dir not in ("", ".") or self._datastore.labels_dir != "labels":
                raise ValueError(f"images_dir {self._datastore.images_dir!r} / labels_dir {self._datastore.labels_dir!r} are not this app's folders")
        except ValueError as e:
            kept = f"{path}.unreadable-{time.strftime('%Y%m%d-%H%M%S')}"
            if os.path.isfile(path):
                os.replace(path, kept)
            self._datastore = LocalDatastoreModel(**{**self._datastore.model_dump(exclude={"base_path"}), "images_dir": ".", "labels_dir": "labels"})
            self._datastore.base_path = self.root
            self._config_ts = 0
            logger.warning(f"datastore index {path} was unreadable ({str(e).splitlines()[0][:200]}); kept as {kept}; "
                           "rebuilt from the images and labels in the studies folder")

    def _update_datastore_file(self, lock=True):
        def write():
            self._ignore_event_config = True
            data = json.dumps(self._datastore.model_dump(exclude={"base_path"}), indent=2, default=str).encode()
            atomic_write_bytes(self._datastore_config_path, data)
            self._config_ts = os.stat(self._datastore_config_path).st_mtime

        if lock:
            with FileLock(self._lock_file):
                write()
        else:
            write()

    # ---- paths ----------------------------------------------------------------------------------------------
    def _entry(self, folder: str, name: str, what: str) -> str:
        """The folder entry ``folder/name`` (not what a link there resolves to); the folder itself must resolve
        inside the studies folder."""
        real_folder = os.path.realpath(folder)
        if os.path.commonpath([real_folder, self.root]) != self.root:
            raise RequestError(403, f"{what}: its folder resolves outside the studies folder; refused")
        return os.path.join(real_folder, name)

    def _find_shared_links(self) -> Set[str]:
        """Ids whose image file is a link to a file another id already uses (a regular file wins, then the first
        id in sorted order): not served."""
        owners: Dict[str, str] = {}
        skipped = set()
        objects = self._datastore.objects
        for image_id in sorted(objects, key=lambda i: (os.path.islink(self._image_entry(i, objects[i].image.ext)), i)):
            real = os.path.realpath(self._image_entry(image_id, objects[image_id].image.ext))
            if real in owners:
                skipped.add(image_id)
                logger.warning(f"studies folder: image {image_id!r} is a link to the file of {owners[real]!r}; not served")
            else:
                owners[real] = image_id
        return skipped

    def _image_entry(self, image_id: str, ext: str) -> str:
        return self._entry(self._datastore.image_path(), image_id + ext, f"image {image_id!r}")
    def _lock(self):
        if getattr(self, "_flock", None) is None:
            self._flock = FileLock(self._lock_file)  # one instance: re-entrant in a thread
        return self._flock

    def _image_file(self, image_id: str, ext: str) -> str:
        if image_id in self._shared_link_ids:
            raise RequestError(404, f"image {image_id!r} is a link to another image's file; not served")
        return self._image_entry(image_id, ext)

    def _label_file(self, image_id: str, tag: str, ext: str) -> str:
        return self._entry(self._datastore.label_path(tag), image_id + ext, f"label {tag}/{image_id}")

    def _refuse_linked_image(self, path: str, image_id: str, action: str) -> None:
        if os.path.islink(path):
            raise RequestError(409, f"image {image_id!r} is a link into the studies folder (read-only): not {action}")

    def _files_on_disk(self, folder: str, image_id: str) -> List[str]:
        return [p for p in (os.path.join(folder, image_id + e) for e in VOLUME_EXTENSIONS) if os.path.lexists(p)]

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
            for p in existing:
                self._refuse_linked_image(p, image_id, "replaced")
            if existing and self.has_final_label(image_id):
                raise RequestError(
                    409,
                    f"image {image_id!r} already exists with a saved final label and different content; "
                    "upload it under a new id",
                )
            atomic_copy(image_filename, dest)
            for old in existing:
                if old != dest:
                    os.remove(old)
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
            self._refuse_linked_image(path, image_id, "deleted")
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
        check_volume_file(image_path, self.limits, what=f"image {image_id!r}", read_voxels=False)
        binarised, rule = read_label_values(label_filename, image_path, self.limits, what=f"label for {image_id!r}")
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
        folder = self._entry(self.root, os.path.join(HISTORY_DIR, tag), "label history")
        for old in self._files_on_disk(self._datastore.label_path(tag), image_id):
            name = os.path.basename(old)
            ext = next(e for e in VOLUME_EXTENSIONS if name.endswith(e))
            os.makedirs(folder, exist_ok=True)
            dest = os.path.join(folder, f"{image_id}.{time.strftime('%Y%m%d-%H%M%S')}-{time.time_ns() % 10**9:09d}{ext}")
            if old == keep_path and not os.path.islink(old):
                atomic_copy(old, dest)
            else:  # renamed (a link is kept as a link; the upload then takes its place)
                os.replace(old, dest)
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
