"""Data preparation: the Kaggle LGG release -> NIfTI + datalist, synthetic tumor volumes, datalist loading.

The LGG conversion reproduces ``../shared/data/lgg_flair`` voxel for voxel: FLAIR is channel 1 of each
``<case>_<slice>.tif``; the volume is indexed ``[x = column, y = flipped row, z = slice number - 1]`` with
affine ``diag(-1, -1, 1)`` (the release kept no spacing: 1 mm is written, and is not the truth); masks
(0/255) become 0/1.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

__all__ = [
    "LGG_AFFINE",
    "LGG_CHANNELS",
    "convert_lgg_case",
    "prepare_lgg",
    "make_synthetic_dataset",
    "make_skull_stripped_dataset",
    "write_datalist",
    "load_datalist",
    "list_volumes",
    "SliceDataset",
]

LGG_AFFINE = np.diag([-1.0, -1.0, 1.0, 1.0])
LGG_CHANNELS = {"pre": 0, "flair": 1, "post": 2}
_SLICE_RE = re.compile(r"^(?P<case>.+)_(?P<slice>\d+)\.tif$")


def _save_nifti(array: np.ndarray, path: Path, affine: np.ndarray = LGG_AFFINE) -> None:
    img = nib.Nifti1Image(array, affine)
    img.set_sform(affine, code=2)  # "aligned", as the lgg_flair release
    img.set_qform(None, code=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))


def convert_lgg_case(case_dir: str | Path, channel: str = "flair") -> tuple[np.ndarray, np.ndarray]:
    """Read one patient folder of the Kaggle release; return ``(image, label)`` uint8 volumes ``(256, 256, N)``.

    Raises ``ValueError`` naming the folder and file when slices are missing, a mask is absent, or shapes differ.
    """
    import tifffile

    case_dir = Path(case_dir)
    if channel not in LGG_CHANNELS:
        raise ValueError(f"channel must be one of {sorted(LGG_CHANNELS)}, got {channel!r}")
    slices = {}
    for f in case_dir.glob("*.tif"):
        m = _SLICE_RE.match(f.name)
        if m and not f.name.endswith("_mask.tif"):
            slices[int(m["slice"])] = f
    if not slices:
        raise ValueError(f"{case_dir}: no '<case>_<slice>.tif' images found")
    numbers = sorted(slices)
    if numbers != list(range(1, len(numbers) + 1)):
        missing = sorted(set(range(1, numbers[-1] + 1)) - set(numbers))
        raise ValueError(f"{case_dir}: slice numbers are not contiguous from 1 (missing {missing[:10]})")
    images, labels = [], []
    for n in numbers:
        img_path = slices[n]
        mask_path = img_path.with_name(img_path.stem + "_mask.tif")
        if not mask_path.exists():
            raise ValueError(f"{case_dir}: mask {mask_path.name} missing for {img_path.name}")
        try:
            img = tifffile.imread(img_path)
            mask = tifffile.imread(mask_path)
        except Exception as e:  # tifffile raises several types for corrupt files
            raise ValueError(f"{img_path}: cannot read TIFF ({e})") from e
        if img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(f"{img_path}: expected an RGB-like (H, W, 3) slice, got shape {img.shape}")
        if mask.ndim == 3:
            mask = mask[..., 0]
        if mask.shape != img.shape[:2]:
            raise ValueError(f"{mask_path}: mask shape {mask.shape} differs from image shape {img.shape[:2]}")
        images.append(img[..., LGG_CHANNELS[channel]][::-1].T)
        labels.append((mask[::-1].T > 0).astype(np.uint8))
    return np.stack(images, axis=-1).astype(np.uint8), np.stack(labels, axis=-1)


def prepare_lgg(
    src: str | Path,
    dst: str | Path,
    num_validation: float = 0.2,
    seed: int = 0,
    channel: str = "flair",
) -> Path:
    """Convert a ``kaggle_3m`` folder into ``dst/imagesTr``, ``dst/labelsTr`` and ``dst/dataset.json``.

    ``num_validation``: a fraction (< 1) or a count of cases for the seeded validation split. Returns the
    datalist path. Every patient folder under ``src`` holding ``.tif`` slices is converted.
    """
    src, dst = Path(src), Path(dst)
    if not src.is_dir():
        raise ValueError(f"{src}: source folder does not exist")
    cases = sorted(p for p in src.iterdir() if p.is_dir() and any(p.glob("*.tif")))
    if not cases:
        raise ValueError(f"{src}: no patient folders with .tif slices found (expected the kaggle_3m layout)")
    entries = []
    for case_dir in cases:
        image, label = convert_lgg_case(case_dir, channel)
        _save_nifti(image, dst / "imagesTr" / f"{case_dir.name}.nii.gz")
        _save_nifti(label, dst / "labelsTr" / f"{case_dir.name}.nii.gz")
        entries.append(
            {"image": f"imagesTr/{case_dir.name}.nii.gz", "label": f"labelsTr/{case_dir.name}.nii.gz"}
        )
        print(f"converted {case_dir.name}: {image.shape[2]} slices, {int(label.any(axis=(0, 1)).sum())} with tumor")
    return write_datalist(dst, entries, num_validation, seed, name=f"LGG {channel} (converted from {src.name})")


def write_datalist(
    root: str | Path, entries: Sequence[dict], num_validation: float = 0.2, seed: int = 0, name: str = "dataset"
) -> Path:
    """Write a decathlon-style ``root/dataset.json`` with a seeded training/validation split."""
    entries = list(entries)
    n_val = int(round(num_validation * len(entries))) if num_validation < 1 else int(num_validation)
    n_val = min(max(n_val, 1 if len(entries) > 1 else 0), len(entries) - 1)
    order = list(range(len(entries)))
    random.Random(seed).shuffle(order)
    val_idx = set(order[:n_val])
    datalist = {
        "name": name,
        "tensorImageSize": "3D",
        "modality": {"0": "FLAIR"},
        "labels": {"0": "background", "1": "tumor"},
        "numTraining": len(entries) - n_val,
        "numValidation": n_val,
        "training": [e for i, e in enumerate(entries) if i not in val_idx],
        "validation": [e for i, e in enumerate(entries) if i in val_idx],
    }
    path = Path(root) / "dataset.json"
    path.write_text(json.dumps(datalist, indent=1))
    return path


def make_synthetic_dataset(
    root: str | Path,
    num_cases: int = 8,
    shape: Sequence[int] = (64, 64, 12),
    num_validation: float = 0.25,
    seed: int = 0,
) -> Path:
    """Write synthetic FLAIR-like volumes with one hyperintense tumor each, plus ``dataset.json``.

    Each case: an elliptical "brain" with smooth intensity, noise, and an ellipsoid tumor brighter than the
    brain on a contiguous run of slices (some slices stay tumor-free, as in the real data). uint8, the LGG
    affine. Returns the datalist path.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij")
    entries = []
    for i in range(num_cases):
        centre = np.array(shape, dtype=np.float32) / 2 + rng.uniform(-2, 2, 3)
        brain = ((x - centre[0]) / (0.42 * shape[0])) ** 2 + ((y - centre[1]) / (0.36 * shape[1])) ** 2 < 1
        t_centre = centre + rng.uniform(-0.18, 0.18, 3) * np.array([shape[0], shape[1], 0.5 * shape[2]])
        radii = rng.uniform(0.07, 0.14, 3) * np.array([shape[0], shape[1], 2.0 * shape[2]])
        tumor = (((x - t_centre[0]) / radii[0]) ** 2 + ((y - t_centre[1]) / radii[1]) ** 2
                 + ((z - t_centre[2]) / radii[2]) ** 2) < 1
        tumor &= brain
        image = np.where(brain, 70 + 20 * np.sin(x / 7.0) * np.cos(y / 9.0), 5).astype(np.float32)
        image[tumor] += rng.uniform(60, 100)
        image += rng.normal(0, 6, shape)
        name = f"synthetic_{i:03d}"
        _save_nifti(np.clip(image, 0, 255).astype(np.uint8), root / "imagesTr" / f"{name}.nii.gz")
        _save_nifti(tumor.astype(np.uint8), root / "labelsTr" / f"{name}.nii.gz")
        entries.append({"image": f"imagesTr/{name}.nii.gz", "label": f"labelsTr/{name}.nii.gz"})
    return write_datalist(root, entries, num_validation, seed, name="synthetic FLAIR-like tumors")


