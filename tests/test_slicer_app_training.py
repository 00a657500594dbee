"""The fine-tuning rules of the MONAI Label app (slicer_app/lib/trainers): held-out split and publish decision."""

from __future__ import annotations

import sys

import pytest

from conftest import REPO

pytest.importorskip("monailabel")
sys.path.insert(0, str(REPO / "slicer_app"))
from lib.trainers.base import holdout_split, publish_decision  # noqa: E402


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
