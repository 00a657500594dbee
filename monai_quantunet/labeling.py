"""Pieces the MONAI Label app (``slicer_app/``) wires: network from the bundle config, safe checkpoint
loading, atomic file copies, least-confidence scoring, and a plain validation-Dice loop.

Kept here (not in the app) so they are tested as library code and reused by scripts.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from monai_quantunet.bundle import find_bundle_root

__all__ = [
    "bundle_settings",
    "network_from_bundle",
    "load_checkpoint_or_warn",
    "atomic_copy",
    "least_confidence_score",
    "mean_dice",
]

logger = logging.getLogger(__name__)


def _parser(bundle_root: str | Path | None = None):
    from monai.bundle import ConfigParser

    root = Path(bundle_root) if bundle_root else Path(find_bundle_root())
    parser = ConfigParser()
    parser.read_config(str(root / "configs" / "train.json"))
    parser["bundle_root"] = str(root)
    parser["device"] = "$torch.device('cpu')"
    return parser


def bundle_settings(bundle_root: str | Path | None = None) -> dict:
    """``spatial_size``, ``channels``, ``quantization``, bit widths, ``lambda_bits`` and learning rates from the
    bundle's ``train.json`` (one source of truth for the network settings)."""
    p = _parser(bundle_root)
    keys = ("spatial_size", "channels", "quantization", "bit_width", "min_bit_width", "max_bit_width",
            "lambda_bits", "bit_reduction", "learning_rate", "bit_learning_rate")
    return {k: p.get_parsed_content(k) for k in keys}


def network_from_bundle(bundle_root: str | Path | None = None, **overrides) -> nn.Module:
    """Instantiate the bundle's ``network_def`` (e.g. ``in_channels=3`` for the interactive model)."""
    p = _parser(bundle_root)
    for k, v in overrides.items():
        p[f"network_def#{k}"] = v
    return p.get_parsed_content("network_def", instantiate=True)


def load_checkpoint_or_warn(network: nn.Module, path: str | Path | None, what: str = "model") -> bool:
    """Load a state_dict into ``network`` (CPU map_location, strict). On a missing or mismatching file, log a
    clear warning, keep the initial weights and return False."""
    from monai_quantunet.inference import load_state_dict

    if not path:
        logger.warning(f"{what}: no checkpoint configured; serving INITIAL (untrained) weights")
        return False
    path = Path(path)
    if not path.is_file():
        logger.warning(f"{what}: checkpoint {path} not found; serving INITIAL (untrained) weights until one is trained")
        return False
    try:
        state = load_state_dict(path, map_location="cpu")
        network.load_state_dict(state, strict=True)
    except (RuntimeError, ValueError, OSError) as e:
        first = str(e).strip().splitlines()
        logger.warning(
            f"{what}: checkpoint {path} does not fit the network from the bundle's network_def "
            f"({first[0] if first else e}...); serving INITIAL (untrained) weights"
        )
        return False
    logger.info(f"{what}: loaded checkpoint {path}")
    return True


def atomic_copy(src: str | Path, dst: str | Path) -> None:
    """Copy ``src`` to ``dst`` through a temporary file in the same folder and ``os.replace`` (a reader never
    sees a half-written checkpoint)."""
    import os

    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=dst.parent, prefix=f".{dst.name}.", delete=False) as tmp:
        tmp_path = tmp.name
    try:
        shutil.copyfile(src, tmp_path)
        os.chmod(tmp_path, 0o644)  # a temporary file is private (0600); the result is an ordinary file
        os.replace(tmp_path, dst)
    finally:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)


def least_confidence_score(logits: torch.Tensor, region_threshold: float = 0.25) -> float:
    """Uncertainty in [0, 1] of a binary prediction: ``1 - mean |2 sigmoid - 1|`` over the voxels with
    probability above ``region_threshold`` (predicted or nearly predicted tumor). 0 when no such voxel
    (the model is confident that the volume is tumor-free). High = ask a human first."""
    prob = torch.sigmoid(torch.as_tensor(logits).float())
    region = prob > region_threshold
    if not bool(region.any()):
        return 0.0
    return float(1.0 - (2 * prob[region] - 1).abs().mean())


@torch.no_grad()
def mean_dice(network: nn.Module, data_loader, inferer, device: str | torch.device = "cpu") -> float:
    """Mean per-volume Dice (logit > 0 vs label) of ``network`` over ``data_loader`` (batches with ``image``,
    ``label``). Both empty counts as 1. Restores the network's train/eval mode."""
    from monai_quantunet.metrics import volume_metrics

    was_training = network.training
    network.eval()
    scores = []
    for batch in data_loader:
        images = batch["image"].to(device)
        labels = batch["label"].to(device)
        logits = inferer(images, network)
        for p, g in zip(logits > 0, labels > 0):
            scores.append(volume_metrics(p, g)["dice"])
    network.train(was_training)
    return float(np.mean(scores)) if scores else float("nan")
