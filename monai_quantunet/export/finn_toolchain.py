"""Run a FINN build folder's ``build.py`` with a FINN toolchain: FINN's sources and a Python that imports them.

FINN needs other pins than this package (onnx 1.17, bitstring 4, qonnx from its own commit), so it runs in a
process of its own. A toolchain folder holds ``finn/`` (``FINN_ROOT``, qonnx in ``finn/deps/qonnx``) and
``venv/`` (a Python with FINN on its path), and optionally ``hls/``: open-source HLS headers for FINN's cppsim
(``HLS_PATH``), as ``scripts/install_finn.sh`` makes it; found from an explicit folder or the ``FINN_TOOLCHAIN``
environment variable.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["FinnBuildError", "FinnToolchain", "TOOLCHAIN_ENV"]

TOOLCHAIN_ENV = "FINN_TOOLCHAIN"


class FinnBuildError(RuntimeError):
    """A FINN build failed; the message holds the failed step and the reason from ``build_status.json``."""


@dataclass(frozen=True)
class FinnToolchain:
    """A FINN checkout (``finn_root``) and the Python that runs it."""

    finn_root: Path
    python: Path
    hls_path: Path | None = None  # open-source HLS headers: cppsim without Vitis

    @classmethod
    def from_folder(cls, folder: str | Path) -> FinnToolchain:
        """The toolchain in ``folder`` (``finn/``, ``venv/``); ``FileNotFoundError`` naming what is missing."""
        folder = Path(folder).expanduser().resolve()
        hls = folder / "hls"
        toolchain = cls(folder / "finn", folder / "venv" / "bin" / "python",
                        hls if (hls / "installed").is_file() else None)
        for path in (toolchain.finn_root / "src" / "finn" / "builder", toolchain.python):
            if not path.exists():
                raise FileNotFoundError(f"FINN toolchain {folder}: {path} is missing (make it with "
                                        "`bash scripts/install_finn.sh`)")
        return toolchain

    @classmethod
    def find(cls, folder: str | Path | None = None) -> FinnToolchain | None:
        """``folder``, else ``$FINN_TOOLCHAIN``; ``None`` when neither is given."""
        folder = folder or os.environ.get(TOOLCHAIN_ENV)
        return cls.from_folder(folder) if folder else None

    def environment(self) -> dict[str, str]:
        """``FINN_ROOT``, and with the open HLS headers ``HLS_PATH`` plus the ``XILINX_VIVADO`` whose version FINN's
        cppsim compile parses (any path naming a release before 2024.2 makes it use ``HLS_PATH``; no Vivado runs)."""
        env = {"FINN_ROOT": str(self.finn_root)}
        if self.hls_path:
            env.update(HLS_PATH=str(self.hls_path), XILINX_VIVADO=str(self.hls_path / "no-vivado-2022.2"))
        return env

    def run_build(self, finn_dir: str | Path, steps_until: str | None = "step_hw_codegen",
                  log: Callable[[str], None] | None = print, timeout: float | None = None) -> dict:
        """Run ``build.py`` of ``finn_dir`` up to ``steps_until`` (``None``: every step; Vivado from
        ``step_hw_ipgen`` on); FINN's progress lines go to ``log``. Returns ``output/build_status.json``;
        raises :class:`FinnBuildError` if the build fails."""
        finn_dir = Path(finn_dir).resolve()
        if not (finn_dir / "build.py").is_file():
            raise FileNotFoundError(f"{finn_dir} is not a FINN build folder (no build.py)")
        cmd = [str(self.python), "build.py"] + (["--steps-until", steps_until] if steps_until else [])
        env = {**os.environ, **self.environment(), "PYTHONUNBUFFERED": "1"}
        with subprocess.Popen(cmd, cwd=finn_dir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) as proc:
            lines = []
            for line in proc.stdout:
                lines.append(line.rstrip())
                if log and line.startswith(("Running step", "folded graph", "build.py")):
                    log(f"FINN: {line.rstrip()}")
            rc = proc.wait(timeout)
        status_path = finn_dir / json.loads((finn_dir / "dataflow_build_config.json").read_text())["output_dir"] \
            / "build_status.json"
        status = json.loads(status_path.read_text()) if status_path.is_file() else {"status": "failed"}
        if rc != 0 or status.get("status") != "ok":
            reason = status.get("error") or "\n".join(lines[-15:])
            raise FinnBuildError(f"FINN build of {finn_dir} failed (exit {rc}) in {status.get('step', '?')}: {reason}")
        return status
