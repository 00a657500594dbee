"""2.5D input (``context_slices`` k): the slice and its neighbours as channels, in training, inference, the bundle
and the export; k = 1 is the 2D network as before."""

import json

import numpy as np
import pytest
import torch
from monai.inferers import SliceInferer
from monai.transforms import Compose, RandGaussianNoised

from conftest import BUNDLE, TINY
from conftest import run_workflow as _run
from monai_quantunet.checkpoint import load_checkpoint
from monai_quantunet.data import SliceDataset, load_datalist
from monai_quantunet.inference import predict_volume, slice_inferer
from monai_quantunet.networks import QuantUNet
from monai_quantunet.transforms import augment_transforms, stack_context_slices, val_transforms

CONFIGS = BUNDLE / "configs"
SIZE = tuple(TINY["spatial_size"])


def test_stack_context_slices_replicates_the_end_slices():
    volume = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(1, 2, 1, 3, 4)  # (B, C=2, X=1, Y=3, Z=4)
    assert stack_context_slices(volume, 1) is volume
    out = stack_context_slices(volume, 3)
    assert out.shape == (1, 6, 1, 3, 4)
    for c in range(2):
        for j in range(3):
            for z in range(4):
                assert torch.equal(out[0, 3 * c + j, ..., z], volume[0, c, ..., min(max(z + j - 1, 0), 3)])
    five = stack_context_slices(volume[:, :1], 5)[0, :, 0, 0]  # (k, Z) of voxel (0, 0): z = 0, 1, 2, 3
    assert five.tolist() == [[0, 0, 0, 1], [0, 0, 1, 2], [0, 1, 2, 3], [1, 2, 3, 3], [2, 3, 3, 3]]


@pytest.mark.parametrize("k", [0, 2, -1, 4, 3.0])
def test_bad_context_slices_are_named(k, synthetic_dataset):
    with pytest.raises(ValueError, match=f"context_slices must be an odd integer >= 1.*got {k}"):
        stack_context_slices(torch.zeros(1, 1, 2, 2, 3), k)
    with pytest.raises(ValueError, match=f"got {k}"):
        slice_inferer(SIZE, context_slices=k)
    with pytest.raises(ValueError, match=f"got {k}"):
        SliceDataset(load_datalist(synthetic_dataset / "dataset.json"), val_transforms(SIZE), context_slices=k)


def test_slice_dataset_items_hold_the_neighbours(synthetic_dataset):
    items = load_datalist(synthetic_dataset / "dataset.json", "training")
    flat = SliceDataset(items, val_transforms(SIZE))
    ctx = SliceDataset(items, val_transforms(SIZE), context_slices=3)
    assert len(ctx) == len(flat) == 4 * 8 and flat[0]["image"].shape == (1, *SIZE)
    assert torch.equal(ctx.labels, flat.labels) and torch.equal(ctx.positive, flat.positive)
    for i in range(len(flat)):
        z, start = i % 8, i - i % 8  # 8 slices per volume
        image = ctx[i]["image"]
        assert image.shape == (3, *SIZE) and torch.equal(ctx[i]["label"], flat[i]["label"])
        for j, dz in enumerate((-1, 0, 1)):
            assert torch.equal(image[j], flat[start + min(max(z + dz, 0), 7)]["image"][0])


def test_augmentation_treats_the_context_channels_alike():
    """Flips, affine, intensity scaling and contrast act on all k channels alike (noise is per voxel anyway)."""
    no_noise = Compose([t for t in augment_transforms().transforms if not isinstance(t, RandGaussianNoised)])
    no_noise.set_random_state(3)
    torch.manual_seed(0)
    image = torch.rand(1, *SIZE).repeat(3, 1, 1)
    for _ in range(10):
        out = no_noise({"image": image, "label": (image[:1] > 0.5).float()})["image"]
        assert out.shape == (3, *SIZE) and torch.equal(out[0], out[1]) and torch.equal(out[0], out[2])


def test_context_inferer_equals_a_manual_stack():
    torch.manual_seed(0)
    net = QuantUNet(3, 1, TINY["channels"]).eval()
    volume = torch.rand(1, 1, *SIZE, 5)
    got = predict_volume(net, volume, SIZE, sw_batch_size=2, context_slices=3)
    with torch.no_grad():
        for z in range(5):
            x = torch.cat([volume[..., min(max(z + dz, 0), 4)] for dz in (-1, 0, 1)], dim=1)  # (1, 3, H, W)
            torch.testing.assert_close(got[..., z], net(x), rtol=0, atol=1e-6)
    flat = QuantUNet(1, 1, TINY["channels"]).eval()
    reference = SliceInferer(roi_size=SIZE, sw_batch_size=2, spatial_dim=2, progress=False)(volume, flat)
    assert torch.equal(predict_volume(flat, volume, SIZE, sw_batch_size=2), reference)  # k = 1: plain 2D


