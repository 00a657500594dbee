"""The interactive bundle (bundles/quantunet_interactive_tumor_seg) in the model zoo's way: ConfigWorkflow train
(1 epoch on generated volumes, tiny network started from a tiny segmentation checkpoint), inference with a clicks
file, metadata against the zoo's schema, the shipped checkpoint in its network_def, export."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from conftest import BUNDLE as SEG_BUNDLE
from conftest import INTERACTIVE_BUNDLE, TINY
from conftest import check_zoo_metadata
from conftest import run_workflow as _run
from monai.bundle import ConfigWorkflow

BUNDLE = INTERACTIVE_BUNDLE
CONFIGS = BUNDLE / "configs"


def _tiny_segmentation_checkpoint(path, context_slices: int = 1):
    from monai_quantunet.networks import QuantUNet
    from monai_quantunet.networks.quantunet import ACT_STATS_STEPS

    torch.manual_seed(0)
    net = QuantUNet(in_channels=context_slices, channels=TINY["channels"], quantization="learned", bit_width=4,
                    max_bit_width=4)
    with torch.no_grad():  # activation scales exist after Brevitas' statistics steps, as in a trained checkpoint
        for _ in range(ACT_STATS_STEPS + 1):
            net.train()(torch.rand(2, context_slices, 32, 32))
    torch.save(net.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def tiny_segmentation(tmp_path_factory):
    return _tiny_segmentation_checkpoint(tmp_path_factory.mktemp("seg") / "seg.pt")


@pytest.fixture(scope="module")
def trained(synthetic_dataset, tiny_segmentation, tmp_path_factory):
    out = tmp_path_factory.mktemp("train")
    workflow = _run(str(CONFIGS / "train.json"), workflow_type="train", bundle_root=str(BUNDLE),
                    dataset_dir=str(synthetic_dataset), segmentation_checkpoint=str(tiny_segmentation), max_epochs=1,
                    samples_per_epoch=8, batch_size=4, ckpt_dir=str(out), output_dir=str(out), **TINY)
    return workflow, out


def test_train_workflow(trained, tiny_segmentation):
    workflow, out = trained
    assert workflow.check_properties() == []
    assert (out / "model.pt").is_file()
    history = json.loads((out / "bit_widths.json").read_text())
    assert history[0]["epoch"] == 1 and 0 <= history[0]["val_dice"] <= 1
    assert len([r for r in history[0]["layers"] if r["kind"] == "weight"]) == 23
    state = torch.load(out / "model.pt", map_location="cpu", weights_only=True)
    assert state["encoder.0.0.weight"].shape[1] == 4  # image, current mask, foreground, background clicks
    assert any("bit_width_offset" in k for k in state)  # learned widths
    # initialised from the segmentation checkpoint: the image channel's weights came from it
    seg = torch.load(tiny_segmentation, map_location="cpu", weights_only=True)
    net = workflow.parser.get_parsed_content("network")
    assert net.encoder[0][0].weight.shape[1] == 4 and seg["encoder.0.0.weight"].shape[1] == 1


def test_click_training_from_a_2_5d_segmentation_model(synthetic_dataset, tmp_path):
    """A 2.5D segmentation model (3 context slices) gives the current masks and the starting weights: its
    checkpoint loads into the segmentation network (a mismatch would raise), its masks are predicted with the
    slices' neighbours, and the interactive network's image channel starts as the sum of its 3 input channels."""
    seg_path = _tiny_segmentation_checkpoint(tmp_path / "seg3.pt", context_slices=3)
    out = tmp_path / "train"
    workflow = ConfigWorkflow(config_file=str(CONFIGS / "train.json"), workflow_type="train", bundle_root=str(BUNDLE),
                              dataset_dir=str(synthetic_dataset), segmentation_checkpoint=str(seg_path),
                              segmentation_context_slices=3, max_epochs=1, samples_per_epoch=8, batch_size=4,
                              ckpt_dir=str(out), output_dir=str(out), **TINY)
    workflow.initialize()
    seg_state = torch.load(seg_path, map_location="cpu", weights_only=True)
    start = workflow.parser.get_parsed_content("network").encoder[0][0].weight.detach()
    torch.testing.assert_close(start[:, :1], seg_state["encoder.0.0.weight"].sum(dim=1, keepdim=True))
    seg = workflow.parser.get_parsed_content("segmentation_network")
    assert seg.encoder[0][0].weight.shape[1] == 3
    dataset = workflow.parser.get_parsed_content("train#dataset")
    image = torch.as_tensor(workflow.parser.get_parsed_content("train#volume_transform")(dataset_item(workflow))["image"])
    from monai_quantunet.inference import predict_volume

    expected = (predict_volume(seg, image[None], tuple(image.shape[1:3]), context_slices=3)[0] > 0).to(torch.uint8)
    depth = image.shape[-1]
    torch.testing.assert_close(dataset.masks["mask"][:depth], expected.movedim(-1, 0))
    workflow.run()
    workflow.finalize()
    history = json.loads((out / "bit_widths.json").read_text())
    assert history[0]["epoch"] == 1 and 0 <= history[0]["val_dice"] <= 1


def dataset_item(workflow) -> dict:
    """The first training item of the workflow's datalist."""
    return workflow.parser.get_parsed_content("train#dataset#data")[0]


