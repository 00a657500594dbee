"""Checkpoints: the one loader of the bundle configs, the export, the MONAI Label app and the benchmarks.

A checkpoint is a network ``state_dict`` saved with ``torch.save``, plain or wrapped as ``{"model": ...}`` /
``{"state_dict": ...}`` (MONAI's ``CheckpointSaver``), or the compact form :func:`save_compact` writes: every
quantized weight as its integers packed at its bit width plus its scale, the rest of the state (BatchNorm,
activation scales, bit-width parameters, biases) as saved. A QuantUNet loaded from the compact form computes
bit-identical outputs (its fake quantization maps ``integers * scale`` back to the same integers), in about a
seventh of the bytes. Loading maps tensors to ``map_location`` (CPU by default), so a GPU-trained model runs on a
CPU-only machine.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from monai.networks import eval_mode

__all__ = ["load_state_dict", "load_checkpoint", "save_compact", "COMPACT_FORMAT"]

COMPACT_FORMAT = "monai_quantunet.compact/1"


def _pack(values: torch.Tensor, bits: int) -> torch.Tensor:
    """Signed integers in ``[-2^(bits-1), 2^(bits-1))`` -> ``bits`` bits each, packed into uint8 bytes."""
    offset = values.to(torch.int16).flatten().numpy() + (1 << (bits - 1))
    bit_planes = np.unpackbits(offset.astype(np.uint8)[:, None], axis=1)[:, 8 - bits:]
    return torch.from_numpy(np.packbits(bit_planes.reshape(-1)))


def _unpack(data: torch.Tensor, bits: int, shape: list[int]) -> torch.Tensor:
    count = int(np.prod(shape))
    bit_planes = np.unpackbits(data.numpy())[: count * bits].reshape(count, bits)
    offset = np.packbits(np.pad(bit_planes, ((0, 0), (8 - bits, 0))), axis=1)[:, 0].astype(np.int16)
    return torch.from_numpy(offset - (1 << (bits - 1))).reshape(shape)


def save_compact(network: nn.Module, path: str | Path, float_weights: torch.dtype = torch.float32) -> Path:
    """Write ``network`` to ``path`` in the compact form (see the module docstring); returns the path.

    Every module with a Brevitas weight quantizer stores ``quant_weight()``'s integers at its bit width and its
    scale; ``float_weights`` (e.g. ``torch.float16`` for a float twin) is the dtype of unquantized conv weights,
    restored as float32 on loading (fp16 is not bit-identical)."""
    state = {k: v.detach().clone() for k, v in network.state_dict().items()}
    packed = {}
    with eval_mode(network):
        for name, module in network.named_modules():
            if not callable(getattr(module, "quant_weight", None)) or not getattr(getattr(module, "weight_quant", None), "is_quant_enabled", False):
                if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)) and f"{name}.weight" in state:
                    state[f"{name}.weight"] = state[f"{name}.weight"].to(float_weights)
                continue
            quant = module.quant_weight()
            bits = int(quant.bit_width)
            packed[f"{name}.weight"] = {"bits": bits, "shape": list(quant.int().shape),
                                        "data": _pack(quant.int(), bits), "scale": quant.scale.detach().float().clone()}
            del state[f"{name}.weight"]
    path = Path(path)
    torch.save({"format": COMPACT_FORMAT, "packed_weights": packed, "state": state}, path)
    return path


def _from_compact(ckpt: dict, path: Path) -> dict[str, torch.Tensor]:
    state = {k: v.float() if v.dtype == torch.float16 else v for k, v in ckpt["state"].items()}
    for name, p in ckpt["packed_weights"].items():
        if not 2 <= p["bits"] <= 8 or p["data"].numel() * 8 < int(np.prod(p["shape"])) * p["bits"]:
            raise ValueError(f"checkpoint {path}: packed weight {name} is damaged ({p['bits']} bits, shape {p['shape']})")
        state[name] = _unpack(p["data"], p["bits"], p["shape"]).float() * p["scale"]
    return state


def load_state_dict(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """The network ``state_dict`` stored in ``path``; ``FileNotFoundError`` / ``ValueError`` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # pickle, zip and torch errors of a file that is not a checkpoint
        raise ValueError(f"checkpoint {path} cannot be read: {type(e).__name__}: {str(e)[:200]}") from e
    if isinstance(ckpt, dict) and ckpt.get("format") == COMPACT_FORMAT:
        ckpt = _from_compact(ckpt, path)
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