def make_skull_stripped_dataset(src: str | Path, dst: str | Path, erosion: float = 10.0, pad: int = 32) -> Path:
    """Skull-stripped copies of every volume of ``src/dataset.json`` (both keys), written to ``dst`` with the same
    file names, labels and split (``dst/dataset.json``); returns its path. Volumes already in ``dst`` are kept.

    A documented approximation of another site's brain-extracted scans (``transforms.skull_strip_volume``): zero
    outside the head eroded in-plane by ``erosion`` voxels (on the LGG release: 77% of the head's area kept, on
    average), united with the tumor label, then ``pad`` zero voxels on each in-plane side (256 -> 320 with the
    default: the brain fills less of the field of view, and about 80% of the voxels are zero). The affine is
    shifted so the padded volume keeps the original's world coordinates.
    """
    from monai_quantunet.transforms import skull_strip_volume

    src, dst = Path(src), Path(dst)
    datalist = json.loads((src / "dataset.json").read_text())
    for entry in datalist.get("training", []) + datalist.get("validation", []):
        if (dst / entry["image"]).is_file() and (dst / entry["label"]).is_file():
            continue
        image_nii, label_nii = nib.load(src / entry["image"]), nib.load(src / entry["label"])
        image, label = skull_strip_volume(np.asarray(image_nii.dataobj), np.asarray(label_nii.dataobj), erosion, pad=pad)
        affine = image_nii.affine.copy()
        affine[:3, 3] += affine[:3, :3] @ np.array([-pad, -pad, 0])
        _save_nifti(image, dst / entry["image"], affine)
        _save_nifti(label, dst / entry["label"], affine)
    (dst / "dataset.json").write_text(json.dumps({**datalist, "name": f"{datalist.get('name', src.name)}, skull-stripped "
                                                  f"(approximation: erosion {erosion}, padding {pad})"}, indent=1))
    return dst / "dataset.json"


