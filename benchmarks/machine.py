"""Description of the machine a benchmark ran on (recorded next to its timings)."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

import torch


def machine_info() -> dict:
    """CPU model, logical cores, memory (GiB), GPU, Python and torch versions."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30 if hasattr(os, "sysconf") else None
    return {
        "cpu": cpu,
        "logical_cores": os.cpu_count(),
        "memory_gib": round(memory_gib, 1) if memory_gib else None,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
    }


def describe(info: dict) -> str:
    """One line, e.g. ``2 cores of Intel Xeon ..., 23.5 GiB, no GPU, Python 3.11.9, torch 2.14.1``."""
    gpu = info["gpu"] or "no GPU"
    return (f"{info['logical_cores']} cores of {info['cpu']}, {info['memory_gib']} GiB, {gpu}, "
            f"Python {info['python']}, torch {info['torch']}")


def source_commit() -> str | None:
    """The repository's commit (``git describe --always --dirty``), or None outside a git checkout."""
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip() or None
