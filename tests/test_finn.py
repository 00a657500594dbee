"""FINN's own flow on an exported U-Net: every layer a hardware layer, code generation, folding for a frame
rate under FINN's rules with everything counted, FIFOs sized by the FIFO model, the folded graph's integer output
exactly the streamlined graph's, and clear failures (needs the FINN toolchain of ``scripts/install_finn.sh``;
skipped without it)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import helper, numpy_helper
from qonnx.core.modelwrapper import ModelWrapper
from tiny_unet import SIZE, mixed_width_net

from monai_quantunet.export import export_model
from monai_quantunet.export.finn_build.fifo_model import VIVADO_MAX_DEPTH, fifo_memory
from monai_quantunet.export.finn_build.host_tail import apply_host_tail
from monai_quantunet.export.finn_build.targets import part_resources
from monai_quantunet.export.finn_toolchain import FinnBuildError

TARGET_FPS = 2000  # at 100 MHz: 50,000 cycles per 32x32 slice, which the serial design (295k) misses
HW_DOMAIN = "finn.custom_op.fpgadataflow"


@pytest.fixture(scope="module")
def net():
    return mixed_width_net(seed=1)  # seed 0's logits are one constant: an exact comparison of them proves little


@pytest.fixture(scope="module")
def slices(synthetic_dataset):
    from monai_quantunet.export import example_slices

    return torch.cat([example_slices(synthetic_dataset, SIZE, num_slices=3)[0], torch.rand(1, 1, *SIZE)])


@pytest.fixture(scope="module")
def built(net, slices, finn_toolchain, tmp_path_factory):
    """An export verified through FINN (scratch build), then its own folder built to code generation."""
    result = export_model(net, tmp_path_factory.mktemp("finn") / "export", slices, target_fps=TARGET_FPS,
                          cppsim_slices=0, finn=finn_toolchain, qonnx_inference_cost=False, verbose=False)
    status = finn_toolchain.run_build(result.finn_dir, "step_hw_codegen", log=None)
    return result, status, result.finn_dir / "output"


def attrs(node) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def test_every_layer_is_hardware_and_code_is_generated(built):
    _, status, output = built
    assert status["status"] == "ok" and status["steps"][-1] == "step_hw_codegen"
    graph = onnx.load(output / "intermediate_models" / "step_hw_codegen.onnx").graph
    assert all(n.domain.startswith(HW_DOMAIN + ".") for n in graph.node), [n.op_type for n in graph.node]
    types = {n.op_type.rsplit("_", 1)[0] for n in graph.node}
    assert {"MVAU", "ConvolutionInputGenerator", "Pool", "StreamingConcat", "DuplicateStreams",
            "FMPadding_Pixel", "Thresholding"} <= types
    assert sum(n.op_type.startswith("MVAU") for n in graph.node) == 23  # 18 convs, 4 up-convs, the head
    for node in graph.node:
        code = Path(attrs(node)["code_gen_dir_ipgen"].decode())
        assert code.is_dir() and any(code.iterdir()), node.name
    parent = onnx.load(output / "intermediate_models" / "dataflow_parent.onnx").graph
    assert [n.op_type for n in parent.node] == ["StreamingDataflowPartition", "Transpose", "Mul", "Add"]
    tail = json.loads((output / "host_tail.json").read_text())
    assert [op["op"] for op in tail["host_ops"]] == ["Transpose", "Mul", "Add"]
    final = ModelWrapper(str(output / "intermediate_models" / "step_hw_codegen.onnx"))
    out = final.graph.output[0].name
    assert tail["accelerator_output"] == {"shape": final.get_tensor_shape(out), "layout": "NHWC",
                                          "datatype": final.get_tensor_datatype(out).name}
    assert tail["accelerator_output"]["datatype"] != "INT32"  # step_minimize_bit_width narrowed it
    for name in ("estimate_layer_resources.json", "estimate_layer_cycles.json", "estimate_network_performance.json"):
        assert (output / "report" / name).is_file()


def test_folded_graph_integer_output_is_exact(built, net, slices):
    result, _, output = built
    summary = json.loads((output / "verification_output" / "folded_integer.json").read_text())
    assert summary == result.record["finn"]["integer_verification"]
    assert summary["passed"] and summary["differing_values"] == 0 and summary["slices"] == len(slices)
    y = np.load(output / "verification_output" / "folded_accelerator_output.npy")
    assert y.shape == (len(slices), *SIZE, 1) and np.array_equal(y, np.round(y)) and np.ptp(y) > 0
    tail = json.loads((output / "host_tail.json").read_text())
    logits = apply_host_tail(y, tail["host_ops"])
    np.testing.assert_array_equal(logits, np.load(output / "verification_output" / "folded_python_logits.npy"))
    with torch.no_grad():
        reference = net(slices).numpy()
    assert np.abs(logits - reference).max() <= 1e-4  # the host tail of host_tail.json finishes the network
    np.testing.assert_array_equal(logits > 0, reference > 0)
    record = result.record["verification"]["finn_folded"]
    assert record["passed"] and record["mask_mismatches"] == 0 and record["num_slices"] == len(slices)


CORRUPT_LAYER = """
import sys
from finn_build import FOLDER, UNetBuildError
from finn_build.build import load_config
from finn_build.verification import step_unet_verify_folded
from qonnx.core.modelwrapper import ModelWrapper
cfg = load_config(FOLDER / "dataflow_build_config.json")
model = ModelWrapper("output/intermediate_models/step_transpose_decomposition.onnx")
node = model.get_node_from_name(sys.argv[1])
model.set_initializer(node.input[1], -model.get_initializer(node.input[1]))
try:
    step_unet_verify_folded(model, cfg)
