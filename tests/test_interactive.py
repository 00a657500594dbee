"""Interactive refinement (monai_quantunet.interactive): clicks, the robot user's click placement, the reach and the
locality gate, and the effect of clicks on the current mask through the real chain (``refine_volume`` =
``inference.segment_volume`` + gate), with an analytic 4-input network and with the shipped interactive model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from monai_quantunet.interactive import (
    CLICK_CORE_RADIUS,
    REACH_RADIUS,
    REACH_SLICES,
    AddInteractionGuidanced,
    ClickError,
    ClickSimulation,
    RandPerturbMaskd,
    ReachLimitedNetwork,
    click_maps_3d,
    locality_gate,
    map_clicks,
    parse_clicks,
    reach_mask,
    refine_volume,
    robot_click,
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


def test_robot_click_on_a_known_error_map():
    """The largest connected error region decides the kind of click; the click is its deepest voxel."""
    label = np.zeros((40, 40, 9), bool)
    label[5:20, 5:20, 2:7] = True  # tumor
    pred = label.copy()
    pred[5:20, 5:11, 2:7] = False  # missed part: 15 x 6 x 5 = 450 voxels; 3 voxels deep at x 7..17, y 7..8, z 4
    pred[30:35, 30:35, 2:7] = True  # false positive: 5 x 5 x 5 = 125 voxels, deepest (unique) at its centre
    kind, point = robot_click(pred, label)
    assert kind == "foreground"
    assert point[2] == 4 and point[1] in (7, 8) and 7 <= point[0] <= 17
    pred[5:20, 5:11, 2:7] = True  # fixed: the false positive is what is left
    assert robot_click(pred, label) == ("background", (32, 32, 4))
    assert robot_click(label, label) is None
    # two separate missed regions: the larger one is clicked, not the one nearer to the origin
    pred2 = label.copy()
    pred2[5:8, 5:8, 2:4] = False
    pred2[10:20, 10:20, 2:7] = False
    kind2, (i, j, k) = robot_click(pred2, label)
    assert kind2 == "foreground" and 12 <= i <= 17 and 12 <= j <= 17 and k == 4  # 3 voxels deep in the larger one
    with pytest.raises(ValueError):
        robot_click(pred[..., :3], label)


def test_reach_and_gate_keep_the_mask_far_from_clicks():
    pts = np.stack(np.meshgrid(np.arange(64), np.arange(64), np.arange(10), indexing="ij"), axis=-1).astype(float)
    reach = reach_mask(pts, np.array([[20.0, 30.0, 5.0]]), radius=10, slices=2)
    assert reach[20, 30, 3:8].all() and not reach[20, 30, 2] and not reach[20, 30, 8]
    assert reach[30, 30, 5] and not reach[31, 30, 5]
    refined = np.ones((64, 64, 10), bool)
    current = np.zeros((64, 64, 10), bool)
    click = np.array([[20.0, 30.0, 5.0]])
    gated, r = locality_gate(refined, current, np.eye(4), np.eye(4), click, [], 10, 2)
    np.testing.assert_array_equal(gated, r)  # a foreground click adds what the network found, within reach only
    np.testing.assert_array_equal(r, reach)
    same, none = locality_gate(refined, current, np.eye(4), np.eye(4), np.zeros((0, 3)))
    assert not same.any() and not none.any()


def test_gate_direction_follows_the_click_kind():
    """A foreground click only adds tumor connected to it, a background click only removes what is connected to it;
    the clicked voxel takes the click's label even when the network disagrees."""
    rng = np.random.default_rng(0)
    refined = rng.random((40, 40, 6)) > 0.5
    current = rng.random((40, 40, 6)) > 0.5
    fg, bg = np.array([[10.0, 10.0, 2.0]]), np.array([[30.0, 30.0, 3.0]])
    gated, reach = locality_gate(refined, current, np.eye(4), np.eye(4), fg, bg, radius=6, slices=1)
    pts = np.stack(np.meshgrid(*[np.arange(s) for s in current.shape], indexing="ij"), axis=-1).astype(float)
    rf, rb = reach_mask(pts, fg, 6, 1), reach_mask(pts, bg, 6, 1)
    np.testing.assert_array_equal(gated[~reach], current[~reach])
    assert (gated[rf] >= current[rf]).all() and (gated[rb] <= current[rb]).all()
    assert gated[10, 10, 2] and not gated[30, 30, 3]
    only_f = rf & ~rb & ~reach_mask(pts, fg, CLICK_CORE_RADIUS, 0)
    assert (gated[only_f] <= (current | refined)[only_f]).all()  # additions come from the network (or the click)

    # structured case: the network adds a blob at the click and another, disconnected one within the reach
    current = np.zeros((40, 40, 6), bool)
    refined = np.zeros_like(current)
    refined[8:13, 8:13, 1:4] = True  # at the foreground click
    refined[16:19, 4:7, 2] = True  # within reach (radius 10), not connected to the click
    gated, _ = locality_gate(refined, current, np.eye(4), np.eye(4), fg, [], radius=10, slices=1)
    assert gated[8:13, 8:13, 1:4].all() and not gated[16:19, 4:7, 2].any()
    # a background click removes the region it is on, not another region within its reach
    current = np.zeros((40, 40, 6), bool)
    current[28:33, 28:33, 2:5] = True  # false positive under the click
    current[36:39, 30:33, 3] = True  # separate region within reach, which the network also drops
    gated, _ = locality_gate(np.zeros_like(current), current, np.eye(4), np.eye(4), [], bg, radius=10, slices=1)
    assert not gated[28:33, 28:33, 2:5].any() and gated[36:39, 30:33, 3].all()


