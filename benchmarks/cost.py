"""Training and inference cost of QuantU-Net against its float twin, measured side by side in one run.

Training: seconds per training step (forward, BCE + Dice + λ·bits loss, backward, Adam step; batch of real
slices at the network's input size) for the float twin, fixed 4-bit and learned widths, interleaved, median;
reported per epoch of ``--samples-per-epoch`` slices and as a ratio to the float twin, with peak memory.
Beside it the bundle's training input pipeline alone (``SliceDataset`` of ``--data-volumes`` training volumes,
2D augmentation, the bundle's sampler and ``num_workers=0``): seconds per batch, slices/s, and its share of a
float twin step, so an epoch's data cost is seen next to its network cost.

Inference: latency per whole volume of the float twin (PyTorch), QuantU-Net (PyTorch fake-quant) and QuantU-Net
(QCDQ on onnxruntime).

Peak memory: for each model, a fresh process builds it (a QAT model with its warm-up steps) and runs it twice;
its peak RSS above the RSS before building (sampled every 5 ms with psutil), in MiB.

The volume (default: the first validation case of ../shared/data/lgg_flair, 256 x 256 x N, else a synthetic
256 x 256 x 40) is preprocessed once with ``inference_transforms(spatial_size)``; the timed part is
``predict_volume`` (slice-wise network inference of the whole volume). Repeats are interleaved across the
three backends; the median is reported, as a ratio to the float twin.

    python benchmarks/cost.py [--checkpoint model.pt] [--float-checkpoint float_model.pt] [--out cost.json]
                              [--skip-training]
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import psutil
import torch
from machine import describe, machine_info, source_commit

from paths import SEG_BUNDLE, SHARED_LGG_FLAIR
from monai_quantunet.bundle import bundle_settings
from monai_quantunet.data import SliceDataset, load_datalist, make_synthetic_dataset
from monai_quantunet.export.qcdq import export_qcdq_model, onnx_network
from monai_quantunet.inference import predict_volume
from monai_quantunet.losses import QuantUNetLoss
from monai_quantunet.networks import FloatUNet, QuantUNet
from monai_quantunet.networks.quantunet import ACT_STATS_STEPS
from monai_quantunet.training import make_optimizer
from monai_quantunet.transforms import augment_transforms, inference_transforms, val_transforms

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
    if path is None and (SHARED_LGG_FLAIR / "dataset.json").is_file():
        case = json.loads((SHARED_LGG_FLAIR / "dataset.json").read_text())["validation"][0]["image"]
        path = str(SHARED_LGG_FLAIR / case)
    if path is None:
        rng = np.random.default_rng(0)
        volume = torch.from_numpy(rng.random((1, *spatial_size, 40), dtype=np.float32))
        return volume[None], f"synthetic 256x256x40 (resized to {spatial_size[0]}x{spatial_size[1]}x40)"
    image = inference_transforms(spatial_size)({"image": path})["image"]
    return image.as_tensor()[None], f"{Path(path).name} ({'x'.join(map(str, image.meta['spatial_shape']))})"


def time_backends(backends: dict[str, Callable[[], torch.Tensor]], repeats: int) -> dict[str, dict]:
    """Warm up each backend once, then ``repeats`` interleaved timed runs; per backend the seconds of each run."""
    for fn in backends.values():
        fn()
    results = {name: {"seconds": []} for name in backends}
    for _ in range(repeats):
        for name, fn in backends.items():
            t0 = time.perf_counter()
            fn()
            results[name]["seconds"].append(time.perf_counter() - t0)
    return results


def training_step(network: torch.nn.Module, batch: torch.Tensor, label: torch.Tensor,
                  warmup_steps: int = 0) -> Callable[[], torch.Tensor]:
    """One bundle training step (QuantUNetLoss, ``make_optimizer``) on a fixed batch, as a callable, after
    ``warmup_steps`` untimed steps."""
    network.train()
    loss_fn = QuantUNetLoss(network)
    optimizer = make_optimizer(network)

    def step() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(network(batch), label)
        loss.backward()
        optimizer.step()
        return loss.detach()

    for _ in range(warmup_steps):
        step()
    return step


def training_builders(args: argparse.Namespace, volume: torch.Tensor) -> dict[str, Callable[[], Callable]]:
    """Per model, a builder of its training step on a batch of ``args.train_batch`` slices of ``volume``.

    Fresh networks (each step changes the weights); the step time does not depend on what the target marks, so
    the brightest 5% of each slice stands in for the tumor mask. A quantized network's first
    ``ACT_STATS_STEPS`` steps collect activation statistics (a percentile per activation, about 3x a step);
    they are taken untimed, so the timed steps are the steady state every later step of a training run costs.
    """
    slices = volume[0].movedim(-1, 0)  # (Z, 1, H, W)
    batch = slices[torch.arange(args.train_batch) % slices.shape[0]].contiguous()
    label = (batch > batch.flatten(1).quantile(0.95, dim=1).view(-1, 1, 1, 1)).float()
    networks = {
        "float twin": lambda: FloatUNet(1, 1, args.channels),
        "QuantU-Net fixed 4-bit": lambda: QuantUNet(1, 1, args.channels, quantization="fixed", bit_width=4),
        "QuantU-Net learned widths": lambda: QuantUNet(1, 1, args.channels),
    }
    warmup = {"float twin": 0}
    return {name: (lambda name=name, make=make: training_step(make(), batch, label, warmup.get(name, ACT_STATS_STEPS)))
            for name, make in networks.items()}


def time_data_pipeline(args: argparse.Namespace, tmp: Path) -> dict:
    """Seconds to draw each of ``args.train_repeats`` batches of ``args.train_batch`` augmented slices from the
    bundle's training pipeline (first ``args.data_volumes`` training volumes of ../shared/data/lgg_flair, else
    generated volumes), after one untimed batch; the volumes are loaded and resized once, before timing, as the
    bundle's ``SliceDataset`` does at start-up."""
    datalist = SHARED_LGG_FLAIR / "dataset.json"
    if not datalist.is_file():
        datalist = make_synthetic_dataset(tmp / "synthetic", num_cases=args.data_volumes + 1, shape=(256, 256, 20),
                                          num_validation=1)  # every case but one for training
    data = load_datalist(datalist, "training", datalist.parent)[: args.data_volumes]
    dataset = SliceDataset(data, val_transforms(args.spatial_size), augment_transforms())
    tumor_fraction = bundle_settings(SEG_BUNDLE)["tumor_fraction"]
    sampler = dataset.sampler(args.train_batch * (args.train_repeats + 1), tumor_fraction=tumor_fraction, seed=0)
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.train_batch, sampler=sampler, num_workers=0,
                                         generator=torch.Generator().manual_seed(0))  # leaves the global RNG alone
    batches = iter(loader)
    next(batches)
    seconds = []
    for _ in range(args.train_repeats):
        t0 = time.perf_counter()
        next(batches)
        seconds.append(time.perf_counter() - t0)
    median = statistics.median(seconds)
    return {"volumes": len(data), "slices": len(dataset), "seconds": seconds, "median_s": median,
            "slices_per_second": args.train_batch / median}


