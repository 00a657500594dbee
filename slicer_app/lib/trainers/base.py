"""Fine-tuning the QuantU-Net on the labels users saved (tag ``final``), MONAI Label's BasicTrainTask: the task's
wiring (network, loss, optimizer, transforms, metrics, handlers); its options are declared in
:mod:`lib.train_options`, the publish rule in :mod:`lib.trainers.publishing`.

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

import logging
import os
from typing import Sequence

from ignite.engine import Events
from monai.handlers import IgniteMetricHandler, from_engine
from monai.metrics import DiceMetric
from monai.data import DataLoader
from monai.transforms import Activationsd, AsDiscreted

from monailabel.tasks.train.basic_train import BasicTrainTask, Context
from monailabel.utils.others.generic import strtobool

from lib.checkpoints import load_checkpoint_or_warn, served_checkpoint
from lib.train_options import OPTIONS, check_train_params, trainer_config
from lib.trainers.batch_norm import keep_batch_norm_frozen
from lib.trainers.publishing import GuardedPublisher, holdout_split
from monai_quantunet.data import SliceDataset
from monai_quantunet.inference import slice_inferer
from monai_quantunet.metrics import mean_volume_dice
from monai_quantunet.losses import QuantUNetLoss
from monai_quantunet.training import QuantUNetStatsHandler, freeze_bit_widths, make_optimizer
from monai_quantunet.transforms import val_transforms

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
            keep_batch_norm_frozen(net)  # for the life of this training network
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

    # ---- data / transforms / metrics -------------------------------------------------------------------------
    mask_keys: tuple[str, ...] = ("label",)  # the binary volumes sliced beside the image (SliceDataset)

    def train_volume_transform(self, context: Context):
        """Each labeled volume, once, before it is cut into slices (load, scale, resize in-plane)."""
        return val_transforms(self.spatial_size)

    def train_data_loader(self, context: Context, num_workers=0, shuffle=True):
        """The bundles' training data: the labeled volumes' slices in memory (``SliceDataset``, with the bundle's
        ``context_slices``), ``train_pre_transforms`` per slice, ``num_samples`` slices per labeled volume per
        epoch drawn by its sampler (``tumor_fraction`` of them positive)."""
        dataset = SliceDataset(context.train_datalist, self.train_volume_transform(context),
                               self.train_pre_transforms(context), self.context_slices, self.mask_keys)
        sampler = dataset.sampler(self.num_samples * len(context.train_datalist), self.tumor_fraction)
        return DataLoader(dataset, batch_size=context.train_batch_size, sampler=sampler, num_workers=num_workers)

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
