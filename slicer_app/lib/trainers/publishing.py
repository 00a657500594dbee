"""When a fine-tuning run replaces the served checkpoint: the held-out split (:func:`holdout_split`), the rule
(:func:`publish_decision`) and the handler that applies it every epoch and at the end (:class:`GuardedPublisher`).
Publishing is an atomic copy (:mod:`lib.files`); the train stats say what happened and why."""

from __future__ import annotations

import json
import logging
import os
import random
import time

import torch

from monailabel.tasks.train.handler import PublishStatsAndModel, prepare_stats
from monailabel.utils.others.generic import strtobool

from lib.files import atomic_copy, atomic_write_bytes

__all__ = ["GuardedPublisher", "holdout_split", "publish_decision"]

logger = logging.getLogger(__name__)


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
            atomic_write_bytes(self._stats_path, json.dumps(stats, indent=2, default=str).encode())

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