except UNetBuildError as e:
    print(e)
"""


def test_differing_layer_is_named(built, finn_toolchain, tmp_path):
    # the layer before the head, its weights negated (the tiny net's deep path barely reaches the output)
    folder = Path(shutil.copytree(built[0].finn_dir, tmp_path / "finn"))
    out = subprocess.run([str(finn_toolchain.python), "-c", CORRUPT_LAYER, "MVAU_hls_21"], cwd=folder, text=True,
                         capture_output=True, env={"FINN_ROOT": str(finn_toolchain.finn_root), "PATH": "/usr/bin:/bin"})
    assert "folded graph: the integer output differs from the streamlined graph's on slice 0" in out.stdout, \
        out.stderr[-2000:]
    assert "first differing layer: MVAU_hls_21 (MVAU, output " in out.stdout


def fifo_chains(graph) -> dict[tuple[str, str], list]:
    """``(producer, consumer)`` -> the FIFO nodes between them, for every stream of the graph's layers."""
    consumers = {t: n for n in graph.node for t in n.input}
    chains = {}
    for node in graph.node:
        if node.op_type.startswith("StreamingFIFO"):
            continue
        for t in node.output:
            fifos = []
            while t in consumers and consumers[t].op_type.startswith("StreamingFIFO"):
                fifos.append(consumers[t])
                t = consumers[t].output[0]
            chains[(node.name, consumers[t].name if t in consumers else None)] = fifos
    return chains


def test_fifos_have_the_modelled_depths_and_memory(built):
    _, _, output = built
    report = json.loads((output / "report" / "fifo_depths.json").read_text())
    cfg = json.loads((output.parent / "dataflow_build_config.json").read_text())
    assert cfg["auto_fifo_depths"] is False and cfg["split_large_fifos"] is True
    assert report["ram_style"] == cfg["large_fifo_mem_style"] == "block" and report["fifos_inserted"]
    assert report["achieved_interval_cycles"] == report["interval_cycles"]
    graph = onnx.load(output / "intermediate_models" / "step_unet_fifo_depths.onnx").graph
    chains = fifo_chains(graph)
    skips = []
    for s in report["streams"].values():
        if s["producer"] is None:
            continue
        fifos = chains[(s["producer"], s["consumer"])]
        parts = [(attrs(f)["depth"], attrs(f)["impl_style"].decode()) for f in fifos]
        assert sum(d for d, _ in parts) == (s["depth"] if s["depth"] > 2 or fifos else 0), s
        assert all(d <= VIVADO_MAX_DEPTH for d, _ in parts)
        assert all(attrs(f)["ram_style"].decode() == "block" for f in fifos if attrs(f)["impl_style"] == b"vivado")
        assert s["memory"] == {k: sum(fifo_memory([p], s["bits"], "block")[k] for p in parts) for k in s["memory"]}
        if s["producer"].startswith("DuplicateStreams") and s["consumer"].startswith("StreamingConcat"):
            skips.append(s)
    # four skip connections, the deepest at full resolution; a FIFO this deep is split into axis_data_fifos
    assert len(skips) == 4
    assert max(skips, key=lambda s: s["pixels_per_frame"])["depth"] == max(s["depth"] for s in skips)
    assert any(attrs(f)["impl_style"] == b"vivado" for f in chains[(skips[0]["producer"], skips[0]["consumer"])])