def test_reach_limited_network_runs_only_clicked_slices():
    calls = []

    class Count(nn.Module):
        def forward(self, x):
            calls.append(x.shape[0])
            return torch.full((x.shape[0], 1, *x.shape[2:]), 5.0)

    x = torch.zeros(6, 4, 8, 8)
    x[:, 1, :4] = 1.0  # current mask: upper half
    x[2, 2, 3, 3] = 1.0  # a foreground click map on slice 2 only
    out = ReachLimitedNetwork(Count())(x)
    assert calls == [1]
    assert (out[2] == 5).all()
    assert (out[[0, 1, 3, 4, 5], 0, :4] > 0).all() and (out[[0, 1, 3, 4, 5], 0, 4:] < 0).all()


def _volume(tmp_path, image_zyx, name="img.nii.gz"):
    img = SimpleITK.GetImageFromArray(image_zyx.astype(np.float32))
    img.SetSpacing((1.0, 1.0, 3.0))
    img.SetDirection((-1.0, 0, 0, 0, -1.0, 0, 0, 0, 1.0))
    img.SetOrigin((10.0, -5.0, 2.0))
    path = tmp_path / name
    SimpleITK.WriteImage(img, str(path))
    return str(path)


def test_current_mask_and_clicks_land_on_the_same_voxels(tmp_path):
    """The current mask (file grid) and a click (file IJK) land on the marker voxel after RAS + resize."""
    from monai_quantunet.transforms import inference_transforms

    zyx = np.zeros((6, 40, 48), np.float32)  # X=48, Y=40
    zyx[3, 30, 10] = 100.0  # marker voxel at IJK (10, 30, 3)
    path = _volume(tmp_path, zyx)
    mask = np.zeros((48, 40, 6), bool)
    mask[10, 30, 3] = True
    d = inference_transforms((48, 40))({"image": path})
    d = AddInteractionGuidanced()({**d, "current_mask": mask, "foreground": [[10, 30, 3]]})
    img = d["image"]
    assert img.shape == (4, 48, 40, 6)
    marker = np.unravel_index(int(torch.argmax(img[0])), img.shape[1:])
    assert tuple(np.unravel_index(int(torch.argmax(img[1])), img.shape[1:])) == tuple(marker)
    assert tuple(np.unravel_index(int(torch.argmax(img[2])), img.shape[1:])) == tuple(marker)
    fresh = inference_transforms((48, 40))({"image": path})
    with pytest.raises(ClickError):
        AddInteractionGuidanced()({**fresh, "current_mask": mask, "background": [[48, 0, 0]]})
    with pytest.raises(ValueError, match="current_mask"):
        AddInteractionGuidanced()({**fresh, "current_mask": mask[:, :, :5]})


