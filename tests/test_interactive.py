"""Click guidance (monai_quantunet.interactive): parsing, mapping through orientation/resize, maps, and the
effect of clicks on a segmentation through the real inference chain."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from monai_quantunet.interactive import (
    AddClickGuidanced,
    ClickError,
    ErrorClickInteraction,
    RandClickGuidanced,
    click_maps_3d,
    deepest_point,
    map_clicks,
    parse_clicks,
)
from monai_quantunet.metrics import volume_metrics

SimpleITK = pytest.importorskip("SimpleITK")


def test_parse_clicks_validates():
    assert parse_clicks([], (4, 4, 4)).shape == (0, 3)
    assert parse_clicks([1, 2, 3], (4, 4, 4)).tolist() == [[1, 2, 3]]
    for bad in ([[1, 2]], [[1, 2, 4]], [[-1, 0, 0]], "abc", [[np.nan, 0, 0]]):
        with pytest.raises(ClickError):
            parse_clicks(bad, (4, 4, 4))


def test_click_maps_3d_neighbour_slices():
    g = click_maps_3d((16, 16, 7), np.array([[5, 6, 3]]), np.zeros((0, 3)), sigma=2, slice_weights=(1.0, 0.5, 0.25))
    assert g.shape == (2, 16, 16, 7)
    assert g[0, 5, 6, 3] == pytest.approx(1.0)
    assert g[0, 5, 6, 2] == pytest.approx(0.5) and g[0, 5, 6, 4] == pytest.approx(0.5)
    assert g[0, 5, 6, 1] == pytest.approx(0.25) and g[0, 5, 6, 0] == 0
    assert g[1].abs().sum() == 0


def test_map_clicks_through_flip_and_resize():
    src = np.diag([-1.0, -1.0, 2.0, 1.0])  # LPS-like voxel axes
    dst = np.diag([2.0, 2.0, 2.0, 1.0])
    dst[:3, 3] = [-63.0, -63.0, 0]  # RAS, half resolution in-plane
    out = map_clicks(np.array([[63.0, 0.0, 5.0]]), src, dst, (64, 64, 10))
    np.testing.assert_allclose(out, [[0.0, 31.5, 5.0]])


def _volume(tmp_path, image_zyx, name="img.nii.gz"):
    img = SimpleITK.GetImageFromArray(image_zyx.astype(np.float32))
    img.SetSpacing((1.0, 1.0, 3.0))
    img.SetDirection((-1.0, 0, 0, 0, -1.0, 0, 0, 0, 1.0))
    img.SetOrigin((10.0, -5.0, 2.0))
    path = tmp_path / name
    SimpleITK.WriteImage(img, str(path))
    return str(path)


def test_add_click_guidance_lands_on_the_clicked_voxel(tmp_path):
    """A click given in the original file's IJK lands on the same anatomy after RAS + resize."""
    from monai_quantunet.transforms import inference_transforms

    zyx = np.zeros((6, 40, 48), np.float32)  # X=48, Y=40
    zyx[3, 30, 10] = 100.0  # marker voxel at IJK (10, 30, 3)
    path = _volume(tmp_path, zyx)
    d = inference_transforms((48, 40))({"image": path})  # resize keeps the size: only the orientation changes
    d = AddClickGuidanced()({**d, "foreground": [[10, 30, 3]]})
    img = d["image"]
    assert img.shape == (3, 48, 40, 6)
    marker = np.unravel_index(int(torch.argmax(img[0])), img.shape[1:])
    peak = np.unravel_index(int(torch.argmax(img[1])), img.shape[1:])
    assert tuple(marker) == tuple(peak)
    with pytest.raises(ClickError):
        AddClickGuidanced()({**d, "image": inference_transforms((48, 40))({"image": path})["image"], "background": [[48, 0, 0]]})


