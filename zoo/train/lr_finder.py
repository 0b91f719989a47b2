"""The learning-rate range test (Smith 2017, "Cyclical Learning Rates for Training Neural Networks", as
popularised by fastai's lr_find): train from a fresh init with the rate growing exponentially, watch the loss.

The sweep trains exactly as `train_and_evaluate` would: the same initial parameters, data order (epoch
permutations of the same seed), augmentation, penalties and optimiser with all its options; only the
config's schedule is replaced by the sweep, and nothing is checkpointed.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from zoo import config as config_lib
from zoo.data import Dataset
from zoo.optim import create_optimizer
from zoo.registry import ZooError
from zoo.train.loop import build, epoch_permutation, penalty_fn, progress_bar
from zoo.train.state import create_train_state
from zoo.train.steps import make_train_step

log = logging.getLogger(__name__)

# Losses are read from the device in chunks of this many updates, one chunk behind the one running: the
# device is never idle waiting for the host, and a divergence costs at most two chunks of extra steps.
CHECK_EVERY = 10


def smoothed_losses(losses: Any, smooth: float) -> np.ndarray:
  """The bias-corrected exponential moving average: avg_i = smooth * avg_{i-1} + (1 - smooth) * loss_i,
  divided by 1 - smooth^(i+1) so that early values are not pulled towards the zero the average starts at."""
  losses = np.asarray(losses, np.float64)
  out = np.empty_like(losses)
  avg = 0.0
  for i, loss in enumerate(losses):
    avg = smooth * avg + (1 - smooth) * loss
    out[i] = avg / (1 - smooth ** (i + 1))
  return out


def divergence_index(smoothed: np.ndarray, diverge: float) -> int | None:
  """The first step whose smoothed loss is not finite or exceeds `diverge` x the lowest one so far.

  For losses that can be negative the threshold is best + (diverge - 1) * |best|, which is diverge * best
  for positive ones.
  """
  best = math.inf
  for i, value in enumerate(smoothed):
    if not math.isfinite(value):
      return i
    best = min(best, value)
    if value > best + (diverge - 1) * abs(best):
      return i
  return None


def suggest(rates: np.ndarray, smoothed: np.ndarray, steps: int) -> dict[str, float | None]:
  """The rate of steepest descent of the smoothed loss against log(rate), and min-loss rate / 10.

  The steepest descent is looked for between the first 10% of the sweep (where the average holds too few
  losses to mean much) and the minimum (past it the loss rises); each slope is a least-squares fit over a
  few neighbouring points rather than a difference of two, so that one noisy batch cannot make it.
  """
  n = len(smoothed)
  if n == 0:
    return {"suggestion": None, "min_loss_rate": None, "min_loss_rate_div10": None}
  imin = int(np.argmin(smoothed))
  out: dict[str, float | None] = {
    "suggestion": None,
    "min_loss_rate": float(rates[imin]),
    "min_loss_rate_div10": float(rates[imin]) / 10,
  }
  lo = max(1, min(steps // 10, imin))  # From 1: the suggestion is never the sweep's first rate.
  if imin < lo:
    return out  # The loss never fell: there is no descent to suggest a rate from.
  log_rates = np.log10(rates[:n])
  half = max(1, steps // 50)
  slopes = []
  for i in range(lo, imin + 1):
    window = slice(max(0, i - half), min(n, i + half + 1))
    slopes.append(np.polyfit(log_rates[window], smoothed[window], 1)[0])
  best = int(np.argmin(slopes))
  if slopes[best] < 0:
    out["suggestion"] = float(rates[lo + best])
  return out


def find_lr(
  config: config_lib.Config,
  workdir: str | Path,
  *,
  min_lr: float = 1e-7,
  max_lr: float = 10.0,
  steps: int = 100,
  smooth: float = 0.98,
  diverge: float = 4.0,
  dataset: Dataset | None = None,
  progress: bool = False,
) -> dict[str, Any]:
  """Runs the LR range test for `config`; writes workdir/lr_find.png and workdir/lr_find.json.

  Args:
    config: the experiment; its optimiser (with every option) is used, its schedule is not.
    workdir: where the plot and the record go (nothing else is written there: no checkpoints).
    min_lr, max_lr: the first and last rates of the sweep, `steps` rates spaced evenly in log(rate)
      (with optimizer.accumulate_steps = k each rate is one update of k micro-batches).
    smooth: the factor of the bias-corrected exponential moving average of the loss.
    diverge: the sweep stops once the smoothed loss exceeds this many times its minimum (or is not finite).
    dataset: the data, instead of loading the config's.
    progress: show a progress bar.

  Returns:
    {"rates", "losses", "smoothed"}: the record, one entry per update, ending at the divergence (included
    when finite); "suggestion": the rate of steepest descent of the smoothed loss (None if it never fell);
    "min_loss_rate" and "min_loss_rate_div10"; "diverged_at": the rate at which it diverged (None if it
    did not); the sweep's settings, the config's own rate and "plot": the PNG's path.
  """
  if not 0 < min_lr < max_lr:
    raise ZooError(f"the LR range test needs 0 < min_lr < max_lr, got min_lr={min_lr}, max_lr={max_lr}")
  if not isinstance(steps, int) or isinstance(steps, bool) or steps < 2:
    raise ZooError(f"the LR range test needs at least 2 steps, got {steps!r}")
  if not 0 <= smooth < 1:
    raise ZooError(f"the LR range test's smoothing factor must be in [0, 1), got {smooth}")
  if not diverge > 1:
    raise ZooError(f"the LR range test's divergence factor must be > 1, got {diverge}")
  workdir = Path(workdir)
  exp = build(config, dataset)
  cfg, ds = exp.config, exp.dataset
  if exp.streaming:
    raise ZooError(
      f"the LR range test runs on datasets held in memory; {cfg.data.name!r} is streamed from disk. Run it "
      f"on a subset that fits in memory, or sweep optimizer.learning_rate with short runs (--config.steps=N)."
    )

  rates = np.geomspace(min_lr, max_lr, steps)  # float64, both ends exact
  table = jnp.asarray(rates, jnp.float32)
  accumulate = cfg.optimizer.accumulate_steps  # Checked by create_optimizer.
  # The optimiser's count advances once per update (once per `accumulate` micro-steps under MultiSteps);
  # the step's logged rate is indexed by micro-step, so it divides.
  tx = create_optimizer(cfg.optimizer, lambda count: table[jnp.minimum(count, steps - 1)])
  logged_rate = lambda step: table[jnp.minimum(step // accumulate, steps - 1)]

  # The same keys as train_and_evaluate: the sweep starts from the run's own initial parameters and batches.
  init_rng, data_rng, dropout_rng = jax.random.split(jax.random.key(cfg.seed), 3)
  example = jnp.asarray(exp.preprocess(ds.x_train[: cfg.data.batch_size]))
  state = create_train_state(exp.model, tx, example, init_rng)
  train_step = make_train_step(
    exp.model,
    tx,
    exp.task,
    logged_rate,
    batch_size=cfg.data.batch_size,
    steps_per_epoch=exp.steps_per_epoch,
    preprocess=exp.preprocess,
    augment=exp.augment,
    penalty=penalty_fn(cfg.regularization),
  )
  train_data = {"input": jnp.asarray(ds.x_train), "label": jnp.asarray(ds.y_train)}
  n_train, spe = len(ds.x_train), exp.steps_per_epoch
  log.info(
    "LR range test: %s on %s with %s, %d rates from %g to %g",
    cfg.model.name,
    ds.name,
    cfg.optimizer.name,
    steps,
    min_lr,
    max_lr,
  )

  losses: list[float] = []
  pending: list[list[jax.Array]] = []  # Per update, its micro-steps' losses, still on the device.
  diverged: int | None = None

  def read(keep: int) -> None:
    """Moves all but the newest `keep` pending losses to the host and checks for divergence."""
    nonlocal diverged
    ready = len(pending) - keep
    if ready <= 0:
      return
    values = jax.device_get(pending[:ready])
    del pending[:ready]
    losses.extend(float(np.mean(v)) for v in values)
    diverged = divergence_index(smoothed_losses(losses, smooth), diverge)

  perm = None
  bar = progress_bar(steps, 0, progress)
  try:
    micro = 0
    for update in range(steps):
      micro_losses = []
      for _ in range(accumulate):
        if perm is None or micro % spe == 0:
          perm = epoch_permutation(data_rng, micro // spe, n_train)
        state, metrics = train_step(state, train_data, perm, dropout_rng)
        micro_losses.append(metrics["loss"])
        micro += 1
      pending.append(micro_losses)
      bar.update(1)
      if (update + 1) % CHECK_EVERY == 0:
        read(keep=CHECK_EVERY)
        if diverged is not None:
          break
    if diverged is None:
      read(keep=0)
  finally:
    bar.close()

  smoothed = smoothed_losses(losses, smooth)
  end = len(losses)
  if diverged is not None:
    # The diverging step stays in the record when finite, to show the rise; JSON has no NaN or inf.
    end = diverged + 1 if math.isfinite(smoothed[diverged]) else diverged
  result: dict[str, Any] = {
    "rates": rates[:end].tolist(),
    "losses": losses[:end],
    "smoothed": smoothed[:end].tolist(),
    **suggest(rates, smoothed[:end], steps),
    "diverged_at": float(rates[diverged]) if diverged is not None else None,
    "config_learning_rate": cfg.optimizer.learning_rate,
    "min_lr": min_lr,
    "max_lr": max_lr,
    "steps": steps,
    "smooth": smooth,
    "diverge": diverge,
  }
  workdir.mkdir(parents=True, exist_ok=True)
  title = f"LR range test: {cfg.model.name} on {ds.name}, {cfg.optimizer.name}, batch {cfg.data.batch_size}"
  result["plot"] = str(plot_lr_find(result, workdir / "lr_find.png", title=title))
  tmp = workdir / "lr_find.json.tmp"
  tmp.write_text(json.dumps(result, indent=2) + "\n")
  tmp.replace(workdir / "lr_find.json")
  return result


def plot_lr_find(result: dict[str, Any], path: str | Path, *, title: str = "LR range test") -> Path:
  """Loss against rate (log axis): the raw losses faint, the smoothed bold, the suggestions marked."""
  import matplotlib

  matplotlib.use("Agg", force=False)
  import matplotlib.pyplot as plt

  rates, losses, smoothed = (np.asarray(result[k], np.float64) for k in ("rates", "losses", "smoothed"))
  fig, ax = plt.subplots(figsize=(7, 4.5))
  ax.plot(rates, losses, color="tab:blue", alpha=0.3, linewidth=1, label="loss")
  ax.plot(rates, smoothed, color="tab:blue", linewidth=2, label=f"smoothed ({result['smooth']})")
  marks = [
    ("suggestion", "tab:red", "-", "steepest descent"),
    ("min_loss_rate_div10", "tab:orange", "--", "min-loss rate / 10"),
    ("config_learning_rate", "tab:gray", ":", "config's rate"),
    ("diverged_at", "black", "-.", "diverged"),
  ]
  for key, color, style, label in marks:
    rate = result.get(key)
    if rate is not None:
      ax.axvline(rate, color=color, linestyle=style, linewidth=1.2, label=f"{label}: {rate:.2g}")
  if result.get("suggestion") is not None:
    i = int(np.argmin(np.abs(np.log(rates) - math.log(result["suggestion"]))))
    ax.plot(rates[i], smoothed[i], "o", color="tab:red", markersize=7)
  if len(smoothed):
    # The story is the descent: from the start down to the minimum, and the rise leaving through the top.
    # Scaled to the divergence, that descent would be a flat line at the bottom.
    imin = int(np.argmin(smoothed))
    low, start = min(losses.min(), smoothed[imin]), smoothed[: imin + 1].max()
    span = start - low or abs(start) or 1.0
    ax.set_ylim(low - 0.05 * span, start + 0.5 * span)
  ax.set_xscale("log")
  ax.set_xlim(result["min_lr"], result["max_lr"])
  ax.set_xlabel("learning rate")
  ax.set_ylabel("training loss")
  ax.set_title(title, fontsize=10)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8, loc="best")
  fig.tight_layout()
  path = Path(path)
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def summary_line(name: str, found: dict) -> str:
  """One line: the suggested rate, the alternative, the config's own rate and where the plot is."""
  rate = lambda key: "none" if found[key] is None else f"{found[key]:.2g}"
  fell = found["suggestion"] is not None
  why = "steepest descent of the smoothed loss" if fell else "the loss never fell in the sweep"
  return (
    f"{name}: suggested learning rate {rate('suggestion')} ({why}; min-loss rate / 10: "
    f"{rate('min_loss_rate_div10')}; the config's: {rate('config_learning_rate')}); plot {found['plot']}"
  )
