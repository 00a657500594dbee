"""Command line: ``python -m monai_quantunet <command>`` (also installed as ``monai-quantunet``).

One module of this package per group of commands, each exposing ``add_arguments(parser, command)`` and
``main(args)`` (``args.command`` names the command, so one module can serve several).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from monai_quantunet.export.finn_toolchain import FinnBuildError

COMMANDS = {
    "demo-train": ("monai_quantunet.cli.demo", "train QuantU-Net for a few minutes and print one line per epoch"),
    "prepare-lgg": ("monai_quantunet.cli.data", "convert the Kaggle LGG release (kaggle_3m) to NIfTI + datalist"),
    "make-synthetic": ("monai_quantunet.cli.data", "write synthetic tumor volumes + datalist"),
    "export": ("monai_quantunet.cli.export", "export a checkpoint to QONNX, a FINN build folder and QCDQ ONNX"),
    "finn-build": ("monai_quantunet.cli.export", "run a FINN build folder's build.py with a FINN toolchain"),
    "compact-checkpoint": ("monai_quantunet.cli.checkpoint", "rewrite a checkpoint as integer weights at their bit widths"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m monai_quantunet", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module, help_text) in COMMANDS.items():
        mod = importlib.import_module(module)
        p = sub.add_parser(name, help=help_text, description=help_text)
        mod.add_arguments(p, name)
        p.set_defaults(_module=mod)
    args = parser.parse_args(argv)
    try:
        return int(args._module.main(args) or 0)
    except (ValueError, FileNotFoundError, FileExistsError, PermissionError, FinnBuildError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

