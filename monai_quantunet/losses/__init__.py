from monai_quantunet.losses.quantunet_loss import QuantUNetLoss, bit_width_term

__all__ = ["QuantUNetLoss", "bit_width_term"]
