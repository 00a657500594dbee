"""The MONAI Label app (slicer_app/) through a real `monailabel start_server` and the real client.

Default run: start + /info + auto-segmentation geometry + clicks + bad requests. Slow: training, concurrency,
active learning, restart persistence.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests

SimpleITK = pytest.importorskip("SimpleITK")
pytest.importorskip("monailabel")
from monailabel.client import MONAILabelClient  # noqa: E402
from slicer_server import DIRECTION, SHAPE, Server, make_studies, synthetic_case, write_volume  # noqa: E402

@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("slicer_app")


@pytest.fixture(scope="module")
def server(workdir):
    studies = make_studies(workdir)
    srv = Server(studies, workdir).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(server) -> MONAILabelClient:
    return MONAILabelClient(server.url, tmpdir=str(server.workdir / "client"))


def _assert_same_geometry(result_file: str, reference: Path):
    res = SimpleITK.ReadImage(result_file)
    ref = SimpleITK.ReadImage(str(reference))
    assert res.GetSize() == ref.GetSize()
    np.testing.assert_allclose(res.GetSpacing(), ref.GetSpacing(), atol=1e-4)
    np.testing.assert_allclose(res.GetOrigin(), ref.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(res.GetDirection(), ref.GetDirection(), atol=1e-4)
    arr = SimpleITK.GetArrayFromImage(res)
    assert arr.dtype == np.uint8 and set(np.unique(arr).tolist()) <= {0, 1}
    return arr


def test_info_lists_both_models(client):
    info = client.info()
    models = info["models"]
    assert models["segmentation"]["type"] == "segmentation" and models["segmentation"]["dimension"] == 3
    assert models["deepedit"]["type"] == "deepedit"
    assert models["segmentation"]["labels"] == {"tumor": 1}
    assert models["deepedit"]["labels"] == {"tumor": 1, "background": 0}  # Slicer's landmarks per segment
    assert set(info["trainers"]) == {"segmentation", "deepedit"}
    assert {"least_confidence", "random", "first"} <= set(info["strategies"])


@pytest.mark.parametrize("ext", [".nrrd", ".nii.gz"])
def test_autoseg_keeps_input_geometry(client, server, ext):
    result_file, params = client.infer("segmentation", "case2", {"result_extension": ext})
    assert result_file.endswith(ext)
    _assert_same_geometry(result_file, server.studies / "case2.nii.gz")
    assert params["label_names"] == {"tumor": 1}


def test_app_mask_equals_bundle_mask(client, server, workdir):
    """One segmentation chain: the mask 3D Slicer receives is, voxel for voxel, the bundle inference's mask."""
    from conftest import BUNDLE
    from monai.bundle import ConfigWorkflow

    result_file, _ = client.infer("segmentation", "case3", {"result_extension": ".nii.gz"})
    app_mask = SimpleITK.GetArrayFromImage(SimpleITK.ReadImage(result_file))
    workflow = ConfigWorkflow(config_file=str(BUNDLE / "configs" / "inference.json"), workflow_type="infer",
                              bundle_root=str(BUNDLE), dataset_dir=str(server.studies / "case3.nii.gz"),
                              output_dir=str(workdir / "bundle_masks"))
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    bundle_mask = SimpleITK.GetArrayFromImage(SimpleITK.ReadImage(str(workdir / "bundle_masks" / "case3_seg.nii.gz")))
    assert app_mask.any() and app_mask.shape == bundle_mask.shape
    np.testing.assert_array_equal(app_mask, bundle_mask)


def test_autoseg_uploaded_file(client, server, workdir):
    """Slicer may send the volume itself: the answer has that file's geometry."""
    image, _ = synthetic_case(7)
    path = workdir / "upload.nii.gz"
    write_volume(path, image, spacing=(0.5, 0.5, 3.0), origin=(1.0, 2.0, 3.0))
    result_file, _ = client.infer("segmentation", "", {"result_extension": ".nrrd"}, file=str(path))
    _assert_same_geometry(result_file, path)


def _mask(result_file: str) -> np.ndarray:
    """A result file as an (I, J, K) array (SimpleITK gives (K, J, I))."""
    return SimpleITK.GetArrayFromImage(SimpleITK.ReadImage(result_file)).transpose(2, 1, 0)


def _beyond_reach(shape, clicks) -> np.ndarray:
    """Voxels of the 64 x 48 x 8 test volume clearly beyond every click's reach: more than REACH_SLICES slices
    away, or outside an ellipse of REACH_RADIUS grid pixels (the volume is resized to 128 x 128: 0.5 voxel per
    pixel in I, 0.375 in J) plus one voxel."""
    from monai_quantunet.interactive import REACH_RADIUS, REACH_SLICES

    i, j, k = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    beyond = np.ones(shape, bool)
    ri, rj = REACH_RADIUS * shape[0] / 128 + 1, REACH_RADIUS * shape[1] / 128 + 1
    for ci, cj, ck in clicks:
        beyond &= (np.abs(k - ck) > REACH_SLICES) | (((i - ci) / ri) ** 2 + ((j - cj) / rj) ** 2 > 1)
    return beyond


