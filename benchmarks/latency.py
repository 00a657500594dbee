"""CPU latency per whole volume: float twin (PyTorch), QuantU-Net (PyTorch fake-quant), QuantU-Net (QCDQ on
onnxruntime), side by side in one run.

The volume (default: the first validation case of ../shared/data/lgg_flair, 256 x 256 x N, else a synthetic
256 x 256 x 40) is preprocessed once with ``inference_transforms(spatial_size)``; the timed part is
``predict_volume`` (slice-wise network inference of the whole volume). Repeats are interleaved across the
three backends; the median is reported, as a ratio to the float twin. Peak memory: the process's peak RSS
above its level before each backend's runs (sampled every 5 ms with psutil), in MiB.

    python benchmarks/latency.py [--checkpoint model.pt] [--float-checkpoint float_model.pt] [--out latency.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import psutil
import torch

from monai_quantunet.export.qcdq import export_qcdq_model, onnx_network
from monai_quantunet.inference import predict_volume
from monai_quantunet.networks import FloatUNet, QuantUNet
from monai_quantunet.transforms import inference_transforms

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "lgg_flair"


class PeakRSS:
    """Context manager sampling this process's RSS in a thread; ``peak_mib``: peak above the starting RSS."""

    def __init__(self, interval_s: float = 0.005) -> None:
        self.interval_s = interval_s
        self.process = psutil.Process()

    def __enter__(self) -> PeakRSS:
        self.start = self.peak = self.process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)

    @property
    def peak_mib(self) -> float:
        return (self.peak - self.start) / 2**20


def load_volume(path: str | None, spatial_size: tuple[int, int]) -> tuple[torch.Tensor, str]:
    """Preprocessed ``(1, 1, H, W, Z)`` volume and a description of where it came from."""
    if path is None and (DEFAULT_DATA / "dataset.json").is_file():
        case = json.loads((DEFAULT_DATA / "dataset.json").read_text())["validation"][0]["image"]
        path = str(DEFAULT_DATA / case)
    if path is None:
        rng = np.random.default_rng(0)
        volume = torch.from_numpy(rng.random((1, *spatial_size, 40), dtype=np.float32))
        return volume[None], f"synthetic 256x256x40 (resized to {spatial_size[0]}x{spatial_size[1]}x40)"
    image = inference_transforms(spatial_size)({"image": path})["image"]
    return image.as_tensor()[None], f"{Path(path).name} ({'x'.join(map(str, image.meta['spatial_shape']))})"


def time_backends(backends: dict[str, Callable[[], torch.Tensor]], repeats: int) -> dict[str, dict]:
    """Warm up each backend once, then ``repeats`` interleaved timed runs; per backend seconds and peak RSS."""
    results = {}
    for name, fn in backends.items():
        with PeakRSS() as mem:
            fn()
        results[name] = {"seconds": [], "peak_rss_mib": mem.peak_mib}
    for _ in range(repeats):
        for name, fn in backends.items():
            with PeakRSS() as mem:
                t0 = time.perf_counter()
                fn()
                results[name]["seconds"].append(time.perf_counter() - t0)
            results[name]["peak_rss_mib"] = max(results[name]["peak_rss_mib"], mem.peak_mib)
    return results


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--volume", default=None, help="NIfTI volume (default: first lgg_flair validation case)")
    parser.add_argument("--checkpoint", default=None, help="QuantU-Net state_dict (default: random init)")
    parser.add_argument("--float-checkpoint", default=None, help="float twin state_dict (default: random init)")
    parser.add_argument("--channels", type=int, nargs=5, default=[16, 32, 64, 128, 256])
    parser.add_argument("--spatial-size", type=int, nargs=2, default=[128, 128])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=32, help="slices per network call (sw_batch_size)")
    parser.add_argument("--threads", type=int, default=min(4, os.cpu_count() or 1), help="torch and onnxruntime threads")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)

    from monai_quantunet.export.core import load_checkpoint

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    size = tuple(args.spatial_size)
    volume, source = load_volume(args.volume, size)
    float_net, quant_net = FloatUNet(1, 1, args.channels).eval(), QuantUNet(1, 1, args.channels).eval()
    for net, ckpt in ((quant_net, args.checkpoint), (float_net, args.float_checkpoint)):
        if ckpt:
            load_checkpoint(net, ckpt)
    with tempfile.TemporaryDirectory() as tmp:
        qcdq_path = Path(tmp) / "model.qcdq.onnx"
        export_qcdq_model(quant_net, volume[..., 0], qcdq_path)
        qcdq_net = onnx_network(qcdq_path, num_threads=args.threads)
        backends = {
            "float twin (PyTorch)": lambda: predict_volume(float_net, volume, size, args.batch),
            "QuantU-Net (PyTorch fake-quant)": lambda: predict_volume(quant_net, volume, size, args.batch),
            "QuantU-Net (onnxruntime QCDQ)": lambda: predict_volume(qcdq_net, volume, size, args.batch),
        }
        results = time_backends(backends, args.repeats)
        # sanity: QCDQ logits and masks against the fake-quant model's on the whole volume
        qcdq, fake = backends["QuantU-Net (onnxruntime QCDQ)"](), backends["QuantU-Net (PyTorch fake-quant)"]()
        check = {"max_abs_logit_diff": float((qcdq - fake).abs().max()), "max_abs_logit": float(fake.abs().max()),
                 "mask_agreement": float(((qcdq > 0) == (fake > 0)).float().mean())}
    base = statistics.median(results["float twin (PyTorch)"]["seconds"])
    for r in results.values():
        r["median_s"] = statistics.median(r["seconds"])
        r["ratio_to_float"] = r["median_s"] / base
    report = {
        "volume": source,
        "network_input": list(volume.shape),
        "channels": args.channels,
        "weights": {"quant": args.checkpoint or "random init", "float": args.float_checkpoint or "random init"},
        "threads": args.threads,
        "repeats": args.repeats,
        "qcdq_vs_fake_quant": check,
        "backends": results,
    }
    print(f"volume {source}, network input {tuple(volume.shape)}, {args.threads} threads, median of {args.repeats}\n")
    print("| backend | median s / volume | x float twin | peak RSS MiB |")
    print("|---|---:|---:|---:|")
    for name, r in results.items():
        print(f"| {name} | {r['median_s']:.3f} | {r['ratio_to_float']:.2f} | {r['peak_rss_mib']:.0f} |")
    print(f"\nQCDQ vs fake-quant: max |logit diff| {check['max_abs_logit_diff']:.3g} "
          f"(max |logit| {check['max_abs_logit']:.3g}), mask agreement {check['mask_agreement']:.6f}")
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
