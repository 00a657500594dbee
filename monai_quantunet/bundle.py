"""The bundle as a source of truth: its folder, its default data, its network definition and training settings.

``network_from_bundle`` builds the network of ``configs/inference.json`` (the one network definition;
``train.json`` and ``export.json`` are tested to agree with it); ``bundle_settings`` reads the training
settings of ``configs/train.json``. Both serve the MONAI Label app, the export CLI and the benchmarks.
"""

from __future__ import annotations

from pathlib import Path

import torch.nn as nn

__all__ = ["BUNDLE_NAME", "INTERACTIVE_BUNDLE_NAME", "checkout_bundle", "find_bundle_root", "ensure_default_dataset",
           "bundle_settings", "network_from_config", "network_from_bundle"]

BUNDLE_NAME = "quantunet_brain_tumor_seg"  # the segmentation bundle
INTERACTIVE_BUNDLE_NAME = "quantunet_interactive_tumor_seg"  # the click-refinement bundle
BUNDLES_FOLDER = "bundles"


def checkout_bundle(name: str = BUNDLE_NAME, checkout: str | Path | None = None) -> Path:
    """``<checkout>/bundles/<name>``: a bundle in a source checkout (default: the checkout that holds this
    package), where the MONAI Label app, the benchmarks and the tests find the bundles."""
    root = Path(checkout) if checkout is not None else Path(__file__).resolve().parents[1]
    return root / BUNDLES_FOLDER / name


def _is_bundle(path: Path, name: str) -> bool:
    """``path`` is the bundle folder ``name`` (the bundle's id: its folder name; ``metadata.json``'s ``name`` is
    the display name)."""
    return path.name == name and (path / "configs" / "metadata.json").is_file()


def find_bundle_root(name: str = BUNDLE_NAME) -> str:
    """The bundle folder: the working directory when run from inside the bundle (model-zoo convention), or
    ``./bundles/<name>`` below it. Override with ``--bundle_root`` on the command line."""
    cwd = Path.cwd()
    for candidate in (cwd, checkout_bundle(name, cwd)):
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


def _parser(config: str, bundle_root: str | Path | None = None):
    from monai.bundle import ConfigParser

    root = Path(bundle_root) if bundle_root else Path(find_bundle_root())
    parser = ConfigParser()
    parser.read_config(str(root / "configs" / config))
    parser["bundle_root"] = str(root)
    parser["device"] = "$torch.device('cpu')"
    return parser


def bundle_settings(bundle_root: str | Path | None = None) -> dict:
    """``spatial_size``, ``context_slices`` (2.5D input: the slices each prediction sees, 1 if the bundle does not
    define it), ``channels``, ``quantization``, bit widths, ``lambda_bits``, learning rates and the slice sampler's
    ``tumor_fraction`` of the bundle's ``train.json`` (those it defines)."""
    p = _parser("train.json", bundle_root)
    keys = ("spatial_size", "context_slices", "channels", "quantization", "bit_width", "min_bit_width",
            "max_bit_width", "lambda_bits", "bit_reduction", "learning_rate", "bit_learning_rate", "tumor_fraction")
    return {"context_slices": 1, **{k: p.get_parsed_content(k) for k in keys if k in p.get()}}


def network_from_config(config_file: str | Path, **overrides) -> tuple[nn.Module, object]:
    """``(network, parser)``: a new instance of ``network_def`` of a bundle config file (``bundle_root`` = the
    config's bundle, two folders up); ``overrides`` replace its arguments (e.g. ``in_channels``)."""
    config_file = Path(config_file)
    if not config_file.is_file():
        raise FileNotFoundError(f"config file {config_file} not found")
    p = _parser(config_file.name, config_file.resolve().parent.parent)
    if "network_def" not in p.get():
        raise ValueError(f"{config_file}: no 'network_def' key")
    for k, v in overrides.items():
        p[f"network_def#{k}"] = v
    return p.get_parsed_content("network_def", instantiate=True), p


def network_from_bundle(bundle_root: str | Path | None = None, **overrides) -> nn.Module:
    """A new instance of the bundle's ``network_def`` (``inference.json``; its ``in_channels`` is the bundle's
    ``context_slices``); ``overrides`` replace its arguments (e.g. ``in_channels``)."""
    root = Path(bundle_root) if bundle_root else Path(find_bundle_root())
    return network_from_config(root / "configs" / "inference.json", **overrides)[0]