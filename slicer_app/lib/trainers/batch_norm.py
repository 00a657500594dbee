"""Fine-tuning on a few volumes keeps the BatchNorm layers as trained."""

from __future__ import annotations

import logging

import torch
from torch.utils.hooks import RemovableHandle

__all__ = ["keep_batch_norm_frozen"]

logger = logging.getLogger(__name__)


def keep_batch_norm_frozen(net: torch.nn.Module) -> RemovableHandle:
    """Keep every BatchNorm layer of ``net`` as trained: running statistics fixed (the layer stays in eval mode
    even when the trainer calls ``net.train()``, through a forward pre-hook) and affine parameters not trained.
    A few volumes' slice statistics would otherwise replace the ones learned on the whole training set. Returns the
    hook's handle (``handle.remove()`` lets the layers follow ``net.train()`` again; their parameters stay frozen
    until ``requires_grad_(True)``)."""
    norms = [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        for p in m.parameters():
            p.requires_grad_(False)

    def to_eval(module, args):
        for m in norms:
            m.eval()

    logger.info(f"BatchNorm statistics and affine parameters frozen ({len(norms)} layers)")
    return net.register_forward_pre_hook(to_eval)

