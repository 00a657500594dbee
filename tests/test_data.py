import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from conftest import shared_data
from monai_quantunet.cli import main as cli
from monai_quantunet.data import convert_lgg_case, list_volumes, load_datalist, make_synthetic_dataset, prepare_lgg
from monai_quantunet.transforms import CheckVolumed, val_transforms


def _write_raw_case(folder: Path, name: str, n: int, rng) -> np.ndarray:
    """A tiny raw Kaggle-layout patient: RGB slices + 0/255 masks. Returns the FLAIR stack (rows, cols, n)."""
    import tifffile

    folder.mkdir(parents=True)
    flair = rng.integers(0, 255, (32, 32, n), dtype=np.uint8)
    for k in range(n):
        rgb = np.stack([flair[..., k] // 2, flair[..., k], 255 - flair[..., k]], axis=-1)
        tifffile.imwrite(folder / f"{name}_{k + 1}.tif", rgb, compression="zlib")
        mask = np.zeros((32, 32), np.uint8)
        mask[4 + k : 10 + k, 8:20] = 255
        tifffile.imwrite(folder / f"{name}_{k + 1}_mask.tif", mask)
    return flair


def test_prepare_lgg_on_generated_raw_layout(tmp_path):
    rng = np.random.default_rng(0)
    src = tmp_path / "kaggle_3m"
    flairs = {f"TCGA_XX_{i:04d}_20000101": _write_raw_case(src / f"TCGA_XX_{i:04d}_20000101", f"TCGA_XX_{i:04d}_20000101", 3 + i, rng) for i in range(4)}
    (src / "data.csv").write_text("Patient\n")
    assert cli(["prepare-lgg", "--src", str(src), "--dst", str(tmp_path / "out"), "--num-validation", "1"]) == 0
    datalist = json.loads((tmp_path / "out" / "dataset.json").read_text())
    assert datalist["numTraining"] == 3 and datalist["numValidation"] == 1
    for name, flair in flairs.items():
        img = nib.load(tmp_path / "out" / "imagesTr" / f"{name}.nii.gz")
        lab = np.asarray(nib.load(tmp_path / "out" / "labelsTr" / f"{name}.nii.gz").dataobj)
        np.testing.assert_array_equal(np.asarray(img.dataobj), flair[::-1].transpose(1, 0, 2))
        np.testing.assert_array_equal(np.diag(img.affine), [-1, -1, 1, 1])
        assert set(np.unique(lab)) == {0, 1}
    items = load_datalist(tmp_path / "out" / "dataset.json", "training")
    assert len(items) == 3 and all(Path(i["image"]).is_file() for i in items)


def test_prepare_lgg_reports_a_missing_mask(tmp_path):
    rng = np.random.default_rng(0)
    case = tmp_path / "src" / "TCGA_XX_0001_20000101"
    _write_raw_case(case, "TCGA_XX_0001_20000101", 3, rng)
    (case / "TCGA_XX_0001_20000101_2_mask.tif").unlink()
    with pytest.raises(ValueError, match="_2_mask.tif missing"):
        prepare_lgg(tmp_path / "src", tmp_path / "out")
    with pytest.raises(ValueError, match="no patient folders"):
        prepare_lgg(tmp_path / "src" / "TCGA_XX_0001_20000101", tmp_path / "o2")


def test_prepare_lgg_matches_the_shared_release(tmp_path):
    sample = shared_data("lgg_kaggle_sample", "kaggle_3m")
    nifti = shared_data("lgg_flair")
    prepare_lgg(sample, tmp_path)
    for case in sorted(p.name for p in sample.iterdir() if p.is_dir()):
        ours = nib.load(tmp_path / "imagesTr" / f"{case}.nii.gz")
        ref = nib.load(nifti / "imagesTr" / f"{case}.nii.gz")
        np.testing.assert_array_equal(np.asarray(ours.dataobj), np.asarray(ref.dataobj))
        np.testing.assert_array_equal(ours.affine, ref.affine)
        np.testing.assert_array_equal(
            np.asarray(nib.load(tmp_path / "labelsTr" / f"{case}.nii.gz").dataobj),
            np.asarray(nib.load(nifti / "labelsTr" / f"{case}.nii.gz").dataobj),
        )


def test_synthetic_dataset_and_transforms(synthetic_dataset):
    items = load_datalist(synthetic_dataset / "dataset.json", "training")
    out = val_transforms((32, 32))(items[0])
    assert out["image"].shape == (1, 32, 32, 8) and out["label"].shape == (1, 32, 32, 8)
    assert 0 <= out["image"].min() and out["image"].max() <= 1
    assert out["label"].sum() > 0


def test_list_volumes(synthetic_dataset, tmp_path):
    assert len(list_volumes(synthetic_dataset / "imagesTr")) == 6
    assert len(list_volumes(synthetic_dataset)) == 2  # dataset.json, validation split
    assert len(list_volumes(synthetic_dataset / "dataset.json", "training")) == 4
    with pytest.raises(ValueError, match="no NIfTI"):
        list_volumes(tmp_path)
    with pytest.raises(ValueError, match="not a volume"):
        (tmp_path / "notes.txt").write_text("x")
        list_volumes(tmp_path / "notes.txt")


def _meta_image(array, name="case.nii.gz"):
    from monai.data import MetaTensor

    return MetaTensor(torch.as_tensor(array)[None], meta={"filename_or_obj": name})


@pytest.mark.parametrize(
    "image,label,match",
    [
        (np.zeros((8, 8)), None, "3D volume"),
        (np.full((8, 8, 4), np.nan), None, "NaN"),
        (np.zeros((8, 8, 4)), np.zeros((8, 8, 3)), "differs"),
        (np.zeros((8, 8, 4)), np.full((8, 8, 4), -1), "0 or 1"),
    ],
)
def test_check_volume_errors_name_the_case(image, label, match):
    d = {"image": _meta_image(image, "bad_case.nii.gz")}
    if label is not None:
        d["label"] = _meta_image(label)
    with pytest.raises(ValueError, match=match) as err:
        CheckVolumed()(d)
    assert "bad_case" in str(err.value)


def test_255_masks_are_binarised():
    out = CheckVolumed()({"image": _meta_image(np.zeros((8, 8, 4))), "label": _meta_image(np.full((8, 8, 4), 255))})
    assert set(torch.unique(out["label"]).tolist()) == {1}
    with pytest.raises(ValueError):
        CheckVolumed(binarize_label=False)({"image": _meta_image(np.zeros((8, 8, 4))), "label": _meta_image(np.full((8, 8, 4), 255))})


def test_missing_files_in_datalist(synthetic_dataset, tmp_path):
    datalist = json.loads((synthetic_dataset / "dataset.json").read_text())
    datalist["training"].append({"image": "imagesTr/nope.nii.gz", "label": "labelsTr/nope.nii.gz"})
    path = tmp_path / "dataset.json"
    path.write_text(json.dumps(datalist))
    with pytest.raises(ValueError, match="nope.nii.gz"):
        load_datalist(path, "training", base_dir=synthetic_dataset)


def test_slice_dataset_samples_tumor_slices_at_the_requested_fraction(synthetic_dataset):
    from monai_quantunet.data import SliceDataset

    items = load_datalist(synthetic_dataset / "dataset.json", "training")
    ds = SliceDataset(items, val_transforms((32, 32)))
    assert len(ds) == 4 * 8 and ds[0]["image"].shape == (1, 32, 32) and ds[0]["label"].shape == (1, 32, 32)
    assert 0 < int(ds.positive.sum()) < len(ds)
    drawn = list(ds.sampler(3000, tumor_fraction=0.75, seed=1))
    fraction = float(ds.positive[drawn].float().mean())
    assert abs(fraction - 0.75) < 0.05
