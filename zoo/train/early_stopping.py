"""Early stopping and best-evaluation tracking on one metric of one split."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from zoo.config import EarlyStoppingConfig, PlateauConfig
from zoo.registry import ZooError


class BestTracker:
  """Follows `config.metric` across evaluations: the best value, its step, evaluations since it.

  Its state is a function of the logged evaluations, so a resumed run rebuilds it from metrics.jsonl
  (`replay`) instead of checkpointing it.
  """

  def __init__(self, config: EarlyStoppingConfig | PlateauConfig, split: str):
    section = "early_stopping" if isinstance(config, EarlyStoppingConfig) else "reduce_on_plateau"
    if config.mode not in ("min", "max"):
      raise ZooError(f"{section}.mode must be 'min' or 'max', got {config.mode!r}")
    if config.patience is not None and config.patience < 1:
      raise ZooError(f"{section}.patience must be >= 1 or None, got {config.patience}")
    self.section = section
    self.config, self.split = config, split
    self.best: float | None = None
    self.best_step: int | None = None
    self.since_best = 0

  def update(self, step: int, metrics: dict[str, float]) -> bool:
    """Records one evaluation; True when it is the best so far."""
    if self.config.metric not in metrics:
      raise ZooError(
        f"{self.section}.metric {self.config.metric!r} is not a {self.split} metric; "
        f"this task reports: {', '.join(sorted(metrics))}"
      )
    value = metrics[self.config.metric]
    sign = 1.0 if self.config.mode == "min" else -1.0
    improved = math.isfinite(value) and (
      self.best is None or sign * (self.best - value) > self.config.min_delta
    )
    if improved:
      self.best, self.best_step, self.since_best = value, step, 0
    else:
      self.since_best += 1
    return improved

  def replay(self, records: Iterable[dict[str, Any]]) -> None:
    for record in records:
      if record.get("split") == self.split:
        self.update(record["step"], record)

  @property
  def should_stop(self) -> bool:
    return self.config.patience is not None and self.since_best >= self.config.patience


class PlateauScaler(BestTracker):
  """Reduce-on-plateau as a learning-rate scale: `factor` times smaller after `patience` evaluations
  without improvement, then the count starts again. Like BestTracker, a function of the evaluations."""

  def __init__(self, config: PlateauConfig, split: str):
    super().__init__(config, split)
    if not 0 < config.factor < 1:
      raise ZooError(f"reduce_on_plateau.factor must be between 0 and 1, got {config.factor}")
    self.scale = 1.0

  def update(self, step: int, metrics: dict[str, float]) -> bool:
    improved = super().update(step, metrics)
    if self.should_stop:
      self.scale = max(self.scale * self.config.factor, self.config.min_scale)
      self.since_best = 0
    return improved
