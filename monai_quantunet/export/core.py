"""``export_model``: one folder with QONNX, a FINN build folder, QCDQ ONNX, a cost report and verification.

Layout of ``out_dir``::

    model.qonnx.onnx     QONNX (fixed input (1, C, H, W)), qonnx-cleaned, SCALEDINT datatypes annotated
    model.qcdq.onnx      standard ONNX (QuantizeLinear/DequantizeLinear), dynamic batch, for onnxruntime
    finn/                FINN build folder (see its README.md)
    cost.json            per-layer widths, MACs, BOPs, weight memory, totals, verification results (and, with a
                         FINN toolchain, FINN's folding, estimates and the folded hardware graph's verification)
    bit_widths.png       weight and activation bits per layer

The folder is written under a temporary sibling name and renamed into place at the end, so a failed
export leaves nothing that looks complete.
"""

from __future__ import annotations

import copy
import json
import shutil
import tempfile
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from monai_quantunet.bitwidth import BitWidthReport, bit_width_report
from monai_quantunet.cost import CostReport, check_weight_memory, cost_report
from monai_quantunet.export.finn import (
    DEFAULT_BOARD,
    DEFAULT_CLK_NS,
    DEFAULT_TARGET_FPS,
    build_config,
    write_finn_folder,
)
from monai_quantunet.export.finn_toolchain import FinnToolchain
from monai_quantunet.export.qcdq import export_qcdq_model, onnx_network
from monai_quantunet.export.qonnx import export_qonnx_model, quant_dtypes, run_qonnx
from monai_quantunet.export.verify import QCDQ_ATOL, QONNX_ATOL, RTOL, check_verification, compare_logits
from monai_quantunet.checkpoint import load_checkpoint

__all__ = ["ExportResult", "export_model", "check_bit_widths", "example_slices", "MIN_EXPORT_BITS",
           "MAX_EXPORT_BITS"]

MIN_EXPORT_BITS = 2  # QCDQ (QuantizeLinear) widths must lie in [2, 8]; FINN activations must fit 8 bits
MAX_EXPORT_BITS = 8
QONNX_FILE = "model.qonnx.onnx"
QCDQ_FILE = "model.qcdq.onnx"


@dataclass
class ExportResult:
    """Paths of an export and its cost/verification record (the contents of ``cost.json``)."""

    out_dir: Path
    qonnx_path: Path
    qcdq_path: Path
    finn_dir: Path
    cost_path: Path
    record: dict


def check_bit_widths(report: BitWidthReport) -> None:
    """Raise ``ValueError`` unless every width is an integer in [2, 8] (FINN activations <= 8 bits, QCDQ [2, 8])."""
    if all(r.bits == 32 for r in report.layers):
        raise ValueError("the network is not quantized (a float twin): export a 'learned' or 'fixed' QuantUNet")
    bad = [
        f"{r.name} ({r.kind}: {r.bits:g} bits)"
        for r in report.layers
        if not float(r.bits).is_integer() or not MIN_EXPORT_BITS <= r.bits <= MAX_EXPORT_BITS
    ]
    if bad:
        raise ValueError(
            f"bit widths must be integers in [{MIN_EXPORT_BITS}, {MAX_EXPORT_BITS}] for FINN and QCDQ export; "
            f"offending layer(s): {', '.join(bad)}"
        )


