"""Request guards: the app's own handlers for the MONAI Label routes that take files or JSON text.

MONAI Label 0.8.5 parses these inputs in its endpoint functions, before the app is called, and answers 500 for
bad ones (``params`` that is not a JSON object, an infer request without image or file, ...). At start-up
(:meth:`QuantUNetApp.on_init_complete`, server mode only) :func:`install` puts these routes in front of the
server's routing table; each one checks its inputs (size before the body is read, names, JSON objects) and then
calls MONAI Label's own endpoint function or the datastore with checked values. Everything else keeps MONAI
Label's routes. Routes guarded:

* ``POST /infer/{model}``: model known, image id or uploaded volume (not both missing), ``params`` a JSON
  object without the keys that name files or the request's target (``model``/``image``/``session``/``file``;
  ``label`` is the segment name 3D Slicer sends with every click, see :func:`lib.validation.check_infer_params`),
  upload size and content;
* ``PUT /datastore/image`` (and the deprecated ``PUT /datastore/``), ``PUT /datastore/label``: upload size,
  file extension, ``params`` a JSON object, then :class:`~lib.datastore.StudiesDatastore`;
* ``PUT /datastore/image/info``, ``PUT /datastore/label/info``, ``PUT /datastore/updatelabelinfo``: JSON objects;
* ``POST /train/{model}`` and ``POST /train/``: the app's :meth:`validate_train_request` before anything is
  queued, and one training at a time (409 while one runs; ``enqueue`` is not offered: a queued run could not be
  cancelled); ``POST /batch/infer/{model}`` and ``POST /scoring/{method}``: model/method and parameters before
  anything is queued;
* ``GET /datastore/dataset``: the archive is removed once sent; ``GET /logs/gpu`` without ``nvidia-smi`` and
  ``/proxy/dicom/*`` (no DICOMweb server behind a local folder): 404 with a sentence; ``?output=dicom_seg``: 422;
* ``PUT`` / ``DELETE /model/{model}``: refused (403): the served checkpoint changes only through training runs
  that pass the publish rule;
* ``/session``: one volume per session, checked like an image upload (no ``uncompress``); session ids are checked.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from typing import Optional

from fastapi import APIRouter, BackgroundTasks, Depends, Request
from fastapi.responses import FileResponse
from lib.validation import (
    RequestError,
    check_image_id,
    check_label_tag,
    check_volume_file,
    parse_json_object,
    volume_extension,
)
from starlette.datastructures import UploadFile

from monailabel.config import settings
from monailabel.endpoints.batch_infer import BatchInferImageType
from monailabel.endpoints.infer import ResultType
from monailabel.endpoints.user.auth import RBAC, User
from monailabel.utils.others.generic import remove_file

__all__ = ["install", "build_router"]

logger = logging.getLogger(__name__)

_RESERVED_INFER_KEYS = ("model", "image", "session", "file")  # they would redirect what is read
_SESSION_ID = re.compile(r"[A-Za-z0-9-]{1,64}")
_CHUNK = 1 << 20


async def _form(request: Request, max_bytes: int):
    length = request.headers.get("content-length")
    if length is not None:
        try:
            n = int(length)
        except ValueError:
            raise RequestError(400, f"Content-Length {length[:20]!r} is not a number") from None
        if n > max_bytes + (1 << 20):  # a little room for the form fields around the file
            raise RequestError(413, f"request of {n} bytes is over the upload limit of {max_bytes} bytes (--conf max_upload_bytes)")
    return await request.form(max_files=2, max_fields=8)


def _save_upload(upload, max_bytes: int, what: str, background_tasks: BackgroundTasks) -> str:
    """Copy an uploaded file to a private temporary file with its volume extension (413 over ``max_bytes``)."""
    if not isinstance(upload, UploadFile):
        raise RequestError(422, f"{what}: expected a file upload (multipart/form-data)")
    ext = volume_extension(upload.filename, what)
    fd, path = tempfile.mkstemp(suffix=ext, prefix="quantunet_upload_")
    background_tasks.add_task(remove_file, path)  # runs after a successful answer; on errors see _removing
    size = 0
    with os.fdopen(fd, "wb") as out:
        upload.file.seek(0)
        while True:
            chunk = upload.file.read(_CHUNK)
            if not chunk:
                break
            size += len(chunk)
            if size > max_bytes:
                remove_file(path)
                raise RequestError(413, f"{what}: over the upload limit of {max_bytes} bytes (--conf max_upload_bytes)")
            out.write(chunk)
    if size == 0:
        remove_file(path)
        raise RequestError(422, f"{what}: the uploaded file is empty")
    return path


def _removing(path: str, call, *args):
    """``call(*args)``; the temporary upload ``path`` is removed at once when it fails (background tasks only
    run after a successful answer)."""
    try:
        return call(*args)
    except BaseException:
        remove_file(path)
        raise


def _session_id(session_id: str) -> str:
    if not _SESSION_ID.fullmatch(session_id):
        raise RequestError(422, f"session_id {session_id[:80]!r} is not allowed (letters, digits and '-')")
    return session_id


def _upload_id(image: Optional[str], upload) -> str:
    if image:
        return check_image_id(image)
    name = os.path.basename(getattr(upload, "filename", "") or "")
    ext = volume_extension(name, "uploaded image")
    return check_image_id(name[: -len(ext)], "image id (from the file name; give ?image=ID)")


def build_router(app) -> APIRouter:
    """Routes bound to the MONAI Label app instance ``app`` (a :class:`QuantUNetApp`)."""
    from monailabel.endpoints import infer as infer_endpoints
    from monailabel.endpoints import train as train_endpoints

    api = settings.MONAI_LABEL_API_STR
    router = APIRouter()
    user_role = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_USER))
    annotator_role = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_ANNOTATOR))
    admin_role = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_ADMIN))

    # ---- inference ------------------------------------------------------------------------------------------
    @router.post(api + "/infer/{model}", include_in_schema=False)
    async def infer(
        request: Request,
        background_tasks: BackgroundTasks,
        model: str,
        image: str = "",
        session_id: str = "",
        output: Optional[ResultType] = None,
        user: User = user_role,
    ):
        if model not in app.infer_models():
            raise RequestError(404, f"unknown model {model[:80]!r}; available: {sorted(app.infer_models())}")
        if output == ResultType.dicom_seg:
            raise RequestError(422, "output=dicom_seg: DICOM SEG results need a DICOMweb datastore; this app serves a "
                                    "local studies folder (use output=image, json or all)")
        form = await _form(request, app.limits.max_upload_bytes)
        params = parse_json_object(form.get("params"), "params")
        reserved = [k for k in _RESERVED_INFER_KEYS if k in params]
        if reserved:
            raise RequestError(422, f"params: keys {reserved} are not allowed (give the image as ?image=ID or as a file)")
        if form.get("label") is not None:
            raise RequestError(422, "label: this app's models take no label file in an infer request")
        upload = form.get("file")
        if session_id:  # a session's volume takes precedence over ?image= (as in MONAI Label)
            _session_id(session_id)
        if upload is not None and upload != "":
            path = _save_upload(upload, app.limits.max_upload_bytes, "file", background_tasks)
            image = app.register_upload(path, background_tasks)
            return _removing(path, infer_endpoints.run_inference, background_tasks, model, image, "", json.dumps(params), None, None, output)
        elif image and not session_id:
            app.datastore().image_path_checked(check_image_id(image))
        elif not session_id:
            raise RequestError(422, "no image given: add ?image=ID (a datastore image) or upload a volume as 'file'")
        return infer_endpoints.run_inference(
            background_tasks, model, image, session_id, json.dumps(params), None, None, output
        )

    # ---- datastore ------------------------------------------------------------------------------------------
    async def add_image(request: Request, background_tasks: BackgroundTasks, image: Optional[str], user: User):
        form = await _form(request, app.limits.max_upload_bytes)
        params = parse_json_object(form.get("params"), "params")
        upload = form.get("file")
        if upload is None:
            raise RequestError(422, "file: missing (upload the volume as multipart field 'file')")
        image_id = _upload_id(image, upload)
        path = _save_upload(upload, app.limits.max_upload_bytes, f"uploaded image {image_id!r}", background_tasks)
        if user:
            params["user"] = user.username
        return {"image": _removing(path, app.datastore().add_image, image_id, path, params)}

    @router.put(api + "/datastore/image", include_in_schema=False)
    async def put_image(request: Request, background_tasks: BackgroundTasks, image: Optional[str] = None, user: User = annotator_role):
        return await add_image(request, background_tasks, image, user)

    @router.put(api + "/datastore/", include_in_schema=False)
    async def put_image_deprecated(request: Request, background_tasks: BackgroundTasks, image: Optional[str] = None, user: User = annotator_role):
        return await add_image(request, background_tasks, image, user)

    @router.put(api + "/datastore/label", include_in_schema=False)
    async def put_label(request: Request, background_tasks: BackgroundTasks, image: str, tag: str = "final", user: User = annotator_role):
        check_image_id(image)
        tag = check_label_tag(tag or "final")
        form = await _form(request, app.limits.max_upload_bytes)
        params = parse_json_object(form.get("params"), "params")
        upload = form.get("label")
        if upload is None:
            raise RequestError(422, "label: missing (upload the label as multipart field 'label')")
        path = _save_upload(upload, app.limits.max_upload_bytes, f"label for {image!r}", background_tasks)
        if user:
            params["user"] = user.username
        label_id = _removing(path, app.datastore().save_user_label, image, path, tag, params)
        res = app.on_save_label(image, label_id) or {}
        res.update({"image": image, "label": label_id})
        return res

    async def _info(request: Request, field: str) -> dict:
        form = await request.form(max_files=0, max_fields=4)
        return parse_json_object(form.get(field), field)

    @router.put(api + "/datastore/image/info", include_in_schema=False)
    async def put_image_info(request: Request, image: str, user: User = annotator_role):
        info = await _info(request, "info")
        info["user"] = user.username
        return app.datastore().update_image_info(check_image_id(image), info)

    @router.put(api + "/datastore/label/info", include_in_schema=False)
    async def put_label_info(request: Request, label: str, tag: str, user: User = annotator_role):
        info = await _info(request, "info")
        info["user"] = user.username
        return app.datastore().update_label_info(check_image_id(label, "label id"), check_label_tag(tag), info)

    @router.put(api + "/datastore/updatelabelinfo", include_in_schema=False)
    async def put_label_info_deprecated(request: Request, label: str, tag: str, user: User = annotator_role):
        info = await _info(request, "params")
        info["user"] = user.username
        return app.datastore().update_label_info(check_image_id(label, "label id"), check_label_tag(tag), info)

    # ---- training -------------------------------------------------------------------------------------------
    async def _train_params(request: Request) -> dict:
        body = await request.body()
        return parse_json_object(body, "train params (request body)") if body else {}

    @router.post(api + "/train/{model}", include_in_schema=False)
    async def train_model(request: Request, model: str, run_sync: Optional[bool] = False, enqueue: Optional[bool] = False, user: User = admin_role):
        if run_sync:
            raise RequestError(422, "run_sync: training runs in the background on this server; omit run_sync")
        params = app.validate_train_request(model, await _train_params(request))
        _refuse_second_training()
        return train_endpoints.run_model(model, params, False, False)

    @router.post(api + "/train/", include_in_schema=False)
    async def train_all(request: Request, run_sync: Optional[bool] = False, user: User = admin_role):
        if run_sync:
            raise RequestError(422, "run_sync: training runs in the background on this server; omit run_sync")
        params = await _train_params(request)
        for model in app.train_models():
            app.validate_train_request(model, params.get(model) or {})
        unknown = [m for m in params if m not in app.train_models()]
        if unknown:
            raise RequestError(404, f"unknown model(s) {unknown} to train; available: {sorted(app.train_models())}")
        _refuse_second_training()
        return train_endpoints.run(params, False)

    # ---- batch inference, scoring, model files --------------------------------------------------------------
    from monailabel.endpoints import batch_infer as batch_endpoints
    from monailabel.endpoints import scoring as scoring_endpoints

    @router.post(api + "/batch/infer/{model}", include_in_schema=False)
    async def batch_infer(
        request: Request,
        model: str,
        images: Optional[BatchInferImageType] = BatchInferImageType.IMAGES_ALL,
        run_sync: Optional[bool] = False,
        user: User = admin_role,
    ):
        if run_sync:
            raise RequestError(422, "run_sync: batch inference runs in the background on this server; omit run_sync")
        body = await request.body()
        params = parse_json_object(body, "batch params (request body)") if body else {}
        app.validate_infer_params(model, params)
        return batch_endpoints.run(model, images, params, False)

    @router.post(api + "/scoring/{method}", include_in_schema=False)
    async def scoring(request: Request, method: str, run_sync: Optional[bool] = False, user: User = annotator_role):
        if method not in app.scoring_methods():
            raise RequestError(404, f"unknown scoring method {method[:80]!r}; available: {sorted(app.scoring_methods())}")
        body = await request.body()
        params = parse_json_object(body, "scoring params (request body)") if body else {}
        return scoring_endpoints.run_method(method, params, run_sync)

    async def model_file_refused(model: str, user: User = admin_role):
        if model not in app.infer_models():
            raise RequestError(404, f"unknown model {model[:80]!r}; available: {sorted(app.infer_models())}")
        raise RequestError(
            403,
            f"model {model!r}: the served checkpoint is replaced only by a training run that passes the publish rule "
            "(see the train status); manage the files in the server's model_dir directly",
        )

    router.add_api_route(api + "/model/{model}", model_file_refused, methods=["PUT", "DELETE"], include_in_schema=False)

    # ---- sessions (3D Slicer sends a volume it loaded itself as a session before clicks) -----------------------
    from monailabel.endpoints import session as session_endpoints

    @router.put(api + "/session/", include_in_schema=False)
    async def create_session(request: Request, background_tasks: BackgroundTasks, uncompress: bool = False,
                             expiry: int = 0, user: User = user_role):
        if uncompress:
            raise RequestError(422, "uncompress: not supported; upload one volume (.nii.gz, .nii or .nrrd)")
        if not 0 <= expiry <= 86400:
            raise RequestError(422, f"expiry: {expiry} is outside [0, 86400] seconds")
        form = await _form(request, app.limits.max_upload_bytes)
        files = form.getlist("files")
        if len(files) != 1:
            raise RequestError(422, f"files: expected one volume, got {len(files)}")
        path = _save_upload(files[0], app.limits.max_upload_bytes, "session volume", background_tasks)
        _removing(path, check_volume_file, path, app.limits, "session volume")
        files[0].file.seek(0)
        return session_endpoints.create_session(background_tasks, False, expiry, files)

    @router.get(api + "/session/{session_id}", include_in_schema=False)
    async def get_session(session_id: str, update_ts: bool = False, image: bool = False, user: User = user_role):
        return session_endpoints.get_session(_session_id(session_id), update_ts, image)

    @router.delete(api + "/session/{session_id}", include_in_schema=False)
    async def remove_session(session_id: str, user: User = user_role):
        return session_endpoints.remove_session(_session_id(session_id))

    # ---- dataset archive, GPU log, DICOMweb proxy -------------------------------------------------------------
    from monailabel.endpoints import logs as logs_endpoints

    @router.get(api + "/datastore/dataset", include_in_schema=False)
    async def download_dataset(background_tasks: BackgroundTasks, limit_cases: Optional[int] = None, user: User = annotator_role):
        if not app.datastore().datalist():
            raise RequestError(404, "no final labels yet: the dataset archive holds labeled images only")
        path = app.datastore().get_dataset_archive(limit_cases)
        background_tasks.add_task(remove_file, path)  # MONAI Label leaves every archive in the temp folder
        return FileResponse(path, media_type="application/zip", filename="dataset.zip")

    @router.get(api + "/logs/gpu", include_in_schema=False)
    async def gpu_info(user: User = admin_role):
        if shutil.which("nvidia-smi") is None:
            raise RequestError(404, "no NVIDIA GPU tools (nvidia-smi) on this server")
        return await logs_endpoints.gpu_info(user)

    async def no_dicomweb(path: str, user: User = user_role):
        raise RequestError(404, "this app serves a local studies folder: there is no DICOMweb server to proxy")

    router.add_api_route(api + "/proxy/dicom/{path:path}", no_dicomweb, methods=["GET", "POST"], include_in_schema=False)
    return router


def _refuse_second_training() -> None:
    """One training at a time: MONAI Label would queue a second one (``enqueue``) with no way to list it apart
    or cancel it (``DELETE /train/`` stops only the running one)."""
    from monailabel.utils.async_tasks.utils import processes, tasks

    busy = [t["id"] for t in tasks("train") if t.get("status") in ("SUBMITTED", "RUNNING")] or list(processes("train"))
    if busy:
        raise RequestError(409, f"a training is already running ({busy[0]}); stop it first (DELETE /train/) or wait "
                                "for it (GET /train/)")


def install(fastapi_app, app) -> None:
    """Put the guard routes in front of MONAI Label's routes of ``fastapi_app`` (first full match wins)."""
    router = build_router(app)
    fastapi_app.router.routes[0:0] = router.routes
    logger.info(f"request guards installed for {len(router.routes)} routes")
