"""FINN's C++ simulation (cppsim) of every HLS layer on the open-source HLS headers ``scripts/install_finn.sh``
sets up: the folded U-Net's integer output equals the streamlined graph's. Skipped without the FINN toolchain or
without its ``hls/`` headers; every FINN layer compiles with g++, so these are slow tests."""

import json

import pytest
import torch
from conftest import BUNDLE, shared_data
from tiny_unet import SIZE, mixed_width_net

from monai_quantunet.export import example_slices, export_model

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cppsim_toolchain(finn_toolchain):
    if finn_toolchain.hls_path is None:
        pytest.skip("no open-source HLS headers in the FINN toolchain (bash scripts/install_finn.sh with "
                    "../shared/toolchains/open-hls-sources.tar.gz)")
    return finn_toolchain


def check_cppsim(record: dict, slices: int) -> None:
    cppsim = record["finn"]["cppsim"]
    assert cppsim == {"slices": slices, "hls_layers": cppsim["hls_layers"], "differing_values": 0, "passed": True}
    assert cppsim["hls_layers"] >= 30  # MVAUs, forks, concats, pools, pixel padding
    assert record["finn"]["integer_verification"]["differing_values"] == 0


def test_tiny_unet_in_cppsim(cppsim_toolchain, tmp_path):
    torch.manual_seed(0)
    slices = torch.rand(1, 1, *SIZE)
    result = export_model(mixed_width_net(seed=1), tmp_path / "export", slices, target_fps=2000, cppsim_slices=1,
                          finn=cppsim_toolchain, qonnx_inference_cost=False, verbose=False)
    check_cppsim(result.record, 1)
    assert json.loads((result.finn_dir / "dataflow_build_config.json").read_text())["unet_cppsim_slices"] == 1


def test_shipped_model_in_cppsim(cppsim_toolchain, tmp_path):
    from monai_quantunet.cli.export import network_from_config

    network, parser = network_from_config(BUNDLE / "configs" / "train.json")
    slices, _ = example_slices(shared_data("lgg_flair"), parser.get_parsed_content("spatial_size"), num_slices=1)
    result = export_model(network, tmp_path / "export", slices, checkpoint=BUNDLE / "models" / "model.pt",
                          cppsim_slices=1, finn=cppsim_toolchain, qonnx_inference_cost=False, verbose=False)
    check_cppsim(result.record, 1)