class AnalyticInteractiveNet(nn.Module):
    """A 4-input network that acts as a refinement model should: tumor where the image is bright, pushed up by
    foreground clicks and down by background clicks: ``logit = 20 (image - 0.55) + 30 fg - 30 bg``."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 1, 1)
        with torch.no_grad():
            self.conv.weight[:] = torch.tensor([20.0, 0.0, 30.0, -30.0]).view(1, 4, 1, 1)
            self.conv.bias[:] = -20.0 * 0.55

    def forward(self, x):
        return self.conv(x)


def _phantom(tmp_path):
    """(path, label, bright blob) as (X, Y, Z) = IJK arrays: a bright tumor, a faint (low contrast) tumor lobe
    and a bright non-tumor blob, 12 slices."""
    z, y, x = np.meshgrid(np.arange(12), np.arange(64), np.arange(64), indexing="ij")
    image = np.full((12, 64, 64), 20.0)
    bright = ((x - 20) / 6) ** 2 + ((y - 20) / 6) ** 2 + ((z - 6) / 2.5) ** 2 < 1
    faint = ((x - 30) / 4) ** 2 + ((y - 22) / 4) ** 2 + ((z - 6) / 1.5) ** 2 < 1
    blob = ((x - 48) / 4) ** 2 + ((y - 48) / 4) ** 2 + ((z - 6) / 1.5) ** 2 < 1
    image[bright] = 200
    image[faint & ~bright] = 60
    image[blob] = 200
    path = _volume(tmp_path, image)
    to_ijk = lambda a: a.transpose(2, 1, 0)  # noqa: E731
    return path, to_ijk(bright | faint), to_ijk(blob)


def _outside_reach(shape, clicks, spatial=(64, 64)):
    """File voxels clearly beyond every click's reach (in-plane grid pixels = file voxels here: 64 -> 64)."""
    i, j, k = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    far = np.ones(shape, bool)
    for c in clicks:
        near = (np.abs(k - c[2]) <= REACH_SLICES) & ((i - c[0]) ** 2 + (j - c[1]) ** 2 <= (REACH_RADIUS + 1.5) ** 2)
        far &= ~near
    return far


def test_clicks_refine_the_current_mask_locally(tmp_path):
    """A foreground click in the missed lobe adds it; a background click on the false positive clears it; every
    voxel beyond the reach of the clicks keeps the current mask, including a deliberately wrong far region."""
    path, label, blob = _phantom(tmp_path)
    net = AnalyticInteractiveNet().eval()
    current = (label & (np.arange(64)[:, None, None] < 27)) | blob  # bright tumor found, lobe missed, blob found
    current[2:6, 58:62, 0:2] = True  # a wrong far-away region no click reaches: must stay
    missed = label & ~current
    kind, point = robot_click(current, label)
    assert kind == "foreground" and missed[point]

    step1 = refine_volume(net, path, current, [list(point)], [], (64, 64))
    assert step1[point]
    i, j, k = point
    assert step1[i - 1:i + 2, j - 1:j + 2, k].all()  # the clicked voxel and its neighbourhood are tumor
    d0 = volume_metrics(torch.from_numpy(current), torch.from_numpy(label))["dice"]
    d1 = volume_metrics(torch.from_numpy(step1), torch.from_numpy(label))["dice"]
    assert d1 > d0 + 0.05, (d0, d1)
    far = _outside_reach(current.shape, [point])
    np.testing.assert_array_equal(step1[far], current[far])
    assert step1[2:6, 58:62, 0:2].all()

    bg = [48, 48, 6]
    assert step1[tuple(bg)] and not label[tuple(bg)]
    step2 = refine_volume(net, path, step1, [list(point)], [bg], (64, 64))
    assert not (step2 & blob).any()  # false positive cleared
    far2 = _outside_reach(current.shape, [point, bg])
    np.testing.assert_array_equal(step2[far2], step1[far2])
    assert step2[2:6, 58:62, 0:2].all()
    # no clicks: the current mask, unchanged
    np.testing.assert_array_equal(refine_volume(net, path, step2, [], [], (64, 64)), step2)


def test_click_simulation_clicks_on_errors_and_feeds_back_the_gated_mask():
    label = torch.zeros(2, 1, 32, 32)
    label[:, 0, 8:20, 8:20] = 1
    x = torch.zeros(2, 4, 32, 32)
    x[0, 1, 8:20, 8:14] = 1  # sample 0: right part missed -> foreground click
    x[1, 1] = label[1, 0]
    x[1, 1, 26:31, 26:31] = 1  # sample 1: false positive -> background click
    sim = ClickSimulation(prob_neighbour=0.0, reach_radius=6)
    reach = torch.zeros(2, 2, 32, 32, dtype=torch.bool)  # (foreground / background, batch, H, W)
    y = x.clone()
    sim.add_click(y, reach, (label[:, 0] > 0).numpy())
    fg0 = np.unravel_index(int(torch.argmax(y[0, 2])), (32, 32))
    assert y[0, 2].max() == pytest.approx(1.0) and y[0, 3].max() == 0 and label[0, 0][fg0] == 1 and x[0, 1][fg0] == 0
    assert y[1, 3].max() == pytest.approx(1.0) and y[1, 2].max() == 0
    assert reach[0, 0][fg0] and not reach[0, 0, 0, 0] and not reach[1, 0].any() and reach[1, 1].any()

    class Everything(nn.Module):  # predicts tumor everywhere: only the reach may take it
        def forward(self, inp):
            return torch.ones(inp.shape[0], 1, *inp.shape[2:])

    out = sim.simulate(Everything(), x, label, rounds=2)
    grown = (out[0, 1] > 0.5) & ~(x[0, 1] > 0.5)
    assert grown.any() and not grown[0, 0] and not grown[31, 31]  # changed only near the first click
    assert torch.equal(out[1, 1], x[1, 1])  # a background click never adds tumor, whatever the network says


