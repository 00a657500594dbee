"""The folding optimiser (``monai_quantunet.export.finn_build.folding``) on fake hardware layers: FINN's folding
rules, folding for a target within the budget, and its errors. Needs no FINN."""

from types import SimpleNamespace

import pytest

from monai_quantunet.export.finn_build import UNetBuildError
from monai_quantunet.export.finn_build.folding import check_folding, fold_for_target, folding_units
from monai_quantunet.export.finn_build.layers import base_op
from monai_quantunet.export.finn_build.targets import resource_budget

PART = "xc7z020clg400-1"
PIXELS = 64  # per frame, every layer but the head
FOLDS = {  # attribute folded -> the attributes whose work it divides (cycles per pixel = work / parallelism)
    "MVAU": {"SIMD": ("MW",), "PE": ("MH",)},
    "Thresholding": {"PE": ("NumChannels",)},
    "DuplicateStreams": {"PE": ("NumChannels",)},
    "FMPadding": {"SIMD": ("NumChannels",)},
    "ConvolutionInputGenerator": {"SIMD": ("IFMChannels",)},
    "Pool": {"PE": ("Channels",)},
    "StreamingConcat": {"SIMD": ("ChannelsPerStream",)},
}


class FakeLayer:
    """A hardware layer as the folding sees FINN's: its node, attributes, input datatype and a cycle estimate of
    ``pixels`` times the work per pixel over the parallelism, as FINN's estimates go."""

    def __init__(self, name: str, op_type: str, inputs: list[str], bits: int = 4, pixels: int = PIXELS,
                 **attrs) -> None:
        self.onnx_node = SimpleNamespace(name=name, op_type=op_type, input=inputs, output=[name])
        self.attrs = {"PE": 1, "SIMD": 1, **attrs}
        self.bits, self.pixels = bits, pixels

    def get_nodeattr(self, name: str):
        return self.attrs[name]

    def set_nodeattr(self, name: str, value) -> None:
        self.attrs[name] = value

    def get_input_datatype(self, ind: int = 0) -> SimpleNamespace:
        return SimpleNamespace(bitwidth=lambda: self.bits)

    def get_exp_cycles(self) -> int:
        cycles = self.pixels
        for fold, works in FOLDS[base_op(self.onnx_node.op_type)].items():
            for work in works:
                value = self.attrs[work]
                cycles *= (sum(value) if isinstance(value, list) else value) // self.attrs[fold]
        return cycles


def small_unet() -> list[FakeLayer]:
    """One level of a U-Net: conv, fork, max-pool (window generator + pool), deep conv, concat, head; serial but for
    the HLS conv whose SIMD has a floor. The head has the most pixels: the slowest layer at full parallelism."""
    return [
        FakeLayer("conv0", "MVAU_hls", ["x"], MW=9, MH=8),
        FakeLayer("relu0", "Thresholding_hls", ["conv0"], NumChannels=8),
        FakeLayer("fork0", "DuplicateStreams_hls", ["relu0"], NumChannels=8),
        FakeLayer("swg0", "ConvolutionInputGenerator_rtl", ["fork0"], IFMChannels=8),
        FakeLayer("pool0", "Pool_hls", ["swg0"], Channels=8),
        FakeLayer("pad1", "FMPadding_rtl", ["pool0"], NumChannels=8),
        FakeLayer("conv1", "MVAU_hls", ["pad1"], MW=2048, MH=8, SIMD=2),  # MW > 1024: HLS needs SIMD >= 2
        FakeLayer("concat", "StreamingConcat_hls", ["fork0", "conv1"], ChannelsPerStream=[8, 8]),
        FakeLayer("head", "MVAU_rtl", ["concat"], pixels=1024, MW=2048, MH=1),  # RTL: SIMD 1 allowed
    ]


def luts(layers: list[FakeLayer], per_lane: float = 100.0) -> dict:
    """A design whose LUTs grow with the parallelism (``PE * SIMD`` of every layer), nothing else used."""
    total = {"LUT": per_lane * sum(la.attrs["PE"] * la.attrs["SIMD"] for la in layers), "BRAM_18K": 0, "URAM": 0,
             "DSP": 0}
    return {"total": total, "layers": total}


