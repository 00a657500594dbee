"""A tiny learned-width QuantU-Net whose widths span 2..8: the export and FINN tests' model."""

import torch

from monai_quantunet.networks import QuantUNet

CHANNELS = (4, 8, 8, 16, 16)
SIZE = (32, 32)


def mixed_width_net(seed: int = 0, in_channels: int = 1) -> QuantUNet:
    """A tiny learned-width net whose widths span 2..8, trained a few optimizer steps."""
    torch.manual_seed(seed)
    net = QuantUNet(in_channels, 1, CHANNELS, quantization="learned")
    offsets = [p for n, p in net.named_parameters() if "bit_width_offset" in n]
    with torch.no_grad():
        for i, p in enumerate(offsets):
            p.fill_(float(i % 7))  # width = offset + 2: integer offsets stay away from rounding edges
    opt = torch.optim.Adam([p for n, p in net.named_parameters() if "bit_width" not in n], lr=1e-3)
    for _ in range(3):
        x = torch.rand(2, in_channels, *SIZE)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(net(x), (x[:, :1] > 0.5).float())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()
