"""FINN's flow on the shipped QuantU-Net, per wearable-class FPGA: folding, FIFOs, resources, verification.

1. Exports the shipped checkpoint with every slice of the first validation volume as verification input, runs
   its FINN folder in place to ``step_hw_codegen`` at the export's default target (30 slices/s at 100 MHz on a
   Pynq-Z1, Zynq-7020): the folded graph's integer output equals the streamlined graph's on every slice (the
   build fails otherwise), and its logits (host tail applied) are compared with PyTorch on the whole volume.
2. For each target board, folds the same model for the fastest design within 80% of the part's resources, to the
   estimate reports.

Resources are those of the final graph (after ``step_minimize_bit_width``, with FINN's width converters and the
FIFOs the project's FIFO model sizes): layers and width converters from FINN's ``estimate_layer_resources.json``
(checked equal to ``build.py``'s own sum), FIFOs from the project's count of Vivado's FIFO memory
(``report/fifo_depths.json``; FINN's ``StreamingFIFO`` estimate is broken in this commit).

Writes ``benchmarks/results/finn_targets.json`` and prints the table; ``--update-docs`` writes it into the
bundle docs (block ``finn``); ``--from-json`` only re-renders the table:

    python benchmarks/finn_targets.py --finn .finn --dataset-dir ../shared/data/lgg_flair --update-docs
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from machine import describe, machine_info

from paths import REPO, SEG_BUNDLE
RESULTS = REPO / "benchmarks" / "results" / "finn_targets.json"
TARGETS = {"Pynq-Z1": "Zynq-7020", "Ultra96-V2": "Zynq UltraScale+ ZU3EG", "KV260_SOM": "Kria K26"}
VOLUME_SLICES = 40  # latency is reported for a 40-slice volume
DEVICE_SLICES = 4  # verification slices of the per-device runs (the default run verifies the whole volume)
SKIP_LOWER_BOUNDS = (13287, 3055, 627, 85)  # pixels, levels 0-3: raster-order dependencies alone (issue 22)


def export_shipped(out: Path, dataset_dir: str | None, checkpoint: Path, cppsim_slices: int):
    from monai_quantunet.export import example_slices, export_model
    from monai_quantunet.cli.export import network_from_config

    network, parser = network_from_config(SEG_BUNDLE / "configs" / "train.json")
    slices, source = example_slices(dataset_dir, parser.get_parsed_content("spatial_size"), whole_volume=True)
    print(f"verification input: {source}")
    result = export_model(network, out, slices, checkpoint=checkpoint, cppsim_slices=cppsim_slices,
                          qonnx_inference_cost=False, verbose=False)
    with torch.no_grad():
        reference = network.eval()(slices).numpy()
    return result, reference, source


def build(finn, folder: Path, steps_until: str) -> tuple[dict, float]:
    start = time.perf_counter()
    finn.run_build(folder, steps_until)
    seconds = time.perf_counter() - start
    report = folder / "output" / "report"
    return {
        "folding": json.loads((report / "folding_report.json").read_text()),
        "fifos": json.loads((report / "fifo_depths.json").read_text()),
        "finn_layer_resources": json.loads((report / "estimate_layer_resources.json").read_text()),
        "performance": json.loads((report / "estimate_network_performance.json").read_text()),
        "time_per_step_s": json.loads((folder / "output" / "time_per_step.json").read_text()),
    }, seconds


def skip_fifos(fifos: dict) -> list[dict]:
    """The skip connections' FIFOs (fork -> concat), full resolution first."""
    skips = [s for s in fifos["streams"].values() if (s["producer"] or "").startswith("DuplicateStreams")
             and (s["consumer"] or "").startswith("StreamingConcat")]
    return sorted(skips, key=lambda s: -s["pixels_per_frame"])


def row(name: str, device: str, run: dict) -> dict:
    """Table row from a build: slices/s and a 40-slice volume's latency at the clock (FINN's estimates), the final
    graph's resources by source and the skip FIFOs."""
    folding, perf, fifos = run["folding"], run["performance"], run["fifos"]
    clock_hz = folding["clock_mhz"] * 1e6
    volume_s = ((VOLUME_SLICES - 1) * perf["max_cycles"] + perf["critical_path_cycles"]) / clock_hz
    layers = {n: est for n, est in run["finn_layer_resources"].items()
              if n != "total" and not n.startswith("StreamingFIFO")}
    finn = {r: sum(est.get(r, 0) for est in layers.values()) for r in fifos["available"]}
    by_source = fifos["resources"]
    assert all(abs(finn[r] - by_source["layers"][r] - by_source["dwcs"][r]) < 1e-6 for r in finn), (finn, by_source)
    return {
        "name": name, "device": device, "part": folding["part"], "target_fps": folding["target_fps"],
        "target_met": folding["target_met"], "fps": perf["estimated_throughput_fps"], "volume_latency_s": volume_s,
        "bottleneck": perf["max_cycles_node_name"], "resources": by_source["total"], "resources_by_source": by_source,
        "available": fifos["available"], "within_budget": fifos["within_budget"], "fifo_ram_style": fifos["ram_style"],
        "frame_latency_intervals": fifos["first_frame_latency_cycles"] / fifos["interval_cycles"],
        "skip_fifos": [{k: s[k] for k in ("producer", "consumer", "max_pixels", "depth", "words_per_pixel", "bits",
                                          "memory")} for s in skip_fifos(fifos)],
    }


