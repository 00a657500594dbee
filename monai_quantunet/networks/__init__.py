from monai_quantunet.networks.quantunet import MAX_BITS, MIN_BITS, QUANTIZATION_MODES, FloatUNet, QuantUNet

__all__ = ["QuantUNet", "FloatUNet", "QUANTIZATION_MODES", "MIN_BITS", "MAX_BITS"]