def _case_with_false_positive(workdir):
    """A test volume whose auto-segmentation has a false positive: a tumor-bright blob away from the tumor.
    Returns (path, label, blob) with label and blob as (I, J, K) arrays."""
    image, label = synthetic_case(5)
    z, y, x = np.meshgrid(*[np.arange(s) for s in SHAPE[::-1]], indexing="ij")
    blob = ((x - 10) / 5) ** 2 + ((y - 9) / 4) ** 2 + ((z - 4) / 2) ** 2 < 1
    image = image.copy()
    image[blob] += 80
    path = workdir / "casefp.nii.gz"
    write_volume(path, image, direction=DIRECTION)
    return path, label.transpose(2, 1, 0) > 0, blob.transpose(2, 1, 0)


def _refine_and_keep_state(client, server, workdir, path, blob):
    params = {"result_extension": ".nii.gz"}
    auto = _mask(client.infer("segmentation", "casefp", params)[0])
    assert (auto & blob).sum() > 20  # the false positive the annotator removes
    start = _mask(client.infer("deepedit", "casefp", params)[0])  # no clicks: the auto-segmentation
    np.testing.assert_array_equal(start, auto)

    # background click on the false positive: the clicked voxel and part of the blob cleared, nothing added,
    # unchanged beyond the reach
    fp = tuple(int(v) for v in np.argwhere(auto & blob).mean(axis=0).round())
    first_file, _ = client.infer("deepedit", "casefp", {**params, "background": [list(fp)]})
    first = _assert_same_geometry(first_file, path).transpose(2, 1, 0)
    assert not first[fp] and (first & blob).sum() < (auto & blob).sum() and not (first & ~auto).any()
    beyond = _beyond_reach(auto.shape, [fp])
    np.testing.assert_array_equal(first[beyond], auto[beyond])

    # the next request starts from that answer, not from the auto-segmentation: with a far click only (the user
    # removed the first point), the cleared part is beyond its reach and stays cleared
    far = [60, 44, 0]
    second = _mask(client.infer("deepedit", "casefp", {**params, "foreground": [far]})[0])
    beyond_far = _beyond_reach(auto.shape, [far])
    assert ((first != auto) & beyond_far).any()
    np.testing.assert_array_equal(second[beyond_far], first[beyond_far])

    # another user on the same image starts from the auto-segmentation; other images are untouched
    other = MONAILabelClient(server.url, tmpdir=str(workdir / "client_bob"), client_id="bob")
    bob = _mask(other.infer("deepedit", "casefp", {**params, "foreground": [far]})[0])
    np.testing.assert_array_equal(bob[beyond_far], auto[beyond_far])
    np.testing.assert_array_equal(_mask(client.infer("deepedit", "case3", params)[0]),
                                  _mask(client.infer("segmentation", "case3", params)[0]))

    # no clicks: start over from the auto-segmentation
    np.testing.assert_array_equal(_mask(client.infer("deepedit", "casefp", params)[0]), auto)
    assert not _mask(client.infer("deepedit", "casefp", {**params, "background": [list(fp)]})[0])[fp]


def test_deepedit_refines_the_current_mask_it_keeps(client, server, workdir):
    """Slicer sends clicks only: the app starts from the auto-segmentation, keeps its last answer per client, image
    and label, changes nothing beyond the clicks' reach, starts over without clicks and after a saved label."""
    path, label, blob = _case_with_false_positive(workdir)
    client.upload_image(str(path), image_id="casefp")
    label_path = workdir / "casefp_label.nii.gz"
    write_volume(label_path, label.transpose(2, 1, 0).astype(np.uint8), direction=DIRECTION)
    try:
        _refine_and_keep_state(client, server, workdir, path, blob)
    finally:  # the label is saved whatever happens (the other tests expect one unlabeled volume, case3)
        client.save_label("casefp", str(label_path), tag="final")
    # saving a label ended the session: the next click starts from the auto-segmentation again
    params = {"result_extension": ".nii.gz"}
    auto = _mask(client.infer("segmentation", "casefp", params)[0])
    far = [60, 44, 0]
    beyond_far = _beyond_reach(auto.shape, [far])
    after_save = _mask(client.infer("deepedit", "casefp", {**params, "foreground": [far]})[0])
    np.testing.assert_array_equal(after_save[beyond_far], auto[beyond_far])

    # a click outside the volume: 422, and the session is unchanged
    r = requests.post(f"{server.url}/infer/deepedit", params={"image": "casefp"},
                      data={"params": json.dumps({"foreground": [[64, 0, 0]]})}, timeout=120)
    assert r.status_code == 422 and "outside the volume" in r.json()["detail"], r.text
    again = _mask(client.infer("deepedit", "casefp", {**params, "foreground": [far]})[0])
    np.testing.assert_array_equal(again, after_save)


