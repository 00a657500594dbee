"""Write an in-plane-resized copy of a decathlon dataset (uint8 NIfTI + the same dataset.json).

The copy holds exactly what the bundle's ``val_transforms`` feed the network (RAS, per-volume percentile
scaling, in-plane resize), stored as uint8 (x255: the input quantizer has 8 bits anyway). It is small enough to
carry to a remote GPU machine; the bundle's transforms are idempotent on it up to rounding.

    python scripts/resample_dataset.py --src ../shared/data/lgg_flair --dst .gpu/lgg128 --size 128 128
"""

import argparse
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np

from monai_quantunet.data import load_datalist
from monai_quantunet.transforms import val_transforms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", required=True)
    parser.add_argument("--dst", required=True)
    parser.add_argument("--size", type=int, nargs=2, default=[128, 128])
    args = parser.parse_args()
    src, dst = Path(args.src), Path(args.dst)
    datalist = json.loads((src / "dataset.json").read_text())
    transform = val_transforms(args.size)
    for key in ("training", "validation"):
        for item, rel in zip(load_datalist(src / "dataset.json", key), datalist[key]):
            out = transform(item)
            affine = np.asarray(out["image"].affine)
            for name in ("image", "label"):
                scale = 255.0 if name == "image" else 1.0
                arr = np.rint(out[name][0].numpy() * scale).clip(0, 255).astype(np.uint8)
                path = dst / rel[name]
                path.parent.mkdir(parents=True, exist_ok=True)
                nib.save(nib.Nifti1Image(arr, affine), str(path))
    shutil.copy(src / "dataset.json", dst / "dataset.json")
    print(f"wrote {dst}")


if __name__ == "__main__":
    main()
