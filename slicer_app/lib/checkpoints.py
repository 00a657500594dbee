"""The app's checkpoint policy: of the configured paths (shipped, then published by training) the last existing one
is served and trained from; a missing or mismatching checkpoint never stops the server."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Optional, Sequence

import torch.nn as nn

from monai_quantunet.checkpoint import load_checkpoint

logger = logging.getLogger(__name__)


def served_checkpoint(paths: Sequence[str | Path | None]) -> Optional[str]:
    """The checkpoint in use: the last existing file of ``paths`` (a trained, published one after the shipped one;
    MONAI Label's ``BasicInferTask.get_path`` picks the same), or ``None``."""
    existing = [str(p) for p in paths if p and os.path.isfile(p)]
    return existing[-1] if existing else None


def load_checkpoint_or_warn(network: nn.Module, path: str | Path | None, what: str = "model") -> bool:
    """Load ``path`` into ``network`` with the library's loader (strict, CPU). On a missing or mismatching file,
    log a clear warning, keep the initial weights and return False."""
    if not path:
        logger.warning(f"{what}: no checkpoint configured; serving INITIAL (untrained) weights")
        return False
    try:
        load_checkpoint(network, path)
    except FileNotFoundError:
        logger.warning(f"{what}: checkpoint {path} not found; serving INITIAL (untrained) weights until one is trained")
        return False
    except ValueError as e:
        logger.warning(f"{what}: {str(e)[:300]}; serving INITIAL (untrained) weights")
        return False
    logger.info(f"{what}: loaded checkpoint {path}")
    return True
