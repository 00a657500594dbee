"""Robot-user benchmark of click refinement (number of clicks, NoC), through the chain the server runs.

For each volume of a datalist's validation split: the auto-segmentation (the segmentation bundle's model through
``inference.segment_volume``), then clicks 1..N, each at the deepest point of the largest 3D error region of the
current result (missed tumor -> foreground click, false positive -> background click; ``interactive.robot_click``),
sent cumulatively as 3D Slicer sends them. The interactive model refines the current mask
(``interactive.refine_volume``: ``segment_volume`` + locality gate, as the MONAI Label ``deepedit`` task). The old
model (``--old-checkpoint``, 3 inputs: image + click maps, recomputing the whole volume) runs beside it, its
clicks placed on its own results. Reported: mean Dice per click, NoC@85 / NoC@90 (clicks to reach the Dice,
capped at N; 0 when the auto-segmentation reaches it), the share of clicks that lower the Dice, seconds per
click (and for a 256 x 256 x 40 volume), a PNG of the curves and a JSON.

    python benchmarks/click_robot.py --dataset-dir ../shared/data/lgg_flair --out benchmarks/results/click_robot.json
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from monai_quantunet.bundle import bundle_settings, network_from_bundle
from monai_quantunet.checkpoint import load_checkpoint
from monai_quantunet.data import load_datalist
from monai_quantunet.inference import segment_volume
from monai_quantunet.interactive import REACH_RADIUS, REACH_SLICES, refine_volume, robot_click
from monai_quantunet.metrics import volume_metrics

from paths import INTERACTIVE_BUNDLE, REPO, SEG_BUNDLE


def dice(pred: np.ndarray, label: np.ndarray) -> float:
    return volume_metrics(torch.from_numpy(np.asarray(pred, bool)), torch.from_numpy(np.asarray(label, bool)))["dice"]


def noc(curve: list[float], threshold: float, cap: int) -> int:
    """Clicks until the Dice reaches ``threshold`` (``curve[0]`` = no click), capped at ``cap``."""
    return next((n for n, d in enumerate(curve[: cap + 1]) if d >= threshold), cap)


def old_model_guidance(d: dict) -> dict:
    """The old deepedit model's inputs (image + foreground/background click maps, no current mask)."""
    from monai.data import MetaTensor

    from monai_quantunet.interactive import click_maps_3d, map_clicks, parse_clicks

    image = d["image"]
    grid = tuple(image.shape[1:])
    orig = tuple(int(s) for s in np.asarray(image.meta["spatial_shape"]).tolist())
    src = image.meta["original_affine"]
    fg = map_clicks(parse_clicks(d.get("foreground"), orig), src, image.affine, grid)
    bg = map_clicks(parse_clicks(d.get("background"), orig), src, image.affine, grid)
    data = torch.cat([image.as_tensor(), click_maps_3d(grid, fg, bg)], dim=0)
    return {**d, "image": MetaTensor(data, meta=image.meta, applied_operations=image.applied_operations)}


def run_robot(step, image: str, label: np.ndarray, auto: np.ndarray, clicks: int):
    """``step(current, fg, bg) -> mask``; returns the Dice curve (auto first), the clicks and the step times."""
    current, fg, bg = auto, [], []
    curve, placed, seconds = [dice(auto, label)], [], []
    for _ in range(clicks):
        click = robot_click(current, label)
        if click is None:  # perfect: nothing left to click
            curve.append(curve[-1])
            continue
        kind, point = click
        (fg if kind == "foreground" else bg).append(list(point))
        placed.append({"kind": kind, "ijk": list(point)})
        t = time.perf_counter()
        current = step(current, fg, bg)
        seconds.append(time.perf_counter() - t)
        curve.append(dice(current, label))
    return curve, placed, seconds


def summarize(rows: list[dict], key: str, clicks: int) -> dict:
    curves = np.asarray([r[key]["dice"] for r in rows])
    deltas = np.diff(curves, axis=1)
    secs = [s for r in rows for s in r[key]["seconds"]]
    return {
        "mean_dice": curves.mean(axis=0).round(4).tolist(),
        "noc85": float(np.mean([noc(c, 0.85, clicks) for c in curves])),
        "noc90": float(np.mean([noc(c, 0.90, clicks) for c in curves])),
        "share_clicks_lowering_dice": float((deltas < -1e-6).mean()),
        "share_first_clicks_lowering_dice": float((deltas[:, 0] < -1e-6).mean()),
        "volumes_first_click_lowering_dice": int((deltas[:, 0] < -1e-6).sum()),
        "seconds_per_click_mean": float(np.mean(secs)) if secs else None,
        "seconds_per_click_max": float(np.max(secs)) if secs else None,
    }


