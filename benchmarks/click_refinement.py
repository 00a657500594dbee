"""Does the interactive (deepedit) QuantU-Net respond to clicks on real volumes?

For each validation volume: automatic result (no clicks); + one foreground click at the deepest point of the
largest missed region; + one background click at the deepest point of the remaining false positives. Clicks go
through the same path as the MONAI Label app (IJK of the original volume -> click maps -> slice-wise inference ->
inverted to the input geometry). Prints a table, writes JSON.

    python benchmarks/click_refinement.py --dataset-dir ../shared/data/lgg_flair --out click_refinement.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from monai_quantunet.data import load_datalist
from monai_quantunet.checkpoint import load_state_dict
from monai_quantunet.inference import segment_volume
from monai_quantunet.interactive import AddClickGuidanced, deepest_point
from monai_quantunet.bundle import find_bundle_root
from monai_quantunet.bundle import bundle_settings, network_from_bundle
from monai_quantunet.metrics import volume_metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset-dir", required=True)
    parser.add_argument("--checkpoint", default=str(Path(find_bundle_root()) / "models" / "deepedit_model.pt"))
    parser.add_argument("--max-cases", type=int, default=0)
    parser.add_argument("--out", default="click_refinement.json")
    args = parser.parse_args()
    spatial_size = tuple(bundle_settings()["spatial_size"])
    net = network_from_bundle(in_channels=3)
    net.load_state_dict(load_state_dict(args.checkpoint))
    net.eval()
    clicks = AddClickGuidanced()

    def predict(path: str, fg: list, bg: list) -> np.ndarray:
        return segment_volume(net, path, spatial_size, guidance=clicks, foreground=fg, background=bg)  # (X, Y, Z)

    def dice(pred: np.ndarray, label: np.ndarray) -> float:
        return volume_metrics(torch.from_numpy(pred), torch.from_numpy(label))["dice"]

    items = load_datalist(Path(args.dataset_dir) / "dataset.json", "validation")
    rows = []
    print(f"{'case':<24} {'auto':>6} {'+fg':>6} {'+bg':>6} {'FP before bg':>13} {'FP after':>9}")
    for item in items[: args.max_cases or None]:
        label = np.asarray(nib.load(item["label"]).dataobj) > 0
        auto = predict(item["image"], [], [])
        missed = label & ~auto
        fg = [list(deepest_point(missed))] if missed.any() else []
        with_fg = predict(item["image"], fg, [])
        false_pos = with_fg & ~label
        bg = [list(deepest_point(false_pos))] if false_pos.any() else []
        both = predict(item["image"], fg, bg)
        row = {"case": Path(item["image"]).name.split(".")[0], "dice_auto": dice(auto, label), "dice_fg": dice(with_fg, label),
               "dice_fg_bg": dice(both, label), "fp_before_bg": int(false_pos.sum()), "fp_after_bg": int((both & ~label).sum())}
        rows.append(row)
        print(f"{row['case']:<24} {row['dice_auto']:6.3f} {row['dice_fg']:6.3f} {row['dice_fg_bg']:6.3f} "
              f"{row['fp_before_bg']:13d} {row['fp_after_bg']:9d}", flush=True)
    mean = {k: float(np.mean([r[k] for r in rows])) for k in rows[0] if k != "case"}
    print(f"{'mean':<24} {mean['dice_auto']:6.3f} {mean['dice_fg']:6.3f} {mean['dice_fg_bg']:6.3f} "
          f"{mean['fp_before_bg']:13.0f} {mean['fp_after_bg']:9.0f}")
    Path(args.out).write_text(json.dumps({"checkpoint": args.checkpoint, "mean": mean, "cases": rows}, indent=1))


if __name__ == "__main__":
    main()