def inference_builders(args: argparse.Namespace, volume: torch.Tensor, tmp: Path) -> dict[str, Callable[[], Callable]]:
    """Per backend, a builder of its whole-volume inference (checkpoints from ``args``; QCDQ exported to ``tmp``)."""
    from monai_quantunet.checkpoint import load_checkpoint

    size = tuple(args.spatial_size)

    def network(cls: type, checkpoint: str | None) -> torch.nn.Module:
        torch.manual_seed(0)  # without a checkpoint, the QCDQ export and the fake-quant backend share random weights
        net = cls(1, 1, args.channels).eval()
        if checkpoint:
            load_checkpoint(net, checkpoint)
        return net

    def qcdq() -> Callable:
        path = tmp / "model.qcdq.onnx"
        export_qcdq_model(network(QuantUNet, args.checkpoint), volume[..., 0], path)
        return onnx_network(path, num_threads=args.threads)

    def run(make: Callable[[], Callable]) -> Callable[[], torch.Tensor]:
        net = make()
        return lambda: predict_volume(net, volume, size, args.batch)

    return {
        "float twin (PyTorch)": lambda: run(lambda: network(FloatUNet, args.float_checkpoint)),
        "QuantU-Net (PyTorch fake-quant)": lambda: run(lambda: network(QuantUNet, args.checkpoint)),
        "QuantU-Net (onnxruntime QCDQ)": lambda: run(qcdq),
    }


def _child_peak_rss(section: str, name: str, args: argparse.Namespace) -> float:
    torch.set_num_threads(args.threads)
    volume, _ = load_volume(args.volume, tuple(args.spatial_size))
    with tempfile.TemporaryDirectory() as tmp:
        builders = training_builders(args, volume) if section == "training" else inference_builders(args, volume, Path(tmp))
        with PeakRSS() as mem:  # building includes a QAT model's untimed activation-statistics steps
            fn = builders[name]()
            fn()
            fn()
    return mem.peak_mib


