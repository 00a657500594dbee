"""The FIFO model (``monai_quantunet.export.finn_build.fifo_model``) on small U-Nets whose FIFO depths are worked
out by hand, its data dependencies, its errors and the FIFO memory count. Needs no FINN."""

import numpy as np
import pytest

from monai_quantunet.export.finn_build.fifo_model import (
    FifoModelError,
    StreamNode,
    elementwise,
    fifo_memory,
    padding,
    pixel_padding,
    simulate,
    sliding_window,
    upsample,
)


def node(name, inputs, outputs, need, in_pixels, cycles, words=1, lookahead=0):
    """A layer with one word of 4 bits per pixel on every stream, every input needing ``need``."""
    return StreamNode(name, tuple(inputs), tuple(outputs), (need,) * len(inputs), (in_pixels,) * len(inputs),
                      (words,) * len(inputs), (words,) * len(outputs), (4,) * len(outputs), cycles,
                      (lookahead,) * len(inputs))


def unet(size: int, levels: int, fork_cycles_per_pixel: float = 64, pool_cycles_per_pixel: float = 1):
    """A U-Net of forks, 2x2 max-pools (window generator + pool), nearest upsampling and concats, one word per
    pixel. The level-0 fork is the slowest layer (the interval); every other layer takes one cycle per pixel,
    the pools ``pool_cycles_per_pixel``."""
    nodes, h, x, skips = [], size, "in", []
    for level in range(levels):
        n, half = h * h, h // 2
        per_pixel = fork_cycles_per_pixel if level == 0 else 1
        nodes += [node(f"fork{level}", [x], [f"skip{level}", f"down{level}"], elementwise(n), n, n * per_pixel),
                  node(f"window{level}", [f"down{level}"], [f"win{level}"],
                       sliding_window((h, h), (half, half), (2, 2), (2, 2)), n, half * half),
                  node(f"pool{level}", [f"win{level}"], [f"pool{level}"], elementwise(half * half), half * half,
                       half * half * pool_cycles_per_pixel)]
        skips.append((level, h))
        x, h = f"pool{level}", half
    for level, size_up in reversed(skips):
        n = size_up * size_up
        nodes += [node(f"up{level}", [x], [f"up{level}"], upsample((h, h), (size_up, size_up)), h * h, n),
                  node(f"concat{level}", [f"skip{level}", f"up{level}"], [f"cat{level}"], elementwise(n), n, n)]
        x, h = f"cat{level}", size_up
    return nodes


def test_one_level_skip_fifo_is_the_raster_bound():
    # concat pixel (0, 0) needs upsampled pixel (0, 0) <- pool pixel (0, 0) <- its window's bottom-right input
    # pixel (1, 1) = 9: the skip FIFO holds pixels 0..9 when every layer but the input's pace is fast
    plan = simulate(unet(8, 1))
    assert plan.streams["skip0"].max_pixels == 10 and plan.streams["skip0"].depth == 10
    assert plan.interval == 64 * 64 and plan.achieved_interval == plan.interval  # no stall at the interval
    assert plan.streams["in"].producer is None and plan.streams["cat0"].consumer is None


def test_two_level_skip_fifos_are_the_raster_bounds():
    # level 1 (8x8): as above, 10 pixels. Level 0 (16x16): concat pixel (0, 0) <- level-1 concat (0, 0) <- its
    # pool input (1, 1) of level 1 <- level-0 window (1, 1) whose bottom-right input is (3, 3) = 3 * 16 + 3 = 51:
    # 52 pixels
    plan = simulate(unet(16, 2))
    assert plan.streams["skip1"].max_pixels == 10
    assert plan.streams["skip0"].max_pixels == 52
    assert plan.achieved_interval == plan.interval


def test_a_slow_layer_on_the_down_path_deepens_the_skip_fifo():
    # fork every 8 cycles (pixel r written at 8 (r + 2)), pools 32 cycles per pixel: pool pixel 3 is ready at
    # 217, when the fork has written pixels 0..25 and the concat read 0..5: 20 pixels, twice the raster bound
    plan = simulate(unet(8, 1, fork_cycles_per_pixel=8, pool_cycles_per_pixel=32))
    assert plan.streams["skip0"].max_pixels == 20
    assert plan.achieved_interval == plan.interval == 512


def test_depth_counts_words_and_covers_the_latency_of_several_frames():
    nodes = unet(16, 4, fork_cycles_per_pixel=1, pool_cycles_per_pixel=8)  # the level-0 pool sets the pace
    words = [StreamNode(n.name, n.inputs, n.outputs, n.needs, n.in_pixels, (3,) * len(n.inputs),
                        (3,) * len(n.outputs), n.out_bits, n.cycles * 3, n.lookahead) for n in nodes]
    plan = simulate(words)
    assert plan.latency > plan.interval  # the down-and-up path takes longer than a frame
    skip = plan.streams["skip0"]
    assert skip.depth == 3 * skip.max_pixels and skip.max_pixels > 16 * 16  # more than one frame in flight
    assert skip.max_pixels == simulate(words, frames=8).streams["skip0"].max_pixels  # the steady state


