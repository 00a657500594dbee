"""Size limits of what a client may send (``--conf max_voxels``, ``max_upload_bytes``, ``max_clicks``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

__all__ = ["Limits"]


@dataclass(frozen=True)
class Limits:
    """Size limits, from ``--conf`` (defaults fit a 256 x 256 x 200 volume and an annotator's session)."""

    max_voxels: int = 256 * 256 * 256
    max_upload_bytes: int = 128 * 1024 * 1024
    max_clicks: int = 256

    @classmethod
    def from_conf(cls, conf: Mapping[str, str]) -> "Limits":
        values = {}
        for key in ("max_voxels", "max_upload_bytes", "max_clicks"):
            raw = conf.get(key)
            if raw is None or raw == "":
                continue
            try:
                value = int(float(raw))
            except ValueError:
                raise ValueError(f"--conf {key}: expected a positive integer, got {raw!r}") from None
            if value < 1:
                raise ValueError(f"--conf {key}: expected a positive integer, got {raw!r}")
            values[key] = value
        return cls(**values)