@pytest.mark.parametrize(
    "model,image,params,status",
    [
        ("nosuchmodel", "case2", {}, 404),
        ("segmentation", "nosuchimage", {}, 404),
        ("deepedit", "case2", {"foreground": [[999, 1, 1]]}, 422),
        ("deepedit", "case2", {"background": [[1, 1]]}, 422),
    ],
)
def test_bad_infer_requests_get_4xx(server, model, image, params, status):
    r = requests.post(f"{server.url}/infer/{model}", params={"image": image}, data={"params": json.dumps(params)}, timeout=120)
    assert r.status_code == status, r.text
    assert r.json().get("detail")
    assert requests.get(f"{server.url}/info/", timeout=30).status_code == 200


def test_bad_uploads_get_4xx_and_labels_survive(client, server, workdir):
    junk = workdir / "junk.nii.gz"
    junk.write_bytes(b"this is not an image")
    r = requests.put(f"{server.url}/datastore/image", params={"image": "junk"}, files={"file": ("junk.nii.gz", open(junk, "rb"))}, timeout=60)
    assert r.status_code == 422, r.text
    flat = workdir / "flat.nii.gz"
    SimpleITK.WriteImage(SimpleITK.GetImageFromArray(np.zeros((32, 32), np.uint8)), str(flat))
    r = requests.put(f"{server.url}/datastore/image", params={"image": "flat"}, files={"file": ("flat.nii.gz", open(flat, "rb"))}, timeout=60)
    assert r.status_code == 422 and "3D" in r.json()["detail"], r.text
    r = requests.post(f"{server.url}/infer/segmentation", files={"file": ("flat.nii.gz", open(flat, "rb"))}, timeout=60)
    assert r.status_code == 422, r.text

    # a label of the wrong shape is refused and the saved final label of case0 is untouched
    label_path = server.studies / "labels" / "final" / "case0.nii.gz"
    before = label_path.read_bytes()
    wrong = workdir / "wrong.nii.gz"
    write_volume(wrong, np.zeros((4, 10, 10), np.uint8))
    r = requests.put(f"{server.url}/datastore/label", params={"image": "case0", "tag": "final"},
                     files={"label": ("case0.nii.gz", open(wrong, "rb"))}, timeout=60)
    assert r.status_code == 422 and "differs" in r.json()["detail"], r.text
    r = requests.put(f"{server.url}/datastore/label", params={"image": "nosuch", "tag": "final"},
                     files={"label": ("x.nii.gz", open(wrong, "rb"))}, timeout=60)
    assert r.status_code == 404, r.text
    assert label_path.read_bytes() == before
    assert client.info()["models"]


def test_save_label_then_next_sample(client, server, workdir):
    result_file, _ = client.infer("segmentation", "case2", {"result_extension": ".nii.gz"})
    _, label = synthetic_case(2)
    path = workdir / "case2_label.nii.gz"
    write_volume(path, label, direction=DIRECTION)
    res = client.save_label("case2", str(path), tag="final")
    assert res["label"] == "case2"
    saved = server.studies / "labels" / "final" / "case2.nii.gz"
    assert saved.exists()
    for strategy in ("first", "random", "least_confidence"):
        sample = client.next_sample(strategy, {})
        assert sample["id"] == "case3", (strategy, sample)  # the only unlabeled volume left


@pytest.mark.slow
def test_concurrent_inference(client, server):
    def one(i):
        c = MONAILabelClient(server.url, tmpdir=str(server.workdir / f"client{i}"))
        f, _ = c.infer("segmentation" if i % 2 else "deepedit", "case3", {"result_extension": ".nrrd"})
        return _assert_same_geometry(f, server.studies / "case3.nii.gz").shape

    with ThreadPoolExecutor(8) as pool:
        shapes = list(pool.map(one, range(8)))
    assert shapes == [SHAPE[::-1]] * 8


def _wait_training(client, timeout=900):
    deadline = time.time() + timeout
    while time.time() < deadline:
        status = client.train_status(check_if_running=False)
        if status.get("status") in ("DONE", "ERROR"):
            return status
        time.sleep(3)
    raise TimeoutError("training did not finish")