def test_lookahead_drains_the_fifo_before_a_window_generator():
    lazy = simulate(unet(8, 1)).streams["down0"].max_pixels
    nodes = unet(8, 1)
    nodes[1] = StreamNode(*[getattr(nodes[1], f) for f in ("name", "inputs", "outputs", "needs", "in_pixels",
                                                           "in_words", "out_words", "out_bits", "cycles")], (10,))
    assert simulate(nodes).streams["down0"].max_pixels < lazy


def test_dependencies():
    np.testing.assert_array_equal(sliding_window((4, 4), (2, 2), (2, 2), (2, 2)), [5, 7, 13, 15])
    np.testing.assert_array_equal(sliding_window((4, 4), (2, 2), (3, 3), (1, 1)), [10, 11, 14, 15])
    # 2x2 image padded by one: the top row needs nothing, (1, 0) needs nothing before pixel 0 either
    np.testing.assert_array_equal(padding((2, 2), (1, 1, 1, 1)).reshape(4, 4),
                                  [[-1, -1, -1, -1], [-1, 0, 1, 1], [1, 2, 3, 3], [3, 3, 3, 3]])
    # zeros between pixels: row 1 comes after input row 0 has been read whole
    np.testing.assert_array_equal(pixel_padding((2, 2), (2, 2)).reshape(3, 3), [[0, 0, 1], [1, 1, 1], [2, 2, 3]])
    np.testing.assert_array_equal(upsample((2, 2), (4, 4)).reshape(4, 4)[1:3], [[0, 0, 1, 1], [2, 2, 3, 3]])
    with pytest.raises(FifoModelError, match="reads outside its input"):
        sliding_window((4, 4), (3, 3), (3, 3), (1, 1))


def test_dependency_cycle_names_the_fifos():
    nodes = [node("a", ["in", "ba"], ["ab"], elementwise(4), 4, 4),
             node("b", ["ab"], ["ba", "out"], elementwise(4), 4, 4)]
    with pytest.raises(FifoModelError, match=r"dependency cycle: FIFO\(s\) \['ab', 'ba'\]"):
        simulate(nodes)


def test_malformed_streams_are_named():
    fan_out = [node("a", ["in"], ["x"], elementwise(4), 4, 4), node("b", ["x"], ["y"], elementwise(4), 4, 4),
               node("c", ["x"], ["z"], elementwise(4), 4, 4)]
    with pytest.raises(FifoModelError, match="stream x feeds both b and c"):
        simulate(fan_out)
    widths = [node("a", ["in"], ["x"], elementwise(4), 4, 4, words=2), node("b", ["x"], ["y"], elementwise(4), 4, 4)]
    with pytest.raises(FifoModelError, match="stream x into b: 4 pixels of 1 words, but a writes 4 of 2"):
        simulate(widths)


def test_fifo_memory_as_vivado_builds_it():
    # an axis_data_fifo's TDATA is whole bytes: 32768 4-bit words take 16 RAMB18 (2K x 9), not 8 (4K x 4)
    assert fifo_memory([(32768, "vivado")], 4, "block") == {"LUT": 30, "BRAM_18K": 16, "URAM": 0}
    assert fifo_memory([(32768, "vivado")], 4, "ultra")["URAM"] == 8  # 4K x 72 URAM288, 8 bits wide
    assert fifo_memory([(1024, "vivado")], 20, "block")["BRAM_18K"] == 2  # 24 bits: 1K x 18 twice
    assert fifo_memory([(256, "rtl")], 10, "block") == {"LUT": 8 * 5 + 16, "BRAM_18K": 0, "URAM": 0}
    assert fifo_memory([(8192, "vivado"), (512, "vivado"), (100, "rtl")], 8, "block")["BRAM_18K"] == 4 + 1
    with pytest.raises(FifoModelError, match="at most 32768"):
        fifo_memory([(65536, "vivado")], 4, "block")


def test_memory_style_per_part_and_fifos_no_part_holds_are_named():
    from monai_quantunet.export.finn import build_config
    from monai_quantunet.export.finn_build.fifos import plan_memory

    assert build_config("KV260_SOM")["large_fifo_mem_style"] == "ultra"  # K26 has URAM
    assert build_config("Ultra96-V2")["large_fifo_mem_style"] == "block"
    plan = simulate(unet(8, 1))
    plan.streams["skip0"].depth = 40000
    with pytest.raises(FifoModelError, match=r"FIFO skip0 \(fork0 -> concat0, 40000 x 4 bits\): an axis_data_fifo "
                                             r"holds at most 32768 words.*set split_large_fifos"):
        plan_memory(plan, "xc7z020clg400-1", "block", split_large_fifos=False)
    plan.streams["skip0"].depth, plan.streams["skip0"].bits = 30000, 512
    with pytest.raises(FifoModelError, match=r"FIFO skip0 \(fork0 -> concat0, 30000 x 512 bits\) needs .* more "
                                             r"BRAM_18K than xc7z020clg400-1 has \({'BRAM_18K': 280}\)"):
        plan_memory(plan, "xc7z020clg400-1", "block", split_large_fifos=False)