def load_datalist(datalist: str | Path, key: str = "training", base_dir: str | Path | None = None) -> list[dict]:
    """Decathlon datalist entries of ``key`` with absolute paths; clear errors for missing files."""
    from monai.data import load_decathlon_datalist

    datalist = Path(datalist)
    if not datalist.is_file():
        raise ValueError(f"{datalist}: datalist file not found")
    base_dir = Path(base_dir) if base_dir is not None else datalist.parent
    try:
        items = load_decathlon_datalist(str(datalist), is_segmentation=True, data_list_key=key, base_dir=str(base_dir))
    except (KeyError, ValueError) as e:
        raise ValueError(f"{datalist}: cannot read key {key!r} ({e})") from e
    missing = [str(item[k]) for item in items for k in ("image", "label") if k in item and not Path(item[k]).is_file()]
    if missing:
        raise ValueError(f"{datalist}: {len(missing)} listed file(s) not found, e.g. {missing[0]}")
    return items


VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")


def list_volumes(source: str | Path, datalist_key: str = "validation") -> list[dict]:
    """Inputs for inference / evaluation as ``[{"image": path, ("label": path)}]``.

    ``source`` is one volume file, a folder of volumes (NIfTI / NRRD / MetaImage; a folder without volumes but
    with a ``dataset.json`` uses that), or a decathlon datalist ``.json`` (entries of ``datalist_key``, labels
    kept). Raises ``ValueError`` naming ``source`` when nothing is found.
    """
    source = Path(source)
    if source.is_file() and source.suffix == ".json":
        return load_datalist(source, datalist_key)
    if source.is_file():
        if not source.name.lower().endswith(VOLUME_SUFFIXES):
            raise ValueError(f"{source}: not a volume file (expected one of {', '.join(VOLUME_SUFFIXES)})")
        return [{"image": str(source)}]
    if source.is_dir():
        files = sorted(p for p in source.iterdir() if p.is_file() and p.name.lower().endswith(VOLUME_SUFFIXES))
        if files:
            return [{"image": str(p)} for p in files]
        if (source / "dataset.json").is_file():
            return load_datalist(source / "dataset.json", datalist_key)
        raise ValueError(f"{source}: no NIfTI / NRRD volumes (and no dataset.json) found")
    raise ValueError(f"{source}: no such file or folder")