def test_segmentation_network_is_the_segmentation_bundles():
    """The interactive bundle stands alone with a copy of the segmentation bundle's network definition (its
    ``segmentation_network_def``, ``segmentation_context_slices``): the two must agree, and the shipped
    ``segmentation_model.pt`` must hold the segmentation bundle's ``model.pt`` weights."""
    from monai.bundle import ConfigParser

    seg_bundle = SEG_BUNDLE
    definitions = []
    for config, key, context in ((CONFIGS / "inference.json", "segmentation_network_def", "segmentation_context_slices"),
                                 (seg_bundle / "configs" / "inference.json", "network_def", "context_slices")):
        parser = ConfigParser()
        parser.read_config(str(config))
        parser["bundle_root"] = str(config.parent.parent)
        definition = {k: parser.get_parsed_content(f"{key}#{k}") for k in parser[key] if k != "_target_"}
        assert definition["in_channels"] == parser.get_parsed_content(context)
        definitions.append((parser[key]["_target_"], definition))
    assert definitions[0] == definitions[1]
    from monai_quantunet.checkpoint import load_state_dict

    shipped = load_state_dict(BUNDLE / "models" / "segmentation_model.pt")
    served = load_state_dict(seg_bundle / "models" / "model.pt")
    assert shipped.keys() == served.keys() and all(torch.equal(shipped[k], served[k]) for k in served)


def test_inference_refines_with_a_clicks_file(trained, synthetic_dataset, tiny_segmentation, tmp_path):
    _, out = trained
    images = sorted((synthetic_dataset / "imagesTr").glob("*.nii.gz"))[:2]
    clicks = {images[0].name: {"foreground": [[24, 24, 4]], "background": [[2, 2, 1]]}}
    clicks_file = tmp_path / "clicks.json"
    clicks_file.write_text(json.dumps(clicks))
    in_dir = tmp_path / "in"
    in_dir.mkdir()
    for p in images:
        (in_dir / p.name).write_bytes(p.read_bytes())
    workflow = _run(str(CONFIGS / "inference.json"), workflow_type="infer", bundle_root=str(BUNDLE),
                    dataset_dir=str(in_dir), checkpoint=str(out / "model.pt"),
                    segmentation_checkpoint=str(tiny_segmentation), clicks_file=str(clicks_file),
                    output_dir=str(tmp_path / "out"), **TINY)
    assert workflow.check_properties() == []  # the model zoo's inference properties (dataset, evaluator, inferer...)
    from monai_quantunet.inference import segment_volume
    from monai_quantunet.interactive import refine_volume

    network = workflow.parser.get_parsed_content("network")
    segmentation = workflow.parser.get_parsed_content("segmentation_network")
    for p in images:
        mask = nib.load(tmp_path / "out" / p.name.replace(".nii.gz", "_seg.nii.gz"))
        assert mask.shape == nib.load(p).shape
        np.testing.assert_allclose(mask.affine, nib.load(p).affine)
        # the bundle's evaluator is the library's chain: voxel for voxel the mask refine_volume gives
        auto = segment_volume(segmentation, p, TINY["spatial_size"])
        entry = clicks.get(p.name, {})
        expected = refine_volume(network, p, auto, entry.get("foreground", []), entry.get("background", []),
                                 TINY["spatial_size"])
        np.testing.assert_array_equal(np.asarray(mask.dataobj) > 0, expected)
        assert set(np.unique(np.asarray(mask.dataobj))) <= {0, 1}
        if not entry:  # no clicks: the auto-segmentation as it is
            np.testing.assert_array_equal(expected, auto)
    clicked = nib.load(tmp_path / "out" / images[0].name.replace(".nii.gz", "_seg.nii.gz"))
    assert np.asarray(clicked.dataobj)[24, 24, 4] == 1  # the clicked voxel is tumor
    clicks_file.write_text(json.dumps({"nosuch.nii.gz": {"foreground": [[1, 1, 1]]}}))
    with pytest.raises(RuntimeError) as err:  # the config wraps the library's ValueError naming the file
        _run(str(CONFIGS / "inference.json"), bundle_root=str(BUNDLE), dataset_dir=str(in_dir),
             checkpoint=str(out / "model.pt"), segmentation_checkpoint=str(tiny_segmentation),
             clicks_file=str(clicks_file), output_dir=str(tmp_path / "out2"), **TINY)
    assert isinstance(err.value.__cause__, ValueError) and "nosuch.nii.gz" in str(err.value.__cause__)


def test_shipped_checkpoint_fits_the_network_def():
    from monai_quantunet.bitwidth import bit_width_report
    from monai_quantunet.bundle import network_from_bundle
    from monai_quantunet.checkpoint import load_checkpoint

    net = load_checkpoint(network_from_bundle(BUNDLE), BUNDLE / "models" / "model.pt")
    assert net.encoder[0][0].weight.shape[1] == 4
    report = bit_width_report(net)
    assert 2 <= report.mean_weight_bits <= 4 and 2 <= report.mean_activation_bits <= 4


def test_metadata_matches_zoo_schema_and_network():
    check_zoo_metadata(BUNDLE)


def test_export_accepts_the_interactive_model(tmp_path):
    """`python -m monai_quantunet export --config_file <inference.json>`: QONNX / QCDQ checked against PyTorch."""
    from monai_quantunet.cli import main

    rc = main(["export", "--checkpoint", str(BUNDLE / "models" / "model.pt"), "--out", str(tmp_path / "export"),
               "--config_file", str(CONFIGS / "inference.json"), "--num-slices", "2", "--no-qonnx-cost"])
    assert rc == 0
    assert (tmp_path / "export" / "model.qonnx.onnx").is_file() and (tmp_path / "export" / "model.qcdq.onnx").is_file()
    import onnx

    model = onnx.load(str(tmp_path / "export" / "model.qcdq.onnx"))
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims[1:] == [4, 128, 128]
