"""Wearable-class FPGA targets: FINN board names, their parts, each part's resources and the build's budget."""

from __future__ import annotations

from .errors import UNetBuildError

__all__ = ["BOARD_PARTS", "MAX_UTILIZATION", "PART_RESOURCES", "RESOURCES", "fifo_ram_style", "over",
           "part_resources", "resolve_part", "resource_budget"]

# FINN board name -> FPGA part, and each part family's resources (AMD product tables)
BOARD_PARTS = {
    "Pynq-Z1": "xc7z020clg400-1",
    "Pynq-Z2": "xc7z020clg400-1",
    "Ultra96-V2": "xczu3eg-sbva484-1-i",
    "KV260_SOM": "xck26-sfvc784-2LV-c",
}
PART_RESOURCES = {
    "xc7z020": {"LUT": 53200, "BRAM_18K": 280, "URAM": 0, "DSP": 220},
    "xczu3eg": {"LUT": 70560, "BRAM_18K": 432, "URAM": 0, "DSP": 360},
    "xck26": {"LUT": 117120, "BRAM_18K": 288, "URAM": 64, "DSP": 1248},
}
RESOURCES = ("LUT", "BRAM_18K", "URAM", "DSP")
MAX_UTILIZATION = 0.8  # share of each FPGA resource the folding may use


def resolve_part(board: str | None, fpga_part: str | None) -> str:
    """The FPGA part of a supported ``board`` or ``fpga_part``; :class:`UNetBuildError` for unknown ones."""
    if bool(board) == bool(fpga_part):
        raise UNetBuildError(f"give exactly one of board or fpga_part (got board={board!r}, fpga_part={fpga_part!r})")
    if board:
        if board not in BOARD_PARTS:
            raise UNetBuildError(f"unknown board {board!r}: supported boards are {', '.join(BOARD_PARTS)}")
        return BOARD_PARTS[board]
    part_resources(fpga_part)
    return fpga_part


def part_resources(part: str) -> dict[str, int]:
    """LUT, BRAM_18K, URAM and DSP of ``part`` (a part number such as ``xc7z020clg400-1``)."""
    for family, resources in PART_RESOURCES.items():
        if part.lower().startswith(family):
            return resources
    raise UNetBuildError(f"unknown FPGA part {part!r}: supported part families are {', '.join(PART_RESOURCES)} "
                         f"(boards: {', '.join(f'{b} = {p}' for b, p in BOARD_PARTS.items())})")


def resource_budget(part: str, max_utilization: float = MAX_UTILIZATION) -> dict[str, float]:
    """What the whole design may use of each resource of ``part``: ``max_utilization`` of it."""
    return {r: max_utilization * v for r, v in part_resources(part).items()}


def over(needed: dict[str, float], limits: dict[str, float]) -> list[str]:
    """The resources (of :data:`RESOURCES`) of which ``needed`` exceeds ``limits``."""
    return [r for r in RESOURCES if needed[r] > limits[r]]


def fifo_ram_style(part: str) -> str:
    """Memory of the deep (``axis_data_fifo``) FIFOs on ``part``: URAM where the part has it, else BRAM."""
    return "ultra" if part_resources(part)["URAM"] else "block"
