"""Crash safety: the server's process group is killed (SIGKILL) at a random moment while clients save labels,
upload and delete images; the server must restart on the same studies folder with every acknowledged write intact
and no write half-visible.

Default run: 2 rounds; ``-m slow``: 50 rounds (``QUANTUNET_CRASH_ROUNDS`` overrides both).
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import requests

SimpleITK = pytest.importorskip("SimpleITK")
pytest.importorskip("monailabel")
from slicer_server import DIRECTION, SHAPE, Server, make_studies, synthetic_case, write_volume  # noqa: E402


def _label_versions(folder: Path, n: int) -> list:
    """``n`` different valid labels for the test volumes (a box that moves)."""
    paths = []
    for v in range(n):
        mask = np.zeros(SHAPE[::-1], np.uint8)
        mask[2 + v % 4: 5 + v % 4, 10 + v: 20 + v, 15: 30] = 1
        path = folder / f"label_v{v}.nii.gz"
        write_volume(path, mask, direction=DIRECTION)
        paths.append(path)
    return paths


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Workload:
    """Label saves for ``case0`` (labeled) and ``case2`` (not yet), uploads of new images and deletes of them,
    from two threads until the server dies. Records what the server acknowledged (200); a request in flight when
    the server died may or may not have taken effect, but never half."""

    def __init__(self, url: str, folder: Path, round_id: int, rng: random.Random):
        self.url, self.folder, self.round_id, self.rng = url, folder, round_id, rng
        self.labels = _label_versions(folder, 6)
        self.acked_labels: dict = {}  # image id -> digest of the last acknowledged upload
        self.sent_labels: dict = {}  # image id -> digests of every upload sent (acknowledged or not)
        self.acked_images: set = set()
        self.deleted_images: set = set()
        self.label_saves = 0
        self.stop = threading.Event()

    def _labels_loop(self):
        i = 0
        while not self.stop.is_set():
            image_id = ("case0", "case2")[i % 2]
            path = self.labels[self.rng.randrange(len(self.labels))]
            data = path.read_bytes()
            self.sent_labels.setdefault(image_id, set()).add(_digest(data))
            try:
                r = requests.put(f"{self.url}/datastore/label", params={"image": image_id, "tag": "final"},
                                 files={"label": (f"{image_id}.nii.gz", data)}, timeout=30)
            except requests.RequestException:
                return
            assert r.status_code == 200, r.text
            self.acked_labels[image_id] = _digest(data)
            self.label_saves += 1
            i += 1

    def _images_loop(self):
        j = 0
        while not self.stop.is_set():
            image_id = f"up{self.round_id}_{j}"
            image, _ = synthetic_case(100 + j)
            path = self.folder / f"{image_id}.nii.gz"
            write_volume(path, image, direction=DIRECTION)
            try:
                r = requests.put(f"{self.url}/datastore/image", params={"image": image_id},
                                 files={"file": (path.name, path.read_bytes())}, timeout=30)
                assert r.status_code == 200, r.text
                self.acked_images.add(image_id)
                if j % 3 == 2:  # delete every third one again (in flight: either outcome is right)
                    self.acked_images.discard(image_id)
                    r = requests.delete(f"{self.url}/datastore/image", params={"id": image_id}, timeout=30)
                    assert r.status_code == 200, r.text
                    self.deleted_images.add(image_id)
            except requests.RequestException:
                return
            j += 1

    def run_until_killed(self, server: Server, delay: float) -> None:
        threads = [threading.Thread(target=self._labels_loop), threading.Thread(target=self._images_loop)]
        for t in threads:
            t.start()
        time.sleep(delay)
        os.killpg(server.proc.pid, signal.SIGKILL)
        server.proc.wait(30)
        self.stop.set()
        for t in threads:
            t.join(60)


def _check_after_restart(url: str, studies: Path, work: Workload) -> None:
    store = requests.get(f"{url}/datastore/", params={"output": "all"}, timeout=60)
    assert store.status_code == 200, store.text
    objects = store.json()["objects"]
    for image_id in work.deleted_images:
        assert image_id not in objects, f"acknowledged delete of {image_id} undone"
    for image_id in work.acked_images:
        assert image_id in objects, f"acknowledged upload {image_id} lost"
        assert requests.post(f"{url}/infer/segmentation", params={"image": image_id}, timeout=120).status_code == 200
    for image_id, acked in work.acked_labels.items():
        r = requests.get(f"{url}/datastore/label", params={"label": image_id, "tag": "final"}, timeout=60)
        assert r.status_code == 200, f"acknowledged label of {image_id} lost: {r.text}"
        # the last acknowledged version, or the one in flight when the server died: never a partial file
        assert _digest(r.content) in work.sent_labels[image_id], f"label of {image_id} is none of the uploads"
        assert (studies / "labels" / "final" / f"{image_id}.nii.gz").read_bytes() == r.content
    leftovers = [p for p in studies.rglob(".quantunet-tmp-*")]
    assert not leftovers, f"temporary files left after restart: {leftovers}"


def _rounds(default: int) -> int:
    return int(os.environ.get("QUANTUNET_CRASH_ROUNDS", default))


def _crash_rounds(tmp_path: Path, rounds: int, seed: int) -> dict:
    """Kill, restart, check ``rounds`` times; returns the totals (printed: ``pytest -s`` shows them)."""
    rng = random.Random(seed)
    studies = make_studies(tmp_path, n=3, labeled=1)
    folder = tmp_path / "client"
    folder.mkdir()
    totals = {"rounds": 0, "acknowledged_label_saves": 0, "acknowledged_uploads": 0, "deletes": 0, "restart_s": []}
    server = Server(studies, tmp_path / "server", {"preload": "false", "skip_trainers": "true"}).start()
    try:
        for round_id in range(rounds):
            work = Workload(server.url, folder, round_id, rng)
            work.run_until_killed(server, rng.uniform(0.3, 2.5))
            start = time.time()
            server = Server(studies, tmp_path / "server", {"preload": "false", "skip_trainers": "true"}).start()
            totals["restart_s"].append(round(time.time() - start, 1))
            _check_after_restart(server.url, studies, work)
            totals["rounds"] += 1
            totals["acknowledged_label_saves"] += work.label_saves
            totals["acknowledged_uploads"] += len(work.acked_images) + len(work.deleted_images)
            totals["deletes"] += len(work.deleted_images)
    finally:
        server.stop()
    print(f"crash rounds: {totals}")
    return totals


def test_kill_during_saves_uploads_deletes(tmp_path):
    assert _crash_rounds(tmp_path, _rounds(2), seed=0)["acknowledged_label_saves"] > 0


@pytest.mark.slow
def test_kill_during_saves_uploads_deletes_many_rounds(tmp_path):
    _crash_rounds(tmp_path, _rounds(50), seed=1)


def test_unreadable_or_linked_index_is_rebuilt(tmp_path):
    """An empty, truncated or linked ``datastore_v2.json`` (what a kill during MONAI Label's own write left):
    the server starts, rebuilds the index from the folder with every image and final label, and writes no file
    outside the studies folder."""
    studies = make_studies(tmp_path, n=3, labeled=2)
    index = studies / "datastore_v2.json"
    outside = tmp_path / "outside.json"
    for content in (b"", b'{"name": "new-dataset", "objects": {"case0": {"ima', None):
        if index.exists() or index.is_symlink():
            index.unlink()
        if content is None:
            os.symlink(outside, index)  # a link to a missing file outside the folder
        else:
            index.write_bytes(content)
        server = Server(studies, tmp_path / "server", {"preload": "false", "skip_trainers": "true"}).start()
        try:
            objects = requests.get(f"{server.url}/datastore/", params={"output": "all"}, timeout=60).json()["objects"]
            assert set(objects) >= {"case0", "case1", "case2"}
            assert set(objects["case0"]["labels"]) == {"final"} and set(objects["case1"]["labels"]) == {"final"}
        finally:
            server.stop()
        assert not outside.exists() and not index.is_symlink()