def test_budget_counts_width_converters_and_fifos(built):
    _, _, output = built
    folding = json.loads((output / "report" / "folding_report.json").read_text())
    by_source = folding["resources_by_source"]
    assert by_source["dwcs"]["LUT"] > 0 and by_source["fifos"]["LUT"] > 0 and by_source["fifos"]["BRAM_18K"] > 0
    for r, total in folding["resources"].items():
        assert total == by_source["layers"][r] + by_source["dwcs"][r] + by_source["fifos"][r]
        assert total <= folding["budget"][r]
    final = json.loads((output / "report" / "fifo_depths.json").read_text())
    assert final["within_budget"] and final["available"] == part_resources("xc7z020clg400-1")


def test_folding_meets_target_under_finn_rules(built):
    result, _, output = built
    performance = json.loads((output / "report" / "estimate_network_performance.json").read_text())
    assert performance["estimated_throughput_fps"] >= TARGET_FPS  # FINN's own estimate
    folding = json.loads((output / "report" / "folding_report.json").read_text())
    assert folding["target_met"] and folding["part"] == "xc7z020clg400-1"
    assert all(folding["resources"][r] <= folding["budget"][r] for r in folding["budget"])
    graph = onnx.load(output / "intermediate_models" / "step_transpose_decomposition.onnx").graph  # no FIFOs yet
    nodes = {n.name: n for n in graph.node}
    producer = {o: n for n in graph.node for o in n.output}
    assert set(json.loads((output / "folding_config.json").read_text())) - {"Defaults"} <= set(nodes)
    assert any(attrs(n).get("PE", 1) * attrs(n).get("SIMD", 1) > 1 for n in graph.node)  # it did fold
    for node in graph.node:
        a, op = attrs(node), node.op_type.rsplit("_", 1)[0]
        if op == "MVAU":
            assert a["MW"] % a["SIMD"] == 0 and a["MH"] % a["PE"] == 0, node.name
            if node.op_type.endswith("_hls"):
                assert a["SIMD"] >= a["MW"] / 1024, node.name
        elif op == "Pool":
            assert a["PE"] == attrs(producer[node.input[0]])["SIMD"], node.name
        elif op == "StreamingConcat":
            assert all(c % a["SIMD"] == 0 for c in a["ChannelsPerStream"]), node.name
        elif op in ("Thresholding", "DuplicateStreams"):
            assert a["NumChannels"] % a["PE"] == 0, node.name
        elif op in ("FMPadding", "FMPadding_Pixel"):
            assert a["NumChannels"] % a["SIMD"] == 0, node.name
        elif op == "ConvolutionInputGenerator":
            assert a["IFMChannels"] % a["SIMD"] == 0, node.name
    assert result.record["finn"]["folding"]["estimated_fps"] >= TARGET_FPS


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd"])
def test_host_program_gives_the_bundles_mask(built, net, finn_toolchain, synthetic_dataset, tmp_path, suffix):
    """``host.py`` with the accelerator replaced by FINN's Python execution of the built graph: the bundle's mask."""
    import SimpleITK as sitk

    from monai_quantunet.inference import segment_volume

    folder = built[0].finn_dir
    image = tmp_path / f"volume{suffix}"
    sitk.WriteImage(sitk.ReadImage(str(sorted((synthetic_dataset / "imagesTr").iterdir())[0])), str(image))
    mask = tmp_path / f"mask{suffix}"
    out = subprocess.run([sys.executable, "host.py", str(image), str(mask), "--finn-python",
                          str(finn_toolchain.python)], cwd=folder, capture_output=True, text=True,
                         env={**os.environ, "FINN_ROOT": str(finn_toolchain.finn_root)})
    assert out.returncode == 0, out.stderr[-3000:]
    written, reference = sitk.ReadImage(str(mask)), sitk.ReadImage(str(image))
    for prop in ("GetSize", "GetSpacing", "GetOrigin", "GetDirection"):
        assert getattr(written, prop)() == getattr(reference, prop)()
    expected = segment_volume(net, image, SIZE)
    got = sitk.GetArrayFromImage(written).transpose(2, 1, 0)
    assert expected.any() and not expected.all()
    np.testing.assert_array_equal(got, expected.astype(np.uint8))


