"""Metrics out of a run: JSON lines, TensorBoard events (tensorboardX, no TensorFlow), a PNG of curves."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


class MetricWriter:
  """Writes `{"step": s, "split": "train"|"test", ...}` records to `workdir/metrics.jsonl` and TensorBoard.

  On resume, records after the restored step are dropped first: the resumed run writes them again.
  """

  def __init__(self, workdir: str | Path, *, resume_step: int = 0, tensorboard: bool = True):
    self.workdir = Path(workdir)
    self.path = self.workdir / "metrics.jsonl"
    self.history: list[dict[str, Any]] = []
    if self.path.exists():
      for line in self.path.read_text().splitlines():
        try:
          record = json.loads(line)
        except json.JSONDecodeError:
          continue  # A line cut short by a killed run.
        if record.get("step", 0) <= resume_step:
          self.history.append(record)
    self.path.write_text("".join(json.dumps(r) + "\n" for r in self.history))
    self._file = self.path.open("a")
    self._tb = None
    if tensorboard:
      from tensorboardX import SummaryWriter

      self._tb = SummaryWriter(logdir=str(self.workdir / "tensorboard"), purge_step=resume_step or None)

  def write(self, step: int, split: str, metrics: dict[str, float]) -> None:
    record = {"step": int(step), "split": split, **{k: _plain(v) for k, v in metrics.items()}}
    self.history.append(record)
    self._file.write(json.dumps(record) + "\n")
    self._file.flush()
    if self._tb is not None:
      for key, value in metrics.items():
        if isinstance(value, (int, float)) and math.isfinite(value):
          self._tb.add_scalar(f"{split}/{key}", value, step)

  def plot(self, filename: str = "curves.png") -> Path:
    """Plots every metric logged for both splits against the step, one panel per metric."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    keys = sorted({k for r in self.history for k in r if k not in ("step", "split", "epoch")})
    keys = [k for k in ("loss", "accuracy") if k in keys] + [k for k in keys if k not in ("loss", "accuracy")]
    fig, axes = plt.subplots(1, max(len(keys), 1), figsize=(4 * max(len(keys), 1), 3.2), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=False):
      for split, style in (("train", "-"), ("test", "o-")):
        points = [(r["step"], r[key]) for r in self.history if r["split"] == split and key in r]
        if points:
          ax.plot(*zip(*points, strict=True), style, label=split, markersize=3)
      ax.set_title(key)
      ax.set_xlabel("step")
      ax.grid(alpha=0.3)
      ax.legend()
    fig.tight_layout()
    out = self.workdir / filename
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out

  def close(self) -> None:
    self._file.close()
    if self._tb is not None:
      self._tb.close()


def _plain(value: Any) -> Any:
  try:
    return float(value)
  except (TypeError, ValueError):
    return value
