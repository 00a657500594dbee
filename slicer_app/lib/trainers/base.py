"""Fine-tuning the QuantU-Net on the labels users saved (tag ``final``), MONAI Label's BasicTrainTask.

* network: the bundle's ``network_def``, initialised from the served checkpoint (trained, else shipped);
* loss: ``QuantUNetLoss`` (BCE + Dice + lambda * bits); optimizer: ``make_optimizer`` (bit widths in their own
  group), or bit widths frozen (``--conf freeze_bit_widths true`` or request ``freeze_bit_widths``);
  BatchNorm statistics and affine parameters frozen (``freeze_batch_norm``, default true);
* progress: MONAI's StatsHandler lines plus ``QuantUNetStatsHandler`` (per-epoch loss parts, val Dice, mean and
  per-layer bit widths in ``<model_dir>/<name>/<run>/bit_widths.json``), visible in ``/train`` details and logs;
* validation only on held-out labeled volumes (never trained on): with ``n >= 2`` labeled volumes,
  ``max(1, round(val_split * n))`` of them (at most ``n - 1``, a fixed seeded choice) are held out;
* publishing: the served checkpoint ``<model_dir>/<name>.pt`` is replaced only when the best held-out Dice of
  this run beats the Dice of the model being served on the same volumes (measured before training) by at least
  ``min_dice_gain`` (default 0.01: gains below it are within the noise of one or two held-out volumes, and
  ``benchmarks/finetune.py`` measured such "gains" lowering the Dice on unlabeled volumes).
  With fewer than ``min_holdout_volumes`` (default 2) held-out volumes (with ``val_split`` 0.2: fewer than 8
  labeled volumes) the run trains (the checkpoints stay in the run folder) but does not publish, unless the
  request sets ``publish_without_holdout: true``: one held-out volume was measured to be no guide (a run that
  gained on it lost Dice on the unlabeled volumes, ``benchmarks/finetune.py``). The train status
  and ``train_stats.json`` say which happened and why (``published``, ``publish_reason``).
  Labels and images are only read.
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
from typing import Sequence

import torch
from ignite.engine import Events
from monai.handlers import IgniteMetricHandler, from_engine
from monai.metrics import DiceMetric
from monai.transforms import Activationsd, AsDiscreted

from monailabel.tasks.train.basic_train import BasicTrainTask, Context
from monailabel.tasks.train.handler import PublishStatsAndModel, prepare_stats
from monailabel.utils.others.generic import strtobool

from lib.checkpoints import load_checkpoint_or_warn, served_checkpoint
from lib.files import atomic_copy
from lib.train_options import OPTIONS, check_train_params, trainer_config
from monai_quantunet.inference import slice_inferer
from monai_quantunet.metrics import mean_volume_dice
from monai_quantunet.losses import QuantUNetLoss
from monai_quantunet.training import QuantUNetStatsHandler, freeze_bit_widths, make_optimizer

logger = logging.getLogger(__name__)


def dice_handler() -> IgniteMetricHandler:
    """The project's one Dice (``monai_quantunet.metrics``, the bundles' ``key_metric``): per volume, and a
    tumor-free volume predicted tumor-free scores 1 (``ignore_empty=False``)."""
    return IgniteMetricHandler(metric_fn=DiceMetric(include_background=True, ignore_empty=False),
                               output_transform=from_engine(["pred", "label"]))


class QuantUNetTrainTask(BasicTrainTask):
    def __init__(
        self,
        model_dir: str,
        network_factory,
        init_paths: Sequence[str],
        publish_path: str,
        spatial_size: Sequence[int],
        context_slices: int = 1,
        lambda_bits: float = 0.25,
        bit_reduction: str = "mean",
        learning_rate: float = OPTIONS["learning_rate"].default,
        bit_learning_rate: float = OPTIONS["bit_learning_rate"].default,
        freeze_bit_widths: bool = OPTIONS["freeze_bit_widths"].default,
        freeze_batch_norm: bool = OPTIONS["freeze_batch_norm"].default,
        num_samples: int = 8,
        tumor_fraction: float = 2 / 3,
        description: str = "Fine-tune QuantU-Net",
        labels=None,
        **kwargs,
    ):
        self._network_factory = network_factory
        self._init_paths = list(init_paths)
        self._guarded_publish_path = publish_path
        self.spatial_size = tuple(spatial_size)
        self.context_slices = context_slices
        self.lambda_bits = lambda_bits
        self.bit_reduction = bit_reduction
        self.num_samples = num_samples
        self.tumor_fraction = tumor_fraction
        config = trainer_config(learning_rate=learning_rate, bit_learning_rate=bit_learning_rate,
                                freeze_bit_widths=freeze_bit_widths, freeze_batch_norm=freeze_batch_norm)
        super().__init__(
            model_dir,
            description,
            config=config,
            amp=False,
            load_path=None,
            publish_path=None,  # publishing is guarded by validation Dice (see finalize)
            labels=labels,
            tracking=None,
            train_save_interval=1000,
            n_saved=1,
            **kwargs,
        )

    # ---- request ---------------------------------------------------------------------------------------------
    def train(self, rank, world_size, request, datalist):
        request = {**request, **check_train_params({k: v for k, v in request.items() if k in OPTIONS}, self.config())}
        request["multi_gpu"] = False
        return super().train(rank, world_size, request, datalist)

    def partition_datalist(self, context: Context, shuffle=False):
        """Held-out validation volumes, never trained on (see the module docstring)."""
        train, val = holdout_split(context.datalist, float(context.request.get("val_split", 0.2)))
        if not val:
            logger.warning(
                f"only {len(train)} labeled volume(s): nothing can be held out for validation; this run trains but "
                "does not publish unless publish_without_holdout is true"
            )
        else:
            logger.info(f"{len(train)} labeled volume(s) to train on, {len(val)} held out for validation")
        return train, val

    # ---- model -----------------------------------------------------------------------------------------------
    def network(self, context: Context):
        net = self._network_factory()
        load_checkpoint_or_warn(net, served_checkpoint(self._init_paths), f"{self.__class__.__name__} training start")
        if strtobool(context.request.get("freeze_batch_norm")):
            n = keep_batch_norm_frozen(net)
            logger.info(f"BatchNorm statistics and affine parameters frozen ({n} layers)")
        if strtobool(context.request.get("freeze_bit_widths")):
            logger.info(f"bit widths frozen ({freeze_bit_widths(net)} parameters)")
        return net

    def _load_checkpoint(self, context, train_handlers):
        pass  # the network is initialised in network() from the served checkpoint

    def optimizer(self, context: Context):
        r = context.request
        return make_optimizer(context.network, lr=float(r["learning_rate"]), bit_lr=float(r["bit_learning_rate"]))

    def loss_function(self, context: Context):
        if getattr(context, "quantunet_loss", None) is None:
            context.quantunet_loss = QuantUNetLoss(
                context.network, lambda_bits=self.lambda_bits, bit_reduction=self.bit_reduction
            )
        return context.quantunet_loss

    def lr_scheduler_handler(self, context: Context):
        return None

    # ---- transforms / metrics --------------------------------------------------------------------------------
    def train_post_transforms(self, context: Context):
        return [Activationsd(keys="pred", sigmoid=True), AsDiscreted(keys="pred", threshold=0.5)]

    def val_post_transforms(self, context: Context):
        return [AsDiscreted(keys="pred", threshold=0.0)]

    def val_inferer(self, context: Context):
        return slice_inferer(self.spatial_size, context_slices=self.context_slices)

    def train_key_metric(self, context: Context):
        return {self.TRAIN_METRIC_MEAN_DICE: dice_handler()}

    def val_key_metric(self, context: Context):
        return {self.VAL_METRIC_MEAN_DICE: dice_handler()}

    def train_handlers(self, context: Context):
        handlers = super().train_handlers(context)
        handlers.append(
            QuantUNetStatsHandler(
                context.network,
                self.loss_function(context),
                output_dir=os.path.join(context.output_dir, f"bits_{context.run_id}"),
                evaluator=context.evaluator,
                name="QuantUNet.train",
            )
        )
        return handlers

    # ---- guarded publishing ----------------------------------------------------------------------------------
    def finalize(self, context):
        context.baseline_dice = None
        publisher = GuardedPublisher(self._stats_path, self._guarded_publish_path, self._key_metric_filename, context)
        if context.evaluator is not None:

            def baseline(engine):
                context.baseline_dice = mean_volume_dice(
                    context.network, context.evaluator.data_loader, self.val_inferer(context), context.device
                )
                logger.info(f"held-out Dice of the served model before training: {context.baseline_dice:.4f}")

            context.trainer.add_event_handler(Events.STARTED, baseline)
            context.evaluator.add_event_handler(Events.EPOCH_COMPLETED, publisher)
        else:
            context.trainer.add_event_handler(Events.EPOCH_COMPLETED, publisher)
        context.trainer.add_event_handler(Events.COMPLETED, publisher.completed)
        patience = int(context.request.get("early_stop_patience", 0))
        if patience > 0 and context.evaluator is not None:
            from ignite.handlers import EarlyStopping
            from monai.handlers import stopping_fn_from_metric

            context.evaluator.add_event_handler(
                Events.EPOCH_COMPLETED,
                EarlyStopping(patience, stopping_fn_from_metric(self.VAL_METRIC_MEAN_DICE), context.trainer),
            )


class GuardedPublisher(PublishStatsAndModel):
    """Writes train stats every epoch (as MONAI Label's publisher) and publishes:

    * with at least ``min_holdout_volumes`` held-out volumes: this run's best checkpoint, when its held-out Dice
      is at least ``min_dice_gain`` above the served model's Dice on the same volumes (measured before training);
    * with fewer: nothing, unless the request sets ``publish_without_holdout`` (then the final weights)."""

    def __init__(self, stats_path, publish_path, key_metric_filename, context):
        super().__init__(
            stats_path, None, key_metric_filename, context.start_ts, context.run_id, context.output_dir,
            context.trainer, context.evaluator,
        )
        self.guarded_publish_path = publish_path
        self.context = context
        self.published = False
        self.holdout = len(context.val_datalist or [])
        self.force = strtobool(context.request.get("publish_without_holdout", False))
        self.min_gain = float(context.request.get("min_dice_gain", 0.01))
        self.min_holdout = int(context.request.get("min_holdout_volumes", 2))
        self.enough = self.holdout >= max(1, self.min_holdout)
        n = self.holdout + len(context.train_datalist or [])
        _, self.reason = publish_decision(self.holdout, self.min_holdout, None, None, self.min_gain)
        if not self.enough:
            self.reason = self.reason.replace("volume(s),", f"volume(s) of {n},", 1)

    def iteration_completed(self):
        stats = super().iteration_completed()
        if self.enough:
            best_file = os.path.join(self.output_dir, self._key_metric_filename)
            fresh = os.path.isfile(best_file) and os.path.getmtime(best_file) >= self.start_ts - 1
            best = self.evaluator.state.best_metric if fresh else None
            publish, reason = publish_decision(self.holdout, self.min_holdout, self.context.baseline_dice, best, self.min_gain)
            if publish:  # the best file holds the best epoch so far: (re)publish it
                atomic_copy(best_file, self.guarded_publish_path)
                self.published, self.reason = True, reason
                logger.info(f"published {best_file} => {self.guarded_publish_path} ({reason})")
            elif not self.published:
                self.reason = reason
        self._write(stats)
        return stats

    def _write(self, stats):
        stats.update(
            {
                "baseline_val_dice": self.context.baseline_dice,
                "holdout_volumes": self.holdout,
                "train_volumes": len(self.context.train_datalist or []),
                "published": self.published,
                "publish_reason": self.reason,
                "publish_path": self.guarded_publish_path,
                "bit_widths": self._bits(),
            }
        )
        if self._stats_path:
            with open(self._stats_path, "w") as f:
                json.dump(stats, f, indent=2, default=str)

    def _bits(self):
        from monai_quantunet.bitwidth import bit_width_report

        try:
            report = bit_width_report(self.context.network)
            return {**report.totals(), "layers": {r["name"] + ":" + r["kind"]: r["bits"] for r in report.to_dict()["layers"]}}
        except Exception as e:  # stats must never fail the training
            return {"error": str(e)}

    def completed(self, engine):
        if not self.enough and self.force:
            final = os.path.join(self.output_dir, f"final_without_holdout_{self.context.run_id}.pt")
            torch.save(self.context.network.state_dict(), final)
            atomic_copy(final, self.guarded_publish_path)
            self.published = True
            self.reason = "published without enough held-out validation (publish_without_holdout was set)"
        stats = prepare_stats(self.start_ts, self.trainer, self.evaluator)
        self._write(stats)
        logger.info(
            f"training finished after {engine.state.epoch} epoch(s) in {time.time() - self.start_ts:.0f} s; "
            f"served model Dice {self.context.baseline_dice}, best {getattr(self.evaluator, 'state', None) and self.evaluator.state.best_metric}"
        )
        logger.info(f"PUBLISH: {self.reason}")


def holdout_split(datalist, val_split: float = 0.2, seed: int = 0):
    """``(train, held_out)``: with ``n >= 2`` items, ``max(1, round(val_split * n))`` (at most ``n - 1``) held out
    by a seeded shuffle of the items sorted by image path (the same labels give the same split); fewer: none."""
    items = sorted(datalist, key=lambda d: d["image"])
    n = len(items)
    if n < 2:
        return items, []
    n_val = min(n - 1, max(1, int(round(val_split * n))))
    random.Random(seed).shuffle(items)
    return items[n_val:], items[:n_val]


def publish_decision(holdout: int, min_holdout: int, baseline, best, min_gain: float):
    """``(publish, reason)`` for a run with ``holdout`` held-out volumes, the served model's held-out Dice
    ``baseline`` and the run's best ``best`` (``None`` while unknown)."""
    if holdout < max(1, min_holdout):
        return False, (
            f"not published: {holdout} held-out labeled volume(s), at least min_holdout_volumes={min_holdout} are "
            "needed to tell a real gain from noise; served model unchanged (set publish_without_holdout to publish "
            "anyway)"
        )
    if baseline is None or best is None:
        return False, "not published: no held-out Dice measured yet"
    if best >= baseline + min_gain:
        return True, f"published: held-out Dice {best:.4f} >= served model's {baseline:.4f} + min_dice_gain {min_gain}"
    return False, (
        f"not published: best held-out Dice {best:.4f} is not at least min_dice_gain {min_gain} above the served "
        f"model's {baseline:.4f}; served model unchanged"
    )


def keep_batch_norm_frozen(net: torch.nn.Module) -> int:
    """Keep every BatchNorm layer of ``net`` as trained: running statistics fixed (the layer stays in eval mode
    even when the trainer calls ``net.train()``, through a forward pre-hook) and affine parameters not trained.
    A few volumes' slice statistics would otherwise replace the ones learned on the whole training set."""
    norms = [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        for p in m.parameters():
            p.requires_grad_(False)

    def to_eval(module, args):
        for m in norms:
            m.eval()

    net.register_forward_pre_hook(to_eval)
    return len(norms)

