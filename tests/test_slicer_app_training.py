"""The fine-tuning rules of the MONAI Label app (slicer_app/lib/trainers): held-out split and publish decision."""

from __future__ import annotations

import sys

import pytest

from conftest import REPO

pytest.importorskip("monailabel")
sys.path.insert(0, str(REPO / "slicer_app"))
from lib.trainers.publishing import holdout_split, publish_decision  # noqa: E402


def _items(n):
    return [{"image": f"/s/case{i}.nii.gz", "label": f"/s/labels/final/case{i}.nii.gz"} for i in range(n)]


@pytest.mark.parametrize("n,val_split,held", [(0, 0.2, 0), (1, 0.2, 0), (2, 0.2, 1), (3, 0.2, 1), (5, 0.2, 1),
                                              (8, 0.2, 2), (10, 0.2, 2), (4, 0.5, 2), (3, 0.9, 2)])
def test_holdout_split_never_trains_on_validation(n, val_split, held):
    train, val = holdout_split(_items(n), val_split)
    assert len(val) == held and len(train) + len(val) == n
    assert not {d["image"] for d in train} & {d["image"] for d in val}
    assert (train, val) == holdout_split(list(reversed(_items(n))), val_split)  # the same labels, the same split


def test_publish_decision():
    assert publish_decision(0, 2, None, None, 0.01)[0] is False
    ok, reason = publish_decision(1, 2, 0.80, 0.95, 0.01)  # a big gain on one volume is not enough
    assert not ok and "min_holdout_volumes=2" in reason
    assert publish_decision(2, 2, 0.80, 0.805, 0.01)[0] is False  # within the noise margin
    ok, reason = publish_decision(2, 2, 0.80, 0.82, 0.01)
    assert ok and reason.startswith("published")
    assert publish_decision(2, 2, 0.80, None, 0.01)[0] is False
    assert publish_decision(1, 1, 0.80, 0.79, 0.0)[0] is False


def test_app_follows_the_bundles_context_slices(synthetic_dataset, tmp_path):
    """A 2.5D segmentation bundle (context_slices 3) gives the app a 3-channel network, inferer and training
    slices; the interactive model stays 2D with its 4 inputs, and its training takes the current masks from the
    2.5D model."""
    import json
    import shutil
    from types import SimpleNamespace

    from conftest import BUNDLE, TINY
    from lib.configs.deepedit import DeepEdit
    from lib.configs.segmentation import Segmentation
    from monai_quantunet.data import load_datalist

    bundle = tmp_path / "bundle"
    shutil.copytree(BUNDLE / "configs", bundle / "configs")
    for name in ("train.json", "inference.json"):
        config = json.loads((bundle / "configs" / name).read_text())
        (bundle / "configs" / name).write_text(json.dumps({**config, **TINY, "context_slices": 3}))
    conf = {"bundle_root": str(bundle), "use_pretrained_model": "false"}
    seg = Segmentation()
    seg.init("segmentation", str(tmp_path / "model"), conf, None)
    assert seg.network.in_channels == 3 and seg.infer().inferer().context_slices == 3
    items = load_datalist(synthetic_dataset / "dataset.json", "training")
    assert seg.infer().segment_file(items[0]["image"]).shape == (48, 48, 8)
    trainer = seg.trainer()
    assert trainer.val_inferer(None).context_slices == 3
    context = SimpleNamespace(train_datalist=items[:1], train_batch_size=2)
    assert next(iter(trainer.train_data_loader(context)))["image"].shape == (2, 3, *TINY["spatial_size"])

    deepedit = DeepEdit()
    deepedit.init("deepedit", str(tmp_path / "model"), conf, None)
    assert deepedit.network.in_channels == 4 and deepedit.context_slices == 1
    # click training reads its current masks from the 2.5D segmentation model, each slice with its neighbours
    clicks = deepedit.trainer()
    assert clicks.segmentation_network().in_channels == 3 and clicks.segmentation_context_slices == 3
    batch = next(iter(clicks.train_data_loader(context)))
    assert batch["image"].shape[1:] == (4, *deepedit.spatial_size)


def test_one_dice_in_every_bundle_and_the_app():
    """Every Dice that selects checkpoints or reports quality, in every bundle's configs and the app's trainer,
    is the project's one Dice: per volume, a tumor-free volume predicted tumor-free scores 1."""
    import json

    from lib.trainers import DeepEdit, Segmentation
    from lib.trainers.base import dice_handler

    def dice_configs(node):
        if isinstance(node, dict):
            if node.get("_target_") in ("MeanDice", "DiceMetric", "monai.handlers.MeanDice", "monai.metrics.DiceMetric"):
                yield node
            for value in node.values():
                yield from dice_configs(value)
        elif isinstance(node, list):
            for value in node:
                yield from dice_configs(value)

    found = []
    for config in sorted((REPO / "bundles").glob("*/configs/*.json")):
        for node in dice_configs(json.loads(config.read_text())):
            found.append(config.parent.parent.name)
            assert node["_target_"].endswith("DiceMetric") and node.get("ignore_empty") is False, (config, node)
    assert {"quantunet_brain_tumor_seg", "quantunet_interactive_tumor_seg"} <= set(found)
    assert dice_handler().metric_fn.ignore_empty is False
    for trainer in (Segmentation, DeepEdit):
        task = object.__new__(trainer)  # the metric methods read class constants only
        for metrics in (task.train_key_metric(None), task.val_key_metric(None)):
            (handler,) = metrics.values()
            assert isinstance(handler.metric_fn, type(dice_handler().metric_fn)) and handler.metric_fn.ignore_empty is False
