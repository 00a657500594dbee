"""A real `monailabel start_server --app slicer_app` for tests: free 127.0.0.1 port, temporary studies folder,
stopped by its own process group id; synthetic FLAIR-like volumes with known geometry.

Shared by tests/test_slicer_app.py and tests/test_slicer_app_adversarial.py.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import requests
import SimpleITK

from conftest import REPO

VENV_BIN = Path(sys.executable).parent
SHAPE = (64, 48, 8)  # IJK


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_volume(path: Path, array_zyx: np.ndarray, spacing=(0.9, 1.1, 4.0), origin=(-20.0, 10.0, 5.0), direction=None):
    img = SimpleITK.GetImageFromArray(array_zyx)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    if direction is not None:
        img.SetDirection(direction)
    SimpleITK.WriteImage(img, str(path))


def synthetic_case(seed: int):
    """(image, label) as (Z, Y, X) arrays with a bright ellipsoid tumor."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.arange(s, dtype=np.float32) for s in SHAPE[::-1]], indexing="ij")
    c = np.array([SHAPE[0] / 2 + rng.uniform(-6, 6), SHAPE[1] / 2 + rng.uniform(-5, 5), SHAPE[2] / 2])
    tumor = ((x - c[0]) / 8) ** 2 + ((y - c[1]) / 6) ** 2 + ((z - c[2]) / 2.5) ** 2 < 1
    image = 60 + 10 * np.sin(x / 5) + rng.normal(0, 4, tumor.shape)
    image[tumor] += 80
    return np.clip(image, 0, 255).astype(np.int16), tumor.astype(np.uint8)


# oblique-free but non-trivial geometry: axes flipped (LPS-like, as Slicer stores many volumes)
DIRECTION = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)


def make_studies(root: Path, n: int = 4, labeled: int = 2) -> Path:
    studies = root / "studies"
    (studies / "labels" / "final").mkdir(parents=True)
    for i in range(n):
        image, label = synthetic_case(i)
        write_volume(studies / f"case{i}.nii.gz", image, direction=DIRECTION)
        if i < labeled:
            write_volume(studies / "labels" / "final" / f"case{i}.nii.gz", label, direction=DIRECTION)
    return studies


class Server:
    def __init__(self, studies: Path, workdir: Path, conf: dict | None = None):
        self.studies, self.workdir = studies, workdir
        self.conf = {"model_dir": str(workdir / "model"), **(conf or {})}
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = None
        self.log = workdir / f"server_{self.port}.log"

    def start(self, timeout: float = 240) -> "Server":
        env = dict(os.environ)
        env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
        env["MONAILABEL_PYEXE"] = sys.executable
        env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        for k, sub in (("MONAI_LABEL_SESSION_PATH", "sessions"), ("XDG_CACHE_HOME", "cache"), ("MPLCONFIGDIR", "mpl"),
                       ("TMPDIR", "tmp")):
            env[k] = str(self.workdir / sub)
        (self.workdir / "tmp").mkdir(parents=True, exist_ok=True)  # the server's temporary files, to be checked
        env["MONAI_LABEL_AUTO_UPDATE_SCORING"] = "false"
        env["OMP_NUM_THREADS"] = "2"
        # `monailabel start_server` is a bash launcher for `python -m monailabel.main`; it prepends the venv's
        # grandparent folder to PYTHONPATH (the repository holding .venv), which is not this checkout when the
        # venv is shared: run the module directly with this interpreter instead.
        cmd = [sys.executable, "-m", "monailabel.main", "start_server", "--app", str(REPO / "slicer_app"), "--studies", str(self.studies),
               "--host", "127.0.0.1", "--port", str(self.port)]
        for k, v in self.conf.items():
            cmd += ["--conf", k, str(v)]
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._logf = open(self.log, "ab")
        self.proc = subprocess.Popen(cmd, env=env, stdout=self._logf, stderr=subprocess.STDOUT, start_new_session=True,
                                     cwd=str(self.workdir))
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited ({self.proc.returncode}):\n{self.tail()}")
            try:
                if requests.get(self.url + "/", timeout=2).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(1)
        self.stop()
        raise RuntimeError(f"server did not answer within {timeout} s:\n{self.tail()}")

    def tail(self, n: int = 60) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:]) if self.log.exists() else ""

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        if getattr(self, "_logf", None):
            self._logf.close()
