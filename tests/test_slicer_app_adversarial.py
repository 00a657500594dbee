"""Adversarial requests against a real `monailabel start_server --app slicer_app` (issue 12).

Every request must answer 4xx (never 5xx, never a silent wrong 200). After every test: `/info` answers, nothing
outside the studies folder changed (the folders around it hold decoy volumes at the places a traversal would
reach), and every final label is byte-identical to what the label uploads of this module wrote.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import requests

SimpleITK = pytest.importorskip("SimpleITK")
pytest.importorskip("monailabel")
from slicer_server import DIRECTION, SHAPE, Server, make_studies, synthetic_case, write_volume  # noqa: E402

MAX_UPLOAD_BYTES = 3_000_000  # small, so a 4 MB upload tests the byte limit; volumes here are ~40 kB


# ---- the server, the decoys and the invariants ------------------------------------------------------------------
class Env:
    def __init__(self, root: Path):
        self.root = root
        self.area = root / "area"  # everything under it but the studies folder must stay untouched
        self.studies = make_studies(self.area / "inner", n=5, labeled=2)
        image, _ = synthetic_case(11)
        self.outside_volume = self.area / "outside.nii.gz"  # readable volume outside the datastore
        write_volume(self.outside_volume, image)
        write_volume(self.area / "inner" / "escape_img.nii.gz", image)  # studies/../escape_img.nii.gz
        write_volume(self.area / "escape_img.nii.gz", image)
        (self.area / "inner" / "labels").mkdir()
        os.symlink(self.outside_volume, self.studies / "link.nii.gz")  # a link out of the folder
        write_volume(self.studies / "bad$name.nii.gz", image)  # breaks the id rule: listed, never used
        os.symlink("case0.nii.gz", self.studies / "alias.nii.gz")  # a second id for case0's file
        case5, _ = synthetic_case(5)
        write_volume(self.studies / "case5.nii.gz", case5, direction=DIRECTION)
        os.symlink("case1.nii.gz", self.studies / "labels" / "final" / "case5.nii.gz")  # case5's label is case1's file
        # names in the server's working directory that image ids could be mistaken for
        cwd = root / "server"
        (cwd / "tests").mkdir(parents=True)
        write_volume(cwd / "decoy.nrrd", np.full(SHAPE[::-1], 200, np.int16))
        (cwd / "README.md").write_text("not a volume")
        self.server = Server(self.studies, cwd, {"max_upload_bytes": MAX_UPLOAD_BYTES}).start()
        self.url = self.server.url
        self.outside_before = self.snapshot_outside()
        self.finals = self.read_finals()

    def snapshot_outside(self) -> dict:
        out = {}
        for dirpath, dirnames, filenames in os.walk(self.area):
            if Path(dirpath) == self.studies.parent:
                dirnames[:] = [d for d in dirnames if d != self.studies.name]
            for name in dirnames + filenames:
                p = Path(dirpath) / name
                st = p.lstat()
                out[str(p.relative_to(self.area))] = (st.st_size, st.st_mtime_ns, p.is_dir())
        return out

    def read_finals(self) -> dict:
        return {p.name: p.read_bytes() for p in sorted((self.studies / "labels" / "final").iterdir())}

    def check_invariants(self):
        assert self.server.proc.poll() is None, self.server.tail()
        assert requests.get(f"{self.url}/info/", timeout=60).status_code == 200
        assert self.snapshot_outside() == self.outside_before, "a file outside the studies folder changed"
        assert self.read_finals() == self.finals, "a final label changed"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    e = Env(tmp_path_factory.mktemp("adversarial"))
    yield e
    e.server.stop()


@pytest.fixture(autouse=True)
def invariants(env):
    yield
    env.check_invariants()


def call(env, method, path, expect, params=None, data=None, files=None, json_body=None, text=None, timeout=120):
    kwargs = {"params": params, "data": data, "timeout": timeout}
    if files:
        kwargs["files"] = {k: (name, open(fp, "rb") if isinstance(fp, (str, Path)) else fp) for k, (name, fp) in files.items()}
    if json_body is not None:
        kwargs["json"] = json_body
    r = requests.request(method, env.url + path, **kwargs)
    assert r.status_code < 500, f"{method} {path} {params}: {r.status_code} {r.text[:500]}"
    if expect is not None:
        assert r.status_code == expect, f"{method} {path} {params} {data}: {r.status_code} {r.text[:500]}"
    if r.status_code >= 400 and method != "HEAD":
        detail = r.json().get("detail")
        assert detail, r.text
        if text:
            assert text in str(detail), detail
    return r


def volume(tmp_path: Path, name: str, array_zyx, **kw) -> Path:
    p = tmp_path / name
    write_volume(p, array_zyx, **kw)
    return p


TRAVERSAL_IDS = ["../escape_img", "../../escape_img", "..", ".", "a/b", "a\\b", "/etc/passwd", "case0/../case1",
                 ".hidden", "x" * 300, "", " case0", "case0\x00"]
TRAVERSAL_TAGS = ["../../escape_tag", "../final", "./final", "final/", "final/..", "/tmp/x", "..", "a/b", "t" * 100]


# ---- inference ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("params_text", ["{bad", "null", "[1,2]", '"abc"', "1"])
def test_infer_params_not_a_json_object(env, params_text):
    call(env, "POST", "/infer/segmentation", 422, params={"image": "case2"}, data={"params": params_text}, text="params")


def test_infer_without_image_or_file(env):
    call(env, "POST", "/infer/segmentation", 422, text="no image given")


@pytest.mark.parametrize("ext", ["/x", ".jpg", ".png", "../../x.nii.gz", ".nii.gz/..", 3])
def test_infer_bad_result_extension(env, ext):
    call(env, "POST", "/infer/segmentation", 422, params={"image": "case2"}, data={"params": json.dumps({"result_extension": ext})},
         text="result_extension")


@pytest.mark.parametrize("image_id", TRAVERSAL_IDS[:-2])
def test_infer_image_traversal(env, image_id):
    call(env, "POST", "/infer/segmentation", 422, params={"image": image_id})


def test_infer_absolute_paths_cannot_read_or_probe(env):
    """An existing and a missing absolute path get the same answer: nothing is read, nothing can be probed."""
    a = call(env, "POST", "/infer/segmentation", 422, params={"image": str(env.outside_volume)})
    b = call(env, "POST", "/infer/segmentation", 422, params={"image": str(env.area / "missing.nii.gz")})
    assert a.json()["detail"].split("'")[0] == b.json()["detail"].split("'")[0]
    call(env, "POST", "/infer/segmentation", 422, params={"image": "case2"},
         data={"params": json.dumps({"image": str(env.outside_volume)})}, text="not allowed")
    call(env, "POST", "/infer/wsi/segmentation", None, params={"image": str(env.outside_volume)})


def test_linked_images_are_read_only_and_badly_named_files_not_used(env, tmp_path):
    """Data linked into the studies folder is served, never replaced or deleted through the link (issue 21, #4)."""
    call(env, "POST", "/infer/segmentation", 200, params={"image": "link"})
    call(env, "DELETE", "/datastore/image", 409, params={"id": "link"}, text="read-only")
    other, _ = synthetic_case(9)
    call(env, "PUT", "/datastore/image", 409, params={"image": "link"},
         files={"file": ("link.nii.gz", volume(tmp_path, "other.nii.gz", other))}, text="read-only")
    call(env, "POST", "/infer/segmentation", 422, params={"image": "bad$name"})
    for strategy in ("first", "random"):
        for _ in range(3):
            r = call(env, "POST", f"/activelearning/{strategy}", 200, json_body={})
            assert r.json().get("id") != "bad$name"


def test_infer_unknown_model_and_image(env):
    call(env, "POST", "/infer/nosuchmodel", 404, params={"image": "case2"}, text="unknown model")
    call(env, "POST", "/infer/segmentation", 404, params={"image": "nosuchimage"}, text="not found")


@pytest.mark.parametrize("tag", ["final", "Final", "./final", "final/", "../final", "labels/final", "../labels/final", ".."])
def test_infer_save_label_never_touches_final(env, tag):
    r = call(env, "POST", "/infer/segmentation", None, params={"image": "case0"},
             data={"params": json.dumps({"save_label": True, "label_tag": tag})})
    assert r.status_code in (403, 422), r.text
    assert "label_tag" in r.json()["detail"]


def test_infer_save_label_other_tag_is_fine_and_final_untouched(env):
    call(env, "POST", "/infer/segmentation", 200, params={"image": "case0"},
          data={"params": json.dumps({"save_label": True, "label_tag": "original", "result_extension": ".nii.gz"})})
    assert (env.studies / "labels" / "original" / "case0.nii.gz").is_file()


def test_clicks_to_segmentation_refused(env):
    call(env, "POST", "/infer/segmentation", 422, params={"image": "case2"},
         data={"params": json.dumps({"foreground": [[10, 10, 2]]})}, text="takes no clicks")


def test_click_limits(env):
    many = [[i % SHAPE[0], i % SHAPE[1], 1] for i in range(300)]
    call(env, "POST", "/infer/deepedit", 413, params={"image": "case2"},
         data={"params": json.dumps({"foreground": many})}, text="max_clicks")
    start = time.time()  # issue 12: 20,000 clicks took 19 s and blocked /info; now refused before any work
    call(env, "POST", "/infer/deepedit", 413, params={"image": "case2"},
         data={"params": json.dumps({"foreground": many * 67})}, text="max_clicks")
    assert time.time() - start < 5
    call(env, "POST", "/infer/deepedit", 422, params={"image": "case2"},
         data={"params": json.dumps({"foreground": [[999, 1, 1]]})}, text="outside")
    call(env, "POST", "/infer/deepedit", 422, params={"image": "case2"},
         data={"params": json.dumps({"foreground": "abc"})})


@pytest.mark.parametrize("params", [{"device": "cuda:99"}, {"device": "../x"}, {"logging": "bogus"}, {"sw_batch_size": 0},
                                    {"result_dtype": "object"}, {"save_label": "maybe"}])
def test_infer_bad_options(env, params):
    call(env, "POST", "/infer/segmentation", 422, params={"image": "case2"}, data={"params": json.dumps(params)})


def test_infer_bad_session_and_label_file(env, tmp_path):
    call(env, "POST", "/infer/segmentation", 422, params={"session_id": "../../x"}, text="session_id")
    lab = volume(tmp_path, "l.nii.gz", np.zeros(SHAPE[::-1], np.uint8))
    call(env, "POST", "/infer/segmentation", 422, params={"image": "case2"}, files={"label": ("l.nii.gz", lab)})


def test_infer_uploaded_file_checked(env, tmp_path):
    image, _ = synthetic_case(3)
    good = volume(tmp_path, "good.nii.gz", image)
    call(env, "POST", "/infer/segmentation", 200, files={"file": ("good.nii.gz", good)},
         data={"params": json.dumps({"result_extension": ".nrrd"})})
    trunc = tmp_path / "trunc.nii.gz"
    trunc.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    call(env, "POST", "/infer/segmentation", 422, files={"file": ("trunc.nii.gz", trunc)}, text="truncated")
    call(env, "POST", "/infer/segmentation", 422, files={"file": ("x.png", good)}, text="expected one of")


# ---- image uploads ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("image_id", TRAVERSAL_IDS + [None])
def test_upload_image_id_traversal(env, tmp_path, image_id):
    image, _ = synthetic_case(5)
    src = volume(tmp_path, "up.nii.gz", image)
    if image_id is None:  # the id comes from the file name
        r = call(env, "PUT", "/datastore/image", None, files={"file": ("../../escape_img.nii.gz", src)})
        assert r.status_code in (200, 422)
        if r.status_code == 200:  # the name's folders are dropped: stored inside, as escape_img
            assert r.json()["image"] == "escape_img" and (env.studies / "escape_img.nii.gz").is_file()
            call(env, "DELETE", "/datastore/image", 200, params={"id": "escape_img"})
        return
    if image_id == "":
        # no id: MONAI Label's client sends the file name, here "up"
        r = call(env, "PUT", "/datastore/image", 200, params={"image": image_id}, files={"file": ("up.nii.gz", src)})
        call(env, "DELETE", "/datastore/image", 200, params={"id": r.json()["image"]})
        return
    call(env, "PUT", "/datastore/image", 422, params={"image": image_id}, files={"file": ("up.nii.gz", src)}, text="not allowed" if len(image_id) < 200 else "too long")


@pytest.mark.parametrize("params_text", ["{bad", "null", "[1,2]", '"abc"'])
def test_upload_image_params_not_a_json_object(env, tmp_path, params_text):
    image, _ = synthetic_case(5)
    src = volume(tmp_path, "up.nii.gz", image)
    call(env, "PUT", "/datastore/image", 422, params={"image": "newimg"}, data={"params": params_text}, files={"file": ("up.nii.gz", src)})
    assert not (env.studies / "newimg.nii.gz").exists()


def test_upload_bad_files(env, tmp_path):
    image, _ = synthetic_case(5)
    good = volume(tmp_path, "good.nii.gz", image)
    data = good.read_bytes()
    cases = {
        "trunc.nii.gz": (data[: len(data) // 2], 422, "truncated"),
        "junk.nii.gz": (b"not an image at all", 422, "not a readable image"),
        "empty.nii.gz": (b"", 422, "empty"),
        "img.png": (data, 422, "expected one of"),
    }
    for name, (content, status, text) in cases.items():
        p = tmp_path / name
        p.write_bytes(content)
        call(env, "PUT", "/datastore/image", status, params={"image": "bad_" + name.split(".")[0]}, files={"file": (name, p)}, text=text)
    flat = tmp_path / "flat.nii.gz"
    SimpleITK.WriteImage(SimpleITK.GetImageFromArray(np.zeros((32, 32), np.uint8)), str(flat))
    call(env, "PUT", "/datastore/image", 422, params={"image": "flat"}, files={"file": ("flat.nii.gz", flat)}, text="3D")
    assert not any(p.name.startswith(("bad_", "flat")) for p in env.studies.iterdir())


def test_upload_size_limits(env, tmp_path):
    big_voxels = volume(tmp_path, "big.nii.gz", np.zeros((200, 300, 300), np.uint8))  # 18M voxels > 256^3, ~20 kB
    assert big_voxels.stat().st_size < MAX_UPLOAD_BYTES
    call(env, "PUT", "/datastore/image", 413, params={"image": "bigvox"}, files={"file": ("big.nii.gz", big_voxels)}, text="max_voxels")
    call(env, "POST", "/infer/segmentation", 413, files={"file": ("big.nii.gz", big_voxels)}, text="max_voxels")
    big_bytes = volume(tmp_path, "bytes.nii", np.random.default_rng(0).random((100, 100, 100), dtype=np.float32))
    assert big_bytes.stat().st_size > MAX_UPLOAD_BYTES
    call(env, "PUT", "/datastore/image", 413, params={"image": "bigbytes"}, files={"file": ("bytes.nii", big_bytes)}, text="max_upload_bytes")
    call(env, "PUT", "/datastore/label", 413, params={"image": "case2", "tag": "final"}, files={"label": ("bytes.nii", big_bytes)})
    assert not any(p.name.startswith("big") for p in env.studies.iterdir())


def test_reupload_cannot_orphan_or_replace_labeled_image(env, tmp_path):
    """Issue 12, item 2: same content then different content under a labeled id, five times."""
    image_file = env.studies / "case0.nii.gz"
    before = image_file.read_bytes()
    other, _ = synthetic_case(9)
    different = volume(tmp_path, "other.nii.gz", other, direction=DIRECTION)
    for _ in range(5):
        call(env, "PUT", "/datastore/image", 200, params={"image": "case0"}, files={"file": ("case0.nii.gz", image_file)})
        objects = requests.get(f"{env.url}/datastore/?output=all", timeout=30).json()["objects"]
        assert "final" in objects["case0"]["labels"]
        call(env, "PUT", "/datastore/image", 409, params={"image": "case0"}, files={"file": ("case0.nii.gz", different)}, text="final label")
        call(env, "PUT", "/datastore/image", 409, params={"image": "case0"}, files={"file": ("case0.nrrd", _as_nrrd(tmp_path, other))})
    assert image_file.read_bytes() == before
    assert not (env.studies / "case0.nrrd").exists()


def test_concurrent_reuploads_keep_label_and_image(env, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    image_file = env.studies / "case1.nii.gz"
    before = image_file.read_bytes()
    other, _ = synthetic_case(12)
    different = volume(tmp_path, "other.nii.gz", other, direction=DIRECTION)

    def one(i):
        src = image_file if i % 2 else different
        with open(src, "rb") as f:
            return requests.put(f"{env.url}/datastore/image", params={"image": "case1"},
                                files={"file": ("case1.nii.gz", f.read())}, timeout=120).status_code

    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(one, range(16)))
    assert sorted(set(codes)) == [200, 409], codes
    assert image_file.read_bytes() == before
    objects = requests.get(f"{env.url}/datastore/?output=all", timeout=30).json()["objects"]
    assert "final" in objects["case1"]["labels"]


def _as_nrrd(tmp_path, array_zyx) -> Path:
    p = tmp_path / "other.nrrd"
    if not p.exists():
        write_volume(p, array_zyx)
    return p


# ---- label uploads ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("tag", TRAVERSAL_TAGS)
def test_label_tag_traversal(env, tmp_path, tag):
    _, label = synthetic_case(2)
    lab = volume(tmp_path, "l.nii.gz", label, direction=DIRECTION)
    call(env, "PUT", "/datastore/label", 422, params={"image": "case2", "tag": tag}, files={"label": ("case2.nii.gz", lab)}, text="tag")
    call(env, "GET", "/datastore/label", 422, params={"label": "case0", "tag": tag})
    call(env, "DELETE", "/datastore/label", 422, params={"id": "case0", "tag": tag})


@pytest.mark.parametrize("image_id", TRAVERSAL_IDS)
def test_label_image_id_traversal(env, tmp_path, image_id):
    _, label = synthetic_case(2)
    lab = volume(tmp_path, "l.nii.gz", label, direction=DIRECTION)
    call(env, "PUT", "/datastore/label", 422, params={"image": image_id, "tag": "final"}, files={"label": ("x.nii.gz", lab)})
    call(env, "GET", "/datastore/label", 422, params={"label": image_id, "tag": "final"})
    call(env, "GET", "/datastore/image", 422, params={"image": image_id})
    call(env, "HEAD", "/datastore/image", 422, params={"image": image_id})
    call(env, "DELETE", "/datastore/image", 422, params={"id": image_id})
    call(env, "PUT", "/datastore/image/info", 422, params={"image": image_id}, data={"info": "{}"})


@pytest.mark.parametrize("params_text", ["{bad", "null", "[1,2]", '"abc"'])
def test_label_params_not_a_json_object(env, tmp_path, params_text):
    _, label = synthetic_case(0)
    lab = volume(tmp_path, "l.nii.gz", label, direction=DIRECTION)
    call(env, "PUT", "/datastore/label", 422, params={"image": "case0", "tag": "final"}, data={"params": params_text},
         files={"label": ("case0.nii.gz", lab)}, text="params")
    call(env, "PUT", "/datastore/image/info", 422, params={"image": "case0"}, data={"info": params_text}, text="info")
    call(env, "PUT", "/datastore/label/info", 422, params={"label": "case0", "tag": "final"}, data={"info": params_text})


@pytest.mark.parametrize(
    "name,array",
    [
        ("sevens", np.full(SHAPE[::-1], 7, np.uint8)),
        ("fractions", (np.random.default_rng(0).random(SHAPE[::-1]) * 0.9).astype(np.float32)),
        ("negative", -np.ones(SHAPE[::-1], np.int16)),
        ("three_values", np.arange(np.prod(SHAPE)).reshape(SHAPE[::-1]) % 3),
        ("wrong_size", np.zeros((4, 10, 10), np.uint8)),
    ],
)
def test_label_values_refused(env, tmp_path, name, array):
    lab = volume(tmp_path, f"{name}.nii.gz", array, direction=DIRECTION)
    call(env, "PUT", "/datastore/label", 422, params={"image": "case0", "tag": "final"}, files={"label": ("case0.nii.gz", lab)})


def test_label_0_255_binarised_and_history_kept(env, tmp_path):
    _, label = synthetic_case(3)
    lab255 = volume(tmp_path, "l255.nii.gz", (label * 255).astype(np.uint8), direction=DIRECTION)
    call(env, "PUT", "/datastore/label", 200, params={"image": "case3", "tag": "final"}, files={"label": ("case3.nii.gz", lab255)})
    stored = env.studies / "labels" / "final" / "case3.nii.gz"
    arr = SimpleITK.GetArrayFromImage(SimpleITK.ReadImage(str(stored)))
    np.testing.assert_array_equal(arr, label)  # 255 -> 1
    env.finals = env.read_finals()
    first = stored.read_bytes()
    lab01 = volume(tmp_path, "l01.nii.gz", np.zeros_like(label), direction=DIRECTION)
    call(env, "PUT", "/datastore/label", 200, params={"image": "case3", "tag": "final"}, files={"label": ("case3.nii.gz", lab01)})
    assert stored.read_bytes() == lab01.read_bytes()  # 0/1 stored as uploaded
    history = list((env.studies / ".label_history" / "final").glob("case3.*.nii.gz"))
    assert any(h.read_bytes() == first for h in history)
    env.finals = env.read_finals()


def test_label_for_unknown_image(env, tmp_path):
    _, label = synthetic_case(2)
    lab = volume(tmp_path, "l.nii.gz", label, direction=DIRECTION)
    call(env, "PUT", "/datastore/label", 404, params={"image": "nosuch", "tag": "final"}, files={"label": ("x.nii.gz", lab)})
    call(env, "PUT", "/datastore/label", 422, params={"image": "case2", "tag": "final"}, text="label: missing")


# ---- deletes ----------------------------------------------------------------------------------------------------
def test_info_of_unknown_or_traversal_ids(env):
    call(env, "GET", "/datastore/image/info", 404, params={"image": "nosuch"})
    call(env, "GET", "/datastore/image/info", 422, params={"image": "../escape_img"})
    call(env, "GET", "/datastore/label/info", 404, params={"label": "case4", "tag": "final"})
    call(env, "GET", "/datastore/label/info", 422, params={"label": "case0", "tag": "../final"})
    assert call(env, "GET", "/datastore/image/info", 200, params={"image": "case0"}).json()["path"].startswith(str(env.studies))


def test_deletes(env):
    call(env, "DELETE", "/datastore/image", 404, params={"id": "nosuch"}, text="not found")
    call(env, "DELETE", "/datastore/image", 409, params={"id": "case0"}, text="final label")
    call(env, "DELETE", "/datastore/label", 409, params={"id": "case0", "tag": "final"}, text="kept")
    call(env, "DELETE", "/datastore/label", 404, params={"id": "case4", "tag": "original"})
    assert (env.area / "inner" / "escape_img.nii.gz").is_file()


# ---- training and active learning -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "model,body,status",
    [
        ("nosuch", {}, 404),
        ("segmentation", {"max_epochs": "x"}, 422),
        ("segmentation", {"max_epochs": -1}, 422),
        ("segmentation", {"val_split": 2}, 422),
        ("segmentation", {"learning_rate": 0}, 422),
        ("segmentation", {"train_ds": str(Path("/etc/passwd"))}, 422),
        ("segmentation", {"val_ds": "/tmp/x.json"}, 422),
        ("segmentation", {"name": "../../escape_run"}, 422),
        ("segmentation", {"tracking_uri": "file:///tmp/mlruns"}, 422),
        ("segmentation", {"dataset": "NoSuchDataset"}, 422),
        ("segmentation", {"model": "deepedit"}, 422),
        ("segmentation", {"device": "cuda:7"}, 422),
        ("deepedit", {"freeze_bit_widths": "perhaps"}, 422),
    ],
)
def test_train_requests_validated_before_queueing(env, model, body, status):
    call(env, "POST", f"/train/{model}", status, json_body=body)
    assert requests.get(f"{env.url}/train/", timeout=30).status_code == 404  # nothing was queued


def test_train_body_not_json_and_run_sync(env):
    r = requests.post(f"{env.url}/train/segmentation", data="{bad", headers={"Content-Type": "application/json"}, timeout=30)
    assert r.status_code == 422, r.text
    call(env, "POST", "/train/segmentation", 422, params={"run_sync": "true"}, json_body={}, text="run_sync")
    call(env, "POST", "/train/", 404, json_body={"nosuch": {}})
    assert requests.get(f"{env.url}/train/", timeout=30).status_code == 404


def test_active_learning_bad_requests(env):
    call(env, "POST", "/activelearning/nosuch", 404, json_body={}, text="strategy")
    call(env, "POST", "/activelearning/random", 422, json_body=[1, 2])
    call(env, "POST", "/activelearning/least_confidence", 422, json_body={"device": "cuda:9"})
    r = call(env, "POST", "/activelearning/first", 200, json_body={})
    labeled = {p.name.split(".")[0] for p in (env.studies / "labels" / "final").iterdir()}
    assert r.json()["id"] not in labeled and (env.studies / f"{r.json()['id']}.nii.gz").is_file()


# ---- batch inference, scoring, model files ----------------------------------------------------------------------
def test_batch_scoring_and_model_files(env, tmp_path):
    call(env, "POST", "/batch/infer/nosuch", 404, json_body={})
    call(env, "POST", "/batch/infer/segmentation", 403, json_body={"save_label": True, "label_tag": "final"})
    call(env, "POST", "/batch/infer/segmentation", 422, json_body={"save_label": True, "label_tag": "../../escape_tag"})
    call(env, "POST", "/batch/infer/segmentation", 422, json_body={"foreground": [[1, 1, 1]]})
    call(env, "POST", "/batch/infer/segmentation", 422, params={"run_sync": "true"}, json_body={})
    assert requests.get(f"{env.url}/batch/infer", timeout=30).status_code == 404  # nothing was queued
    call(env, "POST", "/scoring/nosuch", 404, json_body={})
    fake = tmp_path / "model.pt"
    fake.write_bytes(b"not a checkpoint")
    call(env, "PUT", "/model/segmentation", 403, files={"file": ("model.pt", fake)})
    call(env, "PUT", "/model/nosuch", 404, files={"file": ("model.pt", fake)})
    call(env, "DELETE", "/model/segmentation", 403)
    call(env, "GET", "/model/nosuch", 404)


def test_upload_file_names_are_not_paths(env, tmp_path):
    """The multipart file name only gives the extension (and, without ?image=, the id): never a path."""
    image, label = synthetic_case(4)
    src = volume(tmp_path, "up.nii.gz", image, direction=DIRECTION)
    call(env, "POST", "/infer/segmentation", 200, files={"file": ("../../../escape_infer.nii.gz", src)})
    call(env, "PUT", "/datastore/image", 422, files={"file": ("../../", src)})
    lab = volume(tmp_path, "lab.nii.gz", label, direction=DIRECTION)
    call(env, "PUT", "/datastore/label", 200, params={"image": "case4", "tag": "reviewed"},
         files={"label": ("../../../../escape_label.nii.gz", lab)})
    assert (env.studies / "labels" / "reviewed" / "case4.nii.gz").read_bytes() == lab.read_bytes()


def test_sessions_and_static_paths(env, tmp_path):
    """3D Slicer sends a volume it loaded itself as a session before clicks: works, checked like an upload."""
    image, _ = synthetic_case(4)
    src = volume(tmp_path, "up.nii.gz", image)
    r = call(env, "PUT", "/session/", 200, files={"files": ("../../up.nii.gz", src)})
    session_id = r.json()["session_id"]
    call(env, "POST", "/infer/deepedit", 200, params={"image": "not_in_datastore", "session_id": session_id},
         data={"params": json.dumps({"foreground": [[10, 10, 2]], "result_extension": ".nrrd"})})
    call(env, "GET", f"/session/{session_id}", 200)
    call(env, "DELETE", f"/session/{session_id}", 200)
    call(env, "POST", "/infer/segmentation", 404, params={"image": "not_in_datastore", "session_id": session_id})
    trunc = tmp_path / "trunc.nii.gz"
    trunc.write_bytes(src.read_bytes()[:2000])
    call(env, "PUT", "/session/", 422, files={"files": ("trunc.nii.gz", trunc)}, text="truncated")
    call(env, "PUT", "/session/", 422, params={"uncompress": "true"}, files={"files": ("up.nii.gz", src)})
    call(env, "GET", "/session/..%2F..%2Fescape", None)
    call(env, "GET", "/session/abc-123", 404)
    call(env, "DELETE", "/session/%2E%2E", 422)
    call(env, "POST", "/infer/segmentation", 422, params={"session_id": "../../x"}, text="session_id")
    for path in ("/ohif/..", "/ohif/../../etc/passwd", "/static/../main.py"):
        call(env, "GET", path, None)


# ---- second adversarial round (issue 21) --------------------------------------------------------------------------
def test_label_with_nan_refused(env, tmp_path):
    _, label = synthetic_case(0)
    nan = label.astype(np.float32)
    nan[0, 0, 0] = np.nan
    call(env, "PUT", "/datastore/label", 422, params={"image": "case0", "tag": "final"},
         files={"label": ("case0.nii.gz", volume(tmp_path, "nan.nii.gz", nan, direction=DIRECTION))}, text="NaN")


@pytest.mark.parametrize("geometry,text", [
    ({"direction": (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)}, "direction"),
    ({"direction": DIRECTION, "origin": (480.0, 10.0, 5.0)}, "origin"),
    ({"direction": DIRECTION, "spacing": (4.5, 5.5, 20.0)}, "spacing"),
])
def test_label_of_another_geometry_refused(env, tmp_path, geometry, text):
    _, label = synthetic_case(0)
    lab = volume(tmp_path, "geo.nii.gz", label, **geometry)
    call(env, "PUT", "/datastore/label", 422, params={"image": "case0", "tag": "final"},
         files={"label": ("case0.nii.gz", lab)}, text=text)


def test_link_to_another_ids_file_is_not_a_second_id(env):
    """``alias.nii.gz -> case0.nii.gz``: not served, cannot be deleted, case0 and its label stay (#4)."""
    call(env, "POST", "/infer/segmentation", 404, params={"image": "alias"})
    call(env, "DELETE", "/datastore/image", 404, params={"id": "alias"})
    assert (env.studies / "case0.nii.gz").is_file() and not (env.studies / "case0.nii.gz").is_symlink()


def test_label_upload_replaces_a_linked_label_not_its_target(env, tmp_path):
    """``labels/final/case5.nii.gz -> case1.nii.gz``: case5's upload replaces the link; case1's label is untouched
    (checked by the invariants) (#5)."""
    _, label = synthetic_case(5)
    lab = volume(tmp_path, "l5.nii.gz", label, direction=DIRECTION)
    call(env, "PUT", "/datastore/label", 200, params={"image": "case5", "tag": "final"}, files={"label": ("case5.nii.gz", lab)})
    stored = env.studies / "labels" / "final" / "case5.nii.gz"
    assert not stored.is_symlink() and stored.read_bytes() == lab.read_bytes()
    assert env.read_finals()["case1.nii.gz"] == env.finals["case1.nii.gz"]
    env.finals = env.read_finals()


def _detached_nrrd(tmp_path: Path, data_file: Path) -> Path:
    header = (f"NRRD0004\ntype: int16\ndimension: 3\nspace: left-posterior-superior\nsizes: {SHAPE[0]} {SHAPE[1]} {SHAPE[2]}\n"
              "space directions: (1,0,0) (0,1,0) (0,0,1)\nkind: domain domain domain\nendian: little\n"
              f"encoding: raw\nspace origin: (0,0,0)\ndata file: {data_file}\n\n")
    path = tmp_path / "detached.nrrd"
    path.write_text(header)
    return path


def test_detached_header_nrrd_refused(env, tmp_path):
    """A NRRD whose ``data file:`` names a file outside would read it (#7): uploads and infer uploads refused."""
    outside = env.area / "outside.raw"
    outside.write_bytes(np.ones(int(np.prod(SHAPE)), np.int16).tobytes())
    env.outside_before = env.snapshot_outside()
    nrrd = _detached_nrrd(tmp_path, outside)
    call(env, "PUT", "/datastore/image", 422, params={"image": "detached"}, files={"file": ("d.nrrd", nrrd)}, text="detached")
    call(env, "PUT", "/datastore/label", 422, params={"image": "case2", "tag": "final"}, files={"label": ("d.nrrd", nrrd)}, text="detached")
    call(env, "POST", "/infer/segmentation", 422, files={"file": ("d.nrrd", nrrd)}, text="detached")


def test_ids_never_resolve_against_the_working_directory(env, tmp_path):
    """Ids equal to names in the server's working directory (a folder ``tests``, a file ``README.md``) are the
    datastore's images (#8); an id that ends with a volume extension (``decoy.nrrd``, a volume there) is refused."""
    image, _ = synthetic_case(2)
    src = volume(tmp_path, "same_as_case2.nii.gz", image, direction=DIRECTION)
    for image_id in ("tests", "README.md"):
        call(env, "PUT", "/datastore/image", 200, params={"image": image_id}, files={"file": ("x.nii.gz", src)})
    call(env, "PUT", "/datastore/image", 422, params={"image": "decoy.nrrd"}, files={"file": ("x.nii.gz", src)}, text="extension")
    call(env, "POST", "/infer/segmentation", 422, params={"image": "decoy.nrrd"}, text="extension")
    reference = call(env, "POST", "/infer/segmentation", 200, params={"image": "case2", "output": "image"}).content
    for image_id in ("tests", "README.md"):
        r = call(env, "POST", "/infer/segmentation", 200, params={"image": image_id, "output": "image"})
        assert r.content == reference, image_id  # the datastore's volume, not the decoy


def test_outputs_options_and_routes_without_5xx(env, tmp_path):
    """#9: result outputs, skip_writer, DICOM bytes under a volume name, the GPU log, the DICOMweb proxy."""
    for output in ("image", "json", "all"):
        call(env, "POST", "/infer/segmentation", 200, params={"image": "case2", "output": output})
    call(env, "POST", "/infer/segmentation", 422, params={"image": "case2", "output": "dicom_seg"}, text="DICOM")
    call(env, "POST", "/infer/segmentation", 422, params={"image": "case2"}, data={"params": json.dumps({"skip_writer": True})})
    dicom = tmp_path / "x.dcm"
    dicom.write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00UI\x12\x001.2.840.10008.1.2.1\0" + b"\0" * 200)
    call(env, "PUT", "/datastore/image", 422, params={"image": "dcm"}, files={"file": ("dcm.nii.gz", dicom)})
    call(env, "POST", "/infer/segmentation", 422, files={"file": ("dcm.nrrd", dicom)})
    call(env, "GET", "/logs/gpu", None)
    call(env, "GET", "/proxy/dicom/qido/studies", 404)
    call(env, "HEAD", "/datastore/image", None, params={"check_sum": "md5:zz"})


def test_images_with_nan_and_nifti2_refused_at_upload(env, tmp_path):
    """#13: an image with a NaN voxel could never be segmented; NIfTI-2 gets a sentence, not a reader error."""
    import nibabel as nib

    image, _ = synthetic_case(3)
    nan = image.astype(np.float32)
    nan[1, 2, 3] = np.inf
    call(env, "PUT", "/datastore/image", 422, params={"image": "nanimg"},
         files={"file": ("n.nii.gz", volume(tmp_path, "nan.nii.gz", nan))}, text="NaN or infinite")
    nifti2 = tmp_path / "n2.nii.gz"
    nib.save(nib.Nifti2Image(image.transpose(2, 1, 0), np.eye(4)), str(nifti2))
    call(env, "PUT", "/datastore/image", 422, params={"image": "n2"}, files={"file": ("n2.nii.gz", nifti2)}, text="NIfTI-2")


def test_batch_inference_on_a_cpu_server(env):
    """#10: the batch job runs to the end (it divided by the CUDA device count)."""
    call(env, "POST", "/batch/infer/segmentation", 200, params={"images": "unlabeled"}, json_body={})
    deadline = time.time() + 300
    status = {}
    while time.time() < deadline:
        status = requests.get(f"{env.url}/batch/infer/", timeout=30).json()
        if status.get("status") not in ("SUBMITTED", "RUNNING"):
            break
        time.sleep(2)
    assert status.get("status") == "DONE", status


def test_one_training_at_a_time_and_temp_files_removed(env):
    """#11: a second training (queued or not) is refused while one runs, and the running one stops; #12: dataset
    archives and refused requests leave nothing in the server's temporary folder."""
    call(env, "POST", "/train/segmentation", 200, json_body={"max_epochs": 50})
    try:
        call(env, "POST", "/train/segmentation", 409, params={"enqueue": "true"}, json_body={"max_epochs": 1}, text="already")
        call(env, "POST", "/train/", 409, json_body={}, text="already")
    finally:
        requests.delete(f"{env.url}/train/", timeout=60)
    for _ in range(3):
        call(env, "GET", "/datastore/dataset", 200)
    call(env, "POST", "/infer/segmentation", 403, params={"image": "case2"},
         data={"params": json.dumps({"save_label": True, "label_tag": "final"})})
    time.sleep(1)
    left = [p.name for p in (env.server.workdir / "tmp").rglob("*") if p.is_file() and (
        p.name.endswith((".nii.gz", ".nii", ".nrrd")) or p.read_bytes()[:4] == b"PK\x03\x04")]  # volumes, zip archives
    assert not left, left