def markdown(results: dict) -> str:
    lines = [
        f"FINN `dev` {results['finn']} / qonnx {results['qonnx']}, estimates (no synthesis), shipped "
        f"`models/model.pt`, 128 x 128 slices, {results['clock_mhz']:g} MHz, folding within "
        f"{results['max_utilization']:.0%} of each resource for the whole design (`build.py`'s `step_unet_folding`). "
        "Slices/s and latency: FINN's `estimate_network_performance.json`. Resources of the final graph (after "
        "`step_minimize_bit_width`, with FINN's width converters and the FIFOs the project's FIFO model sizes): "
        "layers and width converters from FINN's `estimate_layer_resources.json`, FIFOs from the project's count of "
        "Vivado's FIFO memory (`report/fifo_depths.json`; FINN's own FIFO estimate is broken in this commit). "
        f"Machine: {results['machine']}. `python benchmarks/finn_targets.py --finn .finn --dataset-dir "
        f"../shared/data/lgg_flair --update-docs` ({results['total_minutes']:.0f} min).",
        "",
        "| target | part | folding | est. slices/s | 40-slice volume | LUT | BRAM18 | URAM | DSP |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results["rows"]:
        folding = (f"target {r['target_fps']:g} slices/s" if r["name"] == "default export"
                   else "fastest reachable" if r["target_met"] else "fastest within budget")
        cells = []
        for res in ("LUT", "BRAM_18K", "URAM", "DSP"):
            used, avail = r["resources"][res], r["available"][res]
            cells.append(f"{used:,.0f} ({100 * used / avail:.0f}%)" if avail else f"{used:,.0f} (-)")
        lines.append(f"| {r['name']} ({r['device']}) | `{r['part']}` | {folding} | {r['fps']:.1f} | "
                     f"{r['volume_latency_s']:.2f} s | " + " | ".join(cells) + " |")
    lines += ["", "Where the resources go (LUT / BRAM18 / URAM): layers and width converters by FINN, FIFOs by the "
              "project:", "", "| target | layers (FINN) | width converters (FINN) | FIFOs (project) | FIFO memory |",
              "| --- | --- | --- | --- | --- |"]
    for r in results["rows"]:
        src = r["resources_by_source"]
        cell = lambda g: " / ".join(f"{src[g][k]:,.0f}" for k in ("LUT", "BRAM_18K", "URAM"))  # noqa: E731
        lines.append(f"| {r['name']} | {cell('layers')} | {cell('dwcs')} | {cell('fifos')} | {r['fifo_ram_style']} |")
    default = results["rows"][0]
    lines += ["", f"Skip FIFOs of the default export (the FIFO model at the folding's interval; a frame takes "
              f"{default['frame_latency_intervals']:.2f} intervals to pass through):", "",
              "| level | pixels held (model) | raster-order lower bound | depth (words) | word bits | memory |",
              "| --- | --- | --- | --- | --- | --- |"]
    for level, (s, bound) in enumerate(zip(default["skip_fifos"], SKIP_LOWER_BOUNDS)):
        memory = ", ".join(f"{v} {k}" for k, v in s["memory"].items() if v)
        lines.append(f"| {level} | {s['max_pixels']:,} | {bound:,} | {s['depth']:,} | {s['bits']} | {memory} |")
    v, exact = results["verification"], results["integer_verification"]
    lines += ["", "Default export (Pynq-Z1, 30 slices/s) built to `step_hw_codegen` in "
              f"{results['codegen_minutes']:.1f} min, every layer a FINN hardware layer ({results['hw_layers']} nodes with width converters and FIFOs; "
              f"host: {' → '.join(results['host_ops'])}). On {v['num_slices']} slices "
              f"({results['verification_source']}) "
              f"the folded graph's {exact['datatype']} output differs from the streamlined graph's in "
              f"{exact['differing_values']} of {exact['values']:,} values; its logits vs PyTorch: max |difference| "
              f"{v['max_abs_diff']:.2g}, {v['mask_pixels_differing']} mask pixels differ of {v['pixels']:,}."]
    if results.get("cppsim"):
        c = results["cppsim"]
        lines[-1] += (f" FINN's cppsim of all {c['hls_layers']} HLS layers (open-source HLS headers, "
                      f"`scripts/install_finn.sh`) on {c['slices']} slice: {c['differing_values']} values differ "
                      f"(compile and simulation {results['cppsim_step_s'] / 60:.1f} min).")
    return "\n".join(lines) + "\n"


def run(finn_folder: str | None, dataset_dir: str | None, checkpoint: Path, cppsim_slices: int) -> dict:
    import onnx

    from monai_quantunet.export.finn import FINN_COMMIT, QONNX_COMMIT
    from monai_quantunet.export.finn_build import BOARD_PARTS, fifo_ram_style
    from monai_quantunet.export.finn_toolchain import FinnToolchain
    from monai_quantunet.export.verify import compare_logits

    finn = FinnToolchain.find(finn_folder)
    if finn is None:
        sys.exit("no FINN toolchain: pass --finn DIR or set $FINN_TOOLCHAIN (bash scripts/install_finn.sh)")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        result, reference, source = export_shipped(Path(tmp) / "export", dataset_dir, checkpoint, cppsim_slices)
        default, codegen_s = build(finn, result.finn_dir, "step_hw_codegen")
        output = result.finn_dir / "output"
        logits = np.load(output / "verification_output" / "folded_python_logits.npy")
        verification = {**compare_logits(reference, logits, atol=1e-4),
                        "mask_pixels_differing": int(((logits > 0) != (reference > 0)).sum())}
        graph = onnx.load(output / "intermediate_models" / "step_hw_codegen.onnx").graph
        host = json.loads((output / "host_tail.json").read_text())["host_ops"]
        exact = json.loads((output / "verification_output" / "folded_integer.json").read_text())
        cppsim_path = output / "verification_output" / "folded_cppsim.json"
        cppsim = json.loads(cppsim_path.read_text()) if cppsim_path.is_file() else None
        rows = [row("default export", TARGETS["Pynq-Z1"], default)]
        for board, device in TARGETS.items():
            folder = Path(shutil.copytree(result.finn_dir, Path(tmp) / board, ignore=shutil.ignore_patterns("output")))
            np.save(folder / "input.npy", np.load(folder / "input.npy")[:DEVICE_SLICES])
            np.save(folder / "expected_output.npy", np.load(folder / "expected_output.npy")[:DEVICE_SLICES])
            cfg = json.loads((folder / "dataflow_build_config.json").read_text())
            # the fastest reachable design as target: the folding backs off to the fastest one within budget
            fastest_fps = 1e9 / cfg["synth_clk_period_ns"] / default["folding"]["fastest_cycles"]
            cfg.update(board=board, target_fps=int(fastest_fps), unet_cppsim_slices=0,
                       large_fifo_mem_style=fifo_ram_style(BOARD_PARTS[board]))
            (folder / "dataflow_build_config.json").write_text(json.dumps(cfg, indent=2))
            print(f"{board}: folding for the fastest design within budget")
            rows.append(row(board, device, build(finn, folder, "step_generate_estimate_reports")[0]))
            print(json.dumps(rows[-1]))
    return {
        "finn": FINN_COMMIT, "qonnx": QONNX_COMMIT, "machine": describe(machine_info()),
        "clock_mhz": default["folding"]["clock_mhz"], "max_utilization": default["folding"]["max_utilization"],
        "rows": rows, "default_run": {k: v for k, v in default.items() if k != "finn_layer_resources"},
        "verification": verification, "verification_source": source,
        "integer_verification": exact, "cppsim": cppsim,
        "cppsim_step_s": default["time_per_step_s"].get("step_unet_verify_cppsim"),
        "hw_layers": len(graph.node), "host_ops": [op["op"] for op in host],
        "codegen_minutes": codegen_s / 60, "total_minutes": (time.perf_counter() - start) / 60,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--finn", default=None, help="FINN toolchain folder (default: $FINN_TOOLCHAIN)")
    parser.add_argument("--dataset-dir", default=None, help="dataset with dataset.json (validation volume)")
    parser.add_argument("--checkpoint", default=str(SEG_BUNDLE / "models" / "model.pt"))
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--cppsim-slices", type=int, default=1,
                        help="slices of the default build also run in FINN's cppsim (with the toolchain's HLS headers)")
    parser.add_argument("--from-json", action="store_true", help="only render --out's table")
    parser.add_argument("--update-docs", action="store_true", help="write the table into the bundle docs")
    args = parser.parse_args()
    out = Path(args.out)
    if args.from_json:
        results = json.loads(out.read_text())
    else:
        results = run(args.finn, args.dataset_dir, Path(args.checkpoint), args.cppsim_slices)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2))
    table = markdown(results)
    print(table)
    if args.update_docs:
        from update_docs import BUNDLE_DOCS, replace_block

        readme = BUNDLE_DOCS / "README.md"
        readme.write_text(replace_block(readme.read_text(), "finn", table, str(readme)))
        print(f"updated {readme}")


if __name__ == "__main__":
    main()