def peak_rss_in_fresh_process(section: str, name: str, args: argparse.Namespace) -> float:
    """Peak RSS (MiB) of building one model (for training: with its warm-up steps) and running it twice, in a new
    process, above the RSS before building (a fresh process, so memory freed by earlier models cannot hide
    allocations)."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(_child_peak_rss, (section, name, args))


def markdown_tables(report: dict) -> str:
    """The training (unless skipped) and inference tables of a cost report (as :func:`main` returns it), in
    Markdown."""
    lines = []
    if "training" in report:
        t = report["training"]
        lines += [f"Training, one epoch = {t['steps_per_epoch']} steps of {t['batch']} slices (median of "
                  f"{t['repeats']} steps):", "", "| model | s / epoch | x float twin | peak RSS MiB |",
                  "| --- | ---: | ---: | ---: |"]
        lines += [f"| {n} | {r['seconds_per_epoch']:.1f} | {r['ratio_to_float']:.2f} | {r['peak_rss_mib']:.0f} |"
                  for n, r in t["models"].items()]
        if "data_pipeline" in t:
            d = t["data_pipeline"]
            lines += ["", f"Input pipeline alone (the bundle's `SliceDataset` of {d['volumes']} volumes, augmentation, "
                      f"`num_workers=0`): {d['median_s']:.3f} s per batch of {t['batch']} ({d['slices_per_second']:.0f} "
                      f"slices/s), {d['ratio_to_float_step']:.2f}x a float twin step."]
        lines.append("")
    lines += [f"Inference, whole volume (median of {report['repeats']}):", "",
              "| backend | s / volume | x float twin | peak RSS MiB |", "| --- | ---: | ---: | ---: |"]
    lines += [f"| {n} | {r['median_s']:.3f} | {r['ratio_to_float']:.2f} | {r['peak_rss_mib']:.0f} |"
              for n, r in report["inference"].items()]
    q = report["qcdq_vs_fake_quant"]
    lines += ["", f"QCDQ vs fake-quant on that volume: max |logit| difference {q['max_abs_logit_diff']:.2g} "
              f"(max |logit| {q['max_abs_logit']:.3g}), mask agreement {q['mask_agreement']:.6f}."]
    return "\n".join(lines)


def _add_medians(results: dict[str, dict]) -> None:
    base = statistics.median(next(iter(results.values()))["seconds"])  # the first backend is the float twin
    for r in results.values():
        r["median_s"] = statistics.median(r["seconds"])
        r["ratio_to_float"] = r["median_s"] / base


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
    parser.add_argument("--train-batch", type=int, default=16, help="slices per training step")
    parser.add_argument("--train-repeats", type=int, default=10, help="timed training steps per model")
    parser.add_argument("--samples-per-epoch", type=int, default=640, help="slices per epoch (bundle default)")
    parser.add_argument("--data-volumes", type=int, default=8, help="training volumes in the input-pipeline timing")
    parser.add_argument("--skip-training", action="store_true", help="time inference only")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    volume, source = load_volume(args.volume, tuple(args.spatial_size))
    with tempfile.TemporaryDirectory() as tmp:
        training = {}
        if not args.skip_training:
            trainers = {name: build() for name, build in training_builders(args, volume).items()}
            training = time_backends(trainers, args.train_repeats)
            data_pipeline = time_data_pipeline(args, Path(tmp))
        backends = {name: build() for name, build in inference_builders(args, volume, Path(tmp)).items()}
        results = time_backends(backends, args.repeats)
        # sanity: QCDQ logits and masks against the fake-quant model's on the whole volume
        qcdq, fake = backends["QuantU-Net (onnxruntime QCDQ)"](), backends["QuantU-Net (PyTorch fake-quant)"]()
        check = {"max_abs_logit_diff": float((qcdq - fake).abs().max()), "max_abs_logit": float(fake.abs().max()),
                 "mask_agreement": float(((qcdq > 0) == (fake > 0)).float().mean())}
    for section, measured in (("training", training), ("inference", results)):
        for name in measured:
            measured[name]["peak_rss_mib"] = peak_rss_in_fresh_process(section, name, args)
    _add_medians(results)
    report = {
        "machine": machine_info(),
        "commit": source_commit(),
        "command": " ".join(["python", "benchmarks/cost.py", *(argv if argv is not None else sys.argv[1:])]),
        "volume": source,
        "network_input": list(volume.shape),
        "channels": args.channels,
        "weights": {"quant": args.checkpoint or "random init", "float": args.float_checkpoint or "random init"},
        "threads": args.threads,
        "repeats": args.repeats,
        "qcdq_vs_fake_quant": check,
        "inference": results,
    }
    if training:
        _add_medians(training)
        steps_per_epoch = math.ceil(args.samples_per_epoch / args.train_batch)
        for r in training.values():
            r["seconds_per_epoch"] = r["median_s"] * steps_per_epoch
        data_pipeline["ratio_to_float_step"] = data_pipeline["median_s"] / training["float twin"]["median_s"]
        report["training"] = {"batch": args.train_batch, "repeats": args.train_repeats,
                              "steps_per_epoch": steps_per_epoch, "models": training, "data_pipeline": data_pipeline}
    print(describe(report["machine"]))
    print(f"volume {source}, network input {tuple(volume.shape)}, channels {args.channels}, {args.threads} threads\n")
    print(markdown_tables(report))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