@torch.no_grad()
def export_model(
    network: nn.Module,
    out_dir: str | Path,
    example_slices: torch.Tensor,
    overwrite: bool = False,
    checkpoint: str | Path | None = None,
    board: str | None = DEFAULT_BOARD,
    fpga_part: str | None = None,
    clk_period_ns: float = DEFAULT_CLK_NS,
    target_fps: float = DEFAULT_TARGET_FPS,
    cppsim_slices: int = 1,
    finn: FinnToolchain | None = None,
    qonnx_atol: float = QONNX_ATOL,
    qcdq_atol: float = QCDQ_ATOL,
    rtol: float = RTOL,
    qonnx_inference_cost: bool = True,
    verbose: bool = True,
) -> ExportResult:
    """Export a quantized network to ``out_dir`` (layout in the module docstring) and verify it.

    Args:
        network: a ``QuantUNet`` in ``learned`` or ``fixed`` mode (copied to CPU; the original is untouched).
        out_dir: the folder to create. Existing: ``FileExistsError`` unless ``overwrite``.
        example_slices: real input slices ``(N, C, H, W)`` (a 2.5D network: C = its ``context_slices``, see
            :func:`example_slices`); fix C, H, W of the exports, ``[:1]`` becomes FINN's
            ``input.npy``, all N verify QONNX and QCDQ against PyTorch.
        checkpoint: optional state_dict file loaded into ``network`` first (``ValueError`` if it does not fit).
        board / fpga_part / clk_period_ns / target_fps: FINN target, slices per second at the clock (see
            :func:`monai_quantunet.export.finn.build_config`); ``ValueError`` for an unknown board or part.
        cppsim_slices: verification slices FINN's C++ simulation also runs where the toolchain has HLS headers.
        finn: a FINN toolchain: FINN's flow then folds the model for the target and executes the folded hardware
            graph on ``example_slices`` (a scratch copy of ``finn/``; the folder itself stays unbuilt).
        qonnx_atol / qcdq_atol / rtol: verification tolerance ``atol + rtol x max |logit|`` (see
            :mod:`monai_quantunet.export.verify`).
        qonnx_inference_cost: also record qonnx's own ``inference_cost`` (skips ConvTranspose) for comparison.

    Raises ``ExportVerificationError`` (a ``ValueError``) with a report if an export disagrees with PyTorch.
    """
    out_dir = Path(out_dir)
    finn_target = dict(board=board, fpga_part=fpga_part, clk_period_ns=clk_period_ns, target_fps=target_fps,
                       cppsim_slices=cppsim_slices)
    build_config(**finn_target)  # an unknown target fails before any work
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"export folder {out_dir} already exists (pass overwrite=True / --overwrite)")
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"{out_dir} exists and is not a folder")
    if checkpoint is not None:
        load_checkpoint(network, checkpoint)
    net = copy.deepcopy(network).cpu().eval()
    slices = torch.as_tensor(example_slices, dtype=torch.float32).cpu()
    if hasattr(net, "check_input"):
        net.check_input(slices)
    widths = bit_width_report(net)
    check_bit_widths(widths)

    tmp = _make_temp_sibling(out_dir)
    try:
        record = _export_into(net, tmp, slices, widths, finn_target, finn, qonnx_atol, qcdq_atol, rtol,
                              qonnx_inference_cost, verbose)
        _replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if verbose:
        print(f"exported to {out_dir}")
    return ExportResult(out_dir, out_dir / QONNX_FILE, out_dir / QCDQ_FILE, out_dir / "finn", out_dir / "cost.json",
                        record)


def _export_into(net: nn.Module, folder: Path, slices: torch.Tensor, widths: BitWidthReport, finn_target: dict,
                 finn: FinnToolchain | None, qonnx_atol: float, qcdq_atol: float, rtol: float,
                 qonnx_inference_cost: bool, verbose: bool) -> dict:
    reference = net(slices).numpy()
    qonnx_model = export_qonnx_model(net, slices, folder / QONNX_FILE)
    qonnx_logits = run_qonnx(qonnx_model, slices)
    verification = {"qonnx": compare_logits(reference, qonnx_logits, qonnx_atol, rtol)}
    check_verification(verification)  # fail before the QCDQ export
    export_qcdq_model(net, slices, folder / QCDQ_FILE)
    qcdq_logits = onnx_network(folder / QCDQ_FILE)(slices).numpy()
    verification["qcdq"] = compare_logits(reference, qcdq_logits, qcdq_atol, rtol)
    check_verification(verification)

    write_finn_folder(folder / "finn", folder / QONNX_FILE, slices.numpy(), reference, **finn_target)
    finn_record = None
    if finn is not None:
        finn_record = _finn_build(finn, folder / "finn", verbose)
        verification["finn_folded"] = compare_logits(reference, finn_record.pop("folded_logits"), qonnx_atol, rtol)
        check_verification(verification)

    costs: CostReport = cost_report(net, slices[:1])
    check_weight_memory(costs, widths)
    record = {
        **costs.to_dict(),
        "bit_width_report": widths.totals(),
        "qonnx_quant_dtypes": quant_dtypes(qonnx_model),
        "verification": verification,
        **({"finn": finn_record} if finn_record else {}),
    }
    if qonnx_inference_cost:
        record["qonnx_inference_cost"] = _qonnx_cost(folder / QONNX_FILE, costs)
    (folder / "cost.json").write_text(json.dumps(record, indent=2))
    widths.plot(folder / "bit_widths.png")
    if verbose:
        print(costs.format_table())
        for name, r in verification.items():
            print(f"verification {name}: max |logit diff| {r['max_abs_diff']:.3g} (tolerance {r['tolerance']:.3g}), "
                  f"{r['mask_mismatches']} mask mismatches, {r['num_slices']} slices")
    return record


def _finn_build(finn: FinnToolchain, finn_dir: Path, verbose: bool) -> dict:
    """FINN's flow to the estimate reports on a scratch copy of ``finn_dir``: folding, the folded graph's logits
    (FINN Python execution, host tail included; ``build.py`` fails unless its integer output equals the streamlined
    graph's), FIFO sizing and FINN's estimates."""
    with tempfile.TemporaryDirectory() as scratch:
        build_dir = Path(shutil.copytree(finn_dir, Path(scratch) / "finn"))
        finn.run_build(build_dir, "step_generate_estimate_reports", log=print if verbose else None)
        output = build_dir / "output"
        return {
            "folded_logits": np.load(output / "verification_output" / "folded_python_logits.npy"),
            "folding": json.loads((output / "report" / "folding_report.json").read_text()),
            "performance": json.loads((output / "report" / "estimate_network_performance.json").read_text()),
            "folding_config": json.loads((output / "folding_config.json").read_text()),
            "host_tail": json.loads((output / "host_tail.json").read_text()),
            "integer_verification": json.loads((output / "verification_output" / "folded_integer.json").read_text()),
            "fifos": {k: v for k, v in json.loads((output / "report" / "fifo_depths.json").read_text()).items()
                      if k != "streams"},
            **({"cppsim": json.loads(cppsim.read_text())}
               if (cppsim := output / "verification_output" / "folded_cppsim.json").is_file() else {}),
        }


