"""The benchmark scripts: helpers, and the whole sweep -> cost -> docs pipeline on generated volumes."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import BUNDLE, INTERACTIVE_BUNDLE, REPO

sys.path.insert(0, str(REPO / "benchmarks"))

import results_table  # noqa: E402
import train_sweep  # noqa: E402
import update_docs  # noqa: E402


def test_run_names_map_to_bundle_overrides():
    assert train_sweep.run_overrides("float") == {"quantization": "float"}
    assert train_sweep.run_overrides("fixed3") == {"quantization": "fixed", "bit_width": 3}
    assert train_sweep.run_overrides("learned@0.05:size_weighted:init4") == {
        "quantization": "learned", "lambda_bits": 0.05, "bit_reduction": "size_weighted", "bit_width": 4, "max_bit_width": 4}
    assert train_sweep.run_overrides("learned@1:bops") == {  # the paper's setting: widths start at 8, clamped to [2, 8]
        "quantization": "learned", "lambda_bits": 1.0, "bit_reduction": "bops", "bit_width": 8, "max_bit_width": 8}
    assert train_sweep.run_overrides("fixed4:ctx3") == {"quantization": "fixed", "bit_width": 4, "context_slices": 3}
    assert train_sweep.run_dir("out", "learned@0.5:init4", 2) == Path("out/learned_0.5_init4/seed2")
    with pytest.raises(ValueError, match="bad run name"):
        train_sweep.run_overrides("fixed9")


@pytest.mark.parametrize("extra, message", [
    (["--only-folds", "5"], "folds are 0..4"),
    (["--only-folds", "0", "1", "--float-init", "float_model.pt"], "fold 0 only"),
    (["--float-init", "float_model.pt"], "fold 0 only"),
])
def test_cross_validation_refuses_unknown_folds_and_a_float_init_that_saw_held_out_patients(extra, message, tmp_path):
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "train_sweep.py"), "--preset", "cv", "--folds", "5",
                             "--out", str(tmp_path), "--results", str(tmp_path), *extra], capture_output=True, text=True)
    assert result.returncode == 2 and message in result.stderr and not any(tmp_path.iterdir())


def test_paired_difference_matches_volumes_by_case():
    a = {"cases": [{"case": "x", "dice": 0.5}, {"case": "y", "dice": 0.9}]}
    b = {"cases": [{"case": "y", "dice": 0.8}, {"case": "x", "dice": 0.3}]}
    mean, se = results_table.paired_difference(a, b)
    assert mean == pytest.approx(15.0) and se == pytest.approx(5.0)
    with pytest.raises(ValueError, match="same"):
        results_table.paired_difference({"cases": a["cases"][:1]}, b)


def test_pareto_front_keeps_only_undominated_points():
    points = [(10.0, 0.6), (5.0, 0.7), (5.0, 0.65), (20.0, 0.8), (30.0, 0.75)]
    assert results_table.pareto_front(points) == [1, 3]


def test_epoch_seconds_subtracts_validation(tmp_path):
    log = tmp_path / "train.log"
    log.write_text(
        "x - ignite.engine.engine.SupervisedTrainer - INFO - Epoch[1] Complete. Time taken: 00:01:10.500\n"
        "x - ignite.engine.engine.SupervisedEvaluator - INFO - Epoch[2] Complete. Time taken: 00:00:20.000\n"
        "x - ignite.engine.engine.SupervisedTrainer - INFO - Epoch[2] Complete. Time taken: 00:01:30.000\n"
    )
    assert train_sweep.epoch_seconds(log) == [70.5, 70.0]


def test_plateau_measures_the_last_quarter_and_the_best_and_last_epochs():
    history = [{"epoch": e, "val_dice": 0.5 + 0.01 * min(e, 6)} for e in range(2, 17, 2)]  # flat from epoch 6
    p = train_sweep.plateau(history)
    assert p == {"epochs": 16, "best_epoch": 6, "best_dice": pytest.approx(56.0), "final_dice": pytest.approx(56.0),
                 "last_quarter_range": 0.0, "last_quarter_slope": 0.0}
    rising = train_sweep.plateau([{"epoch": e, "val_dice": 0.01 * e} for e in range(1, 9)])
    assert rising["last_quarter_slope"] == pytest.approx(1.0) and rising["last_quarter_range"] == pytest.approx(1.0)


def test_replace_block_rewrites_only_between_markers():
    text = "a\n<!-- BEGIN generated: x (note) -->\nold\n<!-- END generated: x -->\nb\n"
    assert update_docs.replace_block(text, "x", "new $1 \\1", "f") == (
        "a\n<!-- BEGIN generated: x (note) -->\nnew $1 \\1\n<!-- END generated: x -->\nb\n")
    with pytest.raises(ValueError, match="f: no .*block"):
        update_docs.replace_block(text, "y", "new", "f")


def _summary(dice: float, memory: float, bits: float) -> dict:
    cases = [{"case": "a", "dice": dice - 0.05}, {"case": "b", "dice": dice + 0.05}]
    return {"cases": cases, "dice": {"mean": dice, "std": 0.1}, "accuracy": {"mean": 0.99}, "iou": {"mean": dice - 0.1},
            "bits": {"weight_memory_bytes": memory, "mean_weight_bits": bits, "size_weighted_weight_bits": bits,
                     "mean_activation_bits": bits, "compression_vs_float32": 32 / bits}, "cost_per_slice": {"bops": 1e9}}


def test_findings_compare_learned_runs_with_fixed_baselines_of_the_same_size():
    results = {"float": _summary(0.70, 1000.0, 32), "fixed4": _summary(0.68, 125.0, 4), "fixed3": _summary(0.60, 94.0, 3),
               "learned@0.25": _summary(0.66, 100.0, 3.2), "learned@1.0": _summary(0.64, 95.0, 3.02)}
    text = "\n".join(update_docs.findings(results, "learned@0.25"))
    assert "`learned@0.25`, Dice 0.6600 at 0.1 KiB (3.20 mean weight bits), does **not** beat fixed4's 0.6800" in text
    # 95 bytes is within 2% of fixed3's 94: the same size
    assert "fixed3's weight memory or less: `learned@1.0`, Dice 0.6400" in text and "beats fixed3's 0.6000" in text
    assert "Dice -4.00 ± 0.00 points vs the float run" in text
    results["learned@0.25"]["dice"]["mean"] = 0.69
    assert "beats fixed4's 0.6800" in "\n".join(update_docs.findings(results, "learned@0.25"))


def test_sweep_cost_and_docs_pipeline(synthetic_dataset, tmp_path):
    """Short runs on generated volumes (two seeds of one) -> evaluation, kept results, tables, plots; a second
    call resumes (trains nothing); cost report; docs blocks from both."""
    out, results_dir = tmp_path / "sweep", tmp_path / "results"
    small = ["--set", "spatial_size=[32,32]", "channels=[4,8,16,32,64]"]
    sweep = [sys.executable, str(REPO / "benchmarks" / "train_sweep.py"), "--dataset-dir", str(synthetic_dataset),
             "--epochs", "2", "--samples-per-epoch", "32", "--batch-size", "8", "--init-checkpoint", "", "--out", str(out),
             "--results", str(results_dir), *small]
    subprocess.run([*sweep, "--runs", "float", "learned@0.25:init4"], check=True, cwd=REPO, capture_output=True, text=True)
    subprocess.run([*sweep, "--runs", "fixed4", "learned@0.25:init4", "--seeds", "0", "1"], check=True, cwd=REPO,
                   capture_output=True, text=True)
    resumed = subprocess.run([*sweep, "--runs", "float", "learned@0.25:init4"], check=True, cwd=REPO, capture_output=True,
                             text=True)
    assert "0 run(s) to train" in resumed.stdout
    shutil.rmtree(out)  # the tables are rebuilt from the kept results alone
    subprocess.run([*sweep, "--runs", "float", "--report-only"], check=True, cwd=REPO, capture_output=True, text=True)
    report = json.loads((results_dir / "results.json").read_text())
    results = report["first_seed"]
    assert list(results) == ["float", "fixed4", "learned@0.25:init4"]
    assert results["float"]["bits"]["mean_weight_bits"] == 32
    assert results["learned@0.25:init4"]["bits"]["mean_weight_bits"] <= 4
    assert report["seeds"]["fixed4"]["seeds"] == [0, 1]
    assert set(report["seeds"]["comparisons"]) == {"learned@0.25:init4 vs fixed4"}
    assert report["plateau"]["float"]["epochs"] == 2
    for name in ("pareto.png", "curves.png", "widths_by_lambda.png", "results.md", "training_time.json"):
        assert (results_dir / name).stat().st_size > 0, name
    image = json.loads((synthetic_dataset / "dataset.json").read_text())["validation"][0]["image"]
    cost_json = tmp_path / "cost.json"
    subprocess.run([sys.executable, str(REPO / "benchmarks" / "cost.py"), "--volume", str(synthetic_dataset / image),
                    "--channels", "4", "8", "16", "32", "64", "--spatial-size", "32", "32", "--repeats", "1",
                    "--train-repeats", "1", "--data-volumes", "2", "--threads", "1", "--out", str(cost_json)],
                   check=True, cwd=REPO,
                   capture_output=True, text=True)
    cost = json.loads(cost_json.read_text())
    assert set(cost["training"]["models"]) == {"float twin", "QuantU-Net fixed 4-bit", "QuantU-Net learned widths"}
    assert cost["inference"]["float twin (PyTorch)"]["ratio_to_float"] == 1.0
    pipeline = cost["training"]["data_pipeline"]
    assert pipeline["volumes"] == 2 and len(pipeline["seconds"]) == 1 and pipeline["slices_per_second"] > 0
    # randomly initialised: logits of ~1e-3 with many near 0, so a mask can flip on a 1e-10 difference; compare logits
    check = cost["qcdq_vs_fake_quant"]
    assert check["max_abs_logit_diff"] <= 1e-4 * check["max_abs_logit"]

    docs = tmp_path / "bundle" / "docs"
    shutil.copytree(BUNDLE / "docs", docs)
    shutil.copytree(BUNDLE / "configs", docs.parent / "configs")
    readme = tmp_path / "README.md"
    shutil.copyfile(REPO / "README.md", readme)
    update_docs.main(["--sweep", str(results_dir), "--cost", str(cost_json), "--readme", str(readme), "--bundle-docs",
                      str(docs), "--shipped", f"float={results_dir / 'float' / 'seed0' / 'summary.json'}",
                      f"shipped: my model={results_dir / 'learned_0.25_init4' / 'seed0' / 'summary.json'}"])
    text = (docs / "README.md").read_text()
    assert text.count("| shipped: my model |") == 1 and readme.read_text().count("| shipped: my model |") == 1
    dice = results["learned@0.25:init4"]["dice"]
    metrics = json.loads((docs.parent / "configs" / "metadata.json").read_text())["eval_metrics"]
    assert metrics["mean_dice"] == round(dice["mean"], 4)
    assert f"| learned@0.25:init4 | {dice['mean']:.4f} ({dice['std']:.3f}) |" in text
    assert f"| float twin | {cost['training']['models']['float twin']['seconds_per_epoch']:.1f} | 1.00 |" in text
    assert (docs / "images" / "sweep_widths_by_lambda.png").is_file() and (docs / "images" / "sweep_curves.png").is_file()
    assert "| learned@0.25:init4 − fixed4 |" in text
    assert f"{dice['mean']:.4f}" in readme.read_text()


def test_click_robot_and_finetune_tables_are_generated(tmp_path):
    """The robot-user and fine-tuning tables (and the interactive bundle's eval_metrics) are written from the
    committed results, never typed: regenerating them from benchmarks/results changes nothing."""
    bundle = tmp_path / "quantunet_interactive_tumor_seg"
    shutil.copytree(INTERACTIVE_BUNDLE / "docs", bundle / "docs")
    shutil.copytree(INTERACTIVE_BUNDLE / "configs", bundle / "configs")
    app_readme = tmp_path / "app_README.md"
    shutil.copyfile(REPO / "slicer_app" / "README.md", app_readme)
    update_docs.main(["--click-robot", str(REPO / "benchmarks" / "results" / "click_robot.json"),
                      "--finetune", str(REPO / "benchmarks" / "results" / "finetune.json"),
                      "--interactive-docs", str(bundle / "docs" / "README.md"), "--app-readme", str(app_readme)])
    assert (bundle / "docs" / "README.md").read_text() == (INTERACTIVE_BUNDLE / "docs" / "README.md").read_text()
    assert app_readme.read_text() == (REPO / "slicer_app" / "README.md").read_text()
    assert (bundle / "configs" / "metadata.json").read_text() == (INTERACTIVE_BUNDLE / "configs" / "metadata.json").read_text()
