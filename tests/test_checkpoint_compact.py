"""The compact checkpoint: integer weights at their bit widths plus scales, loaded bit-identically."""

from __future__ import annotations

import pytest
import torch

from conftest import BUNDLE
from monai_quantunet.checkpoint import _pack, _unpack, load_checkpoint, load_state_dict, save_compact
from monai_quantunet.networks import FloatUNet, QuantUNet

SMALL = {"in_channels": 1, "channels": (4, 8, 8, 16, 16)}


@pytest.mark.parametrize("bits", range(2, 9))
def test_pack_roundtrip_over_the_whole_signed_range(bits):
    values = torch.arange(-(1 << (bits - 1)), 1 << (bits - 1)).repeat(3)[:-1].reshape(-1)  # odd count: padding
    packed = _pack(values, bits)
    assert packed.numel() == -(-values.numel() * bits // 8)
    assert torch.equal(_unpack(packed, bits, [values.numel()]), values.to(torch.int16))


def _trained_like(network: torch.nn.Module) -> torch.nn.Module:
    """Non-trivial weights, BatchNorm statistics and activation scales (a few calibration batches)."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in network.parameters():
            if p.ndim == 4:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    network.train()
    for _ in range(3):
        network(torch.randn(2, 1, 32, 32, generator=gen))
    return network.eval()


@pytest.mark.parametrize("quantization", ["learned", "fixed"])
def test_quantized_network_loads_bit_identically(tmp_path, quantization):
    network = _trained_like(QuantUNet(**SMALL, quantization=quantization))
    plain, compact = tmp_path / "plain.pt", tmp_path / "compact.pt"
    torch.save(network.state_dict(), plain)
    save_compact(network, compact)
    reloaded = load_checkpoint(QuantUNet(**SMALL, quantization=quantization), compact).eval()
    x = torch.randn(3, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(network(x), reloaded(x))
    assert compact.stat().st_size < plain.stat().st_size / 3
    assert set(load_state_dict(compact)) == set(network.state_dict())


def test_float_twin_in_half_precision(tmp_path):
    network = _trained_like(FloatUNet(**SMALL))
    path = save_compact(network, tmp_path / "float16.pt", float_weights=torch.float16)
    state = load_state_dict(path)
    assert all(v.dtype != torch.float16 for v in state.values())
    reloaded = load_checkpoint(FloatUNet(**SMALL), path).eval()
    x = torch.randn(2, 1, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(network(x), reloaded(x), atol=5e-2, rtol=1e-2)


def test_damaged_compact_checkpoint_is_refused_naming_the_file(tmp_path):
    path = save_compact(_trained_like(QuantUNet(**SMALL)), tmp_path / "compact.pt")
    ckpt = torch.load(path, weights_only=True)
    name = next(iter(ckpt["packed_weights"]))
    ckpt["packed_weights"][name]["data"] = ckpt["packed_weights"][name]["data"][:1]
    torch.save(ckpt, path)
    with pytest.raises(ValueError, match=f"{path}.*{name}.*damaged"):
        load_state_dict(path)


def test_cli_rewrites_the_shipped_model_under_a_megabyte(tmp_path, capsys):
    from monai_quantunet.cli import main

    out = tmp_path / "model.pt"
    assert main(["compact-checkpoint", str(BUNDLE / "models" / "model.pt"), str(out), "--bundle-root", str(BUNDLE)]) == 0
    assert "max logit difference 0" in capsys.readouterr().out
    assert out.stat().st_size <= 1_000_000
