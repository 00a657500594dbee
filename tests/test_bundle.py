"""Model-zoo style bundle tests: ConfigWorkflow initialize -> run -> finalize on tiny generated volumes."""

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigWorkflow

from conftest import BUNDLE, TINY
from conftest import check_zoo_metadata
from conftest import run_workflow as _run

CONFIGS = BUNDLE / "configs"


@pytest.fixture(scope="module")
def trained(synthetic_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("train")
    workflow = _run(
        str(CONFIGS / "train.json"),
        workflow_type="train",
        bundle_root=str(BUNDLE),
        dataset_dir=str(synthetic_dataset),
        max_epochs=1,
        samples_per_epoch=8,
        batch_size=4,
        ckpt_dir=str(out),
        output_dir=str(out),
        **TINY,
    )
    return workflow, out


def test_train_workflow(trained):
    workflow, out = trained
    assert workflow.check_properties() == []
    assert (out / "model.pt").is_file()
    history = json.loads((out / "bit_widths.json").read_text())
    assert history[0]["epoch"] == 1 and "val_dice" in history[0]
    assert len([r for r in history[0]["layers"] if r["kind"] == "weight"]) == 23
    assert (out / "bit_widths.png").is_file()
    state = torch.load(out / "model.pt", map_location="cpu", weights_only=True)
    assert any("bit_width_offset" in k for k in state)


def test_float_then_qat_recipe(synthetic_dataset, tmp_path):
    _run(str(CONFIGS / "train.json"), bundle_root=str(BUNDLE), dataset_dir=str(synthetic_dataset), max_epochs=1,
         samples_per_epoch=8, batch_size=4, quantization="float", ckpt_dir=str(tmp_path), output_dir=str(tmp_path), **TINY)
    assert (tmp_path / "float_model.pt").is_file()
    workflow = ConfigWorkflow(config_file=str(CONFIGS / "train.json"), bundle_root=str(BUNDLE),
                              dataset_dir=str(synthetic_dataset), init_checkpoint=str(tmp_path / "float_model.pt"),
                              ckpt_dir=str(tmp_path), output_dir=str(tmp_path), **TINY)
    workflow.initialize()
    float_state = torch.load(tmp_path / "float_model.pt", weights_only=True)
    net = workflow.parser.get_parsed_content("network")
    assert torch.equal(net.encoder[0][0].weight, float_state["encoder.0.0.weight"])


def test_inference_writes_masks_with_input_geometry(trained, synthetic_dataset, tmp_path):
    _, out = trained
    _run(str(CONFIGS / "inference.json"), bundle_root=str(BUNDLE), dataset_dir=str(synthetic_dataset / "imagesTr"),
         checkpoint=str(out / "model.pt"), output_dir=str(tmp_path), **TINY)
    for image in sorted((synthetic_dataset / "imagesTr").glob("*.nii.gz")):
        case = image.name.removesuffix(".nii.gz")
        mask = nib.load(tmp_path / f"{case}_seg.nii.gz")
        ref = nib.load(image)
        assert mask.shape == ref.shape
        np.testing.assert_allclose(mask.affine, ref.affine)
        assert set(np.unique(np.asarray(mask.dataobj))) <= {0, 1}


@pytest.mark.parametrize("base", ["inference.json", "train.json"])
def test_evaluation_writes_metrics(trained, synthetic_dataset, tmp_path, base):
    """Evaluation stacked on inference.json, and on train.json as the model zoo's CI runs it."""
    _, out = trained
    workflow_type = "train" if base == "train.json" else "eval"  # the model zoo checks evaluate.json on train.json so
    workflow = _run([str(CONFIGS / base), str(CONFIGS / "evaluate.json")], workflow_type=workflow_type,
                    bundle_root=str(BUNDLE), dataset_dir=str(synthetic_dataset), checkpoint=str(out / "model.pt"),
                    output_dir=str(tmp_path), **TINY)
    assert workflow.check_properties() == []
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["summary"]["num_cases"] == 2
    for case in summary["cases"]:
        assert 0 <= case["dice"] <= 1 and 0 <= case["iou"] <= case["dice"] + 1e-9 and 0.5 < case["accuracy"] <= 1
    rows = (tmp_path / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("case,dice,iou,accuracy") and len(rows) == 3
    assert (tmp_path / "overlays.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # best / median / worst overlays


def test_metadata_matches_zoo_schema_and_network():
    check_zoo_metadata(BUNDLE)


def test_bundle_copied_elsewhere_runs_inference_and_evaluation(trained, synthetic_dataset, tmp_path):
    """A copy of the bundle folder outside the repository runs with the installed package, from its own folder."""
    import shutil
    import subprocess
    import sys

    _, out = trained
    copy = Path(shutil.copytree(BUNDLE, tmp_path / "quantunet_brain_tumor_seg",
                                ignore=shutil.ignore_patterns("runs", "data", "eval", "export")))
    overrides = ["--dataset_dir", str(synthetic_dataset), "--checkpoint", str(out / "model.pt"),
                 "--channels", json.dumps(TINY["channels"]), "--spatial_size", json.dumps(TINY["spatial_size"])]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    for configs, output in (("configs/inference.json", "masks"),
                            ("['configs/inference.json','configs/evaluate.json']", "eval")):
        cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", configs, "--output_dir",
               str(tmp_path / output)] + overrides
        result = subprocess.run(cmd, cwd=copy, env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]
    assert len(list((tmp_path / "masks").glob("*_seg.nii.gz"))) == 2
    assert json.loads((tmp_path / "eval" / "summary.json").read_text())["summary"]["num_cases"] == 2
    assert not (copy / "runs").exists()


NETWORK_KEYS = ("channels", "quantization", "bit_width", "min_bit_width", "max_bit_width", "spatial_size",
                "context_slices")


@pytest.mark.parametrize("config", ["train.json", "export.json"])
def test_network_definition_cannot_drift(config):
    """inference.json's network_def is the one definition; train.json and export.json must build the same net."""
    from monai.bundle import ConfigParser

    def network(name):
        parser = ConfigParser()
        parser.read_config(str(CONFIGS / name))
        return parser.get()["network_def"], {k: parser.get_parsed_content(k) for k in NETWORK_KEYS}

    assert network(config) == network("inference.json")


def test_one_dice_everywhere():
    """Checkpoint selection and evaluation count a tumor-free volume predicted tumor-free as Dice 1, like
    metrics.volume_metrics (the evaluation report, the app's publish decision)."""
    from monai.bundle import ConfigParser

    from monai_quantunet.metrics import volume_metrics

    train = json.loads((CONFIGS / "train.json").read_text())
    evaluate = json.loads((CONFIGS / "evaluate.json").read_text())
    metrics = (train["validate"]["key_metric"]["val_mean_dice"], evaluate["key_metric"]["mean_dice"])
    assert metrics[0] == metrics[1] and metrics[0]["metric_fn"]["ignore_empty"] is False
    rng = torch.Generator().manual_seed(0)
    preds = [torch.zeros(1, 8, 8, 4), torch.rand(1, 8, 8, 4, generator=rng) > 0.5, torch.zeros(1, 8, 8, 4)]
    labels = [torch.zeros(1, 8, 8, 4), torch.rand(1, 8, 8, 4, generator=rng) > 0.5, torch.ones(1, 8, 8, 4)]
    dice = ConfigParser(metrics[0]["metric_fn"]).get_parsed_content()  # the metric the handler wraps
    dice([p.float() for p in preds], [g.float() for g in labels])
    expected = sum(volume_metrics(p, g)["dice"] for p, g in zip(preds, labels)) / 3
    assert float(dice.aggregate()) == pytest.approx(expected)


def _root_cause(exc: BaseException) -> BaseException:
    while exc.__cause__ is not None:  # MONAI wraps config errors in "Failed to evaluate ..."
        exc = exc.__cause__
    return exc


def test_bad_dataset_dir_is_a_clear_error(tmp_path):
    with pytest.raises(Exception) as err:
        _run(str(CONFIGS / "train.json"), bundle_root=str(BUNDLE), dataset_dir=str(tmp_path / "missing"), **TINY)
    assert "missing does not exist" in str(_root_cause(err.value))


def test_empty_inference_folder_is_a_clear_error(tmp_path):
    with pytest.raises(Exception) as err:
        _run(str(CONFIGS / "inference.json"), bundle_root=str(BUNDLE), dataset_dir=str(tmp_path), **TINY)
    assert "no NIfTI / NRRD volumes" in str(_root_cause(err.value))


@pytest.mark.slow
def test_multi_gpu_config_trains_with_two_cpu_processes(synthetic_dataset, tmp_path):
    """torchrun with 2 gloo processes on the CPU: DistributedDataParallel training writes one checkpoint."""
    import os
    import subprocess
    import sys

    configs = f"['{CONFIGS / 'train.json'}','{CONFIGS / 'multi_gpu_train.json'}']"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "monai.bundle", "run", "training", "--config_file", configs, "--bundle_root", str(BUNDLE),
           "--dataset_dir", str(synthetic_dataset), "--max_epochs", "1", "--samples_per_epoch", "8",
           "--batch_size", "2", "--ckpt_dir", str(tmp_path), "--output_dir", str(tmp_path),
           "--channels", "[4,8,8,16,16]", "--spatial_size", "[32,32]"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    state = torch.load(tmp_path / "model.pt", map_location="cpu", weights_only=True)
    assert not any(k.startswith("module.") for k in state)  # saved unwrapped, loadable by the single-process configs
    assert (tmp_path / "bit_widths.json").is_file()
    # rank 0 alone logs, writes TensorBoard events and saves; rank 1 trains and joins the distributed validation
    assert len(list(tmp_path.glob("events.out.tfevents.*"))) == 2  # rank 0: train and validation writers
    assert result.stdout.count("Key metric: val_mean_dice") + result.stderr.count("Key metric: val_mean_dice") == 1


def test_training_at_frozen_widths(trained, synthetic_dataset, tmp_path):
    """--freeze_bit_widths true continues a learned-width checkpoint with its widths unchanged, even at a large bit
    learning rate."""
    from monai_quantunet.bitwidth import bit_width_report, split_bit_width_parameters
    from monai_quantunet.checkpoint import load_checkpoint

    _, out = trained
    workflow = ConfigWorkflow(config_file=str(CONFIGS / "train.json"), workflow_type="train", bundle_root=str(BUNDLE),
                              dataset_dir=str(synthetic_dataset), init_checkpoint=str(out / "model.pt"),
                              freeze_bit_widths=True, bit_learning_rate=0.5, max_epochs=1, samples_per_epoch=8,
                              batch_size=4, ckpt_dir=str(tmp_path), output_dir=str(tmp_path), **TINY)
    workflow.initialize()
    workflow.run()
    net = workflow.parser.get_parsed_content("network")
    workflow.finalize()
    start = load_checkpoint(workflow.parser.get_parsed_content("network_def", lazy=False), out / "model.pt")  # a new one
    bits, _ = split_bit_width_parameters(net)
    assert len(bits) == 23 + 18 and not any(p.requires_grad for p in bits)
    for p, q in zip(bits, split_bit_width_parameters(start)[0]):
        assert torch.equal(p, q)
    assert bit_width_report(net).to_dict() == bit_width_report(start).to_dict()