class SliceDataset:
    """2D axial slices of preprocessed 3D volumes, held in memory, with a tumor-aware sampler.

    Each volume of ``data`` goes once through ``volume_transform`` (e.g. ``val_transforms``: load, scale,
    resize in-plane); its Z slices become items ``{"image": (C * k, H, W), "label": (1, H, W)}`` to which
    ``transform`` (2D augmentation) is applied on access. ``context_slices`` k (odd): the image holds the slice
    and its neighbours in the same volume (``transforms.stack_context_slices``), the label is the centre
    slice's. This replaces per-iteration 3D cropping, which dominated CPU training time.

    ``mask_keys``: the binary volumes sliced beside the image (``(1, H, W)`` float items), e.g. ``("label",
    "mask")`` for click training, where ``"mask"`` is the segmentation model's mask added by the volume
    transform (``interactive.AddAutoMaskd``); a slice is *positive* (``sampler``) when any of them has foreground.
    """

    def __init__(self, data: Sequence[dict], volume_transform, transform=None, context_slices: int = 1,
                 mask_keys: Sequence[str] = ("label",)) -> None:
        import torch

        from monai_quantunet.transforms import check_context_slices, stack_context_slices

        check_context_slices(context_slices)  # before any volume is read
        if "label" not in mask_keys:
            raise ValueError(f"SliceDataset: mask_keys must include 'label', got {list(mask_keys)}")
        images, masks = [], {key: [] for key in mask_keys}
        for item in data:
            out = volume_transform(item)
            image = stack_context_slices(torch.as_tensor(out["image"]), context_slices)
            images.append(image.movedim(-1, 0))  # (Z, C * k, H, W)
            for key in mask_keys:
                masks[key].append(torch.as_tensor(out[key]).movedim(-1, 0).to(torch.uint8))  # (Z, 1, H, W)
        if not images:
            raise ValueError("SliceDataset got no volumes")
        self.images = torch.cat(images).float()
        self.masks = {key: torch.cat(slices) for key, slices in masks.items()}
        self.positive = torch.stack([m.flatten(1).bool().any(dim=1) for m in self.masks.values()]).any(dim=0)
        self.transform = transform

    @property
    def labels(self):
        """Label slices ``(N, 1, H, W)`` uint8."""
        return self.masks["label"]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict:
        item = {"image": self.images[index], **{key: m[index].float() for key, m in self.masks.items()}}
        return self.transform(item) if self.transform is not None else item

    def sampler(self, num_samples: int, tumor_fraction: float = 2 / 3, seed: int = 0):
        """``WeightedRandomSampler`` drawing ``num_samples`` slices, ``tumor_fraction`` of them positive (tumor,
        or foreground in any of ``mask_keys``)."""
        import torch

        n_pos = int(self.positive.sum())
        if n_pos == 0 or n_pos == len(self):
            weights = torch.ones(len(self), dtype=torch.double)
        else:
            weights = torch.where(self.positive, tumor_fraction / n_pos, (1 - tumor_fraction) / (len(self) - n_pos))
        generator = torch.Generator().manual_seed(seed)
        return torch.utils.data.WeightedRandomSampler(weights.double(), num_samples, replacement=True, generator=generator)