def _qonnx_cost(path: Path, costs: CostReport) -> dict:
    """qonnx's ``inference_cost`` totals (no sparsity discount) beside ours without the transposed convs,
    which qonnx lists as unsupported: the MACs and weight counts should agree."""
    from qonnx.util.inference_cost import inference_cost

    total = inference_cost(str(path), discount_sparsity=False)["total_cost"]
    keys = ("total_macs", "total_bops", "total_mem_w_bits", "total_mem_w_elems", "unsupported")
    convs = [r for r in costs.layers if "ConvTranspose" not in r.op]
    return {
        **{k: total[k] for k in keys if k in total},
        "ours_without_conv_transpose": {"macs": sum(r.macs for r in convs), "num_weights": sum(r.num_weights for r in convs)},
    }


def _make_temp_sibling(out_dir: Path) -> Path:
    """An empty hidden sibling folder (created with the umask's permissions, unlike ``mkdtemp``)."""
    tmp = out_dir.parent / f".{out_dir.name}.partial-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir(parents=True)
        return tmp
    except OSError as e:
        raise PermissionError(f"cannot write the export folder {out_dir}: {e}") from e


def _replace_dir(new: Path, target: Path) -> None:
    """Move ``new`` to ``target``; an existing ``target`` is swapped out first and deleted afterwards."""
    old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
    if target.exists():
        target.rename(old)
    new.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def example_slices(dataset_dir: str | Path | None, spatial_size: Sequence[int], num_slices: int = 4,
                   key: str = "validation", whole_volume: bool = False,
                   context_slices: int = 1) -> tuple[torch.Tensor, str]:
    """``(num_slices, k, H, W)`` preprocessed slices with tumor from ``dataset_dir``'s ``key`` split, and a
    description of their source; ``k = context_slices``: each slice with its neighbours as channels (the 2.5D
    input, ``transforms.stack_context_slices``).

    Uses ``val_transforms(spatial_size)`` on the datalist's volumes, taking tumor slices evenly spread
    through each volume (non-tumor slices only if too few have tumor); ``whole_volume``: every slice of the
    split's first volume instead. Without ``<dataset_dir>/dataset.json``, the slices come from synthetic
    volumes (``make_synthetic_dataset``).
    """
    from monai_quantunet.data import load_datalist, make_synthetic_dataset
    from monai_quantunet.transforms import check_context_slices, stack_context_slices, val_transforms

    check_context_slices(context_slices)
    datalist = Path(dataset_dir) / "dataset.json" if dataset_dir else None
    if datalist is None or not datalist.is_file():
        with tempfile.TemporaryDirectory() as tmp:
            make_synthetic_dataset(tmp, num_cases=2, shape=(*spatial_size, 8), num_validation=1)
            slices, _ = example_slices(tmp, spatial_size, num_slices, key, whole_volume, context_slices)
        return slices, "synthetic volumes (no dataset.json found)"
    items = load_datalist(datalist, key) or load_datalist(datalist, "training")
    transform = val_transforms(spatial_size)
    if whole_volume:
        image = stack_context_slices(transform(items[0])["image"].as_tensor(), context_slices)  # (k, H, W, Z)
        return image.permute(3, 0, 1, 2).contiguous(), f"all {image.shape[-1]} slices of {items[0]['image']}"
    tumor, other = [], []
    for item in items:
        case = transform(item)
        image = stack_context_slices(case["image"].as_tensor(), context_slices)  # (k, H, W, Z)
        label = case["label"].as_tensor()  # (1, H, W, Z)
        tumor_z = torch.nonzero(label.flatten(0, 2).any(0)).flatten().tolist()
        tumor += [image[..., z] for z in _spread(tumor_z, num_slices)]
        other.append(image[..., image.shape[-1] // 2])
        if len(tumor) >= 4 * num_slices:
            break
    chosen = _spread(tumor if len(tumor) >= num_slices else tumor + other, num_slices)
    return torch.stack(chosen), f"{len(chosen)} slices of {key} volumes in {datalist}"


def _spread(seq: Sequence, n: int) -> list:
    """At most ``n`` elements of ``seq``, evenly spaced, first and last included."""
    if len(seq) <= n:
        return list(seq)
    return [seq[i] for i in np.linspace(0, len(seq) - 1, n).round().astype(int)]
