"""monai-quantunet: QuantU-Net (trainable per-layer bit widths) for MONAI, MONAI Label / 3D Slicer and FINN."""

__version__ = "0.1.0"
