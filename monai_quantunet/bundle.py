"""Helpers the bundle configs call: locating the bundle folder and preparing its default data."""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["BUNDLE_NAME", "find_bundle_root", "ensure_default_dataset"]

BUNDLE_NAME = "quantunet_brain_tumor_seg"


def _is_bundle(path: Path, name: str) -> bool:
    meta = path / "configs" / "metadata.json"
    return meta.is_file() and json.loads(meta.read_text()).get("name") == name


def find_bundle_root(name: str = BUNDLE_NAME) -> str:
    """The bundle folder: the working directory when run from inside the bundle (model-zoo convention), or
    ``./bundles/<name>`` below it. Override with ``--bundle_root`` on the command line."""
    cwd = Path.cwd()
    for candidate in (cwd, cwd / "bundles" / name):
        if _is_bundle(candidate, name):
            return str(candidate)
    raise FileNotFoundError(f"bundle {name!r} not found from {cwd}; pass --bundle_root <folder of the bundle>")


def ensure_default_dataset(dataset_dir: str, default_dir: str, num_cases: int = 12) -> None:
    """Generate synthetic volumes into ``default_dir`` when the bundle runs on its default data and it is
    absent (a fresh clone trains with no download). Any other ``dataset_dir`` must already exist."""
    from monai_quantunet.data import make_synthetic_dataset

    if Path(dataset_dir).resolve() == Path(default_dir).resolve():
        if not (Path(default_dir) / "dataset.json").is_file():
            make_synthetic_dataset(default_dir, num_cases=num_cases, shape=(96, 96, 16))
    elif not Path(dataset_dir).is_dir():
        raise FileNotFoundError(f"dataset_dir {dataset_dir} does not exist")