@pytest.mark.slow
@pytest.mark.parametrize("model", ["segmentation", "deepedit"])
def test_train_one_epoch(client, server, model):
    labels_before = {p.name: p.read_bytes() for p in (server.studies / "labels" / "final").iterdir()}
    # the parameters 3D Slicer sends: the trainer's /info config, lists reduced to their first entry
    params = {k: v[0] if isinstance(v, list) else v for k, v in client.info()["trainers"][model]["config"].items()}
    params.update({"max_epochs": 1, "train_batch_size": 1, "val_split": 0.34, "dataset": "Dataset"})
    client.train_start(model, params)
    status = _wait_training(client)
    assert status["status"] == "DONE", "\n".join(status.get("details", []))
    stats = json.loads((server.workdir / "model" / model / "train_stats.json").read_text())
    assert stats["epoch"] == 1 and stats["baseline_val_dice"] is not None
    assert "mean_weight_bits" in stats["bit_widths"]
    details = "\n".join(status.get("details", []))
    assert "weight bits" in details  # QuantUNetStatsHandler line
    # at least 2 labeled volumes: at least one held out, never trained on; fewer than 2 held out: not published
    assert stats["holdout_volumes"] >= 1 and stats["holdout_volumes"] + stats["train_volumes"] == len(labels_before)
    if stats["holdout_volumes"] < 2:
        assert not stats["published"] and "min_holdout_volumes=2" in stats["publish_reason"]
    assert "PUBLISH: " in details
    if stats["published"]:
        assert (server.workdir / "model" / f"{model}.pt").exists()
        assert stats["best_metric"] > stats["baseline_val_dice"]
    else:
        assert "not published" in stats["publish_reason"]
    # user labels untouched by training
    assert {p.name: p.read_bytes() for p in (server.studies / "labels" / "final").iterdir()} == labels_before
    assert client.info()["models"]


@pytest.mark.slow
def test_train_without_holdout_does_not_publish_unless_asked(workdir):
    """One labeled volume: nothing to validate on, so the run trains but the served model stays, and the train
    status says why; ``publish_without_holdout`` publishes anyway."""
    root = workdir / "one_label"
    studies = make_studies(root, n=2, labeled=1)
    srv = Server(studies, root, {"models": "segmentation", "preload": "false"}).start()
    try:
        c = MONAILabelClient(srv.url, tmpdir=str(root / "client"))
        published = root / "model" / "segmentation.pt"
        c.train_start("segmentation", {"max_epochs": 1, "dataset": "Dataset"})
        status = _wait_training(c)
        assert status["status"] == "DONE", "\n".join(status.get("details", []))
        assert "not published: 0 held-out labeled volume(s) of 1" in "\n".join(status.get("details", []))
        stats = json.loads((root / "model" / "segmentation" / "train_stats.json").read_text())
        assert stats["published"] is False and stats["holdout_volumes"] == 0 and stats["baseline_val_dice"] is None
        assert not published.exists()

        c.train_start("segmentation", {"max_epochs": 1, "dataset": "Dataset", "publish_without_holdout": True})
        status = _wait_training(c)
        assert status["status"] == "DONE", "\n".join(status.get("details", []))
        stats = json.loads((root / "model" / "segmentation" / "train_stats.json").read_text())
        assert stats["published"] is True and published.is_file()
        f, _ = c.infer("segmentation", "case1", {"result_extension": ".nrrd"})  # served from the published file
        assert Path(f).is_file() and f"loaded checkpoint {published}" in srv.tail(400)
    finally:
        srv.stop()


@pytest.mark.slow
def test_label_survives_restart(workdir):
    studies = make_studies(workdir / "restart", n=2, labeled=0)
    srv = Server(studies, workdir / "restart", {"models": "segmentation", "preload": "false"}).start()
    try:
        c = MONAILabelClient(srv.url, tmpdir=str(workdir / "restart" / "client"))
        _, label = synthetic_case(1)
        path = workdir / "restart" / "l.nii.gz"
        write_volume(path, label, direction=DIRECTION)
        c.save_label("case1", str(path), tag="final")
    finally:
        srv.stop()
    srv2 = Server(studies, workdir / "restart", {"models": "segmentation", "preload": "false"}).start()
    try:
        c = MONAILabelClient(srv2.url, tmpdir=str(workdir / "restart" / "client2"))
        ds = requests.get(f"{srv2.url}/datastore/?output=all", timeout=30).json()
        assert "final" in ds["objects"]["case1"]["labels"]
        r = requests.get(f"{srv2.url}/datastore/label", params={"label": "case1", "tag": "final"}, timeout=30)
        assert r.status_code == 200
        assert c.next_sample("first", {})["id"] == "case0"
    finally:
        srv2.stop()
