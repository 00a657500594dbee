"""``python -m monai_quantunet compact-checkpoint``: rewrite a checkpoint in the compact form (integer weights at
their bit widths plus scales, :func:`monai_quantunet.checkpoint.save_compact`), checked to give the same logits."""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["add_arguments", "main"]


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    parser.add_argument("checkpoint", help="checkpoint (.pt) to rewrite")
    parser.add_argument("out", help="compact checkpoint to write")
    parser.add_argument("--bundle-root", "--bundle_root", dest="bundle_root", default=None,
                        help="bundle whose network_def the checkpoint fits (default: the bundle holding the checkpoint)")
    parser.add_argument("--quantization", choices=["learned", "fixed", "float"], default=None,
                        help="network_def's quantization for this checkpoint (default: the bundle's)")
    parser.add_argument("--half-float-weights", action="store_true",
                        help="store unquantized conv weights (a float twin) as float16 (not bit-identical)")


def main(args: argparse.Namespace) -> int:
    import torch

    from monai_quantunet.bundle import network_from_bundle
    from monai_quantunet.checkpoint import load_checkpoint, save_compact

    bundle = args.bundle_root or str(Path(args.checkpoint).resolve().parent.parent)  # <bundle>/models/<file>
    overrides = {} if args.quantization is None else {"quantization": args.quantization}
    network = load_checkpoint(network_from_bundle(bundle, **overrides), args.checkpoint).eval()
    out = save_compact(network, args.out, torch.float16 if args.half_float_weights else torch.float32)
    reloaded = load_checkpoint(network_from_bundle(bundle, **overrides), out).eval()
    example = torch.randn(4, network.in_channels, 128, 128, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        difference = float((network(example) - reloaded(example)).abs().max())
    if difference and not args.half_float_weights:
        raise ValueError(f"{out}: the compact checkpoint's logits differ by {difference:.3g} from {args.checkpoint}")
    size = Path(args.checkpoint).stat().st_size, out.stat().st_size
    print(f"{out}: {size[1]} bytes ({size[0] / size[1]:.1f}x smaller than {args.checkpoint}); "
          f"max logit difference {difference:.3g}")
    return 0