@pytest.fixture(scope="module")
def trained(synthetic_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("train25d")
    _run(str(CONFIGS / "train.json"), workflow_type="train", bundle_root=str(BUNDLE),
         dataset_dir=str(synthetic_dataset), max_epochs=1, samples_per_epoch=8, batch_size=4, ckpt_dir=str(out),
         output_dir=str(out), context_slices=3, **TINY)
    return out / "model.pt"


def test_bundle_trains_infers_and_evaluates_in_2_5d(trained, synthetic_dataset, tmp_path):
    state = torch.load(trained, map_location="cpu", weights_only=True)
    assert state["encoder.0.0.weight"].shape[1] == 3
    _run(str(CONFIGS / "inference.json"), bundle_root=str(BUNDLE), dataset_dir=str(synthetic_dataset / "imagesTr"),
         checkpoint=str(trained), output_dir=str(tmp_path / "masks"), context_slices=3, **TINY)
    assert len(list((tmp_path / "masks").glob("*_seg.nii.gz"))) == 6
    _run([str(CONFIGS / "train.json"), str(CONFIGS / "evaluate.json")], workflow_type="eval",
         bundle_root=str(BUNDLE), dataset_dir=str(synthetic_dataset), checkpoint=str(trained),
         output_dir=str(tmp_path / "eval"), context_slices=3, **TINY)
    assert json.loads((tmp_path / "eval" / "summary.json").read_text())["summary"]["num_cases"] == 2


def test_checkpoint_of_other_context_slices_is_refused(trained, synthetic_dataset, tmp_path):
    with pytest.raises(ValueError, match=r"model\.pt does not match.*in_channels': 1.*encoder\.0\.0\.weight "
                                         r"\(4, 3, 3, 3\) vs \(4, 1, 3, 3\).*context_slices"):
        load_checkpoint(QuantUNet(1, 1, TINY["channels"]), trained)
    with pytest.raises(RuntimeError) as error:  # the bundle's loader (checkpoint.py), under ConfigExpression's
        _run(str(CONFIGS / "inference.json"), bundle_root=str(BUNDLE), checkpoint=str(trained),
             dataset_dir=str(synthetic_dataset / "imagesTr"), output_dir=str(tmp_path), **TINY)
    causes, e = [], error.value
    while e is not None:
        causes, e = causes + [str(e)], e.__cause__
    assert any("encoder.0.0.weight (4, 3, 3, 3) vs (4, 1, 3, 3)" in c and "context_slices" in c for c in causes), causes


def test_bundle_settings_and_network_follow_context_slices(tmp_path):
    import shutil

    from monai_quantunet.bundle import bundle_settings, network_from_bundle

    assert bundle_settings(BUNDLE)["context_slices"] == 1 and network_from_bundle(BUNDLE).in_channels == 1
    copy = shutil.copytree(BUNDLE / "configs", tmp_path / "bundle" / "configs")
    for name in ("train.json", "inference.json"):
        config = json.loads((copy / name).read_text())
        (copy / name).write_text(json.dumps({**config, "context_slices": 5}))
    assert bundle_settings(copy.parent)["context_slices"] == 5 and network_from_bundle(copy.parent).in_channels == 5


def test_export_takes_k_input_channels(synthetic_dataset, tmp_path):
    from qonnx.core.modelwrapper import ModelWrapper
    from tiny_unet import mixed_width_net

    from monai_quantunet.export import example_slices, export_model, onnx_network

    net = mixed_width_net(in_channels=3)
    slices, _ = example_slices(synthetic_dataset, SIZE, num_slices=2, context_slices=3)
    volume = example_slices(synthetic_dataset, SIZE, whole_volume=True)[0].movedim(0, -1)  # (1, H, W, Z)
    assert slices.shape == (2, 3, *SIZE)
    assert any(torch.equal(s, c) for s in slices for c in stack_context_slices(volume, 3).movedim(-1, 0))
    result = export_model(net, tmp_path / "export", slices, qonnx_inference_cost=False, verbose=False)
    model = ModelWrapper(str(result.qonnx_path))
    assert tuple(model.get_tensor_shape(model.graph.input[0].name)) == (1, 3, *SIZE)
    with torch.no_grad():
        ref = net(slices)
    out = onnx_network(result.qcdq_path)(slices)  # onnxruntime
    assert out.shape == ref.shape and (out - ref).abs().max() <= result.record["verification"]["qcdq"]["tolerance"]
    assert np.load(result.finn_dir / "input.npy").shape == (2, 3, *SIZE)
    readme = (result.finn_dir / "README.md").read_text()
    assert f"input `(1, 3, {SIZE[0]}, {SIZE[1]})`" in readme and "`context_slices` = 3" in readme


def test_export_cli_reads_context_slices(synthetic_dataset, tmp_path, capsys):
    from tiny_unet import CHANNELS, mixed_width_net

    from monai_quantunet.cli import main

    config = json.loads((CONFIGS / "inference.json").read_text())
    config.update(channels=list(CHANNELS), spatial_size=list(SIZE), context_slices=3)
    (tmp_path / "bundle" / "configs").mkdir(parents=True)
    config_file = tmp_path / "bundle" / "configs" / "inference.json"
    config_file.write_text(json.dumps(config))
    ckpt = tmp_path / "model.pt"
    torch.save(mixed_width_net(in_channels=3).state_dict(), ckpt)
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(tmp_path / "out"), "--config_file",
                 str(config_file), "--dataset-dir", str(synthetic_dataset), "--num-slices", "1",
                 "--no-qonnx-cost"]) == 0
    assert np.load(tmp_path / "out" / "finn" / "input.npy").shape == (1, 3, *SIZE)
