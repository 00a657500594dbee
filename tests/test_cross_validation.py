"""Patient-level cross-validation of ``benchmarks/train_sweep.py --folds``: folds, per-case metrics, threshold
calibration on the other folds and the report, on generated datalists and evaluation records (no training)."""

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import train_sweep  # noqa: E402
import update_docs  # noqa: E402
from train_sweep import THRESHOLDS  # noqa: E402


def _datalist(root: Path, n_train: int = 16, n_val: int = 4) -> Path:
    entry = lambda i: {"image": f"imagesTr/case{i:02d}.nii.gz", "label": f"labelsTr/case{i:02d}.nii.gz"}  # noqa: E731
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset.json").write_text(json.dumps({"training": [entry(i) for i in range(n_train)],
                                                   "validation": [entry(i) for i in range(n_train, n_train + n_val)]}))
    return root


def test_folds_are_deterministic_disjoint_and_fold0_is_the_validation_split(tmp_path):
    root = _datalist(tmp_path)
    folds = train_sweep.cv_folds(root, 5)
    assert folds == train_sweep.cv_folds(root, 5) and folds != train_sweep.cv_folds(root, 5, seed=1)
    assert folds[0] == ["case16", "case17", "case18", "case19"]
    assert sorted(c for f in folds for c in f) == [f"case{i:02d}" for i in range(20)] and [len(f) for f in folds] == [4] * 5
    path = train_sweep.fold_datalist(root, folds[2], tmp_path / "fold2" / "dataset.json")
    d = json.loads(path.read_text())
    assert [train_sweep.case_name(e) for e in d["validation"]] == folds[2]
    assert not {train_sweep.case_name(e) for e in d["training"]} & set(folds[2]) and len(d["training"]) == 16


def _case(name: str, label: int, inter_at: dict[float, tuple[int, int]]) -> dict:
    """An evaluation record: (pred, inter) voxels per threshold from ``inter_at`` (the nearest listed threshold
    below), the same for both image sets and both TTA modes."""
    counts = {"pred": [], "inter": []}
    for t in THRESHOLDS:
        pred, inter = inter_at[max(k for k in inter_at if k <= t)]
        counts["pred"].append(pred)
        counts["inter"].append(inter)
    record = {"label": label, "plain": counts, "flip": counts}
    return {"case": name, "original": record, "skull_stripped": record}


def test_case_metrics_and_threshold_calibrated_on_the_other_folds():
    # logit > -1 finds the whole tumor, logit > 0 half of it; fold 1 alone would prefer threshold 0
    good = _case("a", 100, {-4.0: (400, 100), -1.0: (100, 100), 0.0: (50, 50)})
    m = train_sweep._case_metrics(good)
    assert m == {"dice": pytest.approx(2 * 50 / 150), "recall": 0.5, "precision": 1.0}
    assert train_sweep._case_metrics(good, threshold=-1.0)["dice"] == 1.0
    empty = _case("e", 0, {-4.0: (0, 0)})
    assert train_sweep._case_metrics(empty)["dice"] == 1.0
    other = _case("b", 100, {-4.0: (100, 100), 0.0: (100, 100)})
    by_fold = {0: [good], 1: [other, _case("c", 100, {-4.0: (300, 100), 0.0: (100, 100)})]}
    assert train_sweep.calibrated_threshold(by_fold, 0) == 0.0  # chosen on fold 1, not on the case it scores
    assert train_sweep.calibrated_threshold(by_fold, 1) in (-1.0, -0.5)
    rows = train_sweep.cv_summary(by_fold)
    assert rows["a"]["dice_calibrated"] == pytest.approx(rows["a"]["dice"]) and rows["b"]["fold"] == 1


def _fold_results(root: Path, arms: dict[str, int], **run) -> None:
    """Kept results of two folds of two patients for each arm (arm -> overlap voxels of its first patient, the
    second one more, out of 100), as ``cv_report`` reads them; ``run``: extra ``run.json`` keys, a callable
    value called with the fold."""
    folds = [["p0", "p1"], ["p2", "p3"]]
    (root / "folds.json").write_text(json.dumps({"folds": folds, "rule": "by hand"}))
    bits = {"mean_weight_bits": 4.0, "size_weighted_weight_bits": 4.0, "mean_activation_bits": 4.0,
            "weight_memory_bytes": 1000}
    for arm, inter in arms.items():
        for f, cases in enumerate(folds):
            kept = train_sweep.run_dir(root, arm) / f"fold{f}"
            kept.mkdir(parents=True)
            records = [_case(c, 100, {-4.0: (100, inter + i)}) for i, c in enumerate(cases)]
            (kept / "cases.json").write_text(json.dumps({"cases": records, "bits": bits}))
            extra = {k: v(f) if callable(v) else v for k, v in run.items()}
            (kept / "run.json").write_text(json.dumps({"run": arm, "fold": f, "epoch_seconds": [1.0], **extra}))


