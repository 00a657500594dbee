"""Export for wearable FPGA targets and CPUs: QONNX, a FINN build folder, QCDQ ONNX, hardware cost.

Main entry: :func:`export_model`; CLI: ``python -m monai_quantunet export``; inference through the QCDQ
model: :func:`onnx_network`.
"""

from monai_quantunet.export.core import (
    ExportResult,
    check_bit_widths,
    example_slices,
    export_model,
)
from monai_quantunet.export.finn_toolchain import FinnBuildError, FinnToolchain
from monai_quantunet.export.qcdq import OnnxSliceNetwork, onnx_network
from monai_quantunet.export.verify import ExportVerificationError

__all__ = [
    "ExportResult",
    "ExportVerificationError",
    "FinnBuildError",
    "FinnToolchain",
    "OnnxSliceNetwork",
    "check_bit_widths",
    "example_slices",
    "export_model",
    "onnx_network",
]