def rebuild(built, tmp_path, edit_config=None, edit_model=None) -> Path:
    """A copy of the built export's FINN folder, unbuilt, with its config and/or model edited."""
    folder = Path(shutil.copytree(built[0].finn_dir, tmp_path / "finn", ignore=shutil.ignore_patterns("output")))
    if edit_config:
        cfg = json.loads((folder / "dataflow_build_config.json").read_text())
        edit_config(cfg, folder)
        (folder / "dataflow_build_config.json").write_text(json.dumps(cfg))
    if edit_model:
        model = onnx.load(folder / "model.onnx")
        edit_model(model)
        onnx.save(model, folder / "model.onnx")
    return folder


def failed_build(finn_toolchain, folder: Path, match: str) -> dict:
    with pytest.raises(FinnBuildError, match=match):
        finn_toolchain.run_build(folder, "step_hw_codegen", log=None)
    status = json.loads((folder / "output" / "build_status.json").read_text())
    assert status["status"] == "failed"
    return status


def test_unreachable_target_names_the_layer(built, finn_toolchain, tmp_path):
    folder = rebuild(built, tmp_path, edit_config=lambda cfg, _: cfg.update(target_fps=10_000_000))
    status = failed_build(finn_toolchain, folder, r"cannot be reached: \w+_\d+ needs at least \d+ cycles")
    assert status["step"] == "step_unet_folding"


def test_folding_config_with_unknown_node_is_refused(built, finn_toolchain, tmp_path):
    def with_folding_file(cfg, folder):
        (folder / "fold.json").write_text(json.dumps({"MVAU_hls_999": {"PE": 2}}))
        cfg["folding_config_file"] = "fold.json"

    failed_build(finn_toolchain, rebuild(built, tmp_path, edit_config=with_folding_file),
                 r"fold\.json: node name\(s\) \['MVAU_hls_999'\] are not in the graph")


def test_hand_folding_breaking_finn_rules_is_refused(built, finn_toolchain, tmp_path):
    pool = next(n for n in onnx.load(built[2] / "intermediate_models" / "step_hw_codegen.onnx").graph.node
                if n.op_type.startswith("Pool"))

    def with_folding_file(cfg, folder):
        (folder / "fold.json").write_text(json.dumps({pool.name: {"PE": 1}}))  # its window generator keeps SIMD C
        cfg["folding_config_file"] = "fold.json"

    failed_build(finn_toolchain, rebuild(built, tmp_path, edit_config=with_folding_file),
                 rf"folding of {pool.name}: PE 1 must equal its window generator's SIMD [2-9]")


def quant_nodes_of_first_concat(model):
    producer = {o: n for n in model.graph.node for o in n.output}
    concat = next(n for n in model.graph.node if n.op_type == "Concat")
    return [producer[name] for name in concat.input]


def set_initializer(model, name, value):
    init = next(t for t in model.graph.initializer if t.name == name)
    init.CopyFrom(numpy_helper.from_array(np.asarray(value, dtype=numpy_helper.to_array(init).dtype), name))


def test_concat_inputs_with_different_scales_are_refused(built, finn_toolchain, tmp_path):
    def separate_scales(model):
        quant = quant_nodes_of_first_concat(model)[1]
        scale = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == quant.input[1]))
        fresh = quant.input[1] + "_other"
        model.graph.initializer.append(numpy_helper.from_array(scale * 1.5, fresh))
        quant.input[1] = fresh

    failed_build(finn_toolchain, rebuild(built, tmp_path, edit_model=separate_scales),
                 r"concat \w+: inputs carry different scales or widths")


def test_activation_over_8_bits_is_refused(built, finn_toolchain, tmp_path):
    def widen(model):
        quant = quant_nodes_of_first_concat(model)[0]
        set_initializer(model, quant.input[3], 10.0)

    failed_build(finn_toolchain, rebuild(built, tmp_path, edit_model=widen),
                 r"activation quantizer \w+ \(output \w+\) has 10 bits")


def test_finn_build_cli(built, finn_toolchain, tmp_path, capsys):
    from monai_quantunet.cli import main

    folder = rebuild(built, tmp_path)
    assert main(["finn-build", str(folder), "--finn", str(finn_toolchain.finn_root.parent),
                 "--steps-until", "step_unet_convert_to_hw"]) == 0
    assert "FINN build of" in capsys.readouterr().out
    assert main(["finn-build", str(tmp_path / "nowhere"), "--finn", str(finn_toolchain.finn_root.parent)]) == 2
    assert "not a FINN build folder" in capsys.readouterr().err