def test_report_pairs_arms_on_patients_and_writes_tables(tmp_path):
    _fold_results(tmp_path, {"fixed4": 50, "learned@0.125:init4:kd": 80},
                  overrides={"max_epochs": 2, "samples_per_epoch": 8}, wall_seconds=60.0, evaluation_seconds=30.0,
                  command="python benchmarks/train_sweep.py --preset cv",
                  machine={"cpu": "test CPU", "logical_cores": 2, "memory_gib": 1.0, "gpu": None, "python": "3", "torch": "2"})
    train_sweep.cv_report(tmp_path)
    arms = json.loads((tmp_path / "results.json").read_text())["arms"]
    learned = arms["learned@0.125:init4:kd"]
    assert learned["patients"] == 4 and learned["dice"][0] == pytest.approx((0.8 + 0.81) / 2)
    assert learned["dice - fixed4"][:2] == pytest.approx([30.0, 0.0], abs=1e-9) and learned["dice - fixed4"][2] == 4
    assert "learned@0.125:init4:kd" in (tmp_path / "results.md").read_text()
    assert (tmp_path / "cv.png").read_bytes()[:4] == b"\x89PNG"
    docs = tmp_path / "docs"
    docs.mkdir()
    block = "<!-- BEGIN generated: cv (x) -->\nSTALE\n<!-- END generated: cv -->\n"
    (docs / "README.md").write_text("# bundle\n" + block)
    (tmp_path / "README.md").write_text("# top-level README\n" + block)
    update_docs.main(["--cv", str(tmp_path), "--bundle-docs", str(docs), "--readme", str(tmp_path / "README.md")])
    text = (docs / "README.md").read_text()
    assert "STALE" not in text and "| learned@0.125:init4:kd | 2 (4) |" in text and "0.1 h of training" in text
    assert (docs / "images" / "sweep_cv.png").is_file() and "| fixed4 |" in text
    readme = (tmp_path / "README.md").read_text()
    assert "STALE" not in readme and "| learned@0.125:init4:kd (4) | 4.00 / 4.00 | 4.00 | 0.8050 ± 0.0029 |" in readme
    assert "| fixed4 (4) |" in readme and "+30.00 ± 0.00 |" in readme


def test_distilled_run_names():
    assert train_sweep.run_overrides("learned@0.125:init4:kd") == {
        "quantization": "learned", "lambda_bits": 0.125, "bit_reduction": "mean", "bit_width": 4, "max_bit_width": 4,
        "distill_weight": train_sweep.DISTILL_WEIGHT}
    with pytest.raises(ValueError, match="teacher"):
        train_sweep.run_overrides("float:kd")


def test_then_runs_continue_from_their_first_stage_with_widths_frozen(tmp_path):
    name = "learned@0.125:init4:kd:then10"
    assert train_sweep.run_overrides(name) == train_sweep.run_overrides("learned@0.125:init4:kd")
    stage2 = train_sweep.continuation_overrides(name, tmp_path / "stage1" / "model.pt")
    assert stage2 == {"max_epochs": 10, "val_interval": 10, "learning_rate": train_sweep.CONTINUATION_LEARNING_RATE,
                      "init_checkpoint": str(tmp_path / "stage1" / "model.pt"), "freeze_bit_widths": True}
    assert train_sweep.continuation_overrides("fixed4:then3", tmp_path)["freeze_bit_widths"] is False
    assert train_sweep.continuation_overrides("fixed4", tmp_path) == {}
    for bad in ("float:then3", "fixed4:then3:kd"):
        with pytest.raises(ValueError):
            train_sweep.run_overrides(bad)
    # the report pairs every arm with the fixed 4-bit arm of any schedule and shows each fold's total epochs
    _fold_results(tmp_path, {"fixed4:then10": 50, "learned@0.125:init4:then10": 60},
                  overrides=lambda f: {"max_epochs": 20 - 4 * f}, continuation={"max_epochs": 10})
    train_sweep.cv_report(tmp_path)
    learned = json.loads((tmp_path / "results.json").read_text())["arms"]["learned@0.125:init4:then10"]
    assert learned["dice - fixed4:then10"][:2] == pytest.approx([10.0, 0.0], abs=1e-9) and learned["epochs"] == "26/30"


def test_threshold_is_calibrated_on_the_training_cases_and_only_read_off_the_held_out_ones(synthetic_dataset, tmp_path,
                                                                                           monkeypatch):
    import calibrate_threshold

    def case(name: str, dice_at) -> dict:  # label = prediction = 100 voxels: Dice = overlap / 100
        counts = {"label": 100, "plain": {"pred": [100] * len(train_sweep.THRESHOLDS),
                                          "inter": [round(100 * dice_at(t)) for t in train_sweep.THRESHOLDS]}}
        return {"case": name, "original": counts, "skull_stripped": counts}

    datalist = json.loads((synthetic_dataset / "dataset.json").read_text())
    held_out = [train_sweep.case_name(e) for e in datalist["validation"]]
    kept = tmp_path / "results" / "fixed4" / "fold0"
    kept.mkdir(parents=True)
    (kept / "run.json").write_text(json.dumps({"overrides": {"quantization": "fixed", "bit_width": 4}}))
    (kept / "cases.json").write_text(json.dumps({"cases": [case(c, lambda t: 0.8 if t == -1.0 else 0.5) for c in held_out]}))
    seen = []

    def fake_evaluate(overrides, checkpoint, cases, roots, flip=True):
        seen.append((sorted(cases), flip))
        return {"cases": [case(c, lambda t: 0.9 if t == -1.0 else 0.6) for c in cases]}

    monkeypatch.setattr(calibrate_threshold, "evaluate_cases", fake_evaluate)
    r = calibrate_threshold.calibrate("fixed4", 0, tmp_path / "out", tmp_path / "results", synthetic_dataset)
    assert seen == [(sorted(train_sweep.case_name(e) for e in datalist["training"]), False)]  # never the held-out ones
    assert r["threshold"] == -1.0 and r["training_cases"] == len(datalist["training"])
    assert r["held_out"]["original"]["dice_at_0"][0] == pytest.approx(0.5)
    assert r["held_out"]["skull_stripped"]["dice_calibrated"][0] == pytest.approx(0.8)
    assert json.loads((kept / "calibration.json").read_text())["threshold"] == -1.0