def test_perturbation_changes_the_mask_only():
    t = RandPerturbMaskd(prob=1.0)
    t.set_random_state(0)
    mask = torch.zeros(1, 32, 32)
    mask[0, 10:20, 10:20] = 1
    changed = 0
    for _ in range(10):
        out = t({"image": torch.rand(1, 32, 32), "mask": mask.clone(), "label": mask.clone()})
        assert out["mask"].shape == (1, 32, 32) and torch.equal(out["label"], mask)
        changed += int(not torch.equal(out["mask"], mask))
    assert changed >= 7


@pytest.fixture(scope="module")
def shipped_interactive():
    from conftest import INTERACTIVE_BUNDLE

    from monai_quantunet.bundle import network_from_bundle
    from monai_quantunet.checkpoint import load_checkpoint

    bundle = INTERACTIVE_BUNDLE
    return load_checkpoint(network_from_bundle(bundle), bundle / "models" / "model.pt").eval()


def test_shipped_model_adds_missed_tumor_and_clears_false_positive(tmp_path, shipped_interactive):
    """The shipped interactive model through the real chain on a generated volume (the app's test volumes)."""
    from slicer_server import DIRECTION, synthetic_case, write_volume

    image, label_zyx = synthetic_case(3)
    path = tmp_path / "case.nii.gz"
    write_volume(path, image, direction=DIRECTION)
    label = label_zyx.transpose(2, 1, 0) > 0
    missing = np.zeros_like(label)  # nothing found yet: the whole tumor is missed
    point = robot_click(missing, label)[1]
    out = refine_volume(shipped_interactive, str(path), missing, [list(point)], [], (128, 128))
    i, j, k = point
    assert out[i - 1:i + 2, j - 1:j + 2, k].all()
    assert volume_metrics(torch.from_numpy(out), torch.from_numpy(label))["dice"] > 0.3
    far = _outside_reach(label.shape, [point])  # the 64 x 48 volume is resized up to 128: reach is in grid pixels
    assert not out[far].any()

    fp = label.copy()
    fp[2:10, 2:10, 3:6] = True  # a false positive in a corner
    kind, bpoint = robot_click(fp, label)
    assert kind == "background"
    out2 = refine_volume(shipped_interactive, str(path), fp, [], [list(bpoint)], (128, 128))
    assert not out2[bpoint] and (out2 & ~label).sum() < 0.5 * (fp & ~label).sum()
    dice = lambda m: volume_metrics(torch.from_numpy(m), torch.from_numpy(label))["dice"]  # noqa: E731
    assert dice(out2) > dice(fp)


def test_expand_input_channels_starts_the_new_inputs_from_the_image_weights():
    from monai_quantunet.interactive import expand_input_channels

    w = torch.randn(8, 1, 3, 3)
    state = expand_input_channels({"encoder.0.0.weight": w, "other": torch.ones(2)}, 4, (0.5, 1.0, -1.0))
    out = state["encoder.0.0.weight"]
    assert out.shape == (8, 4, 3, 3) and torch.equal(out[:, :1], w) and torch.equal(state["other"], torch.ones(2))
    assert torch.allclose(out[:, 1], 0.5 * w[:, 0]) and torch.equal(out[:, 2], w[:, 0]) and torch.equal(out[:, 3], -w[:, 0])
    assert expand_input_channels({"encoder.0.0.weight": w}, 4)["encoder.0.0.weight"][:, 1:].abs().sum() == 0
    with pytest.raises(ValueError, match="scales"):
        expand_input_channels({"encoder.0.0.weight": w}, 4, (1.0,))
    with pytest.raises(ValueError, match="not a QuantUNet"):
        expand_input_channels({"x": w}, 4)