def time_256x256x40(make_step, image_path: str, auto: np.ndarray, repeats: int = 3) -> dict:
    """Seconds per click on a 256 x 256 x 40 volume (a validation volume's slices repeated to 40), with the
    machine's load average before and after (the machine may be shared: the minimum is the least disturbed)."""
    load_before = os.getloadavg()
    img = nib.load(image_path)
    data = np.asarray(img.dataobj)
    reps = int(np.ceil(40 / data.shape[2]))
    vol = np.concatenate([data] * reps, axis=2)[:, :, :40]
    mask = np.concatenate([auto] * reps, axis=2)[:, :, :40]
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "vol40.nii.gz")
        nib.save(nib.Nifti1Image(vol, img.affine), path)
        fg = [list(np.argwhere(mask)[len(np.argwhere(mask)) // 2])] if mask.any() else [[128, 128, 20]]
        step, times = make_step(path), []
        for r in range(repeats):
            t = time.perf_counter()
            step(mask, fg, [[10, 10, 20 + r]])
            times.append(time.perf_counter() - t)
    return {"shape": list(vol.shape), "seconds": [round(s, 3) for s in times], "median": float(np.median(times)),
            "min": float(np.min(times)), "threads": torch.get_num_threads(),
            "load_average_1min_before_after": [load_before[0], os.getloadavg()[0]]}


def plot(result: dict, path: Path) -> None:
    from matplotlib.figure import Figure  # no pyplot: the caller's backend is left alone

    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    x = np.arange(result["clicks"] + 1)
    for key, style, name in (("new", "o-", "interactive QuantU-Net (refines the current mask)"),
                             ("old", "s--", "old deepedit (recomputes the volume)")):
        if key in result["models"]:
            ax.plot(x, result["models"][key]["mean_dice"], style, label=name)
    auto = result["models"]["new"]["mean_dice"][0]
    for pts, ls in ((0, ":"), (2, "-."), (6, "--")):
        ax.axhline(auto + pts / 100, color="grey", ls=ls, lw=0.8)
    ax.set_xlabel("clicks (robot user: deepest point of the largest 3D error)")
    ax.set_ylabel(f"mean Dice ({result['num_volumes']} validation volumes)")
    ax.set_title("Click refinement from the auto-segmentation (grey: auto, +2, +6 points)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def markdown_table(result: dict) -> str:
    """The benchmark's table: mean Dice after 0, 1, 2, 3, 5, 10 clicks, NoC@85 / NoC@90, share of clicks lowering
    the Dice, seconds per click; then the targets with the measured gap."""
    cols = [n for n in (0, 1, 2, 3, 5, 10) if n <= result["clicks"]]
    head = "| model | " + " | ".join("auto" if n == 0 else f"{n} click{'s' if n > 1 else ''}" for n in cols)
    head += " | NoC@85 | NoC@90 | clicks lowering Dice | first clicks lowering Dice | s / click |"
    lines = [head, "| --- |" + " ---: |" * (len(cols) + 5)]
    names = {"new": "`deepedit` (this bundle: refines the current mask)", "old": "previous `deepedit` (recomputes the volume)"}
    for key in ("new", "old"):
        m = result["models"].get(key)
        if m is None:
            continue
        d = m["mean_dice"]
        lines.append(f"| {names[key]} | " + " | ".join(f"{d[n]:.4f}" for n in cols)
                     + f" | {m['noc85']:.2f} | {m['noc90']:.2f} | {100 * m['share_clicks_lowering_dice']:.1f}%"
                     + f" | {m['volumes_first_click_lowering_dice']} of {result['num_volumes']}"
                     + f" | {m['seconds_per_click_mean']:.2f} |")
    t = result["targets"]
    ok = lambda b: "met" if b else "**not met**"  # noqa: E731
    lines += [
        "",
        f"Targets (mean Dice of the auto-segmentation {result['models']['new']['mean_dice'][0]:.4f}): first click "
        f"never lowers the mean Dice: {ok(t['first_click_not_lower'])}; after 1 click >= +2 points: "
        f"{t['after_1_click_gain_points']:+.2f} ({ok(t['after_1_click_gain_points'] >= 2)}); after 5 clicks >= +6 "
        f"points: {t['after_5_clicks_gain_points']:+.2f} ({ok(t['after_5_clicks_gain_points'] >= 6)}"
        + (f", gap {6 - t['after_5_clicks_gain_points']:.2f} points" if t['after_5_clicks_gain_points'] < 6 else "")
        + f"); < 1 s per click for 256 x 256 x 40 on 2 cores: {timing_sentence(result)}",
    ]
    return "\n".join(lines)


def timing_sentence(result: dict) -> str:
    """The 256 x 256 x 40 timings of the run and of the re-measurements (``--timing-only``), with threads and load."""
    runs = [dict(result["timing_256x256x40"], threads=result["threads"])] + result.get("timing_256x256x40_remeasured", [])
    parts = [f"{r['median']:.2f} s median with {r['threads']} thread(s)"
             + (f" (load average {r['load_average_1min_before_after'][0]:.1f})" if "load_average_1min_before_after" in r else "")
             for r in runs]
    best = min(r["median"] for r in runs)
    return "; ".join(parts) + f" ({'met' if best < 1 else '**not met**'} at best: {best:.2f} s)."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset-dir", required=True, help="folder with dataset.json (its validation split is used)")
    parser.add_argument("--checkpoint", default=str(INTERACTIVE_BUNDLE / "models" / "model.pt"))
    parser.add_argument("--segmentation-checkpoint", default=str(SEG_BUNDLE / "models" / "model.pt"))
    parser.add_argument("--old-checkpoint", default=None,
                        help="the previous deepedit model (3 inputs, image + click maps) for the comparison curve; "
                             "it was removed in issue 13: `git show 02c0c54:bundles/quantunet_brain_tumor_seg/models/"
                             "deepedit_model.pt > old.pt`")
    parser.add_argument("--clicks", type=int, default=10)
    parser.add_argument("--max-cases", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "click_robot.json"))
    parser.add_argument("--timing-only", action="store_true",
                        help="only re-measure the 256 x 256 x 40 timing (10 repeats) into an existing --out JSON")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from machine import machine_info

    spatial = (128, 128)
    seg_net = load_checkpoint(network_from_bundle(SEG_BUNDLE), args.segmentation_checkpoint).eval()
    seg_context = int(bundle_settings(SEG_BUNDLE)["context_slices"])

    def auto_segmentation(image: str) -> np.ndarray:
        return segment_volume(seg_net, image, spatial, context_slices=seg_context)

    new = load_checkpoint(network_from_bundle(INTERACTIVE_BUNDLE), args.checkpoint).eval()
    steps = {"new": lambda image: (lambda cur, fg, bg: refine_volume(new, image, cur, fg, bg, spatial))}
    if args.old_checkpoint:
        old = load_checkpoint(network_from_bundle(SEG_BUNDLE, in_channels=3), args.old_checkpoint).eval()
        steps["old"] = lambda image: (lambda cur, fg, bg: segment_volume(old, image, spatial, guidance=old_model_guidance,
                                                                        foreground=fg, background=bg))

    items = load_datalist(Path(args.dataset_dir) / "dataset.json", "validation")[: args.max_cases or None]
    if args.timing_only:
        out = Path(args.out)
        result = json.loads(out.read_text())
        timing = time_256x256x40(steps["new"], items[0]["image"], auto_segmentation(items[0]["image"]), 10)
        result.setdefault("timing_256x256x40_remeasured", []).append(timing)
        out.write_text(json.dumps(result, indent=1))
        out.with_suffix(".md").write_text(markdown_table(result) + "\n")
        print(json.dumps(timing))
        return
    rows = []
    for item in items:
        label = np.asarray(nib.load(item["label"]).dataobj) > 0
        t = time.perf_counter()
        auto = auto_segmentation(item["image"])
        row = {"case": Path(item["image"]).name.split(".")[0], "shape": list(label.shape),
               "auto_seconds": time.perf_counter() - t}
        for key, make in steps.items():
            curve, placed, secs = run_robot(make(item["image"]), item["image"], label, auto, args.clicks)
            row[key] = {"dice": curve, "clicks": placed, "seconds": secs}
        rows.append(row)
        print(f"{row['case']:<28} " + " | ".join(
            f"{k}: " + " ".join(f"{d:.3f}" for d in row[k]["dice"][:6]) for k in steps), flush=True)

    result = {
        "protocol": "robot user from the auto-segmentation; click n at the deepest point of the largest 3D error "
                    "region of the current result (FN -> foreground, FP -> background), clicks sent cumulatively",
        "dataset": str(Path(args.dataset_dir) / "dataset.json"), "split": "validation", "num_volumes": len(rows),
        "clicks": args.clicks, "reach": {"slices": REACH_SLICES, "radius_pixels_at_128": REACH_RADIUS},
        "checkpoints": {"new": args.checkpoint, "segmentation": args.segmentation_checkpoint,
                        "old": args.old_checkpoint if "old" in steps else None},
        "threads": args.threads, "machine": machine_info(),
        "models": {k: summarize(rows, k, args.clicks) for k in steps},
        "auto_seconds_mean": float(np.mean([r["auto_seconds"] for r in rows])),
        "timing_256x256x40": time_256x256x40(steps["new"], items[0]["image"],
                                             auto_segmentation(items[0]["image"])),
        "cases": rows,
    }
    m = result["models"]["new"]["mean_dice"]
    result["targets"] = {
        "first_click_not_lower": m[1] >= m[0],
        "after_1_click_gain_points": round(100 * (m[1] - m[0]), 2), "after_1_click_target_points": 2.0,
        "after_5_clicks_gain_points": round(100 * (m[5] - m[0]), 2) if len(m) > 5 else None,
        "after_5_clicks_target_points": 6.0,
        "seconds_per_click_256x256x40": result["timing_256x256x40"]["median"], "seconds_target": 1.0,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    plot(result, out.with_suffix(".png"))
    out.with_suffix(".md").write_text(markdown_table(result) + "\n")
    for k, s in result["models"].items():
        print(f"{k}: Dice {' '.join(f'{d:.3f}' for d in s['mean_dice'])} | NoC@85 {s['noc85']:.2f} NoC@90 "
              f"{s['noc90']:.2f} | lowering {100 * s['share_clicks_lowering_dice']:.1f}% | "
              f"{s['seconds_per_click_mean']:.2f} s/click")
    print(json.dumps(result["targets"]))


if __name__ == "__main__":
    main()