def test_rand_click_guidance_and_error_clicks():
    label = torch.zeros(1, 32, 32)
    label[0, 10:20, 12:22] = 1
    t = RandClickGuidanced(prob_no_click=0.0, max_foreground=2, max_background=2)
    t.set_random_state(0)
    out = t({"image": torch.rand(1, 32, 32), "label": label})
    assert out["image"].shape == (3, 32, 32)
    fg = out["image"][1]
    if fg.max() > 0:
        assert label[0][np.unravel_index(int(torch.argmax(fg)), fg.shape)] == 1
    assert deepest_point(label[0].numpy() > 0) in [(14, 16), (14, 17), (15, 16), (15, 17)]
    inputs = torch.zeros(1, 3, 32, 32)
    clicked = ErrorClickInteraction.add_error_clicks(inputs, torch.full((1, 1, 32, 32), -1.0), label[None], sigma=2)
    assert clicked[0, 1].max() == pytest.approx(1.0) and clicked[0, 2].max() == 0  # missed tumor -> fg click


class AnalyticInteractiveNet(nn.Module):
    """An analytically reasonable interactive model: tumor where the image is bright, pushed up by
    foreground clicks and down by background clicks: ``logit = 20 (image - 0.55) + 30 fg - 30 bg``."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 1, 1)
        with torch.no_grad():
            self.conv.weight[:] = torch.tensor([20.0, 30.0, -30.0]).view(1, 3, 1, 1)
            self.conv.bias[:] = -20.0 * 0.55

    def forward(self, x):
        return self.conv(x)


def _predict(net, path, foreground=(), background=()):
    """The real segmentation chain with click guidance; mask back to (Z, Y, X) like the file."""
    from monai_quantunet.inference import segment_volume

    mask = segment_volume(net, path, (64, 64), guidance=AddClickGuidanced(sigma=3.0), foreground=list(foreground),
                          background=list(background))
    return mask.transpose(2, 1, 0)


def test_clicks_fix_missed_tumor_and_false_positive(tmp_path):
    """A foreground click inside a missed (faint) tumor lobe raises Dice; a background click on a bright
    non-tumor blob removes that false positive."""
    z, y, x = np.meshgrid(np.arange(8), np.arange(64), np.arange(64), indexing="ij")
    image = np.full((8, 64, 64), 20.0)
    bright = ((x - 20) / 6) ** 2 + ((y - 20) / 6) ** 2 + ((z - 4) / 2.5) ** 2 < 1
    faint = ((x - 30) / 4) ** 2 + ((y - 22) / 4) ** 2 + ((z - 4) / 1.5) ** 2 < 1  # tumor, but low contrast
    blob = ((x - 48) / 4) ** 2 + ((y - 48) / 4) ** 2 + ((z - 4) / 1.5) ** 2 < 1  # bright, not tumor
    image[bright] = 200
    image[faint & ~bright] = 60
    image[blob] = 200
    label = bright | faint
    path = _volume(tmp_path, image)
    net = AnalyticInteractiveNet().eval()

    auto = _predict(net, path)
    dice0 = volume_metrics(torch.from_numpy(auto), torch.from_numpy(label))["dice"]
    missed = label & ~auto
    assert missed.sum() > 0 and (auto & blob).sum() > 0  # the automatic result misses the faint lobe, hits the blob

    zc, yc, xc = deepest_point(missed)
    fg = _predict(net, path, foreground=[[xc, yc, zc]])  # clicks are IJK = (x, y, z)
    dice1 = volume_metrics(torch.from_numpy(fg), torch.from_numpy(label))["dice"]
    assert dice1 > dice0 + 0.05, (dice0, dice1)

    fp0 = int((fg & ~label).sum())
    zb, yb, xb = deepest_point(fg & blob)
    both = _predict(net, path, foreground=[[xc, yc, zc]], background=[[xb, yb, zb]])
    fp1 = int((both & ~label).sum())
    assert fp1 < 0.5 * fp0, (fp0, fp1)
    dice2 = volume_metrics(torch.from_numpy(both), torch.from_numpy(label))["dice"]
    print(f"Dice auto {dice0:.3f} -> +fg click {dice1:.3f} -> +bg click {dice2:.3f}; false positives {fp0} -> {fp1} voxels")
