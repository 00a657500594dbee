"""Contract: every action 3D Slicer's MONAI Label module offers against this app, sent exactly as the module sends
it (request shapes in ``tests/slicer_module.py``, read from the module's source at a pinned commit), through
monailabel's own client to a real ``monailabel start_server``; each answer must mean what the user asked.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import requests

SimpleITK = pytest.importorskip("SimpleITK")
pytest.importorskip("monailabel")
from monailabel.client import MONAILabelClient  # noqa: E402
from slicer_module import click_params, config_params, is_multi_label, result_format, save_label_params  # noqa: E402
from slicer_server import DIRECTION, SHAPE, Server, make_studies, synthetic_case, write_volume  # noqa: E402

CLIENT_ID = "user-xyz"  # the module's default client id (l. 1070)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("slicer_module")


@pytest.fixture(scope="module")
def server(workdir):
    srv = Server(make_studies(workdir, n=4, labeled=2), workdir).start()  # case3 stays unlabeled
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(server, workdir) -> MONAILabelClient:
    return MONAILabelClient(server.url, tmpdir=str(workdir / "client"), client_id=CLIENT_ID)


@pytest.fixture(scope="module")
def info(client) -> dict:
    return client.info()


def _ijk(path) -> np.ndarray:
    return SimpleITK.GetArrayFromImage(SimpleITK.ReadImage(str(path))).transpose(2, 1, 0)


def _missed_lesion_case(workdir: Path):
    """A volume with a faint second lesion (+4 over the background) the auto-segmentation misses: what a user
    clicks on. Returns the path as Slicer saves the loaded volume (``.nii.gz``, its node name as id) and the lesion
    as an (I, J, K) mask."""
    image, _ = synthetic_case(11)
    z, y, x = np.meshgrid(*[np.arange(s) for s in SHAPE[::-1]], indexing="ij")
    lesion = ((x - 12) / 6) ** 2 + ((y - 10) / 5) ** 2 + ((z - 4) / 2) ** 2 < 1
    image = image.copy()
    image[lesion] += 4
    path = workdir / "slicer_tmp" / "tmpk3v9x.nii.gz"  # a NamedTemporaryFile name (l. 1427)
    path.parent.mkdir(exist_ok=True)
    write_volume(path, image, direction=DIRECTION)
    return path, lesion.transpose(2, 1, 0)


def test_connect_lists_the_interactive_model_as_slicer_reads_it(info):
    assert info["models"]["segmentation"]["type"] == "segmentation"
    assert is_multi_label(info, "deepedit")  # the module shows per-segment landmarks for it
    assert "tumor" in info["labels"] and "background" in info["labels"]  # both segments can take landmarks
    assert set(info["strategies"]) >= {"least_confidence", "random", "first"}


def test_upload_loaded_volume_autosegment_click_and_save(client, info, server, workdir):
    """The annotation loop of one user: upload the volume Slicer has loaded (``onUploadImage``), auto-segmentation
    (``onClickSegmentation``), landmarks on a missed lesion and on a false positive, in the multi-label form the
    module uses for this model, then save the label (``onSaveLabel``) and read it back."""
    path, lesion = _missed_lesion_case(workdir)
    image_id = "FLAIR 3D"  # a Slicer volume node name (spaces are common)
    assert client.upload_image(str(path), image_id)["image"] == image_id

    auto_file, params = client.infer("segmentation", image_id, result_format(config_params(info, "infer", "segmentation")))
    assert auto_file.endswith(".nrrd") and params["label_names"]["tumor"] == 1
    auto = _ijk(auto_file)
    assert auto.dtype == np.uint8 and auto.shape == tuple(SHAPE)
    click = (12, 10, 4)
    assert lesion[click] and not auto[click], "the test needs a lesion voxel the auto-segmentation misses"

    landmarks = {"tumor": [list(click)]}
    refined_file, _ = client.infer("deepedit", image_id, click_params(info, "deepedit", "tumor", landmarks))
    refined = _ijk(refined_file)
    assert refined[click] == 1, "the clicked missed-lesion voxel did not become tumor"
    assert (refined & lesion).sum() > (auto & lesion).sum()
    far = np.abs(np.arange(SHAPE[2]) - click[2]) > 2
    np.testing.assert_array_equal(refined[:, :, far], auto[:, :, far])  # beyond the click's reach: unchanged

    # a landmark on the "background" segment (the user selected it): removes a voxel of the mask it clicked
    fp = tuple(int(v) for v in np.argwhere(refined & ~lesion & (np.arange(SHAPE[2]) == click[2])[None, None]).mean(0).round())
    if not refined[fp]:
        fp = tuple(int(v) for v in np.argwhere(refined & ~lesion)[0])
    landmarks["background"] = [list(fp)]
    cleared = _ijk(client.infer("deepedit", image_id, click_params(info, "deepedit", "background", landmarks))[0])
    assert cleared[click] == 1 and cleared[fp] == 0

    # the same click in the single-label form (what the module sends to a deepgrow-type model), with the ROI and
    # the reset the module may add
    single = click_params(info, "deepedit", "tumor", {}, foreground=[click], roi=[2, 40, 1, 30, 0, 7],
                          reset_state=True, multi_label=False)
    assert single["label"] == "tumor" and "tumor" not in single
    again = _ijk(client.infer("deepedit", image_id, single)[0])
    assert again[click] == 1

    # save label as the module does: labelmap exported on the volume's geometry, no tag, label_info + model
    label_path = workdir / "slicer_tmp" / "tmplabel.nrrd"
    reference = SimpleITK.ReadImage(str(path))
    labelmap = SimpleITK.GetImageFromArray(again.transpose(2, 1, 0).astype(np.uint8))
    labelmap.CopyInformation(reference)
    SimpleITK.WriteImage(labelmap, str(label_path), True)
    res = client.save_label(image_id, str(label_path), params=save_label_params(["tumor", "background"], "segmentation"))
    assert res["image"] == image_id
    r = requests.get(f"{server.url}/datastore/label", params={"label": image_id, "tag": "final"}, timeout=60)
    assert r.status_code == 200
    stored = workdir / "slicer_tmp" / "stored.nrrd"
    stored.write_bytes(r.content)
    np.testing.assert_array_equal(_ijk(stored), again)


@pytest.mark.parametrize("ext", [".nii.gz", ".seg.nrrd"])
def test_save_label_formats(client, server, workdir, ext):
    """``.nii.gz`` labelmaps, and Slicer's own ``.seg.nrrd`` (a segmentation node saved as is: cropped to the
    segment's extent, with segment metadata) read back on the image's grid."""
    image_id = "case2"
    image = SimpleITK.ReadImage(str(server.studies / "case2.nii.gz"))
    mask = np.zeros(SHAPE, np.uint8)
    mask[20:30, 15:25, 3:6] = 1
    path = workdir / "slicer_tmp" / f"tmpseg{ext}"
    path.parent.mkdir(exist_ok=True)
    if ext == ".seg.nrrd":
        crop = mask[18:33, 12:27, 2:7]
        seg = SimpleITK.GetImageFromArray(crop.transpose(2, 1, 0))
        seg.SetSpacing(image.GetSpacing())
        seg.SetDirection(image.GetDirection())
        seg.SetOrigin(image.TransformIndexToPhysicalPoint((18, 12, 2)))
        for key, value in {"Segment0_ID": "Segment_1", "Segment0_Name": "tumor", "Segment0_LabelValue": "1",
                           "Segment0_Layer": "0", "Segmentation_MasterRepresentation": "Binary labelmap",
                           "Segmentation_ReferenceImageExtentOffset": "18 12 2"}.items():
            seg.SetMetaData(key, value)
        SimpleITK.WriteImage(seg, str(path), True)
    else:
        img = SimpleITK.GetImageFromArray(mask.transpose(2, 1, 0))
        img.CopyInformation(image)
        SimpleITK.WriteImage(img, str(path), True)
    client.save_label(image_id, str(path), params=save_label_params(["tumor"], "segmentation"))
    r = requests.get(f"{server.url}/datastore/label", params={"label": image_id, "tag": "final"}, timeout=60)
    stored = workdir / "slicer_tmp" / f"stored{ext}"
    stored.write_bytes(r.content)
    back = SimpleITK.ReadImage(str(stored))
    assert back.GetSize() == image.GetSize()
    np.testing.assert_allclose(back.GetOrigin(), image.GetOrigin(), atol=1e-4)
    np.testing.assert_array_equal(_ijk(stored), mask)


def test_next_sample_with_every_listed_strategy(client, info):
    """``onNextSampleButton``: each strategy answers an unlabeled image (case3 is the one no test labels)."""
    for strategy in info["strategies"]:
        sample = client.next_sample(strategy, config_params(info, "activelearning", strategy))
        assert sample.get("id") == "case3", (strategy, sample)


def test_session_volume_then_click(client, info, workdir):
    """``getSessionId`` / ``create_session`` (l. 1610-1622): the loaded volume as a session, clicks against it."""
    path, lesion = _missed_lesion_case(workdir)
    session_id = client.create_session(str(path))["session_id"]
    assert client.get_session(session_id)  # the module only checks that the session still exists
    params = click_params(info, "deepedit", "tumor", {"tumor": [[12, 10, 4]]})
    result_file, _ = client.infer("deepedit", "", params, session_id=session_id)
    assert _ijk(result_file)[12, 10, 4] == 1
    client.remove_session(session_id)


def test_training_start_status_stop(client, info):
    """``onTraining`` (the trainer's config params from /info), the status poll and ``onStopTraining``."""
    model = "segmentation"
    status = client.train_start(model, config_params(info, "train", model))
    assert status.get("id") and status.get("status") in ("SUBMITTED", "RUNNING"), status
    deadline = time.time() + 60  # the task's process starts shortly after the answer
    while not client.train_status(check_if_running=True) and time.time() < deadline:
        time.sleep(0.5)
    assert client.train_status(check_if_running=True), client.train_status()
    client.train_stop()
    deadline = time.time() + 60
    while client.train_status(check_if_running=True) and time.time() < deadline:
        time.sleep(1)
    assert not client.train_status(check_if_running=True)
    assert client.train_status()["status"] in ("STOPPED", "DONE", "FAILED")


def test_click_answer_is_the_librarys_refine_volume(client, info, server, workdir):
    """One refinement chain: the mask the app answers to a click is, voxel for voxel, the library's
    ``refine_volume`` of the app's auto-segmentation (what ``benchmarks/click_robot.py`` measures)."""
    from conftest import INTERACTIVE_BUNDLE

    from monai_quantunet.bundle import network_from_bundle
    from monai_quantunet.checkpoint import load_checkpoint
    from monai_quantunet.interactive import refine_volume

    path, lesion = _missed_lesion_case(workdir)
    image_id = "chain_check"
    # another user: the app keeps a current mask per user and image content, and this content had clicks before
    client = MONAILabelClient(server.url, tmpdir=str(workdir / "client"), client_id="chain-check")
    client.upload_image(str(path), image_id)
    auto = _ijk(client.infer("segmentation", image_id, result_format({}))[0]).astype(bool)
    clicks = {"tumor": [[12, 10, 4]], "background": [[40, 30, 4]]}
    answer = _ijk(client.infer("deepedit", image_id, click_params(info, "deepedit", "tumor", clicks))[0])
    bundle = INTERACTIVE_BUNDLE
    network = network_from_bundle(bundle)
    load_checkpoint(network, bundle / "models" / "model.pt")
    expected = refine_volume(network, path, auto, clicks["tumor"], clicks["background"])
    np.testing.assert_array_equal(answer.astype(bool), expected)
