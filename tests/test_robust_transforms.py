"""Intensity scaling robust to skull-stripped volumes, the brain-mask approximation, skull-stripping and zoom-out
augmentation, and the skull-stripped validation copies; all on small generated volumes."""

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from scipy import ndimage

from monai_quantunet.data import load_datalist, make_skull_stripped_dataset
from monai_quantunet.transforms import (
    RandSkullStripd,
    ScaleIntensityForegroundPercentilesd,
    approximate_brain_mask,
    augment_transforms,
    skull_strip_volume,
)


def _head(size: int = 64, depth: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """FLAIR-like head ``(size, size, depth)``: bright scalp ring, dark skull ring, brain disk with a brighter
    lesion at its edge; returns (image, brain, lesion)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:size, :size] - (size - 1) / 2
    r = np.hypot(x, y)[..., None].repeat(depth, axis=-1)
    brain, lesion = r < 0.30 * size, (np.hypot(x - 0.22 * size, y)[..., None] < 0.07 * size) & (r < 0.30 * size)
    image = np.where(r < 0.42 * size, 90.0, 2.0)  # scalp
    image[(r >= 0.34 * size) & (r < 0.40 * size)] = 8.0  # skull
    image[(r >= 0.30 * size) & (r < 0.34 * size)] = 15.0  # CSF
    image[brain] = 60.0
    image[lesion] = 140.0
    return image + rng.normal(0, 1, image.shape).clip(-1, 1) + 1, brain, lesion


def _scaled(image: np.ndarray) -> np.ndarray:
    return np.asarray(ScaleIntensityForegroundPercentilesd("image")({"image": torch.as_tensor(image[None])})["image"][0])


def test_foreground_scaling_matches_volume_scaling_on_heads_and_keeps_stripped_lesions_below_one():
    image, brain, lesion = _head()
    ours = _scaled(image)
    whole = np.clip((image - np.percentile(image, 0.5)) / (np.percentile(image, 99.5) - np.percentile(image, 0.5)), 0, 1)
    assert np.abs(ours - whole).max() < 0.02  # little background: the volume-wide scaling, nearly
    stripped = np.pad(np.where(brain, image, 0), ((48, 48), (48, 48), (0, 0)))  # 95% zero background
    lesion_padded = np.pad(lesion, ((48, 48), (48, 48), (0, 0)))
    assert (np.asarray(stripped) == 0).mean() > 0.9
    s = _scaled(stripped)
    old_high = np.percentile(stripped, 99.5)
    assert (stripped[lesion_padded] >= old_high).mean() > 0.5  # the volume-wide scaling clips the lesion at 1
    assert s[lesion_padded].mean() == pytest.approx(1.0, abs=0.02) and s[lesion_padded].min() > 0.95
    assert s[np.pad(brain & ~lesion, ((48, 48), (48, 48), (0, 0)))].mean() == pytest.approx(60 / 141, abs=0.03)
    with pytest.raises(ValueError, match="lower < upper"):
        ScaleIntensityForegroundPercentilesd("image", lower=99, upper=1)


def test_brain_mask_strips_scalp_and_skull_and_keeps_the_label():
    image, brain, lesion = _head(size=96)
    mask = approximate_brain_mask(image, erosion=0.1 * 96)
    y, x = np.mgrid[:96, :96] - 47.5
    inside_skull = (np.hypot(x, y) < 0.34 * 96)[..., None]
    assert mask.shape == image.shape
    assert (mask & ~inside_skull).sum() == 0  # nothing of scalp or skull is kept
    assert (mask & brain).sum() / brain.sum() > 0.6
    assert approximate_brain_mask(image[..., 0], erosion=0.1 * 96).shape == (96, 96)  # one 2D slice
    stripped, label = skull_strip_volume(image, lesion.astype(np.uint8), erosion=0.1 * 96, pad=5)
    assert stripped.shape == label.shape == (106, 106, 3)
    assert label.sum() == lesion.sum() and (stripped[label > 0] > 0).all()  # the lesion survives at the edge
    assert (stripped[5:-5, 5:-5][~inside_skull.repeat(3, -1)] == 0).all() and stripped[:5].max() == 0


def test_rand_skull_strip_zeroes_outside_the_brain_with_its_probability():
    image, brain, lesion = _head(size=64, depth=1)
    item = {"image": torch.as_tensor(image[..., 0][None] / 141, dtype=torch.float32),
            "label": torch.as_tensor(lesion[..., 0][None], dtype=torch.float32)}
    out = RandSkullStripd(prob=1.0, erosion=(6.0, 6.0))(item)
    y, x = np.mgrid[:64, :64] - 31.5
    assert (out["image"][0][torch.as_tensor(np.hypot(x, y) >= 0.34 * 64)] == 0).all()  # scalp and skull gone
    assert (out["image"][0][torch.as_tensor(brain[..., 0])] > 0).float().mean() > 0.9
    assert (out["image"][0][item["label"][0] > 0] > 0).all()
    assert torch.equal(RandSkullStripd(prob=0.0)(item)["image"], item["image"])


def test_augmentation_zooms_out_and_strips_sometimes():
    image, _, lesion = _head(size=64, depth=1)
    item = {"image": torch.as_tensor(image[..., 0][None] / 141, dtype=torch.float32),
            "label": torch.as_tensor(lesion[..., 0][None], dtype=torch.float32)}
    zoom = augment_transforms(prob=1.0, skull_strip=0.0, zoom_out=1.0)
    zoom.set_random_state(0)
    areas = [float((zoom(dict(item))["image"] > 0.3).float().mean()) for _ in range(8)]
    assert np.mean(areas) < float((item["image"] > 0.3).float().mean()) * 0.9  # smaller head in the field of view
    out = augment_transforms(prob=0.0)(dict(item))
    assert torch.equal(out["image"], item["image"]) and set(torch.unique(out["label"]).tolist()) <= {0.0, 1.0}


def test_full_augmentation_keeps_the_lesion_and_its_label_in_register():
    """Skull-stripping, zoom-out, flips and affine on together: the label still marks the bright lesion (the
    augmentation is not why a short synthetic run can still answer background everywhere at logit 0)."""
    image, _, lesion = _head(size=64, depth=1)
    item = {"image": torch.as_tensor(image[..., 0][None] / 141, dtype=torch.float32),
            "label": torch.as_tensor(lesion[..., 0][None], dtype=torch.float32)}
    augment = augment_transforms(prob=1.0, skull_strip=1.0, zoom_out=1.0)
    augment.set_random_state(0)
    for _ in range(8):
        out = augment(dict(item))
        label = out["label"][0] > 0
        assert label.sum() > 0.3 * lesion.sum()  # zoomed to >= 60%: >= 36% of the area
        inner = torch.as_tensor(ndimage.binary_erosion(label.numpy()))  # off the interpolated rim
        assert out["image"][0][inner].mean() > 0.75 > 0.6 > out["image"][0][~label & (out["image"][0] > 0.1)].mean()


def test_skull_stripped_dataset_keeps_geometry_labels_and_split(synthetic_dataset, tmp_path):
    path = make_skull_stripped_dataset(synthetic_dataset, tmp_path / "stripped", erosion=2.0, pad=4)
    src, dst = json.loads((synthetic_dataset / "dataset.json").read_text()), json.loads(path.read_text())
    assert [e["image"] for e in dst["validation"]] == [e["image"] for e in src["validation"]]
    for original, copy in zip(load_datalist(synthetic_dataset / "dataset.json"), load_datalist(path)):
        a, b = nib.load(original["image"]), nib.load(copy["image"])
        assert b.shape == (a.shape[0] + 8, a.shape[1] + 8, a.shape[2])
        np.testing.assert_allclose(b.affine @ [4, 4, 0, 1], a.affine @ [0, 0, 0, 1])  # same world position
        assert np.asarray(nib.load(copy["label"]).dataobj).sum() == np.asarray(nib.load(original["label"]).dataobj).sum()
        assert (np.asarray(b.dataobj) == 0).mean() > (np.asarray(a.dataobj) == 0).mean()
