"""FINN's own flow on an exported U-Net: every layer a hardware layer, code generation, folding for a frame
rate under FINN's rules, the folded graph bit-exact against PyTorch, and clear failures (needs the FINN
toolchain of ``scripts/install_finn.sh``; skipped without it)."""

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import helper, numpy_helper
from tiny_unet import SIZE, mixed_width_net

from monai_quantunet.export import export_model
from monai_quantunet.export.finn_toolchain import FinnBuildError

TARGET_FPS = 2000  # at 100 MHz: 50,000 cycles per 32x32 slice, which the serial design (295k) misses
HW_DOMAIN = "finn.custom_op.fpgadataflow"


@pytest.fixture(scope="module")
def net():
    return mixed_width_net()


@pytest.fixture(scope="module")
def slices(synthetic_dataset):
    from monai_quantunet.export import example_slices

    return torch.cat([example_slices(synthetic_dataset, SIZE, num_slices=3)[0], torch.rand(1, 1, *SIZE)])


@pytest.fixture(scope="module")
def built(net, slices, finn_toolchain, tmp_path_factory):
    """An export verified through FINN (scratch build), then its own folder built to code generation."""
    result = export_model(net, tmp_path_factory.mktemp("finn") / "export", slices, target_fps=TARGET_FPS,
                          finn=finn_toolchain, qonnx_inference_cost=False, verbose=False)
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
    assert tail["accelerator_output"]["datatype"].startswith("INT") and tail["accelerator_output"]["layout"] == "NHWC"
    for name in ("estimate_layer_resources.json", "estimate_layer_cycles.json", "estimate_network_performance.json"):
        assert (output / "report" / name).is_file()


def test_folded_graph_equals_pytorch(built, net, slices):
    result, _, output = built
    record = result.record["verification"]["finn_folded"]
    assert record["passed"] and record["mask_mismatches"] == 0 and record["num_slices"] == len(slices)
    logits = np.load(output / "verification_output" / "folded_python_logits.npy")
    with torch.no_grad():
        reference = net(slices).numpy()
    assert np.abs(logits - reference).max() <= 1e-4
    np.testing.assert_array_equal(logits > 0, reference > 0)


def test_folding_meets_target_under_finn_rules(built):
    result, _, output = built
    performance = json.loads((output / "report" / "estimate_network_performance.json").read_text())
    assert performance["estimated_throughput_fps"] >= TARGET_FPS  # FINN's own estimate
    folding = json.loads((output / "report" / "folding_report.json").read_text())
    assert folding["target_met"] and folding["part"] == "xc7z020clg400-1"
    assert all(folding["resources"][r] <= folding["budget"][r] for r in folding["budget"])
    graph = onnx.load(output / "intermediate_models" / "step_hw_codegen.onnx").graph
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