def test_options_follow_finn_rules():
    layers = small_unet()
    units = {unit.name: unit for unit in folding_units(layers)}
    assert list(units)[0] == "pool0" and "swg0" not in units  # pools first, each with its window generator
    for option in units["pool0"].options:
        (swg, simd_attr, simd), (pool, pe_attr, pe) = option
        assert (swg.onnx_node.name, simd_attr, pool.onnx_node.name, pe_attr) == ("swg0", "SIMD", "pool0", "PE")
        assert simd == pe and 8 % pe == 0
    conv1 = [{attr: v for _, attr, v in o} for o in units["conv1"].options]
    assert min(o["SIMD"] for o in conv1) == 2  # SIMD >= MW / 1024 for HLS
    assert all(2048 % o["SIMD"] == 0 and 8 % o["PE"] == 0 for o in conv1)
    lanes = [o["SIMD"] * o["PE"] for o in conv1]
    assert lanes == sorted(lanes)  # cheapest first
    assert units["head"].options[0] == [(layers[-1], "SIMD", 1), (layers[-1], "PE", 1)]  # RTL: no SIMD floor
    # 4-bit skip streams fill whole bytes: fork and concat only at even parallelism
    assert [o[0][2] for o in units["fork0"].options] == [2, 4, 8]
    assert [o[0][2] for o in units["concat"].options] == [2, 4, 8]
    assert [o[0][2] for o in units["relu0"].options] == [1, 2, 4, 8]


def test_fold_for_target_meets_it_with_the_cheapest_folding():
    layers = small_unet()
    report = fold_for_target(layers, 10_000, PART, lambda: luts(layers))
    assert report["target_met"] and report["folded_for_cycles"] == 10_000 and report["part"] == PART
    assert report["budget"] == resource_budget(PART) and report["resources"] == luts(layers)["total"]
    assert report["fastest_cycles"] == 1024 and report["fastest_cycles_node"] == "head"  # MW / SIMD, all at once
    check_folding(layers)
    for unit in folding_units(layers):  # each unit at its cheapest option within the target
        assert unit.cycles() <= 10_000
        index = unit.options.index([(layer, attr, layer.attrs[attr]) for layer, attr, _ in unit.options[0]])
        for cheaper in unit.options[:index]:
            unit.apply(cheaper)
            assert unit.cycles() > 10_000


def test_target_over_budget_keeps_the_fastest_folding_within_it():
    layers = small_unet()
    budget_lut = resource_budget(PART)["LUT"]
    report = fold_for_target(layers, 1024, PART, lambda: luts(layers, per_lane=budget_lut / 120))
    assert not report["target_met"] and report["folded_for_cycles"] > 1024
    assert report["resources"]["LUT"] <= budget_lut
    check_folding(layers)


def test_unreachable_target_and_no_fitting_folding_are_named():
    layers = small_unet()
    with pytest.raises(UNetBuildError, match=r"target of 1000 cycles per frame cannot be reached: head needs at "
                                             r"least 1024 cycles"):
        fold_for_target(layers, 1000, PART, lambda: luts(layers))
    for target in (2000, 10**9):  # also a target slower than the serial design
        with pytest.raises(UNetBuildError, match=r"no folding fits 80% of xc7z020clg400-1 .* the serial design needs"):
            fold_for_target(layers, target, PART, lambda: luts(layers, per_lane=1e9))


def test_broken_rules_are_named():
    layers = {layer.onnx_node.name: layer for layer in small_unet()}
    with pytest.raises(UNetBuildError, match="no folding rule for Upsample_hls"):
        folding_units([FakeLayer("up", "Upsample_hls", ["x"])])
    with pytest.raises(UNetBuildError, match="pool pool1 is not fed by a window generator"):
        folding_units([layers["conv0"], FakeLayer("pool1", "Pool_hls", ["conv0"], Channels=8)])
    for name, attr, value, message in [
        ("conv1", "SIMD", 1, r"folding of conv1: SIMD 1 < MW / 1024 = 2"),
        ("conv0", "SIMD", 2, r"folding of conv0: SIMD 2 must divide MW 9"),
        ("pool0", "PE", 2, r"folding of pool0: PE 2 must equal its window generator's SIMD 1"),
        ("concat", "SIMD", 3, r"folding of concat: SIMD 3 must divide every input's channels \[8, 8\]"),
    ]:
        broken = small_unet()
        next(la for la in broken if la.onnx_node.name == name).attrs[attr] = value
        with pytest.raises(UNetBuildError, match=message):
            check_folding(broken)
