"""Checkpoints: the one loader of the bundle configs, the export, the MONAI Label app and the benchmarks.

A checkpoint is a network ``state_dict`` saved with ``torch.save``, plain or wrapped as ``{"model": ...}`` /
``{"state_dict": ...}`` (MONAI's ``CheckpointSaver``). Loading maps tensors to ``map_location`` (CPU by
default), so a GPU-trained model runs on a CPU-only machine.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

__all__ = ["load_state_dict", "load_checkpoint"]


def load_state_dict(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """The network ``state_dict`` stored in ``path``; ``FileNotFoundError`` / ``ValueError`` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # pickle, zip and torch errors of a file that is not a checkpoint
        raise ValueError(f"checkpoint {path} cannot be read: {type(e).__name__}: {str(e)[:200]}") from e
    for key in ("model", "state_dict"):
        if isinstance(ckpt, dict) and isinstance(ckpt.get(key), dict):
            ckpt = ckpt[key]
    if not isinstance(ckpt, dict) or not all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        raise ValueError(f"checkpoint {path}: not a state_dict (a mapping of parameter names to tensors)")
    return ckpt


def load_checkpoint(network: nn.Module, path: str | Path, strict: bool = True,
                    map_location: str | torch.device = "cpu") -> nn.Module:
    """Load ``path`` into ``network`` and return it; ``ValueError`` naming the file on a mismatch.

    ``strict`` (default): every tensor of the network and of the file must correspond, with equal shapes.
    ``strict=False`` initialises a quantized network from its float twin (quantization-aware training): the
    quantizer state (scales, bit widths) that a float checkpoint lacks keeps its initialisation, but every
    tensor of the file must still fit the network. Brevitas accepts scale tensors a fresh network has not
    created yet (they appear after its first training steps), so ``load_state_dict`` itself is the judge.
    """
    state = load_state_dict(path, map_location)
    own = network.state_dict()
    config = {k: getattr(network, k) for k in ("in_channels", "channels", "quantization") if hasattr(network, k)}
    prefix = f"checkpoint {path} does not match the network {type(network).__name__} {config}"
    shapes = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in state.items()
              if k in own and v.shape != own[k].shape]
    if shapes:
        raise ValueError(f"{prefix}: {len(shapes)} shape mismatch(es), e.g. {'; '.join(shapes[:3])} "
                         "(check the config's channels, and in_channels: the bundle's context_slices)")
    try:
        result = network.load_state_dict(state, strict=strict)
    except RuntimeError as e:
        detail = str(e) if len(str(e)) < 800 else str(e)[:800] + " ..."
        raise ValueError(f"{prefix} (check the config's quantization): {detail}") from e
    if result.unexpected_keys:
        raise ValueError(f"{prefix}: unknown keys {result.unexpected_keys[:5]}")
    return network
