"""Export: QONNX / QCDQ equal PyTorch, FINN folder, cost report, clean failures, CLI and bundle config."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from brevitas.nn import QuantReLU
from brevitas.quant import Uint8ActPerTensorFloat
from conftest import BUNDLE
from qonnx.core.modelwrapper import ModelWrapper

from monai_quantunet.bitwidth import bit_width_report
from monai_quantunet.checkpoint import load_checkpoint
from monai_quantunet.export import (
    ExportVerificationError,
    example_slices,
    export_model,
    onnx_network,
)
from monai_quantunet.export.finn_build.commits import QONNX_COMMIT
from monai_quantunet.export.finn_build.steps import UNET_STEPS, step_name
from monai_quantunet.export.qonnx import run_qonnx
from monai_quantunet.export.verify import QONNX_ATOL, compare_logits
from monai_quantunet.inference import predict_volume
from monai_quantunet.networks import QuantUNet
from tiny_unet import CHANNELS, SIZE, mixed_width_net

@pytest.fixture(scope="module")
def net() -> QuantUNet:
    return mixed_width_net()


@pytest.fixture(scope="module")
def slices(synthetic_dataset) -> torch.Tensor:
    real, source = example_slices(synthetic_dataset, SIZE, num_slices=3)
    assert "validation" in source and real.shape == (3, 1, *SIZE)
    return torch.cat([real, torch.rand(1, 1, *SIZE)])


@pytest.fixture(scope="module")
def exported(net, slices, tmp_path_factory):
    return export_model(net, tmp_path_factory.mktemp("exp") / "export", slices, verbose=False)


def test_widths_span_2_to_8(net):
    bits = {r.bits for r in bit_width_report(net).layers if r.kind != "input"}
    assert bits == set(range(2, 9))


def test_files_present(exported):
    names = {p.relative_to(exported.out_dir).as_posix() for p in exported.out_dir.rglob("*")}
    assert {"model.qonnx.onnx", "model.qcdq.onnx", "cost.json", "bit_widths.png", "finn/model.onnx",
            "finn/dataflow_build_config.json", "finn/build.py", "finn/host.py", "finn/finn_build/steps.py",
            "finn/finn_build/fifo_model.py", "finn/input.npy", "finn/expected_output.npy", "finn/README.md"} <= names
    assert not [p for p in exported.out_dir.parent.iterdir() if p.name.startswith(".")]  # no temp leftovers


def test_qonnx_equals_pytorch(exported, net, slices):
    model = ModelWrapper(str(exported.qonnx_path))
    assert tuple(model.get_tensor_shape(model.graph.input[0].name)) == (1, 1, *SIZE)
    for node in model.get_nodes_by_op_type("Quant"):
        bits = float(model.get_initializer(node.input[3]))
        assert bits.is_integer() and 2 <= bits <= 8
        assert str(model.get_tensor_datatype(node.output[0])).startswith("SCALEDINT")
    x = torch.cat([slices[:1], torch.randn(1, 1, *SIZE)])  # all of slices: see test_cost_report
    with torch.no_grad():
        ref = net(x).numpy()
    assert np.abs(run_qonnx(model, x) - ref).max() <= 1e-4
    dtypes = set(exported.record["qonnx_quant_dtypes"].values())
    assert "INT8" in dtypes and any(d.startswith("UINT") for d in dtypes)


def test_qcdq_equals_pytorch_and_runs_volumes(exported, net, slices):
    onnx_net = onnx_network(exported.qcdq_path)
    with torch.no_grad():
        ref = net(slices)
    out = onnx_net(slices)
    tol = exported.record["verification"]["qcdq"]["tolerance"]
    assert (out - ref).abs().max() <= tol
    clear = ref.abs() > tol
    assert torch.equal((out > 0)[clear], (ref > 0)[clear])
    volume = torch.rand(1, 1, *SIZE, 5)
    got = predict_volume(onnx_net, volume, SIZE, sw_batch_size=4)
    assert got.shape == (1, 1, *SIZE, 5)
    assert (got - predict_volume(net, volume, SIZE, sw_batch_size=4)).abs().max() <= tol
    with pytest.raises(ValueError, match="model.qcdq.onnx"):
        onnx_net(torch.rand(1, 1, 64, 64))


def test_finn_folder(exported, net, slices):
    finn = exported.finn_dir
    cfg = json.loads((finn / "dataflow_build_config.json").read_text())
    for key in ("output_dir", "synth_clk_period_ns", "shell_flow_type", "target_fps", "auto_fifo_depths",
                "generate_outputs", "verify_input_npy", "verify_expected_output_npy"):
        assert key in cfg, key
    assert "verification_atol" not in cfg  # the folded graph's integer output is compared exactly
    assert cfg["board"] == "Pynq-Z1" and cfg["target_fps"] == 30 and cfg["synth_clk_period_ns"] == 10.0
    assert cfg["enable_build_pdb_debug"] is False
    # FIFOs sized by the project's FIFO model, split beyond an axis_data_fifo, BRAM on a part without URAM
    assert cfg["auto_fifo_depths"] is False and cfg["split_large_fifos"] is True
    assert cfg["large_fifo_mem_style"] == "block"
    assert "folded_hls_cppsim" not in cfg["verify_steps"]  # FINN's own would compare integers with PyTorch logits
    assert cfg["unet_cppsim_slices"] == 1  # build.py's own cppsim check, where HLS headers exist
    # the folder's programs run its own copy of the build package (here without FINN: the command line only)
    usage = subprocess.run([sys.executable, "build.py", "--help"], cwd=finn, capture_output=True, text=True,
                           check=True)
    assert "--steps-until" in usage.stdout and "step_hw_codegen" in usage.stdout
    x, y = np.load(finn / cfg["verify_input_npy"]), np.load(finn / cfg["verify_expected_output_npy"])
    assert x.shape == (len(slices), 1, *SIZE) and y.shape == (len(slices), 1, *SIZE)
    with torch.no_grad():
        np.testing.assert_array_equal(y, net(torch.from_numpy(x)).numpy())  # PyTorch's logits
    assert compare_logits(y, run_qonnx(ModelWrapper(str(finn / "model.onnx")), x), QONNX_ATOL)["passed"]
    readme = (finn / "README.md").read_text()
    assert QONNX_COMMIT[:7] in readme and "logit > 0" in readme
    assert "step_hw_codegen" in readme and "step_hw_ipgen" in readme

    names = [step_name(s) for s in UNET_STEPS]
    assert "step_unet_convert_to_hw" in names and "step_target_fps_parallelization" not in names
    assert "step_make_driver" in names and names.index("step_hw_codegen") < names.index("step_hw_ipgen")


def test_unknown_finn_target_fails_before_work(net, slices, tmp_path):
    with pytest.raises(ValueError, match="unknown board 'Pynq-Z9'"):
        export_model(net, tmp_path / "a", slices, board="Pynq-Z9", verbose=False)
    with pytest.raises(ValueError, match="unknown FPGA part 'xcvu9p"):
        export_model(net, tmp_path / "b", slices, board=None, fpga_part="xcvu9p-flga2104-2-i", verbose=False)
    with pytest.raises(ValueError, match="target_fps"):
        export_model(net, tmp_path / "c", slices, target_fps=0, verbose=False)
    assert list(tmp_path.iterdir()) == []


def test_cost_report(exported, net):
    record = json.loads(exported.cost_path.read_text())
    layers, totals = record["layers"], record["totals"]
    assert len(layers) == totals["num_conv_layers"] == 23
    assert sum("ConvTranspose" in r["op"] for r in layers) == 4 and layers[-1]["name"] == "head"
    widths = bit_width_report(net)
    assert totals["weight_memory_bits"] == widths.weight_memory_bits
    assert totals["weight_memory_bits"] == sum(r["num_weights"] * r["weight_bits"] for r in layers)
    assert all(r["bops"] == r["macs"] * r["weight_bits"] * r["input_bits"] for r in layers)
    assert layers[0]["input_bits"] == 8  # the input quantizer
    qonnx_cost = record["qonnx_inference_cost"]
    assert qonnx_cost["total_macs"] == qonnx_cost["ours_without_conv_transpose"]["macs"]
    assert all(v["passed"] for v in record["verification"].values())
    assert record["verification"]["qonnx"]["max_abs_diff"] <= 1e-4


def test_refuses_existing_folder(exported, net, slices):
    with pytest.raises(FileExistsError, match="already exists"):
        export_model(net, exported.out_dir, slices, verbose=False)


def test_refuses_wide_activation_float_and_unwritable(net, slices, tmp_path):
    wide = QuantUNet(1, 1, CHANNELS, quantization="fixed", bit_width=4)
    wide.decoder[0][2] = QuantReLU(act_quant=Uint8ActPerTensorFloat, bit_width=10)
    with pytest.raises(ValueError, match=r"decoder\.0\.2 \(activation: 10 bits\)"):
        export_model(wide, tmp_path / "wide", slices, verbose=False)
    with pytest.raises(ValueError, match="not quantized"):
        export_model(QuantUNet(1, 1, CHANNELS, quantization="float"), tmp_path / "float", slices, verbose=False)
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "a_file").write_text("")
    with pytest.raises(PermissionError, match="cannot write the export folder"):
        export_model(net, tmp_path / "a_file" / "export", slices, verbose=False)


def test_failed_verification_leaves_nothing(net, slices, tmp_path):
    with pytest.raises(ExportVerificationError, match="qonnx: max"):
        export_model(net, tmp_path / "bad", slices[:1], qonnx_atol=-1.0, rtol=0.0, verbose=False, qonnx_inference_cost=False)
    assert list(tmp_path.iterdir()) == []


def test_compare_logits_tolerates_rare_flips_not_broken_exports():
    rng = np.random.default_rng(0)
    ref = rng.normal(0, 5, (2, 1, 32, 32)).astype(np.float32)
    flipped = ref.copy()
    flipped[0, 0, 3, 4] += 0.1  # one activation LSB flip: a small local shift
    assert compare_logits(ref, flipped, atol=1e-3)["passed"]
    assert not compare_logits(ref, ref * 1.01, atol=1e-3)["passed"]  # a wrong scale moves every pixel
    sign = ref.copy()
    sign.flat[np.abs(ref).argmax()] *= -1  # a confident pixel changes class
    result = compare_logits(ref, sign, atol=1e-3)
    assert not result["passed"] and result["mask_mismatches"] == 1


def test_mismatched_checkpoint(net, tmp_path):
    path = tmp_path / "other.pt"
    torch.save(QuantUNet(1, 1, (8, 8, 8, 16, 16)).state_dict(), path)
    with pytest.raises(ValueError, match=r"other\.pt does not match.*shape mismatch"):
        load_checkpoint(QuantUNet(1, 1, CHANNELS), path)


def test_cli(net, synthetic_dataset, tmp_path, capsys):
    from monai_quantunet.cli import main

    config = json.loads((BUNDLE / "configs" / "train.json").read_text())
    config.update(channels=list(CHANNELS), spatial_size=list(SIZE))
    (tmp_path / "bundle" / "configs").mkdir(parents=True)
    config_file = tmp_path / "bundle" / "configs" / "train.json"
    config_file.write_text(json.dumps(config))
    ckpt = tmp_path / "model.pt"
    torch.save({"model": net.state_dict()}, ckpt)
    args = ["export", "--checkpoint", str(ckpt), "--out", str(tmp_path / "out"), "--config_file", str(config_file),
            "--dataset-dir", str(synthetic_dataset), "--num-slices", "1", "--no-qonnx-cost"]
    assert main(args) == 0
    assert "23 conv layers" in capsys.readouterr().out
    assert (tmp_path / "out" / "finn" / "build.py").is_file()
    assert main(args) == 2 and "already exists" in capsys.readouterr().err
    bad = tmp_path / "bad.pt"
    torch.save(QuantUNet(1, 1, (8, 8, 8, 16, 16)).state_dict(), bad)
    assert main(args[:2] + [str(bad)] + args[3:] + ["--overwrite"]) == 2
    assert "bad.pt does not match" in capsys.readouterr().err


def test_bundle_export_config(net, synthetic_dataset, tmp_path):
    from monai.bundle import run

    ckpt = tmp_path / "model.pt"
    torch.save(net.state_dict(), ckpt)
    run(
        "export",
        config_file=str(BUNDLE / "configs" / "export.json"),
        bundle_root=str(BUNDLE),
        checkpoint=str(ckpt),
        export_dir=str(tmp_path / "export"),
        dataset_dir=str(synthetic_dataset),
        spatial_size=list(SIZE),
        num_slices=1,
        qonnx_inference_cost=False,
        max_bit_width=8,
        **{"network_def#channels": list(CHANNELS)},
    )
    record = json.loads((tmp_path / "export" / "cost.json").read_text())
    assert record["totals"]["weight_memory_bits"] == bit_width_report(net).weight_memory_bits
